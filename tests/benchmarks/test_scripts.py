"""Every benchmark script runs end to end at tiny size (a smoke test; the real figures are in BENCHMARKS.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"
# Each script of benchmarks/ with the arguments of its smoke run. Library modules (bench, measure, synthetic,
# reference_loop) are exercised by test_bench.py / test_synthetic.py through `encoder-shrink bench`.
SMOKE_ARGS = {
    "export_latency": ["--size", "tiny", "--tokens", "16", "--repeats", "1", "--warmup", "0"],
    "distill_throughput": ["--steps", "2", "--num-inference-steps", "2", "--batch-size", "1", "--resolution", "32"],
    # On the meta device at real size (nothing is allocated); two families keep it short.
    "family_sizes": ["--families", "bria", "pixart-sigma"],
    # flux-dev (the reference) and one video family, two timed steps each.
    "step_cost": ["--families", "ltx", "--steps", "2", "--warmup", "1"],
    # One family, registered against traced, one alternating round of two timed steps.
    "traced_step_cost": ["--families", "flux-dev", "--steps", "2", "--warmup", "1", "--rounds", "1"],
    # One family the trace serves and one it refuses (Bria: a length per prompt), four steps each.
    "traced_learning": ["--families", "pixart-sigma", "bria", "--steps", "4"],
    # A tiny teacher (the real ones take a minute to build), timed on one layer at 16 tokens, a process per variant.
    "llm_encoders": ["--teachers", "tiny", "--tokens", "16", "--repeats", "1", "--teacher-layers", "1"],
    # A tiny UNet; the SD 2.1 count and FLOPs are checked on meta by tests/tiue/test_cost.py.
    "tiue_cost": ["--size", "tiny", "--steps", "2"],
    # Two backends (the int8 one exported and parity-checked; each timed in its own process) and the masked section.
    # Two helps, one process each: the top level and one subcommand.
    "cli_startup": ["--commands", "", "recipes", "--repeats", "1"],
    # The planner's estimate beside the real step, on a tiny pipeline (the GPU run does FLUX-dev on CUDA).
    "step_memory": ["--tiny", "flux-dev", "--recipe", "tiny", "--batch", "2"],
    # The GPU run's steps at tiny size on the CPU (each skips or shrinks what needs CUDA).
    "gpu_run": ["--tiny", "--budget", "500"],
    "cpu_limit": ["--size", "tiny", "--lengths", "8", "16", "--repeats", "1", "--warmup", "0", "--gemm-seconds",
                  "0.05", "--backends", "torch-fp32", "onnx-int8"],
}
LIBRARY_MODULES = {"__init__", "bench", "measure", "synthetic", "reference_loop"}


def test_every_script_has_a_smoke_run():
    scripts = {p.stem for p in BENCHMARKS.glob("*.py")} - LIBRARY_MODULES
    assert scripts == set(SMOKE_ARGS)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SMOKE_ARGS))
def test_script_runs_at_tiny_size(script, tmp_path):
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable,
        "-m",
        f"encoder_shrink.benchmarks.{script}",
        "--output",
        str(tmp_path),
        *SMOKE_ARGS[script],
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "results.md").read_text().startswith("|") or "|" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "|" in done.stdout  # the table is printed
    rows = results.get("backends") or results.get("variants") or results.get("families")
    assert rows and all(isinstance(figures, dict) for figures in rows.values())


@pytest.mark.slow
def test_gpu_accelerator_tier_script_runs_on_the_cpu(tmp_path):
    """benchmarks/gpu/accelerator_tier.sh end to end without a GPU: its tests skip with their reason, its report is
    written (on a GPU machine the same script installs the carried wheels and runs them)."""
    script = BENCHMARKS / "gpu" / "accelerator_tier.sh"
    env = {**os.environ, "NO_INSTALL": "1", "OUT": str(tmp_path), "PATH": f"{Path(sys.executable).parent}:"
           f"{os.environ.get('PATH', '')}"}
    done = subprocess.run(["bash", str(script), "tests/tiue/test_pipeline.py"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    log = (tmp_path / "accelerator-tier.log").read_text()
    assert "skipped" in log and "needs a CUDA accelerator" in log and (tmp_path / "junit.xml").is_file()
