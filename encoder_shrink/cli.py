"""The `encoder-shrink` command line: each subcommand parses its arguments, then calls one library function."""

from __future__ import annotations

import argparse
import logging
import sys

from encoder_shrink import __version__


def _demo(args: argparse.Namespace) -> int:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from encoder_shrink.demo import run_drop_in_demo, results_table

    # One progress bar for the demo; the libraries' per-load and per-step bars would bury it.
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    results = run_drop_in_demo(args.output, families=tuple(args.families), seed=args.seed)
    print(results_table(results))
    print(f"\nWrote {args.output}/results.json, report.md and grid.png")
    return 0 if all(r["reload_identical"] and r["images_finite"] for r in results["families"].values()) else 1


def _convert(args: argparse.Namespace) -> int:
    from encoder_shrink.reference import convert_reference_checkpoint

    student = convert_reference_checkpoint(args.source, args.output, overwrite=args.overwrite)
    config = student.config
    print(f"Wrote {args.output}: T5 d_model={config.d_model}, {config.num_layers} layers -> teacher_dim={config.teacher_dim}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from encoder_shrink.testing import TINY_FAMILIES

    parser = argparse.ArgumentParser(
        prog="encoder-shrink",
        description="Shrink the T5-XXL text encoder of FLUX, SD3 and PixArt pipelines into a small drop-in student.",
    )
    parser.add_argument("--version", action="version", version=f"encoder-shrink {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="offline end-to-end drop-in demo on tiny FLUX/SD3/PixArt pipelines",
        description="Build tiny pipelines, put a student in their T5 slot, generate, save, reload; write a report.",
    )
    demo.add_argument("--output", default="encoder-shrink-demo", help="folder for results (default: %(default)s)")
    demo.add_argument("--families", nargs="+", default=list(TINY_FAMILIES), choices=TINY_FAMILIES, metavar="FAMILY",
                      help=f"pipeline families to run (default: all of {', '.join(TINY_FAMILIES)})")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)

    convert = commands.add_parser(
        "convert",
        help="convert a reference DistillT5 checkpoint (T5EncoderWithProjection) into a student folder",
        description="Load a T5EncoderWithProjection checkpoint (folder or hub id) and save it as a student.",
    )
    convert.add_argument("source", help="folder or hub id of the reference checkpoint")
    convert.add_argument("--output", required=True, help="folder to write the student to")
    convert.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    convert.set_defaults(func=_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, TypeError, FileExistsError, OSError) as error:
        print(f"encoder-shrink {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
