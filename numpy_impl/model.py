"""The NumPy GPT: the model object, and the model forward and backward built from numpy_impl.layers.

The backward reads as the forward in reverse, one layer call a line, as in llm.c's
train_gpt2.c. Gradient dicts use the canonical parameter names of shared.weights.

Dimension legend, used in the shape comments below:
    B  batch size            T  sequence length        C  d_model
    V  vocabulary size       nh number of heads        hs head size (C // nh)
    H  MLP hidden size (mlp_expansion * C)
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from shared.config import GPTConfig
from numpy_impl.layers import (
    Grads,
    attention_backward,
    attention_forward,
    causal_mask,
    dropout_backward,
    dropout_forward,
    embedding_backward,
    embedding_forward,
    gelu_backward,
    gelu_forward,
    layernorm_backward,
    layernorm_forward,
    linear_backward,
    linear_forward,
    merge_heads_backward,
    merge_heads_forward,
    residual_backward,
    residual_forward,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
from numpy_impl.parallel import batch_shards, concatenate_shards, run_parallel


class GPTModel:
    """A config and its canonical parameters, all of one dtype (float32 or float64).

    training records the mode for the backend interface only. The forward functions take
    dropout's random generator as an argument and run in eval mode without one.
    """

    def __init__(self, config: GPTConfig, params: dict[str, np.ndarray]) -> None:
        dtypes = {array.dtype for array in params.values()}
        if len(dtypes) != 1:
            raise ValueError(
                f"all parameters must share one dtype, got {sorted(str(d) for d in dtypes)}; "
                f"numpy_impl.backend.load casts them to one"
            )
        self.config = config
        self.params = params
        self.dtype = dtypes.pop()
        self.training = False
        # The additive causal mask in (key, query) layout, built once in the model's dtype so
        # that adding it never promotes the scores.
        self.mask = causal_mask(config.context_length, self.dtype)

    def head_weight(self) -> np.ndarray:
        """Return the head matrix (C, V): the transposed token embedding when tied."""
        if self.config.weight_tying:
            return self.params["tok_embed.weight"].T  # (V, C) -> (C, V), a view
        return self.params["lm_head.weight"]


def _prefixed(prefix: str, grads: Grads) -> Grads:
    return {f"{prefix}.{name}": value for name, value in grads.items()}


# Self-attention sublayer: qkv projection, attention, head merge, output projection, dropout.


def self_attention_forward(
    x: np.ndarray, params: dict[str, np.ndarray], prefix: str, config: GPTConfig, mask: np.ndarray, rng: np.random.Generator | None
) -> tuple[np.ndarray, Any]:
    qkv, qkv_cache = linear_forward(x, params[f"{prefix}.qkv.weight"], params.get(f"{prefix}.qkv.bias"))  # (B, T, C) @ (C, 3C) -> (B, T, 3C)
    heads, attention_cache = attention_forward(qkv, config.num_heads, mask, config.dropout, rng)  # (B, nh, T, hs)
    merged, _ = merge_heads_forward(heads)  # (B, nh, T, hs) -> (B, T, C)
    out, proj_cache = linear_forward(merged, params[f"{prefix}.out_proj.weight"], params.get(f"{prefix}.out_proj.bias"))  # (B, T, C) @ (C, C) -> (B, T, C)
    out, dropout_cache = dropout_forward(out, config.dropout, rng)
    return out, (prefix, config.num_heads, qkv_cache, attention_cache, proj_cache, dropout_cache)


def self_attention_backward(dout: np.ndarray, cache: Any) -> tuple[np.ndarray, Grads]:
    prefix, num_heads, qkv_cache, attention_cache, proj_cache, dropout_cache = cache
    grads: Grads = {}
    dout = dropout_backward(dout, dropout_cache)
    dmerged, proj_grads = linear_backward(dout, proj_cache)
    grads.update(_prefixed(f"{prefix}.out_proj", proj_grads))
    dheads = merge_heads_backward(dmerged, num_heads)  # (B, T, C) -> (B, nh, T, hs)
    dqkv = attention_backward(dheads, attention_cache)
    dx, qkv_grads = linear_backward(dqkv, qkv_cache)
    grads.update(_prefixed(f"{prefix}.qkv", qkv_grads))
    return dx, grads


# MLP sublayer: fc1, GELU, fc2, dropout.


def mlp_forward(
    x: np.ndarray, params: dict[str, np.ndarray], prefix: str, config: GPTConfig, rng: np.random.Generator | None
) -> tuple[np.ndarray, Any]:
    hidden, fc1_cache = linear_forward(x, params[f"{prefix}.fc1.weight"], params.get(f"{prefix}.fc1.bias"))  # (B, T, C) @ (C, H) -> (B, T, H)
    hidden, gelu_cache = gelu_forward(hidden, config.gelu_approximation)
    out, fc2_cache = linear_forward(hidden, params[f"{prefix}.fc2.weight"], params.get(f"{prefix}.fc2.bias"))  # (B, T, H) @ (H, C) -> (B, T, C)
    out, dropout_cache = dropout_forward(out, config.dropout, rng)
    return out, (prefix, fc1_cache, gelu_cache, fc2_cache, dropout_cache)


def mlp_backward(dout: np.ndarray, cache: Any) -> tuple[np.ndarray, Grads]:
    prefix, fc1_cache, gelu_cache, fc2_cache, dropout_cache = cache
    grads: Grads = {}
    dout = dropout_backward(dout, dropout_cache)
    dhidden, fc2_grads = linear_backward(dout, fc2_cache)
    grads.update(_prefixed(f"{prefix}.fc2", fc2_grads))
    dhidden = gelu_backward(dhidden, gelu_cache)
    dx, fc1_grads = linear_backward(dhidden, fc1_cache)
    grads.update(_prefixed(f"{prefix}.fc1", fc1_grads))
    return dx, grads


# Transformer block.


def _layernorm(x: np.ndarray, params: dict[str, np.ndarray], prefix: str, config: GPTConfig) -> tuple[np.ndarray, Any]:
    return layernorm_forward(x, params[f"{prefix}.scale"], params[f"{prefix}.shift"], config.layer_norm_eps)


def block_forward(
    x: np.ndarray, params: dict[str, np.ndarray], prefix: str, config: GPTConfig, mask: np.ndarray, rng: np.random.Generator | None
) -> tuple[np.ndarray, Any]:
    """Run one transformer block on x (B, T, C) and return (B, T, C) and its cache.

    Pre-LN: x = x + attn(ln1(x)), then x = x + mlp(ln2(x)).
    Post-LN: x = ln1(x + attn(x)), then x = ln2(x + mlp(x)).
    """
    if config.pre_ln:
        h, ln1_cache = _layernorm(x, params, f"{prefix}.ln1", config)
        a, attn_cache = self_attention_forward(h, params, f"{prefix}.attn", config, mask, rng)
        x, _ = residual_forward(x, a)
        h, ln2_cache = _layernorm(x, params, f"{prefix}.ln2", config)
        m, mlp_cache = mlp_forward(h, params, f"{prefix}.mlp", config, rng)
        x, _ = residual_forward(x, m)
    else:
        a, attn_cache = self_attention_forward(x, params, f"{prefix}.attn", config, mask, rng)
        s, _ = residual_forward(x, a)
        x, ln1_cache = _layernorm(s, params, f"{prefix}.ln1", config)
        m, mlp_cache = mlp_forward(x, params, f"{prefix}.mlp", config, rng)
        s, _ = residual_forward(x, m)
        x, ln2_cache = _layernorm(s, params, f"{prefix}.ln2", config)
    return x, (prefix, config.pre_ln, ln1_cache, attn_cache, ln2_cache, mlp_cache)


def block_backward(dout: np.ndarray, cache: Any) -> tuple[np.ndarray, Grads]:
    prefix, pre_ln, ln1_cache, attn_cache, ln2_cache, mlp_cache = cache
    grads: Grads = {}
    if pre_ln:
        dx, dm = residual_backward(dout, None)
        dh, mlp_grads = mlp_backward(dm, mlp_cache)
        dx_ln2, ln2_grads = layernorm_backward(dh, ln2_cache)
        dx = dx + dx_ln2
        dx, da = residual_backward(dx, None)
        dh, attn_grads = self_attention_backward(da, attn_cache)
        dx_ln1, ln1_grads = layernorm_backward(dh, ln1_cache)
        dx = dx + dx_ln1
    else:
        ds, ln2_grads = layernorm_backward(dout, ln2_cache)
        dx, dm = residual_backward(ds, None)
        dx_mlp, mlp_grads = mlp_backward(dm, mlp_cache)
        dx = dx + dx_mlp
        ds, ln1_grads = layernorm_backward(dx, ln1_cache)
        dx, da = residual_backward(ds, None)
        dx_attn, attn_grads = self_attention_backward(da, attn_cache)
        dx = dx + dx_attn
    grads.update(_prefixed(f"{prefix}.ln1", ln1_grads))
    grads.update(attn_grads)
    grads.update(_prefixed(f"{prefix}.ln2", ln2_grads))
    grads.update(mlp_grads)
    return dx, grads


# The model.


def model_forward(model: GPTModel, tokens: np.ndarray, rng: np.random.Generator | None = None) -> tuple[np.ndarray, Any]:
    """Return the logits (B, T, V) of checked int tokens (B, T), and the cache for model_backward.

    rng drives dropout in training mode; None is eval mode.
    """
    config, params = model.config, model.params
    x, embed_cache = embedding_forward(tokens, params["tok_embed.weight"], params["pos_embed.weight"])  # (B, T, C)
    x, embed_dropout_cache = dropout_forward(x, config.dropout, rng)

    block_caches = []
    for i in range(config.num_layers):
        x, block_cache = block_forward(x, params, f"blocks.{i}", config, model.mask, rng)  # (B, T, C)
        block_caches.append(block_cache)

    h, final_cache = _layernorm(x, params, "final_ln", config)  # (B, T, C)
    logits, head_cache = linear_forward(h, model.head_weight(), None)  # (B, T, C) @ (C, V) -> (B, T, V)
    cache = (config.weight_tying, embed_cache, embed_dropout_cache, block_caches, final_cache, head_cache)
    return logits, cache


def model_logits(model: GPTModel, tokens: np.ndarray, collect: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Return the logits (B, T, V) of checked int tokens (B, T) in eval mode, keeping no backward caches.

    Each block's cache is dropped when the next block starts, so inference holds one block's
    intermediates at a time. If collect is a dict, it receives "embed", "blocks.{i}",
    "final_ln" and "logits".
    """
    config, params = model.config, model.params
    x, _ = embedding_forward(tokens, params["tok_embed.weight"], params["pos_embed.weight"])  # (B, T, C)
    if collect is not None:
        collect["embed"] = x
    for i in range(config.num_layers):
        x, _ = block_forward(x, params, f"blocks.{i}", config, model.mask, None)  # (B, T, C)
        if collect is not None:
            collect[f"blocks.{i}"] = x

    h, _ = _layernorm(x, params, "final_ln", config)  # (B, T, C)
    logits, _ = linear_forward(h, model.head_weight(), None)  # (B, T, C) @ (C, V) -> (B, T, V)
    if collect is not None:
        collect["final_ln"] = h
        collect["logits"] = logits
    return logits


