"""Autoregressive generation for the PyTorch model, with an optional KV cache.

Sampling goes through shared.sampling, so the same seed gives the same tokens in every
backend: one uniform number per new token, inverted through the filtered distribution.
"""

from __future__ import annotations

import numpy as np
import torch

from shared.inputs import check_generate_arguments
from shared.sampling import check_sampling_arguments, draw_uniforms, sample_next
from torch_impl.model import GPTModel, KVCache


def top_k_filter(logits: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """Set every logit below the k-th largest of its row to -inf; ties with the k-th largest are kept.

    A top_k of None or above the vocabulary size means no filtering; top_k < 1 raises ValueError.
    """
    check_sampling_arguments(1.0, top_k)
    if top_k is None or top_k >= logits.shape[-1]:
        return logits.clone()
    kth_largest = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth_largest, float("-inf"))


@torch.no_grad()
def generate(
    model: GPTModel,
    prompt: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Extend prompt (B, T) by max_new_tokens sampled tokens and return (B, T + max_new_tokens).

    The running sequence is cropped to its last context_length tokens before each step. With
    use_cache, each step runs only the new position while the window fits. Once it slides,
    every position embedding changes, so the cache is rebuilt from the cropped window.
    """
    check_sampling_arguments(temperature, top_k)
    check_generate_arguments(max_new_tokens)
    model.check_input(prompt, name="prompt", allow_long=True)
    context = model.config.context_length
    uniforms = draw_uniforms(seed, max_new_tokens, prompt.shape[0])  # (N, B)
    was_training = model.training
    model.eval()
    try:
        sequence = prompt
        cache: KVCache | None = None
        for step in range(max_new_tokens):
            fits = sequence.shape[1] <= context
            if use_cache and fits and cache is not None:
                hidden = model.hidden_states(sequence[:, -1:], cache)  # (B, 1, C)
            else:
                window = sequence[:, -context:]  # (B, <=ctx)
                cache = KVCache(model.config.num_layers) if use_cache else None
                hidden = model.hidden_states(window, cache)  # (B, T, C)
            logits = model.lm_head(hidden[:, -1, :])  # (B, C) @ (C, V) -> (B, V)
            next_token = sample_next(logits.double().cpu().numpy(), uniforms[step], temperature, top_k)  # (B,)
            next_token = torch.as_tensor(next_token, dtype=sequence.dtype, device=sequence.device)
            sequence = torch.cat([sequence, next_token[:, None]], dim=1)
            if use_cache and sequence.shape[1] > context:
                cache = None
        return sequence
    finally:
        model.train(was_training)
