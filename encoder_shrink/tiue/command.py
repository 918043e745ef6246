"""`encoder-shrink tiue distill`: TiUE's run from the command line (the options are every method's)."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace, pipe, recipe, overrides: dict, prompts) -> str:
    """Distil `pipe`'s UNet into a TiUE student with `recipe`; the line the CLI prints."""
    from encoder_shrink.tiue.distiller import PIPELINE, TiUEDistiller
    from encoder_shrink.training.setup import SUMMARY

    distiller = TiUEDistiller(pipe, teacher_id=args.pipeline)
    distiller.distill(recipe=args.recipe, prompts=prompts, output_dir=args.output, resume=args.resume,
                      overwrite=args.overwrite, **overrides)
    summary = distiller.summary
    before, after = summary["distance_before"], summary["distance_after"]
    return (f"TiUE pipeline written to {args.output}/{PIPELINE} (K = {len(summary['timesteps'])}: "
            f"{summary['timesteps']}); energy distance to the teacher's samples {before['energy_distance']:.4g} -> "
            f"{after['energy_distance']:.4g} (images {before['image_energy_distance']:.4g} -> "
            f"{after['image_energy_distance']:.4g}"
            + (f"; {after['metric']} {before['student_score']:.4g} -> {after['student_score']:.4g}, teacher "
               f"{after['teacher_score']:.4g}" if after.get("metric") else "")
            + f"); summary in {args.output}/{SUMMARY}")
