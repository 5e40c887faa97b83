"""The NumPy model: whole-model gradients against finite differences and against torch autograd.

The torch backend is the reference: logits, loss and every canonical gradient must agree
in float64 to 1e-10 of each tensor's largest magnitude, across LayerNorm placements, head
tying, biases, both GELU forms and edge shapes.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from numpy_impl import backend
from numpy_impl import layers as numpy_layers
from numpy_impl import model as numpy_model
from numpy_impl.layers import causal_mask, linear_backward, linear_forward
from numpy_impl.model import GPTModel, loss_and_grads, model_forward, model_logits
from shared.config import GPTConfig
from shared.weights import CheckpointError, init_parameters, parameter_shapes
from tests.test_numpy_layers import check_gradients, numerical_gradient
from tests.tolerances import assert_close

BASE = GPTConfig(vocab_size=11, context_length=8, d_model=16, num_heads=2, num_layers=2, dropout=0.0)
# Small enough for a finite-difference check of every parameter element in a few seconds.
TINY = GPTConfig(vocab_size=7, context_length=5, d_model=8, num_heads=2, num_layers=2, mlp_expansion=2, dropout=0.0)


def batch(config: GPTConfig, length: int, batch_size: int = 2, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, config.vocab_size, (batch_size, length))
    targets = rng.integers(0, config.vocab_size, (batch_size, length))
    return tokens, targets


def random_parameters(config: GPTConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Return float64 params with nonzero biases and LayerNorm weights, so their gradients are exercised."""
    rng = np.random.default_rng(seed)
    params = init_parameters(config, seed=seed, dtype=np.float64)
    for name, value in params.items():
        if name.endswith((".bias", ".shift")):
            params[name] = rng.normal(0.0, 0.1, value.shape)
        elif name.endswith(".scale"):
            params[name] = 1.0 + rng.normal(0.0, 0.1, value.shape)
        else:
            params[name] = rng.normal(0.0, 0.3, value.shape)
    return params


def config_matrix() -> dict[str, tuple[GPTConfig, int]]:
    """Name -> (config, sequence length) of every config the torch comparison covers."""
    configs = {}
    for pre_ln, tied, bias, gelu in itertools.product((True, False), (True, False), (True, False), ("tanh", "none")):
        name = f"{'pre' if pre_ln else 'post'}-{'tied' if tied else 'untied'}-{'bias' if bias else 'nobias'}-{gelu}"
        configs[name] = (BASE.replace(pre_ln=pre_ln, weight_tying=tied, use_bias=bias, gelu_approximation=gelu), 5)
    configs["one-head"] = (BASE.replace(num_heads=1), 5)
    configs["seq-len-1"] = (BASE, 1)
    configs["full-context"] = (BASE, BASE.context_length)
    return configs


CONFIGS = config_matrix()


# Finite differences over every parameter element.


@pytest.mark.parametrize(
    "config, dropout_seed",
    [
        (TINY, None),
        (TINY.replace(pre_ln=False, weight_tying=False, use_bias=False, gelu_approximation="none"), None),
        (TINY.replace(dropout=0.2, weight_tying=False), 3),
    ],
    ids=["pre-tied-bias-tanh", "post-untied-nobias-none", "train-mode-dropout"],
)
def test_model_gradients_finite_differences(config, dropout_seed):
    model = GPTModel(config, random_parameters(config))
    tokens, targets = batch(config, config.context_length)

    def rng():
        # The same seed gives the same dropout masks on every call, so the loss is a fixed function.
        return None if dropout_seed is None else np.random.default_rng(dropout_seed)

    _, grads = loss_and_grads(model, tokens, targets, rng())
    assert set(grads) == set(parameter_shapes(config))

    def loss() -> float:
        return loss_and_grads(model, tokens, targets, rng())[0]

    for name, param in model.params.items():
        assert_close(grads[name], numerical_gradient(loss, param), f"grad {name}", "finite-difference")


# Finite differences of the sublayers, with a random upstream gradient.


def block_arrays(config: GPTConfig, prefix: str) -> dict[str, np.ndarray]:
    """Return the input x and the random float64 parameters under prefix, for check_gradients."""
    params = random_parameters(config)
    arrays = {name: value for name, value in params.items() if name.startswith(prefix + ".")}
    arrays["x"] = np.random.default_rng(5).normal(size=(2, 4, config.d_model))
    return arrays


