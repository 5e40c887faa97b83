"""Sampling parity: the shared sampler gives the same tokens in every backend."""

from __future__ import annotations

import numpy as np
import pytest

from shared.backends import get_backend
from shared.config import GPTConfig
from shared.sampling import top_k_filter
from shared.weights import init_parameters

BACKENDS = ("torch", "jax", "numpy")
CONFIG = GPTConfig(vocab_size=37, context_length=16, d_model=32, num_heads=4, num_layers=2, dropout=0.0)
PROMPT = np.array([[1, 2, 3], [30, 20, 10]])


def generate_everywhere(dtype, **kwargs):
    # A larger init scale than 0.02 spreads the logits, so that sampling is not near-uniform
    # and a wrong top-k or temperature changes the tokens.
    params = {name: value * 10 if name.endswith("weight") else value for name, value in init_parameters(CONFIG, seed=0).items()}
    results = {}
    for name in BACKENDS:
        backend = get_backend(name)
        model = backend.load(params, CONFIG, dtype=dtype)
        results[name] = backend.generate(model, PROMPT, **kwargs)
    return results


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({"temperature": 1.0, "top_k": None}, id="plain"),
        pytest.param({"temperature": 0.7, "top_k": 5}, id="top-k-5"),
        pytest.param({"temperature": 1.5, "top_k": 100}, id="top-k-above-vocab"),
    ],
)
def test_same_seed_same_tokens(dtype, settings):
    # 20 tokens from a 3-token prompt overflow the 16-token context, so the window slides too.
    results = generate_everywhere(dtype, max_new_tokens=20, seed=1234, **settings)
    assert results["torch"].shape == (2, 23)
    for name in ("jax", "numpy"):
        assert np.array_equal(results[name], results["torch"]), f"{name} tokens differ from torch:\n{results[name]}\n{results['torch']}"
    other_seed = generate_everywhere(dtype, max_new_tokens=20, seed=1235, **settings)
    assert not np.array_equal(other_seed["torch"], results["torch"])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_greedy_streams_identical(dtype):
    results = generate_everywhere(dtype, max_new_tokens=20, top_k=1, seed=None)
    for name in ("jax", "numpy"):
        assert np.array_equal(results[name], results["torch"]), f"{name} greedy tokens differ from torch"


# Tokens 1, 3 and 5 tie at the second largest logit, so top_k=2 keeps all four of 0, 1, 3, 5.
TIED_LOGITS = np.array([[5.0, 3.0, 0.0, 3.0, 1.0, 3.0, -2.0]])
KEPT = {0, 1, 3, 5}


def sampled_support(sample, uniforms):
    return {int(sample(np.array([u]))) for u in uniforms}


def test_top_k_keeps_ties_in_every_backend():
    import jax.numpy as jnp
    import torch

    from jax_impl.generate import sample_from_logits
    from shared.sampling import sample_next
    from torch_impl import top_k_filter as torch_top_k_filter

    assert set(np.flatnonzero(np.isfinite(top_k_filter(TIED_LOGITS, 2)[0]))) == KEPT
    torch_kept = torch.isfinite(torch_top_k_filter(torch.from_numpy(TIED_LOGITS), 2))[0].numpy()
    assert set(np.flatnonzero(torch_kept)) == KEPT

    # The JAX sampler filters inside its compiled loop, so its kept set is read off the
    # tokens it can return: every kept token has probability >= 0.05 here, far above the
    # 1/2000 spacing of the uniforms, and every dropped token has probability 0.
    uniforms = np.linspace(0.0, 1.0, 2000, endpoint=False)

    def jax_sample(u):
        return sample_from_logits(jnp.asarray(TIED_LOGITS, jnp.float32), jnp.asarray(u, jnp.float32), jnp.float32(1.0), jnp.int32(2))[0]

    def shared_sample(u):
        return sample_next(TIED_LOGITS, u, 1.0, 2)[0]

    assert sampled_support(jax_sample, uniforms) == KEPT
    assert sampled_support(shared_sample, uniforms) == KEPT
    tokens_jax = [int(jax_sample(np.array([u]))) for u in uniforms[::50]]
    tokens_shared = [int(shared_sample(np.array([u]))) for u in uniforms[::50]]
    assert tokens_jax == tokens_shared
