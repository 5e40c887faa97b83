"""Training the Flax model with optax: one jit-compiled step of forward, backward,
global-norm clipping and AdamW.

The optimizer is optax.clip_by_global_norm (the rule min(1, max_norm / norm) of
shared.optim.clip_coefficient) chained with optax.adamw, whose weight-decay mask comes from
shared.optim.applies_weight_decay. The learning rate enters each step as an argument through
optax.inject_hyperparams, so a schedule computed outside never causes a retrace.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx

from shared.inputs import check_targets, check_tokens
from shared.optim import AdamWConfig, AdamWState, applies_weight_decay
from shared.weights import check_parameters
from jax_impl.convert import canonical_name, canonical_to_state, dtype_scope, state_to_canonical
from jax_impl.model import GPT, cross_entropy

# The hyperparameters fixed when the optimizer is built. Only the learning rate is injected.
_STATIC_HYPERPARAMETERS = ("b1", "b2", "eps", "eps_root", "weight_decay", "mask", "mu_dtype", "nesterov")


def decay_mask(params: nnx.State) -> nnx.State:
    """Return a state shaped like params that is True where AdamW applies weight decay."""
    flat = [
        (path, variable.replace(applies_weight_decay(canonical_name(path), tuple(variable.shape))))
        for path, variable in nnx.to_flat_state(params)
    ]
    return nnx.from_flat_state(flat)


def make_optimizer(adamw: AdamWConfig) -> optax.GradientTransformation:
    """Chain global-norm clipping (skipped when max_grad_norm is None) and AdamW with an injected learning rate."""
    clip = optax.identity() if adamw.max_grad_norm is None else optax.clip_by_global_norm(adamw.max_grad_norm)
    injected_adamw = optax.inject_hyperparams(optax.adamw, static_args=_STATIC_HYPERPARAMETERS)(
        learning_rate=adamw.lr,
        b1=adamw.beta1,
        b2=adamw.beta2,
        eps=adamw.eps,
        eps_root=0.0,
        weight_decay=adamw.weight_decay,
        mask=decay_mask,
    )
    return optax.chain(clip, injected_adamw)


class Trainer:
    """optax AdamW over a GPT, updating the model in place after every step."""

    def __init__(self, model: GPT, adamw: AdamWConfig, state: AdamWState | None = None, seed: int = 0) -> None:
        self.model = model
        self.adamw = adamw
        self._dtype = model.dtype
        with dtype_scope(self._dtype):
            graphdef, params = nnx.split(model)
            # Dropout keys come from a Flax RNG stream, whose state travels through the compiled step.
            rng_graphdef, self._rng_state = nnx.split(nnx.Rngs(dropout=seed))
            optimizer, self._step = _compiled_train_step(graphdef, rng_graphdef, adamw)
            opt_state = optimizer.init(params)
            # The learning rate always enters as an array of the model's dtype, so that the
            # first step and the later ones share one compilation.
            opt_state = optax.tree_utils.tree_set(opt_state, learning_rate=np.asarray(adamw.lr, self._dtype))
            if state is not None:
                opt_state = self._resume(opt_state, state, params)
            # Device arrays from the start: the dispatch cache keys numpy and jax arguments apart.
            self._opt_state = jax.device_put(opt_state)

    def _resume(self, opt_state: Any, state: AdamWState, params: nnx.State) -> Any:
        """Put the step count and the moments of an AdamWState into optax's ScaleByAdamState."""
        config = self.model.config
        if isinstance(state.step, bool) or not isinstance(state.step, (int, np.integer)) or state.step < 0:
            raise ValueError(f"AdamWState.step must be a non-negative integer, got {state.step!r}")
        check_parameters(state.m, config, source="AdamWState.m")
        check_parameters(state.v, config, source="AdamWState.v")
        adam_state = optax.tree_utils.tree_get(opt_state, "ScaleByAdamState")
        adam_state = adam_state._replace(
            count=np.asarray(state.step, dtype=np.asarray(adam_state.count).dtype),
            mu=canonical_to_state(state.m, params, self._dtype),
            nu=canonical_to_state(state.v, params, self._dtype),
        )
        return optax.tree_utils.tree_set(opt_state, ScaleByAdamState=adam_state)

    def step(self, tokens: np.ndarray, targets: np.ndarray, lr: float) -> float:
        """Run one forward, backward, clip and AdamW update in train mode; return the loss before the update."""
        config = self.model.config
        tokens = check_tokens(tokens, config)
        targets = check_targets(targets, tokens, config)
        if isinstance(lr, bool) or not isinstance(lr, (int, float, np.floating)) or not math.isfinite(lr) or lr < 0:
            raise ValueError(f"learning rate must be a finite number >= 0, got {lr!r}")
        with dtype_scope(self._dtype):
            params = nnx.state(self.model)
            # The step donates params, so the model's arrays are invalid until nnx.update below.
            params, self._opt_state, self._rng_state, loss = self._step(
                params,
                self._opt_state,
                self._rng_state,
                tokens.astype(np.int32),
                targets.astype(np.int32),
                np.asarray(lr, dtype=self._dtype),
            )
            nnx.update(self.model, params)
            return float(loss)

    def state(self) -> AdamWState:
        """Return the step count and the AdamW moments under canonical names, as numpy arrays in the model's dtype."""
        with dtype_scope(self._dtype):
            adam_state = optax.tree_utils.tree_get(self._opt_state, "ScaleByAdamState")
            return AdamWState(
                step=int(adam_state.count),
                m=state_to_canonical(adam_state.mu, self.model.config),
                v=state_to_canonical(adam_state.nu, self.model.config),
            )


@functools.lru_cache(maxsize=32)
def _compiled_train_step(graphdef: Any, rng_graphdef: Any, adamw: AdamWConfig) -> tuple[optax.GradientTransformation, Any]:
    """Return the optimizer and the jitted train step.

    The step maps (params, opt_state, rng_state, tokens, targets, lr) to
    (params, opt_state, rng_state, loss). Trainers of equal models and settings share the step, so a new or resumed trainer
    reuses the compilation.
    """
    optimizer = make_optimizer(adamw)

    def train_step(params, opt_state, rng_state, tokens, targets, lr):
        def loss_fn(params, rng_state):
            model = nnx.merge(graphdef, params)
            # nnx only lets a Variable change on the trace level that created it, so the
            # stream gets fresh Variables here, inside the differentiated function.
            rngs = nnx.merge(rng_graphdef, rng_state, copy=True)
            loss = cross_entropy(model(tokens, train=True, rngs=rngs), targets)
            return loss, nnx.state(rngs)

        (loss, rng_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rng_state)
        opt_state = optax.tree_utils.tree_set(opt_state, learning_rate=lr)
        # optax 0.2.8 raises b1 to the int32 step count (a float ** int promotion), which strict
        # dtype promotion rejects, so the update runs under standard promotion.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
        return params, opt_state, rng_state, loss

    # The step donates params, opt_state and rng_state: their buffers are reused for the results.
    return optimizer, jax.jit(train_step, donate_argnums=(0, 1, 2))
