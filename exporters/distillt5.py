"""The `distillt5` export format: a student as one safetensors file in the reference implementation's layout.

The reference (`T5EncoderWithProjection` of DistillT5) wraps a whole `T5EncoderModel` as `encoder` and adds
`final_projection`; its ComfyUI node reads the same keys from one file. Other tools that know that layout (ComfyUI,
and through it kohya's scripts and stable-diffusion.cpp users) can then load a student made here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from encoder_shrink.exporters.formats import EXPORT_KEY, REPORT, register_export_format
from encoder_shrink.exporters.parity import ExportParityError, compare

from encoder_shrink.errors import InvalidArgumentError, WrongModelTypeError
from encoder_shrink.files import atomic_write_text

WEIGHTS_FILE = "model.safetensors"
# The dtypes the file may hold, by their torch names.
DTYPES = ("float32", "bfloat16", "float16")
# The tolerance an export in each dtype is held to against the fp32 student (fp32: the same numbers, bit for bit).
PRECISIONS = {"float32": "fp32", "bfloat16": "fp16", "float16": "fp16"}
# Our config keys that are not T5 fields; they stay out of the reference config except the record of what the
# student replaces, which the reference class ignores and `convert` reads back.
_OURS = ("teacher_dim", "projector_dropout")


@dataclass
class DistillT5ExportConfig:
    r"""
    Options of the `distillt5` export format.

    Args:
        dtype: the dtype of the weights in the file (`"float32"`, `"bfloat16"` or `"float16"`); the smaller ones
            halve the file and are checked against the fp32 student with the fp16 tolerance.

    Example:

    ```python
    >>> DistillT5ExportConfig(dtype="bfloat16").dtype
    'bfloat16'
    ```
    """

    dtype: str = "float32"

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise InvalidArgumentError(f"dtype={self.dtype!r} is not supported; use one of {', '.join(DTYPES)}.")


def reference_state_dict(student) -> dict:
    """The student's weights under the reference's keys (`encoder.shared.weight`, `encoder.encoder.*`, projector)."""
    state = {}
    for name, tensor in student.state_dict().items():
        if name == "encoder.embed_tokens.weight":
            continue  # tied to `shared.weight`, stored once as the reference's saved files do
        key = f"encoder.{name}" if name.startswith(("shared.", "encoder.")) else name
        state[key] = tensor.detach().contiguous()
    return state


def reference_config(student) -> dict:
    """The reference's config.json: the T5 fields, `project_in_dim`/`project_out_dim` (and `out_dim`, the key the
    reference's config class reads the output width from), and our record of what the student replaces."""
    from encoder_shrink.configuration import NON_FIELD_KEYS
    from encoder_shrink.reference import REFERENCE_ARCHITECTURE

    config = {k: v for k, v in student.config.to_dict().items() if k not in (*NON_FIELD_KEYS, *_OURS, EXPORT_KEY)}
    width = student.config.teacher_dim
    config.update(architectures=[REFERENCE_ARCHITECTURE], model_type="t5", project_in_dim=student.config.d_model,
                  project_out_dim=width, out_dim=width)
    return config


def reference_layout(config: dict):
    """The reference's module layout from its config: a whole `T5EncoderModel` as `encoder`, then the projector."""
    from torch import nn
    from transformers import T5Config, T5EncoderModel

    class ReferenceLayout(nn.Module):
        def __init__(self):
            super().__init__()
            fields = {k: v for k, v in config.items() if k not in ("architectures", "model_type", EXPORT_KEY)}
            self.encoder = T5EncoderModel(T5Config(**fields))
            width, out = config["project_in_dim"], config["project_out_dim"]
            self.final_projection = nn.Sequential(nn.Linear(width, out, bias=False), nn.ReLU(), nn.Dropout(0.1),
                                                  nn.Linear(out, out, bias=False))

        def forward(self, input_ids, attention_mask=None):
            return self.final_projection(self.encoder(input_ids, attention_mask=attention_mask).last_hidden_state)

    return ReferenceLayout()


def _check(student, folder: Path, dtype: str) -> dict:
    """The written file read back into the reference's layout (strictly) and run next to the student."""
    import numpy as np
    import torch
    from safetensors.torch import load_file

    config = json.loads((folder / "config.json").read_text())
    reference = reference_layout(config).eval()
    state = {k: v.float() for k, v in load_file(folder / WEIGHTS_FILE).items()}
    state["encoder.encoder.embed_tokens.weight"] = state["encoder.shared.weight"]
    reference.load_state_dict(state, strict=True)
    generator = torch.Generator().manual_seed(0)
    length = student.config.max_sequence_length or 64
    ids = torch.randint(3, student.config.vocab_size, (4, length), generator=generator)
    mask = (torch.arange(length)[None] < torch.tensor([[length], [length // 2], [5], [2]])).long()
    ids = ids * mask
    with torch.no_grad():
        expected = student(ids, attention_mask=mask)[0].float().numpy()
        written = reference(ids, attention_mask=mask).float().numpy()
    result = compare(expected, written, PRECISIONS[dtype], mask.numpy()).to_dict()
    result["bit_identical"] = bool(np.array_equal(expected, written))
    return result


def _export_distillt5(student, staging: Path, config: DistillT5ExportConfig, context) -> None:
    """The `distillt5` format's handler: one safetensors file, its config, checked through the reference layout."""
    import torch
    from safetensors.torch import save_file

    from encoder_shrink.reference import REFERENCE_ARCHITECTURE

    if student.config.model_type != "shrunk_t5":
        raise WrongModelTypeError(
            f"the distillt5 layout holds T5 students; this is a {type(student).__name__}: export it with "
            "--format onnx."
        )
    state = {k: v.to(getattr(torch, config.dtype)) for k, v in reference_state_dict(student).items()}
    save_file(state, staging / WEIGHTS_FILE, metadata={"format": "pt"})
    record = {"format": "distillt5", "file": WEIGHTS_FILE, "dtype": config.dtype}
    atomic_write_text(staging / "config.json", json.dumps({**reference_config(student), EXPORT_KEY: record}, indent=2))
    parity = _check(student, staging, config.dtype)
    if not parity["passed"]:
        raise ExportParityError(
            f"distillt5 export in {config.dtype} does not reproduce the student: cosine {parity['min_cosine']:.6f}, "
            f"relative L2 {parity['relative_l2']:.3g}, NaN {parity['nan']}, Inf {parity['inf']}."
        )
    report = {"precision": config.dtype, "layout": REFERENCE_ARCHITECTURE, "keys": len(state), "parity": parity,
              "bytes": {"safetensors": (staging / WEIGHTS_FILE).stat().st_size}}
    atomic_write_text(staging / REPORT, json.dumps(report, indent=2))


register_export_format(
    "distillt5", DistillT5ExportConfig, _export_distillt5,
    description="one safetensors file in the reference (DistillT5 / ComfyUI node) layout, read back and checked",
)

__all__ = ["DistillT5ExportConfig", "reference_config", "reference_layout", "reference_state_dict"]
