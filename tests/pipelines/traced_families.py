"""Tiny offline pipelines of diffusers families no family file describes (served by the traced adapter)."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_utils import ModelMixin

from encoder_shrink import tiny
from encoder_shrink.pipelines.z_image import QWEN3_CHAT_TEMPLATE

# Qwen2's byte-level BPE chat markers, whole tokens as in the real vocabulary.
QWEN_SPECIALS = ("<|im_start|>", "<|im_end|>")
# Llama-3's chat header markers and the blank line after a header, whole tokens as in the real vocabulary.
LLAMA3_SPECIALS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "\n\n")
# The tiny LLM tokenizer's `<|end_of_text|>`, the end-of-text id of the tiny Qwen configs.
QWEN_EOS = 2
# Qwen2-VL's and Qwen2.5-VL's chat template for text turns (a default system turn when the conversation has none)
# and the generation prompt.
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _tokens(tokenizer, text: str) -> int:
    """How many tokens `text` is (no special tokens added)."""
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def build_flux2_klein(seed: int = 0, distilled: bool = False) -> tuple[Any, dict[str, Any]]:
    """
    FLUX.2 [klein] base 4B (black-forest-labs/FLUX.2-klein-base-4B; `distilled=True`: FLUX.2-klein-4B): Qwen3-4B
    (`Qwen3ForCausalLM`), hidden states 9, 18 and 27 of the chat-formatted prompt side by side. The base model runs
    CFG against an empty negative (the pipeline takes no `negative_prompt`); the distilled one runs no CFG.
    """
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = tiny.tiny_llm_tokenizer(512, chat_template=QWEN3_CHAT_TEMPLATE, spaced_words=True,
                                           special_tokens=(*QWEN_SPECIALS, "<think>", "</think>", "\n\n"),
                                           extra_words=("user", "assistant"), add_bos=False)
    hidden = 16
    torch.manual_seed(seed)
    # 28 layers, so the pipeline's default hidden_states[9], [18], [27] are all inner layers, as in Qwen3-4B (36).
    text_encoder = Qwen3ForCausalLM(Qwen3Config(
        hidden_size=hidden, intermediate_size=16, num_hidden_layers=28, num_attention_heads=2, num_key_value_heads=2,
        head_dim=8, vocab_size=len(tokenizer), max_position_embeddings=1024, tie_word_embeddings=True,
        pad_token_id=0, bos_token_id=None, eos_token_id=QWEN_EOS,
    )).eval()
    torch.manual_seed(seed)
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=3 * hidden, timestep_guidance_channels=256, axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=False,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKLFlux2(
        sample_size=32, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",), block_out_channels=(4,), layers_per_block=1, latent_channels=1,
        norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
    )
    pipe = Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                              tokenizer=tokenizer, transformer=transformer, is_distilled=distilled)
    return pipe, {"height": 16, "width": 16}


def build_flux2_klein_distilled(seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """FLUX.2 [klein] 4B (black-forest-labs/FLUX.2-klein-4B): the step-distilled [klein], no CFG."""
    return build_flux2_klein(seed, distilled=True)


def build_cogview4(seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """
    CogView4-6B (THUDM/CogView4-6B): GLM-4-9B (`GlmModel`), hidden_states[-2] of the prompt with no mask, padded on
    the left to the batch's longest (a multiple of 16); CFG over a negative prompt.
    """
    from diffusers import CogView4Pipeline, CogView4Transformer2DModel, FlowMatchEulerDiscreteScheduler
    from tokenizers import processors
    from transformers import GlmConfig, GlmModel

    # GLM-4's tokenizer starts every text with `[gMASK]<sop>` and pads on the left.
    tokenizer = tiny.tiny_llm_tokenizer(1024, special_tokens=("[gMASK]", "<sop>"), add_bos=False)
    prefix = [(token, tokenizer.convert_tokens_to_ids(token)) for token in ("[gMASK]", "<sop>")]
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="[gMASK] <sop> $A", pair="[gMASK] <sop> $A $B", special_tokens=prefix)
    tokenizer.padding_side = "left"
    hidden = 32
    torch.manual_seed(seed)
    text_encoder = GlmModel(GlmConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=1024, pad_token_id=0,
    )).eval()
    torch.manual_seed(seed)
    transformer = CogView4Transformer2DModel(
        patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2, out_channels=4,
        text_embed_dim=hidden, time_embed_dim=8, condition_dim=4,
    )
    torch.manual_seed(seed)
    vae = tiny.tiny_vae(latent_channels=4)
    # CogView4-6B's scheduler config: dynamic linear shift.
    scheduler = FlowMatchEulerDiscreteScheduler(base_shift=0.25, max_shift=0.75, base_image_seq_len=256,
                                                use_dynamic_shifting=True, time_shift_type="linear")
    pipe = CogView4Pipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                            scheduler=scheduler)
    return pipe, {"height": 16, "width": 16}


class PassThroughSafetyChecker(ModelMixin, ConfigMixin):
    """
    A stand-in for Cosmos' guardrail (`cosmos_guardrail.CosmosSafetyChecker`, gigabytes of models): every text is
    safe and frames pass unchanged, as the stand-in of diffusers' own Cosmos tests. The pipeline refuses to run
    without a checker.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("_device_tracker", torch.zeros(1), persistent=False)

    def check_text_safety(self, prompt: str) -> bool:
        return True

    def check_video_safety(self, frames: np.ndarray) -> np.ndarray:
        return frames


