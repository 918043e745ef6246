"""Benchmark: the planner's fake-tensor estimate of a distill step beside the same step run for real.

Three figures of one step's memory growth (its peak minus what was held when it began): the planner's estimate
(`encoder_shrink.training.plan.measure_step` on fake tensors), torch's memory tracker on the real step, and on a GPU
`torch.cuda.max_memory_allocated`. The real step runs the published architecture with random weights.

Run on a GPU:  python -m encoder_shrink.benchmarks.step_memory --pipeline flux-dev --recipe flux-t5base --device cuda
On the CPU:    python -m encoder_shrink.benchmarks.step_memory --tiny flux-dev --recipe tiny --batch 8
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from encoder_shrink.files import pyplot, save_figure, write_results

logger = logging.getLogger(__name__)
MIB = 2**20


def _pipeline(name: str, tiny: bool, device: str):
    """The pipeline of the step: a tiny offline build, or the published architecture (meta: architecture only)."""
    if tiny:
        from encoder_shrink import tiny as builders

        pipe = builders.tiny_pipeline_class(name)(**builders.tiny_pipeline_components(name))
        return pipe if device == "meta" else pipe.to(device)
    if device == "meta":
        from encoder_shrink.training.plan import _plan_pipeline

        return _plan_pipeline(name)
    from encoder_shrink.benchmarks.synthetic import synthetic_pipeline

    return synthetic_pipeline(name, dtype=torch.bfloat16, device=device)


def measure(pipeline: str, recipe: str, batch: int = 1, device: str = "cpu", tiny: bool = False,
            gradient_checkpointing: bool = False) -> dict:
    """The three figures of one step of `recipe` on `pipeline` at `batch`, and their ratios."""
    from encoder_shrink.recipes import load_recipe
    from tqdm.auto import tqdm

    from encoder_shrink import tiny as builders
    from encoder_shrink.training.plan import measure_step

    loaded = load_recipe(recipe)
    if tiny:
        loaded = loaded.with_overrides(**builders.tiny_recipe_overrides(pipeline))
    figures = {}
    for label, fake in tqdm((("estimate", True), ("real", False)), desc="steps", unit="step"):
        pipe = _pipeline(pipeline, tiny, "meta" if fake and not tiny else ("cpu" if fake else device))
        step = measure_step(pipe, loaded, batch=batch, fake=fake, device="cpu" if fake else device,
                            gradient_checkpointing=gradient_checkpointing)
        figures[label] = step
        del pipe
    estimate, real = figures["estimate"], figures["real"]
    growth = {"estimate": estimate.peak["total"] - estimate.start["total"],
              "tracker": real.peak["total"] - real.start["total"], "device": real.device_peak_growth}
    return {
        "benchmark": "step_memory", "pipeline": pipeline, "tiny": tiny, "recipe": loaded.name, "batch": batch,
        "gradient_checkpointing": gradient_checkpointing, "device": device,
        "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
        "growth_bytes": growth,
        "variants": {"planner": {"growth_bytes": growth["estimate"]}, "tracker": {"growth_bytes": growth["tracker"]},
                     "cuda_max_memory_allocated": {"growth_bytes": growth["device"]}},
        "tracker_over_estimate": growth["tracker"] / growth["estimate"],
        "device_over_estimate": growth["device"] / growth["estimate"] if growth["device"] is not None else None,
        "peak_estimate": estimate.peak, "peak_real": real.peak, "flops_estimate": estimate.flops,
        "flops_real": real.flops,
    }


def table(results: dict) -> str:
    g = results["growth_bytes"]
    device = f"{g['device'] / MIB:,.1f}" if g["device"] is not None else "n/a (CPU)"
    ratio = results["device_over_estimate"]
    return "\n".join([
        f"{results['pipeline']}{' (tiny)' if results['tiny'] else ''} / {results['recipe']}, batch "
        f"{results['batch']}, gradient checkpointing {'on' if results['gradient_checkpointing'] else 'off'}, on "
        f"{results['device_name']}", "",
        "| figure | step growth (MiB) | / estimate |", "|---|---:|---:|",
        f"| planner (fake tensors) | {g['estimate'] / MIB:,.1f} | 1.000 |",
        f"| tracker on the real step | {g['tracker'] / MIB:,.1f} | {results['tracker_over_estimate']:.3f} |",
        f"| torch.cuda.max_memory_allocated | {device} | {f'{ratio:.3f}' if ratio is not None else 'n/a'} |",
        "", f"FLOPs: estimate {results['flops_estimate']:.4g}, real {results['flops_real']:.4g}",
    ])


def _chart(results: dict, path: Path) -> None:
    g = results["growth_bytes"]
    labels, values = ["planner", "tracker"], [g["estimate"] / MIB, g["tracker"] / MIB]
    if g["device"] is not None:
        labels.append("cuda max allocated")
        values.append(g["device"] / MIB)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(labels, values, color=["#27a", "#5a5", "#c63"][: len(values)])
    ax.set_ylabel("step memory growth (MiB)")
    ax.set_title(f"{results['pipeline']} / {results['recipe']}, batch {results['batch']}")
    save_figure(fig, path, dpi=110)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", help="a family with a published architecture (random weights), e.g. flux-dev")
    parser.add_argument("--tiny", metavar="FAMILY", help="instead: the family's tiny offline pipeline")
    parser.add_argument("--recipe", default="flux-t5base")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="where the real step runs (cpu or cuda)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--output", default="benchmarks/results/step_memory")
    args = parser.parse_args(argv)
    if bool(args.pipeline) == bool(args.tiny):
        parser.error("pass one of --pipeline FAMILY and --tiny FAMILY")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results = measure(args.pipeline or args.tiny, args.recipe, batch=args.batch, device=args.device,
                      tiny=bool(args.tiny), gradient_checkpointing=args.gradient_checkpointing)
    output = Path(args.output)
    write_results(output, results, table(results), _chart)
    print(table(results))


if __name__ == "__main__":
    main()
