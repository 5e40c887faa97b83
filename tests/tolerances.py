"""The one tolerance helper of the parity tests; the table lives in shared/tolerances.py."""

from __future__ import annotations

from shared.tolerances import TOLERANCES, measure_difference, tolerance

__all__ = ["TOLERANCES", "assert_close", "tolerance"]


def assert_close(actual: object, expected: object, name: str, tol: str | tuple[float, float]) -> None:
    """Assert that actual matches expected within a named tolerance, explaining any failure.

    The message names the tensor, the max absolute and relative difference, the index of
    the worst element, its two values, and the tolerance used.
    """
    rtol, atol = tolerance(tol) if isinstance(tol, str) else tol
    difference = measure_difference(actual, expected)
    allowed = rtol * difference.scale + atol
    assert difference.within(rtol, atol), (
        f"{name}: max abs diff {difference.max_abs:.3e}, max rel diff {difference.max_rel:.3e} "
        f"(relative to max |expected| {difference.scale:.3e}) at index {difference.index}: "
        f"actual {difference.actual!r} vs expected {difference.expected!r}; "
        f"tolerance {tol!r} allows {allowed:.3e} (rtol {rtol:g}, atol {atol:g})"
    )