def dropout_rng(config: GPTConfig):
    # A fresh generator with one seed draws the same masks on every call.
    return np.random.default_rng(9) if config.dropout > 0 else None


@pytest.mark.parametrize("gelu", ["tanh", "none"])
def test_mlp_backward_finite_differences(gelu):
    config = TINY.replace(gelu_approximation=gelu, dropout=0.2)
    arrays = block_arrays(config, "blocks.0.mlp")

    def forward(x, **params):
        return numpy_model.mlp_forward(x, params, "blocks.0.mlp", config, dropout_rng(config))

    def backward(dout, cache):
        dx, grads = numpy_model.mlp_backward(dout, cache)
        return {"x": dx, **grads}

    check_gradients(forward, backward, arrays)


@pytest.mark.parametrize("use_bias", [True, False])
def test_self_attention_backward_finite_differences(use_bias):
    config = TINY.replace(use_bias=use_bias, dropout=0.2)
    arrays = block_arrays(config, "blocks.1.attn")
    mask = causal_mask(config.context_length, np.float64)

    def forward(x, **params):
        return numpy_model.self_attention_forward(x, params, "blocks.1.attn", config, mask, dropout_rng(config))

    def backward(dout, cache):
        dx, grads = numpy_model.self_attention_backward(dout, cache)
        return {"x": dx, **grads}

    check_gradients(forward, backward, arrays)


@pytest.mark.parametrize("pre_ln, dropout", [(True, 0.0), (False, 0.0), (True, 0.2), (False, 0.2)])
def test_block_backward_finite_differences(pre_ln, dropout):
    config = TINY.replace(pre_ln=pre_ln, dropout=dropout)
    arrays = block_arrays(config, "blocks.0")
    mask = causal_mask(config.context_length, np.float64)

    def forward(x, **params):
        return numpy_model.block_forward(x, params, "blocks.0", config, mask, dropout_rng(config))

    def backward(dout, cache):
        dx, grads = numpy_model.block_backward(dout, cache)
        return {"x": dx, **grads}

    check_gradients(forward, backward, arrays)


def test_tied_head_backward_finite_differences():
    # The tied head multiplies by the transposed embedding, a strided view.
    arrays = {"h": np.random.default_rng(1).normal(size=(2, 3, 4)), "tok": np.random.default_rng(2).normal(size=(6, 4))}

    def forward(h, tok):
        return linear_forward(h, tok.T, None)

    def backward(dout, cache):
        dh, grads = linear_backward(dout, cache)
        return {"h": dh, "tok": grads["weight"].T}

    check_gradients(forward, backward, arrays)


# Agreement with torch autograd.


@pytest.fixture(scope="module")
def torch_backend():
    pytest.importorskip("torch")
    from shared.backends import get_backend

    return get_backend("torch")


@pytest.mark.parametrize("config_name", list(CONFIGS))
def test_float64_matches_torch(torch_backend, config_name):
    config, length = CONFIGS[config_name]
    params = random_parameters(config)
    tokens, targets = batch(config, length)
    ours = backend.load(params, config, dtype="float64")
    reference = torch_backend.load(params, config, dtype="float64")

    assert_close(backend.forward(ours, tokens), torch_backend.forward(reference, tokens), "logits", "float64")
    loss, grads = backend.loss_and_grads(ours, tokens, targets)
    expected_loss, expected_grads = torch_backend.loss_and_grads(reference, tokens, targets)
    assert_close(loss, expected_loss, "loss", "float64")
    assert set(grads) == set(expected_grads)
    for name in expected_grads:
        assert_close(grads[name], expected_grads[name], f"grad {name}", "float64")


@pytest.mark.parametrize("config_name", ["pre-tied-bias-tanh", "post-untied-nobias-none", "full-context"])
def test_float32_matches_torch(torch_backend, config_name):
    config, length = CONFIGS[config_name]
    params = init_parameters(config, seed=0, dtype=np.float32)
    tokens, targets = batch(config, length)
    ours = backend.load(params, config, dtype="float32")
    reference = torch_backend.load(params, config, dtype="float32")

    assert_close(backend.forward(ours, tokens), torch_backend.forward(reference, tokens), "logits", "float32")
    loss, grads = backend.loss_and_grads(ours, tokens, targets)
    expected_loss, expected_grads = torch_backend.loss_and_grads(reference, tokens, targets)
    assert_close(loss, expected_loss, "loss", "float32")
    for name in expected_grads:
        assert_close(grads[name], expected_grads[name], f"grad {name}", "float32-grad")


