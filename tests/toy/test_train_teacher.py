"""python -m encoder_shrink.toy.train_teacher: a loadable teacher; a resumed run equals an uninterrupted one."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from encoder_shrink.toy.teacher import load_toy_teacher
from encoder_shrink.toy.train_teacher import main

# Tiny settings: one VAE step, two T5 pretraining steps, one render per prompt, 4 held-out prompts per evaluation.
FAST = [
    "--vae-steps",
    "1",
    "--t5-steps",
    "2",
    "--batch-size",
    "4",
    "--variants",
    "1",
    "--eval-every",
    "2",
    "--eval-prompts",
    "4",
    "--final-prompts",
    "4",
]


def _weights(folder, parts=("transformer", "text_encoder_2")):
    return {
        f"{part}/{k}": v for part in parts for k, v in load_file(next((folder / part).glob("*.safetensors"))).items()
    }


@pytest.mark.slow
def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
    main(
        ["--output", str(tmp_path / "straight"), "--work-dir", str(tmp_path / "work-straight"), "--steps", "4", *FAST]
    )
    main(["--output", str(tmp_path / "resumed"), "--work-dir", str(tmp_path / "work-resumed"), "--steps", "2", *FAST])
    halfway = _weights(tmp_path / "resumed")
    main(
        [
            "--output",
            str(tmp_path / "resumed"),
            "--work-dir",
            str(tmp_path / "work-resumed"),
            "--steps",
            "4",
            "--resume",
            *FAST,
        ]
    )

    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert any(not torch.equal(halfway[k], resumed[k]) for k in halfway)  # the resumed run did train
    # The T5 is pretrained before the denoiser and frozen while it trains, as FLUX's T5-XXL is.
    pretrained = _weights(tmp_path / "work-resumed" / "pipeline", ("text_encoder_2",))
    assert all(torch.equal(pretrained[k], resumed[k]) for k in pretrained)
    summary = json.loads((tmp_path / "resumed" / "training_summary.json").read_text())
    assert summary["vae"]["t5_pretraining"]["steps"] == 2
    assert [h["step"] for h in summary["history"]] == [2, 4]
    assert set(summary["final"]["heldout"]["by_kind"]) == {"single", "count", "spatial", "text"}
    # The state kept for --resume is safetensors and JSON only, and the output is a loadable FluxPipeline.
    assert {f.suffix for f in (tmp_path / "work-resumed").rglob("*") if f.is_file()} <= {".safetensors", ".json"}
    pipe = load_toy_teacher(tmp_path / "resumed")
    assert pipe.transformer.config.attention_head_dim == 64
