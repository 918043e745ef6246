"""FSDP2 through accelerate on the CPU (2 processes, gloo): the shipped config shards the frozen denoiser, the teacher
and the student; the run equals the DDP run, resumes bit-identically after `kill -9`, and writes ordinary folders.

Every run is a fresh `accelerate launch ... -m encoder_shrink.cli distill` with a shipped config; nothing is seeded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from encoder_shrink.training.checkpoint import latest_checkpoint
from encoder_shrink.training.sharding import accelerate_config

ROOT = Path(__file__).resolve().parents[2]
# 24 steps of the tiny recipe (6 trajectories of 4 steps), a checkpoint every 6: a kill lands mid-run.
STEPS, EVERY = 24, 6

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available"),
]


def _command(config: str, pipeline: Path, output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config(config)),
            "--num_processes", "2", "--mixed_precision", "no", "-m", "encoder_shrink.cli", "distill",
            "--pipeline", str(pipeline), "--recipe", "tiny", "--output", str(output), "--max-steps", str(STEPS),
            "--checkpoint-every", str(EVERY), *extra]


def _env() -> dict:
    return {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}


def _run(command: list[str]) -> None:
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


@pytest.fixture(scope="module")
def pipeline(tiny_pipeline_dirs) -> Path:
    return tiny_pipeline_dirs["flux-dev"]


@pytest.fixture(scope="module")
def fsdp_run(pipeline, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("fsdp") / "full"
    _run(_command("fsdp2", pipeline, output))
    return output


def test_fsdp2_shards_the_frozen_models_and_the_student(fsdp_run):
    summary = json.loads((fsdp_run / "training_summary.json").read_text())
    assert summary["processes"] == 2 and summary["distributed"] == "fsdp2"
    # the main process held about half of each model's weights (FSDP2 cuts dim 0, the first process taking the
    # larger part of an odd size: the tiny student's 2-head attention bias and 263-token table)
    held = summary["sharded_fraction"]
    assert set(held) == {"transformer", "text_encoder_2", "student"}, held
    assert all(0.45 <= fraction <= 0.65 for fraction in held.values()), held


def test_fsdp2_run_equals_the_ddp_run(fsdp_run, pipeline, tmp_path):
    """Same processes, same prompts per process: sharding changes where the weights live, not the student (the
    stated tolerance is 1e-6 relative; the gloo reductions give identical bits here)."""
    _run(_command("ddp", pipeline, tmp_path / "ddp"))
    sharded, replicated = _weights(fsdp_run / "student"), _weights(tmp_path / "ddp" / "student")
    assert sharded.keys() == replicated.keys()
    for name in sharded:
        scale = replicated[name].abs().max().clamp_min(1e-12)
        assert ((sharded[name] - replicated[name]).abs().max() / scale).item() <= 1e-6, name
    ddp = json.loads((tmp_path / "ddp" / "training_summary.json").read_text())
    assert ddp["distributed"] == "ddp" and ddp["sharded_fraction"] == {}
    # the student trained: the equality above is not that of two untouched students
    assert ddp["fidelity_after"]["relative_mse"] < 0.5 * ddp["fidelity_before"]["relative_mse"]


def test_fsdp2_writes_ordinary_folders(fsdp_run):
    """The student and every checkpoint's student are whole models a single process loads, with the full shapes."""
    from encoder_shrink import ShrunkT5EncoderModel

    student = ShrunkT5EncoderModel.from_pretrained(fsdp_run / "student")
    weights = _weights(fsdp_run / "student")
    assert {n: tuple(p.shape) for n, p in student.state_dict().items() if n in weights} == {
        n: tuple(t.shape) for n, t in weights.items()}
    assert not list((fsdp_run / "student").glob("*distcp*")) and not list(fsdp_run.rglob("*.bin"))
    checkpoint = latest_checkpoint(fsdp_run)
    assert {n: t.shape for n, t in _weights(checkpoint / "student").items()} == {n: t.shape for n, t in
                                                                                   weights.items()}
    moments = load_file(checkpoint / "optimizer.safetensors")
    assert moments["0.exp_avg"].shape == weights["shared.weight"].shape  # the full Adam state, not a shard


def test_fsdp2_kill_9_then_resume_ends_bit_identical(fsdp_run, pipeline, tmp_path):
    output = tmp_path / "killed"
    process = subprocess.Popen(_command("fsdp2", pipeline, output), env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while latest_checkpoint(output) is None and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)  # the launcher and both workers
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert latest_checkpoint(output) is not None and not (output / "student").exists()
    _run(_command("fsdp2", pipeline, output, "--resume"))
    first, resumed = _weights(fsdp_run / "student"), _weights(output / "student")
    assert first.keys() == resumed.keys()
    for name in first:
        assert torch.equal(first[name], resumed[name]), name
    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["steps"] == STEPS and 0 < summary["steps_this_run"] < STEPS
