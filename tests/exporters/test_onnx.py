"""ONNX export (fp32, int8 dynamic): parity with the torch student, runtime encoder drop-in, clear errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from encoder_shrink.exporters import (
    ExportParityError,
    OnnxEncoder,
    encoder_class,
    export_onnx,
    load_encoder,
    load_report,
)

from encoder_shrink import ShrunkT5EncoderModel, adapter_for, tiny
from tests.exporters import INT8_STATIC_DRIFT
from tests.test_reference import write_reference_checkpoint

TOKENIZER = tiny.tiny_t5_tokenizer()


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("student") / "student"
    tiny.tiny_student(teacher_dim=32, max_sequence_length=64, pipeline_family="flux-dev").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def exports(student_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return {
        "fp32": export_onnx(student_dir, root / "fp32", tokenizer=TOKENIZER),
        "int8": export_onnx(student_dir, root / "int8", int8="dynamic", tokenizer=TOKENIZER, quantize_wo=False,
                            quantize_embeddings=False, quantize_attention=False),
        "int8-auto": export_onnx(student_dir, root / "int8-auto", int8="dynamic", tokenizer=TOKENIZER),
    }


def _ids(texts, length):
    tokens = TOKENIZER(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    return tokens.input_ids, tokens.attention_mask


def test_fp32_export_matches_torch_at_any_batch_and_length(student_dir, exports):
    folder = exports["fp32"]
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "export_report.json", "model.onnx"]
    report = load_report(folder)
    assert report["parity"]["passed"] and report["parity"]["nan"] == 0 and report["parity"]["inf"] == 0
    assert report["parity"]["min_cosine"] > 0.99999 and report["prompts"] == "tokenized prompts"
    model = onnx.load(str(folder / "model.onnx"))
    assert model.opset_import[0].version >= 17
    encoder, student = load_encoder(folder), ShrunkT5EncoderModel.from_pretrained(student_dir).eval()
    assert isinstance(encoder, OnnxEncoder)
    for batch, length in ((1, 8), (3, 64), (2, 300)):
        ids, mask = _ids(["a red circle left of a blue square"] * batch, length)
        with torch.no_grad():
            expected = student(ids, attention_mask=mask)[0]
        got = encoder(ids, attention_mask=mask).last_hidden_state
        assert got.shape == (batch, length, 32) and got.dtype == torch.float32
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_int8_export_quantizes_linears_but_not_the_sensitive_groups_when_asked(exports):
    report = load_report(exports["int8"])
    assert report["precision"] == "int8-dynamic" and report["parity"]["passed"]
    assert report["parity"]["min_cosine"] > 0.98
    model = onnx.load(str(exports["int8"] / "model.onnx"))
    quantized = [n for n in model.graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul")]
    assert len(quantized) == report["int8"]["quantized_nodes"] == 4  # wi_0, wi_1, 2 projector linears
    assert report["int8"]["kept_fp32"] == ["relative_attention_bias", "norms", "wo", "embed_tokens", "attention"]
    assert report["int8"]["sensitive"]["wo"] == {"quantized": False, "decided_by": "argument"}
    float_matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    scopes = [next(p.value for p in n.metadata_props if p.key == "pkg.torch.onnx.name_scopes") for n in float_matmuls]
    assert any("DenseReluDense.wo" in s for s in scopes) and any("SelfAttention.q" in s for s in scopes)  # fp32
    assert not any(n.op_type == "Gather" and "Quant" in n.name for n in model.graph.node)  # embeddings stay fp32


def _quantized_groups(folder):
    model = onnx.load(str(folder / "model.onnx"))
    scopes = [next((p.value for p in n.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), "")
              for n in model.graph.node if n.op_type == "MatMul"]
    return {
        "wo": not any("DenseReluDense.wo" in s for s in scopes),
        "embed_tokens": any(
            i.name.endswith("_quantized") and "embed_tokens" in i.name for i in model.graph.initializer
        ),
        "attention": not any("SelfAttention.q" in s for s in scopes),
    }


def test_int8_auto_quantizes_sensitive_layers_only_when_measured_harmless(exports):
    report = load_report(exports["int8-auto"])
    sensitive = report["int8"]["sensitive"]
    assert list(sensitive) == ["wo", "embed_tokens", "attention"]
    for decision in sensitive.values():
        assert decision["decided_by"] == "measurement" and decision["criterion"] == {
            "min_cosine": 0.99,
            "max_relative_l2": 0.1,
        }
        within = (decision["min_cosine"]["int8_group"] >= 0.99 and decision["relative_l2"]["int8_group"] <= 0.1)
        assert decision["quantized"] == within
    # The graph holds what the report says, and the measured figures are the final graph's parity.
    assert _quantized_groups(exports["int8-auto"]) == {g: d["quantized"] for g, d in sensitive.items()}
    assert sensitive["wo"]["quantized"] and sensitive["embed_tokens"]["quantized"]  # harmless on this student
    # Groups are tried in order on top of those accepted, so the last one's figures are the final graph's.
    last = sensitive["attention"]
    assert report["parity"]["relative_l2"] == pytest.approx(
        last["relative_l2"]["int8_group" if last["quantized"] else "fp32_group"]
    )
    assert report["bytes"]["onnx"] < load_report(exports["int8"])["bytes"]["onnx"]


@pytest.mark.slow
def test_int8_auto_keeps_a_harmful_wo_in_fp32(tmp_path):
    student = tiny.tiny_student(teacher_dim=32, max_sequence_length=64)
    with torch.no_grad():
        for block in student.encoder.block:
            ff = block.layer[1].DenseReluDense
            # Hidden unit 0 is always 0 (its input row is zeroed), so a huge wo column 0 changes nothing in fp32, but
            # per-output-channel int8 scales then round every other wo weight to 0.
            getattr(ff, "wi_1", getattr(ff, "wi", None)).weight[0] = 0
            ff.wo.weight[:, 0] = 1000 * ff.wo.weight.abs().max()
    folder = export_onnx(student, tmp_path / "auto", int8="dynamic", tokenizer=TOKENIZER)
    decision = load_report(folder)["int8"]["sensitive"]["wo"]
    assert decision["quantized"] is False and decision["decided_by"] == "measurement"
    assert decision["relative_l2"]["int8_group"] > 0.1 > decision["relative_l2"]["fp32_group"]
    assert _quantized_groups(folder)["wo"] is False
    with pytest.raises(ValueError, match="quantize_wo='yes' is not supported"):
        export_onnx(student, tmp_path / "bad", int8="dynamic", quantize_wo="yes")


@pytest.mark.slow
def test_int8_auto_keeps_harmful_attention_in_fp32(tmp_path):
    student = tiny.tiny_student(teacher_dim=32, max_sequence_length=64)
    with torch.no_grad():
        for block in student.encoder.block:
            attention = block.layer[0]
            # Feature 0 of the attention input is made 1000x larger but q, k and v ignore it (zero column): fp32 output
            # is unchanged in kind, but int8 activations share one scale per tensor, so every other feature rounds
            # away.
            attention.layer_norm.weight[0] = 1000
            for linear in (attention.SelfAttention.q, attention.SelfAttention.k, attention.SelfAttention.v):
                linear.weight[:, 0] = 0
    folder = export_onnx(student, tmp_path / "auto", int8="dynamic", tokenizer=TOKENIZER)
    decision = load_report(folder)["int8"]["sensitive"]["attention"]
    assert decision["quantized"] is False and decision["decided_by"] == "measurement"
    assert decision["min_cosine"]["int8_group"] < 0.99 <= decision["min_cosine"]["fp32_group"]
    assert _quantized_groups(folder)["attention"] is False
    assert "attention" in load_report(folder)["int8"]["kept_fp32"]


@pytest.mark.slow
@INT8_STATIC_DRIFT
def test_int8_static_is_a_calibrated_qdq_graph(student_dir, tmp_path):
    folder = export_onnx(student_dir, tmp_path / "static", int8="static", tokenizer=TOKENIZER, quantize_attention=True)
    report = load_report(folder)
    # (Full 8-bit weights for TensorRT; checked on the CPU, where ONNX Runtime's int16 pair sums cost some accuracy,
    # so the bar is the int8 tolerance, cosine >= 0.98.)
    assert (
        report["precision"] == "int8-static" and report["parity"]["passed"] and report["parity"]["min_cosine"] >= 0.98
    )
    model = onnx.load(str(folder / "model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    # activations: q/k/v share one input, wi_0/wi_1 another, then o and the two projector linears; weights: 8
    assert ops.count("QuantizeLinear") >= 5 and ops.count("DequantizeLinear") >= 5 + 8
    scales = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer if i.name.endswith("_scale")}
    assert scales and all(np.all(v > 0) for v in scales.values())
    encoder = load_encoder(folder)
    ids, mask = _ids(["a blue square", ""], 64)
    assert torch.isfinite(encoder(ids, attention_mask=mask)[0]).all()


@pytest.mark.slow
def test_int8_can_include_wo_and_embeddings(student_dir, exports, tmp_path):
    folder = export_onnx(student_dir, tmp_path / "all", int8="dynamic", tokenizer=TOKENIZER, quantize_wo=True,
                         quantize_embeddings=True, quantize_attention=False)
    report = load_report(folder)
    assert report["int8"]["quantized_nodes"] == 6 and report["int8"]["kept_fp32"] == [
        "relative_attention_bias",
        "norms",
        "attention",
    ]
    assert report["parity"]["passed"]
    assert report["bytes"]["onnx"] < load_report(exports["int8"])["bytes"]["onnx"]


def test_export_refuses_bad_input_and_leaves_nothing(student_dir, tmp_path, exports):
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        export_onnx(student_dir, exports["fp32"])
    with pytest.raises(ValueError, match="holds a 't5' model, not a 'shrunk_t5' student encoder"):
        tiny.tiny_t5_encoder().save_pretrained(tmp_path / "t5")
        export_onnx(tmp_path / "t5", tmp_path / "out")
    with pytest.raises(ValueError, match="int8='weights' is not supported"):
        export_onnx(student_dir, tmp_path / "out", int8="weights")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_parity_failure_raises_and_writes_nothing(student_dir, tmp_path, monkeypatch):
    from encoder_shrink.exporters import parity

    monkeypatch.setitem(parity.TOLERANCES, "fp32", {"min_cosine": 1.1, "max_relative_l2": 0.0})
    with pytest.raises(ExportParityError, match=r"fp32 export is not close to the torch student: cosine"):
        export_onnx(student_dir, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_large_graphs_keep_weights_in_external_data(student_dir, tmp_path, monkeypatch):
    from encoder_shrink.exporters import onnx_export

    monkeypatch.setattr(onnx_export, "PROTOBUF_LIMIT", 1000)  # pretend the tiny student is over the 2 GB limit
    folder = export_onnx(student_dir, tmp_path / "external", tokenizer=TOKENIZER)
    data = [p for p in folder.iterdir() if p.name not in ("config.json", "export_report.json", "model.onnx")]
    assert data and sum(p.stat().st_size for p in data) > 30_000  # the weights live beside the graph
    assert load_report(folder)["parity"]["passed"]
    ids, mask = _ids(["a cat"], 16)
    assert torch.isfinite(load_encoder(folder)(ids, attention_mask=mask)[0]).all()


@pytest.mark.slow
def test_reference_checkpoint_exports(tmp_path):
    write_reference_checkpoint(tmp_path / "ref")
    folder = export_onnx(tmp_path / "ref", tmp_path / "onnx")
    assert load_report(folder)["prompts"].startswith("random token ids")
    assert json.loads((folder / "config.json").read_text())["teacher_dim"] == 64


@pytest.mark.slow
def test_sequence_longer_than_the_export_is_refused(student_dir, tmp_path):
    folder = export_onnx(student_dir, tmp_path / "short", max_tokens=64)
    encoder = load_encoder(folder)
    with pytest.raises(ValueError, match="sequence of 65 tokens is longer than the exported encoder's 64"):
        encoder(torch.ones(1, 65, dtype=torch.long))


def test_load_encoder_picks_the_right_runtime(student_dir, exports, tmp_path):
    assert type(load_encoder(student_dir)) is ShrunkT5EncoderModel
    assert type(load_encoder(exports["int8"])) is encoder_class(OnnxEncoder, "t5")
    with pytest.raises(ValueError, match="is not a student folder \\(no config.json\\)"):
        load_encoder(tmp_path)
    with pytest.raises(ValueError, match="no model.safetensors"):
        ShrunkT5EncoderModel.from_pretrained(exports["fp32"])


def test_encoder_returns_on_the_device_and_dtype_it_was_moved_to(exports):
    encoder = load_encoder(exports["fp32"]).to(torch.bfloat16)
    assert encoder.dtype == torch.bfloat16 and encoder.device.type == "cpu"
    out = encoder(torch.tensor([[5, 6, 1]]))[0]
    assert out.dtype == torch.bfloat16


@pytest.mark.slow
def test_report_gives_denoiser_error_with_a_pipeline(tiny_pipeline_dirs, tmp_path):
    pipe = tiny.load_tiny_pipeline("sd3", tiny_pipeline_dirs["sd3"])
    student = tiny.tiny_student(teacher_dim=32, max_sequence_length=256)
    errors = {}
    for name, options in (("fp32", {}), ("int8", {"int8": "dynamic"})):
        folder = export_onnx(student, tmp_path / name, pipeline=pipe, resolution=16, **options)
        report = load_report(folder)
        assert report["prompts"] == "tokenized prompts"  # the pipeline's tokenizer was used
        assert report["denoiser"]["family"] == "sd3" and report["denoiser"]["steps"] == 4
        errors[name] = report["denoiser"]["relative_mse"]
    assert errors["fp32"] < 1e-8 < errors["int8"] < 1e-2


# wan: a UMT5 student; flux2: an LLM student (three of Mistral's layers, read through `hidden_states`).
@pytest.mark.slow
@pytest.mark.parametrize("family", ["flux-dev", "sd3", "pixart-alpha", "wan", "flux2"])
@pytest.mark.parametrize("precision, atol", [("fp32", 1e-4), ("int8", 0.05)])
def test_pipelines_generate_with_onnx_encoders(family, precision, atol, tiny_pipeline_dirs, tmp_path):
    pipeline_class = tiny.tiny_pipeline_class(family)
    adapter = adapter_for(pipeline_class.from_pretrained(tiny_pipeline_dirs[family]))
    slot = adapter.encoder_slot
    student = tiny.tiny_student(teacher_dim=adapter.conditioning_width, pipeline_family=family,
                                   student_class=adapter.student_class(), **adapter.student_fields())
    student.save_pretrained(tmp_path / "student")
    tokenizer = adapter.tokenizer if adapter.student_fields() else TOKENIZER
    folder = export_onnx(tmp_path / "student", tmp_path / precision, int8="dynamic" if precision == "int8" else None,
                         tokenizer=tokenizer)
    runtime_class = encoder_class(OnnxEncoder, adapter.student_kind)
    assert type(load_encoder(folder)) is runtime_class and load_report(folder)["parity"]["passed"]
    torch_pipe = pipeline_class.from_pretrained(tiny_pipeline_dirs[family], **{slot: student})
    onnx_pipe = pipeline_class.from_pretrained(tiny_pipeline_dirs[family], **{slot: load_encoder(folder)})
    expected = tiny.generated(torch_pipe(prompt="a red circle", **tiny.tiny_call_kwargs(torch_pipe)))
    images = tiny.generated(onnx_pipe(prompt="a red circle", **tiny.tiny_call_kwargs(onnx_pipe)))
    assert np.isfinite(images).all()
    np.testing.assert_allclose(images, expected, atol=atol)
    if precision == "fp32":  # a pipeline saved with the ONNX encoder inside reloads with plain from_pretrained
        onnx_pipe.save_pretrained(tmp_path / "saved")
        reloaded = pipeline_class.from_pretrained(tmp_path / "saved")
        assert type(getattr(reloaded, slot)) is runtime_class
        again = tiny.generated(reloaded(prompt="a red circle", **tiny.tiny_call_kwargs(reloaded)))
        np.testing.assert_array_equal(again, images)


def _overflowing_student():
    """A student whose feed-forward output exceeds fp16's range (65504), as T5 activations do at scale."""
    student = tiny.tiny_student(teacher_dim=32, max_sequence_length=64)
    with torch.no_grad():
        wo = student.encoder.block[0].layer[1].DenseReluDense.wo.weight
        wo.mul_(3e4 / wo.abs().max())  # weights still representable in fp16; their sums are not
        ids, mask = _ids(["a red circle"], 64)
        ff = student.encoder.block[0].layer[1]
        assert ff.DenseReluDense(ff.layer_norm(student.shared(ids))).abs().max() > 65504
    return student


