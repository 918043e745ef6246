"""Export formats: the registry (a public config, a private handler, a runtime and named backends per format),
`export` and `load_encoder`.

This module and the format modules import no torch, transformers or runtime package at import time, so the CLI can
list the formats, backends and their descriptions cheaply; each format imports what it runs when it runs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from encoder_shrink.errors import (
    BackendUnavailableError,
    InputNotFoundError,
    InvalidArgumentError,
    OutputExistsError,
    UnknownNameError,
    WrongModelTypeError,
)
from encoder_shrink.files import atomic_dir
from encoder_shrink.registry import ConfigRegistry, Registry

logger = logging.getLogger(__name__)

# The config.json record of an export (`{"format": ..., "file": ..., ...}`) and the report written beside it.
EXPORT_KEY = "export"
REPORT = "export_report.json"


def read_config(folder: str | os.PathLike) -> dict:
    """The `config.json` of a student or export folder, or a one-line error naming what is wrong with it."""
    import json

    config_file = Path(folder) / "config.json"
    if not Path(folder).exists():
        raise InputNotFoundError(f"{folder} does not exist; pass a folder written by save_pretrained or "
                                 "encoder-shrink export.")
    if not config_file.is_file():
        raise InvalidArgumentError(f"{folder} is not a student folder (no config.json); pass a folder written by "
                                   "save_pretrained or encoder-shrink export.")
    try:
        return json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise InvalidArgumentError(
            f"{config_file} is not valid JSON ({error.msg}); re-save or re-export the student."
        ) from None


@dataclass
class ExportContext:
    """What a format's handler gets besides the student and its config: the pipeline and tokenizer, when given."""

    pipeline: Any = None
    tokenizer: Any = None
    output_dir: Path | None = None  # the final folder (the handler writes into a staging folder renamed onto it)

    def resolve(self, student):
        """
        The pipeline's adapter (checked against `student`; None without a pipeline) and the tokenizer that makes the
        parity prompts: the one given, else the pipeline's, else None (seeded random ids).
        """
        if self.pipeline is None:
            return None, self.tokenizer
        from encoder_shrink.compat import check_compatible

        adapter = check_compatible(self.pipeline, student)
        return adapter, self.tokenizer or adapter.tokenizer


@dataclass(frozen=True)
class BackendOptions:
    """
    What a named backend's export config is made for: the encode length it serves (`tokens`; None: the format's
    defaults), the batch, the device the pipeline runs on, and a work folder for caches (TensorRT's timing cache).
    """

    tokens: int | None = None
    batch: int = 1
    device: str = "cpu"
    work: Path | None = None

    @property
    def gpu(self) -> bool:
        return self.device.startswith("cuda")


@dataclass(frozen=True)
class Backend:
    r"""
    One named way to run a student, as `bench --backends`, `best-cpu` and `cpu_limit` name it: a registered format's
    config made for the [`BackendOptions`] at hand.

    Args:
        name: the backend's name (`"onnx-int8"`); unique across formats.
        config: `config(options) -> export config` of its format.
        on_cpu: it runs on the CPU whatever the pipeline's device (its output goes to the device).
        candidate: `best-cpu` and the CPU sweep choose among it.
    """

    name: str
    config: Callable[[BackendOptions], Any]
    on_cpu: bool = True
    candidate: bool = True


@dataclass(frozen=True)
class ExportFormat:
    r"""
    One registered export format.

    Args:
        name: what `encoder-shrink export --format NAME` and the `export.format` record of config.json call it.
        config_class: the public config dataclass of its options (validated in `__post_init__`).
        handler: `handler(student, staging, config, context)` writes the export into the folder `staging` (renamed
            onto the output folder when it returns; removed when it raises), `config.json` with an `export` record
            `{"format": name, ...}` included, and checks it against the torch student.
        runtime: the class that runs its folders outside torch's student: `_load(folder, config, info, **kwargs)`
            and `_run(input_ids, attention_mask)` over [`~encoder_shrink.exporters.runtime.ExportedEncoder`], one
            class for every student kind (`encoder_class(kind)` combines them); None when the torch student loads
            the folders.
        description: one line for `--help` and the docs.
        unavailable: `() -> str | None`, why the format cannot run here (a missing package or GPU), checked before
            anything is written.
        backends: the named backends of the format ([`Backend`]).
    """

    name: str
    config_class: type
    handler: Callable[..., None]
    runtime: type | None = None
    description: str = ""
    unavailable: Callable[[], str | None] | None = None
    backends: tuple[Backend, ...] = ()

    def encoder_class(self, kind) -> type | None:
        """The runtime encoder class for students of `kind` (a student kind or its name), or None (torch student)."""
        if self.runtime is None:
            return None
        from encoder_shrink.exporters.runtime import encoder_class

        return encoder_class(self.runtime, kind)


