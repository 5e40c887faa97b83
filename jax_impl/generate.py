"""Autoregressive generation for the Flax model: a KV cache in fixed-shape buffers and the
shared sampler inside the compiled steps.

Each call works on one window size S: the longest window any of its steps needs, rounded up
to a power of two and capped at context_length. Two functions are compiled per (B, S):
a prefill step runs a padded window of S tokens and fills the cache, and a decode step runs
one new token against the cache. So generating N tokens traces at
most twice, and repeating a call with the same shapes traces nothing.

While the sequence fits in context_length, each new token runs one decode step. Once the
window slides, every kept token's position embedding changes, so the cache is rebuilt with
a prefill of the cropped window. The logits then equal a fresh forward over that window.

Sampling follows shared.sampling exactly (temperature, then top-k keeping ties with the
k-th largest, then inverse-CDF with uniforms from shared.sampling.draw_uniforms), in float64
as shared.sampling does. So generation runs with JAX's 64-bit mode on for float32 models too.
Their weights and activations stay float32, and only the sampler casts the logits up. A
float32 inverse CDF picked another token than shared.sampling for 1 of 2,000 draws from
random logits (normal, standard deviation 2) over a 50,257-token vocabulary.
"""

from __future__ import annotations

import collections
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from shared.inputs import check_generate_arguments
from shared.sampling import check_sampling_arguments, draw_uniforms
from jax_impl.convert import dtype_scope
from jax_impl.model import GPT

# Times each compiled step has been traced, by name ("prefill", "decode"). The counter is
# incremented in Python while tracing, so a cached compilation leaves it unchanged.
TRACE_COUNTS: collections.Counter[str] = collections.Counter()


def sample_from_logits(
    logits: jax.Array, uniforms: jax.Array, temperature: jax.Array, top_k: jax.Array
) -> jax.Array:
    """Pick one token per row from last-position logits (B, V), as shared.sampling.sample_next does.

    uniforms: (B,) in [0, 1). temperature: scalar > 0. top_k: int32 scalar in [1, V], where
    V means no filtering. The sampler computes in the dtype of uniforms, float64 in generate,
    whatever the dtype of logits. Returns int32 token ids (B,).
    """
    V = logits.shape[-1]
    scaled = logits.astype(uniforms.dtype) / temperature  # (B, V)

    # Keep every logit at least as large as the k-th largest, so ties with it survive.
    ascending = jnp.sort(scaled, axis=-1)  # (B, V)
    kth_largest = lax.dynamic_index_in_dim(ascending, V - top_k, axis=-1, keepdims=True)  # (B, 1)
    scaled = jnp.where(scaled < kth_largest, -jnp.inf, scaled)

    weights = jnp.exp(scaled - jnp.max(scaled, axis=-1, keepdims=True))  # (B, V)
    probs = weights / jnp.sum(weights, axis=-1, keepdims=True)

    # Inverse CDF: the first token whose cumulative probability exceeds u * total.
    cdf = jnp.cumsum(probs, axis=-1)  # (B, V)
    threshold = uniforms[:, None] * cdf[:, -1:]  # (B, 1)
    index = jnp.sum(cdf <= threshold, axis=-1, dtype=jnp.int32)  # (B,)
    return jnp.minimum(index, V - 1)


@functools.lru_cache(maxsize=32)
def _compiled_steps(graphdef: Any) -> tuple[Any, Any]:
    """Return the jitted prefill and decode steps of one model structure.

    The steps close over graphdef instead of taking it as a static argument, because jit
    would hash and compare the graph definition on every call. That took about a quarter of
    each decode step of the benchmarks/jax_vs_torch.py model on a 2-core CPU.
    """

    def prefill_and_sample(params, window, length, uniforms, temperature, top_k):
        """Run window (B, S), whose first `length` tokens are real, and sample the next token."""
        TRACE_COUNTS["prefill"] += 1
        model = nnx.merge(graphdef, params)
        logits, cache = model.prefill(window, length)  # (B, V), per block 2 x (B, nh, S, hs)
        return sample_from_logits(logits, uniforms, temperature, top_k), cache

    def decode_and_sample(params, cache, token, position, uniforms, temperature, top_k):
        """Run token (B,) at `position` over the cache and sample the next token."""
        TRACE_COUNTS["decode"] += 1
        model = nnx.merge(graphdef, params)
        logits, cache = model.decode(token, cache, position)  # (B, V)
        return sample_from_logits(logits, uniforms, temperature, top_k), cache

    # The decode step donates the cache, so XLA updates the buffers in place.
    return jax.jit(prefill_and_sample), jax.jit(decode_and_sample, donate_argnums=1)


def window_size(longest: int, context_length: int) -> int:
    """Return the buffer size for windows of up to `longest` tokens: a power of two, at most context_length."""
    size = 1
    while size < longest:
        size *= 2
    return min(size, context_length)


def generate(
    model: GPT,
    prompt: np.ndarray,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    use_cache: bool = True,
) -> np.ndarray:
    """Extend a checked prompt (B, T) by max_new_tokens sampled tokens and return int64 (B, T + max_new_tokens).

    prompt must already have passed shared.inputs.check_tokens (with allow_long=True): the
    ids are not checked again here, and an id outside the vocabulary would be clamped by XLA.
    """
    check_sampling_arguments(temperature, top_k)
    check_generate_arguments(max_new_tokens)
    batch_size, prompt_length = prompt.shape
    uniforms = draw_uniforms(seed, max_new_tokens, batch_size)  # (N, B) float64
    if max_new_tokens == 0:
        return prompt.astype(np.int64, copy=True)

    context = model.config.context_length
    vocab_size = model.config.vocab_size
    size = window_size(min(prompt_length + max_new_tokens - 1, context), context)
    temperature_value = np.float64(temperature)
    top_k_value = np.int32(vocab_size if top_k is None else min(top_k, vocab_size))

    # New tokens stay on the device while decode steps chain them, and a rebuild fetches them.
    device_tokens: list[jax.Array] = []
    host_tokens: list[np.ndarray] = []

    def current_window(length: int) -> np.ndarray:
        host_tokens.extend(np.asarray(token, dtype=np.int64) for token in device_tokens[len(host_tokens) :])
        sequence = np.concatenate([prompt, *(token[:, None] for token in host_tokens)], axis=1)  # (B, T + step)
        window = np.zeros((batch_size, size), dtype=np.int32)  # (B, S), padded after the real tokens
        window[:, :length] = sequence[:, -length:]
        return window

    # 64-bit mode is on for the float64 sampler, and a float32 model's arrays keep their dtype.
    with dtype_scope(np.float64):
        graphdef, params = nnx.split(model)
        prefill_and_sample, decode_and_sample = _compiled_steps(graphdef)
        cache = None
        cached_length = 0
        for step in range(max_new_tokens):
            length = min(prompt_length + step, context)
            step_uniforms = uniforms[step]  # (B,) float64
            if use_cache and cache is not None and length == cached_length + 1:
                token, cache = decode_and_sample(
                    params, cache, device_tokens[-1], np.int32(length - 1),
                    step_uniforms, temperature_value, top_k_value,
                )  # fmt: skip
            else:
                token, cache = prefill_and_sample(
                    params, current_window(length), np.int32(length),
                    step_uniforms, temperature_value, top_k_value,
                )  # fmt: skip
            cached_length = length
            device_tokens.append(token)
        generated = np.stack(jax.device_get(device_tokens), axis=1).astype(np.int64)  # (B, N)
    return np.concatenate([prompt.astype(np.int64, copy=False), generated], axis=1)
