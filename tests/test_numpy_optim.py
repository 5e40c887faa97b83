"""AdamW and the training step of the NumPy backend, against torch.optim.AdamW and by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from numpy_impl import backend
from numpy_impl.model import loss_and_grads
from numpy_impl.optim import adamw_update, clip_gradients, init_state
from shared.config import GPTConfig
from shared.optim import AdamWConfig, AdamWState, global_norm
from shared.weights import init_parameters
from tests.tolerances import assert_close

CONFIG = GPTConfig(vocab_size=13, context_length=8, d_model=16, num_heads=2, num_layers=2, dropout=0.0)
STEPS = 10


def batches(config: GPTConfig, count: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    result = []
    for _ in range(count):
        tokens = rng.integers(0, config.vocab_size, (3, config.context_length))
        result.append((tokens, rng.integers(0, config.vocab_size, tokens.shape)))
    return result


def learning_rate(step: int) -> float:
    return 1e-2 * (1.0 - 0.05 * step)


def train(backend_module, config: GPTConfig, adamw: AdamWConfig, dtype: str = "float64"):
    """Run STEPS steps from the canonical init; return (losses, final params, final state)."""
    model = backend_module.load(init_parameters(config, seed=0, dtype=np.dtype(dtype)), config, dtype=dtype)
    trainer = backend_module.make_trainer(model, adamw, seed=0)
    losses = [trainer.step(tokens, targets, learning_rate(i)) for i, (tokens, targets) in enumerate(batches(config, STEPS))]
    return losses, backend_module.export(model), trainer.state()


@pytest.fixture(scope="module")
def torch_backend():
    pytest.importorskip("torch")
    from shared.backends import get_backend

    return get_backend("torch")


@pytest.mark.parametrize(
    "config, adamw",
    [
        (CONFIG, AdamWConfig(weight_decay=0.1, max_grad_norm=0.5)),
        (CONFIG.replace(weight_tying=False, pre_ln=False, gelu_approximation="none"), AdamWConfig(beta2=0.99, max_grad_norm=None)),
    ],
    ids=["tied-clipped", "untied-post-ln-unclipped"],
)
def test_ten_steps_match_torch(torch_backend, config, adamw):
    losses, params, state = train(backend, config, adamw)
    expected_losses, expected_params, expected_state = train(torch_backend, config, adamw)

    assert_close(np.array(losses), np.array(expected_losses), "losses", "adamw-float64")
    assert set(params) == set(expected_params)
    for name in expected_params:
        assert_close(params[name], expected_params[name], name, "adamw-float64")
    assert state.step == expected_state.step == STEPS
    for name in expected_params:
        assert_close(state.m[name], expected_state.m[name], f"m {name}", "adamw-float64")
        assert_close(state.v[name], expected_state.v[name], f"v {name}", "adamw-float64")


def test_clipping_is_active_in_comparison():
    # The clipped case of test_ten_steps_match_torch only tests clipping if the norm exceeds 0.5.
    model = backend.load(init_parameters(CONFIG, seed=0, dtype=np.float64), CONFIG, dtype="float64")
    tokens, targets = batches(CONFIG, 1)[0]
    _, grads = backend.loss_and_grads(model, tokens, targets)
    assert global_norm(grads) > 0.5


def test_resume_from_state_matches_uninterrupted():
    adamw = AdamWConfig(max_grad_norm=0.5)
    data = batches(CONFIG, 6)
    params = init_parameters(CONFIG, seed=0, dtype=np.float64)

    straight = backend.load(params, CONFIG, dtype="float64")
    trainer = backend.make_trainer(straight, adamw)
    straight_losses = [trainer.step(tokens, targets, 1e-2) for tokens, targets in data]

    first = backend.load(params, CONFIG, dtype="float64")
    first_trainer = backend.make_trainer(first, adamw)
    resumed_losses = [first_trainer.step(tokens, targets, 1e-2) for tokens, targets in data[:3]]
    second = backend.load(backend.export(first), CONFIG, dtype="float64")
    second_trainer = backend.make_trainer(second, adamw, state=first_trainer.state())
    resumed_losses += [second_trainer.step(tokens, targets, 1e-2) for tokens, targets in data[3:]]

    assert resumed_losses == straight_losses
    for name, value in backend.export(straight).items():
        np.testing.assert_array_equal(backend.export(second)[name], value)
    assert second_trainer.state().step == 6


def test_adamw_single_step_by_hand():
    adamw = AdamWConfig(lr=0.1, beta1=0.8, beta2=0.9, eps=1e-3, weight_decay=0.5, max_grad_norm=None)
    params = {"w": np.array([[1.0, -2.0]]), "b": np.array([0.5])}
    grads = {"w": np.array([[0.3, 0.4]]), "b": np.array([-1.0])}
    state = AdamWState(step=1, m={"w": np.array([[0.1, 0.0]]), "b": np.array([0.2])}, v={"w": np.array([[0.01, 0.0]]), "b": np.array([0.3])})

    new_params, new_state = adamw_update(params, grads, state, adamw, lr=0.1)

    for name in params:
        m = 0.8 * state.m[name] + 0.2 * grads[name]
        v = 0.9 * state.v[name] + 0.1 * grads[name] ** 2
        m_hat, v_hat = m / (1 - 0.8**2), v / (1 - 0.9**2)
        decay = 0.5 if name == "w" else 0.0  # matrices decay, vectors do not
        expected = params[name] * (1 - 0.1 * decay) - 0.1 * m_hat / (np.sqrt(v_hat) + 1e-3)
        np.testing.assert_allclose(new_params[name], expected, rtol=0, atol=1e-15)
        np.testing.assert_allclose(new_state.m[name], m, rtol=0, atol=1e-16)
        np.testing.assert_allclose(new_state.v[name], v, rtol=0, atol=1e-16)
    assert new_state.step == 2
    np.testing.assert_array_equal(params["w"], [[1.0, -2.0]])  # inputs unchanged


def test_weight_decay_only_on_matrices():
    params = init_parameters(CONFIG, seed=0, dtype=np.float64)
    zero_grads = {name: np.zeros_like(value) for name, value in params.items()}
    adamw = AdamWConfig(weight_decay=0.1)
    new_params, _ = adamw_update(params, zero_grads, init_state(params), adamw, lr=0.5)
    for name, value in params.items():
        factor = 1 - 0.5 * 0.1 if value.ndim >= 2 else 1.0
        np.testing.assert_allclose(new_params[name], value * factor, rtol=1e-15, atol=0, err_msg=name)


def test_clip_gradients_scales_to_max_norm():
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([[0.0], [4.0]])}
    clipped, norm = clip_gradients(grads, 1.0)
    assert norm == 5.0
    assert math.isclose(global_norm(clipped), 1.0, rel_tol=1e-15)
    unclipped, _ = clip_gradients(grads, 10.0)
    assert unclipped is grads
    assert clip_gradients(grads, None)[0] is grads


def test_float32_training_stays_float32():
    model = backend.load(init_parameters(CONFIG, seed=0), CONFIG.replace(dropout=0.1), dtype="float32")
    trainer = backend.make_trainer(model, AdamWConfig())
    for tokens, targets in batches(CONFIG, 2):
        loss = trainer.step(tokens, targets, 1e-3)
        assert isinstance(loss, float)
    for name, value in backend.export(model).items():
        assert value.dtype == np.float32, name
    state = trainer.state()
    for name in state.m:
        assert state.m[name].dtype == np.float32, name
        assert state.v[name].dtype == np.float32, name


def test_dropout_seed_decides_training():
    config = CONFIG.replace(dropout=0.3)
    params = init_parameters(config, seed=0, dtype=np.float64)
    data = batches(config, 3)

    def losses(seed: int) -> list[float]:
        trainer = backend.make_trainer(backend.load(params, config, dtype="float64"), AdamWConfig(), seed=seed)
        return [trainer.step(tokens, targets, 1e-2) for tokens, targets in data]

    assert losses(1) == losses(1)
    assert losses(1) != losses(2)
    # Eval-mode loss has no dropout, so it differs from the first training loss.
    model = backend.load(params, config, dtype="float64")
    assert backend.loss_and_grads(model, *data[0])[0] != losses(1)[0]


def test_state_is_a_copy():
    model = backend.load(init_parameters(CONFIG, seed=0, dtype=np.float64), CONFIG, dtype="float64")
    trainer = backend.make_trainer(model, AdamWConfig())
    tokens, targets = batches(CONFIG, 1)[0]
    trainer.step(tokens, targets, 1e-2)
    state = trainer.state()
    state.m["final_ln.scale"][:] = 100.0
    assert np.all(trainer.state().m["final_ln.scale"] != 100.0)


def test_resume_rejects_incomplete_state():
    model = backend.load(init_parameters(CONFIG, seed=0), CONFIG)
    state = init_state(model.params)
    del state.v["final_ln.shift"]
    with pytest.raises(ValueError, match="no v for parameter final_ln.shift"):
        backend.make_trainer(model, AdamWConfig(), state=state)


def test_train_step_loss_is_before_update():
    model = backend.load(init_parameters(CONFIG, seed=0, dtype=np.float64), CONFIG, dtype="float64")
    tokens, targets = batches(CONFIG, 1)[0]
    expected, _ = loss_and_grads(model, tokens, targets)
    trainer = backend.make_trainer(model, AdamWConfig())
    assert trainer.step(tokens, targets, 1e-2) == expected
    assert backend.loss_and_grads(model, tokens, targets)[0] < expected


def test_ten_updates_match_optax():
    optax = pytest.importorskip("optax")
    jax = pytest.importorskip("jax")
    adamw = AdamWConfig(lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, max_grad_norm=1.0)
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(4, 3)), "b": rng.normal(size=(3,)), "e": rng.normal(size=(2, 5))}
    grads_per_step = [{name: rng.normal(size=value.shape) * (0.1 + step) for name, value in params.items()} for step in range(STEPS)]

    state = init_state(params)
    ours = params
    for grads in grads_per_step:
        clipped, _ = clip_gradients(grads, adamw.max_grad_norm)
        ours, state = adamw_update(ours, clipped, state, adamw, adamw.lr)

    with jax.enable_x64(True):
        decay_mask = {name: value.ndim >= 2 for name, value in params.items()}
        optimizer = optax.chain(
            optax.clip_by_global_norm(adamw.max_grad_norm),
            optax.adamw(adamw.lr, b1=adamw.beta1, b2=adamw.beta2, eps=adamw.eps, weight_decay=adamw.weight_decay, mask=decay_mask),
        )
        expected = {name: jax.numpy.asarray(value) for name, value in params.items()}
        optax_state = optimizer.init(expected)
        for grads in grads_per_step:
            updates, optax_state = optimizer.update({k: jax.numpy.asarray(v) for k, v in grads.items()}, optax_state, expected)
            expected = optax.apply_updates(expected, updates)
        expected = {name: np.asarray(value) for name, value in expected.items()}

    for name in params:
        assert expected[name].dtype == np.float64
        assert_close(ours[name], expected[name], name, "adamw-float64")
