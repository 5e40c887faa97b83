"""Conversion between canonical parameters and the PyTorch model.

Canonical names equal the model's parameter names. Only the layout differs: canonical linear
weights are (in, out) and nn.Linear stores (out, in), so linear weights are transposed.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from shared.config import GPTConfig
from shared.inputs import check_dtype
from shared.weights import check_parameters, parameter_shapes
from torch_impl.model import GPTModel

TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def is_linear_weight(name: str) -> bool:
    """Say whether a canonical name is an nn.Linear weight, stored transposed in torch."""
    return name.endswith(".weight") and not name.startswith(("tok_embed.", "pos_embed."))


def canonical_to_torch(name: str, value: np.ndarray) -> np.ndarray:
    return value.T if is_linear_weight(name) else value


def torch_to_canonical(name: str, value: np.ndarray) -> np.ndarray:
    return value.T if is_linear_weight(name) else value


def from_canonical(params: Mapping[str, np.ndarray], config: GPTConfig, dtype: str | None = None) -> GPTModel:
    """Build a GPTModel holding exactly params; dtype defaults to the dtype of tok_embed.weight."""
    params = dict(params)
    if config.weight_tying:
        params.pop("lm_head.weight", None)
    check_parameters(params, config)
    dtype = check_dtype(dtype or np.asarray(params["tok_embed.weight"]).dtype.name)
    model = GPTModel(config).to(TORCH_DTYPES[dtype])
    torch_params = dict(model.named_parameters())
    with torch.no_grad():
        for name in parameter_shapes(config):
            value = np.ascontiguousarray(canonical_to_torch(name, np.asarray(params[name])))
            torch_params[name].copy_(torch.from_numpy(value))
    model.eval()
    return model


def to_canonical(model: GPTModel) -> dict[str, np.ndarray]:
    """Return the model's parameters as canonical numpy arrays (a tied head is not repeated)."""
    torch_params = dict(model.named_parameters(remove_duplicate=False))
    params = {}
    for name in parameter_shapes(model.config):
        value = torch_params[name].detach().cpu().numpy()
        params[name] = np.ascontiguousarray(torch_to_canonical(name, value))
    return params


def gradients_to_canonical(model: GPTModel) -> dict[str, np.ndarray]:
    """Return the .grad of every parameter under canonical names and layout."""
    torch_params = dict(model.named_parameters(remove_duplicate=False))
    grads = {}
    for name in parameter_shapes(model.config):
        param = torch_params[name]
        # A parameter that the loss does not reach (an unused position embedding row is
        # still reached, but a whole unused matrix is not) has no .grad: its gradient is 0.
        value = torch.zeros_like(param) if param.grad is None else param.grad
        value = value.detach().cpu().numpy()
        grads[name] = np.ascontiguousarray(torch_to_canonical(name, value))
    return grads
