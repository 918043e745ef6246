"""Benchmark: distillation step throughput and peak memory, encoder-shrink's loop against the reference loop.

Run:  python -m encoder_shrink.benchmarks.distill_throughput --output benchmarks/results/distill_throughput

Both loops train the same student on the same prompt batches, latents and guidance of a FLUX-dev-architecture
pipeline scaled down so that a CPU runs it (T5 teacher about half the denoiser's size, as T5-XXL to FLUX's 12 B
transformer; 512 text tokens). Each variant runs in its own process so peak memory figures do not bleed into each
other. Writes results.json, results.md and results.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from encoder_shrink.errors import BenchmarkFailedError
from encoder_shrink.files import pyplot, save_figure, write_results

PROMPTS = [
    "two red circles left of a blue square", "a cat holding a sign that says 'hello'", "a green cube on a table",
    "three yellow stars above a house", "a dog wearing a t-shirt that says 'run'", "a blue car next to a tree",
    "a wooden chair behind a white table", "a bird on top of a red sign", "five small black cups",
    "a woman carrying a banner with the words 'good morning'", "a pink sphere below a purple triangle",
    "an orange book on a chair", "a robot displaying a placard saying 'stop'", "a brown bear near a lake",
    "a gray rock in front of a big tree", "a child holding a sign reading 'thank you'",
]
VARIANTS = ("reference", "encoder-shrink", "encoder-shrink-offloaded")
LABELS = {
    "reference": "reference loop (teacher re-encoded every step)",
    "encoder-shrink": "encoder-shrink (teacher cached per prompt)",
    "encoder-shrink-offloaded": "encoder-shrink (precomputed cache, teacher freed)",
}


def scaled_flux_pipeline(directory: Path) -> Path:
    """A FLUX-dev pipeline with the real layout, scaled down (widths /12-/16, depths /4-/10), saved to `directory`."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    from encoder_shrink import tiny

    torch.manual_seed(0)
    tokenizer_2 = tiny.tiny_t5_tokenizer(512)
    t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_2), d_model=256, d_kv=64, d_ff=640, num_layers=6,
                                 num_heads=4, feed_forward_proj="gated-gelu")).eval()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=2, num_single_layers=4, attention_head_dim=64, num_attention_heads=3,
        joint_attention_dim=256, pooled_projection_dim=tiny.CLIP_TINY_DIM, guidance_embeds=True,
        axes_dims_rope=(16, 24, 24),
    )
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=16, norm_num_groups=4,
                        layers_per_block=1)
    pipe = FluxPipeline(transformer=transformer, text_encoder=CLIPTextModel(tiny.tiny_clip_text_config()).eval(),
                        text_encoder_2=t5, tokenizer=tiny.tiny_clip_tokenizer(), tokenizer_2=tokenizer_2, vae=vae,
                        scheduler=FlowMatchEulerDiscreteScheduler())
    pipe.save_pretrained(directory)
    return directory


def _recipe(args):
    from encoder_shrink import load_recipe

    return load_recipe("tiny").with_overrides(
        batch_size=args.batch_size,
        resolution=args.resolution,
        num_inference_steps=args.num_inference_steps,
        max_steps=args.steps,
        guidance_scales=[2.0, 3.5, 5.0],
        student_config={
            "d_model": 64,
            "d_ff": 128,
            "d_kv": 16,
            "num_heads": 4,
            "num_layers": 2,
            "feed_forward_proj": "gated-gelu",
        },
        learning_rate=1e-4,
        checkpoint_every=0,
    )


