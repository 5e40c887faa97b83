"""The Flax model against the PyTorch reference: logits, activations, loss and every gradient,
plus conversion, input checks and the 64-bit mode switch.

Every test runs with strict dtype promotion and rank promotion set to raise (the autouse
fixture), so an implicit cast or a silent broadcast in the model fails loudly.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from shared.backends import get_backend
from shared.config import GPTConfig
from shared.weights import CheckpointError, init_parameters, parameter_shapes
from tests.tolerances import assert_close

from jax_impl import model as jax_model
from jax_impl.convert import dtype_scope, flax_path, canonical_name
from jax_impl.model import GPT, LayerNorm, layer_norm, masked_softmax

jax_backend = get_backend("jax")
torch_backend = get_backend("torch")

BASE = GPTConfig(vocab_size=23, context_length=8, d_model=16, num_heads=2, num_layers=2, dropout=0.0)

# Name -> (config, sequence length). Together the cases switch every option both ways:
# LayerNorm placement, tying, bias and GELU form, plus one head, one token and a full context.
CASES = {
    "pre-tied-bias-tanh": (BASE, 5),
    "post-untied-nobias-erf": (BASE.replace(pre_ln=False, weight_tying=False, use_bias=False, gelu_approximation="none"), 5),
    "one-head-post-tied-seq-1": (BASE.replace(num_heads=1, pre_ln=False), 1),
    "full-context-untied-bias-erf": (BASE.replace(weight_tying=False, gelu_approximation="none"), BASE.context_length),
}


@pytest.fixture(autouse=True)
def strict_jax():
    with jax.numpy_rank_promotion("raise"), jax.numpy_dtype_promotion("strict"):
        yield


def batch(config: GPTConfig, length: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, config.vocab_size, (2, length))
    targets = rng.integers(0, config.vocab_size, (2, length))
    return tokens, targets


@functools.lru_cache(maxsize=None)
def outputs(backend_name: str, case: str, dtype: str) -> dict[str, object]:
    """Activations, logits, loss and gradients of one backend on one case, computed once per test session."""
    config, length = CASES[case]
    backend = get_backend(backend_name)
    model = backend.load(init_parameters(config, seed=0, dtype=np.dtype(dtype)), config, dtype=dtype)
    tokens, targets = batch(config, length)
    loss, grads = backend.loss_and_grads(model, tokens, targets)
    return {
        "activations": backend.activations(model, tokens),
        "logits": backend.forward(model, tokens),
        "loss": loss,
        "grads": grads,
    }


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_matches_torch(case, dtype):
    jax_out = outputs("jax", case, dtype)
    torch_out = outputs("torch", case, dtype)
    value_tol = "float64" if dtype == "float64" else "float32"
    grad_tol = "float64" if dtype == "float64" else "float32-grad"

    assert jax_out["logits"].dtype == np.dtype(dtype)
    assert_close(jax_out["logits"], torch_out["logits"], f"logits ({case}, {dtype})", value_tol)
    assert list(jax_out["activations"]) == list(torch_out["activations"])
    for point, value in jax_out["activations"].items():
        assert_close(value, torch_out["activations"][point], f"{point} ({case}, {dtype})", value_tol)
    assert_close(jax_out["loss"], torch_out["loss"], f"loss ({case}, {dtype})", value_tol)
    assert list(jax_out["grads"]) == list(torch_out["grads"])
    for name, grad in jax_out["grads"].items():
        assert grad.dtype == np.dtype(dtype), name
        assert_close(grad, torch_out["grads"][name], f"grad {name} ({case}, {dtype})", grad_tol)


def test_gradient_matches_finite_differences():
    """Directional derivatives of the float64 loss by central differences, independent of torch."""
    config, length = CASES["post-untied-nobias-erf"]
    params = init_parameters(config, seed=0, dtype=np.float64)
    tokens, targets = batch(config, length)
    _, grads = jax_backend.loss_and_grads(jax_backend.load(params, config, dtype="float64"), tokens, targets)
    rng = np.random.default_rng(3)
    step = 1e-6
    for trial in range(3):
        direction = {name: rng.standard_normal(value.shape) for name, value in params.items()}
        losses = []
        for sign in (1.0, -1.0):
            shifted = {name: params[name] + sign * step * direction[name] for name in params}
            model = jax_backend.load(shifted, config, dtype="float64")
            losses.append(jax_backend.loss_and_grads(model, tokens, targets)[0])
        numeric = (losses[0] - losses[1]) / (2 * step)
        analytic = sum(float(np.sum(grads[name] * direction[name])) for name in params)
        assert_close(analytic, numeric, f"directional derivative {trial}", "finite-difference")


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_bit_exact(tied, dtype):
    config = BASE.replace(weight_tying=tied)
    params = init_parameters(config, seed=2, dtype=np.dtype(dtype))
    # A non-symmetric square weight: a shape check cannot tell W from W.T.
    params["blocks.0.attn.out_proj.weight"] = np.arange(16 * 16, dtype=dtype).reshape(16, 16) / 256
    model = jax_backend.load(params, config, dtype=dtype)
    exported = jax_backend.export(model)
    assert list(exported) == list(params)
    for name in params:
        assert exported[name].dtype == params[name].dtype, name
        assert exported[name].tobytes() == params[name].tobytes(), name
    kernel = np.asarray(model.blocks[0].attn.out_proj.kernel[...])
    assert np.array_equal(kernel, params["blocks.0.attn.out_proj.weight"])


def test_tied_model_has_no_head_parameter():
    tied = jax_backend.load(init_parameters(BASE), BASE)
    untied_config = BASE.replace(weight_tying=False)
    untied = jax_backend.load(init_parameters(untied_config), untied_config)
    assert tied.lm_head is None
    count = lambda model: sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
    assert count(tied) == BASE.num_parameters()
    assert count(untied) - count(tied) == BASE.vocab_size * BASE.d_model


def test_names_map_both_ways():
    config = BASE.replace(weight_tying=False)
    for name in parameter_shapes(config):
        assert canonical_name(flax_path(name)) == name
    assert flax_path("blocks.1.mlp.fc2.weight") == ("blocks", 1, "mlp", "fc2", "kernel")
    assert flax_path("tok_embed.weight") == ("tok_embed", "embedding")
    assert flax_path("blocks.0.ln1.scale") == ("blocks", 0, "ln1", "scale")


def test_load_rejects_wrong_params():
    params = init_parameters(BASE)
    with pytest.raises(CheckpointError, match="unexpected tensor"):
        jax_backend.load({**params, "lm_head.weight": np.zeros((16, 23), np.float32)}, BASE)
    with pytest.raises(CheckpointError, match="shape"):
        jax_backend.load({**params, "final_ln.scale": np.ones(17, np.float32)}, BASE)
    with pytest.raises(ValueError, match="dtype 'float16' is not supported"):
        jax_backend.load(params, BASE, dtype="float16")
    with pytest.raises(ValueError, match="matmul precision 'fastest' is not supported"):
        jax_backend.load(params, BASE, precision="fastest")


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((1, 9), np.int64), "sequence length 9 but context_length is 8"),
        (np.array([[1, 2, 23]]), "token id 23 out of range for vocab_size 23"),
        (np.array([[1, -1]]), "token id -1 out of range"),
        (np.array([[1.0, 2.0]]), "must be integer token ids"),
        (np.array([1, 2]), "shape \\(batch, sequence\\)"),
    ],
)
def test_bad_tokens_raise_before_jit(bad, message):
    model = jax_backend.load(init_parameters(BASE), BASE)
    with pytest.raises(ValueError, match=message):
        jax_backend.forward(model, bad)
    with pytest.raises(ValueError, match=message):
        jax_backend.loss_and_grads(model, bad, bad)


def test_float64_leaves_x64_off():
    assert not jax.config.jax_enable_x64
    model = jax_backend.load(init_parameters(BASE, dtype=np.float64), BASE, dtype="float64")
    logits = jax_backend.forward(model, np.array([[1, 2, 3]]))
    assert logits.dtype == np.float64
    assert not jax.config.jax_enable_x64
    assert jnp.zeros(1).dtype == jnp.float32


def test_float32_model_ignores_caller_x64():
    model = jax_backend.load(init_parameters(BASE), BASE)
    expected = jax_backend.forward(model, np.array([[1, 2, 3]]))
    with jax.enable_x64(True):
        logits = jax_backend.forward(model, np.array([[1, 2, 3]]))
        assert jax.config.jax_enable_x64
    assert logits.dtype == np.float32
    assert np.array_equal(logits, expected)


def test_future_tokens_do_not_change_past():
    model = jax_backend.load(init_parameters(BASE, dtype=np.float64), BASE, dtype="float64")
    tokens, _ = batch(BASE, 8)
    changed = tokens.copy()
    changed[:, 5:] = (changed[:, 5:] + 1) % BASE.vocab_size
    before, after = jax_backend.forward(model, tokens), jax_backend.forward(model, changed)
    assert np.array_equal(before[:, :5], after[:, :5])
    assert not np.allclose(before[:, 5:], after[:, 5:])


def test_layer_norm_large_mean_float32():
    norm = LayerNorm(4, eps=1e-5, dtype=jnp.float32)
    row = np.array([[10000.0, 10001.0, 10002.0, 10003.0]], dtype=np.float32)
    centred = np.array([-1.5, -0.5, 0.5, 1.5])
    expected = centred / np.sqrt(np.mean(centred**2) + 1e-5)
    assert_close(np.asarray(norm(jnp.asarray(row))), expected[None, :], "LayerNorm of a large-mean row", "float32")


def test_default_precision_close_to_highest():
    params = init_parameters(BASE)
    tokens, _ = batch(BASE, 5)
    highest = jax_backend.forward(jax_backend.load(params, BASE), tokens)
    default = jax_backend.forward(jax_backend.load(params, BASE, precision="default"), tokens)
    # On CPU the default precision is full float32 too. On TPU or GPU it may use bfloat16 or TF32.
    assert_close(default, highest, "logits at default precision", (1e-2, 1e-4))


def test_direct_construction_uses_gpt2_init():
    config = BASE.replace(d_model=64, num_heads=4)
    model = GPT(config, rngs=nnx.Rngs(0))
    qkv = np.asarray(model.blocks[0].attn.qkv.kernel[...])
    fc2 = np.asarray(model.blocks[0].mlp.fc2.kernel[...])
    assert abs(qkv.std() - 0.02) < 0.001
    # Residual projections are scaled by 1 / sqrt(2 * num_layers) = 1/2 with two layers.
    assert abs(fc2.std() - 0.01) < 0.0005
    assert np.array_equal(np.asarray(model.blocks[0].ln1.scale[...]), np.ones(64, np.float32))


def test_stack_input_gradient_norm_matches_torch():
    config = BASE.replace(pre_ln=False)
    params = init_parameters(config, dtype=np.float64)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 16))
    r = rng.standard_normal((2, 5, 16))
    jax_norm = jax_backend.stack_input_gradient_norm(jax_backend.load(params, config, dtype="float64"), x, r)
    torch_norm = torch_backend.stack_input_gradient_norm(torch_backend.load(params, config, dtype="float64"), x, r)
    assert_close(jax_norm, torch_norm, "stack input gradient norm", "float64")
    with pytest.raises(ValueError, match="x must have shape"):
        jax_backend.stack_input_gradient_norm(jax_backend.load(params, config, dtype="float64"), x[..., :4], r)


# Written-out backward passes against JAX's own autodiff of the same formulas, in float64.


def reference_layer_norm(x, scale, shift, eps):
    centred = x - jnp.mean(x, axis=-1, keepdims=True)
    variance = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
    return centred / jnp.sqrt(variance + eps) * scale + shift


def test_layer_norm_backward_matches_autodiff():
    rng = np.random.default_rng(0)
    with dtype_scope("float64"):
        x = jnp.asarray(rng.normal(size=(2, 5, 6)) * 3.0 + 1.0)
        scale = jnp.asarray(1.0 + rng.normal(size=(1, 1, 6)) * 0.1)
        shift = jnp.asarray(rng.normal(size=(1, 1, 6)) * 0.1)
        upstream = jnp.asarray(rng.normal(size=(2, 5, 6)))  # random, so LayerNorm's input gradient is not zero

        def contract(function):
            return lambda *arrays: jnp.sum(function(*arrays, 1e-5) * upstream)

        ours = jax.grad(contract(layer_norm), argnums=(0, 1, 2))(x, scale, shift)
        expected = jax.grad(contract(reference_layer_norm), argnums=(0, 1, 2))(x, scale, shift)
        assert_close(layer_norm(x, scale, shift, 1e-5), reference_layer_norm(x, scale, shift, 1e-5), "layer_norm", "float64")
    for name, actual, reference in zip(("dx", "dscale", "dshift"), ours, expected):
        assert actual.shape == reference.shape
        assert_close(actual, reference, f"layer_norm {name}", "float64")


def test_masked_softmax_backward_matches_autodiff():
    rng = np.random.default_rng(1)
    allowed = jnp.asarray(np.tril(np.ones((4, 6), dtype=bool), k=2))[None, None]  # (1, 1, 4, 6), every row has a True
    with dtype_scope("float64"):
        scores = jnp.asarray(rng.normal(size=(2, 3, 4, 6)) * 4.0)
        upstream = jnp.asarray(rng.normal(size=(2, 3, 4, 6)))

        def reference(scores):
            return jax.nn.softmax(jnp.where(allowed, scores, -jnp.inf), axis=-1)

        probs = masked_softmax(scores, allowed)
        ours = jax.grad(lambda s: jnp.sum(masked_softmax(s, allowed) * upstream))(scores)
        expected = jax.grad(lambda s: jnp.sum(reference(s) * upstream))(scores)
        assert_close(probs, reference(scores), "masked_softmax", "float64")
    assert np.all(np.asarray(probs)[..., ~np.asarray(allowed[0, 0])] == 0)
    assert np.all(np.isfinite(np.asarray(ours)))
    assert_close(ours, expected, "masked_softmax gradient", "float64")


@pytest.mark.parametrize("query_block", [1, 3, 8])
def test_query_blocks_match_torch(monkeypatch, query_block):
    # A model shape of its own for each block size, because a compiled function traced with
    # another block size would otherwise be reused.
    config = BASE.replace(vocab_size=29 + query_block, d_model=12, num_heads=3)
    monkeypatch.setattr(jax_model, "QUERY_BLOCK", query_block)
    params = init_parameters(config, seed=2, dtype=np.float64)
    tokens, targets = batch(config, config.context_length)
    ours = jax_backend.load(params, config, dtype="float64")
    reference = torch_backend.load(params, config, dtype="float64")

    assert_close(jax_backend.forward(ours, tokens), torch_backend.forward(reference, tokens), "logits", "float64")
    loss, grads = jax_backend.loss_and_grads(ours, tokens, targets)
    expected_loss, expected_grads = torch_backend.loss_and_grads(reference, tokens, targets)
    assert_close(loss, expected_loss, "loss", "float64")
    for name, grad in expected_grads.items():
        assert_close(grads[name], grad, f"grad {name}", "float64")
