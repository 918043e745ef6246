"""ShrunkT5EncoderModel: architecture, forward contract, from_t5, save/load and refusal of bad weights."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel, CLIPTextModel, T5Config, T5EncoderModel, T5ForConditionalGeneration

from encoder_shrink import ShrunkT5Config, ShrunkT5EncoderModel, WeightsError, tiny

IDS = torch.tensor([[3, 16, 42, 7, 1, 0, 0, 0], [5, 6, 1, 0, 0, 0, 0, 0]])


def _student(**config) -> ShrunkT5EncoderModel:
    return tiny.tiny_student(teacher_dim=48, **config)


def test_projector_is_the_papers():
    student = _student()
    projector = student.final_projection
    assert [type(m) for m in projector] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert (projector[0].in_features, projector[0].out_features) == (16, 48)
    assert (projector[3].in_features, projector[3].out_features) == (48, 48)
    assert projector[0].bias is None and projector[3].bias is None
    assert projector[2].p == 0.1
    assert isinstance(student, T5EncoderModel)


def test_forward_returns_teacher_width_in_both_forms():
    student = _student()
    with torch.no_grad():
        out = student(input_ids=IDS)
        as_tuple = student(IDS, return_dict=False)
        with_hidden = student(IDS, output_hidden_states=True)
    assert out.last_hidden_state.shape == (2, 8, 48)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], out.last_hidden_state)
    torch.testing.assert_close(out[0], out.last_hidden_state)
    # hidden_states are the student's own T5 layers (embeddings + one block), at the student's width
    assert len(with_hidden.hidden_states) == 2
    assert with_hidden.hidden_states[-1].shape == (2, 8, 16)


def test_output_is_projection_of_t5_output():
    student = _student()
    with torch.no_grad():
        t5_out = T5EncoderModel.forward(student, input_ids=IDS).last_hidden_state
        expected = student.final_projection(t5_out)
        torch.testing.assert_close(student(IDS).last_hidden_state, expected)


def test_attention_mask_is_used():
    student = _student()
    mask = (IDS != 0).long()
    with torch.no_grad():
        masked = student(IDS, attention_mask=mask).last_hidden_state
        unmasked = student(IDS).last_hidden_state
    assert not torch.allclose(masked[0, :5], unmasked[0, :5])


def test_warns_once_when_called_unlike_its_distillation(caplog):
    student = _student(max_sequence_length=8, use_attention_mask=True)
    with caplog.at_level("WARNING", logger="encoder_shrink"), torch.no_grad():
        student(IDS, attention_mask=(IDS != 0).long())
        assert caplog.text == ""
        student(IDS[:, :5])
        student(IDS[:, :6])
    assert caplog.text.count("distilled at 8 tokens but is called with 5; pass max_sequence_length=8") == 1
    assert caplog.text.count("distilled with an attention mask but is called without one") == 1
    assert "called with 6" not in caplog.text


def test_dtype_and_device_follow_the_returned_embeddings():
    student = _student().to(torch.bfloat16)
    assert student.dtype == torch.bfloat16
    assert student.device == torch.device("cpu")
    with torch.no_grad():
        assert student(IDS).last_hidden_state.dtype == student.dtype


def test_dropout_only_in_training():
    student = _student()
    with torch.no_grad():
        a, b = student(IDS).last_hidden_state, student(IDS).last_hidden_state
        torch.testing.assert_close(a, b)
        student.train()
        c = student(IDS).last_hidden_state
    assert not torch.allclose(a, c)


def test_no_split_modules_and_auto_registration(tmp_path):
    student = _student()
    assert "T5Block" in student._no_split_modules
    student.save_pretrained(tmp_path / "s")
    assert isinstance(AutoConfig.from_pretrained(tmp_path / "s"), ShrunkT5Config)
    loaded = AutoModel.from_pretrained(tmp_path / "s")
    assert type(loaded) is ShrunkT5EncoderModel


def test_config_records_what_it_replaces(tmp_path):
    student = _student(
        pipeline_family="flux-dev",
        component="text_encoder_2",
        teacher_name_or_path="black-forest-labs/FLUX.1-dev",
        max_sequence_length=512,
        use_attention_mask=False,
    )
    student.save_pretrained(tmp_path / "s")
    saved = json.loads((tmp_path / "s" / "config.json").read_text())
    assert saved["model_type"] == "shrunk_t5"
    assert saved["teacher_dim"] == 48
    assert saved["pipeline_family"] == "flux-dev"
    assert saved["component"] == "text_encoder_2"
    assert saved["teacher_name_or_path"] == "black-forest-labs/FLUX.1-dev"
    assert saved["max_sequence_length"] == 512
    assert saved["use_attention_mask"] is False


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("teacher_dim", 0, "teacher_dim must be a positive width, got 0"),
        ("projector_dropout", 1.5, "projector_dropout must be in [0, 1), got 1.5"),
        ("max_sequence_length", -3, "got -3"),
        ("component", "text encoder", "got 'text encoder'"),
    ],
)
def test_config_validation_quotes_bad_value(field, value, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        ShrunkT5Config(**{field: value})


def test_save_writes_safetensors_only_and_roundtrips(tmp_path):
    student = _student()
    student.save_pretrained(tmp_path / "s")
    files = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert files == ["config.json", "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging folder left behind"
    keys = set(load_file(tmp_path / "s" / "model.safetensors"))
    assert {"final_projection.0.weight", "final_projection.3.weight", "shared.weight"} <= keys
    loaded = ShrunkT5EncoderModel.from_pretrained(tmp_path / "s").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDS).last_hidden_state, student(IDS).last_hidden_state)


def test_load_in_bfloat16_and_with_device_map(tmp_path):
    _student().save_pretrained(tmp_path / "s")
    bf16 = ShrunkT5EncoderModel.from_pretrained(tmp_path / "s", dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16
    with torch.no_grad():
        assert bf16(IDS).last_hidden_state.dtype == torch.bfloat16
    mapped = ShrunkT5EncoderModel.from_pretrained(tmp_path / "s", device_map="cpu")
    assert mapped.device == torch.device("cpu")


def test_failed_save_leaves_previous_save_intact(tmp_path, monkeypatch):
    student = _student()
    student.save_pretrained(tmp_path / "s")
    before = (tmp_path / "s" / "model.safetensors").read_bytes()

    import transformers.modeling_utils as modeling_utils

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(modeling_utils, "safe_save_file", disk_full)
    with torch.no_grad():
        student.final_projection[0].weight.add_(1.0)
    with pytest.raises(OSError, match="No space left"):
        student.save_pretrained(tmp_path / "s")
    assert (tmp_path / "s" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_resave_removes_stale_shards(tmp_path):
    student = _student()
    student.save_pretrained(tmp_path / "s", max_shard_size="20KB")
    assert (tmp_path / "s" / "model.safetensors.index.json").is_file()
    student.save_pretrained(tmp_path / "s")
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["config.json", "model.safetensors"]
    ShrunkT5EncoderModel.from_pretrained(tmp_path / "s")


def test_variant_saves_keep_the_other_variant_and_load(tmp_path):
    student = _student()
    student.save_pretrained(tmp_path / "s")
    student.save_pretrained(tmp_path / "s", variant="fp16")
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["config.json", "model.fp16.safetensors",
                                                                   "model.safetensors"]
    loaded = ShrunkT5EncoderModel.from_pretrained(tmp_path / "s", variant="fp16").eval()
    torch.testing.assert_close(loaded(IDS)[0], student.eval()(IDS)[0])
    # diffusers passes safe_serialization=False to every component that names it: the student writes safetensors
    # all the same, and says so (tests/pipelines/test_contract.py runs it through DiffusionPipeline)
    student.save_pretrained(tmp_path / "p", safe_serialization=False)
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["config.json", "model.safetensors"]


# --- from_t5 ---------------------------------------------------------------------------------------------


def test_projector_scale_does_not_follow_the_t5_initializer_factor():
    """diffusers' tiny test T5s set initializer_factor=0.002: the student must still tell prompts apart."""
    config = T5Config(vocab_size=100, d_model=16, d_ff=32, d_kv=8, num_heads=2, num_layers=1,
                      feed_forward_proj="gated-gelu", initializer_factor=0.002)
    torch.manual_seed(0)
    student = ShrunkT5EncoderModel.from_t5(config, teacher_dim=64).eval()
    with torch.no_grad():
        t5_out = student.encoder(IDS).last_hidden_state  # the T5's own scale (its final norm starts at the factor)
        out = student(IDS)[0]
    # the projector keeps that scale (before: a further factor of 0.002, ~1e-6 here and ~1e-9 in diffusers' tests)
    assert 0.1 < out.std() / t5_out.std() < 10
    assert (out[0, 0] - out[1, 0]).abs().max() > 0.1 * out.std()  # different tokens, different embeddings
    for linear in (student.final_projection[0], student.final_projection[3]):
        assert abs(linear.weight.std().item() * linear.in_features**0.5 - 1) < 0.1



