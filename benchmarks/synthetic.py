"""Real-architecture T5 encoders and every registered family's published pipeline with random weights, no downloads."""

from __future__ import annotations

import logging
import math

import torch

from encoder_shrink.errors import UnknownNameError

logger = logging.getLogger(__name__)

# The encoder halves of the published T5 v1.1 checkpoints (google/t5-v1_1-*; FLAN-T5 shares them): gated-GELU feed
# forward, 32 128-token vocabulary, 64-wide heads. T5-XXL is the encoder FLUX, SD3 and PixArt ship. The UMT5 ones
# (google/umt5-*: a 256 384-token vocabulary, a position bias in every layer) are Wan's and SkyReels-V2's encoder and
# the students of UMT5 families; pile-t5-xl (EleutherAI, 32 128 tokens) is AuraFlow's.
T5_CONFIGS = {
    "t5-xxl": {"d_model": 4096, "d_ff": 10240, "num_layers": 24, "num_heads": 64},
    "t5-xl": {"d_model": 2048, "d_ff": 5120, "num_layers": 24, "num_heads": 32},
    "t5-large": {"d_model": 1024, "d_ff": 2816, "num_layers": 24, "num_heads": 16},
    "t5-base": {"d_model": 768, "d_ff": 2048, "num_layers": 12, "num_heads": 12},
    "t5-small": {"d_model": 512, "d_ff": 1024, "num_layers": 8, "num_heads": 6},
    "umt5-xxl": {"d_model": 4096, "d_ff": 10240, "num_layers": 24, "num_heads": 64, "vocab_size": 256384,
                 "kind": "umt5"},
    "umt5-base": {"d_model": 768, "d_ff": 2048, "num_layers": 12, "num_heads": 12, "vocab_size": 256384,
                  "kind": "umt5"},
    "pile-t5-xl": {"d_model": 2048, "d_ff": 5120, "num_layers": 24, "num_heads": 32, "kind": "umt5"},
    "pile-t5-base": {"d_model": 768, "d_ff": 2048, "num_layers": 12, "num_heads": 12, "kind": "umt5"},
}


def t5_config(name: str):
    """
    The config of a published T5-family encoder size: a `T5Config` (`t5-xxl` ... `t5-small`) or a `UMT5Config`
    (`umt5-xxl`, `umt5-base`, `pile-t5-xl`, `pile-t5-base`).
    """
    from transformers import T5Config, UMT5Config

    if name not in T5_CONFIGS:
        raise UnknownNameError(f"Unknown synthetic T5 {name!r}; choose one of {', '.join(T5_CONFIGS)}.")
    fields = {"vocab_size": 32128, **T5_CONFIGS[name]}
    config_class = UMT5Config if fields.pop("kind", "t5") == "umt5" else T5Config
    return config_class(d_kv=64, feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False, **fields)


def _materialize(
    module: torch.nn.Module, dtype: torch.dtype, device: str | torch.device, seed: int
) -> torch.nn.Module:
    """
    Give every parameter left on the meta device random values, directly in `dtype` on `device`: weights
    N(0, 1/fan_in) so activations stay O(1) through dozens of layers (no NaN, no denormals to slow a CPU down),
    norm scales 1, biases 0. Buffers (position ids, sin-cos tables) were built for real and are only moved.
    """
    if str(device) == "meta":  # architecture only: parameter counts and shapes, nothing allocated
        if hasattr(module, "tie_weights"):
            module.tie_weights()
        return module.eval()
    generator = torch.Generator(device="cpu").manual_seed(seed)
    for submodule in module.modules():
        for name, parameter in list(submodule._parameters.items()):
            if parameter is None or not parameter.is_meta:
                continue
            value = torch.empty(parameter.shape, dtype=dtype, device=device)
            if parameter.dim() == 1:
                value.fill_(1.0 if name == "weight" else 0.0)  # 1-D weights are norm scales; biases start at 0
            else:
                fan_in = math.prod(parameter.shape[1:])
                value.copy_(torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
                            .mul_(fan_in ** -0.5).to(dtype))
            submodule._parameters[name] = torch.nn.Parameter(value, requires_grad=False)
    if hasattr(module, "_init_weights"):
        # transformers' own per-layer init where the model has one: T5 does not scale attention scores, so its query
        # weights must start small (std (d_model * d_kv)^-0.5) or attention turns one-hot and numerics degrade.
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(seed)
            module.apply(module._init_weights)
    if hasattr(module, "tie_weights"):
        module.tie_weights()  # meta construction leaves T5's shared and encoder embeddings as two tensors
    return module.to(device=device, dtype=dtype).eval()


