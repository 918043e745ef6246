"""CPU backends: torch bf16, ONNX Runtime with transformer fusions, OpenVINO, `best-cpu`, and masked encoders that
encode only the real tokens."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import pytest
import torch
from encoder_shrink.exporters import (
    BestCPUExportConfig,
    OnnxEncoder,
    OnnxExportConfig,
    OpenVINOEncoder,
    OpenVINOExportConfig,
    TorchBF16Encoder,
    TorchBF16ExportConfig,
    encoder_class,
    export,
    load_encoder,
    load_report,
)
from encoder_shrink.exporters import parity as parity_module

from encoder_shrink import adapter_for, tiny
from encoder_shrink.cli import main as cli_main
from encoder_shrink.errors import InvalidArgumentError, UnknownNameError
from encoder_shrink.student import load_student
from tests.exporters import INT8_STATIC_DRIFT

TOKENIZER = tiny.tiny_t5_tokenizer()
needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                    reason="openvino is not installed (pip install 'encoder-shrink[openvino]')")


def _student_for(family: str, tiny_pipeline_dirs, **config):
    pipeline_class = tiny.tiny_pipeline_class(family)
    pipe = pipeline_class.from_pretrained(tiny_pipeline_dirs[family])
    adapter = adapter_for(pipe)
    student = tiny.tiny_student(teacher_dim=adapter.conditioning_width, pipeline_family=family,
                                   student_class=adapter.student_class(), max_sequence_length=64,
                                   use_attention_mask=adapter.uses_attention_mask, **adapter.student_fields(),
                                   **config)
    return pipe, adapter, student


@pytest.fixture(scope="module")
def pixart_student(tmp_path_factory):
    """A tiny student of the masked PixArt family (its denoiser reads the real tokens only)."""
    folder = tmp_path_factory.mktemp("pixart") / "student"
    tiny.tiny_student(teacher_dim=32, max_sequence_length=64, pipeline_family="pixart-alpha",
                         use_attention_mask=True).save_pretrained(folder)
    return folder


def _ids(texts, length=64):
    tokens = TOKENIZER(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    return tokens.input_ids, tokens.attention_mask


def test_torch_bf16_export_is_parity_checked_and_runs_in_bf16(pixart_student, tmp_path):
    folder = export(pixart_student, tmp_path / "bf16", TorchBF16ExportConfig(), tokenizer=TOKENIZER)
    report = load_report(folder)
    assert report["precision"] == "bf16" and report["parity"]["passed"] and report["parity"]["nan"] == 0
    # Not bit-identical to fp32 (it really runs in bf16), yet within the bf16 tolerance.
    assert 0.995 <= report["parity"]["min_cosine"] < 1 - 1e-7
    encoder = load_encoder(folder)
    assert isinstance(encoder, TorchBF16Encoder) and list(encoder.parameters()) == []
    assert encoder._module.dtype == torch.bfloat16
    ids, mask = _ids(["a red circle", "two blue squares left of a sign that says 'cat'"])
    out = encoder.to(torch.float32)(ids, attention_mask=mask)[0]
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    with torch.no_grad():
        reference = load_student(pixart_student)(ids, attention_mask=mask)[0]
    real = mask.bool()
    cosine = torch.nn.functional.cosine_similarity(out[real], reference[real], dim=-1)
    assert cosine.min() > 0.995


def test_bf16_parity_failure_writes_nothing(pixart_student, tmp_path, monkeypatch):
    monkeypatch.setitem(parity_module.TOLERANCES, "bf16", {"min_cosine": 1.0, "max_relative_l2": 0.0})
    with pytest.raises(parity_module.ExportParityError, match="bf16 export is not close"):
        export(pixart_student, tmp_path / "bf16", TorchBF16ExportConfig(), tokenizer=TOKENIZER)
    assert not (tmp_path / "bf16").exists() and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_onnx_optimize_fuses_t5_norms_and_gelu(pixart_student, tmp_path):
    # On the int8 graph; the fp32 one fuses the same norms and GELU (not quantized), checked through the CLI below.
    int8 = "dynamic"
    folder = export(pixart_student, tmp_path / "fused", OnnxExportConfig(int8=int8, optimize=True),
                    tokenizer=TOKENIZER)
    report = load_report(folder)
    ops = [node.op_type for node in onnx.load(str(folder / "model.onnx")).graph.node]
    # One layer: the attention and feed-forward norms with their residual adds, and the gated GELU.
    assert report["fusions"]["SkipSimplifiedLayerNormalization"] == ops.count("SkipSimplifiedLayerNormalization") >= 1
    assert report["fusions"]["FastGelu"] == ops.count("FastGelu") == 1
    assert "Pow" not in ops  # the RMS norm's x^2 is gone into the fused kernels
    assert report["parity"]["passed"] and json.loads((folder / "config.json").read_text())["export"]["optimized"]
    plain = export(pixart_student, tmp_path / "plain", OnnxExportConfig(int8=int8), tokenizer=TOKENIZER)
    ids, mask = _ids(["a red circle", "two blue squares"])
    fused_out = load_encoder(folder)(ids, attention_mask=mask)[0]
    plain_out = load_encoder(plain)(ids, attention_mask=mask)[0]
    np.testing.assert_allclose(fused_out.numpy(), plain_out.numpy(), atol=0.05)


def test_config_errors_name_the_bad_value():
    with pytest.raises(InvalidArgumentError, match="optimize=True fuses CPU graphs"):
        OnnxExportConfig(fp16=True, optimize=True)
    with pytest.raises(InvalidArgumentError, match="compile='yes'"):
        TorchBF16ExportConfig(compile="yes")
    with pytest.raises(InvalidArgumentError, match="inference_precision='fp8'"):
        OpenVINOExportConfig(inference_precision="fp8")
    with pytest.raises(InvalidArgumentError, match="disagrees with int8=False"):
        OpenVINOExportConfig(int8=False, onnx=OnnxExportConfig(int8="dynamic"))
    with pytest.raises(UnknownNameError, match="choose among onnx, onnx-int8"):
        BestCPUExportConfig(candidates=("onnx-fp64",))
    with pytest.raises(InvalidArgumentError, match="repeats=0"):
        BestCPUExportConfig(repeats=0)


@pytest.mark.slow
@needs_openvino
@pytest.mark.parametrize("int8", [False, pytest.param(True, marks=INT8_STATIC_DRIFT)])
def test_openvino_export_matches_torch_and_loads(pixart_student, tmp_path, int8):
    folder = export(pixart_student, tmp_path / "ov", OpenVINOExportConfig(int8=int8), tokenizer=TOKENIZER)
    assert {"model.xml", "model.bin", "config.json", "export_report.json"} == {p.name for p in folder.iterdir()}
    report = load_report(folder)
    assert report["precision"] == ("int8-static" if int8 else "fp32") and report["parity"]["passed"]
    assert report["parity"]["min_cosine"] > (0.98 if int8 else 0.99999)
    encoder = load_encoder(folder)
    assert isinstance(encoder, OpenVINOEncoder)
    if int8:  # the IR really holds int8 weights (the QDQ graph's), not fp32 ones
        import openvino as ov

        types = {op.get_output_element_type(0).get_type_name() for op in ov.Core().read_model(
            str(folder / "model.xml")).get_ops() if op.get_type_name() == "Constant"}
        assert "i8" in types
    ids, mask = _ids(["a red circle"])
    assert torch.isfinite(encoder(ids, attention_mask=mask)[0]).all()


@pytest.mark.slow
def test_best_cpu_keeps_the_fastest_candidate_that_passes_parity(pixart_student, tmp_path, monkeypatch):
    # bf16 made to fail its parity check: it is reported as such and never chosen.
    monkeypatch.setitem(parity_module.TOLERANCES, "bf16", {"min_cosine": 1.0, "max_relative_l2": 0.0})
    config = BestCPUExportConfig(candidates=("onnx", "onnx-int8", "torch-bf16"), repeats=2, warmup=1)
    folder = export(pixart_student, tmp_path / "best", config, tokenizer=TOKENIZER)
    selection = load_report(folder)["best_cpu"]
    rows = selection["candidates"]
    assert rows["torch-bf16"]["status"] == "failed parity"
    assert "bf16 export is not close" in rows["torch-bf16"]["reason"]
    measured = {name: row["latency_median_s"] for name, row in rows.items() if row["status"] == "measured"}
    assert set(measured) == {"onnx", "onnx-int8"} and selection["tokens"] == 64
    assert selection["chosen"] == min(measured, key=measured.get)
    assert rows[selection["chosen"]]["x_fastest"] == 1.0
    # The folder is the chosen backend's export, loadable drop-in; no candidate folders are left in it.
    record = json.loads((folder / "config.json").read_text())["export"]
    assert record["best_cpu"]["chosen"] == selection["chosen"] and record["format"] == "onnx"
    assert record["precision"] == ("int8-dynamic" if selection["chosen"] == "onnx-int8" else "fp32")
    assert isinstance(load_encoder(folder), OnnxEncoder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "export_report.json", "model.onnx"]


@pytest.mark.slow
def test_cli_exports_bf16_and_fused_onnx(pixart_student, tmp_path, capsys):
    assert cli_main(["export", str(pixart_student), "--format", "torch-bf16", "--output", str(tmp_path / "a")]) == 0
    assert "bf16" in capsys.readouterr().out and isinstance(load_encoder(tmp_path / "a"), TorchBF16Encoder)
    assert cli_main(["export", str(pixart_student), "--onnx", "--optimize", "--output", str(tmp_path / "b")]) == 0
    assert load_report(tmp_path / "b")["fusions"]
    capsys.readouterr()
    assert cli_main(["export", str(pixart_student), "--format", "torch-bf16", "--optimize", "--output",
                     str(tmp_path / "c")]) != 0
    assert "--optimize does not apply to --format torch-bf16" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


# Masked pipelines: the runtime encoders encode the real tokens only where the denoiser reads only those (the
# family's denoiser_positions == "tokens"); Chroma (its denoiser reads the padding too), Latte and FLUX do not trim.
@pytest.mark.parametrize("family", tiny.TINY_FAMILIES)
def test_masked_pipelines_encode_only_real_tokens(family, tiny_pipeline_dirs, tmp_path):
    pipe, adapter, student = _student_for(family, tiny_pipeline_dirs)
    student.save_pretrained(tmp_path / "student")
    folder = export(tmp_path / "student", tmp_path / "bf16", TorchBF16ExportConfig(), tokenizer=adapter.tokenizer)
    encoder = load_encoder(folder)
    if adapter.student_kind == "umt5":
        assert type(encoder) is encoder_class(TorchBF16Encoder, "umt5")
    trims = adapter.uses_attention_mask and adapter.denoiser_positions == "tokens"
    assert encoder.trims_padding == trims
    ids, mask = adapter.tokenize(["a red circle", "two blue squares"], 40)
    mask = mask if adapter.uses_attention_mask else torch.ones_like(mask)
    trimmed = encoder(ids, attention_mask=mask)[0]
    encoder.trim_padding = False
    padded = encoder(ids, attention_mask=mask)[0]
    real = mask.bool()
    torch.testing.assert_close(trimmed[real], padded[real], atol=1e-2, rtol=1e-2)  # bf16 kernels over other lengths
    if not trims:
        assert torch.equal(trimmed, padded)
        return
    pad = ~real.any(0)
    assert (trimmed[:, pad] == 0).all() and (padded[:, pad] != 0).any() == bool(pad.any())
    # In the pipeline: the encoder runs at the columns up to the longest prompt (spied on, not changed), and the images
    # are those of the padded run (the denoiser never reads the zeroed positions).
    pipe = type(pipe).from_pretrained(tiny_pipeline_dirs[family], **{adapter.encoder_slot: encoder})
    given, encoded = [], []
    forward, run = encoder.forward, encoder._run

    def spy_forward(input_ids=None, attention_mask=None, **kwargs):
        last = int(attention_mask.bool().any(0).nonzero().max()) + 1
        given.append((input_ids.shape[1], max(2, last)))
        return forward(input_ids, attention_mask=attention_mask, **kwargs)

    encoder.forward = spy_forward
    encoder._run = lambda ids, mask: encoded.append(ids.shape[1]) or run(ids, mask)
    images = {}
    for trim in (True, False):
        encoder.trim_padding, given[:], encoded[:] = trim, [], []
        images[trim] = tiny.generated(pipe(prompt="a red circle", **tiny.tiny_call_kwargs(pipe)))
        assert given and encoded == [needed if trim else padded_to for padded_to, needed in given], (given, encoded)
        if adapter.fixed_call_length:  # a pipeline that pads to a fixed length: trimming saved positions
            assert sum(needed for _, needed in given) < sum(padded_to for padded_to, _ in given) / 2, given
    assert np.isfinite(images[True]).all()
    scale = max(1.0, float(np.abs(images[False]).max()))  # Allegro's tiny VAE decodes to hundreds
    np.testing.assert_allclose(images[True], images[False], atol=2e-3 * scale)


@pytest.mark.slow
def test_onnx_encoder_trims_to_the_real_tokens_exactly(pixart_student, tmp_path):
    folder = export(pixart_student, tmp_path / "fp32", OnnxExportConfig(), tokenizer=TOKENIZER)
    encoder = load_encoder(folder)
    assert encoder.trims_padding
    ids, mask = _ids(["a red circle", "a sign that says 'hello'"])
    trimmed = encoder(ids, attention_mask=mask)[0]
    encoder.trim_padding = False
    padded = encoder(ids, attention_mask=mask)[0]
    real = mask.bool()
    torch.testing.assert_close(trimmed[real], padded[real], atol=1e-5, rtol=1e-5)
    assert (trimmed[~real.any(0).expand_as(real)] == 0).all()


@pytest.mark.parametrize("backend", [
    "torch-bf16", pytest.param("openvino", marks=[needs_openvino, INT8_STATIC_DRIFT, pytest.mark.slow])])
def test_cpu_backends_drop_into_a_pipeline_and_reload_with_it(backend, tiny_pipeline_dirs, tmp_path):
    pipe, adapter, student = _student_for("pixart-alpha", tiny_pipeline_dirs)
    student.save_pretrained(tmp_path / "student")
    # The denoiser error of the report at the tiny pipeline's size (the default is 512 px).
    config = (TorchBF16ExportConfig(resolution=32, denoiser_steps=2) if backend == "torch-bf16"
              else OpenVINOExportConfig(onnx=OnnxExportConfig(resolution=32, denoiser_steps=2)))
    folder = export(tmp_path / "student", tmp_path / backend, config, pipeline=pipe)
    runtime_class = TorchBF16Encoder if backend == "torch-bf16" else OpenVINOEncoder
    slot = adapter.encoder_slot
    torch_pipe = type(pipe).from_pretrained(tiny_pipeline_dirs["pixart-alpha"], **{slot: student})
    cpu_pipe = type(pipe).from_pretrained(tiny_pipeline_dirs["pixart-alpha"], **{slot: load_encoder(folder)})
    expected = tiny.generated(torch_pipe(prompt="a red circle", **tiny.tiny_call_kwargs(torch_pipe)))
    images = tiny.generated(cpu_pipe(prompt="a red circle", **tiny.tiny_call_kwargs(cpu_pipe)))
    assert np.isfinite(images).all()
    np.testing.assert_allclose(images, expected, atol=0.05)
    # The report carries the denoiser error the export causes, as the ONNX one does.
    denoiser = load_report(folder)["denoiser"]
    assert denoiser["family"] == "pixart-alpha" and denoiser["resolution"] == 32
    assert 0 < denoiser["relative_mse"] < 1e-2
    cpu_pipe.save_pretrained(tmp_path / "saved")
    reloaded = type(pipe).from_pretrained(tmp_path / "saved")
    assert isinstance(getattr(reloaded, slot), runtime_class)
    again = tiny.generated(reloaded(prompt="a red circle", **tiny.tiny_call_kwargs(reloaded)))
    np.testing.assert_array_equal(again, images)