def _tiny_wan_vae(seed: int, z_dim: int = 4):
    """A tiny `AutoencoderKLWan` (2x spatial, no temporal compression) whose config states its real compression."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(base_dim=4, z_dim=z_dim, dim_mult=[1, 1], num_res_blocks=1, temperal_downsample=[False],
                            latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim, scale_factor_spatial=2,
                            scale_factor_temporal=1)


def build_cosmos2(seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """
    Cosmos-Predict2 2B Text2Image (nvidia/Cosmos-Predict2-2B-Text2Image): T5-11B (`T5EncoderModel`), the last hidden
    state at 512 tokens with padding positions zeroed; CFG over a negative prompt.
    """
    from diffusers import Cosmos2TextToImagePipeline, CosmosTransformer3DModel, FlowMatchEulerDiscreteScheduler

    torch.manual_seed(seed)
    transformer = CosmosTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=1, mlp_ratio=2,
        text_embed_dim=tiny.T5_TINY_DIM, adaln_lora_dim=4, max_size=(4, 16, 16), patch_size=(1, 2, 2),
        rope_scale=(1.0, 4.0, 4.0),
        # The checkpoint concatenates a (zero) padding-mask channel; resizing it needs torchvision.
        concat_padding_mask=False, extra_pos_embed_type=None,
    )
    pipe = Cosmos2TextToImagePipeline(
        text_encoder=tiny.tiny_t5_encoder(seed=seed), tokenizer=tiny.tiny_t5_tokenizer(),
        transformer=transformer, vae=_tiny_wan_vae(seed),
        scheduler=FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True),
        safety_checker=PassThroughSafetyChecker(),
    )
    return pipe, {"height": 16, "width": 16}


def _qwen2_5_vl_text_model(vocab_size: int, num_hidden_layers: int, seed: int, hidden: int = 16):
    """A tiny `Qwen2_5_VLTextModel` (the language half of Qwen2.5-VL, as HunyuanVideo-1.5 loads it)."""
    from transformers import Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel

    torch.manual_seed(seed)
    return Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(
        hidden_size=hidden, intermediate_size=16, num_hidden_layers=num_hidden_layers, num_attention_heads=2,
        num_key_value_heads=2, vocab_size=vocab_size, max_position_embeddings=2048, rope_theta=1e6,
        bos_token_id=None, eos_token_id=QWEN_EOS, pad_token_id=0,
        rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
    )).eval()


def _qwen2_5_vl(vocab_size: int, num_hidden_layers: int, seed: int, hidden: int = 16, version: str = "2.5"):
    """
    A tiny `Qwen2_5_VLForConditionalGeneration` (`version="2"`: `Qwen2VLForConditionalGeneration`); its image token
    ids lie past the tiny tokenizer's.
    """
    import transformers

    name = "Qwen2_5_VL" if version == "2.5" else "Qwen2VL"
    config_class = getattr(transformers, f"{name}Config")
    model_class = getattr(transformers, f"{name}ForConditionalGeneration")
    vision = {"depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": hidden}
    if version != "2.5":
        vision = {"depth": 1, "embed_dim": 16, "hidden_size": hidden, "num_heads": 2, "mlp_ratio": 1}
    config = config_class(
        text_config={
            "hidden_size": hidden, "intermediate_size": 16, "num_hidden_layers": num_hidden_layers,
            "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": vocab_size + 3,
            "max_position_embeddings": 2048, "rope_theta": 1e6, "bos_token_id": None, "eos_token_id": QWEN_EOS,
            "pad_token_id": 0,
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
        },
        vision_config=vision, vision_start_token_id=vocab_size, vision_end_token_id=vocab_size + 1,
        image_token_id=vocab_size + 2, video_token_id=vocab_size + 2,
    )
    torch.manual_seed(seed)
    return model_class(config).eval()


def build_hunyuan_video15(seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """
    HunyuanVideo-1.5 480p T2V (hunyuanvideo-community/HunyuanVideo-1.5-480p_t2v): Qwen2.5-VL-7B's language model
    (`Qwen2_5_VLTextModel`), hidden_states[-3] of the chat-formatted prompt without its system part, masked; plus
    ByT5-small (`T5EncoderModel`) for quoted glyph text. CFG over a negative prompt, through the pipeline's guider
    (its scale is the guider's, not a call argument).
    """
    from diffusers import (
        AutoencoderKLHunyuanVideo15,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideo15Pipeline,
        HunyuanVideo15Transformer3DModel,
    )
    from diffusers.guiders import ClassifierFreeGuidance
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    words = ("You are helpful assistant Describe the video by detailing following aspects main content and theme "
             "color shape size texture quantity text spatial relationships objects Actions events behaviors "
             "temporal physical movement changes background environment light style atmosphere camera angles "
             "movements transitions used system user").split()
    tokenizer = tiny.tiny_llm_tokenizer(2048, chat_template=QWEN2_5_VL_CHAT_TEMPLATE, extra_words=words,
                                           spaced_words=True, special_tokens=QWEN_SPECIALS, add_bos=False)
    hidden = 16
    # Three layers, so hidden_states[-3] is an inner layer's output as in the 28-layer Qwen2.5-VL-7B.
    text_encoder = _qwen2_5_vl_text_model(len(tokenizer), num_hidden_layers=3, seed=seed, hidden=hidden)
    # ByT5 smaller than the Qwen model, as ByT5-small (0.3 B) is beside Qwen2.5-VL-7B: the trace picks the largest.
    torch.manual_seed(seed)
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=384, d_model=16, d_kv=4, d_ff=16, num_layers=1, num_heads=2,
        feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
    )).eval()
    torch.manual_seed(seed)
    transformer = HunyuanVideo15Transformer3DModel(
        in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
        num_refiner_layers=1, mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=hidden,
        text_embed_2_dim=16, image_embed_dim=12, rope_axes_dim=(2, 2, 4), target_size=16,
        task_type="t2v",
    )
    torch.manual_seed(seed)
    vae = AutoencoderKLHunyuanVideo15(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8), layers_per_block=1,
        spatial_compression_ratio=4, temporal_compression_ratio=2, downsample_match_channel=False,
        upsample_match_channel=False,
    )
    pipe = HunyuanVideo15Pipeline(
        text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), text_encoder_2=text_encoder_2,
        tokenizer_2=ByT5Tokenizer(), guider=ClassifierFreeGuidance(guidance_scale=6.0),
    )
    # The pipeline drops the chat template's system part (108 tokens with Qwen2.5-VL's tokenizer): the tiny
    # tokenizer's count of the same text.
    system = tokenizer.apply_chat_template([{"role": "system", "content": pipe.system_message},
                                            {"role": "user", "content": ""}], tokenize=False)
    pipe.prompt_template_encode_start_idx = _tokens(tokenizer, system[: system.rindex("<|im_end|>")])
    return pipe, {"height": 16, "width": 16, "num_frames": 5}


def _kandinsky5_encoders(seed: int, words: str, hidden: int = 16) -> dict[str, Any]:
    """
    Kandinsky 5.0's text side: a tiny Qwen2.5-VL with the template's `words` whole, and a tiny CLIP. The checkpoints'
    `tokenizer` is Qwen2-VL's processor, called with text only (`images=None, videos=None`); a tokenizer takes that
    call as well (the processor's video half needs torchvision).
    """
    from transformers import CLIPTextModel

    tokenizer = tiny.tiny_llm_tokenizer(2048, chat_template=QWEN2_5_VL_CHAT_TEMPLATE, extra_words=words.split(),
                                           spaced_words=True, special_tokens=QWEN_SPECIALS, add_bos=False)
    text_encoder = _qwen2_5_vl(len(tokenizer), num_hidden_layers=2, seed=seed, hidden=hidden)
    torch.manual_seed(seed)
    text_encoder_2 = CLIPTextModel(tiny.tiny_clip_text_config()).eval()
    return {"text_encoder": text_encoder, "tokenizer": tokenizer, "text_encoder_2": text_encoder_2,
            "tokenizer_2": tiny.tiny_clip_tokenizer()}


def _kandinsky5_transformer(seed: int, visual_cond: bool, hidden: int = 16):
    from diffusers import Kandinsky5Transformer3DModel

    torch.manual_seed(seed)
    model = Kandinsky5Transformer3DModel(
        in_visual_dim=4, in_text_dim=hidden, in_text_dim2=tiny.CLIP_TINY_DIM, time_dim=16, out_visual_dim=4,
        patch_size=(1, 2, 2), model_dim=16, ff_dim=32, num_text_blocks=1, num_visual_blocks=1, axes_dims=(2, 2, 4),
        visual_cond=visual_cond, attention_type="regular",
    )
    # Its modulations start at zero (adaLN-zero), which gates every block shut: the prediction would not depend on
    # the text at all. A trained model's are not zero; 0.2 is the scale of the other tiny weights.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "modulation.out_layer" in name:
                parameter.copy_(0.2 * torch.randn(parameter.shape, generator=generator))
    return model


def _drop_template_system(pipe) -> None:
    """Set the pipeline's count of template tokens before the prompt to the tiny tokenizer's count of them."""
    template = pipe.prompt_template
    tokenizer = pipe.tokenizer
    pipe.prompt_template_encode_start_idx = _tokens(tokenizer, template[: template.index("{}")])


def build_kandinsky5_t2i(seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """
    Kandinsky 5.0 Image Lite (kandinskylab/Kandinsky-5.0-T2I-Lite-sft-Diffusers): Qwen2.5-VL-7B
    (`Qwen2_5_VLForConditionalGeneration`), its last hidden state without the template's 40 system tokens, unpadded
    (cumulative lengths); plus CLIP ViT-L (`CLIPTextModel`)'s pooled output. CFG over a negative prompt.
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, Kandinsky5T2IPipeline

    encoders = _kandinsky5_encoders(seed, "You are prompt engineer Describe the image by detailing color shape size "
                                          "texture quantity text spatial relationships objects and background system "
                                          "user")
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1, latent_channels=4,
        norm_num_groups=4, sample_size=32, scaling_factor=0.3611, shift_factor=0.1159,
    )
    pipe = Kandinsky5T2IPipeline(transformer=_kandinsky5_transformer(seed, visual_cond=False), vae=vae,
                                 scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), **encoders)
    _drop_template_system(pipe)
    # The pipeline only generates at its listed resolutions.
    pipe.resolutions = [(64, 64)]
    return pipe, {"height": 64, "width": 64}


