"""Registers `optimum-cli encoder-shrink` through optimum's `optimum.commands.register` namespace (PEP 420)."""

from encoder_shrink.optimum_command import EncoderShrinkCommand

REGISTER_COMMANDS = [EncoderShrinkCommand]