def worker(args) -> dict:
    """One variant, in this process: time the training loop, read the peak resident memory."""
    from diffusers import FluxPipeline

    from encoder_shrink import EncoderShrinker
    from encoder_shrink.data import build_mixture
    from encoder_shrink.distill import TeacherEmbeddingCache

    torch.manual_seed(0)
    pipe = FluxPipeline.from_pretrained(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    recipe = _recipe(args)
    shrinker = EncoderShrinker(pipe)
    student = shrinker.build_student(recipe)
    length = shrinker.adapter.max_sequence_length
    if args.worker == "reference":
        from encoder_shrink.benchmarks.reference_loop import reference_loop

        mixture = build_mixture(recipe.stages[0], PROMPTS, seed=recipe.seed)
        batches = [mixture.batch(i, recipe.batch_size) for i in range(args.steps // args.num_inference_steps)]
        result = reference_loop(pipe, student, batches, args.resolution, args.num_inference_steps,
                                recipe.guidance_scales, length)
        seconds, steps = result["seconds"], result["steps"]
    else:
        if args.worker == "encoder-shrink-offloaded":
            with tempfile.TemporaryDirectory() as cache_dir:
                TeacherEmbeddingCache(shrinker.adapter, length, directory=cache_dir,
                                      teacher_id=shrinker.teacher_id).precompute(PROMPTS + ["held out"])
                pipe.text_encoder_2.to("meta")  # the teacher's weights are freed
                shrinker.distill(recipe=recipe, student=student, prompts=PROMPTS, eval_prompts=["held out"],
                                 cache_dir=cache_dir, offload_teacher=True)
        else:
            shrinker.distill(recipe=recipe, student=student, prompts=PROMPTS, eval_prompts=["held out"])
        seconds, steps = shrinker.summary["seconds"], shrinker.summary["steps"]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    # Weights that had to stay in memory for training: every pipeline model not freed, plus the student.
    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)] + [student]
    resident = sum(p.numel() * p.element_size() for m in modules for p in m.parameters() if p.device.type != "meta")
    return {"variant": args.worker, "steps": steps, "seconds": round(seconds, 3),
            "steps_per_second": round(steps / seconds, 4), "peak_rss_mb": round(peak_mb, 1),
            "resident_weights_mb": round(resident / 2**20, 2)}


def run(args) -> dict:
    from tqdm.auto import tqdm

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    results = {
        "benchmark": "distill_throughput",
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dtype": "float32",
        "config": {"batch_size": args.batch_size, "resolution": args.resolution, "max_sequence_length": 512,
                   "num_inference_steps": args.num_inference_steps, "steps": args.steps,
                   "pipeline": "FLUX-dev architecture scaled down: T5 teacher 6x256, transformer 2+4 blocks x 192"},
        "variants": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = scaled_flux_pipeline(Path(tmp) / "pipeline")
        for variant in tqdm(VARIANTS, desc="variants", unit="variant"):
            command = [sys.executable, "-m", "encoder_shrink.benchmarks.distill_throughput", "--worker", variant,
                       "--pipeline", str(pipeline), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                       "--resolution", str(args.resolution), "--num-inference-steps", str(args.num_inference_steps)]
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
            if done.returncode != 0:
                raise BenchmarkFailedError(f"{variant} failed:\n{done.stderr[-3000:]}")
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            figures["process_seconds"] = round(time.perf_counter() - started, 1)
            results["variants"][variant] = figures
    reference = results["variants"]["reference"]
    for figures in results["variants"].values():
        figures["speedup_vs_reference"] = round(figures["steps_per_second"] / reference["steps_per_second"], 3)
        figures["peak_rss_vs_reference"] = round(figures["peak_rss_mb"] / reference["peak_rss_mb"], 3)
        figures["resident_weights_vs_reference"] = round(
            figures["resident_weights_mb"] / reference["resident_weights_mb"], 3)
    write_results(output, results, table(results), _chart)
    return results


def table(results: dict) -> str:
    config = results["config"]
    lines = [
        f"Distillation throughput, {results['device']} ({results['threads']} threads, torch {results['torch']}), "
        f"{results['dtype']}, batch {config['batch_size']}, {config['resolution']} px, "
        f"{config['max_sequence_length']} tokens, {config['num_inference_steps']} steps/trajectory, "
        f"{config['steps']} optimizer steps per variant",
        "",
        "| loop | steps/s | x reference | peak RSS (MB) | x reference | resident weights (MB) | x reference |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, f in results["variants"].items():
        lines.append(f"| {LABELS[name]} | {f['steps_per_second']:.3f} | {f['speedup_vs_reference']:.2f} | "
                     f"{f['peak_rss_mb']:.0f} | {f['peak_rss_vs_reference']:.2f} | {f['resident_weights_mb']:.1f} | "
                     f"{f['resident_weights_vs_reference']:.2f} |")
    return "\n".join(lines)


def _chart(results: dict, path: Path) -> None:
    plt = pyplot()

    names = list(results["variants"])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    for ax, key, title in (
        (axes[0], "steps_per_second", "optimizer steps / s"),
        (axes[1], "peak_rss_mb", "peak RSS (MB)"),
        (axes[2], "resident_weights_mb", "weights kept in memory (MB)"),
    ):
        ax.barh(
            [LABELS[n] for n in names], [results["variants"][n][key] for n in names], color=["#999", "#2a7", "#27a"]
        )
        ax.set_title(title)
    axes[1].set_yticks([])
    axes[2].set_yticks([])
    save_figure(fig, path, dpi=120)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="benchmarks/results/distill_throughput")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per variant (a multiple of the next)")
    parser.add_argument(
        "--num-inference-steps", type=int, default=20, help="scheduler steps per trajectory (paper: 20)"
    )
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--pipeline", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    print(table(run(args)))


if __name__ == "__main__":
    main()
