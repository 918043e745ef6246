"""Benchmark: the GPU run as one call (`benchmarks/gpu/run.sh`): every GPU figure the project records, in one report.

On a machine with an NVIDIA GPU, in order and within `--budget` seconds (each step gets what is left):
1. the `accelerator` test tier (offload with a student inside, fp16/bf16 CUDA paths, TensorRT where installed);
2. `bench --synthetic flux-dev` in bf16 at 1024 px for 20 steps: T5-XXL against the student, without and with
   `enable_model_cpu_offload`;
3. the same under `--memory-fraction` for a 24 GB card;
4. the encode latency at 512 tokens of every backend that runs there (`bench --synthetic t5-xxl`);
5. one real-size distill step of FLUX-dev (`flux-t5base`, random weights), its `torch.cuda.max_memory_allocated`
   beside `plan`'s fake-tensor estimate (`step_memory`).
Each step's own results stay in its folder; `results.json` / `results.md` gather what each did, its status and time.
`--tiny` runs the same steps on the CPU at tiny size (the CI smoke test).

Run (GPU):  bash benchmarks/gpu/run.sh            (installs the carried wheels, then this module)
Run (CPU):  python -m encoder_shrink.benchmarks.gpu_run --tiny --output /tmp/gpu-run
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from encoder_shrink.files import pyplot, save_figure, write_results

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent
# A 24 GB card's memory, for `--memory-fraction` on a larger one.
SMALL_CARD_GIB = 24


def _steps(tiny: bool, out: Path) -> list[tuple[str, list[str], dict]]:
    """(name, command, extra environment) of each step; `--tiny` shrinks each to the CPU."""
    cli = [sys.executable, "-m", "encoder_shrink.cli"]
    tier = ["bash", str(ROOT / "gpu" / "accelerator_tier.sh")] + (["tests/tiue/test_pipeline.py"] if tiny else [])
    if tiny:
        bench = [*cli, "bench", "--synthetic", "t5-small", "--device", "cpu", "--dtype", "float32", "--seq-len", "16",
                 "--repeats", "1", "--backends", "torch"]
        small = []  # no GPU memory to cap
        latency = [*cli, "bench", "--synthetic", "t5-small", "--device", "cpu", "--seq-len", "16", "--repeats", "1",
                   "--backends", "torch"]
        step = [sys.executable, "-m", "encoder_shrink.benchmarks.step_memory", "--tiny", "flux-dev", "--recipe",
                "tiny", "--batch", "2"]
    else:
        bench = [*cli, "bench", "--synthetic", "flux-dev", "--device", "cuda", "--dtype", "bfloat16",
                 "--pipeline-steps", "20", "--resolution", "1024", "--offload"]
        small = [*bench, "--memory-fraction", f"{_small_card_fraction():.4f}"]
        latency = [*cli, "bench", "--synthetic", "t5-xxl", "--device", "cuda", "--dtype", "bfloat16", "--seq-len",
                   "512"]
        step = [sys.executable, "-m", "encoder_shrink.benchmarks.step_memory", "--pipeline", "flux-dev", "--recipe",
                "flux-t5base", "--device", "cuda", "--batch", "1"]
    steps = [("accelerator tier", tier, {"NO_INSTALL": "1", "OUT": str(out / "accelerator-tier")}),
             ("bench flux-dev 1024 px", [*bench, "--output", str(out / "bench-flux-dev")], {})]
    if small:
        steps.append((f"bench flux-dev on a {SMALL_CARD_GIB} GB card", [*small, "--output",
                                                                      str(out / "bench-flux-dev-24gb")], {}))
    steps += [("encode latency, 512 tokens", [*latency, "--output", str(out / "latency")], {}),
              ("distill step vs plan", [*step, "--output", str(out / "step-memory")], {})]
    return steps


def _small_card_fraction() -> float:
    import torch

    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    return min(1.0, SMALL_CARD_GIB / total)


def _summary(name: str, out: Path) -> dict:
    """What a finished step reports: the tier's test counts, or the headline of a step's results.json."""
    if name == "accelerator tier":
        junit = out / "accelerator-tier" / "junit.xml"
        if not junit.is_file():
            return {}
        suite = ElementTree.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    folder = {"bench flux-dev 1024 px": "bench-flux-dev", "encode latency, 512 tokens": "latency",
              "distill step vs plan": "step-memory"}.get(name, "bench-flux-dev-24gb")
    path = out / folder / "results.json"
    if not path.is_file():
        return {}
    results = json.loads(path.read_text())
    if name == "distill step vs plan":
        return {"growth_bytes": results["growth_bytes"], "device_over_estimate": results["device_over_estimate"],
                "tracker_over_estimate": results["tracker_over_estimate"]}
    return {"encoders": sorted(results.get("encoders", {}))}


def run(output: Path, budget: float, tiny: bool = False) -> dict:
    """Every step in order within `budget` seconds; what each did."""
    from tqdm.auto import tqdm

    started = time.monotonic()
    rows = {}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    steps = _steps(tiny, output)
    for name, command, extra in tqdm(steps, desc="gpu run", unit="step"):
        left = budget - (time.monotonic() - started)
        if left < 30:  # (a step cannot start, load and report in less)
            rows[name] = {"status": "not run: out of budget", "seconds": 0.0, "command": " ".join(command)}
            continue
        (output / "logs").mkdir(parents=True, exist_ok=True)
        log = output / "logs" / (name.replace(" ", "_").replace(",", "") + ".log")
        begin = time.monotonic()
        try:
            with open(log, "w") as handle:
                done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env={**env, **extra},
                                      timeout=left, cwd=ROOT.parent if (ROOT.parent / "pyproject.toml").is_file()
                                      else None)
            status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
        except subprocess.TimeoutExpired:
            status = "timed out"
        rows[name] = {"status": status, "seconds": round(time.monotonic() - begin, 1), "command": " ".join(command),
                      "log": str(log.relative_to(output)), **_summary(name, output)}
        logger.info("%s: %s in %.0f s", name, status, rows[name]["seconds"])
    return {"benchmark": "gpu_run", "tiny": tiny, "budget_seconds": budget, "variants": rows,
            "seconds": round(time.monotonic() - started, 1)}


def table(results: dict) -> str:
    lines = [f"GPU run{' (tiny, CPU)' if results['tiny'] else ''}: {results['seconds']:.0f} s of a "
             f"{results['budget_seconds']:.0f} s budget", "", "| step | status | seconds | figures |",
             "|---|---|---:|---|"]
    for name, row in results["variants"].items():
        figures = {k: v for k, v in row.items() if k not in ("status", "seconds", "command", "log")}
        lines.append(f"| {name} | {row['status']} | {row['seconds']:.0f} | {json.dumps(figures) if figures else ''} |")
    return "\n".join(lines)


def _chart(results: dict, path: Path) -> None:
    plt = pyplot()
    rows = list(results["variants"].items())
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
    ax.barh([n for n, _ in rows], [r["seconds"] for _, r in rows],
            color=["#27a" if r["status"] == "ok" else "#c63" for _, r in rows])
    ax.set_xlabel("seconds")
    ax.invert_yaxis()
    save_figure(fig, path, dpi=110)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="gpu-run")
    parser.add_argument("--budget", type=float, default=540, help="seconds for all steps together")
    parser.add_argument("--tiny", action="store_true", help="the same steps on the CPU at tiny size (smoke test)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    results = run(output, args.budget, tiny=args.tiny)
    write_results(output, results, table(results), _chart)
    print(table(results))


if __name__ == "__main__":
    main()
