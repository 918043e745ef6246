"""The toy world's SD-style teacher: a `StableDiffusionPipeline` (CLIP text encoder, UNet, VAE) that TiUE distils."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import torch

from encoder_shrink.errors import InputNotFoundError
from encoder_shrink.toy.teacher import BUNDLED_TEACHER, MAX_SEQUENCE_LENGTH, toy_t5_tokenizer
from encoder_shrink.toy.world import IMAGE_SIZE, ToyPrompt

logger = logging.getLogger(__name__)

# The trained SD-style teacher shipped with the package (python -m encoder_shrink.toy.train_sd_teacher re-creates it).
BUNDLED_SD_TEACHER = Path(__file__).parent / "sd_teacher"
# The teacher's sampler, as SD samples: DDIM at 25 steps with classifier-free guidance.
SD_STEPS = 25
# CFG scale of the teacher's sampling, SD-like. Set before training; training_summary.json's "guidance" sweep on
# held-out prompts found a plateau from 2 to 4.5 (0.869, 0.8625 at 3, 0.869) and 0.80 without guidance.
SD_GUIDANCE_SCALE = 3.0
# CLIP text encoder: 2 layers x 128 wide, 16 positions (the longest spelled prompt is 11 tokens + </s>).
CLIP_TEXT = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4}
# The UNet: 16 x 16 x 4 latents (the world's VAE halves 32 px), three levels 16 -> 8 -> 4; attention only at 8 and 4,
# where it costs little (a 16 x 16 self-attention doubled the step time for no measured gain in the first runs).
UNET = {
    "block_out_channels": (32, 64, 96),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "layers_per_block": 1,
    "attention_head_dim": 4,  # diffusers' legacy name: the number of heads (16 and 24 dims each)
    "norm_num_groups": 16,
}


def sd_scheduler_config() -> dict:
    """SD's DDIM config (scaled-linear betas, `steps_offset=1`, no clipping): what TiUE's closed-form combine needs."""
    return {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
            "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon",
            "timestep_spacing": "leading"}


def toy_sd_components(seed: int = 0, vae=None) -> dict:
    r"""
    Randomly initialised text encoder and UNet of the toy `StableDiffusionPipeline`, with the world's VAE (the FLUX
    teacher's trained one, read without its shift: SD pipelines scale latents but do not shift them) and SD's DDIM
    scheduler: what `train_sd_teacher` starts from.

    Example:

    ```python
    >>> from diffusers import StableDiffusionPipeline
    >>> pipe = StableDiffusionPipeline(**toy_sd_components())
    >>> pipe.unet.config.sample_size, pipe.tokenizer.model_max_length
    (16, 16)
    ```
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = toy_t5_tokenizer()
    # A copy: the config change below must not reach a VAE the caller still decodes with (FLUX shifts).
    vae = AutoencoderKL.from_pretrained(BUNDLED_TEACHER / "vae") if vae is None else copy.deepcopy(vae)
    vae.register_to_config(shift_factor=None)  # trained with the scale alone, as StableDiffusionPipeline decodes
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), max_position_embeddings=MAX_SEQUENCE_LENGTH,
        projection_dim=CLIP_TEXT["hidden_size"], pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
        hidden_act="gelu", attention_dropout=0.0, **CLIP_TEXT,
    ))
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 2, in_channels=vae.config.latent_channels, out_channels=vae.config.latent_channels,
        cross_attention_dim=CLIP_TEXT["hidden_size"], **UNET,
    )
    return {
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": tokenizer,
        "unet": unet,
        "scheduler": DDIMScheduler(**sd_scheduler_config()),
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }


def load_toy_sd_teacher(path: str | Path | None = None, **kwargs):
    r"""
    The trained toy SD teacher (`StableDiffusionPipeline`), from the package or from `path`.

    Example:

    ```python
    >>> pipe = load_toy_sd_teacher()  # doctest: +SKIP
    >>> images = generate_sd(pipe, ["two red circles"], seeds=[0])  # doctest: +SKIP
    ```
    """
    from diffusers import StableDiffusionPipeline

    from encoder_shrink.loading import from_pretrained_or_fail

    folder = Path(path) if path is not None else BUNDLED_SD_TEACHER
    if not (folder / "model_index.json").is_file():
        raise InputNotFoundError(
            f"{folder} holds no toy SD teacher; re-create it with python -m encoder_shrink.toy.train_sd_teacher "
            f"--output {folder}."
        )
    pipe = from_pretrained_or_fail(StableDiffusionPipeline, folder, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False, **kwargs)  # safetensors only
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate_sd(pipe, prompts: list[str | ToyPrompt], seeds: list[int], num_inference_steps: int = SD_STEPS,
                guidance_scale: float = SD_GUIDANCE_SCALE, batch_size: int = 32) -> np.ndarray:
    r"""
    Images (`uint8`, N x 32 x 32 x 3) of `prompts` drawn by a toy SD pipeline (DDIM, CFG), one seed per prompt.

    Example:

    ```python
    >>> generate_sd(load_toy_sd_teacher(), ["a blue square"], seeds=[0]).shape  # doctest: +SKIP
    (1, 32, 32, 3)
    ```
    """
    from encoder_shrink.evaluation import generate_images

    texts = [p.text if isinstance(p, ToyPrompt) else p for p in prompts]
    return generate_images(pipe, texts, seeds, num_inference_steps, IMAGE_SIZE, batch_size=batch_size,
                           guidance_scale=guidance_scale)


__all__ = ["BUNDLED_SD_TEACHER", "SD_GUIDANCE_SCALE", "SD_STEPS", "generate_sd", "load_toy_sd_teacher",
           "sd_scheduler_config", "toy_sd_components"]