def test_query_blocks_match_torch(torch_backend, monkeypatch):
    # Blocks of 3 queries over the full context of 8: three blocks, the last one short.
    monkeypatch.setattr(numpy_layers, "_QUERY_BLOCK", 3)
    test_float64_matches_torch(torch_backend, "full-context")


def test_activations_match_torch(torch_backend):
    config, length = CONFIGS["post-untied-bias-none"]
    params = random_parameters(config)
    tokens, _ = batch(config, length)
    ours = backend.activations(backend.load(params, config, dtype="float64"), tokens)
    expected = torch_backend.activations(torch_backend.load(params, config, dtype="float64"), tokens)
    assert list(ours) == ["embed", *(f"blocks.{i}" for i in range(config.num_layers)), "final_ln", "logits"]
    assert set(ours) == set(expected)
    for name in expected:
        assert_close(ours[name], expected[name], name, "float64")


def test_stack_input_gradient_norm_matches_torch(torch_backend):
    config = BASE.replace(pre_ln=False)
    params = random_parameters(config)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 16))
    r = rng.standard_normal((2, 5, 16))
    ours = backend.stack_input_gradient_norm(backend.load(params, config, dtype="float64"), x, r)
    expected = torch_backend.stack_input_gradient_norm(torch_backend.load(params, config, dtype="float64"), x, r)
    assert_close(ours, expected, "stack input gradient norm", "float64")


def test_stack_input_gradient_norm_checks_shapes():
    model = backend.load(random_parameters(BASE), BASE, dtype="float64")
    x = np.zeros((2, 5, 16))
    with pytest.raises(ValueError, match="x must have shape"):
        backend.stack_input_gradient_norm(model, x[..., :4], x[..., :4])
    with pytest.raises(ValueError, match="r has shape"):
        backend.stack_input_gradient_norm(model, x, x[:1])
    with pytest.raises(ValueError, match="sequence length 9"):
        backend.stack_input_gradient_norm(model, np.zeros((1, 9, 16)), np.zeros((1, 9, 16)))


# Model rules.


def test_tied_gradient_sums_embedding_and_head():
    tied_config = TINY
    untied_config = TINY.replace(weight_tying=False)
    params = random_parameters(tied_config)
    untied_params = dict(params, **{"lm_head.weight": params["tok_embed.weight"].T.copy()})
    tokens, targets = batch(TINY, 4)

    _, tied_grads = loss_and_grads(GPTModel(tied_config, params), tokens, targets)
    _, untied_grads = loss_and_grads(GPTModel(untied_config, untied_params), tokens, targets)
    # The untied model computes the same function; its two matrices split the tied gradient.
    expected = untied_grads["tok_embed.weight"] + untied_grads["lm_head.weight"].T
    assert_close(tied_grads["tok_embed.weight"], expected, "grad tok_embed.weight", "float64")
    assert np.any(untied_grads["tok_embed.weight"] != 0)
    assert np.any(untied_grads["lm_head.weight"] != 0)


def test_future_tokens_do_not_change_past():
    for pre_ln in (True, False):
        model = GPTModel(BASE.replace(pre_ln=pre_ln), random_parameters(BASE))
        tokens, _ = batch(BASE, 8)
        changed = tokens.copy()
        changed[:, 5:] = (changed[:, 5:] + 1) % BASE.vocab_size
        before, _ = model_forward(model, tokens)
        after, _ = model_forward(model, changed)
        np.testing.assert_array_equal(before[:, :5], after[:, :5])
        assert not np.allclose(before[:, 5:], after[:, 5:])


def test_float32_stays_float32():
    config = BASE.replace(gelu_approximation="none", dropout=0.1)
    model = backend.load(init_parameters(config, seed=0), config, dtype="float32")
    tokens, targets = batch(config, 6)
    for name, value in backend.activations(model, tokens).items():
        assert value.dtype == np.float32, name
    loss, grads = backend.loss_and_grads(model, tokens, targets)
    assert isinstance(loss, float)
    for name, grad in grads.items():
        assert grad.dtype == np.float32, name
    # Training mode adds dropout masks, which must not promote either.
    _, train_grads = loss_and_grads(model, tokens, targets, np.random.default_rng(0))
    for name, grad in train_grads.items():
        assert grad.dtype == np.float32, name


