"""Turning a checkpoint in the reference implementation's layout into a student folder."""

from __future__ import annotations

import os
import re
from pathlib import Path

from safetensors import safe_open

from encoder_shrink.errors import OutputExistsError
from encoder_shrink.reference import REFERENCE_KEY_MAPPING, config_from_reference_weights
from encoder_shrink.student import ShrunkT5EncoderModel
from encoder_shrink.weights import WeightsError, safetensors_file


def load_reference_file(path: str | os.PathLike):
    """A student from one reference-layout safetensors file (config read off the tensor shapes)."""
    safetensors_file(path)
    with safe_open(str(path), framework="pt") as weights:
        tensors = {name: weights.get_tensor(name) for name in weights.keys()}
    student = ShrunkT5EncoderModel(config_from_reference_weights({k: tuple(v.shape) for k, v in tensors.items()}))
    renamed = {}
    for name, tensor in tensors.items():
        for pattern, replacement in REFERENCE_KEY_MAPPING.items():
            name = re.sub(pattern, replacement, name)
        renamed[name] = tensor
    renamed.setdefault("encoder.embed_tokens.weight", renamed.get("shared.weight"))
    missing, unexpected = student.load_state_dict(renamed, strict=False)
    if missing or unexpected:
        raise WeightsError(
            f"{path} does not hold a complete reference-layout student: missing {', '.join(missing[:3]) or 'none'}, "
            f"unexpected {', '.join(unexpected[:3]) or 'none'}."
        )
    student.tie_weights()
    return student.eval()


def convert_reference_checkpoint(source: str | os.PathLike, destination: str | os.PathLike, overwrite: bool = False):
    """
    Load a reference checkpoint (folder, hub id, or one reference-layout safetensors file) and save it as a student
    (`config.json` + `model.safetensors`).

    Example:

    ```python
    >>> convert_reference_checkpoint("LifuWang/DistillT5", "out/distillt5-student")  # doctest: +SKIP
    ```
    """
    destination = Path(destination)
    if destination.exists() and any(destination.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"{destination} exists and is not empty; choose another folder or pass overwrite=True."
        )
    if Path(source).is_file():
        student = load_reference_file(source)
    else:
        student = ShrunkT5EncoderModel.from_pretrained(source)
    student.save_pretrained(destination)
    return student
