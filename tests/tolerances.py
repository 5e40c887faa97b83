"""The one tolerance helper and the one tolerance table of the parity tests.

Each tolerance is relative to the largest magnitude of the expected tensor, so an element
near zero is judged on the tensor's scale, not on its own:
    max |actual - expected| <= rtol * max(|expected|) + atol
"""

from __future__ import annotations

import numpy as np

# Name -> (rtol, atol, reason). Tests pick a row by name; none loosens a row in place.
TOLERANCES: dict[str, tuple[float, float, str]] = {
    "float64": (
        1e-10, 0.0,
        "float64 carries about 16 digits; different summation orders across frameworks "
        "cost a few hundred ulps through a dozen layers, far below 1e-10",
    ),
    "float32": (
        2e-5, 1e-7,
        "float32 carries about 7 digits; matmul blocking and fused kernels differ between "
        "MKL, XLA and OpenBLAS, so sums of d_model products differ by a few ulps per layer",
    ),
    "float32-grad": (
        1e-4, 1e-7,
        "float32 gradients pass through the softmax and LayerNorm backward twice as many "
        "operations as the forward, so rounding differences are about twice as large and "
        "the smallest gradients are relatively noisier",
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
}


def tolerance(name: str) -> tuple[float, float]:
    rtol, atol, _ = TOLERANCES[name]
    return rtol, atol


def assert_close(actual: object, expected: object, name: str, tol: str | tuple[float, float]) -> None:
    """Assert that actual matches expected within a named tolerance, explaining any failure.

    The message names the tensor, the max absolute and relative difference, the index of
    the worst element, its two values, and the tolerance used.
    """
    rtol, atol = tolerance(tol) if isinstance(tol, str) else tol
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != expected shape {expected.shape}"
    assert np.all(np.isfinite(actual)), f"{name}: actual holds non-finite values"
    if actual.size == 0:
        return
    difference = np.abs(actual - expected)
    scale = float(np.max(np.abs(expected)))
    worst = np.unravel_index(int(np.argmax(difference)), difference.shape)
    max_abs = float(difference[worst])
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    allowed = rtol * scale + atol
    assert max_abs <= allowed, (
        f"{name}: max abs diff {max_abs:.3e}, max rel diff {max_rel:.3e} (relative to max |expected| {scale:.3e}) "
        f"at index {tuple(int(i) for i in worst)}: actual {actual[worst]!r} vs expected {expected[worst]!r}; "
        f"tolerance {tol!r} allows {allowed:.3e} (rtol {rtol:g}, atol {atol:g})"
    )
