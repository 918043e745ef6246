"""Loading checkpoints of the reference implementation (DistillT5's `T5EncoderWithProjection` format)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from encoder_shrink import ShrunkT5EncoderModel, WeightsError, testing

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
    t5 = testing.tiny_t5_encoder(d_model=24, num_layers=2, seed=seed)
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
    assert student.config.pipeline_family == "flux" and student.config.component == "text_encoder_2"
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
