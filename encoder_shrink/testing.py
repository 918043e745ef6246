"""Offline builders of tiny FLUX, SD3 and PixArt pipelines and students, for tests, demos and benchmarks."""

from __future__ import annotations

import string
from pathlib import Path

import torch

from encoder_shrink.pipelines import adapter_for
from encoder_shrink.student import ShrunkT5EncoderModel

TINY_FAMILIES = ("flux-dev", "flux-schnell", "sd3", "pixart-alpha", "pixart-sigma")

# Whole-word pieces for the words the test prompts use most; anything else falls back to single characters,
# so every prompt (T2I-CompBench, CommonText) tokenizes without <unk> for ASCII text.
_WORDS = (
    "a an the of on in with and left right above below near next to behind front top bottom side "
    "red green blue yellow black white orange purple pink brown gray "
    "circle square triangle star cube sphere cat dog bird car tree house sign book cup table chair "
    "one two three four five big small wooden metallic plastic fluffy says word words text banner "
    "holding carrying showing man woman child person photo of"
).split()
_CHARS = string.ascii_letters + string.digits + string.punctuation
T5_TINY_DIM = 32
CLIP_TINY_DIM = 16


def tiny_t5_tokenizer(model_max_length: int = 512):
    """
    A T5 (Unigram) tokenizer built in memory: `<pad>`=0, `</s>`=1, `<unk>`=2, then whole words and characters.

    Example:

    ```python
    >>> tiny_t5_tokenizer()("a red circle").input_ids
    [4, 24, 35, 1]
    ```
    """
    from transformers import T5TokenizerFast

    # Whole words score higher than their spelling out, so Unigram prefers them; a piece listed twice (the word "a"
    # and the character "a" after a space) keeps its first, higher score.
    pieces = {"<pad>": 0.0, "</s>": 0.0, "<unk>": 0.0, "\u2581": -3.0}
    for piece, score in [("\u2581" + word, -2.0) for word in _WORDS] + [(char, -5.0) for char in _CHARS] + [
        ("\u2581" + char, -4.0) for char in _CHARS
    ]:
        pieces.setdefault(piece, score)
    return T5TokenizerFast(vocab=list(pieces.items()), extra_ids=0, model_max_length=model_max_length)


def tiny_clip_tokenizer(model_max_length: int = 77):
    """A character-level CLIP tokenizer built in memory (BPE without merges), with CLIP's 77-token limit."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in _CHARS:
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def tiny_t5_encoder(d_model: int = T5_TINY_DIM, num_layers: int = 2, vocab_size: int | None = None, seed: int = 0):
    """A random `T5EncoderModel` (T5 v1.1 style: gated-GELU) sized for the tiny tokenizer."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size or len(tiny_t5_tokenizer()),
        d_model=d_model,
        d_kv=8,
        d_ff=2 * d_model,
        num_layers=num_layers,
        num_heads=max(1, d_model // 8),
        feed_forward_proj="gated-gelu",
        # Small relative-position tables keep the model tiny; 32 buckets cover 512 tokens as in real T5.
        relative_attention_num_buckets=32,
    )
    torch.manual_seed(seed)
    return T5EncoderModel(config).eval()


def tiny_student(teacher_dim: int = T5_TINY_DIM, d_model: int = 16, num_layers: int = 1, seed: int = 1, **config):
    """A random student: a T5 narrower than the tiny teacher, projected to `teacher_dim`."""
    torch.manual_seed(seed)
    t5 = tiny_t5_encoder(d_model=d_model, num_layers=num_layers, seed=seed)
    return ShrunkT5EncoderModel.from_t5(t5, teacher_dim=teacher_dim, **config).eval()


def _clip_text_config():
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tiny_clip_tokenizer()),
        hidden_size=CLIP_TINY_DIM,
        intermediate_size=2 * CLIP_TINY_DIM,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=CLIP_TINY_DIM,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_act="gelu",
    )


def _tiny_vae(latent_channels: int, block_out_channels: tuple[int, ...] = (8,)):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(block_out_channels),
        up_block_types=("UpDecoderBlock2D",) * len(block_out_channels),
        block_out_channels=block_out_channels,
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=32,
        # FLUX.1's VAE shift/scale, so latents are normalised as in the real pipelines.
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )


