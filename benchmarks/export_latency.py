"""Benchmark: size and CPU latency of a T5-base-sized student as torch eager fp32, ONNX fp32 and ONNX int8.

Run:  python -m encoder_shrink.benchmarks.export_latency --output benchmarks/results/export_latency

The student has the FLUX recipe's architecture (FLAN-T5-base encoder, 12 x 768, gated-GELU, 32 128-token vocabulary,
projector to 4096) with random weights: speed and size do not depend on the values. Every backend encodes the same
512-token batch (FLUX-dev's padded length) after warm-up, in one process, side by side; figures are medians over the
repeats. Writes results.json, results.md and results.png.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from encoder_shrink.files import pyplot, save_figure, write_results

# Student T5 sizes: FLAN-T5-base (what BENCHMARKS.md reports), and a tiny one for the smoke test.
SIZES = {
    "base": {"d_model": 768, "d_kv": 64, "d_ff": 2048, "num_layers": 12, "num_heads": 12},
    "tiny": {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_heads": 4},
}
# The teacher width the projector maps to: T5-XXL's 4096 (tiny: 64).
TEACHER_DIMS = {"base": 4096, "tiny": 64}


def _timed(fn, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.suffix in (".onnx", ".data", ".safetensors"))


def run(args) -> dict:
    from encoder_shrink.exporters import export_onnx, load_encoder, load_report
    from tqdm.auto import tqdm
    from transformers import T5Config

    from encoder_shrink import ShrunkT5EncoderModel

    torch.manual_seed(0)
    config = T5Config(vocab_size=32128, feed_forward_proj="gated-gelu", **SIZES[args.size])
    student = ShrunkT5EncoderModel.from_t5(
        config, teacher_dim=TEACHER_DIMS[args.size], max_sequence_length=args.tokens, use_attention_mask=True
    ).eval()
    ids = torch.randint(3, 32128, (args.batch, args.tokens))
    mask = torch.ones_like(ids)  # the exported graph always takes a mask: give both backends the same inputs
    results = {
        "benchmark": "export_latency", "device": "cpu", "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "tokens": args.tokens, "batch": args.batch,
        "repeats": args.repeats, "warmup": args.warmup, "size": args.size,
        "student": f"{args.size}: {SIZES[args.size]} + projector to {TEACHER_DIMS[args.size]}, random",
        "backends": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        student.save_pretrained(tmp / "torch")
        # (name, int8, quantize wo, embeddings and attention: False keeps them fp32, "auto" is the default: if measured
        # harmless)
        steps = [("torch eager fp32", None, False), ("onnx fp32", None, False),
                 ("onnx int8 (dynamic, wo + embeddings + attention fp32)", "dynamic", False),
                 ("onnx int8 (dynamic, default: sensitive layers auto)", "dynamic", "auto")]
        for index, (name, int8, everything) in enumerate(tqdm(steps, desc="backends", unit="backend")):
            if name.startswith("torch"):
                encoder, folder, report = student, tmp / "torch", None
            else:
                folder = export_onnx(tmp / "torch", tmp / f"export-{index}", int8=int8, quantize_wo=everything,
                                     quantize_embeddings=everything, quantize_attention=everything)
                encoder, report = load_encoder(folder), load_report(folder)
            with torch.no_grad():
                times = _timed(lambda encoder=encoder: encoder(ids, attention_mask=mask), args.repeats, args.warmup)
            results["backends"][name] = {
                "bytes": _size(folder),
                "latency_median_s": statistics.median(times),
                "latency_min_s": min(times),
                "latency_max_s": max(times),
                "parity_cosine": report["parity"]["min_cosine"] if report else None,
                "parity_relative_l2": report["parity"]["relative_l2"] if report else None,
                "int8_sensitive": report.get("int8", {}).get("sensitive") if report else None,
            }
    base = results["backends"]["torch eager fp32"]
    onnx_fp32 = results["backends"]["onnx fp32"]
    for figures in results["backends"].values():
        figures["latency_vs_torch"] = round(figures["latency_median_s"] / base["latency_median_s"], 3)
        figures["size_vs_onnx_fp32"] = round(figures["bytes"] / onnx_fp32["bytes"], 3)
    results["targets"] = {}
    for name in [name for name, int8, _ in steps if int8]:
        int8 = results["backends"][name]
        results["targets"][f"{name}: size <= 0.3x onnx fp32"] = int8["size_vs_onnx_fp32"] <= 0.3
        results["targets"][f"{name}: latency <= 0.5x torch eager fp32"] = int8["latency_vs_torch"] <= 0.5
    output = Path(args.output)
    write_results(output, results, table(results), _chart)
    return results


def table(results: dict) -> str:
    lines = [
        f"Student encode latency, {results['device']} ({results['threads']} threads, torch {results['torch']}), "
        f"batch {results['batch']} x {results['tokens']} tokens, median of {results['repeats']} after "
        f"{results['warmup']} warm-up; {results['student']}",
        "",
        "| backend | size (MB) | x onnx fp32 | latency median (s) | min-max (s) | x torch eager | parity cosine |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, f in results["backends"].items():
        cosine = f"{f['parity_cosine']:.6f}" if f["parity_cosine"] is not None else "reference"
        lines.append(
            f"| {name} | {f['bytes'] / 1e6:.1f} | {f['size_vs_onnx_fp32']:.2f} | {f['latency_median_s']:.3f} | "
            f"{f['latency_min_s']:.3f}-{f['latency_max_s']:.3f} | {f['latency_vs_torch']:.2f} | {cosine} |"
        )
    lines += ["", *(f"- {target}: {'met' if ok else 'NOT met'}" for target, ok in results["targets"].items())]
    return "\n".join(lines)


def _chart(results: dict, path: Path) -> None:
    plt = pyplot()

    names = list(results["backends"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3))
    axes[0].barh(names, [results["backends"][n]["bytes"] / 1e6 for n in names], color="#27a")
    axes[0].set_title("size (MB)")
    axes[1].barh(names, [results["backends"][n]["latency_median_s"] for n in names], color="#2a7")
    axes[1].set_title(f"encode latency (s), {results['tokens']} tokens, CPU")
    axes[1].set_yticks([])
    save_figure(fig, path, dpi=120)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="benchmarks/results/export_latency")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--size", choices=list(SIZES), default="base",
                        help="base: a FLAN-T5-base-sized student (the figures in BENCHMARKS.md); tiny: a smoke run")
    print(table(run(parser.parse_args(argv))))


if __name__ == "__main__":
    main()
