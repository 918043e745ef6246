"""load_pipeline: a diffusers pipeline by id or folder, safetensors only, with one-line errors for what cannot load."""

from __future__ import annotations

import json
import os
import re
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
        # Weights only count under the names diffusers and transformers load (`model*.safetensors`,
        # `diffusion_pytorch_model*.safetensors`): another safetensors file beside a `.bin` is not the model.
        if pickles and not any(_WEIGHT_FILE.fullmatch(f) for f in files):
            raise WeightsError(
                f"{component} holds only pickle weights ({', '.join(pickles)}); encoder-shrink loads safetensors only "
                "because unpickling can run arbitrary code: convert them to safetensors where you trust the files."
            )
    return index


# The safetensors weight files (shards, variants) that diffusers and transformers load from a component folder.
_WEIGHT_FILE = re.compile(r"(diffusion_pytorch_model|model)(\.[\w-]+)?(-\d+-of-\d+)?\.safetensors")


def from_pretrained_or_fail(pipeline_class, id_or_path: str | os.PathLike, **kwargs):
    """
    `pipeline_class.from_pretrained(id_or_path, use_safetensors=True, **kwargs)`, after the checks of
    [`check_pipeline_folder`] for a local folder; a pipeline the hub or the folder cannot give is one line.
    """
    require_folder_or_hub_id(id_or_path, "pipeline")
    if Path(id_or_path).exists():
        check_pipeline_folder(id_or_path)
    try:
        return pipeline_class.from_pretrained(id_or_path, use_safetensors=True, **kwargs)
    except OSError as error:  # a hub id that is not there (or no network), or a repository without safetensors
        raise InputNotFoundError(
            f"could not load pipeline {id_or_path}: {str(error).splitlines()[0]} (pass an existing pipeline folder, "
            "or a hub id with the network on)"
        ) from None


def load_pipeline(id_or_path: str | os.PathLike, dtype: torch.dtype = torch.float32, pipeline_class=None, **kwargs):
    r"""
    `DiffusionPipeline.from_pretrained(id_or_path, dtype=dtype, use_safetensors=True, **kwargs)` (or
    `pipeline_class.from_pretrained`) after [`check_pipeline_folder`] for a local folder: the class comes from
    `model_index.json`, and nothing is unpickled. A supported family's pipeline is then made ready to sample as its
    documentation says (Allegro: VAE tiling). Every command that reads a pipeline loads it here.

    Example:

    ```python
    >>> pipe = load_pipeline("black-forest-labs/FLUX.1-dev", dtype=torch.bfloat16)  # doctest: +SKIP
    ```
    """
    from diffusers import DiffusionPipeline

    pipe = from_pretrained_or_fail(pipeline_class or DiffusionPipeline, id_or_path, dtype=dtype, **kwargs)
    from encoder_shrink.pipelines import FAMILIES

    for adapter in FAMILIES.values():
        if adapter.matches(pipe):
            adapter(pipe).prepare_for_sampling()
            break
    return pipe


def _read_config(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def check_resolution(id_or_path: str | os.PathLike, resolution: int) -> None:
    r"""
    Refuse, from a local pipeline folder's configs alone (nothing is loaded), a `resolution` its denoiser cannot
    generate at: not a multiple of the VAE's factor times the denoiser's patch size, or above what the denoiser's
    position table covers (`pos_embed_max_size`, SD3). A hub id is left to the pipeline's own checks.

    Example:

    ```python
    >>> check_resolution("tiny-sd3", 4096)  # doctest: +SKIP
    Traceback (most recent call last):
    InvalidArgumentError: resolution=4096 is above what tiny-sd3's transformer generates (at most 64 px) ...
    ```
    """
    folder = Path(id_or_path)
    if resolution <= 0:
        raise InvalidArgumentError(f"resolution={resolution} is not a size in pixels; pass a positive one.")
    if not (folder / MODEL_INDEX).is_file():
        return
    vae = _read_config(folder / "vae")
    if not vae:
        return
    scale = (vae.get("scale_factor_spatial") or vae.get("spatial_compression_ratio")
             or 2 ** (len(vae.get("block_out_channels") or [0]) - 1))
    for name in ("transformer", "unet"):
        config = _read_config(folder / name)
        if not config:
            continue
        patch = config.get("patch_size") or 1
        patch = patch[-1] if isinstance(patch, (list, tuple)) else patch  # video: (frames, height, width)
        multiple = scale * patch
        if resolution % multiple:
            nearest = max(multiple, resolution // multiple * multiple)
            raise InvalidArgumentError(
                f"resolution={resolution} is not a multiple of {multiple} (the VAE's factor {scale} x the {name}'s "
                f"patch size {patch}); pass a multiple of {multiple}, e.g. {nearest}."
            )
        if config.get("pos_embed_max_size"):
            largest = config["pos_embed_max_size"] * patch * scale
            if resolution > largest:
                raise InvalidArgumentError(
                    f"resolution={resolution} is above what {folder}'s {name} generates (at most {largest} px: "
                    f"pos_embed_max_size {config['pos_embed_max_size']}); pass at most {largest}."
                )


__all__ = ["check_pipeline_folder", "check_resolution", "from_pretrained_or_fail", "load_pipeline",
           "require_folder_or_hub_id"]
