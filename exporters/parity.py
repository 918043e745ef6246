"""Parity of an exported encoder with the torch student: error figures, NaN/Inf counts and the pass/fail verdict."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from encoder_shrink.errors import EncoderShrinkError

if TYPE_CHECKING:
    import numpy as np

# Tolerances per precision. fp32 graphs differ from torch only by kernel order; int8 weights cost ~1% of the
# embedding direction on T5 (measured on the tiny tests' students and on random T5-base-sized weights).
TOLERANCES = {
    "fp32": {"min_cosine": 0.99999, "max_relative_l2": 1e-4},
    # fp16 matmuls with fp32 residual stream, norms and `wo`: ~0.5% relative error measured on the tiny students.
    "fp16": {"min_cosine": 0.999, "max_relative_l2": 0.02},
    # bf16 everywhere (weights, matmuls, norms): an 8-bit mantissa, ~0.4 % per operation, measured at ~1 % relative
    # error on the tiny students and on random T5-base-sized weights at 512 tokens.
    "bf16": {"min_cosine": 0.995, "max_relative_l2": 0.05},
    "int8-dynamic": {"min_cosine": 0.98, "max_relative_l2": 0.2},
    "int8-static": {"min_cosine": 0.98, "max_relative_l2": 0.2},
}


class ExportParityError(EncoderShrinkError, RuntimeError):
    """An exported encoder whose outputs are not close enough to the torch student's (or are NaN/Inf)."""


@dataclass
class Parity:
    """How an exported encoder's outputs compare with the torch student's on the same tokens."""

    precision: str
    max_abs_error: float
    max_rel_error: float
    relative_l2: float
    min_cosine: float
    nan: int
    inf: int
    shape: list[int]
    min_cosine_required: float
    max_relative_l2_allowed: float
    passed: bool

    def to_dict(self) -> dict:
        return asdict(self)


def compare(reference: np.ndarray, exported: np.ndarray, precision: str, mask: np.ndarray | None = None) -> Parity:
    r"""
    Compare `exported` with `reference` (both `(batch, tokens, width)`); tokens where `mask` is 0 are left out
    (the denoiser never sees them), as are none when there is no mask.

    Example:

    ```python
    >>> import numpy as np
    >>> compare(np.ones((1, 2, 4)), np.ones((1, 2, 4)), "fp32").passed
    True
    ```
    """
    import numpy as np

    tolerance = TOLERANCES[precision]
    keep = np.ones(reference.shape[:2], dtype=bool) if mask is None else mask.astype(bool)
    ref = reference[keep].astype(np.float64)
    out = exported[keep].astype(np.float64)
    nan, inf = int(np.isnan(exported).sum()), int(np.isinf(exported).sum())
    finite = np.isfinite(out).all()
    diff = np.abs(out - ref) if finite else np.full_like(ref, np.inf)
    norms = np.linalg.norm(ref, axis=-1) * np.linalg.norm(out, axis=-1) if finite else np.ones(len(ref))
    cosine = (ref * out).sum(-1) / np.maximum(norms, 1e-30) if finite else np.zeros(len(ref))
    relative_l2 = float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30)) if finite else float("inf")
    min_cosine = float(cosine.min())
    passed = (
        nan == 0 and inf == 0 and min_cosine >= tolerance["min_cosine"] and relative_l2 <= tolerance["max_relative_l2"]
    )
    return Parity(
        precision=precision,
        max_abs_error=float(diff.max()),
        max_rel_error=float((diff / np.maximum(np.abs(ref), 1e-6)).max()),
        relative_l2=relative_l2,
        min_cosine=min_cosine,
        nan=nan,
        inf=inf,
        shape=list(exported.shape),
        min_cosine_required=tolerance["min_cosine"],
        max_relative_l2_allowed=tolerance["max_relative_l2"],
        passed=bool(passed),
    )


def token_batches(student, tokenizer, prompts, length: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Token batches for the parity check: real prompts when a tokenizer is known, else seeded random ids."""
    import numpy as np

    if tokenizer is not None:
        tokens = tokenizer(
            list(prompts), padding="max_length", max_length=length, truncation=True, return_tensors="np"
        )
        return [(tokens["input_ids"].astype(np.int64), tokens["attention_mask"].astype(np.int64))]
    rng = np.random.default_rng(0)
    ids = rng.integers(3, student.config.vocab_size, size=(len(prompts), length))
    lengths = rng.integers(2, length + 1, size=len(prompts))
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int64)
    return [(np.where(mask == 1, ids, 0).astype(np.int64), mask)]


class ParityCheck:
    r"""
    An export against the torch student on the parity batches, called as its pipeline calls it (with the mask only
    if the student was distilled with one): `check(graph_file)` for an ONNX graph, `check_run(run)` for any runtime
    (`run(ids, mask) -> (batch, tokens, width)` array). Both return the worst batch's figures as a dict.
    """

    def __init__(self, student, batches, precision: str):
        import numpy as np
        import torch

        self.masked = bool(student.config.use_attention_mask)
        if not self.masked:
            # Called as its pipeline calls it: every token attended (the runtime encoders pass an all-ones mask then).
            batches = [(ids, np.ones_like(mask)) for ids, mask in batches]
        self.student, self.batches, self.precision = student, batches, precision
        with torch.no_grad():
            self.references = [
                student(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask) if self.masked else None)[0]
                .float().numpy()
                for ids, mask in batches
            ]

    def check_run(self, run: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> dict:
        import numpy as np

        results = []
        for (ids, mask), reference in zip(self.batches, self.references, strict=True):
            exported = np.asarray(run(ids, mask), dtype=np.float32)
            results.append(compare(reference, exported, self.precision, mask if self.masked else None))
        return min(results, key=lambda p: p.min_cosine).to_dict()

    def check(self, graph_file: Path) -> dict:
        import onnxruntime as ort

        session = ort.InferenceSession(str(graph_file), providers=["CPUExecutionProvider"])
        return self.check_run(lambda ids, mask: session.run(None, {"input_ids": ids, "attention_mask": mask})[0])


def raise_unless_passed(checked: dict, what: str) -> None:
    """Raise [`ExportParityError`] with the figures when a parity check failed (nothing is written then)."""
    if not checked["passed"]:
        raise ExportParityError(
            f"{what} export is not close to the torch student: cosine {checked['min_cosine']:.6f} "
            f"(needs >= {checked['min_cosine_required']}), relative L2 {checked['relative_l2']:.3g} "
            f"(allowed {checked['max_relative_l2_allowed']}), NaN {checked['nan']}, Inf {checked['inf']}."
        )
