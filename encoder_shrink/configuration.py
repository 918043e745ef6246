"""ShrunkT5Config and ShrunkUMT5Config: the configs of student encoders, and the record of the teacher they replace."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import T5Config, UMT5Config

from encoder_shrink.errors import InvalidArgumentError

# The paper's projector (arXiv 2503.19897, section 3.2) uses dropout 0.1 between its two linears.
DEFAULT_PROJECTOR_DROPOUT = 0.1
# T5-XXL's width, the conditioning width of FLUX.1, SD3/3.5 and PixArt-alpha/sigma.
T5_XXL_DIM = 4096
# Keys of a saved T5 config.json that are metadata or that T5Config derives from `feed_forward_proj` itself: not
# passed on when a student config is built from another config.
NON_FIELD_KEYS = (
    "model_type", "architectures", "transformers_version", "auto_map", "dtype", "torch_dtype",
    "dense_act_fn", "is_gated_act", "scale_decoder_outputs",
)


@strict
class ShrunkT5Config(T5Config):
    r"""
    Configuration of a [`ShrunkT5EncoderModel`]: every field of a [`~transformers.T5Config`] (the student's own
    T5), the projector that maps its output to the teacher's width, and a record of what the student replaces.

    Args:
        teacher_dim (`int`, defaults to 4096):
            Width of the teacher's embeddings, i.e. of what the student returns (T5-XXL: 4096).
        projector_dropout (`float`, defaults to 0.1):
            Dropout between the two linears of the projector (active in training mode only).
        pipeline_family (`str`, *optional*):
            Registered pipeline family the student was made for (`"flux-dev"`, `"sd3"`, `"pixart-sigma"`, ...).
        component (`str`, *optional*):
            The pipeline slot it replaces (`"text_encoder_2"` for FLUX, `"text_encoder_3"` for SD3, ...).
        teacher_name_or_path (`str`, *optional*):
            Id or path of the teacher encoder or pipeline.
        max_sequence_length (`int`, *optional*):
            Padded prompt length the student was distilled at (FLUX-dev 512, schnell 256, SD3 256, PixArt 120/300).
        use_attention_mask (`bool`, *optional*):
            Whether the pipeline passes an attention mask to the encoder (PixArt does, FLUX and SD3 do not).

    Example:

    ```python
    >>> from encoder_shrink import ShrunkT5Config
    >>> config = ShrunkT5Config(d_model=768, num_layers=12, num_heads=12, teacher_dim=4096)
    >>> config.teacher_dim
    4096
    ```
    """

    model_type = "shrunk_t5"

    teacher_dim: int = T5_XXL_DIM
    projector_dropout: float | int = DEFAULT_PROJECTOR_DROPOUT
    pipeline_family: str | None = None
    component: str | None = None
    teacher_name_or_path: str | None = None
    max_sequence_length: int | None = None
    use_attention_mask: bool | None = None

    def __post_init__(self, **kwargs):
        validate_student_fields(self)
        super().__post_init__(**kwargs)


def validate_student_fields(config) -> None:
    """The checks every student config makes on the fields it adds, quoting the bad value."""
    name = type(config).__name__
    if config.teacher_dim <= 0:
        raise InvalidArgumentError(f"{name}: teacher_dim must be a positive width, got {config.teacher_dim!r}.")
    if not 0.0 <= config.projector_dropout < 1.0:
        raise InvalidArgumentError(f"{name}: projector_dropout must be in [0, 1), got {config.projector_dropout!r}.")
    if config.max_sequence_length is not None and config.max_sequence_length <= 0:
        raise InvalidArgumentError(
            f"{name}: max_sequence_length must be a positive number of tokens or None, "
            f"got {config.max_sequence_length!r}."
        )
    if config.component is not None and not config.component.isidentifier():
        raise InvalidArgumentError(
            f"{name}: component must be a pipeline attribute such as 'text_encoder_2', got {config.component!r}."
        )


@strict
class ShrunkUMT5Config(UMT5Config):
    r"""
    Configuration of a [`ShrunkUMT5EncoderModel`]: every field of a [`~transformers.UMT5Config`] (the student's own
    UMT5, e.g. google/umt5-base), the projector to the teacher's width, and the same record of what the student
    replaces as [`ShrunkT5Config`] (Wan's and SkyReels-V2's UMT5-XXL, AuraFlow's pile-t5-xl).

    Example:

    ```python
    >>> from encoder_shrink import ShrunkUMT5Config
    >>> ShrunkUMT5Config(d_model=64, num_layers=2, num_heads=4, teacher_dim=4096).model_type
    'shrunk_umt5'
    ```
    """

    model_type = "shrunk_umt5"

    teacher_dim: int = T5_XXL_DIM
    projector_dropout: float | int = DEFAULT_PROJECTOR_DROPOUT
    pipeline_family: str | None = None
    component: str | None = None
    teacher_name_or_path: str | None = None
    max_sequence_length: int | None = None
    use_attention_mask: bool | None = None

    def __post_init__(self, **kwargs):
        validate_student_fields(self)
        super().__post_init__(**kwargs)


@strict
class ShrunkLLMConfig(T5Config):
    r"""
    Configuration of a [`ShrunkLLMEncoderModel`]: a student of an LLM text encoder (FLUX.2's Mistral-Small,
    Qwen-Image's Qwen2.5-VL, Z-Image's Qwen3, Sana's and Lumina2's Gemma-2). Every field of a
    [`~transformers.T5Config`] (its T5 encoder blocks; `vocab_size` is the teacher's tokenizer's), its compact
    embedding, the teacher hidden states its projector reproduces, and the same record of what it replaces as
    [`ShrunkT5Config`].

    Args:
        teacher_dim (`int`):
            Width of the features `last_hidden_state` returns: the distilled teacher layers side by side
            (`len(teacher_layers) * teacher_hidden_size`; FLUX.2: 3 x 5120 = 15360).
        teacher_hidden_size (`int`, *optional*):
            Width of one teacher hidden state (Mistral-Small 5120, Qwen2.5-VL-7B 3584); defaults to `teacher_dim`.
        teacher_layers (`list[int]`, *optional*):
            The indices of the teacher's `hidden_states` the pipeline reads, counted from 0 (the embeddings);
            FLUX.2 `[10, 20, 30]`, Qwen-Image `[28]` (the last). Defaults to the last one.
        teacher_num_hidden_states (`int`, *optional*):
            Length of the teacher's `hidden_states` tuple (its layers + 1), so negative indices the pipeline uses
            (`hidden_states[-2]`) resolve as they do on the teacher. Defaults to `max(teacher_layers) + 1`.
        embedding_rank (`int`, *optional*):
            Rank of the factorised token embedding (`vocab_size x rank`, then `rank x d_model`): a 131 k-token
            vocabulary at T5-base width is ~100 M parameters unfactorised, 34 M at rank 256. `None`: a full table.
        projector_dim (`int`, *optional*):
            Width of the projector's hidden layer; defaults to `teacher_hidden_size`.
        tokenizer_fingerprint (`str`, *optional*):
            Digest of the teacher tokenizer's vocabulary: a pipeline whose tokenizer differs is refused.
        teacher_model_type (`str`, *optional*):
            The teacher's `model_type` (`"mistral3"`, `"qwen2_5_vl"`, ...), for messages.

    Example:

    ```python
    >>> from encoder_shrink import ShrunkLLMConfig
    >>> config = ShrunkLLMConfig(d_model=64, num_layers=2, num_heads=4, vocab_size=1000, teacher_dim=48,
    ...                          teacher_hidden_size=16, teacher_layers=[10, 20, 30], teacher_num_hidden_states=41)
    >>> config.teacher_layers
    [10, 20, 30]
    ```
    """

    model_type = "shrunk_llm"

    teacher_dim: int = T5_XXL_DIM
    projector_dropout: float | int = DEFAULT_PROJECTOR_DROPOUT
    pipeline_family: str | None = None
    component: str | None = None
    teacher_name_or_path: str | None = None
    max_sequence_length: int | None = None
    use_attention_mask: bool | None = None
    teacher_hidden_size: int | None = None
    teacher_layers: list[int] | None = None
    teacher_num_hidden_states: int | None = None
    embedding_rank: int | None = None
    projector_dim: int | None = None
    tokenizer_fingerprint: str | None = None
    teacher_model_type: str | None = None

    def __post_init__(self, **kwargs):
        validate_student_fields(self)
        name = type(self).__name__
        if self.teacher_hidden_size is None:
            self.teacher_hidden_size = self.teacher_dim
        if self.projector_dim is None:
            self.projector_dim = self.teacher_hidden_size
        if self.teacher_layers is None:
            self.teacher_layers = [(self.teacher_num_hidden_states or 1) - 1]
        self.teacher_layers = [int(layer) for layer in self.teacher_layers]
        if self.teacher_num_hidden_states is None:
            self.teacher_num_hidden_states = max(self.teacher_layers) + 1
        if not self.teacher_layers or any(
                not 0 <= layer < self.teacher_num_hidden_states for layer in self.teacher_layers):
            raise InvalidArgumentError(
                f"{name}: teacher_layers must be indices into the teacher's {self.teacher_num_hidden_states} hidden "
                f"states, counted from 0, got {self.teacher_layers!r}."
            )
        if self.teacher_dim != len(self.teacher_layers) * self.teacher_hidden_size:
            raise InvalidArgumentError(
                f"{name}: teacher_dim must be len(teacher_layers) x teacher_hidden_size = "
                f"{len(self.teacher_layers)} x {self.teacher_hidden_size}, got {self.teacher_dim!r}."
            )
        if self.embedding_rank is not None and self.embedding_rank <= 0:
            raise InvalidArgumentError(
                f"{name}: embedding_rank must be positive or None, got {self.embedding_rank!r}."
            )
        if self.projector_dim is not None and self.projector_dim <= 0:
            raise InvalidArgumentError(f"{name}: projector_dim must be positive or None, got {self.projector_dim!r}.")
        super().__post_init__(**kwargs)