def test_from_t5_keeps_the_t5_weights():
    t5 = tiny.tiny_t5_encoder(d_model=16, num_layers=2, seed=3)
    student = ShrunkT5EncoderModel.from_t5(t5, teacher_dim=64, pipeline_family="sd3").eval()
    assert student.config.teacher_dim == 64 and student.config.pipeline_family == "sd3"
    assert student.config.num_layers == 2 and student.config.feed_forward_proj == "gated-gelu"
    with torch.no_grad():
        torch.testing.assert_close(
            T5EncoderModel.forward(student, input_ids=IDS).last_hidden_state, t5(IDS).last_hidden_state
        )
    assert student.encoder.embed_tokens.weight.data_ptr() == student.shared.weight.data_ptr()
    assert student.dtype == torch.float32


def test_from_t5_takes_the_encoder_of_a_full_t5():
    config = T5Config(vocab_size=300, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    full = T5ForConditionalGeneration(config).eval()
    student = ShrunkT5EncoderModel.from_t5(full, teacher_dim=32).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            T5EncoderModel.forward(student, input_ids=IDS).last_hidden_state, full.encoder(IDS).last_hidden_state
        )


def test_from_t5_config_and_path(tmp_path):
    t5 = tiny.tiny_t5_encoder(d_model=16, num_layers=1, seed=4)
    from_config = ShrunkT5EncoderModel.from_t5(t5.config, teacher_dim=40)
    assert from_config.config.d_model == 16 and from_config.config.teacher_dim == 40
    t5.save_pretrained(tmp_path / "t5")
    from_path = ShrunkT5EncoderModel.from_t5(str(tmp_path / "t5"), teacher_dim=40).eval()
    torch.testing.assert_close(from_path.shared.weight, t5.shared.weight)


