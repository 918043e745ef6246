"""TensorRT engines: a GPU tier (needs tensorrt and CUDA; skipped with the reason elsewhere), and CPU-side errors."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from encoder_shrink.exporters import TensorRTEncoder, build_engine, encoder_class, export_onnx, load_encoder

from encoder_shrink import ShrunkLLMEncoderModel, tiny
from encoder_shrink.cli import main

HAS_TRT = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()
gpu = pytest.mark.skipif(not HAS_TRT, reason="TensorRT engines need the tensorrt package and an NVIDIA GPU")
TOKENIZER = tiny.tiny_t5_tokenizer()


@pytest.mark.skipif(HAS_TRT, reason="checks the error on machines without TensorRT/GPU")
def test_without_tensorrt_or_gpu_the_error_is_one_line(tmp_path, capsys):
    student = tmp_path / "student"
    tiny.tiny_student(teacher_dim=32, max_sequence_length=32).save_pretrained(student)
    capsys.readouterr()  # drop the save's progress bar
    assert main(["export", str(student), "--onnx", "--trt", "--output", str(tmp_path / "trt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ("tensorrt is not installed" in err.lower() or "needs an NVIDIA GPU" in err)
    assert not (tmp_path / "trt").exists() and not (tmp_path / "trt-onnx").exists()


@pytest.fixture
def student(tmp_path):
    model = tiny.tiny_student(teacher_dim=32, max_sequence_length=64)
    model.save_pretrained(tmp_path / "student")
    return model


@pytest.mark.accelerator
@gpu
@pytest.mark.parametrize("precision, options, cosine", [("fp32", {}, 0.99999), ("fp16", {"fp16": True}, 0.999),
                                                          ("int8-static", {"int8": "static"}, 0.98)])
def test_engine_matches_torch_student(student, tmp_path, precision, options, cosine):
    onnx = export_onnx(tmp_path / "student", tmp_path / "onnx", tokenizer=TOKENIZER, **options)
    folder = build_engine(onnx, tmp_path / "trt", timing_cache=tmp_path / "timing.cache")
    info = json.loads((folder / "config.json").read_text())["export"]
    assert info["format"] == "tensorrt" and info["precision"] == precision and info["tensorrt_version"]
    assert (tmp_path / "timing.cache").stat().st_size > 0
    encoder = load_encoder(folder)
    assert isinstance(encoder, TensorRTEncoder) and encoder.device.type == "cuda"
    tokens = TOKENIZER(["a red circle", "two cats"], padding="max_length", max_length=64, return_tensors="pt")
    with torch.no_grad():
        expected = student(tokens.input_ids, attention_mask=tokens.attention_mask)[0].cuda()
    got = encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0]
    assert torch.isfinite(got).all()
    assert torch.nn.functional.cosine_similarity(got.float(), expected, dim=-1).min() >= cosine


@pytest.mark.accelerator
@gpu
def test_engine_refuses_other_versions_and_long_inputs(student, tmp_path):
    folder = build_engine(export_onnx(tmp_path / "student", tmp_path / "onnx", max_tokens=64), tmp_path / "trt",
                          max_batch=2)
    encoder = load_encoder(folder)
    with pytest.raises(ValueError, match="outside the engine's profile"):
        encoder(torch.ones(1, 65, dtype=torch.long))
    config = json.loads((folder / "config.json").read_text())
    config["export"]["tensorrt_version"] = "0.0.1"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match="was built with TensorRT 0.0.1 .* rebuild it with encoder-shrink export --trt"
    ):
        load_encoder(folder)


@pytest.mark.accelerator
@gpu
def test_flux_generates_with_a_tensorrt_encoder(tiny_pipeline_dirs, tmp_path):
    student = tiny.tiny_student(teacher_dim=32)
    student.save_pretrained(tmp_path / "student")
    folder = build_engine(export_onnx(tmp_path / "student", tmp_path / "onnx", fp16=True), tmp_path / "trt")
    pipe = tiny.tiny_pipeline_class("flux-dev").from_pretrained(tiny_pipeline_dirs["flux-dev"],
                                                                   text_encoder_2=load_encoder(folder)).to("cuda")
    reference = tiny.tiny_pipeline_class("flux-dev").from_pretrained(tiny_pipeline_dirs["flux-dev"],
                                                                        text_encoder_2=student).to("cuda")
    images = pipe("a red circle", **tiny.tiny_call_kwargs(pipe)).images
    expected = reference("a red circle", **tiny.tiny_call_kwargs(reference)).images
    assert abs(images - expected).max() < 0.05


@pytest.mark.accelerator
@gpu
def test_flux2_generates_with_a_tensorrt_encoder_of_an_llm_student(tiny_pipeline_dirs, tmp_path):
    from encoder_shrink import adapter_for

    pipeline_class = tiny.tiny_pipeline_class("flux2")
    adapter = adapter_for(pipeline_class.from_pretrained(tiny_pipeline_dirs["flux2"]))
    student = tiny.tiny_student(teacher_dim=adapter.conditioning_width, student_class=ShrunkLLMEncoderModel,
                                   **adapter.student_fields())
    student.save_pretrained(tmp_path / "student")
    onnx = export_onnx(tmp_path / "student", tmp_path / "onnx", fp16=True, tokenizer=adapter.tokenizer)
    encoder = load_encoder(build_engine(onnx, tmp_path / "trt"))
    assert type(encoder) is encoder_class(TensorRTEncoder, "llm")
    pipe = pipeline_class.from_pretrained(tiny_pipeline_dirs["flux2"], text_encoder=encoder).to("cuda")
    reference = pipeline_class.from_pretrained(tiny_pipeline_dirs["flux2"], text_encoder=student).to("cuda")
    images = pipe(prompt="a red circle", **tiny.tiny_call_kwargs(pipe)).images
    expected = reference(prompt="a red circle", **tiny.tiny_call_kwargs(reference)).images
    assert abs(images - expected).max() < 0.05
