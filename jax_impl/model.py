"""The GPT model in Flax NNX, numerically the same as the PyTorch reference.

Dimension legend, used in the shape comments below:
    B  batch size            T  query positions         S  key positions
    C  d_model               V  vocabulary size         nh number of heads
    hs head size (C // nh)   H  MLP hidden size (mlp_expansion * C)
    I, O input and output features of a linear layer     N  rows of a flattened batch (B * T)

Flax defaults that differ from trigpt's rules are set here once. LayerNorm is our own module,
because nnx.LayerNorm defaults to eps 1e-6 and trigpt takes eps from the config. The GELU form
goes to jax.nn.gelu explicitly, since it defaults to tanh. Every matmul carries the model's
precision, and the causal mask puts -inf on future keys with jnp.where.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from shared.config import GPTConfig
from shared.weights import INIT_STD

# Keys and values of one block, each (B, nh, S, hs).
LayerCache = tuple[jax.Array, jax.Array]

# Names accepted for the matmul precision. "highest" is full float32. "default" lets XLA pick a
# faster mode: bfloat16 on TPU and TF32 on recent GPUs, per the JAX matmul precision guide.
# On CPU the default is full float32 as well.
PRECISIONS = {
    "default": lax.Precision.DEFAULT,
    "high": lax.Precision.HIGH,
    "highest": lax.Precision.HIGHEST,
}


# Attention without a cache runs its queries in blocks of this many (see CausalSelfAttention).
# With T = 256 that skips a quarter of the (T, T) scores. In the benchmark model's train step
# under jit, blocks of 128 took about 40 ms off a 0.75 s step, against one block of 256
# (2-core Xeon, jaxlib 0.10.2).
QUERY_BLOCK = 128


def check_precision(name: str) -> lax.Precision:
    """Return the lax.Precision for a name in PRECISIONS, or raise ValueError."""
    if name not in PRECISIONS:
        raise ValueError(f"matmul precision {name!r} is not supported; use one of {', '.join(PRECISIONS)}")
    return PRECISIONS[name]


def _as_row(vector: jax.Array, rank: int) -> jax.Array:
    """Reshape a (C,) vector to (1, ..., 1, C) so that it broadcasts without rank promotion."""
    return jnp.reshape(vector, (1,) * (rank - 1) + (-1,))


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: jax.Array, scale: jax.Array, shift: jax.Array, eps: float) -> jax.Array:
    """Normalise x (..., C) over its last axis with the biased variance, then scale and shift (each (1, ..., 1, C)).

    The variance comes from the centred values, so a large mean costs no precision. The
    backward is written out: under jit (jaxlib 0.10.2, CPU) it took about 2 ms off each
    LayerNorm's forward and backward in the benchmark model, against autodiff, on a 2-core Xeon.
    """
    return _layer_norm_forward(x, scale, shift, eps)[0]


def _layer_norm_forward(x, scale, shift, eps):
    mean = jnp.mean(x, axis=-1, keepdims=True)  # (..., 1)
    centred = x - mean
    variance = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)  # (..., 1)
    rstd = lax.rsqrt(variance + eps)  # (..., 1)
    normalised = centred * rstd
    return normalised * scale + shift, (normalised, rstd, scale)


def _layer_norm_backward(eps, residuals, dy):
    normalised, rstd, scale = residuals
    leading_axes = tuple(range(dy.ndim - 1))
    dscale = jnp.sum(dy * normalised, axis=leading_axes, keepdims=True)  # (1, ..., 1, C)
    dshift = jnp.sum(dy, axis=leading_axes, keepdims=True)  # (1, ..., 1, C)
    # dx = rstd * (dn - mean(dn) - n * mean(dn * n)) with n the normalised x, dn = dy * scale, means over C.
    dnormalised = dy * scale
    mean_dnormalised = jnp.mean(dnormalised, axis=-1, keepdims=True)  # (..., 1)
    mean_product = jnp.mean(dnormalised * normalised, axis=-1, keepdims=True)  # (..., 1)
    dx = rstd * (dnormalised - mean_dnormalised - normalised * mean_product)
    return dx, dscale, dshift


layer_norm.defvjp(_layer_norm_forward, _layer_norm_backward)


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis: biased variance from the centred values, eps from the config."""

    def __init__(self, size: int, eps: float, dtype: Any) -> None:
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((size,), dtype))
        self.shift = nnx.Param(jnp.zeros((size,), dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        scale = _as_row(self.scale[...], x.ndim)  # (1, ..., 1, C)
        shift = _as_row(self.shift[...], x.ndim)
        return layer_norm(x, scale, shift, self.eps)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def matmul(x: jax.Array, kernel: jax.Array, precision: lax.Precision) -> jax.Array:
    """Multiply x (..., I) by kernel (I, O) and return (..., O), with a backward pass tuned for XLA on CPU."""
    return jnp.einsum("...i,io->...o", x, kernel, precision=precision)  # (..., I) @ (I, O) -> (..., O)


def _matmul_forward(x, kernel, precision):
    return matmul(x, kernel, precision), (x, kernel)


def _matmul_backward(precision, residuals, dy):
    x, kernel = residuals
    dx = jnp.einsum("...o,io->...i", dy, kernel, precision=precision)  # (..., O) @ (O, I) -> (..., I)

    x_rows = x.reshape(-1, x.shape[-1])  # (N, I) with N the product of the leading axes
    dy_rows = dy.reshape(-1, dy.shape[-1])  # (N, O)
    # Left to itself, XLA on CPU (jaxlib 0.10.2) transposes an (N, .) operand of x^T @ dy inside
    # a fusion with the elementwise ops that produce it, such as a GELU, and multiplies on one
    # thread. Transposing the narrower operand explicitly leaves a product that XLA runs on all
    # threads. This cut the CPU time of a benchmarks/jax_vs_torch.py train step by a third.
    if x.shape[-1] <= dy.shape[-1]:
        dkernel = jnp.dot(x_rows.T, dy_rows, precision=precision)  # (I, N) @ (N, O) -> (I, O)
    else:
        dkernel = jnp.dot(dy_rows.T, x_rows, precision=precision).T  # ((O, N) @ (N, I))^T -> (I, O)
    return dx, dkernel


matmul.defvjp(_matmul_forward, _matmul_backward)


@jax.custom_vjp
def masked_softmax(scores: jax.Array, allowed: jax.Array) -> jax.Array:
    """Softmax over the last axis of scores (..., S) after setting the entries where allowed is False to -inf.

    allowed (broadcastable to scores) must be True somewhere in every row, or the row is NaN.
    The backward is written out. Under jit (jaxlib 0.10.2, CPU), autodiff of jax.nn.softmax
    materialises broadcasts of the row sums, and this backward took 40% off the time of one
    layer's attention forward and backward (query blocks of 128, 2-core Xeon).
    """
    scores = jnp.where(allowed, scores, -jnp.inf)
    shifted = scores - jnp.max(scores, axis=-1, keepdims=True)
    unnormalised = jnp.exp(shifted)
    return unnormalised / jnp.sum(unnormalised, axis=-1, keepdims=True)


def _masked_softmax_forward(scores, allowed):
    probs = masked_softmax(scores, allowed)
    return probs, probs


def _masked_softmax_backward(probs, dprobs):
    # dscores = probs * (dprobs - sum over the row of dprobs * probs). A masked entry has
    # probability 0, so its gradient is 0. allowed is boolean and gets no gradient.
    row_sums = jnp.sum(dprobs * probs, axis=-1, keepdims=True)
    return probs * (dprobs - row_sums), None


masked_softmax.defvjp(_masked_softmax_forward, _masked_softmax_backward)


class Linear(nnx.Module):
    """y = x @ kernel + bias, with kernel (d_in, d_out): the canonical layout and the Flax parameter names."""

    def __init__(
        self, d_in: int, d_out: int, *, use_bias: bool, std: float, dtype: Any, precision: lax.Precision, rngs: nnx.Rngs
    ) -> None:
        self.precision = precision
        self.kernel = nnx.Param(nnx.initializers.normal(std)(rngs.params(), (d_in, d_out), dtype))
        self.bias = nnx.Param(jnp.zeros((d_out,), dtype)) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = matmul(x, self.kernel[...], self.precision)  # (..., d_in) @ (d_in, d_out) -> (..., d_out)
        if self.bias is not None:
            y = y + _as_row(self.bias[...], y.ndim)
        return y


class CausalSelfAttention(nnx.Module):
    """Causal self-attention with one fused qkv projection, usable with or without a KV cache."""

    def __init__(self, config: GPTConfig, dtype: Any, precision: lax.Precision, rngs: nnx.Rngs) -> None:
        C = config.d_model
        residual_std = INIT_STD / math.sqrt(2 * config.num_layers)
        self.num_heads = config.num_heads
        self.head_size = config.head_size
        self.precision = precision
        self.qkv = Linear(C, 3 * C, use_bias=config.use_bias, std=INIT_STD, dtype=dtype, precision=precision, rngs=rngs)
        self.out_proj = Linear(C, C, use_bias=config.use_bias, std=residual_std, dtype=dtype, precision=precision, rngs=rngs)
        self.attn_dropout = nnx.Dropout(config.dropout)
        self.resid_dropout = nnx.Dropout(config.dropout)

    def _split_heads(self, x: jax.Array) -> jax.Array:
        B, T, _ = x.shape
        x = x.reshape(B, T, self.num_heads, self.head_size)  # (B, T, C) -> (B, T, nh, hs)
        return x.transpose(0, 2, 1, 3)  # (B, nh, T, hs)

    def _attend(
        self,
        q: jax.Array,
        k: jax.Array,
        v: jax.Array,
        query_positions: jax.Array,
        deterministic: bool,
        rngs: nnx.Rngs | None,
    ) -> jax.Array:
        """Attend from scaled queries q (B, nh, Tq, hs) at query_positions (Tq,) to keys and values (B, nh, S, hs) at 0..S-1."""
        scores = jnp.einsum("bhtd,bhsd->bhts", q, k, precision=self.precision)  # (B, nh, Tq, hs) @ (B, nh, hs, S) -> (B, nh, Tq, S)
        # Keys after their query get -inf. The diagonal is never masked, so no row is all -inf.
        key_positions = jnp.arange(k.shape[2], dtype=jnp.int32)  # (S,)
        allowed = key_positions[None, :] <= query_positions[:, None]  # (Tq, S)
        probs = masked_softmax(scores, allowed[None, None, :, :])
        probs = self.attn_dropout(probs, deterministic=deterministic, rngs=rngs)
        return jnp.einsum("bhts,bhsd->bhtd", probs, v, precision=self.precision)  # (B, nh, Tq, S) @ (B, nh, S, hs) -> (B, nh, Tq, hs)

    def __call__(
        self,
        x: jax.Array,
        *,
        train: bool = False,
        rngs: nnx.Rngs | None = None,
        cache: LayerCache | None = None,
        position: jax.Array | None = None,
    ) -> tuple[jax.Array, LayerCache]:
        """Attend from x (B, T, C) and return (output (B, T, C), this layer's keys and values).

        Without a cache, x contains positions 0..T-1 and the returned keys and values are those
        of x. With a cache (buffers of S slots) and a position p, x is one token (T = 1) at
        position p: its key and value are written into slot p, it attends to slots 0..p, and
        the updated buffers are returned.
        """
        B, T, C = x.shape
        deterministic = not train

        q, k, v = jnp.split(self.qkv(x), 3, axis=-1)  # (B, T, 3C) -> 3 x (B, T, C)
        # Scaling q (T * hs elements) costs less than scaling the scores (T * S elements).
        q = self._split_heads(q) * (1.0 / math.sqrt(self.head_size))  # (B, nh, T, hs)
        k = self._split_heads(k)  # (B, nh, T, hs)
        v = self._split_heads(v)  # (B, nh, T, hs)

        if cache is None:
            # Positions 0..T-1 attend to each other. Each block of queries reads only the
            # keys up to its last query, so the scores above the diagonal blocks are never
            # computed.
            blocks = []
            for start in range(0, T, QUERY_BLOCK):
                stop = min(start + QUERY_BLOCK, T)
                query_positions = jnp.arange(start, stop, dtype=jnp.int32)  # (Tq,)
                blocks.append(
                    self._attend(q[:, :, start:stop], k[:, :, :stop], v[:, :, :stop], query_positions, deterministic, rngs)
                )
            y = blocks[0] if len(blocks) == 1 else jnp.concatenate(blocks, axis=2)  # (B, nh, T, hs)
        else:
            # One token at position p: its key and value go into slot p, and it attends to
            # slots 0..p. The slots after p contain stale values and are masked.
            k = lax.dynamic_update_slice_in_dim(cache[0], k, position, axis=2)  # (B, nh, S, hs)
            v = lax.dynamic_update_slice_in_dim(cache[1], v, position, axis=2)  # (B, nh, S, hs)
            y = self._attend(q, k, v, jnp.reshape(position, (1,)), deterministic, rngs)  # (B, nh, 1, hs)

        y = y.transpose(0, 2, 1, 3).reshape(B, T, C)  # merge heads: (B, nh, T, hs) -> (B, T, nh, hs) -> (B, T, C)
        y = self.resid_dropout(self.out_proj(y), deterministic=deterministic, rngs=rngs)
        return y, (k, v)


class FeedForward(nnx.Module):
    """fc1 -> GELU (form from the config) -> fc2 -> dropout."""

    def __init__(self, config: GPTConfig, dtype: Any, precision: lax.Precision, rngs: nnx.Rngs) -> None:
        C, H = config.d_model, config.d_mlp
        residual_std = INIT_STD / math.sqrt(2 * config.num_layers)
        self.fc1 = Linear(C, H, use_bias=config.use_bias, std=INIT_STD, dtype=dtype, precision=precision, rngs=rngs)
        self.fc2 = Linear(H, C, use_bias=config.use_bias, std=residual_std, dtype=dtype, precision=precision, rngs=rngs)
        self.dropout = nnx.Dropout(config.dropout)
        # jax.nn.gelu defaults to the tanh form, so the config's form is passed explicitly.
        self.approximate = config.gelu_approximation == "tanh"

    def __call__(self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None) -> jax.Array:
        hidden = jax.nn.gelu(self.fc1(x), approximate=self.approximate)  # (B, T, C) @ (C, H) -> (B, T, H)
        return self.dropout(self.fc2(hidden), deterministic=not train, rngs=rngs)  # (B, T, H) @ (H, C) -> (B, T, C)


class Block(nnx.Module):
    """One transformer block. Pre-LN normalises inside each residual branch; post-LN after each residual add."""

    def __init__(self, config: GPTConfig, dtype: Any, precision: lax.Precision, rngs: nnx.Rngs) -> None:
        self.pre_ln = config.pre_ln
        self.ln1 = LayerNorm(config.d_model, config.layer_norm_eps, dtype)
        self.attn = CausalSelfAttention(config, dtype, precision, rngs)
        self.ln2 = LayerNorm(config.d_model, config.layer_norm_eps, dtype)
        self.mlp = FeedForward(config, dtype, precision, rngs)

    def __call__(
        self,
        x: jax.Array,
        *,
        train: bool = False,
        rngs: nnx.Rngs | None = None,
        cache: LayerCache | None = None,
        position: jax.Array | None = None,
    ) -> tuple[jax.Array, LayerCache]:
        """Return (x (B, T, C), keys and values); see CausalSelfAttention for the cache."""
        if self.pre_ln:
            attended, kv = self.attn(self.ln1(x), train=train, rngs=rngs, cache=cache, position=position)
            x = x + attended
            x = x + self.mlp(self.ln2(x), train=train, rngs=rngs)
        else:
            attended, kv = self.attn(x, train=train, rngs=rngs, cache=cache, position=position)
            x = self.ln1(x + attended)
            x = self.ln2(x + self.mlp(x, train=train, rngs=rngs))
        return x, kv


class GPT(nnx.Module):
    """GPT-2-style decoder: embeddings, a stack of blocks, a final LayerNorm and a bias-free head.

    With weight tying the head reads tok_embed's matrix and there is no lm_head parameter.
    Constructing the module draws the GPT-2 initialisation from Flax initialisers. The backend
    instead builds an abstract module and fills it from canonical parameters (jax_impl.convert).
    """

    def __init__(
        self,
        config: GPTConfig,
        *,
        dtype: Any = jnp.float32,
        precision: lax.Precision = lax.Precision.HIGHEST,
        rngs: nnx.Rngs,
    ) -> None:
        embed_init = nnx.initializers.normal(INIT_STD)
        self.config = config
        self.dtype = jnp.dtype(dtype)
        self.precision = precision
        self.tok_embed = nnx.Embed(
            config.vocab_size, config.d_model, dtype=dtype, param_dtype=dtype, embedding_init=embed_init, rngs=rngs
        )
        self.pos_embed = nnx.Embed(
            config.context_length, config.d_model, dtype=dtype, param_dtype=dtype, embedding_init=embed_init, rngs=rngs
        )
        self.embed_dropout = nnx.Dropout(config.dropout)
        self.blocks = nnx.List([Block(config, dtype, precision, rngs) for _ in range(config.num_layers)])
        self.final_ln = LayerNorm(config.d_model, config.layer_norm_eps, dtype)
        if config.weight_tying:
            self.lm_head = None
        else:
            self.lm_head = Linear(
                config.d_model, config.vocab_size, use_bias=False, std=INIT_STD, dtype=dtype, precision=precision, rngs=rngs
            )

    def embed(self, tokens: jax.Array, positions: jax.Array) -> jax.Array:
        """Token plus position embedding of tokens (B, T) at positions (T,), before dropout: (B, T, C)."""
        return self.tok_embed(tokens) + self.pos_embed(positions)[None, :, :]  # (B, T, C) + (1, T, C)

    def head(self, h: jax.Array) -> jax.Array:
        """Logits from final-LayerNorm output h (..., C): (..., V)."""
        if self.lm_head is not None:
            return self.lm_head(h)  # (..., C) @ (C, V) -> (..., V)
        return matmul(h, self.tok_embed.embedding[...].T, self.precision)  # (..., C) @ (C, V) -> (..., V)

    def __call__(self, tokens: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None) -> jax.Array:
        """Logits (B, T, V) of tokens (B, T) at positions 0..T-1. Training mode needs rngs with a dropout stream."""
        T = tokens.shape[1]
        x = self.embed(tokens, jnp.arange(T, dtype=jnp.int32))  # (B, T, C)
        x = self.embed_dropout(x, deterministic=not train, rngs=rngs)
        for block in self.blocks:
            x, _ = block(x, train=train, rngs=rngs)
        return self.head(self.final_ln(x))

    def activations(self, tokens: jax.Array) -> dict[str, jax.Array]:
        """Run an eval-mode forward and return every intermediate result under the backend interface's names."""
        T = tokens.shape[1]
        x = self.embed(tokens, jnp.arange(T, dtype=jnp.int32))  # (B, T, C)
        collected = {"embed": x}
        for i, block in enumerate(self.blocks):
            x, _ = block(x)
            collected[f"blocks.{i}"] = x
        x = self.final_ln(x)
        collected["final_ln"] = x
        collected["logits"] = self.head(x)  # (B, T, V)
        return collected

    def run_blocks(self, x: jax.Array) -> jax.Array:
        """Run only the stack of blocks on x (B, T, C) in eval mode, without embedding or final LayerNorm."""
        for block in self.blocks:
            x, _ = block(x)
        return x

    def prefill(self, tokens: jax.Array, length: jax.Array) -> tuple[jax.Array, tuple[LayerCache, ...]]:
        """Fill a KV cache from a window of tokens (B, S) at positions 0..S-1, in eval mode.

        Only the first `length` tokens are real. The rest is padding, which the causal mask
        keeps away from them. Returns the logits at position length - 1 (B, V) and each
        block's keys and values (B, nh, S, hs), which serve as cache buffers of S slots.
        """
        S = tokens.shape[1]
        x = self.embed(tokens, jnp.arange(S, dtype=jnp.int32))  # (B, S, C)
        cache = []
        for block in self.blocks:
            x, kv = block(x)
            cache.append(kv)
        last = lax.dynamic_index_in_dim(x, length - 1, axis=1, keepdims=False)  # (B, C)
        return self.head(self.final_ln(last)), tuple(cache)

    def decode(
        self, token: jax.Array, cache: tuple[LayerCache, ...], position: jax.Array
    ) -> tuple[jax.Array, tuple[LayerCache, ...]]:
        """Run one token per row (B,) at position p over a cache that contains positions 0..p-1.

        Returns the logits (B, V) and the cache with position p written in.
        """
        x = self.embed(token[:, None], jnp.reshape(position, (1,)))  # (B, 1, C)
        updated = []
        for block, layer_cache in zip(self.blocks, cache):
            x, kv = block(x, cache=layer_cache, position=position)
            updated.append(kv)
        return self.head(self.final_ln(x[:, 0, :])), tuple(updated)


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean cross-entropy over all B*T positions of logits (B, T, V) and integer targets (B, T)."""
    log_normaliser = jax.nn.logsumexp(logits, axis=-1)  # (B, T)
    target_logits = jnp.take_along_axis(logits, targets[:, :, None], axis=-1)[:, :, 0]  # (B, T)
    return jnp.mean(log_normaliser - target_logits)