def model_backward(dlogits: np.ndarray, cache: Any) -> Grads:
    """Return the gradient of every parameter under its canonical name, for dlogits (B, T, V)."""
    weight_tying, embed_cache, embed_dropout_cache, block_caches, final_cache, head_cache = cache
    grads: Grads = {}

    dh, head_grads = linear_backward(dlogits, head_cache)  # (B, T, V) -> (B, T, C)
    dx, final_grads = layernorm_backward(dh, final_cache)
    grads.update(_prefixed("final_ln", final_grads))
    for block_cache in reversed(block_caches):
        dx, block_grads = block_backward(dx, block_cache)
        grads.update(block_grads)
    dx = dropout_backward(dx, embed_dropout_cache)
    grads.update(embedding_backward(dx, embed_cache))

    if weight_tying:
        # The head used tok_embed.weight.T, so its (C, V) gradient adds to the embedding's, transposed.
        grads["tok_embed.weight"] += head_grads["weight"].T
    else:
        grads["lm_head.weight"] = head_grads["weight"]
    return grads


def loss_and_grads(
    model: GPTModel,
    tokens: np.ndarray,
    targets: np.ndarray,
    rng: np.random.Generator | None = None,
    num_positions: int | None = None,
) -> tuple[float, Grads]:
    """Return the mean cross-entropy over all B*T positions and the canonical gradients.

    num_positions replaces B*T as the count that the mean divides by. A shard of a larger
    batch passes the whole batch's count, so that the shards' losses and gradients add up
    to the whole batch's.
    """
    B, T = tokens.shape
    if num_positions is None:
        num_positions = B * T
    logits, cache = model_forward(model, tokens, rng)
    losses, loss_cache = softmax_cross_entropy_forward(logits, targets)  # (B, T)
    loss = float(losses.sum(dtype=np.float64)) / num_positions

    dlosses = np.full((B, T), 1.0 / num_positions, dtype=logits.dtype)  # d mean / d loss of each position
    dlogits = softmax_cross_entropy_backward(dlosses, loss_cache)
    grads = model_backward(dlogits, cache)
    return loss, grads


