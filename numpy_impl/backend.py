"""The NumPy backend of shared.backends: numpy in, numpy out (docs/backends.md)."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from shared.config import GPTConfig
from shared.inputs import check_dtype, check_targets, check_tokens
from shared.optim import AdamWConfig, AdamWState
from shared.weights import check_parameters, parameter_shapes
from numpy_impl import model as _model
from numpy_impl.generate import generate as _generate
from numpy_impl.model import GPTModel
from numpy_impl.optim import init_state, train_step

name = "numpy"


def load(params: Mapping[str, np.ndarray], config: GPTConfig, dtype: str = "float32") -> GPTModel:
    """Build a model from canonical params, copied and cast to dtype ("float32" or "float64")."""
    dtype = check_dtype(dtype)
    check_parameters(params, config)
    owned = {key: np.array(params[key], dtype=dtype, order="C") for key in parameter_shapes(config)}
    return GPTModel(config, owned)


def export(model: GPTModel) -> dict[str, np.ndarray]:
    """Return copies of the canonical params in the model's dtype; a tied model has no lm_head.weight."""
    return {key: value.copy() for key, value in model.params.items()}


def config_of(model: GPTModel) -> GPTConfig:
    return model.config


def forward(model: GPTModel, tokens: np.ndarray) -> np.ndarray:
    """Return the logits (B, T, V) in eval mode."""
    tokens = check_tokens(tokens, model.config)
    return _model.sharded_logits(model, tokens)


def activations(model: GPTModel, tokens: np.ndarray) -> dict[str, np.ndarray]:
    """Return "embed", "blocks.{i}", "final_ln" and "logits" in eval mode."""
    tokens = check_tokens(tokens, model.config)
    collected: dict[str, np.ndarray] = {}
    _model.model_logits(model, tokens, collect=collected)
    return collected


def loss_and_grads(model: GPTModel, tokens: np.ndarray, targets: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """Return the mean cross-entropy and the canonical gradients, in eval mode (no dropout)."""
    tokens = check_tokens(tokens, model.config)
    targets = check_targets(targets, tokens, model.config)
    return _model.sharded_loss_and_grads(model, tokens, targets)


def generate(
    model: GPTModel,
    prompt: np.ndarray,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    use_cache: bool = True,
) -> np.ndarray:
    prompt = check_tokens(prompt, model.config, name="prompt", allow_long=True)
    return _generate(model, prompt, max_new_tokens, temperature, top_k, seed, use_cache)


def stack_input_gradient_norm(model: GPTModel, x: np.ndarray, r: np.ndarray) -> float:
    """Run the blocks alone on x (B, T, C) in eval mode and return the norm of d sum(output * r) / dx."""
    config = model.config
    x, r = np.asarray(x), np.asarray(r)
    if x.ndim != 3 or x.shape[-1] != config.d_model:
        raise ValueError(f"x must have shape (batch, sequence, {config.d_model}), got shape {x.shape}")
    if x.shape[1] > config.context_length:
        raise ValueError(
            f"x has sequence length {x.shape[1]} but context_length is {config.context_length}; crop it"
        )
    if r.shape != x.shape:
        raise ValueError(f"r has shape {r.shape} but x has shape {x.shape}; they must match")
    hidden = np.asarray(x, dtype=model.dtype)
    caches = []
    for i in range(model.config.num_layers):
        hidden, cache = _model.block_forward(hidden, model.params, f"blocks.{i}", model.config, model.mask, None)
        caches.append(cache)
    dx = np.asarray(r, dtype=model.dtype)  # d sum(output * r) / d output
    for cache in reversed(caches):
        dx, _ = _model.block_backward(dx, cache)
    return float(np.linalg.norm(dx.astype(np.float64)))


class Trainer:
    """AdamW training of a GPTModel in place, with dropout drawn from a seeded numpy Generator."""

    def __init__(self, model: GPTModel, adamw: AdamWConfig, state: AdamWState | None = None, seed: int = 0) -> None:
        self.model = model
        self.adamw = adamw
        self.rng = np.random.default_rng(seed)
        if state is None:
            self._state = init_state(model.params)
        else:
            self._state = _state_like(state, model)

    def step(self, tokens: np.ndarray, targets: np.ndarray, lr: float) -> float:
        """Run one training step at learning rate lr and return the loss before the update."""
        tokens = check_tokens(tokens, self.model.config)
        targets = check_targets(targets, tokens, self.model.config)
        self.model.training = True
        new_params, self._state, loss = train_step(self.model, self._state, tokens, targets, self.adamw, lr, self.rng)
        self.model.params = new_params
        return loss

    def state(self) -> AdamWState:
        """Return a copy of the step count and the moments under canonical names."""
        return AdamWState(
            step=self._state.step,
            m={key: value.copy() for key, value in self._state.m.items()},
            v={key: value.copy() for key, value in self._state.v.items()},
        )


def _state_like(state: AdamWState, model: GPTModel) -> AdamWState:
    """Copy an AdamWState into the model's dtype, checking that it has every parameter's moments."""
    m, v = {}, {}
    for key, value in model.params.items():
        for moments, store, label in ((state.m, m, "m"), (state.v, v, "v")):
            if key not in moments:
                raise ValueError(f"AdamW state has no {label} for parameter {key}; it was saved for another config")
            moment = np.asarray(moments[key])
            if moment.shape != value.shape:
                raise ValueError(
                    f"AdamW state {label}[{key}] has shape {moment.shape} but the parameter has shape {value.shape}"
                )
            store[key] = np.array(moment, dtype=model.dtype, copy=True)
    return AdamWState(step=int(state.step), m=m, v=v)


def make_trainer(model: GPTModel, adamw: AdamWConfig, state: AdamWState | None = None, seed: int = 0) -> Trainer:
    return Trainer(model, adamw, state, seed)
