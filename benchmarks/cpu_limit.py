"""Benchmark: the CPU-resident encoder against the hardware's limit, measured on the machine it runs on.

Run:  python -m encoder_shrink.benchmarks.cpu_limit --output benchmarks/results/cpu_limit

In one run:
1. The machine's GEMM peak per dtype (fp32 and bf16 `torch.mm`, int8 `torch._int_mm`), best over the student's own
   linear shapes at 512 tokens and a 2048-cube, on the threads torch uses.
2. Every CPU backend (the torch fp32 student and each `best-cpu` candidate: ONNX Runtime fp32/int8 with and without
   the transformer fusions, torch bf16 eager and compiled, OpenVINO int8 and fp32), each exported and parity-checked
   by its format, then timed in its own process at 77, 128, 256 and 512 tokens (all real). Each latency is given as
   a ratio to its bound: the student's linear FLOPs at that length, each layer divided by the peak of the dtype the
   backend runs it in (int8 exports keep some layers in fp32: their report says which).
3. Masked pipelines: a prompt of n real tokens padded to 300 (PixArt's length) encoded by the ONNX int8 runtime
   encoder with and without trimming the padding, for several n.

The student has the FLUX/PixArt recipes' architecture (T5 v1.1 base, 12 x 768, gated GELU, projector to 4096) with
random weights: speed does not depend on the values. Writes results.json, results.md and results.png.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from encoder_shrink.files import pyplot, save_figure, write_results

LENGTHS = (77, 128, 256, 512)
# The masked-pipeline section: PixArt pads to 300; prompts of these many real tokens.
MASKED_LENGTH = 300
MASKED_REAL = (20, 77, 150, 300)
# Student sizes: T5 v1.1 base (the recipes' student) and a tiny one for the smoke test.
SIZES = {"base": ("t5-base", 4096), "tiny": (None, 32)}
# The torch student itself, then the best-cpu candidates (encoder_shrink.exporters.cpu_candidates).
BASELINE = "torch-fp32"


def _student(size: str):
    from encoder_shrink.benchmarks.synthetic import synthetic_student

    base, teacher_dim = SIZES[size]
    if base is None:
        from encoder_shrink import tiny

        student = tiny.tiny_student(teacher_dim=teacher_dim, max_sequence_length=MASKED_LENGTH)
    else:
        student = synthetic_student(base, teacher_dim, MASKED_LENGTH)
    # A PixArt student: it attends with the mask and its denoiser reads the real tokens only.
    student.config.use_attention_mask = True
    student.config.pipeline_family = "pixart-sigma"
    return student.eval()


def _linear_groups(student) -> dict[str, tuple[int, int]]:
    """(in, out) features of every Linear, keyed by name; group names follow the int8 exports' sensitive groups."""
    return {name: (module.in_features, module.out_features) for name, module in student.named_modules()
            if isinstance(module, torch.nn.Linear)}


def _group(name: str) -> str:
    return "wo" if name.endswith(".wo") else "attention" if ".SelfAttention." in name else "other"


def _rate(fn, flops: float, seconds: float) -> float:
    """FLOP/s of `fn`: repeated for about `seconds` after two warm-up calls."""
    fn(), fn()
    count, started = 0, time.perf_counter()
    while True:
        fn()
        count += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds and count >= 3:
            return flops * count / elapsed


def gemm_peaks(shapes: list[tuple[int, int, int]], seconds: float) -> dict:
    r"""
    The best GEMM rate per dtype over `shapes` (m, k, n): fp32 and bf16 with `torch.mm` (MKL / oneDNN), int8 x int8
    -> int32 with `torch._int_mm` (oneDNN; VNNI or AMX where present).
    """
    generator = torch.Generator().manual_seed(0)
    rates: dict[str, dict[str, float]] = {"float32": {}, "bfloat16": {}, "int8": {}}
    with torch.inference_mode():
        for m, k, n in shapes:
            flops = 2.0 * m * k * n
            a, b = torch.randn(m, k, generator=generator), torch.randn(k, n, generator=generator)
            rates["float32"][f"{m}x{k}x{n}"] = _rate(lambda a=a, b=b: torch.mm(a, b), flops, seconds)
            a16, b16 = a.bfloat16(), b.bfloat16()
            rates["bfloat16"][f"{m}x{k}x{n}"] = _rate(lambda a=a16, b=b16: torch.mm(a, b), flops, seconds)
            a8 = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=generator)
            b8 = torch.randint(-127, 128, (k, n), dtype=torch.int8, generator=generator)
            rates["int8"][f"{m}x{k}x{n}"] = _rate(lambda a=a8, b=b8: torch._int_mm(a, b), flops,
                                                               seconds)
    return {dtype: {"peak_flops": max(by_shape.values()), "by_shape": by_shape} for dtype, by_shape in rates.items()}


