"""The torch backend of shared.backends: numpy in, numpy out (docs/backends.md)."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from shared.config import GPTConfig
from shared.inputs import check_targets, check_tokens
from shared.optim import AdamWConfig, AdamWState, applies_weight_decay, clip_coefficient
from shared.weights import parameter_shapes
from torch_impl.convert import (
    canonical_to_torch,
    from_canonical,
    gradients_to_canonical,
    to_canonical,
    torch_to_canonical,
)
from torch_impl.generate import generate as _generate
from torch_impl.model import GPTModel

name = "torch"


def load(params: Mapping[str, np.ndarray], config: GPTConfig, dtype: str = "float32") -> GPTModel:
    params = {key: np.asarray(value) for key, value in params.items()}
    return from_canonical(params, config, dtype=dtype)


def export(model: GPTModel) -> dict[str, np.ndarray]:
    return to_canonical(model)


def config_of(model: GPTModel) -> GPTConfig:
    return model.config


def _as_tensor(tokens: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64))


@torch.no_grad()
def forward(model: GPTModel, tokens: np.ndarray) -> np.ndarray:
    tokens = check_tokens(tokens, model.config)
    was_training = model.training
    model.eval()
    try:
        return model(_as_tensor(tokens)).numpy()
    finally:
        model.train(was_training)


@torch.no_grad()
def activations(model: GPTModel, tokens: np.ndarray) -> dict[str, np.ndarray]:
    tokens = check_tokens(tokens, model.config)
    was_training = model.training
    model.eval()
    try:
        collected: dict[str, torch.Tensor] = {}
        hidden = model.hidden_states(_as_tensor(tokens), collect=collected)
        collected["logits"] = model.lm_head(hidden)
        return {key: value.numpy() for key, value in collected.items()}
    finally:
        model.train(was_training)


def loss_and_grads(model: GPTModel, tokens: np.ndarray, targets: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    tokens = check_tokens(tokens, model.config)
    targets = check_targets(targets, tokens, model.config)
    was_training = model.training
    model.eval()
    try:
        model.zero_grad(set_to_none=True)
        _, loss = model(_as_tensor(tokens), _as_tensor(targets))
        loss.backward()
        grads = gradients_to_canonical(model)
        model.zero_grad(set_to_none=True)
        return float(loss.item()), grads
    finally:
        model.train(was_training)


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
    result = _generate(model, _as_tensor(prompt), max_new_tokens, temperature, top_k, seed, use_cache)
    return result.numpy()


def stack_input_gradient_norm(model: GPTModel, x: np.ndarray, r: np.ndarray) -> float:
    """Run the blocks alone on x (B, T, C) in eval mode and return the norm of d sum(output * r) / dx."""
    was_training = model.training
    model.eval()
    try:
        inputs = torch.tensor(x, dtype=model.tok_embed.weight.dtype, requires_grad=True)
        hidden = inputs
        for block in model.blocks:
            hidden = block(hidden)
        (hidden * torch.from_numpy(np.asarray(r)).to(hidden.dtype)).sum().backward()
        model.zero_grad(set_to_none=True)
        return float(inputs.grad.norm().item())
    finally:
        model.train(was_training)


class Trainer:
    """torch.optim.AdamW over a GPTModel, with the shared clipping rule and decay mask."""

    def __init__(self, model: GPTModel, adamw: AdamWConfig, state: AdamWState | None = None, seed: int = 0) -> None:
        self.model = model
        self.adamw = adamw
        # nn.Dropout draws from torch's global generator, so seeding it is what makes dropout repeatable.
        torch.manual_seed(seed)
        named = dict(model.named_parameters())
        shapes = parameter_shapes(model.config)
        decay = [named[n] for n in shapes if applies_weight_decay(n, shapes[n])]
        no_decay = [named[n] for n in shapes if not applies_weight_decay(n, shapes[n])]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": adamw.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=adamw.lr,
            betas=(adamw.beta1, adamw.beta2),
            eps=adamw.eps,
            foreach=False,
        )
        if state is not None:
            self._load_state(state)

    def _load_state(self, state: AdamWState) -> None:
        named = dict(self.model.named_parameters())
        for key in parameter_shapes(self.model.config):
            param = named[key]
            self.optimizer.state[param] = {
                "step": torch.tensor(float(state.step), dtype=param.dtype),
                "exp_avg": torch.from_numpy(np.ascontiguousarray(canonical_to_torch(key, state.m[key]))).to(param.dtype),
                "exp_avg_sq": torch.from_numpy(np.ascontiguousarray(canonical_to_torch(key, state.v[key]))).to(param.dtype),
            }

    def step(self, tokens: np.ndarray, targets: np.ndarray, lr: float) -> float:
        tokens = check_tokens(tokens, self.model.config)
        targets = check_targets(targets, tokens, self.model.config)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        _, loss = self.model(_as_tensor(tokens), _as_tensor(targets))
        loss.backward()
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        norm = torch.sqrt(sum(p.grad.double().pow(2).sum() for p in params)).item()
        coefficient = clip_coefficient(norm, self.adamw.max_grad_norm)
        if coefficient != 1.0:
            for param in params:
                param.grad.mul_(coefficient)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        return float(loss.item())

    def state(self) -> AdamWState:
        named = dict(self.model.named_parameters())
        m, v, step = {}, {}, 0
        for key in parameter_shapes(self.model.config):
            param_state = self.optimizer.state.get(named[key])
            if not param_state:
                m[key] = np.zeros(parameter_shapes(self.model.config)[key], dtype=named[key].detach().numpy().dtype)
                v[key] = np.zeros_like(m[key])
                continue
            step = int(param_state["step"].item())
            m[key] = np.ascontiguousarray(torch_to_canonical(key, param_state["exp_avg"].numpy()))
            v[key] = np.ascontiguousarray(torch_to_canonical(key, param_state["exp_avg_sq"].numpy()))
        return AdamWState(step=step, m=m, v=v)


def make_trainer(model: GPTModel, adamw: AdamWConfig, state: AdamWState | None = None, seed: int = 0) -> Trainer:
    return Trainer(model, adamw, state, seed)
