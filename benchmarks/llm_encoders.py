"""LLM text encoders (FLUX.2's Mistral-Small, Qwen-Image's Qwen2.5-VL, Z-Image's Qwen3, Gemma-2) against their student.

Each published teacher's language model is counted on the meta device; the student is T5-base blocks (FLAN-T5-base's
config) over a rank-256 factorised embedding of the teacher's vocabulary, projecting to the layers the pipeline reads.
Weights in bf16 and the student in int8; then, one subprocess per variant, peak memory and CPU encode latency at
`--tokens` tokens with random weights. A teacher is timed on `--teacher-layers` of its decoder layers at full width
and scaled to its depth (none of these fit in time on a 2-core CPU, and Mistral-Small's 48 GB of bf16 weights do not
fit this machine's 24 GB); the report marks those figures as scaled.

Run:  python -m encoder_shrink.benchmarks.llm_encoders --output benchmarks/results/llm_encoders
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from encoder_shrink.files import pyplot, save_figure, write_results

# The language models of the published checkpoints (their config.json `text_config` where the encoder is a VLM), with
# the layers each pipeline reads. "layers" index `hidden_states` (0 = the embeddings).
TEACHERS = {
    "flux2": {"checkpoint": "mistralai/Mistral-Small-3.1-24B-Instruct-2503 (text part)", "published": "24B",
              "model_type": "mistral", "layers": [10, 20, 30],
              "config": dict(vocab_size=131072, hidden_size=5120, intermediate_size=32768, num_hidden_layers=40,
                             num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                             tie_word_embeddings=False)},
    "qwenimage": {"checkpoint": "Qwen/Qwen2.5-VL-7B-Instruct (text part)", "published": "7B",
                  "model_type": "qwen2", "layers": [28],
                  "config": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                 num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False)},
    "z-image": {"checkpoint": "Qwen/Qwen3-4B", "published": "4B", "model_type": "qwen3", "layers": [35],
                "config": dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                               num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                               tie_word_embeddings=True)},
    "sana / lumina2": {"checkpoint": "google/gemma-2-2b-it", "published": "2.6B", "model_type": "gemma2",
                       "layers": [26],
                       "config": dict(vocab_size=256000, hidden_size=2304, intermediate_size=9216,
                                      num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4,
                                      head_dim=256, tie_word_embeddings=True)},
    # Pipelines no family file describes, served by the trace (issue 28): the layers are those their prompt code
    # reads in diffusers 0.42 (`hidden_states[-2]` of 41 is 39). Counted with `--no-timing` into
    # benchmarks/results/llm_encoders_traced; not in the default list.
    "flux2-klein-4b": {"checkpoint": "Qwen/Qwen3-4B", "published": "4B", "model_type": "qwen3",
                       "layers": [9, 18, 27], "traced": True,
                       "config": dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728,
                                      num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                                      head_dim=128, tie_word_embeddings=True)},
    "flux2-klein-9b": {"checkpoint": "Qwen/Qwen3-8B", "published": "8.2B", "model_type": "qwen3",
                       "layers": [9, 18, 27], "traced": True,
                       "config": dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288,
                                      num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                                      head_dim=128, tie_word_embeddings=False)},
    "cogview4": {"checkpoint": "THUDM/glm-4-9b (GLM-4-9B)", "published": "9.4B", "model_type": "glm", "layers": [39],
                 "traced": True,
                 "config": dict(vocab_size=151552, hidden_size=4096, intermediate_size=13696, num_hidden_layers=40,
                                num_attention_heads=32, num_key_value_heads=2, head_dim=128, attention_bias=True,
                                partial_rotary_factor=0.5, tie_word_embeddings=False)},
    "hunyuanvideo": {"checkpoint": "llava-llama-3-8b (text part)", "published": "8B", "model_type": "llama",
                     "layers": [30], "traced": True,
                     "config": dict(vocab_size=128320, hidden_size=4096, intermediate_size=14336,
                                    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                                    tie_word_embeddings=False)},
    "hunyuanvideo15 / hunyuanimage21": {
        "checkpoint": "Qwen/Qwen2.5-VL-7B-Instruct (text part)", "published": "7B", "model_type": "qwen2",
        "layers": [26], "traced": True,
        "config": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False)},
    "kandinsky5": {"checkpoint": "Qwen/Qwen2.5-VL-7B-Instruct (text part)", "published": "7B", "model_type": "qwen2",
                   "layers": [28], "traced": True,
                   "config": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                  num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False)},
    "easyanimate": {"checkpoint": "Qwen/Qwen2-VL-7B-Instruct (text part)", "published": "7B", "model_type": "qwen2",
                    "layers": [27], "traced": True,
                    "config": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                                   num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                                   tie_word_embeddings=False)},
    # LTX-2 stacks every hidden state (49 x 3840 features per token).
    "ltx2": {"checkpoint": "google/gemma-3-12b-it (text part)", "published": "12B", "model_type": "gemma3_text",
             "layers": list(range(49)), "traced": True,
             "config": dict(vocab_size=262208, hidden_size=3840, intermediate_size=15360, num_hidden_layers=48,
                            num_attention_heads=16, num_key_value_heads=8, head_dim=256,
                            tie_word_embeddings=True)},
    # A tiny Llama-style teacher for the smoke test (`--teachers tiny`); not in the default list.
    "tiny": {"checkpoint": "tiny test teacher", "published": "-", "model_type": "mistral", "layers": [1, 2],
             "config": dict(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)},
}
# FLAN-T5-base's encoder config: the recipes' `student_t5`.
T5_BASE = dict(d_model=768, d_ff=2048, num_layers=12, num_heads=12, d_kv=64, feed_forward_proj="gated-gelu")
EMBEDDING_RANK = 256


def teacher(name: str, num_layers: int | None = None):
    """The teacher's language model (random weights) with all its layers, or its first `num_layers`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = TEACHERS[name]
    config = AutoConfig.for_model(spec["model_type"], **spec["config"])
    if num_layers is not None:
        config.num_hidden_layers = num_layers
    return AutoModelForCausalLM.from_config(config)


