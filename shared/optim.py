"""Training rules shared by every backend: AdamW settings, the weight-decay rule,
gradient clipping and the learning-rate schedule.

Each backend implements AdamW in its own framework (torch.optim.AdamW, optax.adamw, or by
hand in NumPy); this module fixes the numbers they must agree on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np


@dataclass(frozen=True)
class AdamWConfig:
    """AdamW hyperparameters, with decoupled weight decay and bias correction as in torch.optim.AdamW."""

    lr: float = 3e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    max_grad_norm: float | None = 1.0  # global-norm clipping threshold; None disables clipping

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"AdamWConfig.lr must be > 0, got {self.lr}")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"AdamWConfig.{name} must satisfy 0 <= {name} < 1, got {value}")
        if not self.eps > 0:
            raise ValueError(f"AdamWConfig.eps must be > 0, got {self.eps}")
        if self.weight_decay < 0:
            raise ValueError(f"AdamWConfig.weight_decay must be >= 0, got {self.weight_decay}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"AdamWConfig.max_grad_norm must be > 0 or None, got {self.max_grad_norm}")


@dataclass
class AdamWState:
    """AdamW state under canonical parameter names: the step count and the first and second moments."""

    step: int
    m: dict[str, np.ndarray] = field(default_factory=dict)
    v: dict[str, np.ndarray] = field(default_factory=dict)


def applies_weight_decay(name: str, shape: tuple[int, ...]) -> bool:
    """Say whether AdamW decays this parameter: matrices and embeddings yes, biases and LayerNorm no."""
    return len(shape) >= 2


def clip_coefficient(global_norm: float, max_norm: float | None) -> float:
    """Return the factor that global-norm clipping multiplies every gradient by.

    The rule is min(1, max_norm / norm), the rule of optax.clip_by_global_norm. torch's
    clip_grad_norm_ adds 1e-6 to the norm, so the torch backend applies this rule itself.
    """
    if max_norm is None or global_norm <= max_norm:
        return 1.0
    return max_norm / global_norm


def global_norm(grads: Mapping[str, np.ndarray]) -> float:
    return float(math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads.values())))


def learning_rate(step: int, max_lr: float, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.1) -> float:
    """Return the learning rate for a 0-based step: linear warm-up, then cosine decay to min_lr_ratio * max_lr."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    min_lr = max_lr * min_lr_ratio
    if warmup_steps > 0 and step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    decay_steps = max(1, total_steps - warmup_steps)
    progress = (step - warmup_steps) / decay_steps
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
