"""The DistillT5 reference checkpoint format (`T5EncoderWithProjection`): its key names and its student config."""

from __future__ import annotations

import re
from typing import Any

from encoder_shrink.configuration import NON_FIELD_KEYS, T5_XXL_DIM, ShrunkT5Config
from encoder_shrink.errors import IncompatibleModelError

REFERENCE_ARCHITECTURE = "T5EncoderWithProjection"
# The reference wraps a whole T5EncoderModel as `encoder`, so its T5 keys carry one extra `encoder.` prefix
# (`encoder.shared.weight`, `encoder.encoder.block.0...`); the projector keys `final_projection.0/.3` match ours.
REFERENCE_KEY_MAPPING = {r"^encoder\.(shared|encoder)\.": r"\1."}
# Config keys of the reference that are not T5 fields (besides the metadata every saved config has); `out_dim` is
# the key the reference's config class actually reads the output width from, `export` our export record.
_REFERENCE_ONLY_KEYS = ("project_in_dim", "project_out_dim", "out_dim", "export", *NON_FIELD_KEYS)
# The published reference students (LifuWang/DistillT5) replace FLUX.1-dev's T5-XXL in `text_encoder_2`.
REFERENCE_FAMILY = "flux-dev"
REFERENCE_COMPONENT = "text_encoder_2"


def is_reference_config(config_dict: dict[str, Any]) -> bool:
    """Whether a `config.json` dict is the reference's (`project_in_dim`/`project_out_dim` on T5 fields)."""
    return "project_in_dim" in config_dict or REFERENCE_ARCHITECTURE in (config_dict.get("architectures") or [])


def reference_to_student_config(config_dict: dict[str, Any]) -> ShrunkT5Config:
    """
    Translate a reference `config.json` dict into the equivalent [`ShrunkT5Config`]. The published reference students
    record nothing of their teacher; they were distilled from FLUX.1-dev (family `flux-dev`, `text_encoder_2`).

    Example:

    ```python
    >>> reference_to_student_config({"d_model": 768, "project_in_dim": 768, "project_out_dim": 4096}).teacher_dim
    4096
    ```
    """
    d_model = config_dict.get("d_model", ShrunkT5Config().d_model)
    project_in = config_dict.get("project_in_dim", d_model)
    if project_in != d_model:
        raise IncompatibleModelError(
            f"Reference checkpoint is inconsistent: project_in_dim={project_in!r} but the T5's d_model={d_model!r}."
        )
    fields = {k: v for k, v in config_dict.items() if k not in _REFERENCE_ONLY_KEYS}
    if fields.get("pipeline_family") is None:
        fields["pipeline_family"], fields["component"] = REFERENCE_FAMILY, REFERENCE_COMPONENT
    fields["teacher_dim"] = config_dict.get("project_out_dim", T5_XXL_DIM)
    return ShrunkT5Config(**fields)


def config_from_reference_weights(shapes: dict[str, tuple[int, ...]]) -> ShrunkT5Config:
    r"""
    The student config of a single reference-layout safetensors file without a config.json (as ComfyUI users have
    them), read off its tensor shapes: width, vocabulary, depth, heads, feed-forward size and kind, output width.
    T5 v1.1 / FLAN-T5 students (gated feed forward) are read as gated-GELU, the activation those T5s use.

    Example:

    ```python
    >>> config_from_reference_weights({"encoder.shared.weight": (100, 16), ...})  # doctest: +SKIP
    ```
    """
    def shape(pattern: str) -> tuple[int, ...]:
        found = [s for name, s in shapes.items() if re.fullmatch(pattern, name)]
        if not found:
            raise IncompatibleModelError(
                f"not a reference-layout student file: no tensor matches {pattern!r}; expected encoder.shared.weight, "
                "encoder.encoder.block.N.* and final_projection.0/.3.weight."
            )
        return found[0]

    vocab, d_model = shape(r"(encoder\.)?shared\.weight")
    prefix = r"(encoder\.)?encoder\.block\.0\.layer\."
    buckets, heads = shape(prefix + r"0\.SelfAttention\.relative_attention_bias\.weight")
    inner = shape(prefix + r"0\.SelfAttention\.q\.weight")[0]
    gated = any(re.fullmatch(prefix + r"1\.DenseReluDense\.wi_0\.weight", name) for name in shapes)
    d_ff = shape(prefix + (r"1\.DenseReluDense\.wi_0\.weight" if gated else r"1\.DenseReluDense\.wi\.weight"))[0]
    layers = 1 + max(
        int(m.group(2)) for name in shapes if (m := re.match(r"(encoder\.)?encoder\.block\.(\d+)\.", name))
    )
    teacher_dim = shape(r"final_projection\.3\.weight")[0]
    return ShrunkT5Config(
        vocab_size=vocab, d_model=d_model, d_kv=inner // heads, d_ff=d_ff, num_layers=layers, num_heads=heads,
        relative_attention_num_buckets=buckets, feed_forward_proj="gated-gelu" if gated else "relu",
        teacher_dim=teacher_dim, pipeline_family=REFERENCE_FAMILY, component=REFERENCE_COMPONENT,
    )