def student(name: str):
    """The `<family>-t5base` recipes' student of the teacher `name` (random weights)."""
    from encoder_shrink import ShrunkLLMConfig, ShrunkLLMEncoderModel

    spec = TEACHERS[name]
    hidden, layers = spec["config"]["hidden_size"], spec["layers"]
    return ShrunkLLMEncoderModel(ShrunkLLMConfig(
        **T5_BASE, vocab_size=spec["config"]["vocab_size"], embedding_rank=EMBEDDING_RANK, teacher_hidden_size=hidden,
        teacher_dim=hidden * len(layers), teacher_layers=layers,
        teacher_num_hidden_states=spec["config"]["num_hidden_layers"] + 1))


def _parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def time_variant(variant: str, name: str, tokens: int, repeats: int, teacher_layers: int) -> dict:
    """In this process: build one variant with random fp32 weights, encode `tokens` tokens `repeats` times."""
    torch.manual_seed(0)
    model = (student(name) if variant == "student" else teacher(name, teacher_layers)).eval()
    vocab = TEACHERS[name]["config"]["vocab_size"]
    ids = torch.randint(0, vocab, (1, tokens))
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        call = (lambda: model(ids, attention_mask=mask)) if variant == "student" else (
            lambda: model.model(ids, attention_mask=mask, use_cache=False))
        call()  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
    seconds = sorted(times)[len(times) // 2]
    depth = TEACHERS[name]["config"]["num_hidden_layers"]
    scale = depth / teacher_layers if variant == "teacher" else 1.0
    return {"median_s_measured": seconds, "median_s": seconds * scale, "scaled_from_layers": (
        teacher_layers if variant == "teacher" else None), "peak_rss_gb": resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 2**20}


def measure(names: list[str], tokens: int, repeats: int, teacher_layers: int, timed: bool = True) -> dict:
    rows = {}
    for name in names:
        with torch.device("meta"):
            teacher_params = _parameters(teacher(name))
            student_params = _parameters(student(name))
        row = {
            "checkpoint": TEACHERS[name]["checkpoint"], "published": TEACHERS[name]["published"],
            "teacher_parameters": teacher_params, "student_parameters": student_params,
            "teacher_bf16_gb": round(2 * teacher_params / 1e9, 2),
            "student_bf16_gb": round(2 * student_params / 1e9, 3),
            "student_int8_gb": round(student_params / 1e9, 3),
            "smaller_bf16": round(teacher_params / student_params, 1),
            # teacher in bf16 against the student in int8 (1 byte per weight)
            "smaller_int8": round(2 * teacher_params / student_params, 1),
        }
        if timed:
            for variant in ("teacher", "student"):
                command = [sys.executable, "-m", "encoder_shrink.benchmarks.llm_encoders", "--time", variant, name,
                           "--tokens", str(tokens), "--repeats", str(repeats), "--teacher-layers",
                           str(teacher_layers)]
                done = subprocess.run(command, capture_output=True, text=True, check=True)
                row[variant] = json.loads(done.stdout.strip().splitlines()[-1])
            row["encode_speedup"] = round(row["teacher"]["median_s"] / row["student"]["median_s"], 1)
        rows[name] = row
    return {"benchmark": "llm_encoders", "tokens": tokens, "student": f"T5-base blocks + rank-{EMBEDDING_RANK} "
            "embedding + projector", "device": "cpu (fp32, random weights)", "variants": rows}


def table(results: dict) -> str:
    lines = [f"LLM teachers vs a {results['student']} student; encode at {results['tokens']} tokens on "
             f"{results['device']}; teacher latency timed on a slice of its layers and scaled (marked *).", "",
             "| pipeline | teacher | teacher params | student params | x smaller (bf16) | x smaller (int8 student) "
             "| teacher encode | student encode | student peak RSS |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results["variants"].items():
        timing = ("| - | - | - |" if "teacher" not in r else
                  f"| {r['teacher']['median_s'] * 1e3:.0f} ms* | {r['student']['median_s'] * 1e3:.0f} ms | "
                  f"{r['student']['peak_rss_gb']:.2f} GB |")
        lines.append(f"| {name} | {r['checkpoint']} | {r['teacher_parameters'] / 1e9:.2f} B | "
                     f"{r['student_parameters'] / 1e6:.1f} M | {r['smaller_bf16']:g} | {r['smaller_int8']:g} "
                     + timing)
    return "\n".join(lines)


def _chart(results: dict, path: Path) -> None:
    plt = pyplot()

    names = list(results["variants"])
    rows = results["variants"]
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(names) + 1.5))
    ax.barh(names, [rows[n]["teacher_bf16_gb"] for n in names], color="#bbb", label="teacher (bf16)")
    ax.barh(names, [rows[n]["student_bf16_gb"] for n in names], color="#27a", label="student (bf16)")
    ax.set_xlabel("GB of weights")
    ax.legend(loc="lower right")
    save_figure(fig, path, dpi=110)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="benchmarks/results/llm_encoders")
    parser.add_argument("--teachers", nargs="+", choices=list(TEACHERS),
                        default=[n for n, spec in TEACHERS.items() if n != "tiny" and not spec.get("traced")])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--teacher-layers", type=int, default=2, help="decoder layers of a teacher that are timed")
    parser.add_argument("--no-timing", action="store_true", help="count parameters only")
    parser.add_argument("--time", nargs=2, metavar=("VARIANT", "TEACHER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.time:  # the per-variant subprocess
        print(json.dumps(time_variant(args.time[0], args.time[1], args.tokens, args.repeats, args.teacher_layers)))
        return
    results = measure(args.teachers, args.tokens, args.repeats, args.teacher_layers, timed=not args.no_timing)
    output = Path(args.output)
    write_results(output, results, table(results), _chart)
    print(table(results))


if __name__ == "__main__":
    main()
