"""load_pipeline: a diffusers pipeline by id or folder, safetensors only, with one-line errors for what cannot load."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from encoder_shrink.errors import InputNotFoundError, InvalidArgumentError
from encoder_shrink.weights import PICKLE_SUFFIXES, WeightsError

MODEL_INDEX = "model_index.json"


def require_folder_or_hub_id(value: str | os.PathLike, what: str) -> None:
    """
    A one-line error for a local path that does not exist (instead of the hub's complaint about a malformed repo id):
    anything that exists, or looks like a hub id (`name` or `owner/name`), passes.
    """
    text = str(value)
    if Path(text).exists():
        return
    if Path(text).is_absolute() or text.startswith((".", "~")) or text.count("/") > 1 or "\\" in text:
        raise InputNotFoundError(f"{what} {text} does not exist; pass an existing folder or a hub id (owner/name).")


def check_pipeline_folder(folder: str | os.PathLike) -> dict:
    r"""
    Check a local pipeline folder before anything is loaded from it, and return its `model_index.json`: it must have
    one with a `_class_name`, and every component folder with weights must have safetensors ones (pickle-only folders
    are refused: unpickling can run arbitrary code).

    Example:

    ```python
    >>> check_pipeline_folder("tiny-flux")["_class_name"]  # doctest: +SKIP
    'FluxPipeline'
    ```
    """
    folder = Path(folder)
    index_file = folder / MODEL_INDEX
    if not index_file.is_file():
        raise InputNotFoundError(
            f"{folder} has no {MODEL_INDEX}; pass a diffusers pipeline folder (written by save_pretrained) or a hub "
            "id."
        )
    try:
        index = json.loads(index_file.read_text())
    except json.JSONDecodeError as error:
        raise InvalidArgumentError(f"{index_file} is not valid JSON ({error.msg}); re-save the pipeline.") from None
    if not isinstance(index, dict) or not index.get("_class_name"):
        raise InvalidArgumentError(
            f"{index_file} names no pipeline class (`_class_name`); it is not a diffusers pipeline index: re-save the "
            "pipeline with save_pretrained."
        )
    for name, entry in index.items():
        component = folder / name
        if name.startswith("_") or not isinstance(entry, list) or not component.is_dir():
            continue
        files = [p.name for p in component.iterdir()]
        pickles = sorted(f for f in files if f.endswith(PICKLE_SUFFIXES))
        if pickles and not any(f.endswith(".safetensors") for f in files):
            raise WeightsError(
                f"{component} holds only pickle weights ({', '.join(pickles)}); encoder-shrink loads safetensors only "
                "because unpickling can run arbitrary code: convert them to safetensors where you trust the files."
            )
    return index


def load_pipeline(id_or_path: str | os.PathLike, dtype: torch.dtype = torch.float32, **kwargs):
    r"""
    `DiffusionPipeline.from_pretrained(id_or_path, dtype=dtype, use_safetensors=True, **kwargs)` after
    [`check_pipeline_folder`] for a local folder: the class comes from `model_index.json`, and nothing is unpickled.
    A supported family's pipeline is then made ready to sample as its documentation says (Allegro: VAE tiling).

    Example:

    ```python
    >>> pipe = load_pipeline("black-forest-labs/FLUX.1-dev", dtype=torch.bfloat16)  # doctest: +SKIP
    ```
    """
    from diffusers import DiffusionPipeline

    require_folder_or_hub_id(id_or_path, "pipeline")
    if Path(id_or_path).exists():
        check_pipeline_folder(id_or_path)
    try:
        pipe = DiffusionPipeline.from_pretrained(id_or_path, dtype=dtype, use_safetensors=True, **kwargs)
    except OSError as error:  # a hub id that is not there, or a repository without safetensors weights
        raise InputNotFoundError(f"could not load pipeline {id_or_path}: {str(error).splitlines()[0]}") from None
    from encoder_shrink.pipelines import FAMILIES

    for adapter in FAMILIES.values():
        if adapter.matches(pipe):
            adapter(pipe).prepare_for_sampling()
            break
    return pipe


__all__ = ["check_pipeline_folder", "load_pipeline", "require_folder_or_hub_id"]
