"""Full-state checkpoints: an interrupted-then-resumed run ends with the same weights as an uninterrupted one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from encoder_shrink.distill import latest_checkpoint
from tests.distill import resume_run

SCRIPT = Path(resume_run.__file__)


def _weights(output: Path) -> dict[str, torch.Tensor]:
    return load_file(output / "student" / "model.safetensors")


def _assert_same_weights(a: Path, b: Path) -> None:
    first, second = _weights(a), _weights(b)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_interrupted_then_resumed_equals_uninterrupted(tiny_pipeline_dirs, tmp_path):
    pipeline = str(tiny_pipeline_dirs["flux-dev"])
    torch.manual_seed(0)
    resume_run.main(pipeline, str(tmp_path / "full"), "full")
    torch.manual_seed(0)
    resume_run.main(pipeline, str(tmp_path / "split"), "interrupt")
    checkpoint = latest_checkpoint(tmp_path / "split")
    assert checkpoint is not None and checkpoint.name == f"step-{resume_run.INTERRUPT_AT:08d}"
    assert not (tmp_path / "split" / "student").exists()  # the interrupted run did not finish
    torch.manual_seed(123)  # the resumed process starts from other RNG state: the checkpoint must restore it
    resume_run.main(pipeline, str(tmp_path / "split"), "resume")
    _assert_same_weights(tmp_path / "full", tmp_path / "split")
    summary = json.loads((tmp_path / "split" / "training_summary.json").read_text())
    assert summary["steps"] == resume_run.STEPS and summary["steps_this_run"] == resume_run.STEPS - resume_run.INTERRUPT_AT


def test_resume_without_checkpoint_starts_fresh_and_checkpoints_are_safetensors(tiny_pipeline_dirs, tmp_path):
    from encoder_shrink import EncoderShrinker, testing

    pipe = testing.load_tiny_pipeline("flux-dev", tiny_pipeline_dirs["flux-dev"])
    EncoderShrinker(pipe).distill(recipe="tiny", output_dir=tmp_path, resume=True, max_steps=8, checkpoint_every=4,
                                  eval_prompts=["a cat"])
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoints == ["step-00000004"]  # the final state is the student itself, not a checkpoint
    files = sorted(p.name for p in (tmp_path / "checkpoints" / "step-00000004").iterdir())
    assert files == ["lr_scheduler.json", "optimizer.json", "optimizer.safetensors", "rng-0.json",
                     "rng-0.safetensors", "state.json", "student"]
    assert not [p for p in (tmp_path / "checkpoints").rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl")]


def _accelerate(args: list[str], cwd: Path) -> None:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(SCRIPT), *args]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "TQDM_DISABLE": "1"}
    run = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_processes_resume_equals_uninterrupted(tiny_pipeline_dirs, tmp_path):
    pipeline = str(tiny_pipeline_dirs["flux-dev"])
    _accelerate([pipeline, str(tmp_path / "full"), "full"], tmp_path)
    _accelerate([pipeline, str(tmp_path / "split"), "interrupt"], tmp_path)
    checkpoint = latest_checkpoint(tmp_path / "split")
    assert sorted(p.name for p in checkpoint.glob("rng-*.safetensors")) == ["rng-0.safetensors", "rng-1.safetensors"]
    _accelerate([pipeline, str(tmp_path / "split"), "resume"], tmp_path)
    _assert_same_weights(tmp_path / "full", tmp_path / "split")
    summary = json.loads((tmp_path / "full" / "training_summary.json").read_text())
    assert summary["processes"] == 2
    # two processes train on different prompts: the result differs from a single-process run of the same recipe
    torch.manual_seed(0)
    resume_run.main(pipeline, str(tmp_path / "single"), "full")
    single, double = _weights(tmp_path / "single"), _weights(tmp_path / "full")
    assert not all(torch.equal(single[n], double[n]) for n in single)
