"""The JAX backend of shared.backends: numpy in, numpy out (docs/backends.md).

Every function checks its inputs with shared.inputs before anything reaches jit, because
XLA clamps an out-of-range gather index instead of raising. Each call runs under
dtype_scope, so a float64 model computes in float64 without leaving JAX's 64-bit mode on
for the caller.
"""

from __future__ import annotations

from functools import partial
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from shared.config import GPTConfig
from shared.inputs import check_targets, check_tokens
from shared.optim import AdamWConfig, AdamWState
from jax_impl.convert import dtype_scope, from_canonical, state_to_canonical, to_canonical
from jax_impl.generate import generate as _generate
from jax_impl.model import GPT, cross_entropy
from jax_impl.train import Trainer

name = "jax"


@partial(jax.jit, static_argnums=0)
def _forward(graphdef, params, tokens):
    return nnx.merge(graphdef, params)(tokens)  # (B, T, V)


@partial(jax.jit, static_argnums=0)
def _activations(graphdef, params, tokens):
    return nnx.merge(graphdef, params).activations(tokens)


@partial(jax.jit, static_argnums=0)
def _loss_and_grads(graphdef, params, tokens, targets):
    def loss_fn(params):
        return cross_entropy(nnx.merge(graphdef, params)(tokens), targets)

    return jax.value_and_grad(loss_fn)(params)


@partial(jax.jit, static_argnums=0)
def _stack_input_gradient(graphdef, params, x, r):
    def projected(x):
        return jnp.sum(nnx.merge(graphdef, params).run_blocks(x) * r)

    return jax.grad(projected)(x)  # (B, T, C)


def load(
    params: Mapping[str, np.ndarray], config: GPTConfig, dtype: str = "float32", precision: str = "highest"
) -> GPT:
    """Build a model from canonical params.

    precision sets every matmul: "highest" (full float32, the default), "high" or "default"
    (XLA's fastest mode, which on CPU is still full float32).
    """
    params = {key: np.asarray(value) for key, value in params.items()}
    return from_canonical(params, config, dtype=dtype, precision=precision)


def export(model: GPT) -> dict[str, np.ndarray]:
    return to_canonical(model)


def config_of(model: GPT) -> GPTConfig:
    return model.config


def _device_tokens(tokens: np.ndarray) -> np.ndarray:
    # Checked ids are below vocab_size, so they fit in int32 under either x64 setting.
    return tokens.astype(np.int32)


def forward(model: GPT, tokens: np.ndarray) -> np.ndarray:
    tokens = check_tokens(tokens, model.config)
    with dtype_scope(model.dtype):
        graphdef, params = nnx.split(model)
        return np.asarray(_forward(graphdef, params, _device_tokens(tokens)))


def activations(model: GPT, tokens: np.ndarray) -> dict[str, np.ndarray]:
    tokens = check_tokens(tokens, model.config)
    with dtype_scope(model.dtype):
        graphdef, params = nnx.split(model)
        collected = _activations(graphdef, params, _device_tokens(tokens))
    # jit returns dicts with sorted keys; the interface lists them in model order.
    order = ["embed", *(f"blocks.{i}" for i in range(model.config.num_layers)), "final_ln", "logits"]
    return {key: np.asarray(collected[key]) for key in order}


def loss_and_grads(model: GPT, tokens: np.ndarray, targets: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    tokens = check_tokens(tokens, model.config)
    targets = check_targets(targets, tokens, model.config)
    with dtype_scope(model.dtype):
        graphdef, params = nnx.split(model)
        loss, grads = _loss_and_grads(graphdef, params, _device_tokens(tokens), _device_tokens(targets))
        return float(loss), state_to_canonical(grads, model.config)


def generate(
    model: GPT,
    prompt: np.ndarray,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    use_cache: bool = True,
) -> np.ndarray:
    prompt = check_tokens(prompt, model.config, name="prompt", allow_long=True)
    return _generate(model, prompt, max_new_tokens, temperature, top_k, seed, use_cache)


def stack_input_gradient_norm(model: GPT, x: np.ndarray, r: np.ndarray) -> float:
    """Run the blocks alone on x (B, T, C) in eval mode and return the norm of d sum(output * r) / dx."""
    x, r = np.asarray(x), np.asarray(r)
    if x.ndim != 3 or x.shape[-1] != model.config.d_model:
        raise ValueError(f"x must have shape (batch, sequence, {model.config.d_model}), got shape {x.shape}")
    if r.shape != x.shape:
        raise ValueError(f"r has shape {r.shape} but x has shape {x.shape}; they must match")
    with dtype_scope(model.dtype):
        graphdef, params = nnx.split(model)
        gradient = _stack_input_gradient(graphdef, params, x.astype(model.dtype), r.astype(model.dtype))
        return float(jnp.sqrt(jnp.sum(jnp.square(gradient))))


def make_trainer(model: GPT, adamw: AdamWConfig, state: AdamWState | None = None, seed: int = 0) -> Trainer:
    return Trainer(model, adamw, state, seed)