def build_kandinsky5_t2v(seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """
    Kandinsky 5.0 Video Lite (kandinskylab/Kandinsky-5.0-T2V-Lite-sft-5s-Diffusers): Qwen2.5-VL-7B
    (`Qwen2_5_VLForConditionalGeneration`), its last hidden state without the template's 128 system tokens, unpadded
    (cumulative lengths); plus CLIP ViT-L (`CLIPTextModel`)'s pooled output. CFG over a negative prompt.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, Kandinsky5T2VPipeline

    encoders = _kandinsky5_encoders(seed, "You are prompt engineer Describe the video in detail how camera moves or "
                                          "shakes describe zoom and view angle whether it follows objects location "
                                          "main characters their action dynamism presented actions Name visual style "
                                          "professional footage user generated content some kind of animation game "
                                          "scren effects postprocessing transitions if they Pay attention to order "
                                          "key shown scene system")
    pipe = Kandinsky5T2VPipeline(transformer=_kandinsky5_transformer(seed, visual_cond=True),
                                 vae=_tiny_hunyuan_video_vae(seed),
                                 scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), **encoders)
    _drop_template_system(pipe)
    return pipe, {"height": 32, "width": 32, "num_frames": 5}


def build_ltx2(seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """
    LTX-2 (Lightricks/LTX-2): Gemma-3-12B (`Gemma3ForConditionalGeneration`), every hidden state of the prompt padded
    on the left to 1024 tokens, stacked and fed through the video and audio text connectors; CFG over a negative
    prompt for the video and the audio streams.
    """
    from diffusers import (
        AutoencoderKLLTX2Audio,
        AutoencoderKLLTX2Video,
        FlowMatchEulerDiscreteScheduler,
        LTX2Pipeline,
        LTX2VideoTransformer3DModel,
    )
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    # Gemma: a BOS, words with their leading space (SentencePiece), left padding (the pipeline sets it).
    tokenizer = tiny.tiny_llm_tokenizer(1024, spaced_words=True)
    vocab = len(tokenizer)
    hidden, layers = 16, 2
    config = Gemma3Config(
        text_config={
            "vocab_size": vocab + 3, "hidden_size": hidden, "intermediate_size": 32, "num_hidden_layers": layers,
            "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8, "max_position_embeddings": 2048,
            "sliding_window": 512, "query_pre_attn_scalar": 8, "pad_token_id": 0, "bos_token_id": 1,
            "eos_token_id": 2,
        },
        vision_config={"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 16, "patch_size": 4},
        mm_tokens_per_image=4, boi_token_index=vocab, eoi_token_index=vocab + 1, image_token_index=vocab + 2,
    )
    torch.manual_seed(seed)
    text_encoder = Gemma3ForConditionalGeneration(config).eval()
    torch.manual_seed(seed)
    connectors = LTX2TextConnectors(
        caption_channels=hidden, text_proj_in_factor=layers + 1, video_connector_num_attention_heads=2,
        video_connector_attention_head_dim=8, video_connector_num_layers=1,
        video_connector_num_learnable_registers=8, audio_connector_num_attention_heads=2,
        audio_connector_attention_head_dim=8, audio_connector_num_layers=1,
        audio_connector_num_learnable_registers=8, connector_rope_base_seq_len=1024, rope_double_precision=False,
        rope_type="split",
    )
    torch.manual_seed(seed)
    transformer = LTX2VideoTransformer3DModel(
        in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
        cross_attention_dim=16, audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
        audio_attention_head_dim=4, audio_cross_attention_dim=8, num_layers=1, caption_channels=hidden,
        rope_double_precision=False, rope_type="split",
    )
    torch.manual_seed(seed)
    vae = AutoencoderKLLTX2Video(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,), decoder_block_out_channels=(8,),
        layers_per_block=(1,), decoder_layers_per_block=(1, 1), spatio_temporal_scaling=(True,),
        decoder_spatio_temporal_scaling=(True,), decoder_inject_noise=(False, False), downsample_type=("spatial",),
        upsample_residual=(False,), upsample_factor=(1,), timestep_conditioning=False, patch_size=1,
        patch_size_t=1, encoder_causal=True, decoder_causal=False,
    )
    torch.manual_seed(seed)
    audio_vae = AutoencoderKLLTX2Audio(
        base_channels=4, output_channels=2, ch_mult=(1,), num_res_blocks=1, attn_resolutions=None, in_channels=2,
        resolution=32, latent_channels=2, norm_type="pixel", causality_axis="height", dropout=0.0,
        mid_block_add_attention=False, sample_rate=16000, mel_hop_length=160, is_causal=True, mel_bins=8,
    )
    torch.manual_seed(seed)
    vocoder = LTX2Vocoder(
        in_channels=2 * 8, hidden_channels=16, out_channels=2, upsample_kernel_sizes=[4, 4], upsample_factors=[2, 2],
        resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]], output_sampling_rate=16000,
    )
    pipe = LTX2Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, audio_vae=audio_vae,
                        text_encoder=text_encoder, tokenizer=tokenizer, connectors=connectors,
                        transformer=transformer, vocoder=vocoder)
    # The one transformer block stands in for block 28, where LTX-2 perturbs attention (STG). 16 tokens, not the
    # default 1024: at 1024 the connectors' learnable registers fill 1019 positions around 5 real tokens, and the
    # random tiny denoiser moves by a relative 1e-6 with the text (2.8e-4 at 64 tokens), too little to learn from:
    # the `tiny` recipe's 160 steps reach 0.10x of the start at 16 tokens, 0.55x at 64.
    return pipe, {"height": 32, "width": 32, "num_frames": 5, "frame_rate": 25.0,
                  "spatio_temporal_guidance_blocks": [0], "max_sequence_length": 16}


def _tiny_hunyuan_video_vae(seed: int):
    """A tiny `AutoencoderKLHunyuanVideo` (8x spatial, 4x temporal compression, as the real one)."""
    from diffusers import AutoencoderKLHunyuanVideo

    torch.manual_seed(seed)
    return AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(4, 4, 4, 4), layers_per_block=1,
        norm_num_groups=2, scaling_factor=0.476986, spatial_compression_ratio=8, temporal_compression_ratio=4,
        mid_block_add_attention=False,
    )


def build_hunyuan_video(seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """
    HunyuanVideo (hunyuanvideo-community/HunyuanVideo): llava-llama-3-8B's language model (`LlamaModel`),
    hidden_states[-3] of the templated prompt without the template's system part (95 tokens with its tokenizer),
    masked; plus CLIP ViT-L (`CLIPTextModel`)'s pooled output. Guidance-distilled: `guidance_scale` is embedded, and
    a negative prompt is only encoded with `true_cfg_scale` above 1 (not set here, as in the checkpoint's use).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline, HunyuanVideoTransformer3DModel
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE
    from transformers import CLIPTextModel, LlamaConfig, LlamaModel

    template = DEFAULT_PROMPT_TEMPLATE["template"]
    words = "".join(c if c.isalpha() else " " for c in template).split()
    tokenizer = tiny.tiny_llm_tokenizer(2048, extra_words=words, spaced_words=True, special_tokens=LLAMA3_SPECIALS)
    hidden = 16
    torch.manual_seed(seed)
    text_encoder = LlamaModel(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=2, head_dim=8, max_position_embeddings=2048, bos_token_id=1,
        eos_token_id=2, pad_token_id=0,
    )).eval()
    torch.manual_seed(seed)
    text_encoder_2 = CLIPTextModel(tiny.tiny_clip_text_config()).eval()
    torch.manual_seed(seed)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=hidden, pooled_projection_dim=tiny.CLIP_TINY_DIM, rope_axes_dim=(2, 2, 4),
    )
    vae = _tiny_hunyuan_video_vae(seed)
    pipe = HunyuanVideoPipeline(
        text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=text_encoder_2,
        tokenizer_2=tiny.tiny_clip_tokenizer(),
    )
    # The template is a call argument; its `crop_start` (the system part with the BOS) counted by the tiny tokenizer.
    crop = len(tokenizer(template[: template.index("{}")]).input_ids)
    return pipe, {"height": 32, "width": 32, "num_frames": 5,
                  "prompt_template": {"template": template, "crop_start": crop}}


