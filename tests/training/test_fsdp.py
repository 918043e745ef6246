"""FSDP2 through accelerate on the CPU (2 processes, gloo), for both training methods and a traced family: the shipped
config shards the frozen models and the trained one; the run equals the DDP run, resumes bit-identically after
`kill -9`, and writes ordinary folders.

Every run is a fresh `accelerate launch --config_file <shipped> -m encoder_shrink.cli ...`; nothing is seeded.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from encoder_shrink.training.checkpoint import latest_checkpoint
from encoder_shrink.training.sharding import accelerate_config

ROOT = Path(__file__).resolve().parents[2]
STEPS, EVERY = 24, 6


@dataclass(frozen=True)
class Method:
    """How to launch one training method on a tiny pipeline, and what it writes."""

    command: tuple[str, ...]
    recipe: str
    steps: int  # checkpoints every `steps // 4`: a kill lands mid-run
    model: str  # the trained model's folder in the run folder
    sharded: frozenset[str]  # what the summary reports as sharded
    # FSDP2 vs DDP: the reductions sum in another order; the distill step's happen to give identical bits, TiUE's
    # (two optimizers, the EMA, four steps of lr 2e-4 on a random UNet) drift by ~1.5e-4 of the largest weight
    tolerance: float
    extra: tuple[str, ...] = ()


METHODS = {
    # 24 steps of the tiny recipe: 6 trajectories of 4 steps
    "distill": Method(("distill",), "tiny", 24, "student", frozenset({"transformer", "text_encoder_2", "student"}),
                      1e-6),
    "tiue": Method(("tiue", "distill"), "tiny-tiue", 8, "pipeline/unet", frozenset({"student", "fake_score"}), 1e-3),
    # a family no file describes (FLUX.2 klein: Qwen3, an LLM student), traced by every process from its __call__
    # (with a teacher cache beside the run: each process writes its own shards and index there)
    "traced": Method(("distill",), "tiny", 8, "student", frozenset({"transformer", "text_encoder", "student"}), 1e-6,
                     ("--resolution", "16", "--cache-dir", "{cache}")),
}
ALL, REGISTERED = sorted(METHODS), ["distill", "tiue"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available"),
]


def _command(method: str, config: str, pipeline: Path, output: Path, *extra: str) -> list[str]:
    m = METHODS[method]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config(config)),
            "--num_processes", "2", "--mixed_precision", "no", "-m", "encoder_shrink.cli", *m.command,
            "--pipeline", str(pipeline), "--recipe", m.recipe, "--output", str(output), "--max-steps", str(m.steps),
            "--checkpoint-every", str(m.steps // 4),
            *(a.replace("{cache}", str(output.parent / "cache")) for a in m.extra), *extra]


def _env() -> dict:
    return {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}


def _run(command: list[str]) -> None:
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _kill_9_all(pid: int) -> None:
    """SIGKILL the launcher and every process under it at once (torchrun starts each worker in its own session)."""
    try:
        launcher = psutil.Process(pid)
        processes = [launcher, *launcher.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)
    psutil.wait_procs(processes, timeout=60)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    assert len(files) == 1, files  # one file of whole tensors, not shards
    return load_file(files[0])


@pytest.fixture(scope="module")
def method(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def pipeline(method, tiny_pipeline_dirs, tmp_path_factory) -> Path:
    from encoder_shrink import tiny

    if method == "tiue":
        return tiny.save_tiny_pipeline(tiny.STABLE_DIFFUSION, tmp_path_factory.mktemp("sd") / "sd")
    if method == "traced":
        from tests.pipelines.traced_families import build_flux2_klein

        folder = tmp_path_factory.mktemp("klein") / "klein"
        build_flux2_klein()[0].save_pretrained(folder)
        return folder
    return tiny_pipeline_dirs["flux-dev"]


@pytest.fixture(scope="module")
def fsdp_run(method, pipeline, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("fsdp") / "full"
    _run(_command(method, "fsdp2", pipeline, output))
    return output


@pytest.mark.parametrize("method", ALL, indirect=True)
def test_fsdp2_shards_the_frozen_models_and_the_trained_one(method, fsdp_run):
    summary = json.loads((fsdp_run / "training_summary.json").read_text())
    assert summary["processes"] == 2 and summary["distributed"] == "fsdp2"
    held = summary["sharded_fraction"]
    assert set(held) == METHODS[method].sharded, held
    assert all(0.45 <= fraction <= 0.65 for fraction in held.values()), held
    if method != "tiue":  # (FSDP2 cuts dim 0, the first process taking the larger part of an odd size)
        if "--cache-dir" in METHODS[method].extra:
            indexes = sorted(p.name for p in (fsdp_run.parent / "cache").rglob("index*.json"))
            assert indexes == ["index-r0.json", "index-r1.json"], indexes
    else:  # TiUE's checkpointed moments are those of one process holding half of each weight: whole here
        checkpoint = latest_checkpoint(fsdp_run)
        unet = _weights(fsdp_run / METHODS[method].model)
        moments = load_file(checkpoint / "optimizer.safetensors")
        assert sum(t.numel() for n, t in moments.items() if n.endswith("exp_avg")) == sum(
            t.numel() for t in unet.values())


@pytest.mark.parametrize("method", REGISTERED, indirect=True)
def test_fsdp2_run_equals_the_ddp_run(method, fsdp_run, pipeline, tmp_path):
    """Same processes, same prompts per process: sharding changes where the weights live, not what is learnt."""
    m = METHODS[method]
    _run(_command(method, "ddp", pipeline, tmp_path / "ddp"))
    sharded, replicated = _weights(fsdp_run / m.model), _weights(tmp_path / "ddp" / m.model)
    assert sharded.keys() == replicated.keys()
    worst = max(((sharded[n] - replicated[n]).abs().max() / replicated[n].abs().max().clamp_min(1e-12)).item()
                for n in sharded)
    assert worst <= m.tolerance, worst
    ddp = json.loads((tmp_path / "ddp" / "training_summary.json").read_text())
    assert ddp["distributed"] == "ddp" and ddp["steps"] == m.steps
    if method == "distill":  # the student learnt: the equality is not that of two untouched students
        assert ddp["fidelity_after"]["relative_mse"] < 0.5 * ddp["fidelity_before"]["relative_mse"]


@pytest.mark.parametrize("method", REGISTERED, indirect=True)
def test_fsdp2_writes_ordinary_folders(method, fsdp_run):
    """The trained model and every checkpoint's are whole models a single process loads, with the full shapes."""
    m = METHODS[method]
    weights = _weights(fsdp_run / m.model)
    if method == "distill":
        from encoder_shrink import ShrunkT5EncoderModel

        loaded = ShrunkT5EncoderModel.from_pretrained(fsdp_run / m.model).state_dict()
    else:
        from encoder_shrink.tiue import TiUEPipeline

        loaded = TiUEPipeline.from_pretrained(fsdp_run / "pipeline").unet.state_dict()
    assert all(torch.equal(loaded[n], t) for n, t in weights.items())
    assert not list(fsdp_run.rglob("*.distcp")) and not list(fsdp_run.rglob("*.bin"))
    checkpoint = latest_checkpoint(fsdp_run)
    saved = _weights(checkpoint / "student")  # (both methods checkpoint their trained model as `student/`)
    assert {n: t.shape for n, t in saved.items()} == {n: t.shape for n, t in weights.items()}


@pytest.mark.parametrize("method", ALL, indirect=True)
def test_fsdp2_kill_9_then_resume_ends_bit_identical(method, fsdp_run, pipeline, tmp_path):
    m = METHODS[method]
    output = tmp_path / "killed"
    process = subprocess.Popen(_command(method, "fsdp2", pipeline, output), env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while latest_checkpoint(output) is None and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        _kill_9_all(process.pid)
    finally:
        _kill_9_all(process.pid)
    assert latest_checkpoint(output) is not None and not (output / m.model).exists()
    _run(_command(method, "fsdp2", pipeline, output, "--resume"))
    first, resumed = _weights(fsdp_run / m.model), _weights(output / m.model)
    assert first.keys() == resumed.keys()
    for name in first:
        assert torch.equal(first[name], resumed[name]), name
    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["steps"] == m.steps and 0 < summary["steps_this_run"] < m.steps
