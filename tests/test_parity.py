"""Cross-backend parity: every pair of backends computes the same model.

For each config of the matrix and each dtype, every backend runs the same batch once, and
the results are cached across pairs. Every pair is then compared on the logits, the loss,
every canonical gradient and the per-layer activations (embedding sum, each block's output,
final LayerNorm). The full matrix is marked slow; a corner of it runs in the fast suite.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest

from shared.backends import get_backend
from shared.compare import point_tolerance
from shared.config import GPTConfig
from shared.weights import init_parameters, parameter_shapes
from tests.tolerances import assert_close

BACKENDS = ("torch", "jax", "numpy")
PAIRS = list(itertools.combinations(BACKENDS, 2))
DTYPES = ("float64", "float32")

BASE = GPTConfig(vocab_size=11, context_length=8, d_model=16, num_heads=2, num_layers=2, dropout=0.0)


def config_matrix() -> dict[str, tuple[GPTConfig, int]]:
    """Name -> (config, sequence length) for every config the parity suite covers."""
    configs = {}
    for pre_ln, tied, bias, gelu in itertools.product((True, False), (True, False), (True, False), ("tanh", "none")):
        name = f"{'pre' if pre_ln else 'post'}-{'tied' if tied else 'untied'}-{'bias' if bias else 'nobias'}-{gelu}"
        config = BASE.replace(pre_ln=pre_ln, weight_tying=tied, use_bias=bias, gelu_approximation=gelu)
        configs[name] = (config, 5)
    configs["one-head"] = (BASE.replace(num_heads=1), 5)
    configs["vocab-7"] = (BASE.replace(vocab_size=7), 5)
    configs["seq-len-1"] = (BASE, 1)
    configs["full-context"] = (BASE, BASE.context_length)
    return configs


CONFIGS = config_matrix()
# The fast suite covers both LayerNorm placements, both head kinds, both GELU forms and an edge case.
FAST = {"pre-tied-bias-tanh", "post-untied-nobias-none", "full-context"}


@functools.lru_cache(maxsize=None)
def run(backend_name: str, config_name: str, dtype: str) -> dict[str, np.ndarray]:
    """Run one backend on one config's batch and return every comparison point."""
    config, seq_len = CONFIGS[config_name]
    backend = get_backend(backend_name)
    params = init_parameters(config, seed=0, dtype=np.dtype(dtype))
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, config.vocab_size, (2, seq_len))
    targets = rng.integers(0, config.vocab_size, (2, seq_len))
    model = backend.load(params, config, dtype=dtype)
    points = dict(backend.activations(model, tokens))
    points["forward logits"] = backend.forward(model, tokens)
    loss, grads = backend.loss_and_grads(model, tokens, targets)
    points["loss"] = np.asarray(loss)
    assert set(grads) == set(parameter_shapes(config)), f"{backend_name} gradient names differ from canonical"
    for name in parameter_shapes(config):
        grad = grads[name]
        assert grad.dtype == np.dtype(dtype), f"{backend_name} gradient {name} has dtype {grad.dtype}, expected {dtype}"
        points[f"grad {name}"] = grad
    return points


def cases():
    for config_name in CONFIGS:
        marks = [] if config_name in FAST else [pytest.mark.slow]
        for dtype in DTYPES:
            for first, second in PAIRS:
                yield pytest.param(config_name, dtype, first, second, marks=marks, id=f"{config_name}-{dtype}-{first}-{second}")


@pytest.mark.parametrize("config_name, dtype, first, second", list(cases()))
def test_pair_agrees(config_name, dtype, first, second):
    expected = run(first, config_name, dtype)
    actual = run(second, config_name, dtype)
    assert list(actual) == list(expected), "backends report different comparison points"
    for point in expected:
        assert_close(actual[point], expected[point], f"{point} ({second} vs {first}, {dtype})", point_tolerance(point, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_prepost_norms_agree(dtype):
    from shared.prepost import prepost_experiment

    results = {name: prepost_experiment(name, dtype=dtype) for name in BACKENDS}
    for name in ("jax", "numpy"):
        for field in ("pre_ln_norm", "post_ln_norm"):
            expected, actual = getattr(results["torch"], field), getattr(results[name], field)
            assert_close(actual, expected, f"{field} ({name} vs torch, {dtype})", point_tolerance("grad", dtype))
    assert results["torch"].pre_ln_norm != results["torch"].post_ln_norm
