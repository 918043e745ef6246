"""The `openvino` export format: the student's ONNX graph converted to OpenVINO IR (int8 or fp32), parity-checked."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from encoder_shrink.exporters.formats import EXPORT_KEY, REPORT, Backend, export, read_config, register_export_format
from encoder_shrink.exporters.onnx_export import OnnxExportConfig, denoiser_error, load_report
from encoder_shrink.exporters.parity import ParityCheck, raise_unless_passed, token_batches

from encoder_shrink.errors import InvalidArgumentError
from encoder_shrink.files import atomic_write_text

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

IR_FILE = "model.xml"
# OpenVINO's CPU plugin computes in these; None leaves it to the plugin (bf16 where the CPU has bf16 kernels).
PRECISION_HINTS = (None, "f32", "bf16")


def _openvino_unavailable() -> str | None:
    missing = [m for m in ("openvino", "onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
    return f"{', '.join(missing)} not installed (pip install 'encoder-shrink[openvino]')" if missing else None


def _compile(xml: Path, hint: str | None):
    """The IR compiled for the CPU, tuned for one request at a time (an encoder serves one prompt batch)."""
    import openvino as ov

    properties = {"PERFORMANCE_HINT": "LATENCY"}
    if hint is not None:
        properties["INFERENCE_PRECISION_HINT"] = hint
    return ov.Core().compile_model(str(xml), "CPU", properties)


class OpenVINOEncoder:
    r"""
    The `openvino` format's runtime: a student run by OpenVINO's CPU plugin, usable wherever the torch student is
    (no torch weights). It runs on the CPU and returns embeddings on the device and in the dtype set with `.to()`.

    Example:

    ```python
    >>> encoder = load_encoder("out/student-openvino")  # doctest: +SKIP
    >>> pipe = PixArtSigmaPipeline.from_pretrained(repo, text_encoder=encoder)  # doctest: +SKIP
    ```
    """

    format = "openvino"

    def __init__(self, config, compiled=None, folder=None):
        super().__init__(config, folder=folder)
        self.compiled = compiled
        self.request = compiled.create_infer_request() if compiled is not None else None

    @classmethod
    def _load(cls, folder, config, info, **kwargs):
        return cls(config, compiled=_compile(folder / info["file"], info.get("inference_precision")), folder=folder)

    def _run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        import numpy as np
        import torch

        feeds = {"input_ids": input_ids.detach().cpu().numpy().astype(np.int64),
                 "attention_mask": attention_mask.detach().cpu().numpy().astype(np.int64)}
        output = self.request.infer(feeds)
        return torch.from_numpy(np.array(output[self.compiled.output(0)], dtype=np.float32))


@dataclass
class OpenVINOExportConfig:
    r"""
    Options of the `openvino` export format: the student is exported to ONNX with `onnx` and converted to OpenVINO IR
    (`model.xml` + `model.bin`), which OpenVINO's CPU plugin (made for Intel CPUs: VNNI and AMX int8, bf16) runs.

    Args:
        int8: int8 weights and activations: the ONNX export is the calibrated QDQ graph (`int8="static"`, with its
            measured choice of sensitive layers), which OpenVINO runs with int8 kernels. False: fp32 weights.
        inference_precision: the CPU plugin's `INFERENCE_PRECISION_HINT` for what is not int8: `"f32"` (default),
            `"bf16"`, or None for the plugin's own choice (bf16 on CPUs with bf16 kernels). Measured here on a
            Xeon with AVX-512 BF16 but no AMX, T5-base at 512 tokens: f32 240 ms against bf16 305 ms.
        onnx: the options of the ONNX export the IR is converted from (its `int8` is set from `int8`).

    Example:

    ```python
    >>> OpenVINOExportConfig(int8=False).onnx.int8 is None
    True
    ```
    """

    int8: bool = True
    inference_precision: str | None = "f32"
    onnx: OnnxExportConfig = field(default_factory=OnnxExportConfig)

    def __post_init__(self):
        if self.int8 not in (True, False):
            raise InvalidArgumentError(f"int8={self.int8!r} must be True or False.")
        if self.inference_precision not in PRECISION_HINTS:
            raise InvalidArgumentError(
                f"inference_precision={self.inference_precision!r} is not supported; use 'f32', 'bf16' or None."
            )
        if self.onnx.fp16 or self.onnx.optimize:
            raise InvalidArgumentError("the OpenVINO export converts a plain fp32 or int8 ONNX graph; drop fp16 and "
                                       "optimize from its onnx options.")
        wanted = "static" if self.int8 else None
        if self.onnx.int8 not in (None, wanted):
            raise InvalidArgumentError(f"onnx.int8={self.onnx.int8!r} disagrees with int8={self.int8!r}; OpenVINO "
                                       "runs the static (QDQ) int8 graph: set int8 only.")
        self.onnx = dataclasses.replace(self.onnx, int8=wanted)

    @classmethod
    def from_options(cls, options: dict, flags: dict) -> OpenVINOExportConfig:
        """
        Command-line options: `--int8 none` for fp32 weights (int8 otherwise, the default), and the ONNX ones for the
        graph the IR comes from.
        """
        onnx_fields = {f.name for f in dataclasses.fields(OnnxExportConfig)} - {"int8", "fp16", "optimize"}
        unused = [key for key in options if key not in onnx_fields | {"int8"}]
        if unused:
            names = ", ".join(flags.get(key, key) for key in unused)
            raise InvalidArgumentError(f"{names} does not apply to --format openvino; drop it.")
        onnx = OnnxExportConfig(**{k: v for k, v in options.items() if k in onnx_fields})
        return cls(int8=options.get("int8", "static") != "none", onnx=onnx)

    @property
    def precision(self) -> str:
        return "int8-static" if self.int8 else "fp32"


def _export_openvino(student, staging: Path, config: OpenVINOExportConfig, context) -> None:
    """The `openvino` format's handler: the ONNX export in a temporary folder, its IR into `staging`, parity."""
    import openvino as ov
    import torch
    from encoder_shrink.exporters.runtime import encoder_class

    from encoder_shrink.student_kinds import kind_of_student

    length = student.config.max_sequence_length or 128
    adapter, tokenizer = context.resolve(student)
    with tempfile.TemporaryDirectory(dir=staging.parent) as tmp:
        # Without the pipeline: the denoiser error is measured below with the OpenVINO encoder itself.
        onnx_dir = export(student, Path(tmp) / "onnx", config.onnx, tokenizer=tokenizer)
        onnx_report = load_report(onnx_dir)
        onnx_record = read_config(onnx_dir)[EXPORT_KEY]
        # Weights stay as the graph has them (fp32, or int8 with their scales): no fp16 compression of the IR.
        ov.save_model(ov.convert_model(str(onnx_dir / onnx_record["file"])), str(staging / IR_FILE),
                      compress_to_fp16=False)
    runtime = encoder_class(OpenVINOEncoder, kind_of_student(student))
    compiled = _compile(staging / IR_FILE, config.inference_precision)
    encoder = runtime(student.config, compiled=compiled)
    encoder.trim_padding = False  # the parity batches compare every position the torch student encodes
    parity = ParityCheck(student, token_batches(student, tokenizer, config.onnx.prompts, length), config.precision)
    checked = parity.check_run(lambda ids, mask: encoder(torch.from_numpy(ids),
                                                         attention_mask=torch.from_numpy(mask))[0].numpy())
    raise_unless_passed(checked, f"OpenVINO {config.precision}")
    report = {
        "precision": config.precision, "inference_precision": config.inference_precision,
        "openvino_version": ov.get_version(), "checked_sequence_length": length, "parity": checked,
        "prompts": onnx_report["prompts"], "onnx": {k: v for k, v in onnx_report.items() if k != "bytes"},
        "bytes": {"ir": sum(f.stat().st_size for f in staging.iterdir())},
    }
    if adapter is not None:
        encoder.trim_padding = True  # as the pipeline will run it
        report["denoiser"] = denoiser_error(adapter, student, encoder, config.onnx.prompts, length,
                                            config.onnx.resolution, config.onnx.denoiser_steps)
    atomic_write_text(staging / REPORT, json.dumps(report, indent=2))
    student_config = student.config.to_dict()
    student_config[EXPORT_KEY] = {"format": "openvino", "file": IR_FILE, "precision": config.precision,
                                  "inference_precision": config.inference_precision,
                                  "max_tokens": config.onnx.max_tokens, "parity_cosine": checked["min_cosine"]}
    atomic_write_text(staging / "config.json", json.dumps(student_config, indent=2))
    logger.info("OpenVINO export (%s): %s", config.precision, checked)


def _openvino_config(options, int8: bool) -> OpenVINOExportConfig:
    """An OpenVINO config for a backend: the ONNX graph it converts accepts at least 64 tokens."""
    onnx = OnnxExportConfig() if options.tokens is None else OnnxExportConfig(max_tokens=max(options.tokens, 64))
    return OpenVINOExportConfig(int8=int8, onnx=onnx)


register_export_format(
    "openvino", OpenVINOExportConfig, _export_openvino, runtime=OpenVINOEncoder, unavailable=_openvino_unavailable,
    description="OpenVINO IR (int8 or fp32) converted from the ONNX export, run by OpenVINO's CPU plugin",
    backends=(Backend("openvino", lambda options: _openvino_config(options, int8=True)),
              Backend("openvino-fp32", lambda options: _openvino_config(options, int8=False))),
)

__all__ = ["OpenVINOEncoder", "OpenVINOExportConfig"]
