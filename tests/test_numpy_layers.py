"""The NumPy layers: every backward against central finite differences, plus layer rules.

Each gradient check contracts the layer's output with a random upstream gradient G, so the
scalar is sum(output * G), and compares every input and parameter gradient with central
differences in float64 (h = 1e-6).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from numpy_impl import layers
from numpy_impl.special import erf
from tests.tolerances import assert_close

STEP = 1e-6


def numerical_gradient(scalar_of, array: np.ndarray) -> np.ndarray:
    """Return d scalar_of() / d array by central differences, perturbing array in place."""
    grad = np.zeros_like(array)
    flat, flat_grad = array.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        original = flat[i]
        flat[i] = original + STEP
        plus = scalar_of()
        flat[i] = original - STEP
        minus = scalar_of()
        flat[i] = original
        flat_grad[i] = (plus - minus) / (2 * STEP)
    return grad


def check_gradients(forward, backward, arrays: dict[str, np.ndarray], seed: int = 0) -> None:
    """Check backward's gradient for every array in arrays against finite differences.

    forward(**arrays) returns (output, cache); backward(dout, cache) returns a dict of
    gradients keyed like arrays.
    """
    output, cache = forward(**arrays)
    upstream = np.random.default_rng(seed).normal(size=output.shape)
    analytic = backward(upstream, cache)

    def scalar() -> float:
        return float(np.sum(forward(**arrays)[0] * upstream))

    assert set(analytic) == set(arrays)
    for name, array in arrays.items():
        assert analytic[name].shape == array.shape, f"{name}: gradient shape {analytic[name].shape}"
        assert_close(analytic[name], numerical_gradient(scalar, array), f"d{name}", "finite-difference")


def normal(*shape: int, seed: int = 1, scale: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape) * scale


# Finite-difference checks.


def test_embedding_backward_finite_differences():
    tokens = np.array([[1, 3, 1, 0], [3, 3, 2, 1]])  # repeated ids within and across rows
    arrays = {"tok": normal(5, 6), "pos": normal(7, 6, seed=2)}

    def forward(tok, pos):
        return layers.embedding_forward(tokens, tok, pos)

    def backward(dout, cache):
        grads = layers.embedding_backward(dout, cache)
        return {"tok": grads["tok_embed.weight"], "pos": grads["pos_embed.weight"]}

    check_gradients(forward, backward, arrays)


def test_embedding_backward_sums_repeated_ids():
    tokens = np.array([[4, 4, 4, 0], [4, 1, 0, 4]])
    dx = normal(2, 4, 3)
    _, cache = layers.embedding_forward(tokens, normal(6, 3), normal(5, 3))
    grads = layers.embedding_backward(dx, cache)
    expected = np.zeros((6, 3))
    np.add.at(expected, tokens.reshape(-1), dx.reshape(-1, 3))
    np.testing.assert_allclose(grads["tok_embed.weight"], expected, rtol=1e-15, atol=0)
    assert np.all(grads["tok_embed.weight"][[2, 3, 5]] == 0)
    np.testing.assert_allclose(grads["pos_embed.weight"][:4], dx.sum(axis=0), rtol=1e-15, atol=0)
    assert np.all(grads["pos_embed.weight"][4:] == 0)


def test_layernorm_backward_finite_differences():
    arrays = {"x": normal(2, 3, 5) + 3.0, "scale": normal(5, seed=2), "shift": normal(5, seed=3)}

    def forward(x, scale, shift):
        return layers.layernorm_forward(x, scale, shift, 1e-5)

    def backward(dout, cache):
        dx, grads = layers.layernorm_backward(dout, cache)
        return {"x": dx, **grads}

    check_gradients(forward, backward, arrays)


@pytest.mark.parametrize("use_bias", [True, False])
def test_linear_backward_finite_differences(use_bias):
    arrays = {"x": normal(2, 3, 4), "weight": normal(4, 5, seed=2)}
    if use_bias:
        arrays["bias"] = normal(5, seed=3)

    def forward(x, weight, bias=None):
        return layers.linear_forward(x, weight, bias)

    def backward(dout, cache):
        dx, grads = layers.linear_backward(dout, cache)
        return {"x": dx, **grads}

    check_gradients(forward, backward, arrays)


@pytest.mark.parametrize("num_heads, length", [(2, 5), (1, 4), (3, 1)])
def test_attention_backward_finite_differences(num_heads, length):
    C = 6
    mask = layers.causal_mask(8, np.float64)
    arrays = {"qkv": normal(2, length, 3 * C)}

    def forward(qkv):
        return layers.attention_forward(qkv, num_heads, mask, 0.0, None)

    def backward(dout, cache):
        return {"qkv": layers.attention_backward(dout, cache)}

    check_gradients(forward, backward, arrays)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_attention_blocks_finite_differences(monkeypatch, dropout):
    # Groups of two (T, T) score blocks: the B * nh = 6 pairs run as three groups of 2.
    monkeypatch.setattr(layers, "_ATTENTION_BLOCK_ELEMENTS", 2 * 5 * 5 + 1)
    assert [(g.start, g.stop) for g in layers._head_groups(6, 5)] == [(0, 2), (2, 4), (4, 6)]
    # Query blocks of two: queries 0-1 see keys 0-1, queries 2-3 keys 0-3, query 4 keys 0-4.
    monkeypatch.setattr(layers, "_QUERY_BLOCK", 2)
    assert [(b.start, b.stop) for b in layers._query_blocks(5)] == [(0, 2), (2, 4), (4, 5)]
    mask = layers.causal_mask(8, np.float64)
    arrays = {"qkv": normal(2, 5, 18)}

    def forward(qkv):
        rng = np.random.default_rng(7) if dropout else None
        return layers.attention_forward(qkv, 3, mask, dropout, rng)

    def backward(dout, cache):
        return {"qkv": layers.attention_backward(dout, cache)}

    check_gradients(forward, backward, arrays)


@pytest.mark.parametrize("query_block", [1, 2, 3, 5])
def test_attention_blocks_do_not_change_result(monkeypatch, query_block):
    qkv = normal(2, 5, 18)
    mask = layers.causal_mask(8, np.float64)
    whole, cache = layers.attention_forward(qkv, 3, mask, 0.0, None)  # one group, one query block
    upstream = normal(2, 3, 5, 2, seed=4)
    whole_grad = layers.attention_backward(upstream, cache)
    monkeypatch.setattr(layers, "_ATTENTION_BLOCK_ELEMENTS", 4 * 5 * 5)  # groups of 4 and 2 pairs
    monkeypatch.setattr(layers, "_QUERY_BLOCK", query_block)
    blocked, cache = layers.attention_forward(qkv, 3, mask, 0.0, None)
    # float64 rounding only: the blocks sum the same terms, fewer of them exact zeros.
    np.testing.assert_allclose(blocked, whole, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(layers.attention_backward(upstream, cache), whole_grad, rtol=1e-14, atol=1e-15)


def test_attention_dropout_backward_finite_differences():
    mask = layers.causal_mask(8, np.float64)
    arrays = {"qkv": normal(2, 5, 12)}

    def forward(qkv):
        # A fresh generator with the same seed draws the same dropout mask every call.
        return layers.attention_forward(qkv, 2, mask, 0.3, np.random.default_rng(7))

    def backward(dout, cache):
        return {"qkv": layers.attention_backward(dout, cache)}

    check_gradients(forward, backward, arrays)


def test_merge_heads_backward_finite_differences():
    arrays = {"y": normal(2, 3, 4, 2)}

    def backward(dout, cache):
        return {"y": layers.merge_heads_backward(dout, 3)}

    check_gradients(lambda y: layers.merge_heads_forward(y), backward, arrays)


@pytest.mark.parametrize("approximation", ["tanh", "none"])
def test_gelu_backward_finite_differences(monkeypatch, approximation):
    # Row blocks of 2 rows over 5 rows: the last block is shorter.
    monkeypatch.setattr(layers, "_BLOCK_ELEMENTS", 14)
    arrays = {"x": normal(5, 7, scale=2.5)}

    def backward(dout, cache):
        return {"x": layers.gelu_backward(dout, cache)}

    check_gradients(lambda x: layers.gelu_forward(x, approximation), backward, arrays)


def test_dropout_backward_finite_differences():
    arrays = {"x": normal(4, 6)}

    def forward(x):
        return layers.dropout_forward(x, 0.4, np.random.default_rng(3))

    def backward(dout, cache):
        return {"x": layers.dropout_backward(dout, cache)}

    check_gradients(forward, backward, arrays)


def test_residual_backward_finite_differences():
    arrays = {"x": normal(2, 3), "branch": normal(2, 3, seed=2)}

    def backward(dout, cache):
        dx, dbranch = layers.residual_backward(dout, cache)
        return {"x": dx, "branch": dbranch}

    check_gradients(lambda x, branch: layers.residual_forward(x, branch), backward, arrays)


def test_cross_entropy_backward_finite_differences():
    targets = np.array([[0, 4, 4], [2, 1, 3]])
    arrays = {"logits": normal(2, 3, 5, scale=3.0)}

    def backward(dout, cache):
        return {"logits": layers.softmax_cross_entropy_backward(dout, cache)}

    check_gradients(lambda logits: layers.softmax_cross_entropy_forward(logits, targets), backward, arrays)


# Forward rules.


def test_layernorm_float32_large_mean_row():
    x = (np.float32(10000.0) + np.arange(4, dtype=np.float32))[None, :]
    y, _ = layers.layernorm_forward(x, np.ones(4, np.float32), np.zeros(4, np.float32), 1e-5)
    centred = np.arange(4.0) - 1.5
    expected = centred / np.sqrt(np.mean(centred**2) + 1e-5)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y[0], expected, rtol=1e-6, atol=0)


def test_layernorm_uses_biased_variance_and_eps():
    x = normal(3, 8)
    y, _ = layers.layernorm_forward(x, np.full(8, 2.0), np.full(8, 0.5), 0.1)
    expected = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 0.1) * 2.0 + 0.5
    np.testing.assert_allclose(y, expected, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("query_block", [2, 64])
def test_attention_masks_future_keys(monkeypatch, query_block):
    monkeypatch.setattr(layers, "_QUERY_BLOCK", query_block)
    mask = layers.causal_mask(6, np.float64)
    _, cache = layers.attention_forward(normal(2, 6, 12, scale=5.0), 2, mask, 0.0, None)
    blocks, block_probs = cache[3], cache[4]
    probs = np.full((4, 6, 6), np.nan)  # (B*nh, T, T), keys by queries; NaN where no block wrote
    for block, values in zip(blocks, block_probs):
        probs[:, : block.stop, block] = values
    keys, queries = np.tril_indices(6, k=-1)  # every key after its query
    hidden = np.zeros((6, 6), dtype=bool)
    hidden[keys, queries] = True
    assert np.all(np.isfinite(probs[:, ~hidden]))
    # A block stores the keys after its queries only inside its diagonal square, as zeros.
    assert np.all(np.nan_to_num(probs[:, hidden], nan=0.0) == 0)
    np.testing.assert_allclose(np.nansum(probs, axis=-2), 1.0, rtol=1e-14, atol=0)


def test_attention_ignores_future_positions():
    mask = layers.causal_mask(6, np.float64)
    qkv = normal(1, 6, 12)
    changed = qkv.copy()
    changed[:, 4:] += 1.0
    before, _ = layers.attention_forward(qkv, 2, mask, 0.0, None)
    after, _ = layers.attention_forward(changed, 2, mask, 0.0, None)
    np.testing.assert_array_equal(before[:, :, :4], after[:, :, :4])


def test_attention_single_position_returns_value():
    qkv = normal(2, 1, 18)  # C = 6, nh = 3, hs = 2
    y, _ = layers.attention_forward(qkv, 3, layers.causal_mask(4, np.float64), 0.0, None)  # (B, nh, 1, hs)
    values = qkv[:, :, 12:].reshape(2, 1, 3, 2).transpose(0, 2, 1, 3)
    np.testing.assert_allclose(y, values, rtol=1e-15, atol=0)


def test_causal_mask_values():
    mask = layers.causal_mask(3, np.float32)
    assert mask.dtype == np.float32
    # Rows are keys, columns queries: key 2 is hidden from queries 0 and 1.
    expected = np.array([[0, 0, 0], [-np.inf, 0, 0], [-np.inf, -np.inf, 0]], dtype=np.float32)
    np.testing.assert_array_equal(mask, expected)


def test_gelu_matches_formulas():
    x = np.linspace(-6, 6, 101)
    tanh_form, _ = layers.gelu_forward(x, "tanh")
    exact_form, _ = layers.gelu_forward(x, "none")
    expected_tanh = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    expected_exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])
    np.testing.assert_allclose(tanh_form, expected_tanh, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(exact_form, expected_exact, rtol=1e-14, atol=1e-15)


def test_gelu_rejects_unknown_form():
    with pytest.raises(ValueError, match="unknown GELU approximation 'relu'"):
        layers.gelu_forward(np.zeros(3), "relu")


def test_cross_entropy_matches_log_softmax():
    logits = normal(2, 3, 7, scale=4.0)
    targets = np.array([[0, 6, 2], [5, 5, 1]])
    losses, _ = layers.softmax_cross_entropy_forward(logits, targets)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(losses, expected, rtol=1e-14, atol=0)


def test_cross_entropy_uniform_logits_is_log_vocab():
    losses, _ = layers.softmax_cross_entropy_forward(np.zeros((1, 2, 9)), np.array([[3, 8]]))
    np.testing.assert_allclose(losses, math.log(9), rtol=1e-15, atol=0)


def test_cross_entropy_large_logits_stay_finite():
    logits = np.array([[[1000.0, 0.0, -1000.0]]], dtype=np.float32)
    losses, cache = layers.softmax_cross_entropy_forward(logits, np.array([[1]]))
    assert np.isfinite(losses).all()
    np.testing.assert_allclose(losses, 1000.0, rtol=1e-6, atol=0)
    assert np.isfinite(layers.softmax_cross_entropy_backward(np.ones((1, 1), np.float32), cache)).all()


# Dropout.


def test_dropout_eval_is_identity():
    x = normal(3, 4)
    for rate, rng in ((0.5, None), (0.0, np.random.default_rng(0))):
        y, cache = layers.dropout_forward(x, rate, rng)
        assert y is x
        assert cache is None


def test_dropout_rate_and_scale():
    x = np.ones((200, 500), dtype=np.float32)
    y, _ = layers.dropout_forward(x, 0.25, np.random.default_rng(0))
    assert y.dtype == np.float32
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.005
    np.testing.assert_allclose(y[kept], np.float32(1 / 0.75), rtol=1e-7, atol=0)
    assert abs(y.mean() - 1.0) < 0.01


def test_dropout_same_seed_same_mask():
    x = normal(10, 10)
    first, _ = layers.dropout_forward(x, 0.5, np.random.default_rng(5))
    second, _ = layers.dropout_forward(x, 0.5, np.random.default_rng(5))
    third, _ = layers.dropout_forward(x, 0.5, np.random.default_rng(6))
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, third)


# float32 stays float32.


def test_layers_keep_float32():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 6)).astype(np.float32)
    outputs = []
    y, cache = layers.layernorm_forward(x, np.ones(6, np.float32), np.zeros(6, np.float32), 1e-5)
    outputs += [y, *layers.layernorm_backward(y, cache)[1].values(), layers.layernorm_backward(y, cache)[0]]
    qkv, cache = layers.linear_forward(x, rng.normal(size=(6, 18)).astype(np.float32), np.zeros(18, np.float32))
    outputs += [qkv, *layers.linear_backward(qkv, cache)[1].values()]
    heads, cache = layers.attention_forward(qkv, 2, layers.causal_mask(4, np.float32), 0.1, rng)
    outputs += [heads, layers.attention_backward(heads, cache)]
    for approximation in ("tanh", "none"):
        g, cache = layers.gelu_forward(x, approximation)
        outputs += [g, layers.gelu_backward(g, cache)]
    losses, cache = layers.softmax_cross_entropy_forward(x, np.zeros((2, 4), dtype=np.int64))
    outputs += [losses, layers.softmax_cross_entropy_backward(losses, cache)]
    for output in outputs:
        assert output.dtype == np.float32


# The error function.


def test_erf_matches_math_erf():
    x = np.concatenate([
        np.linspace(-7.0, 7.0, 20001),
        np.geomspace(1e-300, 1.0, 500),
        -np.geomspace(1e-300, 1.0, 500),
        [0.0, 1.0, 3.0, 6.0, 5.9, np.nextafter(1.0, 0.0), np.nextafter(3.0, 0.0)],
    ])
    expected = np.array([math.erf(value) for value in x])
    actual = erf(x)
    # Two ulps of the exact value, with math.erf itself within about one ulp.
    allowed = 3 * np.spacing(np.abs(expected))
    worst = int(np.argmax(np.abs(actual - expected) / allowed))
    assert np.abs(actual[worst] - expected[worst]) <= allowed[worst], (
        f"erf({x[worst]!r}) = {actual[worst]!r}, math.erf gives {expected[worst]!r}"
    )


def test_erf_special_values():
    result = erf(np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 30.0, -30.0]))
    np.testing.assert_array_equal(result[:4], [0.0, -0.0, 1.0, -1.0])
    assert np.signbit(result[1])
    assert np.isnan(result[4])
    np.testing.assert_array_equal(result[5:], [1.0, -1.0])


def test_erf_float32_stays_float32():
    x = np.linspace(-4, 4, 1001, dtype=np.float32)
    result = erf(x)
    assert result.dtype == np.float32
    expected = np.array([math.erf(float(value)) for value in x])
    np.testing.assert_allclose(result, expected, rtol=0, atol=2e-7)


def test_erf_keeps_shape_and_layout():
    x = normal(3, 70000)[:, ::2].T  # non-contiguous, more than one evaluation block
    result = erf(x)
    assert result.shape == x.shape
    np.testing.assert_allclose(result, np.vectorize(math.erf)(x), rtol=0, atol=4e-16)


def test_erf_rejects_integer_input():
    with pytest.raises(ValueError, match="float32 or float64"):
        erf(np.arange(3))
