"""The optax trainer against torch.optim.AdamW, resuming, dropout streams and compilation reuse.

Every test runs with strict dtype promotion and rank promotion set to raise (the autouse
fixture), so an implicit cast or a silent broadcast in the model fails loudly.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from shared.backends import get_backend
from shared.config import GPTConfig
from shared.optim import AdamWConfig, global_norm, learning_rate
from shared.weights import init_parameters
from tests.tolerances import assert_close

jax_backend = get_backend("jax")
torch_backend = get_backend("torch")

BASE = GPTConfig(vocab_size=23, context_length=8, d_model=16, num_heads=2, num_layers=2, dropout=0.0)
STEPS = 10


@pytest.fixture(autouse=True)
def strict_jax():
    with jax.numpy_rank_promotion("raise"), jax.numpy_dtype_promotion("strict"):
        yield


def batches(config: GPTConfig, count: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        (rng.integers(0, config.vocab_size, (2, 6)), rng.integers(0, config.vocab_size, (2, 6)))
        for _ in range(count)
    ]


def schedule(step: int) -> float:
    return learning_rate(step, max_lr=1e-2, total_steps=STEPS, warmup_steps=3)


def train(backend, model, adamw, data, state=None, first_step=0, seed=0):
    trainer = backend.make_trainer(model, adamw, state=state, seed=seed)
    losses = [trainer.step(tokens, targets, schedule(first_step + i)) for i, (tokens, targets) in enumerate(data)]
    return trainer, losses


@pytest.mark.parametrize(
    "name, config, adamw",
    [
        ("pre-tied-clipped", BASE, AdamWConfig(lr=1e-2, max_grad_norm=0.5)),
        (
            "post-untied-nobias-unclipped",
            BASE.replace(pre_ln=False, weight_tying=False, use_bias=False, gelu_approximation="none"),
            AdamWConfig(lr=1e-2, weight_decay=0.3, beta2=0.99, max_grad_norm=None),
        ),
    ],
)
def test_ten_steps_match_torch(name, config, adamw):
    params = init_parameters(config, seed=0, dtype=np.float64)
    data = batches(config, STEPS)
    if adamw.max_grad_norm is not None:
        model = torch_backend.load(params, config, dtype="float64")
        _, grads = torch_backend.loss_and_grads(model, *data[0])
        assert global_norm(grads) > adamw.max_grad_norm, "the first step must exercise clipping"

    jax_model = jax_backend.load(params, config, dtype="float64")
    torch_model = torch_backend.load(params, config, dtype="float64")
    jax_trainer, jax_losses = train(jax_backend, jax_model, adamw, data)
    torch_trainer, torch_losses = train(torch_backend, torch_model, adamw, data)

    assert_close(jax_losses, torch_losses, f"losses ({name})", "adamw-float64")
    jax_params, torch_params = jax_backend.export(jax_model), torch_backend.export(torch_model)
    assert list(jax_params) == list(torch_params)
    for key in torch_params:
        assert_close(jax_params[key], torch_params[key], f"{key} after {STEPS} steps ({name})", "adamw-float64")
    jax_state, torch_state = jax_trainer.state(), torch_trainer.state()
    assert jax_state.step == torch_state.step == STEPS
    for key in torch_params:
        assert jax_state.m[key].dtype == np.float64
        assert_close(jax_state.m[key], torch_state.m[key], f"m {key} ({name})", "adamw-float64")
        assert_close(jax_state.v[key], torch_state.v[key], f"v {key} ({name})", "adamw-float64")


def test_resume_equals_continuous_training():
    params = init_parameters(BASE, seed=1, dtype=np.float64)
    adamw = AdamWConfig(lr=1e-2)
    data = batches(BASE, 6, seed=2)

    continuous = jax_backend.load(params, BASE, dtype="float64")
    _, continuous_losses = train(jax_backend, continuous, adamw, data)

    first = jax_backend.load(params, BASE, dtype="float64")
    first_trainer, first_losses = train(jax_backend, first, adamw, data[:3])
    saved = first_trainer.state()
    assert saved.step == 3
    resumed = jax_backend.load(jax_backend.export(first), BASE, dtype="float64")
    resumed_trainer, resumed_losses = train(jax_backend, resumed, adamw, data[3:], state=saved, first_step=3)

    assert_close(first_losses + resumed_losses, continuous_losses, "losses across a resume", "adamw-float64")
    resumed_params, continuous_params = jax_backend.export(resumed), jax_backend.export(continuous)
    for key in continuous_params:
        assert_close(resumed_params[key], continuous_params[key], f"{key} after a resume", "adamw-float64")
    assert resumed_trainer.state().step == 6


def test_resume_from_torch_state_matches_torch():
    params = init_parameters(BASE, seed=1, dtype=np.float64)
    adamw = AdamWConfig(lr=1e-2)
    data = batches(BASE, 4, seed=3)
    torch_model = torch_backend.load(params, BASE, dtype="float64")
    torch_trainer, _ = train(torch_backend, torch_model, adamw, data[:2])
    handover = torch_trainer.state()

    jax_model = jax_backend.load(torch_backend.export(torch_model), BASE, dtype="float64")
    _, jax_losses = train(jax_backend, jax_model, adamw, data[2:], state=handover, first_step=2)
    _, torch_losses = train(torch_backend, torch_model, adamw, data[2:], state=handover, first_step=2)
    assert_close(jax_losses, torch_losses, "losses after a torch-to-jax handover", "adamw-float64")
    jax_params, torch_params = jax_backend.export(jax_model), torch_backend.export(torch_model)
    for key in torch_params:
        assert_close(jax_params[key], torch_params[key], f"{key} after a handover", "adamw-float64")


def test_state_before_first_step_is_zero():
    model = jax_backend.load(init_parameters(BASE), BASE)
    state = jax_backend.make_trainer(model, AdamWConfig()).state()
    assert state.step == 0
    assert set(state.m) == set(jax_backend.export(model))
    assert all(not np.any(value) for value in state.m.values())
    assert all(value.dtype == np.float32 for value in state.v.values())


def test_step_updates_model_in_place_without_retrace():
    params = init_parameters(BASE, seed=0)
    model = jax_backend.load(params, BASE)
    trainer = jax_backend.make_trainer(model, AdamWConfig())
    data = batches(BASE, 4, seed=4)
    trainer.step(*data[0], 1e-3)
    compiled = trainer._step._cache_size()
    for i, (tokens, targets) in enumerate(data[1:]):
        trainer.step(tokens, targets, 2e-3 * (i + 1))
    after = jax_backend.export(model)
    assert not np.array_equal(after["blocks.0.attn.qkv.weight"], params["blocks.0.attn.qkv.weight"])
    # The first step's compilation serves every later step, whatever the learning rate.
    assert trainer._step._cache_size() == compiled
    again = jax_backend.make_trainer(jax_backend.load(params, BASE), AdamWConfig())
    again.step(*data[0], 1e-3)
    assert again._step is trainer._step
    assert trainer._step._cache_size() == compiled
    loss, _ = jax_backend.loss_and_grads(model, *data[0])
    assert np.isfinite(loss)


def test_dropout_follows_seed():
    config = BASE.replace(dropout=0.3)
    params = init_parameters(config, seed=0)
    data = batches(config, 3, seed=5)
    adamw = AdamWConfig(lr=1e-3)
    runs = {}
    for label, seed in (("first", 7), ("again", 7), ("other", 8)):
        _, runs[label] = train(jax_backend, jax_backend.load(params, config), adamw, data, seed=seed)
    assert runs["first"] == runs["again"]
    assert runs["first"] != runs["other"]
    eval_loss, _ = jax_backend.loss_and_grads(jax_backend.load(params, config), *data[0])
    assert runs["first"][0] != eval_loss


@pytest.mark.parametrize("lr", [-1e-3, float("nan"), float("inf"), "0.1"])
def test_bad_learning_rate_raises(lr):
    trainer = jax_backend.make_trainer(jax_backend.load(init_parameters(BASE), BASE), AdamWConfig())
    tokens, targets = batches(BASE, 1)[0]
    with pytest.raises(ValueError, match="learning rate must be a finite number >= 0"):
        trainer.step(tokens, targets, lr)


def test_bad_batch_raises():
    trainer = jax_backend.make_trainer(jax_backend.load(init_parameters(BASE), BASE), AdamWConfig())
    tokens, targets = batches(BASE, 1)[0]
    with pytest.raises(ValueError, match="token id 23 out of range"):
        trainer.step(np.full_like(tokens, 23), targets, 1e-3)
    with pytest.raises(ValueError, match="targets have shape"):
        trainer.step(tokens, targets[:, :3], 1e-3)


def test_bad_resume_state_raises():
    model = jax_backend.load(init_parameters(BASE), BASE)
    state = jax_backend.make_trainer(model, AdamWConfig()).state()
    state.m.pop("final_ln.scale")
    with pytest.raises(ValueError, match="AdamWState.m: missing tensor\\(s\\) final_ln.scale"):
        jax_backend.make_trainer(model, AdamWConfig(), state=state)
    state = jax_backend.make_trainer(model, AdamWConfig()).state()
    state.step = -1
    with pytest.raises(ValueError, match="AdamWState.step must be a non-negative integer"):
        jax_backend.make_trainer(model, AdamWConfig(), state=state)