# The same computations on shards of the batch, one worker thread each (numpy_impl.parallel).


def sharded_logits(model: GPTModel, tokens: np.ndarray) -> np.ndarray:
    """Return model_logits of checked int tokens (B, T), computed on shards of the batch in parallel."""
    shards = batch_shards(len(tokens))
    parts = run_parallel([partial(model_logits, model, tokens[rows]) for rows in shards])
    return concatenate_shards(parts)


def sharded_loss_and_grads(
    model: GPTModel, tokens: np.ndarray, targets: np.ndarray, rng: np.random.Generator | None = None
) -> tuple[float, Grads]:
    """Return loss_and_grads of the whole batch, computed on shards of the batch in parallel.

    Each shard's dropout draws from its own child of rng (Generator.spawn), so a seeded run
    repeats exactly for the same shard count. With one shard, rng itself is used.
    """
    B, T = tokens.shape
    shards = batch_shards(B)
    if rng is None:
        rngs: list[np.random.Generator | None] = [None] * len(shards)
    elif len(shards) == 1:
        rngs = [rng]
    else:
        rngs = list(rng.spawn(len(shards)))
    calls = [
        partial(loss_and_grads, model, tokens[rows], targets[rows], shard_rng, B * T)
        for rows, shard_rng in zip(shards, rngs)
    ]
    results = run_parallel(calls)

    loss, grads = results[0]
    for shard_loss, shard_grads in results[1:]:
        loss += shard_loss
        for name, grad in shard_grads.items():
            grads[name] += grad
    return loss, grads