def _empty(build, buffers_too: bool = False):
    """`build()` with its parameters on the meta device; its buffers too when nothing will run (`buffers_too`)."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=buffers_too):
        return build()


def synthetic_t5(name: str, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu", seed: int = 0):
    r"""
    A `T5EncoderModel` (`UMT5EncoderModel` for the UMT5 sizes) with the architecture of a published size and random
    weights, built on the meta device and materialised straight into `dtype` on `device` (T5-XXL: 4.76 B parameters,
    9.5 GB in bf16, no fp32 copy).

    Example:

    ```python
    >>> from encoder_shrink.benchmarks.synthetic import synthetic_t5
    >>> synthetic_t5("t5-base").num_parameters()  # doctest: +SKIP
    109628544
    ```
    """
    from transformers import T5EncoderModel, UMT5EncoderModel

    config = t5_config(name)
    encoder_class = UMT5EncoderModel if config.model_type == "umt5" else T5EncoderModel
    return _materialize(_empty(lambda: encoder_class(config), str(device) == "meta"), dtype, device, seed)


def synthetic_student(base: str = "t5-base", teacher_dim: int = 4096, max_sequence_length: int = 512,
                      dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", seed: int = 1):
    r"""
    A student with the architecture of the recipes' students (a T5 v1.1 size, or a UMT5 size for a
    [`ShrunkUMT5EncoderModel`], plus the projector to the teacher's width) and random weights.

    Example:

    ```python
    >>> synthetic_student("t5-base", teacher_dim=4096).config.d_model  # doctest: +SKIP
    768
    ```
    """
    from encoder_shrink.student import ShrunkT5EncoderModel, ShrunkUMT5EncoderModel

    config = t5_config(base)
    student_class = ShrunkUMT5EncoderModel if config.model_type == "umt5" else ShrunkT5EncoderModel
    student = _empty(lambda: student_class.from_t5(config, teacher_dim=teacher_dim,
                                                   max_sequence_length=max_sequence_length), str(device) == "meta")
    return _materialize(student, dtype, device, seed)


class Builder:
    r"""
    What a family's `synthetic_components` builds with: modules constructed on the meta device (`empty`), then given
    random values straight in `dtype` on `device` (`real`; left on meta when `device="meta"`), the published T5
    encoders, CLIP text encoders, VAEs and in-memory tokenizers (the vocabularies cannot be downloaded).

    Example:

    ```python
    >>> build = Builder(torch.bfloat16, "meta", seed=0)
    >>> build.t5("t5-xxl").num_parameters()
    4762310656
    ```
    """

    def __init__(self, dtype: torch.dtype, device: str | torch.device, seed: int):
        self.dtype, self.device, self.seed = dtype, device, seed

    def empty(self, build):
        """`build()` with its parameters on the meta device (its buffers too when the builder's device is meta)."""
        return _empty(build, str(self.device) == "meta")

    def real(self, module: torch.nn.Module, offset: int) -> torch.nn.Module:
        """`module` with random weights in the builder's dtype and device, seeded by `seed + offset`."""
        return _materialize(module, self.dtype, self.device, self.seed + offset)

    def t5(self, name: str = "t5-xxl"):
        return synthetic_t5(name, self.dtype, self.device, self.seed)

    @staticmethod
    def clip_text(hidden: int, layers: int, heads: int, intermediate: int, projection: int, act: str,
                  with_projection: bool, positions: int = 77):
        """A CLIP text encoder of the given size on the meta device (pass it to `real`)."""
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        config = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=intermediate,
                                num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=positions,
                                projection_dim=projection, hidden_act=act)
        cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
        return _empty(lambda: cls(config))

    @staticmethod
    def vae(latent_channels: int, **kwargs):
        """The 4-block (8x downsampling) `AutoencoderKL` of every one of these pipelines, on the meta device."""
        from diffusers import AutoencoderKL

        blocks = 4
        return _empty(lambda: AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks,
            layers_per_block=2, norm_num_groups=32, sample_size=1024, **kwargs))

    @staticmethod
    def clip_tokenizer(model_max_length: int = 77):
        from encoder_shrink.tiny import tiny_clip_tokenizer

        return tiny_clip_tokenizer(model_max_length)

    @staticmethod
    def llm_tokenizer(model_max_length: int = 512, chat_template: str | None = None):
        """An in-memory LLM tokenizer whose ids stay inside any LLM's vocabulary."""
        from encoder_shrink.tiny import tiny_llm_tokenizer

        return tiny_llm_tokenizer(model_max_length, chat_template)

    @staticmethod
    def t5_tokenizer(model_max_length: int = 512):
        """An in-memory T5 tokenizer whose ids stay inside T5's vocabulary."""
        from encoder_shrink.tiny import tiny_t5_tokenizer

        return tiny_t5_tokenizer(model_max_length)