def test_activations_agree_with_forward():
    model = backend.load(random_parameters(BASE), BASE, dtype="float64")
    tokens, _ = batch(BASE, 6)
    collected = backend.activations(model, tokens)
    np.testing.assert_array_equal(collected["logits"], backend.forward(model, tokens))
    expected_embed = model.params["tok_embed.weight"][tokens] + model.params["pos_embed.weight"][:6]
    np.testing.assert_array_equal(collected["embed"], expected_embed)
    assert collected["final_ln"].shape == (2, 6, BASE.d_model)


def test_inference_forward_equals_training_forward():
    for config in (BASE, BASE.replace(pre_ln=False, weight_tying=False, dropout=0.3)):
        model = GPTModel(config, random_parameters(config))
        tokens, _ = batch(config, 7)
        logits, _ = model_forward(model, tokens)
        np.testing.assert_array_equal(model_logits(model, tokens), logits)


def test_eval_mode_ignores_dropout():
    params = random_parameters(BASE)
    tokens, targets = batch(BASE, 6)
    with_dropout = backend.load(params, BASE.replace(dropout=0.5), dtype="float64")
    without = backend.load(params, BASE, dtype="float64")
    np.testing.assert_array_equal(backend.forward(with_dropout, tokens), backend.forward(without, tokens))
    assert backend.loss_and_grads(with_dropout, tokens, targets)[0] == backend.loss_and_grads(without, tokens, targets)[0]


def test_loss_is_mean_cross_entropy():
    model = backend.load(random_parameters(BASE), BASE, dtype="float64")
    tokens, targets = batch(BASE, 7)
    logits = backend.forward(model, tokens)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -np.take_along_axis(log_probs, targets[..., None], -1).mean()
    loss, _ = backend.loss_and_grads(model, tokens, targets)
    assert_close(loss, expected, "loss", "float64")


def test_forward_leaves_params_unchanged():
    params = random_parameters(BASE)
    model = backend.load(params, BASE, dtype="float64")
    tokens, targets = batch(BASE, 8)
    backend.forward(model, tokens)
    backend.loss_and_grads(model, tokens, targets)
    exported = backend.export(model)
    for name, value in params.items():
        np.testing.assert_array_equal(exported[name], value)


# Loading and exporting.


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_export_round_trip_bit_exact(dtype):
    for config in (BASE, BASE.replace(weight_tying=False)):
        params = init_parameters(config, seed=3, dtype=np.dtype(dtype))
        model = backend.load(params, config, dtype=dtype)
        exported = backend.export(model)
        assert list(exported) == list(parameter_shapes(config))
        assert ("lm_head.weight" in exported) == (not config.weight_tying)
        for name, value in params.items():
            assert exported[name].dtype == np.dtype(dtype)
            np.testing.assert_array_equal(exported[name], value)
        assert backend.config_of(model) == config


def test_load_copies_and_casts():
    params = init_parameters(BASE, seed=0, dtype=np.float64)
    model = backend.load(params, BASE, dtype="float32")
    assert model.dtype == np.float32
    params["final_ln.scale"][:] = 5.0
    assert np.all(model.params["final_ln.scale"] == 1.0)
    exported = backend.export(model)
    exported["final_ln.shift"][:] = 5.0
    assert np.all(model.params["final_ln.shift"] == 0.0)


def test_load_rejects_bad_parameters():
    params = init_parameters(BASE, seed=0)
    with pytest.raises(CheckpointError, match="missing tensor"):
        backend.load({k: v for k, v in params.items() if k != "final_ln.scale"}, BASE)
    with pytest.raises(CheckpointError, match="unexpected tensor"):
        backend.load(dict(params, **{"lm_head.weight": np.zeros((16, 11))}), BASE)
    with pytest.raises(ValueError, match="not supported"):
        backend.load(params, BASE, dtype="float16")


def test_inputs_are_checked():
    model = backend.load(init_parameters(BASE, seed=0), BASE)
    with pytest.raises(ValueError, match="token id 11 out of range for vocab_size 11"):
        backend.forward(model, np.array([[1, 11]]))
    with pytest.raises(ValueError, match="sequence length 9"):
        backend.forward(model, np.zeros((1, 9), dtype=np.int64))
    with pytest.raises(ValueError, match="targets have shape"):
        backend.loss_and_grads(model, np.zeros((1, 3), dtype=np.int64), np.zeros((1, 4), dtype=np.int64))
