"""The layers of the NumPy GPT, each a forward function directly followed by its backward.

    forward(inputs..., parameters...) -> (output, cache)
    backward(dout, cache) -> (dinput, grads)

A cache holds only what the backward needs. grads maps the parameter's canonical leaf name
("weight", "bias", "scale", "shift") to its gradient; the model adds the "blocks.{i}.attn.qkv"
style prefix. A gradient is named d<name> after the array it belongs to, as in llm.c.

Every function computes in the dtype of its inputs. Scalars are Python floats, which NumPy
casts to the array's dtype, so float32 stays float32; an np.float64 scalar would promote it.

Dimension legend:
    B  batch size            T  sequence length        C  d_model
    V  vocabulary size       nh number of heads        hs head size (C // nh)
    N  number of rows of a linear layer's input (B * T)
    G  number of (batch, head) pairs in one attention group
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from numpy_impl.special import erf

Grads = dict[str, np.ndarray]


# Embedding.


def embedding_forward(tokens: np.ndarray, tok_weight: np.ndarray, pos_weight: np.ndarray) -> tuple[np.ndarray, Any]:
    """Sum the token and position embeddings of (B, T) int tokens: (B, T, C)."""
    B, T = tokens.shape
    x = tok_weight[tokens]  # (V, C)[(B, T)] -> (B, T, C)
    x += pos_weight[:T]  # (B, T, C) + (T, C)
    cache = (tokens, tok_weight.shape, pos_weight.shape)
    return x, cache


def embedding_backward(dx: np.ndarray, cache: Any) -> Grads:
    """Return the token and position embedding gradients; tokens themselves have none.

    A token id that occurs several times gets the sum of its rows. The rows are sorted by id
    (stably, so each id's rows keep their sequence order) and summed with np.add.reduceat.
    That sums in the same order as np.add.at but took half its time with numpy 2.4 for
    B*T = 2048 and C = 384.
    """
    tokens, tok_shape, pos_shape = cache
    B, T = tokens.shape
    C = dx.shape[-1]
    dx_rows = dx.reshape(B * T, C)  # (B, T, C) -> (B*T, C)

    ids = tokens.reshape(-1)  # (B*T,)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    starts = np.flatnonzero(np.concatenate(([True], sorted_ids[1:] != sorted_ids[:-1])))
    dtok_weight = np.zeros(tok_shape, dtype=dx.dtype)
    dtok_weight[sorted_ids[starts]] = np.add.reduceat(dx_rows[order], starts, axis=0)

    dpos_weight = np.zeros(pos_shape, dtype=dx.dtype)
    dpos_weight[:T] = dx.sum(axis=0)  # (B, T, C) -> (T, C)
    return {"tok_embed.weight": dtok_weight, "pos_embed.weight": dpos_weight}


# LayerNorm.


def layernorm_forward(x: np.ndarray, scale: np.ndarray, shift: np.ndarray, eps: float) -> tuple[np.ndarray, Any]:
    """Normalise over the last axis with the biased variance: (..., C) -> (..., C).

    The variance is the mean of the squared centred values, never E[x^2] - E[x]^2, so a
    float32 row such as 10000 + [0, 1, 2, 3] keeps its precision.
    """
    C = x.shape[-1]
    mean = x.mean(axis=-1, keepdims=True)  # (..., 1)
    xhat = x - mean  # centred; normalised in place below
    variance = np.einsum("...c,...c->...", xhat, xhat)[..., None]  # (..., 1), sum of squares
    variance /= C
    rstd = variance
    rstd += eps
    np.sqrt(rstd, out=rstd)
    np.reciprocal(rstd, out=rstd)
    xhat *= rstd
    y = xhat * scale
    y += shift
    return y, (xhat, rstd, scale)


def layernorm_backward(dy: np.ndarray, cache: Any) -> tuple[np.ndarray, Grads]:
    xhat, rstd, scale = cache
    C = xhat.shape[-1]
    reduce_axes = tuple(range(dy.ndim - 1))
    dscale = np.sum(dy * xhat, axis=reduce_axes)  # (C,)
    dshift = np.sum(dy, axis=reduce_axes)  # (C,)

    # dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), every mean over C.
    dxhat = dy * scale
    mean_dxhat = dxhat.mean(axis=-1, keepdims=True)  # (..., 1)
    mean_dxhat_xhat = np.einsum("...c,...c->...", dxhat, xhat)[..., None]  # (..., 1)
    mean_dxhat_xhat /= C
    dx = dxhat
    dx -= mean_dxhat
    dx -= xhat * mean_dxhat_xhat
    dx *= rstd
    return dx, {"scale": dscale, "shift": dshift}


# Linear.


def linear_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> tuple[np.ndarray, Any]:
    """y = x @ weight + bias for weight (in, out): (..., in) -> (..., out)."""
    d_in, d_out = weight.shape
    x_rows = x.reshape(-1, d_in)  # (..., in) -> (N, in)
    y = x_rows @ weight  # (N, in) @ (in, out) -> (N, out)
    if bias is not None:
        y += bias
    return y.reshape(*x.shape[:-1], d_out), (x, weight, bias is not None)


def linear_backward(dy: np.ndarray, cache: Any) -> tuple[np.ndarray, Grads]:
    x, weight, has_bias = cache
    d_in, d_out = weight.shape
    x_rows = x.reshape(-1, d_in)  # (..., in) -> (N, in)
    dy_rows = dy.reshape(-1, d_out)  # (..., out) -> (N, out)
    dx = dy_rows @ weight.T  # (N, out) @ (out, in) -> (N, in)
    grads = {"weight": x_rows.T @ dy_rows}  # (in, N) @ (N, out) -> (in, out)
    if has_bias:
        grads["bias"] = dy_rows.sum(axis=0)  # (out,)
    return dx.reshape(x.shape), grads


# Dropout.


def dropout_forward(x: np.ndarray, rate: float, rng: np.random.Generator | None) -> tuple[np.ndarray, Any]:
    """Inverted dropout: zero each element with probability rate and scale the rest by 1 / (1 - rate).

    rng=None is eval mode, as is rate=0: the input comes back unchanged and the cache is None.
    """
    mask = dropout_mask(x.shape, x.dtype, rate, rng)
    if mask is None:
        return x, None
    return x * mask, mask


def dropout_mask(shape: tuple[int, ...], dtype: np.dtype, rate: float, rng: np.random.Generator | None) -> np.ndarray | None:
    """Return the inverted-dropout multiplier (0 or 1 / (1 - rate)), or None in eval mode or at rate 0."""
    if rng is None or rate == 0.0:
        return None
    keep = rng.random(shape, dtype=dtype) >= rate
    mask = keep.astype(dtype)  # an explicit cast: bool * Python float would give float64
    mask *= 1.0 / (1.0 - rate)
    return mask


def dropout_backward(dy: np.ndarray, cache: Any) -> np.ndarray:
    mask = cache
    if mask is None:
        return dy
    return dy * mask


# Residual add.


def residual_forward(x: np.ndarray, branch: np.ndarray) -> tuple[np.ndarray, None]:
    return x + branch, None


def residual_backward(dy: np.ndarray, cache: None) -> tuple[np.ndarray, np.ndarray]:
    """Return the gradients of the residual stream and of the branch, both dy."""
    return dy, dy


# Causal self-attention.


def causal_mask(context_length: int, dtype: np.dtype) -> np.ndarray:
    """Return the additive causal mask in (key, query) layout: 0 where the key is at or before the query, -inf after.

    Adding it to the scores replaces every score whose key comes after its query by -inf.
    The diagonal is never masked, so no query's scores are all -inf and the softmax never
    returns NaN. The layout matches the (key, query) scores of attention_forward.
    """
    mask = np.zeros((context_length, context_length), dtype=dtype)
    mask[np.tril_indices(context_length, k=-1)] = -np.inf  # key index > query index
    return mask


# The attention loops over groups of heads whose (T, T) scores together hold about this many
# elements (1 MiB in float32), so the softmax passes and the two matmuls of a group run on
# data in the L2 cache. With T = 256 this took a fifth off the attention's CPU time on a
# 2-core Xeon, compared with whole-array passes.
_ATTENTION_BLOCK_ELEMENTS = 262144
# Within a group, the queries run in blocks of this many. A block reads only the keys up to
# its last query, so the scores above the diagonal blocks are never computed. For T = 256
# that leaves 5/8 of the (T, T) work, and on the same Xeon it took a fifth off the
# attention forward's time and a quarter off the backward's.
_QUERY_BLOCK = 64


def _head_groups(count: int, T: int) -> list[slice]:
    """Split count (batch, head) pairs into consecutive groups of about _ATTENTION_BLOCK_ELEMENTS scores each."""
    step = max(1, _ATTENTION_BLOCK_ELEMENTS // (T * T))
    return [slice(start, min(start + step, count)) for start in range(0, count, step)]


def _query_blocks(T: int) -> list[slice]:
    """Split range(T) into consecutive blocks of _QUERY_BLOCK queries, the last one possibly shorter."""
    return [slice(start, min(start + _QUERY_BLOCK, T)) for start in range(0, T, _QUERY_BLOCK)]


def attention_forward(
    qkv: np.ndarray, num_heads: int, mask: np.ndarray, dropout: float, rng: np.random.Generator | None
) -> tuple[np.ndarray, Any]:
    """Causal softmax attention of fused qkv (B, T, 3C), columns [q | k | v]: returns heads (B, nh, T, hs).

    mask is the additive mask of causal_mask, at least (T, T). Attention dropout acts on the
    probabilities.

    The scores are kept in (key, query) layout, so the softmax reduces over axis -2. Its
    broadcasts then run along contiguous rows, which makes it about 25% faster than a
    softmax over the last axis (float32, T = 256, measured on a 2-core Xeon). The query
    block that ends at query e keeps its probabilities as one (B*nh, e, block size) array,
    the keys 0..e-1 by its queries; the cache holds one such array per block.
    """
    B, T, C3 = qkv.shape
    nh = num_heads
    hs = C3 // 3 // nh
    split = qkv.reshape(B, T, 3, nh, hs)  # (B, T, 3C) -> (B, T, 3, nh, hs)
    # Contiguous copies, so that batch and heads flatten into one axis of B * nh pairs.
    q_scaled = np.ascontiguousarray(split[:, :, 0].transpose(0, 2, 1, 3))  # (B, nh, T, hs)
    k = np.ascontiguousarray(split[:, :, 1].transpose(0, 2, 1, 3))  # (B, nh, T, hs)
    v = np.ascontiguousarray(split[:, :, 2].transpose(0, 2, 1, 3))  # (B, nh, T, hs)
    # Scaling q (T * hs elements) costs less than scaling the scores (T * T elements).
    scale = 1.0 / math.sqrt(hs)
    q_scaled *= scale
    q_pairs = q_scaled.reshape(B * nh, T, hs)  # (B*nh, T, hs)
    k_pairs = k.reshape(B * nh, T, hs)
    v_pairs = v.reshape(B * nh, T, hs)

    blocks = _query_blocks(T)
    probs = [np.empty((B * nh, block.stop, block.stop - block.start), dtype=qkv.dtype) for block in blocks]
    drops = [dropout_mask(block_probs.shape, block_probs.dtype, dropout, rng) for block_probs in probs]
    probs_dropped = [p if drop is None else np.empty_like(p) for p, drop in zip(probs, drops)]
    y = np.empty((B * nh, T, hs), dtype=qkv.dtype)
    for group in _head_groups(B * nh, T):
        for block, block_probs, block_dropped, drop in zip(blocks, probs, probs_dropped, drops):
            keys = slice(0, block.stop)  # every key up to the block's last query
            scores = block_probs[group]  # (G, keys, queries)
            np.matmul(k_pairs[group, keys], q_pairs[group, block].transpose(0, 2, 1), out=scores)  # (G, e, hs) @ (G, hs, Tq) -> (G, e, Tq)
            scores[:, block.start :] += mask[block, block]  # only the diagonal square has keys after queries

            # Softmax over the keys (axis -2), in place: scores -> probabilities.
            scores -= scores.max(axis=-2, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-2, keepdims=True)

            if drop is not None:
                np.multiply(scores, drop[group], out=block_dropped[group])
            np.matmul(block_dropped[group].transpose(0, 2, 1), v_pairs[group, keys], out=y[group, block])  # (G, Tq, e) @ (G, e, hs) -> (G, Tq, hs)

    cache = (q_scaled, k, v, blocks, probs, probs_dropped, drops, scale)
    return y.reshape(B, nh, T, hs), cache


def attention_backward(dy: np.ndarray, cache: Any) -> np.ndarray:
    """Return dqkv (B, T, 3C) for dy (B, nh, T, hs)."""
    q_scaled, k, v, blocks, probs, probs_dropped, drops, scale = cache
    B, nh, T, hs = dy.shape
    q_pairs = q_scaled.reshape(B * nh, T, hs)  # (B*nh, T, hs)
    k_pairs = k.reshape(B * nh, T, hs)
    v_pairs = v.reshape(B * nh, T, hs)
    dy_pairs = np.ascontiguousarray(dy).reshape(B * nh, T, hs)  # (B, nh, T, hs) -> (B*nh, T, hs)

    dq = np.empty((B * nh, T, hs), dtype=dy.dtype)
    # Every query block adds to the gradients of the keys and values it saw.
    dk = np.zeros_like(dq)
    dv = np.zeros_like(dq)
    groups = _head_groups(B * nh, T)
    scratch = np.empty((groups[0].stop, T, min(T, _QUERY_BLOCK)), dtype=dy.dtype)
    key_scratch = np.empty((groups[0].stop, T, hs), dtype=dy.dtype)
    for group in groups:
        G = group.stop - group.start
        for block, block_probs, block_dropped, drop in zip(blocks, probs, probs_dropped, drops):
            keys = slice(0, block.stop)
            e, Tq = block.stop, block.stop - block.start
            block_dy = dy_pairs[group, block]  # (G, Tq, hs)
            key_partial = key_scratch[:G, :e]  # (G, e, hs)
            np.matmul(block_dropped[group], block_dy, out=key_partial)  # (G, e, Tq) @ (G, Tq, hs) -> (G, e, hs)
            dv[group, keys] += key_partial
            dprobs = scratch[:G, :e, :Tq]
            np.matmul(v_pairs[group, keys], block_dy.transpose(0, 2, 1), out=dprobs)  # (G, e, hs) @ (G, hs, Tq) -> (G, e, Tq)
            if drop is not None:
                dprobs *= drop[group]

            # Softmax backward over the keys: dscores = probs * (dprobs - sum_keys dprobs * probs).
            # Masked entries have probability 0, so their gradient is 0.
            group_probs = block_probs[group]
            key_sum = np.einsum("gkq,gkq->gq", dprobs, group_probs)[:, None, :]  # (G, 1, Tq)
            dscores = dprobs
            dscores -= key_sum
            dscores *= group_probs

            np.matmul(dscores.transpose(0, 2, 1), k_pairs[group, keys], out=dq[group, block])  # (G, Tq, e) @ (G, e, hs) -> (G, Tq, hs)
            np.matmul(dscores, q_pairs[group, block], out=key_partial)  # (G, e, Tq) @ (G, Tq, hs) -> (G, e, hs)
            dk[group, keys] += key_partial
    dq *= scale

    dqkv = np.empty((B, T, 3, nh, hs), dtype=dy.dtype)
    dqkv[:, :, 0] = dq.reshape(B, nh, T, hs).transpose(0, 2, 1, 3)  # (B, nh, T, hs) -> (B, T, nh, hs)
    dqkv[:, :, 1] = dk.reshape(B, nh, T, hs).transpose(0, 2, 1, 3)
    dqkv[:, :, 2] = dv.reshape(B, nh, T, hs).transpose(0, 2, 1, 3)
    return dqkv.reshape(B, T, 3 * nh * hs)  # (B, T, 3, nh, hs) -> (B, T, 3C)


# Head merge.


def merge_heads_forward(y: np.ndarray) -> tuple[np.ndarray, None]:
    """Concatenate the heads: (B, nh, T, hs) -> (B, T, C)."""
    B, nh, T, hs = y.shape
    return y.transpose(0, 2, 1, 3).reshape(B, T, nh * hs), None  # (B, nh, T, hs) -> (B, T, nh, hs) -> (B, T, C)


def merge_heads_backward(dout: np.ndarray, num_heads: int) -> np.ndarray:
    """Split dout (B, T, C) back into heads (B, nh, T, hs); a merge has no cache, only the head count."""
    B, T, C = dout.shape
    return dout.reshape(B, T, num_heads, C // num_heads).transpose(0, 2, 1, 3)  # (B, T, C) -> (B, nh, T, hs)


# GELU.

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_TANH_CUBIC = 0.044715
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
# The tanh form's chain of eight elementwise passes runs on row blocks of about this many
# elements, so every pass after the first reads from the L2 cache. For a (2048, 1536)
# float32 input this takes 30% off the time (measured on a 2-core Xeon).
_BLOCK_ELEMENTS = 65536


def _row_blocks(rows: int, columns: int) -> list[slice]:
    """Split rows into consecutive slices of about _BLOCK_ELEMENTS elements each."""
    step = max(1, _BLOCK_ELEMENTS // columns)
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


def gelu_forward(x: np.ndarray, approximation: str) -> tuple[np.ndarray, Any]:
    """GELU: "tanh" is 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), "none" is 0.5 x (1 + erf(x / sqrt(2)))."""
    if approximation == "tanh":
        x_rows = x.reshape(-1, x.shape[-1])  # (..., H) -> (N, H)
        y = np.empty_like(x_rows)
        tanh = np.empty_like(x_rows)
        for rows in _row_blocks(*x_rows.shape):
            xb, tb, yb = x_rows[rows], tanh[rows], y[rows]
            # tanh(sqrt(2/pi) * x * (1 + 0.044715 x^2)), computed in one buffer.
            np.square(xb, out=tb)
            tb *= _SQRT_2_OVER_PI * _TANH_CUBIC
            tb += _SQRT_2_OVER_PI
            tb *= xb
            np.tanh(tb, out=tb)
            np.add(tb, 1.0, out=yb)
            yb *= xb
            yb *= 0.5
        return y.reshape(x.shape), (x_rows, approximation, tanh)
    if approximation == "none":
        # cdf = Phi(x) = 0.5 (1 + erf(x / sqrt(2))), the standard normal CDF.
        cdf = erf(x * _INV_SQRT_2)
        cdf += 1.0
        cdf *= 0.5
        return x * cdf, (x, approximation, cdf)
    raise ValueError(f"unknown GELU approximation {approximation!r}; use 'tanh' or 'none'")


def gelu_backward(dy: np.ndarray, cache: Any) -> np.ndarray:
    x, approximation, saved = cache
    if approximation == "tanh":
        # d/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2), with t the forward's tanh.
        tanh = saved
        dy_rows = dy.reshape(x.shape)  # (..., H) -> (N, H)
        dx = np.empty_like(x)
        blocks = _row_blocks(*x.shape)
        scratch = np.empty_like(x[blocks[0]])

        for rows in blocks:
            xb, tb, db = x[rows], tanh[rows], dx[rows]
            sech_square = scratch[: rows.stop - rows.start]
            np.square(xb, out=db)
            db *= _SQRT_2_OVER_PI * 3.0 * _TANH_CUBIC
            db += _SQRT_2_OVER_PI
            np.square(tb, out=sech_square)
            np.subtract(1.0, sech_square, out=sech_square)
            db *= sech_square
            db *= xb
            db += tb
            db += 1.0
            db *= 0.5
            db *= dy_rows[rows]
        return dx.reshape(dy.shape)

    # d/dx = Phi(x) + x phi(x), with phi the standard normal density.
    cdf = saved
    local_grad = np.square(x)
    local_grad *= -0.5
    np.exp(local_grad, out=local_grad)
    local_grad *= _INV_SQRT_2PI
    local_grad *= x
    local_grad += cdf
    local_grad *= dy
    return local_grad


# Softmax cross-entropy.


def softmax_cross_entropy_forward(logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, Any]:
    """Return the cross-entropy of each position, (B, T), for logits (B, T, V) and int targets (B, T).

    The softmax is fused in: the loss is logsumexp(logits) - logits[target], and the cache
    keeps the probabilities that the backward needs.
    """
    shifted = logits - logits.max(axis=-1, keepdims=True)  # (B, T, V)
    target_shifted = np.take_along_axis(shifted, targets[..., None], axis=-1)[..., 0]  # (B, T)
    probs = np.exp(shifted, out=shifted)
    total = probs.sum(axis=-1, keepdims=True)  # (B, T, 1)
    losses = np.log(total[..., 0])
    losses -= target_shifted
    probs /= total
    return losses, (probs, targets)


def softmax_cross_entropy_backward(dlosses: np.ndarray, cache: Any) -> np.ndarray:
    """Return dlogits (B, T, V) = (probs - onehot(targets)) * dlosses."""
    probs, targets = cache
    dlogits = probs * dlosses[..., None]
    B, T = targets.shape
    batch_index = np.arange(B)[:, None]  # (B, 1)
    time_index = np.arange(T)[None, :]  # (1, T)
    dlogits[batch_index, time_index, targets] -= dlosses
    return dlogits