def synthetic_pipeline(name: str, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu",
                       text_encoder=None, seed: int = 0):
    r"""
    The real pipeline of the registered family `name` (its `synthetic` spec: FLUX.1-dev, SD3-medium, PixArt-Sigma,
    ...) whose components have the published architectures and random weights. `text_encoder` replaces the teacher
    in the family's slot (a student), so the teacher is never built. `device="meta"` builds the architecture only.

    Example:

    ```python
    >>> pipe = synthetic_pipeline("flux-dev", text_encoder=student, device="cuda")  # doctest: +SKIP
    ```
    """
    from encoder_shrink.pipelines import get_adapter, synthetic_families

    if name not in synthetic_families():
        raise UnknownNameError(
            f"Unknown synthetic pipeline {name!r}; choose one of {', '.join(synthetic_families())}."
        )
    adapter = get_adapter(name)
    components = adapter.synthetic_components(Builder(dtype, device, seed), text_encoder=text_encoder)
    return adapter.diffusers_pipeline_class()(**components)


# Stable Diffusion's published UNets and text encoders (the TiUE teachers): SD 1.5 (CLIP ViT-L/14) and SD 2.1
# (OpenCLIP ViT-H/14, its penultimate layer: 23 of 24 layers, as the released text_encoder holds).
SD_CONFIGS = {
    "sd15": {"cross_attention_dim": 768, "attention_head_dim": 8, "use_linear_projection": False,
             "text": (768, 12, 12, 3072, 768, "quick_gelu")},
    "sd21": {"cross_attention_dim": 1024, "attention_head_dim": (5, 10, 20, 20), "use_linear_projection": True,
             "text": (1024, 23, 16, 4096, 512, "gelu")},
}


def synthetic_sd_pipeline(name: str, dtype: torch.dtype = torch.float16, device: str | torch.device = "cpu",
                          seed: int = 0):
    r"""
    A `StableDiffusionPipeline` with the published architecture of SD 1.5 or SD 2.1 (`SD_CONFIGS`) and random
    weights: the UNet (865 M), the CLIP text encoder and the VAE. `device="meta"` builds the architecture only.

    Example:

    ```python
    >>> synthetic_sd_pipeline("sd21", device="meta").unet.num_parameters()  # doctest: +SKIP
    865910724
    ```
    """
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    if name not in SD_CONFIGS:
        raise UnknownNameError(f"Unknown synthetic SD pipeline {name!r}; choose one of {', '.join(SD_CONFIGS)}.")
    spec = dict(SD_CONFIGS[name])
    hidden, layers, heads, intermediate, projection, act = spec.pop("text")
    build = Builder(dtype, device, seed)
    unet = build.empty(lambda: UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, **spec))
    text = Builder.clip_text(hidden, layers, heads, intermediate, projection, act, with_projection=False)
    return StableDiffusionPipeline(
        vae=build.real(Builder.vae(4), 1), text_encoder=build.real(text, 2), tokenizer=Builder.clip_tokenizer(),
        unet=build.real(unet, 3),
        scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                prediction_type="v_prediction" if name == "sd21" else "epsilon"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def synthetic_names() -> list[str]:
    """Everything `--synthetic` accepts: the T5 encoder sizes, then the families with a synthetic pipeline."""
    from encoder_shrink.pipelines import synthetic_families

    return list(T5_CONFIGS) + synthetic_families()


__all__ = ["SD_CONFIGS", "T5_CONFIGS", "Builder", "synthetic_names", "synthetic_pipeline", "synthetic_sd_pipeline",
           "synthetic_student", "synthetic_t5", "t5_config"]
