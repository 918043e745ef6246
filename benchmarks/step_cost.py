"""Cost of one distillation step per pipeline family at tiny size, as a ratio to FLUX-dev's, measured in one run.

Every registered family's tiny offline pipeline (`encoder_shrink.tiny`) is distilled with the `tiny` recipe (video
families on their tiny clip, `tiny.tiny_recipe_overrides`) for a few optimizer steps; each step is one vision-loss
step (the frozen denoiser run with teacher and student embeddings, backward through the student). The median wall time
of the steps after the warm-up is divided by FLUX-dev's: CPU times are only comparable side by side (absolute times
belong to a GPU). At tiny size a step costs what its text length and fixed overheads cost; what makes a real video
step expensive is the number of latent tokens the denoiser attends over, so each row also gives that number for the
family's published architecture (built on the meta device) at its recipe's first stage (resolution, frames).

Run:  python -m encoder_shrink.benchmarks.step_cost --output benchmarks/results/step_cost
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

from encoder_shrink.files import pyplot, save_figure, write_results

logger = logging.getLogger(__name__)
REFERENCE = "flux-dev"


def _family_cost(family: str, steps: int, warmup: int, root: Path) -> dict:
    """Median seconds per distillation step of `family`'s tiny pipeline, and its latent shape."""
    import torch

    from encoder_shrink import EncoderShrinker, tiny

    pipe = tiny.load_tiny_pipeline(family, root / family)
    shrinker = EncoderShrinker(pipe)
    overrides = tiny.tiny_recipe_overrides(family)
    stamps = []
    shrinker.distill(recipe="tiny", max_steps=warmup + steps, eval_prompts=["a cat"],
                     callback=lambda step, loss: stamps.append(time.perf_counter()), **overrides)
    durations = [b - a for a, b in zip(stamps[warmup - 1:], stamps[warmup:])]
    recipe = shrinker.summary["recipe"]
    trajectory = shrinker.adapter.start_trajectory(1, recipe["resolution"], recipe["num_inference_steps"],
                                                   torch.Generator().manual_seed(0),
                                                   num_frames=recipe.get("num_frames"))
    latents = tuple(trajectory.latents.shape[1:])
    return {"seconds_per_step": statistics.median(durations), "latent_shape": list(latents),
            "latent_elements": int(torch.tensor(latents).prod()), "video": overrides != {},
            "text_tokens": shrinker.adapter.max_sequence_length}


