"""The pre-LN vs post-LN experiment, runnable on any backend.

Two six-layer stacks of blocks share the same canonical weights and differ only in where
the LayerNorm sits. One forward of a fixed random input x through the blocks alone (no
embedding, no final LayerNorm), the loss sum(output * r) for a fixed random r, and one
backward give the gradient norm at the stack's input, where the embedding would feed it.

The loss is a fixed random projection, not the sum of squares of the output: a post-LN
stack ends in a LayerNorm whose output has a sum of squares of C * var / (var + eps) per
row, nearly constant, so that loss would have a gradient of order eps for post-LN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.backends import get_backend
from shared.config import GPTConfig
from shared.weights import init_parameters

EXPERIMENT_CONFIG = GPTConfig(
    vocab_size=256, context_length=64, d_model=64, num_heads=4, num_layers=6, dropout=0.0
)


@dataclass(frozen=True)
class PrePostResult:
    pre_ln_norm: float
    post_ln_norm: float

    @property
    def ratio(self) -> float:
        """Pre-LN gradient norm divided by post-LN gradient norm."""
        return self.pre_ln_norm / self.post_ln_norm


def prepost_experiment(
    backend: str = "torch",
    config: GPTConfig = EXPERIMENT_CONFIG,
    seed: int = 0,
    batch_size: int = 2,
    seq_len: int = 16,
    dtype: str = "float64",
) -> PrePostResult:
    """Return the gradient norms at the input of a pre-LN and a post-LN stack with the same weights."""
    module = get_backend(backend)
    params = init_parameters(config, seed=seed, dtype=np.dtype(dtype))
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((batch_size, seq_len, config.d_model)).astype(dtype)
    r = rng.standard_normal((batch_size, seq_len, config.d_model)).astype(dtype)
    norms = []
    for pre_ln in (True, False):
        model = module.load(params, config.replace(pre_ln=pre_ln), dtype=dtype)
        norms.append(module.stack_input_gradient_norm(model, x, r))
    return PrePostResult(pre_ln_norm=norms[0], post_ln_norm=norms[1])
