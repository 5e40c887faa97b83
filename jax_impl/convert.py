"""Conversion between canonical parameters (shared.weights) and the Flax NNX model state.

Canonical linear weights are (in, out), the layout of Flax kernels, so every tensor moves
across unchanged; only the names differ:

    tok_embed.weight            tok_embed.embedding
    pos_embed.weight            pos_embed.embedding
    blocks.{i}.attn.qkv.weight  blocks.{i}.attn.qkv.kernel      (likewise out_proj, mlp.fc1, mlp.fc2)
    blocks.{i}.ln1.scale        blocks.{i}.ln1.scale            (biases and LayerNorm params keep their names)
    lm_head.weight              lm_head.kernel                  (untied models only)
"""

from __future__ import annotations

from typing import Any, ContextManager, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from shared.config import GPTConfig
from shared.inputs import check_dtype
from shared.weights import check_parameters, parameter_shapes
from jax_impl.model import GPT, check_precision

_EMBEDDINGS = ("tok_embed", "pos_embed")

Path = tuple[str | int, ...]


def flax_path(name: str) -> Path:
    """Return the path in the Flax state of a canonical parameter name."""
    parts: list[str | int] = [int(part) if part.isdigit() else part for part in name.split(".")]
    if parts[-1] == "weight":
        parts[-1] = "embedding" if parts[0] in _EMBEDDINGS else "kernel"
    return tuple(parts)


def canonical_name(path: Path) -> str:
    """Return the canonical name of a path in the Flax state; the inverse of flax_path."""
    parts = [str(part) for part in path]
    if parts[-1] in ("embedding", "kernel"):
        parts[-1] = "weight"
    return ".".join(parts)


def dtype_scope(dtype: Any) -> ContextManager[None]:
    """Return a context that enables JAX's 64-bit mode exactly when dtype is float64.

    JAX truncates float64 to float32 unless jax_enable_x64 is set. The flag is part of the
    jit cache key, so float32 and float64 models can alternate in one process, and the
    caller's own setting comes back when the context exits.
    """
    return jax.enable_x64(np.dtype(dtype) == np.float64)


def canonical_to_state(arrays: Mapping[str, np.ndarray], template: nnx.State, dtype: Any) -> nnx.State:
    """Build a Flax state shaped like template from canonical arrays cast to dtype.

    Raises ValueError when an array's shape differs from the template's. Call inside
    dtype_scope(dtype), or float64 values are truncated.
    """
    flat = []
    for path, variable in nnx.to_flat_state(template):
        name = canonical_name(path)
        value = np.asarray(arrays[name]).astype(dtype, copy=False)
        if value.shape != tuple(variable.shape):
            raise ValueError(f"tensor {name} has shape {value.shape} but the Flax model expects {tuple(variable.shape)}")
        flat.append((path, variable.replace(jnp.asarray(value))))
    return nnx.from_flat_state(flat)


def state_to_canonical(state: nnx.State, config: GPTConfig) -> dict[str, np.ndarray]:
    """Copy a Flax state (parameters, gradients or optimizer moments) to canonical numpy arrays, in canonical order."""
    by_name = {canonical_name(path): np.array(variable[...]) for path, variable in nnx.to_flat_state(state)}
    return {name: by_name[name] for name in parameter_shapes(config)}


def from_canonical(
    params: Mapping[str, np.ndarray], config: GPTConfig, dtype: str = "float32", precision: str = "highest"
) -> GPT:
    """Build a GPT from canonical params, without drawing a Flax initialisation first."""
    dtype = check_dtype(dtype)
    matmul_precision = check_precision(precision)
    check_parameters(params, config)
    with dtype_scope(dtype):
        # eval_shape builds the module with abstract arrays, so no random init is computed.
        abstract = nnx.eval_shape(
            lambda: GPT(config, dtype=jnp.dtype(dtype), precision=matmul_precision, rngs=nnx.Rngs(0))
        )
        graphdef, template = nnx.split(abstract)
        return nnx.merge(graphdef, canonical_to_state(params, template, dtype))


def to_canonical(model: GPT) -> dict[str, np.ndarray]:
    """Canonical params of model as numpy arrays in its dtype; a tied model has no lm_head.weight."""
    with dtype_scope(model.dtype):
        return state_to_canonical(nnx.state(model, nnx.Param), model.config)
