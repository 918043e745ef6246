"""Offline builders of tiny pipelines of every registered family, tokenizers and students, for tests and demos."""

from __future__ import annotations

import inspect
import string
from pathlib import Path

import torch

from encoder_shrink.pipelines import adapter_for, get_adapter, registered_families

# Every registered family has a tiny offline pipeline (its adapter's `tiny_components`).
TINY_FAMILIES = tuple(registered_families())

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


def tiny_llm_tokenizer(model_max_length: int = 512, chat_template: str | None = None,
                       extra_words: list[str] | tuple[str, ...] = (), spaced_words: bool = False,
                       special_tokens: tuple[str, ...] = (), add_bos: bool = True):
    """
    A character-level tokenizer of an LLM built in memory (`PreTrainedTokenizerFast`): `<|pad|>`=0,
    `<|begin_of_text|>`=1 (added before every text unless `add_bos=False`), `<|end_of_text|>`=2, `<unk>`=3, then whole
    words and characters. Its ids stay inside any real LLM vocabulary; `chat_template` is set as given, `extra_words`
    (a template's words) become whole tokens too, `special_tokens` (`<|im_start|>`, ...) are never split, and with
    `spaced_words` a word takes the space before it as byte-level BPE tokenizers do (" red" is one token), so a
    template has the token count it has with the real tokenizer.

    Example:

    ```python
    >>> tiny_llm_tokenizer()("a red circle").input_ids[0]
    1
    ```
    """
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<|pad|>", "<|begin_of_text|>", "<|end_of_text|>", "<unk>", *special_tokens]
    vocab = {token: i for i, token in enumerate(specials)}
    extra = [w for w in dict.fromkeys(extra_words) if w.isalpha()]
    all_words = sorted((w for w in {*_WORDS, *extra} if len(w) > 1), key=lambda w: (-len(w), w))
    spaced = [" " + w for w in all_words] if spaced_words else []
    for piece in [*_WORDS, *_CHARS, " ", *extra, *(["\n"] if spaced_words else []), *spaced]:
        vocab.setdefault(piece, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    # Whole words where the vocabulary has them, single characters (spaces included) otherwise.
    words = "|".join(all_words)
    space = " ?" if spaced_words else ""
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(rf"{space}(?:{words})(?![a-zA-Z])|."), behavior="isolated")
    if add_bos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B", special_tokens=[("<|begin_of_text|>", 1)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>", pad_token="<|pad|>",
        unk_token="<unk>", model_max_length=model_max_length, chat_template=chat_template,
        additional_special_tokens=list(special_tokens) or None,
    )


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


def tiny_umt5_encoder(d_model: int = T5_TINY_DIM, num_layers: int = 2, vocab_size: int | None = None, seed: int = 0):
    """A random `UMT5EncoderModel` (every layer has its own position bias) sized for the tiny tokenizer."""
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=vocab_size or len(tiny_t5_tokenizer()), d_model=d_model, d_kv=8, d_ff=2 * d_model,
        num_layers=num_layers, num_heads=max(1, d_model // 8), feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=32,
    )
    torch.manual_seed(seed)
    return UMT5EncoderModel(config).eval()


def tiny_student(teacher_dim: int = T5_TINY_DIM, d_model: int = 16, num_layers: int = 1, seed: int = 1,
                 student_class: type | None = None, **config):
    """A random student of `student_class` (default: `ShrunkT5EncoderModel`; a UMT5 or LLM student class too)
    projected to `teacher_dim`."""
    from encoder_shrink.student import ShrunkT5EncoderModel

    torch.manual_seed(seed)
    cls = student_class or ShrunkT5EncoderModel
    build = tiny_umt5_encoder if cls.base_model_type == "umt5" else tiny_t5_encoder
    encoder = build(d_model=d_model, num_layers=num_layers, seed=seed)
    return cls.from_t5(encoder, teacher_dim=teacher_dim, **config).eval()


def tiny_recipe_overrides(family: str) -> dict:
    """
    Overrides of the `tiny` recipe for `family`'s tiny pipeline: video families train on their tiny call's clip
    (size and frames) rather than the recipe's 16 px at the pipeline's default length (LTX needs 32 px, 161 frames).
    """
    adapter = get_adapter(family)
    if adapter.default_num_frames is None:
        return {}
    call = adapter.tiny_call_kwargs()
    return {"resolution": call["height"], "num_frames": call[adapter.frames_argument]}


def generated(output):
    """The images (image pipelines) or frames (video pipelines) of a pipeline call's output, as a numpy array."""
    from encoder_shrink.evaluation import generated_media

    return generated_media(output)