def build_easyanimate(seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """
    EasyAnimate V5.1 (alibaba-pai/EasyAnimateV5.1-7b-zh-diffusers): Qwen2-VL (`Qwen2VLForConditionalGeneration`),
    hidden_states[-2] of the chat-formatted prompt at 256 tokens, masked; CFG over a negative prompt.
    """
    from diffusers import (
        AutoencoderKLMagvit,
        EasyAnimatePipeline,
        EasyAnimateTransformer3DModel,
        FlowMatchEulerDiscreteScheduler,
    )

    tokenizer = tiny.tiny_llm_tokenizer(2048, chat_template=QWEN2_5_VL_CHAT_TEMPLATE, spaced_words=True,
                                           extra_words=("You", "are", "helpful", "assistant", "system", "user"),
                                           special_tokens=QWEN_SPECIALS, add_bos=False)
    hidden = 16
    text_encoder = _qwen2_5_vl(len(tokenizer), num_hidden_layers=2, seed=seed, hidden=hidden, version="2")
    torch.manual_seed(seed)
    transformer = EasyAnimateTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=4,
        text_embed_dim=hidden, num_layers=1, mmdit_layers=1, sample_width=16, sample_height=16, patch_size=2,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKLMagvit(
        in_channels=3, out_channels=3,
        down_block_types=("SpatialDownBlock3D", *("SpatialTemporalDownBlock3D",) * 3),
        up_block_types=("SpatialUpBlock3D", *("SpatialTemporalUpBlock3D",) * 3), block_out_channels=(4, 4, 4, 4),
        latent_channels=4, layers_per_block=1, norm_num_groups=2, spatial_group_norm=False,
    )
    pipe = EasyAnimatePipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
                               scheduler=FlowMatchEulerDiscreteScheduler())
    return pipe, {"height": 16, "width": 16, "num_frames": 5}


