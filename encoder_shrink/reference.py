"""The DistillT5 reference checkpoint format (`T5EncoderWithProjection`) and its translation into a student."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from encoder_shrink.configuration import NON_FIELD_KEYS, T5_XXL_DIM, ShrunkT5Config
from encoder_shrink.errors import IncompatibleModelError, OutputExistsError

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


def load_reference_file(path: str | os.PathLike):
    """A student from one reference-layout safetensors file (config read off the tensor shapes)."""
    from safetensors import safe_open

    from encoder_shrink.student import ShrunkT5EncoderModel
    from encoder_shrink.weights import WeightsError, safetensors_file

    safetensors_file(path)
    with safe_open(str(path), framework="pt") as weights:
        tensors = {name: weights.get_tensor(name) for name in weights.keys()}
    student = ShrunkT5EncoderModel(config_from_reference_weights({k: tuple(v.shape) for k, v in tensors.items()}))
    renamed = {}
    for name, tensor in tensors.items():
        for pattern, replacement in REFERENCE_KEY_MAPPING.items():
            name = re.sub(pattern, replacement, name)
        renamed[name] = tensor
    renamed.setdefault("encoder.embed_tokens.weight", renamed.get("shared.weight"))
    missing, unexpected = student.load_state_dict(renamed, strict=False)
    if missing or unexpected:
        raise WeightsError(
            f"{path} does not hold a complete reference-layout student: missing {', '.join(missing[:3]) or 'none'}, "
            f"unexpected {', '.join(unexpected[:3]) or 'none'}."
        )
    student.tie_weights()
    return student.eval()


def convert_reference_checkpoint(source: str | os.PathLike, destination: str | os.PathLike, overwrite: bool = False):
    """
    Load a reference checkpoint (folder, hub id, or one reference-layout safetensors file) and save it as a student
    (`config.json` + `model.safetensors`).

    Example:

    ```python
    >>> convert_reference_checkpoint("LifuWang/DistillT5", "out/distillt5-student")  # doctest: +SKIP
    ```
    """
    # Imported here: the student module itself imports this one for the format's key mapping.
    from encoder_shrink.student import ShrunkT5EncoderModel

    destination = Path(destination)
    if destination.exists() and any(destination.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"{destination} exists and is not empty; choose another folder or pass overwrite=True."
        )
    if Path(source).is_file():
        student = load_reference_file(source)
    else:
        student = ShrunkT5EncoderModel.from_pretrained(source)
    student.save_pretrained(destination)
    return student
