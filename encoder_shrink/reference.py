"""The DistillT5 reference checkpoint format (`T5EncoderWithProjection`) and its translation into a student."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from encoder_shrink.configuration import NON_FIELD_KEYS, T5_XXL_DIM, ShrunkT5Config

REFERENCE_ARCHITECTURE = "T5EncoderWithProjection"
# The reference wraps a whole T5EncoderModel as `encoder`, so its T5 keys carry one extra `encoder.` prefix
# (`encoder.shared.weight`, `encoder.encoder.block.0...`); the projector keys `final_projection.0/.3` match ours.
REFERENCE_KEY_MAPPING = {r"^encoder\.(shared|encoder)\.": r"\1."}
# Config keys of the reference that are not T5 fields (besides the metadata every saved config has).
_REFERENCE_ONLY_KEYS = ("project_in_dim", "project_out_dim", *NON_FIELD_KEYS)


def is_reference_config(config_dict: dict[str, Any]) -> bool:
    """Whether a `config.json` dict is the reference's (`project_in_dim`/`project_out_dim` on T5 fields)."""
    return "project_in_dim" in config_dict or REFERENCE_ARCHITECTURE in (config_dict.get("architectures") or [])


def reference_to_student_config(config_dict: dict[str, Any]) -> ShrunkT5Config:
    """
    Translate a reference `config.json` dict into the equivalent [`ShrunkT5Config`].

    Example:

    ```python
    >>> reference_to_student_config({"d_model": 768, "project_in_dim": 768, "project_out_dim": 4096}).teacher_dim
    4096
    ```
    """
    d_model = config_dict.get("d_model", ShrunkT5Config().d_model)
    project_in = config_dict.get("project_in_dim", d_model)
    if project_in != d_model:
        raise ValueError(
            f"Reference checkpoint is inconsistent: project_in_dim={project_in!r} but the T5's d_model={d_model!r}."
        )
    fields = {k: v for k, v in config_dict.items() if k not in _REFERENCE_ONLY_KEYS}
    # The published reference students were distilled from FLUX.1's T5-XXL (text_encoder_2); that is all it records.
    fields.setdefault("pipeline_family", "flux")
    fields.setdefault("component", "text_encoder_2")
    fields["teacher_dim"] = config_dict.get("project_out_dim", T5_XXL_DIM)
    return ShrunkT5Config(**fields)


def convert_reference_checkpoint(source: str | os.PathLike, destination: str | os.PathLike, overwrite: bool = False):
    """
    Load a reference checkpoint (folder or hub id) and save it as a student (`config.json` + `model.safetensors`).

    Example:

    ```python
    >>> convert_reference_checkpoint("LifuWang/DistillT5", "out/distillt5-student")  # doctest: +SKIP
    ```
    """
    # Imported here: the student module itself imports this one for the format's key mapping.
    from encoder_shrink.student import ShrunkT5EncoderModel

    destination = Path(destination)
    if destination.exists() and any(destination.iterdir()) and not overwrite:
        raise FileExistsError(f"{destination} exists and is not empty; choose another folder or pass overwrite=True.")
    student = ShrunkT5EncoderModel.from_pretrained(source)
    student.save_pretrained(destination)
    return student