def build_ovis_image(seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """
    Ovis-Image 7B (AIDC-AI/Ovis-Image-7B): its Qwen3 text encoder (`Qwen3Model`), the last hidden state of the
    chat-formatted instruction and prompt without the 28 tokens before the prompt, padding zeroed; CFG over a
    negative prompt.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, OvisImagePipeline, OvisImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    words = "Describe the image by detailing color quantity text shape size texture spatial relationships objects "
    tokenizer = tiny.tiny_llm_tokenizer(2048, chat_template=QWEN3_CHAT_TEMPLATE, spaced_words=True,
                                           special_tokens=(*QWEN_SPECIALS, "<think>", "</think>", "\n\n"),
                                           extra_words=(*words.split(), "background", "user", "assistant"),
                                           add_bos=False)
    hidden = 16
    torch.manual_seed(seed)
    text_encoder = Qwen3Model(Qwen3Config(
        hidden_size=hidden, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        head_dim=8, vocab_size=len(tokenizer), max_position_embeddings=1024, pad_token_id=0, bos_token_id=None,
        eos_token_id=QWEN_EOS,
    )).eval()
    torch.manual_seed(seed)
    transformer = OvisImageTransformer2DModel(
        patch_size=1, in_channels=16, out_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=hidden, axes_dims_rope=(4, 4, 8),
    )
    torch.manual_seed(seed)
    vae = tiny.tiny_vae(latent_channels=4)
    pipe = OvisImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                             tokenizer=tokenizer, transformer=transformer)
    # The tokens before the prompt (28 with Qwen3's tokenizer): the user turn's header and the instruction.
    header = tokenizer.apply_chat_template([{"role": "user", "content": ""}], tokenize=False)
    pipe.user_prompt_begin_id = _tokens(tokenizer, header[: header.index("<|im_end|>")] + pipe.system_prompt.rstrip())
    return pipe, {"height": 16, "width": 16}


def build_longcat_image(seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """
    LongCat-Image (meituan-longcat/LongCat-Image): Qwen2.5-VL-7B (`Qwen2_5_VLForConditionalGeneration`), the last
    hidden state of the prompt's 512 tokens between a fixed prefix and suffix (both dropped), masked; CFG over a
    negative prompt with the prediction's norm renormalised. Its default prompt rewrite (the same Qwen2.5-VL
    generating up to 512 tokens) is switched off in the call.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, LongCatImagePipeline, LongCatImageTransformer2DModel

    words = ("As an image captioning expert generate descriptive text prompt based on content suitable for input to "
             "model system user assistant").split()
    tokenizer = tiny.tiny_llm_tokenizer(2048, chat_template=QWEN2_5_VL_CHAT_TEMPLATE, extra_words=words,
                                           spaced_words=True, special_tokens=QWEN_SPECIALS, add_bos=False)
    hidden = 16
    text_encoder = _qwen2_5_vl(len(tokenizer), num_hidden_layers=2, seed=seed, hidden=hidden)
    torch.manual_seed(seed)
    transformer = LongCatImageTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=hidden, pooled_projection_dim=hidden, axes_dims_rope=[4, 4, 8],
    )
    torch.manual_seed(seed)
    vae = tiny.tiny_vae(latent_channels=16, block_out_channels=(16,))
    # `text_processor` (Qwen2-VL's processor) only serves the prompt rewrite; the tokenizer takes its calls (the
    # processor's video half needs torchvision).
    pipe = LongCatImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                                tokenizer=tokenizer, text_processor=tokenizer, transformer=transformer)
    return pipe, {"height": 16, "width": 16, "enable_prompt_rewrite": False}