def _denoiser_tokens(adapter, latents) -> int:
    """Latent tokens the denoiser attends over for one sample: packed sequences, or patches of (frames x) H x W."""
    config = adapter.denoiser.config
    shape = list(latents.shape[1:])
    if len(shape) == 2:  # already packed: (sequence, channels)
        return shape[0]
    patch = config.get("patch_size") or 1
    spatial = patch if isinstance(patch, int) else patch[-1]
    temporal = patch[0] if not isinstance(patch, int) else (config.get("patch_size_t") or 1)
    channels = config.get("in_channels")
    if len(shape) == 4:  # video: channels and frames (CogVideoX puts frames first)
        frames = shape[1] if shape[0] == channels else shape[0]
        return frames // temporal * (shape[2] // spatial) * (shape[3] // spatial)
    return (shape[1] // spatial) * (shape[2] // spatial)


def published_tokens(family: str) -> tuple[str, int, int]:
    """
    The family's recipe, and its published denoiser's latent tokens per sample at the recipe's first stage and at the
    pipeline's default frame count (the same resolution; equal for image families).
    """
    from encoder_shrink.benchmarks.synthetic import synthetic_pipeline
    from encoder_shrink.recipes import available_recipes

    from encoder_shrink import adapter_for, load_recipe

    recipes = [load_recipe(name) for name in available_recipes() if name not in ("tiny", "toy")]
    recipe = next((r for r in recipes if r.family == family and r.name.endswith("base")), None) or next(
        r for r in recipes if r.family is None and family.split("-")[0] in r.name)
    adapter = adapter_for(synthetic_pipeline(family, device="meta"))
    stage = recipe.stages[0]
    resolution = stage.resolution or recipe.resolution
    if adapter.default_num_frames is None:
        tokens = _denoiser_tokens(adapter, adapter.prepare_latents(1, resolution, None)[0])
        return recipe.name, tokens, tokens
    recipe_clip = adapter.prepare_latents(1, resolution, None, num_frames=stage.num_frames or recipe.num_frames)[0]
    default_clip = adapter.prepare_latents(1, resolution, None, num_frames=adapter.default_num_frames)[0]
    return recipe.name, _denoiser_tokens(adapter, recipe_clip), _denoiser_tokens(adapter, default_clip)


def measure(families: list[str] | None = None, steps: int = 12, warmup: int = 4) -> dict:
    """Step cost of each family (default: all registered), relative to FLUX-dev's measured in the same run."""
    from tqdm.auto import tqdm

    from encoder_shrink.pipelines import registered_families

    families = list(families or registered_families())
    if REFERENCE not in families:
        families.insert(0, REFERENCE)
    rows = {}
    with tempfile.TemporaryDirectory() as root:
        for family in tqdm(families, desc="families", unit="family"):
            rows[family] = _family_cost(family, steps, warmup, Path(root))
            recipe, tokens, default_tokens = published_tokens(family)
            rows[family].update(recipe=recipe, published_denoiser_tokens=tokens,
                                published_denoiser_tokens_default_frames=default_tokens)
    reference = rows[REFERENCE]["seconds_per_step"]
    for row in rows.values():
        row["relative_to_flux_dev"] = round(row["seconds_per_step"] / reference, 2)
    return {"benchmark": "step_cost", "reference": REFERENCE, "steps": steps, "warmup": warmup, "device": "cpu",
            "families": rows}


def table(results: dict) -> str:
    lines = ["One distillation step (tiny pipelines, `tiny` recipe, batch 2), relative to flux-dev in the same run; "
             "and the latent tokens per sample of the published denoiser at the family's recipe (first stage).", "",
             "| family | kind | tiny latent shape | text tokens | tiny step vs flux-dev | recipe | "
             "published denoiser tokens | at the default frame count |", "|---|---|---|---:|---:|---|---:|---:|"]
    for family, r in sorted(results["families"].items(), key=lambda item: item[1]["relative_to_flux_dev"]):
        shape = " x ".join(str(n) for n in r["latent_shape"])
        lines.append(f"| {family} | {'video' if r['video'] else 'image'} | {shape} | {r['text_tokens']} | "
                     f"{r['relative_to_flux_dev']:.2f}x | {r['recipe']} | {r['published_denoiser_tokens']:,} | "
                     f"{r['published_denoiser_tokens_default_frames']:,} |")
    return "\n".join(lines)


def _chart(results: dict, path: Path) -> None:
    plt = pyplot()

    rows = sorted(results["families"].items(), key=lambda item: item[1]["relative_to_flux_dev"])
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(rows) + 1.5))
    ax.barh([f for f, _ in rows], [r["relative_to_flux_dev"] for _, r in rows],
            color=["#c63" if r["video"] else "#27a" for _, r in rows])
    ax.axvline(1.0, color="#444", linestyle="--", linewidth=1)
    ax.set_xlabel("distillation step cost relative to flux-dev (tiny pipelines; orange: video)")
    save_figure(fig, path, dpi=110)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="benchmarks/results/step_cost")
    parser.add_argument("--families", nargs="+", help="families to measure (default: every registered family)")
    parser.add_argument("--steps", type=int, default=12, help="timed optimizer steps per family")
    parser.add_argument("--warmup", type=int, default=4, help="untimed steps first (teacher encoding, allocations)")
    args = parser.parse_args(argv)
    results = measure(args.families, args.steps, args.warmup)
    output = Path(args.output)
    write_results(output, results, table(results), _chart)
    print(table(results))


if __name__ == "__main__":
    main()
