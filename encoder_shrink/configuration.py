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