def _precisions(backend: str, report: dict | None) -> dict[str, str]:
    """The dtype each linear group runs in for a backend (int8 exports: their report's layers kept in fp32)."""
    if backend.startswith("torch-bf16"):
        return dict.fromkeys(("wo", "attention", "other"), "bfloat16")
    int8 = (report or {}).get("int8") or ((report or {}).get("onnx") or {}).get("int8")
    if not int8:
        return dict.fromkeys(("wo", "attention", "other"), "float32")
    kept = set(int8["kept_fp32"])
    return {group: "float32" if group in kept else "int8" for group in ("wo", "attention", "other")}


def bound_seconds(linears: dict[str, tuple[int, int]], tokens: int, precisions: dict[str, str], peaks: dict) -> dict:
    """Linear FLOPs at `tokens` and the time they take at the peaks: each layer at its dtype's peak."""
    flops = {"float32": 0.0, "bfloat16": 0.0, "int8": 0.0}
    for name, (fan_in, fan_out) in linears.items():
        flops[precisions[_group(name)]] += 2.0 * tokens * fan_in * fan_out
    seconds = sum(f / peaks[dtype]["peak_flops"] for dtype, f in flops.items() if f)
    return {"linear_flops": sum(flops.values()), "flops_by_dtype": {k: v for k, v in flops.items() if v},
            "bound_s": seconds}


