"""The `torch-bf16` export format: the torch student in bf16 on the CPU (optionally compiled), parity-checked."""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from encoder_shrink.exporters.formats import EXPORT_KEY, REPORT, Backend, register_export_format
from encoder_shrink.exporters.parity import ParityCheck, raise_unless_passed, token_batches

from encoder_shrink.errors import InvalidArgumentError
from encoder_shrink.files import atomic_write_text

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"


class TorchBF16Encoder:
    r"""
    The `torch-bf16` format's runtime: a student run by torch in bf16 on the CPU (compiled with `torch.compile` when
    its export says so), usable wherever the torch student is. Like the other runtime encoders it stays where it is
    (a CPU-resident encoder) and returns embeddings on the device and in the dtype set with `.to()`, so an fp32 or
    GPU pipeline takes it as it is.

    Example:

    ```python
    >>> encoder = load_encoder("out/student-bf16")  # doctest: +SKIP
    >>> pipe = PixArtSigmaPipeline.from_pretrained(repo, text_encoder=encoder)  # doctest: +SKIP
    ```
    """

    format = "torch-bf16"

    def __init__(self, config, module: torch.nn.Module | None = None, folder=None, compiled: bool = False):
        import torch

        super().__init__(config, folder=folder)
        # Kept out of the module tree: the runtime encoder has no parameters of its own to move or count, like an
        # ONNX or TensorRT encoder.
        self.__dict__["_module"] = module
        self.__dict__["_call"] = torch.compile(module, dynamic=True) if compiled and module is not None else module

    @classmethod
    def _load(cls, folder, config, info, **kwargs):
        import torch

        from encoder_shrink.student import load_student

        module = load_student(folder, dtype=torch.bfloat16).eval()
        return cls(config, module=module, folder=folder, compiled=bool(info.get("compiled")))

    def _run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        import torch

        mask = attention_mask.cpu() if self.config.use_attention_mask else None
        with torch.inference_mode():
            return self._call(input_ids.cpu(), attention_mask=mask)[0].float()


@dataclass
class TorchBF16ExportConfig:
    r"""
    Options of the `torch-bf16` export format: the student's weights in bf16 (`model.safetensors`), run by torch on
    the CPU. bf16 pays on CPUs with AMX or AVX-512 BF16 matrix kernels; `encoder-shrink export --format best-cpu`
    measures whether it does where it runs.

    Args:
        compile: run it through `torch.compile(dynamic=True)` (inductor; needs a C++ compiler). The first encode
            at a new length then compiles (seconds to minutes); later ones are faster where the fused kernels pay.
        prompts: the parity prompts (tokenized with the pipeline's or given tokenizer; seeded random ids without one).
        resolution / denoiser_steps: with a pipeline, the report adds the denoiser-output relative error the export
            causes along teacher trajectories of `denoiser_steps` steps at `resolution` px.

    Example:

    ```python
    >>> TorchBF16ExportConfig(compile=True).compile
    True
    ```
    """

    compile: bool = False
    prompts: tuple[str, ...] | None = None
    resolution: int = 512
    denoiser_steps: int = 4

    def __post_init__(self):
        if self.compile not in (True, False):
            raise InvalidArgumentError(f"compile={self.compile!r} must be True or False.")


def _export_torch_bf16(student, staging: Path, config: TorchBF16ExportConfig, context) -> None:
    """The `torch-bf16` format's handler: bf16 weights, a parity check of the runtime encoder, the export record."""
    import torch
    from encoder_shrink.exporters.onnx_export import DEFAULT_PROMPTS, denoiser_error
    from encoder_shrink.exporters.runtime import encoder_class

    from encoder_shrink.student_kinds import kind_of_student

    length = student.config.max_sequence_length or 128
    adapter, tokenizer = context.resolve(student)
    parity = ParityCheck(student, token_batches(student, tokenizer, config.prompts or DEFAULT_PROMPTS, length), "bf16")
    module = copy.deepcopy(student).to(torch.bfloat16).eval()
    module.save_pretrained(staging)
    record = {"format": "torch-bf16", "file": WEIGHTS_FILE, "precision": "bf16", "compiled": config.compile}
    student_config = json.loads((staging / "config.json").read_text())
    student_config[EXPORT_KEY] = record
    runtime = encoder_class(TorchBF16Encoder, kind_of_student(student))
    encoder = runtime(runtime.config_class.from_dict(student_config), module=module, compiled=config.compile)
    encoder.trim_padding = False  # the parity batches compare every position the torch student encodes
    checked = parity.check_run(lambda ids, mask: encoder(torch.from_numpy(ids),
                                                         attention_mask=torch.from_numpy(mask))[0].numpy())
    raise_unless_passed(checked, "bf16")
    record["parity_cosine"] = checked["min_cosine"]
    report = {"precision": "bf16", "compiled": config.compile, "checked_sequence_length": length,
              "prompts": "tokenized prompts" if tokenizer is not None else "random token ids (no tokenizer given)",
              "parity": checked, "bytes": {"torch_weights": (staging / WEIGHTS_FILE).stat().st_size}}
    if adapter is not None:
        encoder.trim_padding = True  # as the pipeline will run it
        report["denoiser"] = denoiser_error(adapter, student, encoder, config.prompts or DEFAULT_PROMPTS, length,
                                            config.resolution, config.denoiser_steps)
    atomic_write_text(staging / REPORT, json.dumps(report, indent=2))
    atomic_write_text(staging / "config.json", json.dumps(student_config, indent=2))
    logger.info("torch bf16 export%s: %s", " (compiled)" if config.compile else "", checked)


register_export_format(
    "torch-bf16", TorchBF16ExportConfig, _export_torch_bf16, runtime=TorchBF16Encoder,
    description="the torch student in bf16 on the CPU (optionally torch.compile'd), parity-checked",
    backends=(Backend("torch-bf16", lambda options: TorchBF16ExportConfig()),
              Backend("torch-bf16-compiled", lambda options: TorchBF16ExportConfig(compile=True))),
)

__all__ = ["TorchBF16Encoder", "TorchBF16ExportConfig"]
