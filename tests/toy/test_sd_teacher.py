"""The toy SD teacher: its training script resumes bit-identically, and the bundled one draws the held-out world."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from encoder_shrink.errors import InputNotFoundError
from encoder_shrink.toy.checker import score
from encoder_shrink.toy.sd_teacher import BUNDLED_SD_TEACHER, generate_sd, load_toy_sd_teacher
from encoder_shrink.toy.teacher import BUNDLED_TEACHER
from encoder_shrink.toy.train_sd_teacher import main
from encoder_shrink.toy.world import sample_prompts

# Tiny settings: one render per prompt in the pool, batches of 4, 4 held-out prompts per evaluation.
FAST = ["--batch-size", "4", "--variants", "1", "--eval-every", "2", "--eval-prompts", "4", "--final-prompts", "4"]


def _weights(folder, parts=("unet", "text_encoder")):
    return {f"{part}/{k}": v for part in parts
            for k, v in load_file(next((folder / part).glob("*.safetensors"))).items()}


@pytest.mark.slow
def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
    main(["--output", str(tmp_path / "straight"), "--work-dir", str(tmp_path / "w1"), "--steps", "4", *FAST])
    main(["--output", str(tmp_path / "resumed"), "--work-dir", str(tmp_path / "w2"), "--steps", "2", *FAST])
    halfway = _weights(tmp_path / "resumed")
    main(["--output", str(tmp_path / "resumed"), "--work-dir", str(tmp_path / "w2"), "--steps", "4", "--resume",
          *FAST])

    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert any(not torch.equal(halfway[k], resumed[k]) for k in halfway)  # the resumed run did train
    # Both the UNet and the CLIP text encoder train; the VAE is the world's, frozen.
    assert any(k.startswith("text_encoder/") and not torch.equal(halfway[k], resumed[k]) for k in halfway)
    world_vae, vae = _weights(BUNDLED_TEACHER, ("vae",)), _weights(tmp_path / "resumed", ("vae",))
    assert all(torch.equal(world_vae[k], vae[k]) for k in world_vae)
    summary = json.loads((tmp_path / "resumed" / "training_summary.json").read_text())
    assert [h["step"] for h in summary["history"]] == [2, 4]
    assert set(summary["final"]["heldout"]["by_kind"]) == {"single", "count", "spatial", "text"}
    assert set(summary["guidance"]) == {"1.0", "2.0", "3.0", "4.5"}
    assert {f.suffix for f in (tmp_path / "w2").rglob("*") if f.is_file()} <= {".safetensors", ".json"}
    # A StableDiffusionPipeline that TiUE can distil: SD's DDIM config, no VAE shift (SD pipelines do not shift).
    pipe = load_toy_sd_teacher(tmp_path / "resumed")
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert (pipe.scheduler.config.clip_sample, pipe.scheduler.config.steps_offset) == (False, 1)
    assert pipe.vae.config.shift_factor is None


@pytest.fixture(scope="module")
def teacher():
    return load_toy_sd_teacher()


@pytest.mark.slow
def test_the_bundled_teacher_draws_held_out_prompts(teacher):
    files = [f for f in BUNDLED_SD_TEACHER.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files if f.suffix == ".safetensors") <= 20e6  # the budget of the teacher
    assert {f.suffix for f in files} <= {".safetensors", ".json"}  # nothing to unpickle
    held_out = sample_prompts(16, "heldout", seed=3)
    result = score(generate_sd(teacher, held_out, seeds=list(range(16))), held_out)
    # The shipped teacher scored 0.8625 on 160 prompts (training_summary.json); an untrained UNet scores 0.
    assert result["overall"] >= 0.6, result
    # Guidance is what the sampler needs: without CFG the same prompts are drawn worse.
    unguided = score(generate_sd(teacher, held_out, seeds=list(range(16)), guidance_scale=1.0), held_out)
    assert unguided["overall"] < result["overall"], (unguided, result)


def test_a_missing_teacher_is_named_with_the_command_that_makes_it(tmp_path):
    with pytest.raises(InputNotFoundError, match="python -m encoder_shrink.toy.train_sd_teacher --output"):
        load_toy_sd_teacher(tmp_path)