def _masked(folder: Path, repeats: int, warmup: int, lengths: tuple[int, ...], padded: int) -> dict:
    """Encode time of n real tokens padded to `padded`, trimmed (the default) and not, with the runtime encoder."""
    from encoder_shrink.benchmarks.measure import timed
    from encoder_shrink.exporters import load_encoder

    encoder = load_encoder(folder, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    rows = {}
    for real in lengths:
        ids = torch.zeros((1, padded), dtype=torch.long)
        ids[0, :real] = torch.randint(3, encoder.config.vocab_size, (real,), generator=generator)
        mask = (ids != 0).long()
        row = {}
        for trim in (True, False):
            encoder.trim_padding = trim
            with torch.inference_mode():
                encode = lambda ids=ids, mask=mask: encoder(ids, attention_mask=mask)  # noqa: E731
                row["trimmed" if trim else "padded"] = timed(encode, "cpu", repeats, warmup,
                                                             desc=f"{real}/{padded} trim={trim}")
        encoder.trim_padding = True
        row["speedup"] = row["padded"]["median_s"] / row["trimmed"]["median_s"]
        rows[str(real)] = row
    return rows


def run(args) -> dict:
    from encoder_shrink.benchmarks.measure import cpu_info, run_isolated
    from encoder_shrink.exporters import cpu_candidates, export, format_of, load_report
    from tqdm.auto import tqdm

    lengths = tuple(args.lengths)
    student = _student(args.size)
    linears = _linear_groups(student)
    shapes = sorted({(max(lengths), fan_in, fan_out) for fan_in, fan_out in linears.values()})
    if args.size == "base":
        shapes.append((2048, 2048, 2048))
    peaks = gemm_peaks(shapes, args.gemm_seconds)
    candidates = cpu_candidates()
    names = args.backends or [BASELINE, *candidates]
    cpu = cpu_info()
    results = {
        "benchmark": "cpu_limit", "cpu": cpu["model"], "isa": cpu["isa"],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__, "size": args.size, "lengths": list(lengths), "batch": 1,
        "repeats": args.repeats, "warmup": args.warmup, "student": f"{args.size}: random weights, projector to "
        f"{SIZES[args.size][1]}, {sum(p.numel() for p in student.parameters()):,} parameters",
        "gemm_peaks": peaks, "backends": {}, "skipped": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        student.save_pretrained(work / BASELINE)
        for name in tqdm(names, desc="backends", unit="backend"):
            folder, report = work / BASELINE, None
            if name != BASELINE:
                entry = format_of(candidates[name])
                reason = entry.unavailable() if entry.unavailable else None
                if reason:
                    results["skipped"][name] = reason
                    continue
                folder = export(work / BASELINE, work / name, candidates[name])
                report = load_report(folder)
            spec = {"kind": "encoder", "name": name, "role": "backend", "backend": name, "device": "cpu",
                    "run_device": "cpu", "dtype": "float32", "seq_len": lengths[0], "more_seq_lens": list(lengths[1:]),
                    "batch": 1, "repeats": args.repeats, "warmup": args.warmup,
                    "encoder": {"kind": "folder", "path": str(folder)}}
            if report is not None and report.get("opset"):  # an ONNX graph: ONNX Runtime's CPU provider
                spec["encoder"]["providers"] = ["CPUExecutionProvider"]
            figures = run_isolated(spec, work)
            if "error" in figures:
                results["backends"][name] = {"error": figures["error"]}
                continue
            latencies = {str(lengths[0]): figures["latency"], **figures["latency_by_length"]}
            precisions = _precisions(name, report)
            rows = {}
            for length in lengths:
                bound = bound_seconds(linears, length, precisions, peaks)
                median = latencies[str(length)]["median_s"]
                rows[str(length)] = {"latency_median_s": median, "latency": latencies[str(length)], **bound,
                                     "x_bound": median / bound["bound_s"]}
            results["backends"][name] = {
                "precisions": precisions, "by_length": rows, "load_s": figures["load_s"],
                "parity_cosine": report["parity"]["min_cosine"] if report else None,
                "fusions": (report or {}).get("fusions"),
            }
        masked_backend = "onnx-int8" if (work / "onnx-int8").is_dir() else None
        if masked_backend and not args.skip_masked:
            real = tuple(n for n in MASKED_REAL if n <= MASKED_LENGTH)
            results["masked"] = {"backend": masked_backend, "padded_to": MASKED_LENGTH,
                                 "by_real_tokens": _masked(work / masked_backend, args.repeats, args.warmup, real,
                                                           MASKED_LENGTH)}
    _summarise(results)
    output = Path(args.output)
    write_results(output, results, table(results), _chart)
    return results


def _summarise(results: dict) -> None:
    """The best backend at the longest length, its ratio to its bound, and the masked encode's proportionality."""
    longest = str(results["lengths"][-1])
    measured = {name: b for name, b in results["backends"].items() if "error" not in b}
    if measured:
        best = min(measured, key=lambda name: measured[name]["by_length"][longest]["latency_median_s"])
        row = measured[best]["by_length"][longest]
        results["best"] = {"backend": best, "tokens": int(longest), "latency_median_s": row["latency_median_s"],
                           "x_bound": row["x_bound"], "within_1.5x_of_bound": row["x_bound"] <= 1.5,
                           "x_faster_than_torch_fp32": measured[BASELINE]["by_length"][longest]["latency_median_s"]
                           / row["latency_median_s"] if BASELINE in measured else None}
    masked = results.get("masked")
    if masked:
        rows = masked["by_real_tokens"]
        reals = sorted(int(n) for n in rows)
        times = [rows[str(n)]["trimmed"]["median_s"] for n in reals]
        # Proportional: time per real token roughly constant; the figure is the shortest prompt's time per token
        # over the longest's (1.0 = exactly proportional; >1 = a fixed cost dominates short prompts).
        masked["per_token_s"] = {str(n): t / n for n, t in zip(reals, times)}
        masked["per_token_ratio_shortest_over_longest"] = (times[0] / reals[0]) / (times[-1] / reals[-1])


def table(results: dict) -> str:
    peaks = results["gemm_peaks"]
    lines = [
        f"CPU: {results['cpu']} ({', '.join(results['isa'])}), {results['threads']} threads, "
        f"torch {results['torch']}; "
        f"student {results['student']}. "
        f"Batch 1, all tokens real, median of {results['repeats']} after {results['warmup']} warm-up, each backend "
        "in its own process.",
        "",
        "GEMM peak (best over the student's shapes" + (" and a 2048-cube" if results["size"] == "base" else "") + "): "
        + ", ".join(f"{dtype} {p['peak_flops'] / 1e12:.3f} TFLOP/s" for dtype, p in peaks.items()),
        "",
        "| backend | dtypes (attention / wo / rest) | " + " | ".join(
            f"{n} tok ms (x bound)" for n in results["lengths"]) + " | parity cosine |",
        "|---|---|" + "---:|" * len(results["lengths"]) + "---:|",
    ]
    for name, b in results["backends"].items():
        if "error" in b:
            lines.append(f"| {name} | failed: {b['error']} |" + " |" * (len(results["lengths"]) + 1))
            continue
        p = b["precisions"]
        cells = [f"{r['latency_median_s'] * 1e3:.1f} ({r['x_bound']:.2f}x)" for r in b["by_length"].values()]
        cosine = f"{b['parity_cosine']:.5f}" if b["parity_cosine"] is not None else "reference"
        lines.append(f"| {name} | {p['attention']} / {p['wo']} / {p['other']} | " + " | ".join(cells)
                     + f" | {cosine} |")
    for name, reason in results["skipped"].items():
        lines.append(f"| {name} | skipped: {reason} |" + " |" * (len(results["lengths"]) + 1))
    if "best" in results:
        best = results["best"]
        lines += ["", f"Best at {best['tokens']} tokens: {best['backend']}, {best['latency_median_s'] * 1e3:.1f} ms, "
                      f"{best['x_bound']:.2f}x its bound (target <= 1.5x: "
                      f"{'met' if best['within_1.5x_of_bound'] else 'NOT met'})."]
    masked = results.get("masked")
    if masked:
        lines += ["", f"Masked pipeline ({masked['backend']}, padded to {masked['padded_to']}): encode ms by real "
                      "tokens", "", "| real tokens | trimmed ms | padded ms | speedup | trimmed ms per token |",
                  "|---:|---:|---:|---:|---:|"]
        for real, row in masked["by_real_tokens"].items():
            lines.append(f"| {real} | {row['trimmed']['median_s'] * 1e3:.1f} | {row['padded']['median_s'] * 1e3:.1f} "
                         f"| {row['speedup']:.1f}x | {masked['per_token_s'][real] * 1e3:.3f} |")
    return "\n".join(lines)


def _chart(results: dict, path: Path) -> None:
    plt = pyplot()

    measured = {n: b for n, b in results["backends"].items() if "error" not in b}
    panels = 3 if results.get("masked") else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4))
    for index, (name, b) in enumerate(measured.items()):
        lengths = [int(n) for n in b["by_length"]]
        colour = f"C{index % 10}"
        axes[0].plot(lengths, [r["latency_median_s"] * 1e3 for r in b["by_length"].values()], "o-", color=colour,
                     label=name)
        axes[0].plot(lengths, [r["bound_s"] * 1e3 for r in b["by_length"].values()], ":", color=colour)
        axes[1].plot(lengths, [r["x_bound"] for r in b["by_length"].values()], "o-", color=colour, label=name)
    axes[0].set(xscale="log", yscale="log", xlabel="tokens", ylabel="encode ms (dotted: bound)",
                title="latency vs its linear-FLOP bound")
    axes[1].axhline(1.5, color="grey", ls="--", lw=1)
    axes[1].set(xscale="log", xlabel="tokens", ylabel="latency / bound", title="x bound (target <= 1.5 at 512)")
    axes[1].legend(fontsize=7)
    if results.get("masked"):
        rows = results["masked"]["by_real_tokens"]
        reals = [int(n) for n in rows]
        axes[2].plot(reals, [rows[str(n)]["trimmed"]["median_s"] * 1e3 for n in reals], "o-", label="trimmed")
        axes[2].plot(reals, [rows[str(n)]["padded"]["median_s"] * 1e3 for n in reals], "s--", label="padded")
        axes[2].set(xlabel=f"real tokens (padded to {results['masked']['padded_to']})", ylabel="encode ms",
                    title=f"masked pipeline, {results['masked']['backend']}")
        axes[2].legend(fontsize=8)
    fig.suptitle(f"{results['cpu']}, {results['threads']} threads", fontsize=9)
    save_figure(fig, path, dpi=110)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="benchmarks/results/cpu_limit")
    parser.add_argument("--size", choices=list(SIZES), default="base",
                        help="base: a T5-v1.1-base student (the figures in BENCHMARKS.md); tiny: a smoke run")
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--backends", nargs="+", help=f"{BASELINE} and best-cpu candidate names (default: all)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--gemm-seconds", type=float, default=1.0, help="time spent per GEMM shape and dtype")
    parser.add_argument("--skip-masked", action="store_true", help="leave out the masked-pipeline section")
    args = parser.parse_args(argv)
    if args.backends:
        from encoder_shrink.exporters import cpu_candidates

        known = [BASELINE, *cpu_candidates()]
        unknown = [name for name in args.backends if name not in known]
        if unknown:
            parser.error(f"unknown backends {unknown}; choose among {', '.join(known)}")
    print(table(run(args)))


if __name__ == "__main__":
    main()
