"""TiUE against its teacher: UNet FLOPs and CPU latency per image, SD 2.1-base architecture with random weights.

The teacher samples with DDIM at `--steps` steps and classifier-free guidance (a batch of 2 per step); the TiUE student
runs its encoder once and its decoder for K = 4 timesteps in one batch, then combines them in closed form. FLOPs are
counted with `torch.utils.flop_counter.FlopCounterMode` on the meta device (nothing allocated); the CPU latency of the
UNet work per image is measured in one process per variant. The text encoder and VAE are the same for both and left
out.

Run:  python -m encoder_shrink.benchmarks.tiue_cost --output benchmarks/results/tiue_cost
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from encoder_shrink.files import pyplot, save_figure, write_results

# stabilityai/stable-diffusion-2-1-base unet/config.json (512 px: a 64 x 64 latent), and a tiny one for smoke runs.
UNETS = {
    "sd2.1-base": {"parameters": 865_910_724, "text": (77, 1024), "config": dict(
        block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024,
        use_linear_projection=True, layers_per_block=2, sample_size=64)},
    "tiny": {"parameters": None, "text": (8, 16), "config": dict(
        block_out_channels=(16, 32), layers_per_block=2, sample_size=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8)},
}
TIUE_TIMESTEPS = (751, 501, 251, 1)  # the paper's K = 4 DDIM schedule


def build_unet(size: str, device: str = "cpu"):
    from diffusers import UNet2DConditionModel

    with torch.device(device):
        return UNet2DConditionModel(**UNETS[size]["config"]).eval()


def _work(variant: str, unet, size: str, steps: int):
    """The UNet work of one image: a function to run (and count) on `unet`'s device."""
    from encoder_shrink.tiue import UNetSplit

    device = next(unet.parameters()).device
    side, (tokens, width) = unet.config.sample_size, UNETS[size]["text"]
    latent = torch.randn(1, unet.config.in_channels, side, side, device=device)
    text = torch.randn(1, tokens, width, device=device)
    if variant == "teacher":
        pair, texts = latent.repeat(2, 1, 1, 1), text.repeat(2, 1, 1)  # CFG: unconditional and conditional rows

        def run():
            for t in range(steps):  # the timesteps' values do not change the work
                unet(pair, torch.tensor(999 - t * (1000 // steps), device=device), texts)
        return run
    split = UNetSplit(unet)
    timesteps = torch.tensor(TIUE_TIMESTEPS, device=device)

    def run():
        split.decode(split.encode(latent, timesteps[0], text), timesteps, text)
    return run


def count_flops(size: str, steps: int) -> dict[str, int]:
    """UNet FLOPs per image of the teacher and of TiUE, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    unet = build_unet(size, device="meta")
    flops = {}
    for variant in ("teacher", "tiue"):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            _work(variant, unet, size, steps)()
        flops[variant] = counter.get_total_flops()
    return flops


def time_variant(variant: str, size: str, steps: int, repeats: int, warmup: int = 1) -> dict:
    """In this process: the median wall time of one image's UNet work, random weights, after `warmup` runs."""
    import resource

    torch.manual_seed(0)
    unet = build_unet(size)
    run = _work(variant, unet, size, steps)
    with torch.inference_mode():
        for _ in range(warmup):
            run()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
    return {"median_s": sorted(times)[len(times) // 2],
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def measure(size: str, steps: int, repeats: int, warmup: int = 1) -> dict:
    flops = count_flops(size, steps)
    with torch.device("meta"):
        parameters = sum(p.numel() for p in build_unet(size, device="meta").parameters())
    rows = {}
    for variant in ("teacher", "tiue"):
        command = [sys.executable, "-m", "encoder_shrink.benchmarks.tiue_cost", "--time", variant, "--size", size,
                   "--steps", str(steps), "--repeats", str(repeats), "--warmup", str(warmup)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        rows[variant] = {"unet_flops": flops[variant], **json.loads(done.stdout.strip().splitlines()[-1])}
    rows["teacher"]["sampler"] = f"DDIM {steps} steps, CFG (2 rows per step)"
    rows["tiue"]["sampler"] = f"TiUE K = {len(TIUE_TIMESTEPS)}: encoder once, {len(TIUE_TIMESTEPS)} decoder rows"
    return {"benchmark": "tiue_cost", "unet": size, "unet_parameters": parameters,
            "published_parameters": UNETS[size]["parameters"], "device": "cpu (fp32, random weights), 1 image",
            "flops_ratio": round(flops["teacher"] / flops["tiue"], 2),
            "latency_ratio": round(rows["teacher"]["median_s"] / rows["tiue"]["median_s"], 2), "variants": rows}


def table(results: dict) -> str:
    lines = [f"UNet work per image, {results['unet']} UNet ({results['unet_parameters']:,} parameters), "
             f"{results['device']}.", "", "| sampler | UNet TFLOPs | CPU latency | peak RSS |", "|---|---:|---:|---:|"]
    for r in results["variants"].values():
        lines.append(f"| {r['sampler']} | {r['unet_flops'] / 1e12:.3f} | {r['median_s'] * 1e3:.0f} ms | "
                     f"{r['peak_rss_gb']:.2f} GB |")
    lines += ["", f"TiUE does {results['flops_ratio']}x fewer UNet FLOPs and runs {results['latency_ratio']}x faster "
              "on this CPU."]
    return "\n".join(lines)


def _chart(results: dict, path: Path) -> None:
    plt = pyplot()

    rows = results["variants"]
    fig, axes = plt.subplots(1, 2, figsize=(8, 2.6))
    for ax, key, label, scale in ((axes[0], "unet_flops", "UNet TFLOPs per image", 1e12),
                                  (axes[1], "median_s", "CPU seconds per image", 1.0)):
        ax.barh(list(rows), [rows[v][key] / scale for v in rows], color=["#bbb", "#27a"])
        ax.set_xlabel(label)
    save_figure(fig, path, dpi=110)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="benchmarks/results/tiue_cost")
    parser.add_argument("--size", choices=list(UNETS), default="sd2.1-base")
    parser.add_argument("--steps", type=int, default=25, help="the teacher's DDIM steps (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (default: %(default)s)")
    parser.add_argument("--time", metavar="VARIANT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.time:  # the per-variant subprocess
        print(json.dumps(time_variant(args.time, args.size, args.steps, args.repeats, args.warmup)))
        return
    results = measure(args.size, args.steps, args.repeats, args.warmup)
    output = Path(args.output)
    write_results(output, results, table(results), _chart)
    print(table(results))


if __name__ == "__main__":
    main()
