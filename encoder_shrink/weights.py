"""Checks that a local model folder holds complete safetensors weights before anything is loaded from it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors import SafetensorError, safe_open

from encoder_shrink.errors import EncoderShrinkError

SAFETENSORS_INDEX = "model.safetensors.index.json"
# Files that can only be read by unpickling (arbitrary code execution): never loaded, only recognised.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class WeightsError(EncoderShrinkError, ValueError):
    """A model folder whose weights are missing, pickle-only, truncated or incomplete."""


def safetensors_files(folder: str | os.PathLike) -> list[Path]:
    """
    Return the safetensors files of a local model folder after checking each one is complete.

    Raises [`WeightsError`] with a one-line message when the folder has no safetensors weights (naming any
    pickle files it found instead), when a file is truncated or not a safetensors file, or when a sharded
    checkpoint's index names a shard that is absent.

    Example:

    ```python
    >>> from encoder_shrink.weights import safetensors_files
    >>> safetensors_files("out/student")  # doctest: +SKIP
    [PosixPath('out/student/model.safetensors')]
    ```
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsError(f"{folder} is not a folder; pass the folder written by save_pretrained.")
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise WeightsError(f"{index} is not a valid safetensors index ({error}); re-save the model.") from None
        files = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise WeightsError(
                f"{folder} is incomplete: {index.name} lists shards that are absent ({', '.join(missing)}); "
                "copy or download the whole folder again."
            )
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise WeightsError(
                f"{folder} holds only pickle weights ({', '.join(pickles)}); encoder-shrink loads safetensors only "
                "because unpickling can run arbitrary code: convert them to model.safetensors where you trust the "
                "file."
            )
        raise WeightsError(f"{folder} has no model.safetensors; pass a folder written by save_pretrained.")
    for file in files:
        safetensors_file(file)
    return files


def safetensors_file(path: str | os.PathLike) -> Path:
    """
    Check that `path` is a complete safetensors file; a missing, pickle or truncated file raises a one-line
    [`WeightsError`].

    Example:

    ```python
    >>> safetensors_file("student.safetensors")  # doctest: +SKIP
    PosixPath('student.safetensors')
    ```
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path} does not exist; pass a safetensors file or a folder written by save_pretrained.")
    if path.suffix in PICKLE_SUFFIXES:
        raise WeightsError(
            f"{path} is a pickle file; encoder-shrink loads safetensors only because unpickling can run arbitrary "
            "code: convert it to safetensors where you trust the file."
        )
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except (SafetensorError, OSError) as error:
        raise WeightsError(
            f"{path} is truncated or not a safetensors file ({error}); copy or download it again."
        ) from None
    return path
