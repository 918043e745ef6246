"""Encoder size ratios per pipeline family: the published teacher in each family's slot against a student.

Every registered family with a synthetic architecture is built on the meta device (nothing is allocated): the
parameters of the whole pipeline, of the encoder a student replaces, and of the family's recipe student (T5-base,
UMT5-base or Pile-T5-base sized) projecting to the family's conditioning width; bf16 and int8 weight bytes, and the
share of the pipeline the encoder is.

Run:  python -m encoder_shrink.benchmarks.family_sizes --output benchmarks/results/family_sizes
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from encoder_shrink.files import pyplot, save_figure, write_results


def _parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def measure(student_size: str | None = None, families: list[str] | None = None) -> dict:
    """The sizes of each synthetic family's pipeline (default: all), teacher encoder and a student, on meta."""
    from encoder_shrink.benchmarks.synthetic import synthetic_pipeline, synthetic_student
    from tqdm.auto import tqdm

    from encoder_shrink.pipelines import get_adapter, synthetic_families

    rows = {}
    for family in tqdm(families or synthetic_families(), desc="families", unit="family"):
        adapter = get_adapter(family)
        pipe = synthetic_pipeline(family, device="meta")
        components = {name: module for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)}
        teacher = components[adapter.encoder_slot]
        width = int(pipe.transformer.config[adapter.conditioning_width_key]
                    if not isinstance(pipe.transformer.config[adapter.conditioning_width_key], list)
                    else pipe.transformer.config[adapter.conditioning_width_key][0])
        student = synthetic_student(student_size or adapter.synthetic.student, teacher_dim=width, device="meta")
        pipeline_params = sum(_parameters(m) for m in components.values())
        teacher_params, student_params = _parameters(teacher), _parameters(student)
        rows[family] = {
            "checkpoint": adapter.synthetic.checkpoint,
            "slot": adapter.encoder_slot,
            "teacher": type(teacher).__name__,
            "pipeline_parameters": pipeline_params,
            "teacher_parameters": teacher_params,
            "student_parameters": student_params,
            "teacher_share_of_pipeline": round(teacher_params / pipeline_params, 4),
            "smaller": round(teacher_params / student_params, 2),
            # bf16 weights (2 bytes), and the student in int8 (1 byte): the export formats' sizes before overheads.
            "teacher_bf16_gb": round(2 * teacher_params / 1e9, 2),
            "student_bf16_gb": round(2 * student_params / 1e9, 3),
            "student_int8_gb": round(student_params / 1e9, 3),
            "pipeline_bf16_gb": round(2 * pipeline_params / 1e9, 2),
            "pipeline_bf16_gb_with_student": round(2 * (pipeline_params - teacher_params + student_params) / 1e9, 2),
        }
    student = (f"{student_size} + projector" if student_size
               else "T5-base (UMT5-base for UMT5-XXL, Pile-T5-base for Pile-T5-XL) + projector")
    return {"benchmark": "family_sizes", "student": student, "device": "meta", "families": rows}


def table(results: dict) -> str:
    lines = [f"Teacher encoder vs a {results['student']} student, parameters counted on the meta device.", "",
             "| family | slot | teacher | teacher params | share of pipeline | student params | x smaller | "
             "pipeline bf16 GB | with student |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for family, r in results["families"].items():
        lines.append(
            f"| {family} | {r['slot']} | {r['teacher']} | {r['teacher_parameters'] / 1e9:.2f} B | "
            f"{100 * r['teacher_share_of_pipeline']:.0f} % | {r['student_parameters'] / 1e6:.1f} M | "
            f"{r['smaller']:g} | "
            f"{r['pipeline_bf16_gb']:g} | {r['pipeline_bf16_gb_with_student']:g} |"
        )
    return "\n".join(lines)


def _chart(results: dict, path: Path) -> None:
    plt = pyplot()

    families = list(results["families"])
    rows = results["families"]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(families) + 1.5))
    ax.barh(families, [rows[f]["pipeline_bf16_gb"] for f in families], color="#bbb", label="pipeline (bf16)")
    ax.barh(families, [rows[f]["pipeline_bf16_gb_with_student"] for f in families], color="#27a",
            label="pipeline with the student")
    ax.axvline(24, color="#b44", linestyle="--", linewidth=1)
    ax.text(24.3, len(families) - 0.6, "24 GB card", color="#b44", fontsize=8)
    ax.set_xlabel("GB of weights (bf16)")
    ax.legend(loc="lower right")
    save_figure(fig, path, dpi=110)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="benchmarks/results/family_sizes")
    parser.add_argument("--student", help="student size (default: each family's recipe student, T5-base or UMT5-base)")
    parser.add_argument("--families", nargs="+", help="families to measure (default: every synthetic family)")
    args = parser.parse_args(argv)
    results = measure(args.student, args.families)
    output = Path(args.output)
    write_results(output, results, table(results), _chart)
    print(table(results))


if __name__ == "__main__":
    main()