def build_hunyuan_image21(seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """
    HunyuanImage-2.1 (hunyuanvideo-community/HunyuanImage-2.1-Diffusers): Qwen2.5-VL-7B
    (`Qwen2_5_VLForConditionalGeneration`), hidden_states[-3] of the templated prompt without its 34 system tokens,
    masked; plus ByT5 (`T5EncoderModel`) for quoted glyph text. Adaptive projected CFG over a negative prompt through
    the pipeline's guiders (their scale is the guider's, not a call argument).
    """
    from diffusers import (
        AutoencoderKLHunyuanImage,
        FlowMatchEulerDiscreteScheduler,
        HunyuanImagePipeline,
        HunyuanImageTransformer2DModel,
    )
    from diffusers.guiders import AdaptiveProjectedMixGuidance
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    words = ("Describe the image by detailing color shape size texture quantity text spatial relationships objects "
             "and background system user").split()
    tokenizer = tiny.tiny_llm_tokenizer(2048, extra_words=words, spaced_words=True, special_tokens=QWEN_SPECIALS,
                                           add_bos=False)
    hidden = 16
    text_encoder = _qwen2_5_vl(len(tokenizer), num_hidden_layers=3, seed=seed, hidden=hidden)
    # ByT5 smaller than the Qwen model, as ByT5-small (0.3 B) is beside Qwen2.5-VL-7B: the trace picks the largest.
    torch.manual_seed(seed)
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=384, d_model=16, d_kv=4, d_ff=16, num_layers=1, num_heads=2,
        feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
    )).eval()
    torch.manual_seed(seed)
    transformer = HunyuanImageTransformer2DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, patch_size=(1, 1), guidance_embeds=False,
        text_embed_dim=hidden, text_embed_2_dim=16, rope_axes_dim=(4, 4),
    )
    torch.manual_seed(seed)
    vae = AutoencoderKLHunyuanImage(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32), layers_per_block=1,
        scaling_factor=0.476986, spatial_compression_ratio=2, sample_size=32,
    )
    pipe = HunyuanImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=ByT5Tokenizer(), transformer=transformer,
        guider=AdaptiveProjectedMixGuidance(guidance_scale=3.5), ocr_guider=AdaptiveProjectedMixGuidance(),
    )
    # The template's system part (34 tokens with Qwen2.5-VL's tokenizer) as the tiny tokenizer counts it.
    template = pipe.prompt_template_encode
    pipe.prompt_template_encode_start_idx = _tokens(tokenizer, template[: template.index("{}")])
    return pipe, {"height": 16, "width": 16}


