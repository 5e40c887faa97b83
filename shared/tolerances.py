"""The one tolerance table of trigpt's parity checks, used by the tests and by `trigpt compare`.

Each tolerance is relative to the largest magnitude of the expected tensor, so an element
near zero is judged on the tensor's scale, not on its own:
    max |actual - expected| <= rtol * max(|expected|) + atol
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Name -> (rtol, atol, reason). Tests pick a row by name; none loosens a row in place.
TOLERANCES: dict[str, tuple[float, float, str]] = {
    "float64": (
        1e-10, 0.0,
        "float64 carries about 16 digits; different summation orders across frameworks "
        "cost a few hundred ulps through a dozen layers, far below 1e-10",
    ),
    "float32": (
        5e-6, 0.0,
        "float32 carries about 7 digits, and matmul blocking and fused kernels differ between "
        "MKL, XLA and OpenBLAS. Measured worst cases: 2.3e-7 on the parity matrix, 1.3e-6 on "
        "GPT-2 small's shape against transformers; 5e-6 keeps about 4x margin over the latter",
    ),
    "float32-grad": (
        1e-5, 0.0,
        "gradients pass through about twice as many operations as the forward, and the smallest "
        "ones (LayerNorm shifts) are relatively noisier. Measured worst cases: 8.1e-7 on the "
        "parity matrix, 9.6e-7 on the tiny preset at 4 x 128 tokens; 1e-5 keeps 10x margin",
    ),
    "finite-difference": (
        1e-6, 0.0,
        "central differences with h = 1e-6 in float64 have truncation error O(h^2) and "
        "rounding error O(eps/h), about 1e-10 relative, well below 1e-6",
    ),
    "kv-cache-float64": (
        1e-12, 0.0,
        "the cached step computes the same sums as a full forward, only in another grouping",
    ),
    "adamw-float64": (
        1e-9, 0.0,
        "ten AdamW steps divide by sqrt(v) + eps, which amplifies float64 rounding of "
        "near-zero gradients; 1e-9 relative still catches any wrong hyperparameter",
    ),
    "loss-curve-float32": (
        2e-5, 0.0,
        "20 AdamW steps of a tiny model from the same init and batches; float32 rounding of "
        "each forward and gradient carries into the next step, and the three backends measured "
        "at most 1.7e-7 apart (2 layers, d_model 32); 2e-5 still catches a missing weight "
        "decay, which moves the curve by 7e-5",
    ),
    "loss-curve-float64": (
        1e-12, 0.0,
        "20 float64 AdamW steps differ only by summation order (measured at most 3.2e-16 "
        "between backends); a 10% change of weight decay or of eps moves the curve by 6e-6 or more",
    ),
}


def tolerance(name: str) -> tuple[float, float]:
    """Return (rtol, atol) of a named row of TOLERANCES."""
    rtol, atol, _ = TOLERANCES[name]
    return rtol, atol


@dataclass(frozen=True)
class Difference:
    """How far one tensor is from another, measured on the expected tensor's scale."""

    max_abs: float
    max_rel: float  # max_abs / max(|expected|)
    index: tuple[int, ...]  # index of the element with the largest absolute difference
    actual: float
    expected: float
    scale: float  # max(|expected|)

    def within(self, rtol: float, atol: float) -> bool:
        return self.max_abs <= rtol * self.scale + atol


def measure_difference(actual: object, expected: object) -> Difference:
    """Measure actual against expected; both must have the same shape. NaN counts as infinitely far."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise ValueError(f"shape {actual.shape} differs from expected shape {expected.shape}")
    if actual.size == 0:
        return Difference(0.0, 0.0, (), 0.0, 0.0, 0.0)
    difference = np.abs(actual - expected)
    difference = np.where(np.isnan(difference), np.inf, difference)
    scale = float(np.max(np.abs(expected)))
    worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(difference)), difference.shape))
    max_abs = float(difference[worst])
    if scale > 0:
        max_rel = max_abs / scale
    else:
        # An all-zero expected tensor: any difference at all is infinitely large relative to it.
        max_rel = 0.0 if max_abs == 0 else float("inf")
    return Difference(max_abs, max_rel, worst, float(actual[worst]), float(expected[worst]), scale)