@pytest.mark.slow
def test_fp16_export_keeps_wo_norms_and_residual_in_fp32(tmp_path):
    student = _overflowing_student()
    folder = export_onnx(student, tmp_path / "fp16", fp16=True, tokenizer=TOKENIZER)
    report = load_report(folder)
    assert report["precision"] == "fp16" and report["parity"]["passed"]
    assert report["parity"]["nan"] == 0 and report["parity"]["inf"] == 0
    assert report["fp16"]["kept_fp32"][:3] == ["wo", "norms", "residual stream"]
    model = onnx.load(str(folder / "model.onnx"))
    assert sum(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer) >= 8  # weights stored fp16
    encoder = load_encoder(folder)
    ids, mask = _ids(["a red circle", "two cats"], 64)
    assert torch.isfinite(encoder(ids, attention_mask=mask)[0]).all()

    # structurally: nothing kept in fp32 reads a value that went through fp16
    from encoder_shrink.exporters.onnx_export import _keep_fp32

    producers = {out: node for node in model.graph.node for out in node.output}
    kept = [n for n in model.graph.node if n.op_type != "Cast" and _keep_fp32(n)]
    assert len(kept) > 10
    for node in kept:
        for name in node.input:
            producer = producers.get(name)
            to = next((a.i for a in producer.attribute if a.name == "to"), None) if producer is not None else None
            assert not (producer is not None and producer.op_type == "Cast" and to == onnx.TensorProto.FLOAT16), (
                node.name
            )


