"""`encoder-shrink distill`: the options text-encoder distillation adds to every method's, and its run."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser, names) -> None:
    """The distill command's own options (`names(kind)` is the CLI's lazily read registry name list)."""
    parser.add_argument("--loss", choices=names("losses"), metavar="LOSS",
                        help="the loss in every stage, one of %(choices)s (vision: the paper's step-following loss; "
                             "embedding: the naive MSE baseline); default: the recipe's (vision, or per stage)")
    parser.add_argument("--cache-dir", help="persist the teacher's embeddings here (safetensors shards)")
    parser.add_argument("--release-teacher", action="store_true",
                        help="encode every prompt the run can draw first, then free the teacher before training")
    parser.add_argument("--slot", help="the text encoder to shrink (default: the family's, or for a pipeline no "
                                       "family file describes, the largest; see `encoder-shrink inspect`)")


def recipe_overrides(args: argparse.Namespace) -> dict:
    """What the command's own options change in the recipe (checked before the pipeline loads)."""
    from encoder_shrink.loading import check_resolution

    if args.resolution is not None:  # a resolution the pipeline cannot take fails before minutes of loading
        check_resolution(args.pipeline, args.resolution)
    return {"loss": args.loss} if args.loss else {}


def run(args: argparse.Namespace, pipe, recipe, overrides: dict, prompts) -> str:
    """Distil `pipe`'s text encoder with `recipe`; the line the CLI prints."""
    from encoder_shrink.shrinker import EncoderShrinker
    from encoder_shrink.training.setup import SUMMARY

    shrinker = EncoderShrinker(pipe, teacher_id=args.pipeline, slot=args.slot)
    shrinker.distill(recipe=args.recipe, prompts=prompts, output_dir=args.output, resume=args.resume, loss=args.loss,
                     cache_dir=args.cache_dir, release_teacher=args.release_teacher, overwrite=args.overwrite,
                     **overrides)
    summary = shrinker.summary
    return (f"Student written to {args.output}/student ({summary['student_parameters']:,} parameters vs the "
            f"teacher's {summary['teacher_parameters']:,}); held-out denoiser relative MSE "
            f"{summary['fidelity_before']['relative_mse']:.4g} -> {summary['fidelity_after']['relative_mse']:.4g}; "
            f"summary in {args.output}/{SUMMARY}")


def description() -> str:
    """The command's `--help` text, naming the registered families (read only when shown)."""
    from encoder_shrink.pipelines import registered_families

    return (f"Distil the text encoder of a pipeline into a small student: a registered family "
            f"({', '.join(registered_families())}), or any other pipeline, traced from its own __call__.")
