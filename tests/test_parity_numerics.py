"""Inputs that expose quiet mismatches, checked in every backend against float64 values by hand.

A LayerNorm that computes the variance as E[x^2] - E[x]^2 loses every digit on a row with a
large mean and a small spread, and a GELU in the wrong form differs by only about 1e-3.
Each backend's own LayerNorm and MLP modules run here, and the expected values come from
Python's math module in float64, element by element.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from shared.config import GPTConfig
from tests.tolerances import assert_close

EPS = 1e-5

SHARP_ROWS = np.array(
    [
        [10000.0, 10001.0, 10002.0, 10003.0],  # large mean, small spread: exact in float32
        [0.5, 0.5001, 0.5002, 0.5003],  # nearly constant: the variance is far below eps
        [-3.0, -3.0, -3.0, -3.0],  # constant: the output is the shift alone
        [1e-3, -2e-3, 4e-3, 0.0],
    ]
)
GELU_POINTS = np.array([-6.0, -3.0, -1.0, -0.5, -1e-3, 0.0, 1e-3, 0.5, 1.0, 3.0, 6.0])


def layernorm_by_hand(row, scale, shift):
    mean = math.fsum(row) / len(row)
    variance = math.fsum((value - mean) ** 2 for value in row) / len(row)
    return [(value - mean) / math.sqrt(variance + EPS) * s + b for value, s, b in zip(row, scale, shift)]


def gelu_by_hand(x, form):
    # 1 + tanh(z) = 2 / (1 + exp(-2z)) and 1 + erf(z) = erfc(-z) avoid the cancellation that
    # 1 + tanh(z) and 1 + erf(z) suffer for negative z, so these values are good to the last digit.
    if form == "tanh":
        z = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)
        return x / (1.0 + math.exp(-2.0 * z))
    return 0.5 * x * math.erfc(-x / math.sqrt(2.0))


def torch_layernorm(x, scale, shift):
    import torch

    from torch_impl.model import LayerNorm

    layer = LayerNorm(x.shape[-1], EPS).to(torch.float64 if x.dtype == np.float64 else torch.float32)
    with torch.no_grad():
        layer.scale.copy_(torch.from_numpy(scale))
        layer.shift.copy_(torch.from_numpy(shift))
        return layer(torch.from_numpy(x)).numpy()


def numpy_layernorm(x, scale, shift):
    from numpy_impl.layers import layernorm_forward

    return layernorm_forward(x, scale, shift, EPS)[0]


def jax_layernorm(x, scale, shift):
    import jax.numpy as jnp

    from jax_impl.convert import dtype_scope
    from jax_impl.model import LayerNorm

    with dtype_scope(x.dtype):
        layer = LayerNorm(x.shape[-1], EPS, x.dtype)
        layer.scale[...] = jnp.asarray(scale)
        layer.shift[...] = jnp.asarray(shift)
        return np.asarray(layer(jnp.asarray(x)))


def mlp_config(form):
    # mlp_expansion 1 with identity weights and zero biases makes the MLP compute GELU(x) alone.
    return GPTConfig(vocab_size=4, context_length=4, d_model=len(GELU_POINTS), num_heads=1, num_layers=1,
                     mlp_expansion=1, dropout=0.0, gelu_approximation=form)


def torch_gelu(x, form):
    import torch

    from torch_impl.model import FeedForward

    dtype = torch.float64 if x.dtype == np.float64 else torch.float32
    layer = FeedForward(mlp_config(form)).to(dtype).eval()
    with torch.no_grad():
        for linear in (layer.fc1, layer.fc2):
            linear.weight.copy_(torch.eye(x.shape[-1], dtype=dtype))
            linear.bias.zero_()
        return layer(torch.from_numpy(x)).numpy()


def numpy_gelu(x, form):
    from numpy_impl.model import mlp_forward

    C = x.shape[-1]
    params = {
        "mlp.fc1.weight": np.eye(C, dtype=x.dtype),
        "mlp.fc1.bias": np.zeros(C, x.dtype),
        "mlp.fc2.weight": np.eye(C, dtype=x.dtype),
        "mlp.fc2.bias": np.zeros(C, x.dtype),
    }
    return mlp_forward(x, params, "mlp", mlp_config(form), None)[0]


def jax_gelu(x, form):
    import jax.numpy as jnp
    from flax import nnx

    from jax_impl.convert import dtype_scope
    from jax_impl.model import PRECISIONS, FeedForward

    C = x.shape[-1]
    with dtype_scope(x.dtype):
        layer = FeedForward(mlp_config(form), x.dtype, PRECISIONS["highest"], nnx.Rngs(0))
        for linear in (layer.fc1, layer.fc2):
            linear.kernel[...] = jnp.eye(C, dtype=x.dtype)
            linear.bias[...] = jnp.zeros((C,), x.dtype)
        return np.asarray(layer(jnp.asarray(x)))


LAYERNORMS = {"torch": torch_layernorm, "jax": jax_layernorm, "numpy": numpy_layernorm}
GELUS = {"torch": torch_gelu, "jax": jax_gelu, "numpy": numpy_gelu}
# Per-element tolerances against the values by hand. Relative: a few roundings of the dtype
# (1e-13 in float64, 2e-6 in float32). Absolute: both functions are computed from sums that
# carry a rounding error of about machine epsilon times the size of their inputs, which no
# backend can avoid: GELU(-6) = -6e-9 comes out as 0 in float32 because 1 + erf(-4.2) rounds
# to 0, and a nearly constant LayerNorm row carries the rounding of its mean, amplified by
# 1 / sqrt(var + eps). The absolute terms below are those bounds; they stay far below the
# 1e-4 gap between the two GELU forms and the O(1) error of a variance taken as E[x^2] - E[x]^2.
RELATIVE = {np.float64: 1e-13, np.float32: 2e-6}


def gelu_tolerance(x, dtype):
    return RELATIVE[dtype], 4 * np.finfo(dtype).eps * max(abs(x), 1.0)


def layernorm_tolerance(row, scale, dtype):
    mean = sum(row) / len(row)
    spread = math.sqrt(sum((value - mean) ** 2 for value in row) / len(row) + EPS)
    return RELATIVE[dtype], 2 * float(np.finfo(dtype).eps) * max(abs(v) for v in row) * max(abs(v) for v in scale) / spread


@pytest.mark.parametrize("backend", list(LAYERNORMS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_layernorm_sharp_rows(backend, dtype):
    scale = np.array([1.0, 2.0, 0.5, -1.0], dtype)
    shift = np.array([0.0, 0.1, -0.2, 3.0], dtype)
    x = SHARP_ROWS.astype(dtype)
    actual = LAYERNORMS[backend](x, scale, shift)
    assert actual.dtype == dtype
    for r, row in enumerate(x):
        row, scale_values = [float(v) for v in row], [float(v) for v in scale]
        expected = layernorm_by_hand(row, scale_values, [float(v) for v in shift])
        tolerance = layernorm_tolerance(row, scale_values, dtype)
        for c, value in enumerate(expected):
            assert_close(actual[r, c], value, f"{backend} LayerNorm row {r} column {c}", tolerance)


@pytest.mark.parametrize("backend", list(GELUS))
@pytest.mark.parametrize("form", ["tanh", "none"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gelu_points(backend, form, dtype):
    x = GELU_POINTS.astype(dtype)[None, None, :]  # (B=1, T=1, C)
    actual = GELUS[backend](x, form)
    assert actual.dtype == dtype
    for c, point in enumerate(x[0, 0]):
        expected = gelu_by_hand(float(point), form)
        tolerance = gelu_tolerance(float(point), dtype)
        assert_close(actual[0, 0, c], expected, f"{backend} GELU({form}) at {float(point)}", tolerance)


def test_gelu_forms_differ_measurably():
    # Guards the test above: if the two forms were this close, a swapped form would pass.
    gaps = [abs(gelu_by_hand(x, "tanh") - gelu_by_hand(x, "none")) for x in (-1.0, 1.0, 3.0)]
    assert max(gaps) > 1e-4
