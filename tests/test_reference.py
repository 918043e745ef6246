"""Loading checkpoints of the reference implementation (DistillT5's `T5EncoderWithProjection` format)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from encoder_shrink import ShrunkT5EncoderModel, WeightsError, tiny

IDS = torch.tensor([[3, 16, 42, 7, 1, 0, 0, 0], [5, 6, 1, 0, 0, 0, 0, 0]])


class ReferenceLayout(nn.Module):
    """The reference's module layout: a whole T5EncoderModel as `encoder`, then `final_projection`."""

    def __init__(self, t5, out_dim):
        super().__init__()
        self.encoder = t5
        width = t5.config.d_model
        self.final_projection = nn.Sequential(
            nn.Linear(width, out_dim, bias=False), nn.ReLU(), nn.Dropout(0.1), nn.Linear(out_dim, out_dim, bias=False)
        )

    def forward(self, input_ids, attention_mask=None):
        return self.final_projection(self.encoder(input_ids, attention_mask=attention_mask).last_hidden_state)


def write_reference_checkpoint(folder, out_dim=64, keep_tied_copy=False, seed=7):
    t5 = tiny.tiny_t5_encoder(d_model=24, num_layers=2, seed=seed)
    reference = ReferenceLayout(t5, out_dim).eval()
    folder.mkdir(parents=True)
    config = t5.config.to_dict()
    config.update(
        architectures=["T5EncoderWithProjection"], model_type="t5", project_in_dim=24, project_out_dim=out_dim
    )
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.clone().contiguous() for k, v in reference.state_dict().items()}
    if not keep_tied_copy:  # transformers de-duplicates tied tensors when it saves
        del state["encoder.encoder.embed_tokens.weight"]
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    return reference


@pytest.mark.parametrize("keep_tied_copy", [False, True])
def test_loads_reference_checkpoint_and_reproduces_it(tmp_path, keep_tied_copy):
    reference = write_reference_checkpoint(tmp_path / "ref", keep_tied_copy=keep_tied_copy)
    student = ShrunkT5EncoderModel.from_pretrained(tmp_path / "ref").eval()
    assert student.config.teacher_dim == 64 and student.config.d_model == 24
    # the published reference students replace FLUX.1-dev's T5-XXL: a registered family, so no wrong-family warning
    assert student.config.pipeline_family == "flux-dev" and student.config.component == "text_encoder_2"
    mask = (IDS != 0).long()
    with torch.no_grad():
        torch.testing.assert_close(student(IDS).last_hidden_state, reference(IDS))
        torch.testing.assert_close(student(IDS, attention_mask=mask)[0], reference(IDS, attention_mask=mask))


def test_reference_checkpoint_resaves_in_student_format(tmp_path):
    reference = write_reference_checkpoint(tmp_path / "ref")
    ShrunkT5EncoderModel.from_pretrained(tmp_path / "ref").save_pretrained(tmp_path / "converted")
    config = json.loads((tmp_path / "converted" / "config.json").read_text())
    assert config["model_type"] == "shrunk_t5" and "project_in_dim" not in config
    keys = set(load_file(tmp_path / "converted" / "model.safetensors"))
    assert "shared.weight" in keys and not any(k.startswith("encoder.encoder.") for k in keys)
    again = ShrunkT5EncoderModel.from_pretrained(tmp_path / "converted").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(IDS).last_hidden_state, reference(IDS))


def test_inconsistent_reference_config_is_refused(tmp_path):
    write_reference_checkpoint(tmp_path / "ref")
    config = json.loads((tmp_path / "ref" / "config.json").read_text())
    config["project_in_dim"] = 768
    (tmp_path / "ref" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="project_in_dim=768 but the T5's d_model=24"):
        ShrunkT5EncoderModel.from_pretrained(tmp_path / "ref")


def test_reference_checkpoint_missing_projector_is_refused(tmp_path):
    write_reference_checkpoint(tmp_path / "ref")
    weights = tmp_path / "ref" / "model.safetensors"
    tensors = load_file(weights)
    del tensors["final_projection.0.weight"]
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(WeightsError, match="final_projection.0.weight"):
        ShrunkT5EncoderModel.from_pretrained(tmp_path / "ref")


def test_reference_students_record_the_family_they_were_made_for(tmp_path, tiny_pipeline_dirs, caplog):
    """Loaded or converted, a DistillT5 checkpoint names the registered family flux-dev: no wrong-family warning."""
    import logging

    from encoder_shrink import check_compatible
    from encoder_shrink.convert import convert_reference_checkpoint

    write_reference_checkpoint(tmp_path / "ref", out_dim=tiny.T5_TINY_DIM)
    pipe = tiny.load_tiny_pipeline("flux-dev", tiny_pipeline_dirs["flux-dev"])
    for student in (ShrunkT5EncoderModel.from_pretrained(tmp_path / "ref"),
                    convert_reference_checkpoint(tmp_path / "ref", tmp_path / "converted")):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="encoder_shrink"):
            check_compatible(pipe, student)
        assert student.config.pipeline_family == "flux-dev" and "distilled for" not in caplog.text
    saved = ShrunkT5EncoderModel.from_pretrained(tmp_path / "converted")
    assert saved.config.pipeline_family == "flux-dev"