EXPORT_FORMATS: ConfigRegistry[ExportFormat] = ConfigRegistry("export format")
BACKENDS: Registry[Backend] = Registry("backend")


def register_export_format(name: str, config_class: type, handler: Callable[..., None], *,
                           runtime: type | None = None, description: str = "",
                           unavailable: Callable[[], str | None] | None = None,
                           backends: tuple[Backend, ...] = ()) -> ExportFormat:
    r"""
    Register an export format: its config class, its handler, its runtime and its named backends, one call next to
    their definition. A taken name, config class or backend name raises.

    Example:

    ```python
    >>> register_export_format("my-format", MyExportConfig, _export_my_format, runtime=MyRuntime,
    ...                        backends=(Backend("my-format", lambda options: MyExportConfig()),))  # doctest: +SKIP
    ```
    """
    taken = [backend.name for backend in backends if backend.name in BACKENDS]
    if taken:
        raise InvalidArgumentError(f"export format {name!r}: backend {taken[0]!r} is already registered.")
    entry = EXPORT_FORMATS.register(name, ExportFormat(name, config_class, handler, runtime, description,
                                                       unavailable, tuple(backends)))
    for backend in backends:
        BACKENDS.register(backend.name, backend)
    return entry


def get_format(name: str) -> ExportFormat:
    """The registered export format `name`."""
    return EXPORT_FORMATS.get(name)


def format_of(config) -> ExportFormat:
    """The registered format whose config class `config` is an instance of."""
    return EXPORT_FORMATS.of(config)


def registered_formats() -> list[str]:
    """Names of the registered export formats, e.g. `['distillt5', 'onnx', 'tensorrt']`."""
    return EXPORT_FORMATS.names()


def registered_backends() -> list[str]:
    """Names of the registered backends, in registration order (`['onnx', 'onnx-int8', ...]`)."""
    return BACKENDS.names()


def get_backend(name: str) -> Backend:
    """The registered backend `name`."""
    return BACKENDS.get(name)


def backend_format(name: str) -> ExportFormat:
    """The export format the backend `name` belongs to."""
    backend = BACKENDS.get(name)
    return next(entry for entry in EXPORT_FORMATS.values() if backend in entry.backends)


def cpu_candidates(options: BackendOptions | None = None) -> dict[str, Any]:
    r"""
    The CPU backends `best-cpu` chooses among, by name, each a registered format's config (made for `options`; default:
    the formats' own defaults): every backend registered with `candidate=True`.

    Example:

    ```python
    >>> from encoder_shrink.exporters import cpu_candidates
    >>> sorted(cpu_candidates())[:2]
    ['onnx', 'onnx-fused']
    ```
    """
    options = options or BackendOptions()
    return {backend.name: backend.config(options) for backend in BACKENDS.values() if backend.candidate}


def config_from_options(name: str, options: dict[str, Any], flags: dict[str, str] | None = None):
    """
    The config of format `name` built from command-line options (those left at None are not given); an option the
    format does not take raises, naming its flag. A config class may define `from_options(options)` to route options
    itself (TensorRT passes the ONNX ones on to its ONNX export).
    """
    config_class = get_format(name).config_class
    given = {key: value for key, value in options.items() if value is not None}
    if hasattr(config_class, "from_options"):
        return config_class.from_options(given, flags or {})
    fields = {f.name for f in dataclasses.fields(config_class)}
    unused = [key for key in given if key not in fields]
    if unused:
        names = ", ".join((flags or {}).get(key, key) for key in unused)
        raise InvalidArgumentError(f"{names} does not apply to --format {name}; drop it or choose another format.")
    return config_class(**given)


