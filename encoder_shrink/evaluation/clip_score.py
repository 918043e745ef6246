"""The `clip` metric: CLIP score of images against their prompts, from a local CLIP checkpoint."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from encoder_shrink.errors import InputNotFoundError, InvalidArgumentError
from encoder_shrink.evaluation.metrics import register_metric

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class CLIPScoreConfig:
    r"""
    Configures the `clip` metric: CLIP score = max(mean over images of 100 x cosine(image embedding, prompt
    embedding), 0), the definition of torchmetrics' `CLIPScore`, on the scale the paper reports (31.30 for FLUX with
    T5-XXL). Prompts longer than the CLIP text model's positions are truncated, as CLIP was trained.

    Args:
        clip: a local folder holding a `CLIPModel` and its processor, e.g. `openai/clip-vit-large-patch14` saved with
            `save_pretrained` (nothing is downloaded). Only safetensors weights are loaded.
        batch_size: images embedded per forward pass.
        device: where CLIP runs (`"cpu"`, `"cuda"`).

    Example:

    ```python
    >>> CLIPScoreConfig()
    Traceback (most recent call last):
    ...
    encoder_shrink.errors.InvalidArgumentError: metric 'clip' needs a CLIP checkpoint: pass --clip PATH (clip=PATH).
    ```
    """

    clip: str | os.PathLike | None = None
    batch_size: int = 32
    device: str = "cpu"

    def __post_init__(self):
        if self.clip is None or str(self.clip) == "":
            raise InvalidArgumentError(
                "metric 'clip' needs a CLIP checkpoint: pass --clip PATH (clip=PATH)."
            )
        path, name = Path(self.clip).expanduser(), str(self.clip)
        if not (path / "config.json").is_file():
            raise InputNotFoundError(
                f"CLIPScoreConfig(clip={name!r}): no CLIP checkpoint there (no config.json); pass the local folder a "
                "CLIPModel and its processor were saved to with save_pretrained."
            )
        if not any(path.glob("*.safetensors")):
            raise InputNotFoundError(
                f"CLIPScoreConfig(clip={name!r}): no safetensors weights there (pickle files are never loaded); "
                "re-save the model with save_pretrained(folder) (safetensors is its default)."
            )
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InvalidArgumentError(f"CLIPScoreConfig(batch_size={self.batch_size!r}): pass a positive integer.")


@functools.cache
def _load_clip(path: str, device: str):
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(path, use_safetensors=True).to(device).eval()
    return model, CLIPProcessor.from_pretrained(path)


@torch.no_grad()
def clip_score(images, prompts: list[str], clip: str | os.PathLike, batch_size: int = 32,
               device: str = "cpu") -> np.ndarray:
    r"""
    Per-image 100 x cosine of `images` (uint8 N x H x W x 3) and `prompts` in CLIP's joint space (not clamped: the
    metric clamps their mean at 0, as torchmetrics does).

    Example:

    ```python
    >>> clip_score(images, prompts, clip="clip-vit-large-patch14/").mean()  # doctest: +SKIP
    31.3
    ```
    """
    model, processor = _load_clip(str(Path(clip).expanduser()), device)
    max_length = model.config.text_config.max_position_embeddings
    scores = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="clip", unit="batch", leave=False):
        batch = list(images[start:start + batch_size])
        text = processor.tokenizer(list(prompts[start:start + batch_size]), padding=True, truncation=True,
                                   max_length=max_length, return_tensors="pt").to(device)
        pixels = processor.image_processor(batch, return_tensors="pt")["pixel_values"].to(device, model.dtype)
        out = model(**text, pixel_values=pixels)  # image_embeds / text_embeds: projected into CLIP's joint space
        cosine = torch.nn.functional.cosine_similarity(out.image_embeds.float(), out.text_embeds.float(), dim=-1)
        scores.append((100 * cosine).cpu().numpy())
    return np.concatenate(scores)


def _score_clip(config: CLIPScoreConfig, images: np.ndarray, prompts: list[str]) -> dict:
    scores = clip_score(images, prompts, config.clip, config.batch_size, config.device)
    return {"clip_score": max(float(scores.mean()), 0.0), "std": float(scores.std()), "prompts": len(prompts),
            "clip": str(config.clip)}


register_metric("clip", CLIPScoreConfig, _score_clip, headline=("clip_score",),
                description="image-prompt agreement: CLIP score (100 x cosine) from a local CLIP checkpoint (--clip)")

__all__ = ["CLIPScoreConfig", "clip_score"]