def build_sana_video(seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """
    SANA-Video 2B 480p (Efficient-Large-Model/SANA-Video_2B_480p_diffusers): Gemma-2-2B-it (`Gemma2Model`), the last
    hidden state of the complex human instruction and prompt at 300 tokens (the instruction's tokens dropped), masked;
    the negative prompt without the instruction. CFG over a negative prompt.
    """
    from diffusers import DPMSolverMultistepScheduler, SanaVideoPipeline, SanaVideoTransformer3DModel
    from transformers import Gemma2Config, Gemma2Model

    call = inspect.signature(SanaVideoPipeline.__call__)
    instruction = " ".join(call.parameters["complex_human_instruction"].default)
    words = "".join(c if c.isalpha() else " " for c in instruction).split()
    tokenizer = tiny.tiny_llm_tokenizer(4096, extra_words=words, spaced_words=True)
    hidden = 16
    torch.manual_seed(seed)
    text_encoder = Gemma2Model(Gemma2Config(
        head_dim=8, hidden_size=hidden, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
        num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=4096, pad_token_id=0,
        bos_token_id=1, eos_token_id=2, attn_implementation="eager",
    )).eval()
    torch.manual_seed(seed)
    transformer = SanaVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12, num_layers=1,
        num_cross_attention_heads=2, cross_attention_head_dim=12, cross_attention_dim=24, caption_channels=hidden,
        sample_size=8, patch_size=(1, 2, 2),
    )
    # A flow-matching DPM-Solver++, as SANA-Video samples.
    scheduler = DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=8.0)
    pipe = SanaVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=_tiny_wan_vae(seed),
                             transformer=transformer, scheduler=scheduler)
    # Resolution binning would snap 32 px to the real model's 480p bins.
    return pipe, {"height": 32, "width": 32, "frames": 5, "use_resolution_binning": False}