def tiny_clip_text_config(max_position_embeddings: int = 77):
    """The config of a tiny CLIP text encoder for the tiny CLIP tokenizer (77 positions as CLIP; more: Long-CLIP)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tiny_clip_tokenizer()),
        hidden_size=CLIP_TINY_DIM,
        intermediate_size=2 * CLIP_TINY_DIM,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=max_position_embeddings,
        projection_dim=CLIP_TINY_DIM,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_act="gelu",
    )


def save_tiny_clip(directory: str | Path, image_size: int = 32, seed: int = 0) -> Path:
    r"""
    Save a tiny `CLIPModel` (random weights) with its processor (the tiny CLIP tokenizer, a CLIP image processor at
    `image_size`) to `directory`: a local CLIP checkpoint for the `clip` metric's mechanics. Both towers share one
    projection and their final layer norms a bias, so every embedding leans towards one shared direction: cosines are
    positive and differ from pair to pair (an untouched random CLIP gives about half of them below zero, which the
    score clamps to 0).

    Example:

    ```python
    >>> folder = save_tiny_clip("tiny-clip")  # doctest: +SKIP
    >>> score_images(images, prompts, "clip", clip=folder)  # doctest: +SKIP
    ```
    """
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPVisionConfig

    vision = CLIPVisionConfig(hidden_size=CLIP_TINY_DIM, intermediate_size=2 * CLIP_TINY_DIM, num_hidden_layers=2,
                              num_attention_heads=2, image_size=image_size, patch_size=image_size // 4,
                              projection_dim=CLIP_TINY_DIM)
    config = CLIPConfig(text_config=tiny_clip_text_config().to_dict(), vision_config=vision.to_dict(),
                        projection_dim=CLIP_TINY_DIM)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CLIPModel(config).eval()
        with torch.no_grad():
            model.text_projection.weight.copy_(model.visual_projection.weight)
            model.text_model.final_layer_norm.bias.fill_(1.0)
            model.vision_model.post_layernorm.bias.fill_(1.0)
    images = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size,
                                                                              "width": image_size})
    directory = Path(directory)
    model.save_pretrained(directory)
    CLIPProcessor(image_processor=images, tokenizer=tiny_clip_tokenizer()).save_pretrained(directory)
    return directory


def tiny_vae(latent_channels: int, block_out_channels: tuple[int, ...] = (8,)):
    """A one-block `AutoencoderKL` (no downsampling) with FLUX.1's latent shift and scale."""
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
    Random, tiny components of a pipeline of the registered `family`, keyed as the pipeline's constructor expects them
    (the family's `tiny_components`).
    """
    return get_adapter(family).tiny_components(seed=seed)


# The UNet pipeline TiUE distils (not a text-encoder family: its CLIP stays):
# `save_tiny_pipeline(STABLE_DIFFUSION, dir)`.
STABLE_DIFFUSION = "stable-diffusion"
# SD 1.5 / 2.1's DDIM scheduler config (scheduler_config.json): the paper's 4-step schedule is [751, 501, 251, 1].
SD_DDIM_CONFIG = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                      set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")


def tiny_sd_components(seed: int = 0) -> dict:
    """Tiny random components of a `StableDiffusionPipeline` (SD 1.5 layout, CLIP, DDIM with SD's config)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=2, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=CLIP_TINY_DIM, attention_head_dim=4, norm_num_groups=8,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                        latent_channels=4, norm_num_groups=4, sample_size=16, scaling_factor=0.18215)
    torch.manual_seed(seed)
    return {"unet": unet, "vae": vae, "text_encoder": CLIPTextModel(tiny_clip_text_config()).eval(),
            "tokenizer": tiny_clip_tokenizer(), "scheduler": DDIMScheduler(**SD_DDIM_CONFIG),
            "safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


def tiny_pipeline_class(family: str):
    """The diffusers pipeline class of the registered `family` (or of `STABLE_DIFFUSION`)."""
    if family == STABLE_DIFFUSION:
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline
    return get_adapter(family).diffusers_pipeline_class()


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
    components = tiny_sd_components(seed) if family == STABLE_DIFFUSION else tiny_pipeline_components(family, seed)
    pipe = tiny_pipeline_class(family)(**components)
    pipe.save_pretrained(directory)
    return directory


def load_tiny_pipeline(family: str, directory: str | Path, seed: int = 0, **from_pretrained_kwargs):
    """
    Save a tiny pipeline of `family` to `directory` (if it is not there yet) and load it back with the pipeline
    class's own `from_pretrained`, as a user loads a downloaded model, made ready to sample as `load_pipeline` makes
    it. Extra keyword arguments (e.g. `text_encoder_2=student`) go to `from_pretrained`.
    """
    directory = Path(directory)
    if not (directory / "model_index.json").is_file():
        save_tiny_pipeline(family, directory, seed=seed)
    pipe = tiny_pipeline_class(family).from_pretrained(directory, **from_pretrained_kwargs)
    adapter_for(pipe).prepare_for_sampling()  # as `load_pipeline` does (Allegro: VAE tiling)
    return pipe


def tiny_call_kwargs(pipe, num_inference_steps: int = 2, seed: int = 0) -> dict:
    """Keyword arguments for a fast, deterministic call of a tiny pipeline (small image, few steps)."""
    adapter = adapter_for(pipe)
    kwargs = {
        "num_inference_steps": num_inference_steps,
        "generator": torch.Generator("cpu").manual_seed(seed),
        "output_type": "np",
        **adapter.tiny_call_kwargs(),
    }
    if "max_sequence_length" in inspect.signature(pipe.__call__).parameters:  # Latte's length is fixed
        kwargs["max_sequence_length"] = adapter.max_sequence_length  # the family's deployment length (schnell: 256)
    return kwargs
