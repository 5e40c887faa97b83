"""The pre-LN vs post-LN experiment on the PyTorch model (see shared.prepost)."""

from __future__ import annotations

from shared.config import GPTConfig
from shared.prepost import EXPERIMENT_CONFIG, PrePostResult
from shared.prepost import prepost_experiment as _experiment


def prepost_experiment(config: GPTConfig = EXPERIMENT_CONFIG, seed: int = 0, dtype: str = "float64") -> PrePostResult:
    """Run the experiment with torch: gradient norms at the input of a pre-LN and a post-LN stack."""
    return _experiment("torch", config=config, seed=seed, dtype=dtype)
