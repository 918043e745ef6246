"""Students of pipelines no family file describes export to ONNX (fp32 and int8) and drop into their pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from encoder_shrink.exporters import OnnxEncoder, encoder_class, export_onnx, load_report

from encoder_shrink import load_encoder, tiny
from encoder_shrink.pipelines.traced import TracedAdapter
from tests.pipelines.traced_families import TRACED_FAMILIES, reload_kwargs


def _images(pipeline_class, folder, slot, encoder, call, family):
    pipe = pipeline_class.from_pretrained(folder, **{slot: encoder}, **reload_kwargs(family))
    pipe.set_progress_bar_config(disable=True)
    run = {**call, "num_inference_steps": 2, "output_type": "np"}
    return np.asarray(pipe(prompt="a red circle", generator=torch.Generator().manual_seed(0), **run)[0]), pipe


# One family per student kind: Cosmos-Predict2 (T5-XXL), Helios (UMT5-XXL), FLUX.2 [klein] (Qwen3, an LLM student);
# and CogView4 (GLM-4), which encodes at per-prompt lengths without a mask.
@pytest.mark.parametrize("family, kind", [("cosmos2", "t5"), ("helios", "umt5"), ("flux2-klein", "llm"),
                                          ("cogview4", "llm")])
@pytest.mark.parametrize("precision, atol", [
    ("fp32", 1e-4), pytest.param("int8", 0.05, marks=pytest.mark.slow)])
def test_a_traced_student_exports_to_onnx_and_drops_in(family, kind, precision, atol, tmp_path):
    pipe, call = TRACED_FAMILIES[family]()
    adapter = TracedAdapter(pipe, call_kwargs=call)
    assert adapter.student_kind == kind
    pipe.save_pretrained(tmp_path / "teacher")
    student = tiny.tiny_student(teacher_dim=adapter.conditioning_width, student_class=adapter.student_class(),
                                **adapter.record(adapter.max_sequence_length), **adapter.student_fields())
    student.save_pretrained(tmp_path / "student")
    folder = export_onnx(tmp_path / "student", tmp_path / precision, tokenizer=adapter.tokenizer,
                         int8="dynamic" if precision == "int8" else None)
    report = load_report(folder)
    assert report["parity"]["passed"] and report["parity"]["nan"] == 0 and report["parity"]["inf"] == 0
    encoder = load_encoder(folder)
    assert type(encoder) is encoder_class(OnnxEncoder, kind)

    pipeline_class, slot = type(pipe), adapter.encoder_slot
    expected, _ = _images(pipeline_class, tmp_path / "teacher", slot, student, call, family)
    images, onnx_pipe = _images(pipeline_class, tmp_path / "teacher", slot, encoder, call, family)
    assert np.isfinite(images).all()
    np.testing.assert_allclose(images, expected, atol=atol)
    if precision == "fp32":  # a pipeline saved with the ONNX encoder inside reloads with plain from_pretrained
        onnx_pipe.save_pretrained(tmp_path / "saved")
        reloaded = pipeline_class.from_pretrained(tmp_path / "saved", **reload_kwargs(family))
        reloaded.set_progress_bar_config(disable=True)
        assert type(getattr(reloaded, slot)) is encoder_class(OnnxEncoder, kind)
        run = {**call, "num_inference_steps": 2, "output_type": "np"}
        again = np.asarray(reloaded(prompt="a red circle", generator=torch.Generator().manual_seed(0), **run)[0])
        np.testing.assert_array_equal(again, images)
