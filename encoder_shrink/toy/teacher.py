"""The toy world's teacher: a real `FluxPipeline` (CLIP, a "large" T5, transformer, VAE) sized for 2 CPU cores."""

from __future__ import annotations

import logging
import string
from pathlib import Path

import numpy as np
import torch

from encoder_shrink.errors import InputNotFoundError
from encoder_shrink.toy.world import IMAGE_SIZE, ToyPrompt, vocabulary

logger = logging.getLogger(__name__)

# The trained teacher shipped with the package (python -m encoder_shrink.toy.train_teacher re-creates it).
BUNDLED_TEACHER = Path(__file__).parent / "teacher"
# Longest spelled prompt: "a red triangle left of a purple square" is 9 tokens, "a sign that says 'cat'" 10; + </s>.
MAX_SEQUENCE_LENGTH = 16
# The teacher's T5 is the "T5-XXL" of this world: 4 layers x 128 wide. Students are 64 wide and 2 deep (>= 4x smaller).
TEACHER_T5 = {"d_model": 128, "d_kv": 32, "num_heads": 4, "d_ff": 512, "num_layers": 4}
STUDENT_T5 = {"d_model": 64, "d_kv": 16, "num_heads": 4, "d_ff": 256, "num_layers": 2}
# Euler steps at generation: the teacher is trained on the whole [0, 1] noise range; 12 steps draw sharp shapes.
NUM_INFERENCE_STEPS = 12


def toy_t5_tokenizer():
    r"""
    The world's T5 (Unigram) tokenizer, built in memory: every prompt word is one piece, and a quoted word is spelled
    letter by letter (its letters exist only as non-initial pieces), so words never seen in training are still known
    tokens.

    Example:

    ```python
    >>> tok = toy_t5_tokenizer()
    >>> tok.convert_ids_to_tokens(tok("a sign that says 'cat'").input_ids)
    ['▁a', '▁sign', '▁that', '▁says', "▁'", 'c', 'a', 't', "'", '</s>']
    ```
    """
    from transformers import T5TokenizerFast

    words = [w for w in vocabulary() if w != "'"]
    pieces = {"<pad>": 0.0, "</s>": 0.0, "<unk>": 0.0, "\u2581'": -2.0, "'": -2.0}
    pieces.update({"\u2581" + word: -2.0 for word in words if len(word) > 1 or word == "a"})
    pieces.update({letter: -3.0 for letter in string.ascii_lowercase})
    return T5TokenizerFast(vocab=list(pieces.items()), extra_ids=0, model_max_length=MAX_SEQUENCE_LENGTH)


def toy_clip_tokenizer():
    """CLIP's tokenizer slot: the character-level in-memory CLIP tokenizer of `encoder_shrink.tiny`."""
    from encoder_shrink.tiny import tiny_clip_tokenizer

    return tiny_clip_tokenizer(77)


def toy_t5_config(size: dict, vocab_size: int):
    from transformers import T5Config

    # No dropout: the teacher is trained from scratch on a small world and must be deterministic at inference.
    return T5Config(vocab_size=vocab_size, feed_forward_proj="gated-gelu", dropout_rate=0.0, is_encoder_decoder=False,
                    use_cache=False, relative_attention_num_buckets=16, relative_attention_max_distance=32, **size)


def toy_pipeline_components(seed: int = 0) -> dict:
    r"""
    Randomly initialised components of the toy `FluxPipeline`: what `train_teacher` starts from.

    Example:

    ```python
    >>> pipe = FluxPipeline(**toy_pipeline_components())  # doctest: +SKIP
    ```
    """
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTextModel, T5EncoderModel

    from encoder_shrink.tiny import tiny_clip_text_config

    torch.manual_seed(seed)
    t5_tokenizer = toy_t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=4, attention_head_dim=64, num_attention_heads=2,
        joint_attention_dim=TEACHER_T5["d_model"], pooled_projection_dim=16, guidance_embeds=False,
        # FLUX's split of the head over (text, row, column) scaled to 64: image tokens sit on an 8 x 8 grid, and RoPE
        # (theta 10000) over 28 dims has four frequencies that turn less than once across it, so "left"/"above" can be
        # read off the rotation; 12-dim axes had one.
        axes_dims_rope=(8, 28, 28),
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8,
        sample_size=IMAGE_SIZE, use_quant_conv=False, use_post_quant_conv=False,  # 2x downsampling: 16x16x4 latents
        scaling_factor=1.0, shift_factor=0.0,  # set from the trained VAE's latent statistics
    )
    return {
        # No resolution-dependent shift: every image is 32 px.
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False),
        "vae": vae,
        "text_encoder": CLIPTextModel(tiny_clip_text_config()).eval(),
        "tokenizer": toy_clip_tokenizer(),
        "text_encoder_2": T5EncoderModel(toy_t5_config(TEACHER_T5, len(t5_tokenizer))).eval(),
        "tokenizer_2": t5_tokenizer,
        "transformer": transformer,
    }


def load_toy_teacher(path: str | Path | None = None, **kwargs):
    r"""
    The trained toy teacher (`FluxPipeline`), from the package or from `path`.

    Example:

    ```python
    >>> pipe = load_toy_teacher()
    >>> images = generate(pipe, ["two red circles"], seeds=[0])  # doctest: +SKIP
    ```
    """
    from diffusers import FluxPipeline

    from encoder_shrink.loading import from_pretrained_or_fail

    folder = Path(path) if path is not None else BUNDLED_TEACHER
    if not (folder / "model_index.json").is_file():
        raise InputNotFoundError(
            f"{folder} holds no toy teacher; re-create it with python -m encoder_shrink.toy.train_teacher "
            f"--output {folder}."
        )
    pipe = from_pretrained_or_fail(FluxPipeline, folder, **kwargs)  # safetensors only, as every pipeline load
    pipe.set_progress_bar_config(disable=True)
    return pipe


def student_t5_config():
    """The T5 of the toy students (64 wide, 2 layers), sized for the toy tokenizer."""
    return toy_t5_config(STUDENT_T5, len(toy_t5_tokenizer()))


def generate(pipe, prompts: list[str | ToyPrompt], seeds: list[int], num_inference_steps: int = NUM_INFERENCE_STEPS,
             batch_size: int = 32) -> np.ndarray:
    r"""
    Images (`uint8`, N x 32 x 32 x 3) of `prompts` drawn by a toy pipeline, one seed per prompt.

    Example:

    ```python
    >>> generate(load_toy_teacher(), ["a blue square"], seeds=[0]).shape  # doctest: +SKIP
    (1, 32, 32, 3)
    ```
    """
    from encoder_shrink.evaluation import generate_images

    texts = [p.text if isinstance(p, ToyPrompt) else p for p in prompts]
    return generate_images(pipe, texts, seeds, num_inference_steps, IMAGE_SIZE, MAX_SEQUENCE_LENGTH,
                           batch_size=batch_size, guidance_scale=1.0)


__all__ = ["BUNDLED_TEACHER", "MAX_SEQUENCE_LENGTH", "NUM_INFERENCE_STEPS", "generate", "load_toy_teacher",
           "student_t5_config", "toy_clip_tokenizer", "toy_pipeline_components", "toy_t5_tokenizer"]