def _comfyui_layout(path, config):
    """What the reference's ComfyUI node does with the one file: `*shared.weight` -> `shared.weight`,
    `encoder.encoder.` -> `encoder.`, the projector kept, loaded into a T5 encoder plus the projector."""
    from transformers import T5Config, T5EncoderModel

    state = {}
    for key, value in load_file(path).items():
        if "shared.weight" in key:
            state["shared.weight"] = value
        elif key.startswith("encoder.encoder."):
            state[key.replace("encoder.encoder.", "encoder.", 1)] = value
        else:
            state[key] = value
    fields = {k: v for k, v in config.items() if k not in ("architectures", "model_type", "export")}
    t5 = T5EncoderModel(T5Config(**fields)).eval()
    projection = nn.Sequential(
        nn.Linear(config["project_in_dim"], config["project_out_dim"], bias=False),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Linear(config["project_out_dim"], config["project_out_dim"], bias=False),
    )
    t5_state = {k: v for k, v in state.items() if not k.startswith("final_projection.")}
    t5_state["encoder.embed_tokens.weight"] = t5_state["shared.weight"]
    t5.load_state_dict(t5_state, strict=True)
    projection.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("final_projection.")},
                               strict=True)
    return lambda ids, mask=None: projection.eval()(t5(ids, attention_mask=mask).last_hidden_state)


def test_distillt5_export_is_one_file_the_reference_tools_read_and_convert_reads_back(tmp_path, capsys):
    from encoder_shrink.exporters import load_encoder, load_report
    from encoder_shrink.exporters.distillt5 import reference_layout

    from encoder_shrink.cli import main

    student = tiny.tiny_student(teacher_dim=48, max_sequence_length=16, pipeline_family="sd3",
                                   component="text_encoder_3", use_attention_mask=False)
    student.save_pretrained(tmp_path / "student")
    assert main(["export", str(tmp_path / "student"), "--format", "distillt5", "--output", str(tmp_path / "ref")]) == 0
    assert "distillt5" in capsys.readouterr().out
    files = sorted(p.name for p in (tmp_path / "ref").iterdir())
    assert files == ["config.json", "export_report.json", "model.safetensors"]
    keys = set(load_file(tmp_path / "ref" / "model.safetensors"))
    assert "encoder.shared.weight" in keys and {"final_projection.0.weight", "final_projection.3.weight"} <= keys
    assert all(k.startswith(("encoder.encoder.", "final_projection.")) or k == "encoder.shared.weight" for k in keys)
    config = json.loads((tmp_path / "ref" / "config.json").read_text())
    assert config["architectures"] == ["T5EncoderWithProjection"] and config["model_type"] == "t5"
    assert (config["project_in_dim"], config["project_out_dim"], config["out_dim"]) == (16, 48, 48)
    assert load_report(tmp_path / "ref")["parity"]["bit_identical"]

    mask = (IDS != 0).long()
    with torch.no_grad():
        expected = student(IDS, attention_mask=mask)[0]
        # the reference's module layout (a T5EncoderModel as `encoder`, then final_projection) loads it strictly
        reference = reference_layout(config).eval()
        state = load_file(tmp_path / "ref" / "model.safetensors")
        reference.load_state_dict({**state, "encoder.encoder.embed_tokens.weight": state["encoder.shared.weight"]})
        torch.testing.assert_close(reference(IDS, attention_mask=mask), expected)
        # the ComfyUI node's key mapping loads it strictly too
        torch.testing.assert_close(
            _comfyui_layout(tmp_path / "ref" / "model.safetensors", config)(IDS, mask), expected
        )
        # load_encoder and `encoder-shrink convert` read it back: identical outputs, and the record of the teacher
        for folder in (tmp_path / "ref", tmp_path / "back"):
            if folder.name == "back":
                assert main(["convert", str(tmp_path / "ref"), "--output", str(folder)]) == 0
            again = load_encoder(folder).eval()
            assert isinstance(again, ShrunkT5EncoderModel) and again.config.pipeline_family == "sd3"
            assert (again.config.component, again.config.max_sequence_length) == ("text_encoder_3", 16)
            assert torch.equal(again(IDS, attention_mask=mask)[0], expected)
    assert "export" not in json.loads((tmp_path / "back" / "config.json").read_text())


def test_convert_reads_a_single_reference_file_without_config(tmp_path):
    from encoder_shrink.cli import main

    reference = write_reference_checkpoint(tmp_path / "ref", out_dim=40)
    single = tmp_path / "distill_t5_base.safetensors"
    (tmp_path / "ref" / "model.safetensors").rename(single)
    assert main(["convert", str(single), "--output", str(tmp_path / "student")]) == 0
    student = ShrunkT5EncoderModel.from_pretrained(tmp_path / "student").eval()
    assert (student.config.d_model, student.config.num_layers, student.config.teacher_dim) == (24, 2, 40)
    with torch.no_grad():
        torch.testing.assert_close(student(IDS)[0], reference(IDS))
    (tmp_path / "weights.bin").write_bytes(b"x")
    assert main(["convert", str(tmp_path / "weights.bin"), "--output", str(tmp_path / "other")]) == 2
