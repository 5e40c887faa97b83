"""Input checks that every backend runs before it touches a framework."""

from __future__ import annotations

import numpy as np

from shared.config import GPTConfig

DTYPES = ("float32", "float64")


def check_dtype(dtype: str) -> str:
    """Return the dtype name if it is one trigpt computes in, else raise ValueError."""
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported for computation; use one of {', '.join(DTYPES)}")
    return name


def check_tokens(tokens: object, config: GPTConfig, name: str = "tokens", allow_long: bool = False) -> np.ndarray:
    """Check a (B, T) batch of token ids against config and return it as int64.

    Raises ValueError for a non-integer array, a wrong rank, an empty sequence, an id outside
    [0, vocab_size), or (unless allow_long) a sequence longer than context_length.
    """
    array = np.asarray(tokens)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must be integer token ids, got dtype {array.dtype}")
    if array.ndim != 2:
        raise ValueError(f"{name} must have shape (batch, sequence), got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} must hold at least one sequence of at least one token, got shape {array.shape}")
    if not allow_long and array.shape[1] > config.context_length:
        raise ValueError(
            f"{name} has sequence length {array.shape[1]} but context_length is {config.context_length}; "
            f"crop the input to its last {config.context_length} tokens"
        )
    low, high = int(array.min()), int(array.max())
    if low < 0 or high >= config.vocab_size:
        bad = low if low < 0 else high
        raise ValueError(f"token id {bad} out of range for vocab_size {config.vocab_size}")
    return array.astype(np.int64, copy=False)


def check_targets(targets: object, tokens: np.ndarray, config: GPTConfig) -> np.ndarray:
    """Check targets against the token batch: same shape, ids in range."""
    array = check_tokens(targets, config, name="targets")
    if array.shape != tokens.shape:
        raise ValueError(f"targets have shape {array.shape} but tokens have shape {tokens.shape}; they must match")
    return array


def check_generate_arguments(max_new_tokens: int) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
