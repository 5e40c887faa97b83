"""Autoregressive generation for the NumPy model, with an optional KV cache.

Sampling goes through shared.sampling, so one seed gives the same tokens in every backend.
With the cache, each new token runs one position while the sequence fits in
context_length. Once the sequence is longer, the window of its last context_length tokens
slides and every kept token gets a new position embedding. The cache is then rebuilt from
the cropped window, so the logits always equal those of a fresh forward over that window.

Dimension legend, used in the shape comments below:
    B  batch size            T  new positions in this call     S  cached plus new positions
    C  d_model               V  vocabulary size                nh number of heads
    hs head size (C // nh)   H  MLP hidden size
"""

from __future__ import annotations

import math

import numpy as np

from shared.config import GPTConfig
from shared.inputs import check_generate_arguments
from shared.sampling import check_sampling_arguments, draw_uniforms, sample_next
from numpy_impl.layers import gelu_forward, layernorm_forward, linear_forward, merge_heads_forward
from numpy_impl.model import GPTModel, model_logits


class KVCache:
    """Keys and values of the positions seen so far, per block, in buffers of context_length positions."""

    def __init__(self, config: GPTConfig, batch_size: int, dtype: np.dtype) -> None:
        shape = (batch_size, config.num_heads, config.context_length, config.head_size)  # (B, nh, ctx, hs)
        self.keys = [np.zeros(shape, dtype=dtype) for _ in range(config.num_layers)]
        self.values = [np.zeros(shape, dtype=dtype) for _ in range(config.num_layers)]
        self.length = 0  # positions stored, the same in every layer


def _cached_attention(qkv: np.ndarray, cache: KVCache, layer: int, mask: np.ndarray) -> np.ndarray:
    """Attend new positions' qkv (B, T, 3C) to every cached position and themselves: (B, nh, T, hs).

    Stores the new keys and values in the cache; cache.length advances after the last layer.
    """
    B, T, C3 = qkv.shape
    nh = cache.keys[layer].shape[1]
    hs = C3 // 3 // nh
    start, stop = cache.length, cache.length + T
    split = qkv.reshape(B, T, 3, nh, hs)  # (B, T, 3C) -> (B, T, 3, nh, hs)
    q = split[:, :, 0].transpose(0, 2, 1, 3)  # (B, nh, T, hs)
    cache.keys[layer][:, :, start:stop] = split[:, :, 1].transpose(0, 2, 1, 3)  # (B, nh, T, hs)
    cache.values[layer][:, :, start:stop] = split[:, :, 2].transpose(0, 2, 1, 3)  # (B, nh, T, hs)
    k = cache.keys[layer][:, :, :stop]  # (B, nh, S, hs)
    v = cache.values[layer][:, :, :stop]  # (B, nh, S, hs)

    # The same operations as layers.attention_forward, with scores in (key, query) layout,
    # on the mask's columns start..stop.
    q_scaled = q * (1.0 / math.sqrt(hs))
    probs = k @ q_scaled.transpose(0, 1, 3, 2)  # (B, nh, S, hs) @ (B, nh, hs, T) -> (B, nh, S, T)
    probs += mask[:stop, start:stop]
    probs -= probs.max(axis=-2, keepdims=True)
    np.exp(probs, out=probs)
    probs /= probs.sum(axis=-2, keepdims=True)
    return probs.transpose(0, 1, 3, 2) @ v  # (B, nh, T, S) @ (B, nh, S, hs) -> (B, nh, T, hs)


def _cached_block(x: np.ndarray, model: GPTModel, layer: int, cache: KVCache) -> np.ndarray:
    """Run one block in eval mode on the new positions x (B, T, C): the inference twin of model.block_forward."""
    config, params = model.config, model.params
    prefix = f"blocks.{layer}"

    def layernorm(h: np.ndarray, name: str) -> np.ndarray:
        return layernorm_forward(h, params[f"{prefix}.{name}.scale"], params[f"{prefix}.{name}.shift"], config.layer_norm_eps)[0]

    def linear(h: np.ndarray, name: str) -> np.ndarray:
        return linear_forward(h, params[f"{prefix}.{name}.weight"], params.get(f"{prefix}.{name}.bias"))[0]

    def attention(h: np.ndarray) -> np.ndarray:
        qkv = linear(h, "attn.qkv")  # (B, T, C) @ (C, 3C) -> (B, T, 3C)
        heads = _cached_attention(qkv, cache, layer, model.mask)  # (B, nh, T, hs)
        merged, _ = merge_heads_forward(heads)  # (B, nh, T, hs) -> (B, T, C)
        return linear(merged, "attn.out_proj")  # (B, T, C) @ (C, C) -> (B, T, C)

    def mlp(h: np.ndarray) -> np.ndarray:
        hidden = linear(h, "mlp.fc1")  # (B, T, C) @ (C, H) -> (B, T, H)
        hidden, _ = gelu_forward(hidden, config.gelu_approximation)
        return linear(hidden, "mlp.fc2")  # (B, T, H) @ (H, C) -> (B, T, C)

    if config.pre_ln:
        x = x + attention(layernorm(x, "ln1"))
        x = x + mlp(layernorm(x, "ln2"))
    else:
        x = layernorm(x + attention(x), "ln1")
        x = layernorm(x + mlp(x), "ln2")
    return x