@pytest.mark.parametrize(
    "bad, message",
    [
        ("clip-model", "needs a T5 .*got a CLIPTextModel"),
        ("clip-config", "needs a T5 .*got a CLIPTextConfig"),
        ("clip-path", "needs a T5 .*is a CLIPTextConfig"),
        ("tensor", "expects a T5EncoderModel, a T5Config or an id/path of one, got Tensor"),
        ("student", "got a student already"),
    ],
)
def test_from_t5_refuses_non_t5(bad, message, tmp_path):
    clip = CLIPTextModel(tiny.tiny_clip_text_config())
    clip.save_pretrained(tmp_path / "clip")
    arg = {
        "clip-model": clip,
        "clip-config": clip.config,
        "clip-path": str(tmp_path / "clip"),
        "tensor": torch.zeros(3),
        "student": _student(),
    }[bad]
    with pytest.raises(TypeError, match=message):
        ShrunkT5EncoderModel.from_t5(arg, teacher_dim=32)


# --- refusing bad weights --------------------------------------------------------------------------------


def test_refuses_pickle_only_folder(tmp_path):
    student = _student()
    student.save_pretrained(tmp_path / "s")
    os.remove(tmp_path / "s" / "model.safetensors")
    (tmp_path / "s" / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(WeightsError, match=r"holds only pickle weights \(pytorch_model.bin\).*safetensors only"):
        ShrunkT5EncoderModel.from_pretrained(tmp_path / "s")


def test_refuses_truncated_weights(tmp_path):
    _student().save_pretrained(tmp_path / "s")
    weights = tmp_path / "s" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(WeightsError, match="model.safetensors is truncated"):
        ShrunkT5EncoderModel.from_pretrained(tmp_path / "s")


def test_refuses_missing_weights(tmp_path):
    _student().save_pretrained(tmp_path / "s")
    weights = tmp_path / "s" / "model.safetensors"
    tensors = load_file(weights)
    del tensors["final_projection.3.weight"]
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(
        WeightsError, match="1 weights are missing or of the wrong shape \\(final_projection.3.weight\\)"
    ):
        ShrunkT5EncoderModel.from_pretrained(tmp_path / "s")


def test_refuses_absent_shard(tmp_path):
    _student().save_pretrained(tmp_path / "s", max_shard_size="20KB")
    shard = sorted((tmp_path / "s").glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(WeightsError, match=f"lists shards that are absent \\({shard.name}\\)"):
        ShrunkT5EncoderModel.from_pretrained(tmp_path / "s")


def test_refuses_a_plain_t5_folder_and_unsafe_loading(tmp_path):
    tiny.tiny_t5_encoder().save_pretrained(tmp_path / "t5")
    with pytest.raises(ValueError, match="holds a 't5' model, not a 'shrunk_t5' student encoder; build one with"):
        ShrunkT5EncoderModel.from_pretrained(tmp_path / "t5")
    # use_safetensors=False (what diffusers passes on) reads safetensors all the same; pickle is never read
    with pytest.raises(ValueError, match="holds a 't5' model, not a 'shrunk_t5' student encoder"):
        ShrunkT5EncoderModel.from_pretrained(tmp_path / "t5", use_safetensors=False)
    _student().save_pretrained(tmp_path / "student")
    ShrunkT5EncoderModel.from_pretrained(tmp_path / "student", use_safetensors=False)
    (tmp_path / "student" / "model.safetensors").rename(tmp_path / "student" / "pytorch_model.bin")
    with pytest.raises(WeightsError, match="holds only pickle weights"):
        ShrunkT5EncoderModel.from_pretrained(tmp_path / "student", use_safetensors=False)
    with pytest.raises(WeightsError, match="is not a folder"):
        from encoder_shrink.weights import safetensors_files

        safetensors_files(tmp_path / "nowhere")


def test_a_student_of_the_other_class_names_the_class_that_loads_it(tmp_path):
    from encoder_shrink import EncoderShrinkError, ShrunkUMT5EncoderModel, load_student

    tiny.tiny_student(student_class=ShrunkUMT5EncoderModel).save_pretrained(tmp_path / "umt5")
    with pytest.raises(EncoderShrinkError, match="holds a ShrunkUMT5EncoderModel, not a ShrunkT5EncoderModel"):
        ShrunkT5EncoderModel.from_pretrained(tmp_path / "umt5")
    assert type(load_student(tmp_path / "umt5")) is ShrunkUMT5EncoderModel