def build_helios(seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """
    Helios (BestWishYsh/Helios-Base): UMT5-XXL (`UMT5EncoderModel`), the last hidden state at 512 tokens with padding
    zeroed, as Wan; video generated chunk by chunk over a history of past latents. CFG over a negative prompt.
    """
    from diffusers import HeliosPipeline, HeliosScheduler, HeliosTransformer3DModel

    torch.manual_seed(seed)
    transformer = HeliosTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=tiny.T5_TINY_DIM, freq_dim=32, ffn_dim=32, num_layers=1, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_dim=(4, 4, 4), has_multi_term_memory_patch=True,
        guidance_cross_attn=True, zero_history_timestep=True, is_amplify_history=False,
    )
    pipe = HeliosPipeline(tokenizer=tiny.tiny_t5_tokenizer(), text_encoder=tiny.tiny_umt5_encoder(seed=seed),
                          vae=_tiny_wan_vae(seed), scheduler=HeliosScheduler(stage_range=[0, 1], stages=1),
                          transformer=transformer)
    # One chunk of 9 latent frames (the pipeline's chunk size) at 16 px.
    return pipe, {"height": 16, "width": 16, "num_frames": 9}


# Not built: ChronoEdit (`ChronoEditPipeline`) edits an input image and Lucy Edit (`LucyEditPipeline`) an input video;
# neither is a text-only pipeline.
def reload_kwargs(family: str) -> dict[str, Any]:
    """
    What `from_pretrained` of a saved tiny pipeline of `family` must be given: Cosmos' stand-in safety checker has no
    weights to save, and diffusers cannot import a class from a test module (diffusers' Cosmos tests do the same).
    """
    return {"safety_checker": PassThroughSafetyChecker()} if family.startswith("cosmos") else {}


TRACED_FAMILIES = {
    "flux2-klein": build_flux2_klein,
    "flux2-klein-distilled": build_flux2_klein_distilled,
    "cogview4": build_cogview4,
    "cosmos2": build_cosmos2,
    "hunyuanvideo15": build_hunyuan_video15,
    "kandinsky5-t2i": build_kandinsky5_t2i,
    "kandinsky5-t2v": build_kandinsky5_t2v,
    "ltx2": build_ltx2,
    "hunyuanvideo": build_hunyuan_video,
    "easyanimate": build_easyanimate,
    "ovis-image": build_ovis_image,
    "longcat-image": build_longcat_image,
    "hunyuanimage21": build_hunyuan_image21,
    "sana-video": build_sana_video,
    "helios": build_helios,
}
