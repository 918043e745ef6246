"""Real-architecture T5 encoders and FLUX-dev / SD3 / PixArt pipelines with random weights, built without downloads."""

from __future__ import annotations

import logging
import math

import torch

logger = logging.getLogger(__name__)

# The encoder halves of the published T5 v1.1 checkpoints (google/t5-v1_1-*; FLAN-T5 shares them): gated-GELU feed
# forward, 32 128-token vocabulary, 64-wide heads. T5-XXL is the encoder FLUX, SD3 and PixArt ship.
T5_CONFIGS = {
    "t5-xxl": {"d_model": 4096, "d_ff": 10240, "num_layers": 24, "num_heads": 64},
    "t5-xl": {"d_model": 2048, "d_ff": 5120, "num_layers": 24, "num_heads": 32},
    "t5-large": {"d_model": 1024, "d_ff": 2816, "num_layers": 24, "num_heads": 16},
    "t5-base": {"d_model": 768, "d_ff": 2048, "num_layers": 12, "num_heads": 12},
    "t5-small": {"d_model": 512, "d_ff": 1024, "num_layers": 8, "num_heads": 6},
}
PIPELINES = ("flux-dev", "sd3", "pixart")
SYNTHETIC = tuple(T5_CONFIGS) + PIPELINES


def t5_config(name: str):
    """The `T5Config` of a published T5 v1.1 encoder size (`t5-xxl`, `t5-xl`, `t5-large`, `t5-base`, `t5-small`)."""
    from transformers import T5Config

    if name not in T5_CONFIGS:
        raise ValueError(f"Unknown synthetic T5 {name!r}; choose one of {', '.join(T5_CONFIGS)}.")
    return T5Config(vocab_size=32128, d_kv=64, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
                    use_cache=False, **T5_CONFIGS[name])


def _materialize(module: torch.nn.Module, dtype: torch.dtype, device: str | torch.device, seed: int) -> torch.nn.Module:
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


def _empty(build):
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return build()


def synthetic_t5(name: str, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu", seed: int = 0):
    r"""
    A `T5EncoderModel` with the architecture of a published T5 size and random weights, built on the meta device and
    materialised straight into `dtype` on `device` (T5-XXL: 4.76 B parameters, 9.5 GB in bf16, no fp32 copy).

    Example:

    ```python
    >>> from encoder_shrink.benchmarks.synthetic import synthetic_t5
    >>> synthetic_t5("t5-base").num_parameters()  # doctest: +SKIP
    109628544
    ```
    """
    from transformers import T5EncoderModel

    config = t5_config(name)
    return _materialize(_empty(lambda: T5EncoderModel(config)), dtype, device, seed)


def synthetic_student(base: str = "t5-base", teacher_dim: int = 4096, max_sequence_length: int = 512,
                      dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", seed: int = 1):
    r"""
    A [`ShrunkT5EncoderModel`] with the architecture of the recipes' students (a T5 v1.1 size plus the projector to
    the teacher's width) and random weights.

    Example:

    ```python
    >>> synthetic_student("t5-base", teacher_dim=4096).config.d_model  # doctest: +SKIP
    768
    ```
    """
    from encoder_shrink.student import ShrunkT5EncoderModel

    config = t5_config(base)
    student = _empty(lambda: ShrunkT5EncoderModel.from_t5(config, teacher_dim=teacher_dim,
                                                          max_sequence_length=max_sequence_length))
    return _materialize(student, dtype, device, seed)


def _clip_text(hidden: int, layers: int, heads: int, intermediate: int, projection: int, act: str, with_projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=intermediate,
                            num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                            projection_dim=projection, hidden_act=act)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return _empty(lambda: cls(config))


def _vae(latent_channels: int, **kwargs):
    from diffusers import AutoencoderKL

    blocks = 4  # 8x downsampling, as every one of these pipelines
    return _empty(lambda: AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks,
        layers_per_block=2, norm_num_groups=32, sample_size=1024, **kwargs))


def _tokenizers():
    """In-memory tokenizers (the vocabularies cannot be downloaded); ids stay inside the real vocabularies."""
    from encoder_shrink.testing import tiny_clip_tokenizer, tiny_t5_tokenizer

    return tiny_clip_tokenizer(77), tiny_t5_tokenizer(512)


def synthetic_pipeline(name: str, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu",
                       text_encoder=None, seed: int = 0):
    r"""
    A real `FluxPipeline` (FLUX.1-dev), `StableDiffusion3Pipeline` (SD3-medium) or `PixArtSigmaPipeline` (PixArt-Σ
    1024) whose components have the published architectures and random weights. `text_encoder` replaces the T5-XXL
    in the pipeline's T5 slot (a student), so the teacher is never built.

    Example:

    ```python
    >>> pipe = synthetic_pipeline("flux-dev", text_encoder=student, device="cuda")  # doctest: +SKIP
    ```
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    if name not in PIPELINES:
        raise ValueError(f"Unknown synthetic pipeline {name!r}; choose one of {', '.join(PIPELINES)}.")
    clip_tokenizer, t5_tokenizer = _tokenizers()
    t5 = text_encoder if text_encoder is not None else synthetic_t5("t5-xxl", dtype, device, seed)

    def real(module, offset):
        return _materialize(module, dtype, device, seed + offset)

    if name == "flux-dev":
        from diffusers import FluxPipeline, FluxTransformer2DModel

        transformer = _empty(lambda: FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
            axes_dims_rope=(16, 56, 56)))
        vae = _vae(16, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False)
        clip = _clip_text(768, 12, 12, 3072, 768, "quick_gelu", with_projection=False)
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
        return FluxPipeline(scheduler=scheduler, vae=real(vae, 1), text_encoder=real(clip, 2), tokenizer=clip_tokenizer,
                            text_encoder_2=t5, tokenizer_2=t5_tokenizer, transformer=real(transformer, 3))
    if name == "sd3":
        from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

        transformer = _empty(lambda: SD3Transformer2DModel(
            sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
            joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
            pos_embed_max_size=192))
        vae = _vae(16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False)
        clip_l = _clip_text(768, 12, 12, 3072, 768, "quick_gelu", with_projection=True)
        clip_g = _clip_text(1280, 32, 20, 5120, 1280, "gelu", with_projection=True)
        return StableDiffusion3Pipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=real(vae, 1), text_encoder=real(clip_l, 2),
            tokenizer=clip_tokenizer, text_encoder_2=real(clip_g, 4), tokenizer_2=clip_tokenizer,
            text_encoder_3=t5, tokenizer_3=t5_tokenizer, transformer=real(transformer, 3))
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    transformer = _empty(lambda: PixArtTransformer2DModel(
        num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
        cross_attention_dim=1152, sample_size=128, patch_size=2, caption_channels=4096, interpolation_scale=2,
        use_additional_conditions=False, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6))
    vae = _vae(4, scaling_factor=0.13025)
    return PixArtSigmaPipeline(tokenizer=t5_tokenizer, text_encoder=t5, vae=real(vae, 1), transformer=real(transformer, 3),
                               scheduler=DPMSolverMultistepScheduler())


def t5_slot(name: str) -> str:
    """The component that holds T5-XXL in a synthetic pipeline."""
    return {"flux-dev": "text_encoder_2", "sd3": "text_encoder_3", "pixart": "text_encoder"}[name]


__all__ = ["PIPELINES", "SYNTHETIC", "T5_CONFIGS", "synthetic_pipeline", "synthetic_student", "synthetic_t5", "t5_config",
           "t5_slot"]
