"""`optimum-cli encoder-shrink ...`: the encoder-shrink CLI as a subcommand of optimum's command line."""

from __future__ import annotations

import argparse
import sys

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo


class EncoderShrinkCommand(BaseOptimumCLICommand):
    """Forwards everything after `optimum-cli encoder-shrink` to the `encoder-shrink` command line."""

    COMMAND = CommandInfo(name="encoder-shrink", help="distil, export and check shrunk T5 text encoders (encoder-shrink)")

    @staticmethod
    def parse_args(parser: argparse.ArgumentParser):
        parser.add_argument("arguments", nargs=argparse.REMAINDER, help="encoder-shrink arguments (see encoder-shrink --help)")

    def run(self):
        from encoder_shrink.cli import main

        sys.exit(main(self.args.arguments or ["--help"]))