def forward_cached(model: GPTModel, tokens: np.ndarray, cache: KVCache) -> np.ndarray:
    """Run new tokens (B, T) at positions cache.length .. cache.length + T - 1 and return the last position's logits (B, V)."""
    config, params = model.config, model.params
    T = tokens.shape[1]
    start = cache.length
    if start + T > config.context_length:
        raise ValueError(
            f"{start} cached plus {T} new positions exceed context_length {config.context_length}; "
            f"rebuild the cache from the last {config.context_length} tokens"
        )
    x = params["tok_embed.weight"][tokens]  # (V, C)[(B, T)] -> (B, T, C)
    x += params["pos_embed.weight"][start : start + T]  # (B, T, C) + (T, C)
    for layer in range(config.num_layers):
        x = _cached_block(x, model, layer, cache)
    cache.length += T

    last = x[:, -1:, :]  # (B, 1, C)
    h, _ = layernorm_forward(last, params["final_ln.scale"], params["final_ln.shift"], config.layer_norm_eps)
    return h[:, 0, :] @ model.head_weight()  # (B, C) @ (C, V) -> (B, V)


class CachedDecoder:
    """Last-position logits of a sequence that grows by one token per call, reusing keys and values."""

    def __init__(self, model: GPTModel) -> None:
        self.model = model
        self.cache: KVCache | None = None

    def next_logits(self, sequence: np.ndarray) -> np.ndarray:
        """Return the logits (B, V) that follow sequence (B, L).

        The cache is extended when sequence is the previous call's sequence plus one token
        and still fits in context_length. Otherwise it is rebuilt from the last
        context_length tokens. The caller must not change earlier tokens between calls,
        because only the length is checked.
        """
        context = self.model.config.context_length
        length = sequence.shape[1]
        if self.cache is not None and self.cache.length == length - 1 and length <= context:
            return forward_cached(self.model, sequence[:, -1:], self.cache)
        window = sequence[:, -context:]  # (B, min(L, ctx))
        self.cache = KVCache(self.model.config, sequence.shape[0], self.model.dtype)
        return forward_cached(self.model, window, self.cache)


def uncached_next_logits(model: GPTModel, sequence: np.ndarray) -> np.ndarray:
    """Return the logits (B, V) that follow sequence (B, L) from a full forward over its last context_length tokens."""
    window = sequence[:, -model.config.context_length :]  # (B, min(L, ctx))
    return model_logits(model, window)[:, -1, :]  # (B, T, V) -> (B, V)


def generate(
    model: GPTModel,
    prompt: np.ndarray,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    use_cache: bool = True,
) -> np.ndarray:
    """Extend a checked int64 prompt (B, T) by max_new_tokens sampled tokens: (B, T + max_new_tokens)."""
    check_sampling_arguments(temperature, top_k)
    check_generate_arguments(max_new_tokens)
    B, T = prompt.shape
    uniforms = draw_uniforms(seed, max_new_tokens, B)  # (max_new_tokens, B)
    sequence = np.empty((B, T + max_new_tokens), dtype=np.int64)
    sequence[:, :T] = prompt

    was_training = model.training
    model.training = False
    try:
        decoder = CachedDecoder(model) if use_cache else None
        for step in range(max_new_tokens):
            current = sequence[:, : T + step]  # (B, T + step)
            if decoder is not None:
                logits = decoder.next_logits(current)
            else:
                logits = uncached_next_logits(model, current)
            sequence[:, T + step] = sample_next(logits, uniforms[step], temperature, top_k)  # (B,)
    finally:
        model.training = was_training
    return sequence