def test_fp16_and_int8_are_exclusive(student_dir, tmp_path):
    with pytest.raises(ValueError, match="choose one of int8 and fp16"):
        export_onnx(student_dir, tmp_path / "x", int8="dynamic", fp16=True)


@pytest.mark.accelerator
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device for the denoiser")
def test_cpu_resident_onnx_encoder_feeds_a_gpu_pipeline(tiny_pipeline_dirs, exports, student_dir):
    encoder = load_encoder(exports["fp32"], providers=["CPUExecutionProvider"])
    pipe = tiny.tiny_pipeline_class("flux-dev").from_pretrained(tiny_pipeline_dirs["flux-dev"],
                                                                   text_encoder_2=encoder).to("cuda")
    embeds, _, _ = pipe.encode_prompt(prompt="a red circle", prompt_2=None, max_sequence_length=64)
    assert embeds.device.type == "cuda" and encoder.session.get_providers() == ["CPUExecutionProvider"]
    images = pipe("a red circle", **tiny.tiny_call_kwargs(pipe)).images
    assert np.isfinite(images).all()


@pytest.mark.accelerator
@pytest.mark.skipif(not (torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()),
                    reason="needs onnxruntime-gpu and a CUDA device")
def test_cuda_io_binding_matches_cpu(exports):
    cpu = load_encoder(exports["fp32"], providers=["CPUExecutionProvider"])
    cuda = load_encoder(exports["fp32"]).to("cuda")
    ids, mask = _ids(["a red circle", "two cats"], 64)
    torch.testing.assert_close(cuda(ids.cuda(), attention_mask=mask.cuda())[0].cpu(), cpu(ids, attention_mask=mask)[0],
                               atol=1e-4, rtol=1e-4)