def as_student(student):
    """A student model from a model or a folder (our format or the reference's), in fp32 eval mode."""
    import torch

    from encoder_shrink.student import StudentMixin, load_student

    if not isinstance(student, torch.nn.Module):
        student = load_student(student)
    if not isinstance(student, StudentMixin):
        raise WrongModelTypeError(
            f"export needs a torch student (ShrunkT5EncoderModel, ShrunkUMT5EncoderModel or the folder of one), got "
            f"{type(student).__name__}."
        )
    return student.float().eval()


def export(student, output_dir: str | os.PathLike, config=None, *, format: str | None = None, pipeline=None,
           tokenizer=None, overwrite: bool = False) -> Path:
    r"""
    Export a student to `output_dir` in the format its `config` belongs to (or `format`, with that format's default
    config), checked against the torch student, and written atomically: a failed export leaves nothing behind.

    Args:
        student: a [`ShrunkT5EncoderModel`] or the folder of one (the reference checkpoint format included).
        output_dir: the folder to create; it must not exist (or be empty) unless `overwrite`.
        config: a registered format's config, e.g. `OnnxExportConfig(int8="dynamic")`, `DistillT5ExportConfig()`.
        format: a registered format name, when `config` is None.
        pipeline / tokenizer: the student's pipeline (its tokenizer then makes the parity prompts, and formats that
            can report the denoiser error the export causes do) or a tokenizer.

    Example:

    ```python
    >>> from encoder_shrink.exporters import OnnxExportConfig, export
    >>> export("out/student", "out/student-int8", OnnxExportConfig(int8="dynamic"))  # doctest: +SKIP
    ```
    """
    if config is None:
        if format is None:
            raise InvalidArgumentError(
                f"export needs a config or a format name; registered formats: {', '.join(registered_formats())}."
            )
        config = get_format(format).config_class()
    entry = format_of(config)
    if format is not None and format != entry.name:
        raise InvalidArgumentError(f"format={format!r} but the config is a {entry.name!r} config; pass one of them.")
    reason = entry.unavailable() if entry.unavailable else None
    if reason:
        raise BackendUnavailableError(f"cannot export to {entry.name}: {reason}")
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise OutputExistsError(f"{output_dir} exists and is not empty; choose another folder or pass overwrite=True.")
    student = as_student(student)
    context = ExportContext(pipeline=pipeline, tokenizer=tokenizer, output_dir=output_dir)
    with atomic_dir(output_dir) as staging:
        entry.handler(student, staging, config, context)
        if EXPORT_KEY not in read_config(staging):
            raise WrongModelTypeError(f"export format {entry.name!r} wrote no export record into config.json.")
    logger.info("Exported %s (%s).", output_dir, entry.name)
    return output_dir


def load_encoder(path: str | os.PathLike, **kwargs):
    r"""
    The encoder a folder holds, by the `export` record of its config.json: the torch student (a saved student, a
    reference checkpoint, a `distillt5` export), an ONNX Runtime encoder, a TensorRT encoder, or the runtime encoder
    of any registered format. Each loads drop-in into a pipeline's T5 slot.

    Example:

    ```python
    >>> from encoder_shrink import load_encoder
    >>> encoder = load_encoder("out/student-onnx")  # doctest: +SKIP
    ```
    """
    from encoder_shrink.student import load_student

    folder = Path(path)
    record = read_config(folder).get(EXPORT_KEY) or {}
    if not record:
        return load_student(folder, **kwargs)
    if record.get("format") not in EXPORT_FORMATS:
        raise UnknownNameError(
            f"{folder} holds a {record.get('format')!r} export, which this version cannot run (registered formats: "
            f"{', '.join(registered_formats())})."
        )
    entry = get_format(record["format"])
    if entry.runtime is None:
        return load_student(folder, **kwargs)
    from encoder_shrink.exporters.runtime import ExportedEncoder

    return ExportedEncoder.load(folder, entry.runtime, **kwargs)


__all__ = [
    "BACKENDS",
    "EXPORT_FORMATS",
    "EXPORT_KEY",
    "REPORT",
    "Backend",
    "BackendOptions",
    "ExportContext",
    "ExportFormat",
    "as_student",
    "backend_format",
    "config_from_options",
    "cpu_candidates",
    "export",
    "format_of",
    "get_backend",
    "get_format",
    "load_encoder",
    "read_config",
    "register_export_format",
    "registered_backends",
    "registered_formats",
]
