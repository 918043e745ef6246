"""Runs that reproduce: the same command gives the same bits; a killed-then-resumed run ends as an uninterrupted one.

Every run here is a fresh `encoder-shrink distill` process; no test seeds anything.
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

from encoder_shrink.distill import latest_checkpoint
from tests.distill import resume_run

SCRIPT = Path(resume_run.__file__)
ROOT = Path(__file__).resolve().parents[2]
# 24 steps of the tiny recipe: 6 trajectories of 4 steps, linear decay, dropout on, a checkpoint every 6 steps (so a
# resume starts mid-trajectory).
STEPS, EVERY = 24, 6


def _command(pipeline: Path, output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "encoder_shrink.cli", "distill", "--pipeline", str(pipeline), "--recipe", "tiny",
            "--output", str(output), "--max-steps", str(STEPS), "--checkpoint-every", str(EVERY), *extra]


def _env() -> dict:
    return {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}


def _run(command: list[str]) -> None:
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _weights(output: Path) -> dict[str, torch.Tensor]:
    return load_file(output / "student" / "model.safetensors")


def _assert_same_bits(a: Path, b: Path) -> None:
    first, second = _weights(a), _weights(b)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


@pytest.fixture(scope="module")
def uninterrupted(tiny_pipeline_dirs, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("runs") / "first"
    _run(_command(tiny_pipeline_dirs["flux-dev"], output))
    return output


@pytest.mark.slow
def test_the_same_command_twice_gives_bit_identical_students(uninterrupted, tiny_pipeline_dirs, tmp_path):
    _run(_command(tiny_pipeline_dirs["flux-dev"], tmp_path / "second"))
    _assert_same_bits(uninterrupted, tmp_path / "second")
    # the student trained: it moved away from the recipe's initial student, so the equality above is not trivial
    first = json.loads((uninterrupted / "training_summary.json").read_text())
    assert (
        first["steps"] == STEPS and first["fidelity_after"]["relative_mse"] < first["fidelity_before"]["relative_mse"]
    )


@pytest.mark.slow
def test_kill_9_then_resume_ends_bit_identical_to_the_uninterrupted_run(uninterrupted, tiny_pipeline_dirs, tmp_path):
    output = tmp_path / "killed"
    process = subprocess.Popen(_command(tiny_pipeline_dirs["flux-dev"], output), env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while latest_checkpoint(output) is None and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL
    finally:
        process.kill()
    checkpoint = latest_checkpoint(output)
    assert checkpoint is not None and not (output / "student").exists()  # killed mid-run, before the end
    _run(_command(tiny_pipeline_dirs["flux-dev"], output, "--resume"))
    _assert_same_bits(uninterrupted, output)
    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["steps"] == STEPS and 0 < summary["steps_this_run"] < STEPS


def test_resume_without_checkpoint_starts_fresh_and_checkpoints_are_safetensors(tiny_pipeline_dirs, tmp_path):
    from encoder_shrink import EncoderShrinker, tiny

    pipe = tiny.load_tiny_pipeline("flux-dev", tiny_pipeline_dirs["flux-dev"])
    EncoderShrinker(pipe).distill(recipe="tiny", output_dir=tmp_path, resume=True, max_steps=8, checkpoint_every=4,
                                  eval_prompts=["a cat"])
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoints == ["step-00000004"]  # the final state is the student itself, not a checkpoint
    files = sorted(p.name for p in (tmp_path / "checkpoints" / "step-00000004").iterdir())
    assert files == ["lr_schedulers.json", "optimizer.json", "optimizer.safetensors", "state.json", "student"]
    assert not [p for p in (tmp_path / "checkpoints").rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl")]


def _accelerate(args: list[str], cwd: Path) -> None:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(SCRIPT), *args]
    run = subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_processes_resume_equals_uninterrupted(tiny_pipeline_dirs, tmp_path):
    pipeline = str(tiny_pipeline_dirs["flux-dev"])
    _accelerate([pipeline, str(tmp_path / "full"), "full"], tmp_path)
    _accelerate([pipeline, str(tmp_path / "split"), "interrupt"], tmp_path)
    checkpoint = latest_checkpoint(tmp_path / "split")
    assert json.loads((checkpoint / "state.json").read_text())["processes"] == 2
    _accelerate([pipeline, str(tmp_path / "split"), "resume"], tmp_path)
    _assert_same_bits(tmp_path / "full", tmp_path / "split")
    summary = json.loads((tmp_path / "full" / "training_summary.json").read_text())
    assert summary["processes"] == 2
    # two processes train on different prompts: the result differs from a single-process run of the same recipe
    resume_run.main(pipeline, str(tmp_path / "single"), "full")
    single, double = _weights(tmp_path / "single"), _weights(tmp_path / "full")
    assert not all(torch.equal(single[n], double[n]) for n in single)


class _Crash(Exception):
    pass


# wan: a UMT5 student with zeroed padding; ltx: packed 5-D latents (the fast sibling of the slow wan case)
@pytest.mark.parametrize("family", [pytest.param("wan", marks=pytest.mark.slow), "ltx"])
def test_video_family_run_with_cache_resumes_bit_identical(family, tiny_pipeline_dirs, tmp_path):
    """The loop, the teacher cache and resume work unchanged on video latents (crash after the step-6 checkpoint)."""
    from encoder_shrink import EncoderShrinker, tiny

    pipe = tiny.load_tiny_pipeline(family, tiny_pipeline_dirs[family])
    kwargs = {"recipe": "tiny", "max_steps": 12, "checkpoint_every": EVERY, "eval_prompts": ["a cat"],
              "cache_dir": tmp_path / "cache", **tiny.tiny_recipe_overrides(family)}
    EncoderShrinker(pipe).distill(output_dir=tmp_path / "full", **kwargs)

    def crash(step, loss):
        if step == EVERY + 1:
            raise _Crash

    with pytest.raises(_Crash):
        EncoderShrinker(pipe).distill(output_dir=tmp_path / "split", callback=crash, **kwargs)
    assert latest_checkpoint(tmp_path / "split").name == f"step-{EVERY:08d}"
    shrinker = EncoderShrinker(pipe)
    shrinker.distill(output_dir=tmp_path / "split", resume=True, **kwargs)
    _assert_same_bits(tmp_path / "full", tmp_path / "split")
    assert shrinker.summary["teacher_texts_encoded"] == 0  # every row came from the cache the first runs wrote
    assert shrinker.summary["recipe"]["num_frames"] == kwargs["num_frames"]
