"""AdamW by hand, and the training step of the NumPy backend.

The update follows torch.optim.AdamW (torch 2.x, foreach=False), step by step and in the
same order, so float64 runs agree with it to rounding:

    p = p * (1 - lr * weight_decay)             only where shared.optim.applies_weight_decay
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

optax.adamw computes the same quantity as lr * (m_hat / (sqrt(v_hat) + eps) + wd * p).
Gradients are first scaled by shared.optim.clip_coefficient of their global norm.
"""

from __future__ import annotations

import math

import numpy as np

from shared.optim import AdamWConfig, AdamWState, applies_weight_decay, clip_coefficient, global_norm
from numpy_impl.layers import Grads
from numpy_impl.model import GPTModel, sharded_loss_and_grads


def init_state(params: dict[str, np.ndarray]) -> AdamWState:
    """Return step 0 with zero moments shaped and typed like params."""
    return AdamWState(
        step=0,
        m={name: np.zeros_like(value) for name, value in params.items()},
        v={name: np.zeros_like(value) for name, value in params.items()},
    )


def clip_gradients(grads: Grads, max_norm: float | None) -> tuple[Grads, float]:
    """Scale every gradient by min(1, max_norm / global norm) and return (clipped grads, global norm)."""
    norm = global_norm(grads)
    coefficient = clip_coefficient(norm, max_norm)
    if coefficient == 1.0:
        return grads, norm
    # coefficient is a Python float, so a float32 gradient stays float32.
    return {name: grad * coefficient for name, grad in grads.items()}, norm


def adamw_update(
    params: dict[str, np.ndarray], grads: Grads, state: AdamWState, adamw: AdamWConfig, lr: float
) -> tuple[dict[str, np.ndarray], AdamWState]:
    """Return (new params, new state) after one AdamW step; the inputs are left unchanged."""
    step = state.step + 1
    beta1, beta2 = adamw.beta1, adamw.beta2
    step_size = lr / (1.0 - beta1**step)
    bias_correction2_sqrt = math.sqrt(1.0 - beta2**step)

    new_params, new_m, new_v = {}, {}, {}
    for name, param in params.items():
        grad = grads[name]
        m = state.m[name] * beta1
        m += (1.0 - beta1) * grad
        v = state.v[name] * beta2
        v += (1.0 - beta2) * np.square(grad)

        if adamw.weight_decay != 0.0 and applies_weight_decay(name, param.shape):
            new_param = param * (1.0 - lr * adamw.weight_decay)
        else:
            new_param = param.copy()
        denominator = np.sqrt(v)
        denominator /= bias_correction2_sqrt
        denominator += adamw.eps
        update = np.divide(m, denominator, out=denominator)
        update *= step_size
        new_param -= update

        new_params[name], new_m[name], new_v[name] = new_param, m, v
    return new_params, AdamWState(step=step, m=new_m, v=new_v)


def train_step(
    model: GPTModel,
    state: AdamWState,
    tokens: np.ndarray,
    targets: np.ndarray,
    adamw: AdamWConfig,
    lr: float,
    rng: np.random.Generator | None,
) -> tuple[dict[str, np.ndarray], AdamWState, float]:
    """Run forward, backward, clipping and AdamW on checked tokens and targets (B, T).

    Returns (new params, new state, loss), where loss is the mean cross-entropy before the
    update. rng drives dropout; None trains without it. model itself is not changed.
    """
    loss, grads = sharded_loss_and_grads(model, tokens, targets, rng)
    grads, _ = clip_gradients(grads, adamw.max_grad_norm)
    new_params, new_state = adamw_update(model.params, grads, state, adamw, lr)
    return new_params, new_state, loss
