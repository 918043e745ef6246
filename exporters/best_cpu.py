"""The `best-cpu` export format: every installed CPU backend measured here, the fastest that passes parity kept."""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from encoder_shrink.exporters.formats import (
    EXPORT_KEY,
    REPORT,
    Backend,
    cpu_candidates,
    export,
    format_of,
    read_config,
    register_export_format,
)
from encoder_shrink.exporters.parity import ExportParityError

from encoder_shrink.errors import InvalidArgumentError, UnknownNameError
from encoder_shrink.files import atomic_write_text

logger = logging.getLogger(__name__)


@dataclass
class BestCPUExportConfig:
    r"""
    Options of the `best-cpu` export format: export the student to each CPU backend (each parity-checked by its own
    format), time each at the student's recorded length in its own process on this machine, and keep the fastest
    that passed. The folder is that backend's export (`load_encoder` runs it), and its report adds `best_cpu`: every
    candidate's latency, or why it was skipped or failed.

    CPUs differ (AMX, AVX-512 VNNI/BF16, AVX2), so the best backend is measured where it will run, not assumed.

    Args:
        candidates: names from `cpu_candidates()`, the backends registered as candidates (default: all of them;
            those whose package is missing are skipped with the reason).
        tokens: the encode length timed (default: the student's `max_sequence_length`, its pipeline's padded length;
            128 when it records none).
        batch / repeats / warmup: the timed encode: `batch` x `tokens` ids, median of `repeats` after `warmup`.

    Example:

    ```python
    >>> BestCPUExportConfig(candidates=("onnx-int8", "openvino")).repeats
    5
    ```
    """

    candidates: tuple[str, ...] | None = None
    tokens: int | None = None
    batch: int = 1
    repeats: int = 5
    warmup: int = 2

    def __post_init__(self):
        known = cpu_candidates()
        if self.candidates is not None:
            self.candidates = tuple(self.candidates)
            unknown = [name for name in self.candidates if name not in known]
            if unknown or not self.candidates:
                raise UnknownNameError(
                    f"candidates={list(self.candidates)!r}: choose among {', '.join(known)}."
                )
        for name in ("batch", "repeats"):
            if getattr(self, name) < 1:
                raise InvalidArgumentError(f"{name}={getattr(self, name)!r} must be >= 1.")
        if self.warmup < 0:
            raise InvalidArgumentError(f"warmup={self.warmup!r} must be >= 0.")
        if self.tokens is not None and self.tokens < 2:
            raise InvalidArgumentError(f"tokens={self.tokens!r} must be >= 2.")


def _measure(folder: Path, name: str, config: BestCPUExportConfig, tokens: int, work: Path) -> dict:
    from encoder_shrink.benchmarks.measure import run_isolated

    spec = {"kind": "encoder", "name": name, "role": "candidate", "backend": name, "device": "cpu",
            "run_device": "cpu", "dtype": "float32", "seq_len": tokens, "batch": config.batch,
            "repeats": config.repeats, "warmup": config.warmup,
            "encoder": {"kind": "folder", "path": str(folder), "providers": ["CPUExecutionProvider"]}}
    return run_isolated(spec, work)


def _export_best_cpu(student, staging: Path, config: BestCPUExportConfig, context) -> None:
    """The `best-cpu` format's handler: export and time each candidate, move the fastest into `staging`."""
    import torch
    from encoder_shrink.benchmarks.measure import cpu_info

    tokens = config.tokens or student.config.max_sequence_length or 128
    known = cpu_candidates()
    _, tokenizer = context.resolve(student)
    work = staging / ".candidates"
    work.mkdir()
    table: dict[str, dict] = {}
    for name in config.candidates or tuple(known):
        candidate = known[name]
        entry = format_of(candidate)
        reason = entry.unavailable() if entry.unavailable else None
        if reason:
            table[name] = {"status": "skipped", "reason": reason}
            continue
        folder = work / name
        try:
            # The pipeline's tokenizer makes the parity prompts; its denoiser is not run for every candidate.
            export(student, folder, candidate, tokenizer=tokenizer)
        except ExportParityError as error:
            table[name] = {"status": "failed parity", "reason": str(error)}
            continue
        figures = _measure(folder, name, config, tokens, work)
        if "error" in figures:
            table[name] = {"status": "failed to run", "reason": figures["error"]}
            continue
        report = json.loads((folder / REPORT).read_text())
        table[name] = {"status": "measured", "format": entry.name, "latency_median_s": figures["latency"]["median_s"],
                       "latency": figures["latency"], "parity": report["parity"]}
        logger.info("best-cpu: %s %.4f s at %d tokens", name, figures["latency"]["median_s"], tokens)
    measured = {name: row for name, row in table.items() if row["status"] == "measured"}
    if not measured:
        reasons = "; ".join(f"{name}: {row['reason']}" for name, row in table.items())
        raise ExportParityError(f"no CPU backend could be exported and run here ({reasons}).")
    chosen = min(measured, key=lambda name: measured[name]["latency_median_s"])
    for file in (work / chosen).iterdir():
        os.replace(file, staging / file.name)
    shutil.rmtree(work)
    fastest = measured[chosen]["latency_median_s"]
    for row in measured.values():
        row["x_fastest"] = round(row["latency_median_s"] / fastest, 3)
    cpu = cpu_info()
    selection = {
        "chosen": chosen, "tokens": tokens, "batch": config.batch, "repeats": config.repeats, "warmup": config.warmup,
        "cpu": cpu["model"], "isa": cpu["isa"], "threads": torch.get_num_threads(), "candidates": table,
    }
    report = json.loads((staging / REPORT).read_text())
    report["best_cpu"] = selection
    atomic_write_text(staging / REPORT, json.dumps(report, indent=2))
    student_config = read_config(staging)
    student_config[EXPORT_KEY]["best_cpu"] = {"chosen": chosen, "tokens": tokens,
                                              "latency_median_s": fastest}
    atomic_write_text(staging / "config.json", json.dumps(student_config, indent=2))
    logger.info("best-cpu chose %s (%.4f s at %d tokens)", chosen, fastest, tokens)


register_export_format(
    "best-cpu", BestCPUExportConfig, _export_best_cpu,
    description="every installed CPU backend exported, parity-checked and timed here; the fastest is kept",
    backends=(Backend("best-cpu", lambda options: BestCPUExportConfig(tokens=options.tokens), candidate=False),),
)

__all__ = ["BestCPUExportConfig"]