def tiny_pipeline_components(family: str, seed: int = 0) -> dict:
    """
    Random, tiny components of a pipeline of `family` (one of `TINY_FAMILIES`), keyed as the pipeline's
    constructor expects them.
    """
    from diffusers import (
        DDIMScheduler,
        FlowMatchEulerDiscreteScheduler,
        FluxTransformer2DModel,
        PixArtTransformer2DModel,
        SD3Transformer2DModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if family not in TINY_FAMILIES:
        raise ValueError(f"Unknown tiny pipeline family {family!r}; choose one of {', '.join(TINY_FAMILIES)}.")
    torch.manual_seed(seed)
    if family.startswith("flux"):
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=4,  # 1 latent channel packed 2x2, as FluxPipeline packs latents
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=T5_TINY_DIM,
            pooled_projection_dim=CLIP_TINY_DIM,
            guidance_embeds=family == "flux-dev",
            axes_dims_rope=(4, 4, 8),  # sums to attention_head_dim
        )
        return {
            "transformer": transformer,
            "text_encoder": CLIPTextModel(_clip_text_config()).eval(),
            "text_encoder_2": tiny_t5_encoder(seed=seed),
            "tokenizer": tiny_clip_tokenizer(),
            "tokenizer_2": tiny_t5_tokenizer(512),
            "vae": _tiny_vae(latent_channels=1),
            "scheduler": FlowMatchEulerDiscreteScheduler(),
        }
    if family == "sd3":
        transformer = SD3Transformer2DModel(
            sample_size=32,
            patch_size=1,
            in_channels=4,
            num_layers=1,
            attention_head_dim=8,
            num_attention_heads=4,
            caption_projection_dim=32,
            joint_attention_dim=T5_TINY_DIM,  # CLIP-L + CLIP-G (2 x 16) are padded to the T5 width
            pooled_projection_dim=2 * CLIP_TINY_DIM,  # pooled CLIP-L and CLIP-G, concatenated
            out_channels=4,
        )
        torch.manual_seed(seed + 1)
        clip_l = CLIPTextModelWithProjection(_clip_text_config()).eval()
        clip_g = CLIPTextModelWithProjection(_clip_text_config()).eval()
        return {
            "transformer": transformer,
            "text_encoder": clip_l,
            "text_encoder_2": clip_g,
            "text_encoder_3": tiny_t5_encoder(seed=seed),
            "tokenizer": tiny_clip_tokenizer(),
            "tokenizer_2": tiny_clip_tokenizer(),
            "tokenizer_3": tiny_t5_tokenizer(256),
            "vae": _tiny_vae(latent_channels=4),
            "scheduler": FlowMatchEulerDiscreteScheduler(),
        }
    transformer = PixArtTransformer2DModel(
        sample_size=8,
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=3,
        caption_channels=T5_TINY_DIM,
        in_channels=4,
        cross_attention_dim=24,
        out_channels=8,  # learned sigma: the pipeline keeps the first 4 channels
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    return {
        "transformer": transformer,
        "text_encoder": tiny_t5_encoder(seed=seed),
        "tokenizer": tiny_t5_tokenizer(300 if family == "pixart-sigma" else 120),
        "vae": _tiny_vae(latent_channels=4),
        "scheduler": DDIMScheduler(),
    }


def tiny_pipeline_class(family: str):
    """The diffusers pipeline class of a tiny `family`."""
    import diffusers

    names = {
        "flux-dev": "FluxPipeline",
        "flux-schnell": "FluxPipeline",
        "sd3": "StableDiffusion3Pipeline",
        "pixart-alpha": "PixArtAlphaPipeline",
        "pixart-sigma": "PixArtSigmaPipeline",
    }
    if family not in names:
        raise ValueError(f"Unknown tiny pipeline family {family!r}; choose one of {', '.join(TINY_FAMILIES)}.")
    return getattr(diffusers, names[family])


def save_tiny_pipeline(family: str, directory: str | Path, seed: int = 0) -> Path:
    """
    Build a tiny pipeline of `family` and save it to `directory` with `save_pretrained`, exactly as a model
    repository is laid out; return the folder.

    Example:

    ```python
    >>> path = save_tiny_pipeline("flux-dev", "/tmp/tiny-flux")  # doctest: +SKIP
    >>> pipe = FluxPipeline.from_pretrained(path)  # doctest: +SKIP
    ```
    """
    directory = Path(directory)
    pipe = tiny_pipeline_class(family)(**tiny_pipeline_components(family, seed=seed))
    pipe.save_pretrained(directory)
    return directory


def load_tiny_pipeline(family: str, directory: str | Path, seed: int = 0, **from_pretrained_kwargs):
    """
    Save a tiny pipeline of `family` to `directory` (if it is not there yet) and load it back with the pipeline
    class's own `from_pretrained`, as a user loads a downloaded model. Extra keyword arguments (e.g.
    `text_encoder_2=student`) go to `from_pretrained`.
    """
    directory = Path(directory)
    if not (directory / "model_index.json").is_file():
        save_tiny_pipeline(family, directory, seed=seed)
    return tiny_pipeline_class(family).from_pretrained(directory, **from_pretrained_kwargs)


def tiny_call_kwargs(pipe, num_inference_steps: int = 2, seed: int = 0) -> dict:
    """Keyword arguments for a fast, deterministic call of a tiny pipeline (small image, few steps)."""
    adapter = adapter_for(pipe)
    family = adapter.name
    kwargs = {
        "num_inference_steps": num_inference_steps,
        "max_sequence_length": adapter.max_sequence_length,  # the family's deployment length (schnell: 256)
        "generator": torch.Generator("cpu").manual_seed(seed),
        "output_type": "np",
    }
    if family.startswith("pixart"):
        # Resolution binning only knows the real sample sizes (256-2048 px); the tiny denoiser works on 8x8 latents.
        # clean_caption needs beautifulsoup/ftfy, which the tiny prompts do not need.
        kwargs.update(height=8, width=8, use_resolution_binning=False, clean_caption=False)
    else:
        kwargs.update(height=16, width=16)
    return kwargs
