"""Parity of an exported encoder with the torch student: error figures, NaN/Inf counts and the pass/fail verdict."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from encoder_shrink.errors import EncoderShrinkError

# Tolerances per precision. fp32 graphs differ from torch only by kernel order; int8 weights cost ~1% of the
# embedding direction on T5 (measured on the tiny tests' students and on random T5-base-sized weights).
TOLERANCES = {
    "fp32": {"min_cosine": 0.99999, "max_relative_l2": 1e-4},
    # fp16 matmuls with fp32 residual stream, norms and `wo`: ~0.5% relative error measured on the tiny students.
    "fp16": {"min_cosine": 0.999, "max_relative_l2": 0.02},
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
    >>> compare(np.ones((1, 2, 4)), np.ones((1, 2, 4)), "fp32").passed
    True
    ```
    """
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
