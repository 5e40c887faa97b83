"""The sampler that every backend uses, so that one seed gives the same tokens everywhere.

Each new token costs one uniform number per sequence, drawn from a numpy Generator seeded
with the user's seed; the token is found by inverting the cumulative distribution of the
filtered, temperature-scaled probabilities. The JAX backend draws the same uniforms up front
and runs the same inversion inside its compiled loop.
"""

from __future__ import annotations

import numpy as np


def check_sampling_arguments(temperature: float, top_k: int | None) -> None:
    """Raise ValueError for a temperature <= 0 or a top_k < 1."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < float("inf"):
        raise ValueError(f"temperature must be > 0 and finite, got {temperature!r}; use top_k=1 for greedy decoding")
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")


def top_k_filter(logits: np.ndarray, top_k: int | None) -> np.ndarray:
    """Set every logit below the k-th largest of its row to -inf; ties with the k-th largest are kept.

    logits: (..., V). A top_k of None or above V means no filtering.
    """
    check_sampling_arguments(1.0, top_k)
    logits = np.asarray(logits)
    if top_k is None or top_k >= logits.shape[-1]:
        return logits.copy()
    kth_largest = np.partition(logits, -top_k, axis=-1)[..., -top_k, None]
    return np.where(logits < kth_largest, -np.inf, logits)


def sampling_probabilities(logits: np.ndarray, temperature: float = 1.0, top_k: int | None = None) -> np.ndarray:
    """Turn last-position logits (B, V) into sampling probabilities (B, V) in float64."""
    check_sampling_arguments(temperature, top_k)
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled = top_k_filter(scaled, top_k)
    scaled = scaled - scaled.max(axis=-1, keepdims=True)
    weights = np.exp(scaled)
    return weights / weights.sum(axis=-1, keepdims=True)


def invert_cdf(probs: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Pick, for each row, the first token whose cumulative probability exceeds uniform * total.

    probs: (B, V), uniforms: (B,) in [0, 1). Tokens with zero probability are never picked.
    """
    cdf = np.cumsum(probs, axis=-1)
    threshold = uniforms[:, None] * cdf[:, -1:]
    index = np.sum(cdf <= threshold, axis=-1)
    return np.minimum(index, probs.shape[-1] - 1).astype(np.int64)


def draw_uniforms(seed: int | None, max_new_tokens: int, batch_size: int) -> np.ndarray:
    """Draw the uniforms for a whole generation up front: (max_new_tokens, batch_size) float64."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
    rng = np.random.default_rng(seed)
    return rng.random((max_new_tokens, batch_size))


def sample_next(logits: np.ndarray, uniforms: np.ndarray, temperature: float = 1.0, top_k: int | None = None) -> np.ndarray:
    """Sample one token per row from last-position logits (B, V) with the given uniforms (B,)."""
    return invert_cdf(sampling_probabilities(logits, temperature, top_k), uniforms)
