"""Generation in the Flax backend: the sampler inside jit, the KV cache, the sliding window
and how often the compiled steps are traced.

Every test runs with strict dtype promotion and rank promotion set to raise (the autouse
fixture), so an implicit cast or a silent broadcast in the model fails loudly.
"""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shared.backends import get_backend
from shared.config import GPTConfig
from shared.sampling import draw_uniforms, sample_next
from shared.weights import init_parameters
from tests.tolerances import assert_close

from jax_impl.convert import dtype_scope
from jax_impl.generate import TRACE_COUNTS, sample_from_logits, window_size

jax_backend = get_backend("jax")
torch_backend = get_backend("torch")

BASE = GPTConfig(vocab_size=31, context_length=8, d_model=16, num_heads=2, num_layers=2, dropout=0.0)


@pytest.fixture(autouse=True)
def strict_jax():
    with jax.numpy_rank_promotion("raise"), jax.numpy_dtype_promotion("strict"):
        yield


def load(config=BASE, dtype="float64", seed=0):
    return jax_backend.load(init_parameters(config, seed=seed, dtype=np.dtype(dtype)), config, dtype=dtype)


def prompt(length, batch=2, vocab=BASE.vocab_size, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, (batch, length))


@pytest.mark.parametrize("temperature, top_k", [(1.0, None), (0.7, 3), (1.3, 1), (1.0, 4), (2.0, 100)])
def test_sampler_matches_shared_sampler(temperature, top_k):
    rng = np.random.default_rng(0)
    # Rounded logits make ties, also with the k-th largest.
    logits = np.round(rng.standard_normal((64, 12)) * 2) / 2
    uniforms = draw_uniforms(1, 1, 64)[0]
    expected = sample_next(logits, uniforms, temperature, top_k)
    k = 12 if top_k is None else min(top_k, 12)
    with jax.enable_x64(True):
        picked = sample_from_logits(
            jnp.asarray(logits), jnp.asarray(uniforms), jnp.asarray(temperature, jnp.float64), jnp.int32(k)
        )
    assert np.array_equal(np.asarray(picked), expected)


def test_sampler_float32_logits_near_tie():
    # Seed 1019 draws a near-tie of the inverse CDF over GPT-2's vocabulary: float32 arithmetic
    # picks token 2396, and the float64 arithmetic of shared.sampling picks 2395.
    rng = np.random.default_rng(1019)
    logits = (rng.standard_normal(50257) * 2).astype(np.float32)[None, :]  # (1, V)
    uniforms = np.array([rng.random()])
    expected = sample_next(logits, uniforms, 1.0, None)
    with jax.enable_x64(True):
        picked = sample_from_logits(jnp.asarray(logits), jnp.asarray(uniforms), jnp.float64(1.0), jnp.int32(50257))
    float32_picked = sample_from_logits(
        jnp.asarray(logits), jnp.asarray(uniforms, jnp.float32), jnp.float32(1.0), jnp.int32(50257)
    )
    assert int(expected[0]) == 2395
    assert int(picked[0]) == 2395
    assert int(float32_picked[0]) == 2396  # so the case does separate the two precisions


def test_float32_generate_samples_in_float64(monkeypatch):
    # jax_impl exports a function named generate, so the module comes from importlib.
    generate_module = importlib.import_module("jax_impl.generate")
    seen = []
    sampler = generate_module.sample_from_logits

    def recording_sampler(logits, uniforms, temperature, top_k):
        seen.append((logits.dtype, uniforms.dtype, temperature.dtype))
        return sampler(logits, uniforms, temperature, top_k)

    monkeypatch.setattr(generate_module, "sample_from_logits", recording_sampler)
    # A config of its own, so the steps are traced here with the recording sampler.
    config = BASE.replace(vocab_size=59)
    model = load(config, dtype="float32")
    jax_backend.generate(model, prompt(3, vocab=59), 4, seed=0)
    assert seen, "the compiled steps were not traced"
    assert set(seen) == {(jnp.dtype(jnp.float32), jnp.dtype(jnp.float64), jnp.dtype(jnp.float64))}


def test_sampler_keeps_ties_with_kth_largest():
    logits = np.array([[1.0, 3.0, 2.0, 3.0, 2.0, 0.5]], dtype=np.float32)
    # With top_k = 3 the kept tokens are 1, 2, 3 and 4 (2.0 ties the third largest), never 0 or 5.
    picked = set()
    for u in np.linspace(0.0, 0.999, 200):
        token = sample_from_logits(jnp.asarray(logits), jnp.asarray([u], jnp.float32), jnp.float32(1.0), jnp.int32(3))
        picked.add(int(token[0]))
    assert picked == {1, 2, 3, 4}


def test_window_size_is_capped_power_of_two():
    assert [window_size(n, 12) for n in (1, 2, 3, 5, 8, 9, 12)] == [1, 2, 4, 8, 8, 12, 12]


@pytest.mark.parametrize("prompt_length", [1, 3, 7])
def test_cache_steps_match_full_forward(prompt_length):
    model = load()
    tokens = prompt(BASE.context_length)
    full = jax_backend.forward(model, tokens)  # (B, T, V)
    with dtype_scope(model.dtype):
        window = np.zeros_like(tokens, dtype=np.int32)
        window[:, :prompt_length] = tokens[:, :prompt_length]
        logits, cache = model.prefill(jnp.asarray(window), jnp.int32(prompt_length))
        steps = [np.asarray(logits)]
        for position in range(prompt_length, BASE.context_length):
            token = jnp.asarray(tokens[:, position], jnp.int32)
            logits, cache = model.decode(token, cache, jnp.int32(position))
            steps.append(np.asarray(logits))
    cached = np.stack(steps, axis=1)  # (B, T - prompt_length + 1, V)
    assert_close(cached, full[:, prompt_length - 1 :], f"cached logits from prompt length {prompt_length}", "kv-cache-float64")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(
    "prompt_length, new_tokens, temperature, top_k",
    [(3, 4, 1.0, None), (3, 20, 0.8, 5), (11, 6, 1.0, None)],
)
def test_cache_and_no_cache_give_same_tokens(dtype, prompt_length, new_tokens, temperature, top_k):
    model = load(dtype=dtype)
    start = prompt(prompt_length)
    cached = jax_backend.generate(model, start, new_tokens, temperature, top_k, seed=3, use_cache=True)
    uncached = jax_backend.generate(model, start, new_tokens, temperature, top_k, seed=3, use_cache=False)
    assert cached.shape == (2, prompt_length + new_tokens)
    assert cached.dtype == np.int64
    assert np.array_equal(cached[:, :prompt_length], start)
    assert np.array_equal(cached, uncached)


@pytest.mark.parametrize("prompt_length, new_tokens", [(3, 4), (3, 20), (11, 6)])
def test_tokens_match_torch(prompt_length, new_tokens):
    params = init_parameters(BASE, seed=0, dtype=np.float64)
    start = prompt(prompt_length, seed=1)
    ours = jax_backend.generate(jax_backend.load(params, BASE, dtype="float64"), start, new_tokens, 0.9, 6, seed=4)
    theirs = torch_backend.generate(torch_backend.load(params, BASE, dtype="float64"), start, new_tokens, 0.9, 6, seed=4)
    assert np.array_equal(ours, theirs)


def test_greedy_matches_forward_argmax():
    model = load(dtype="float32")
    start = prompt(4)
    result = jax_backend.generate(model, start, 1, top_k=1, seed=0)
    assert np.array_equal(result[:, -1], jax_backend.forward(model, start)[:, -1].argmax(-1))


# Each case has a vocabulary no other test uses, so that its shapes start with an empty jit cache.
@pytest.mark.parametrize("prompt_length, context_length, vocab_size", [(3, 32, 37), (3, 8, 41), (8, 8, 43)])
def test_traces_at_most_twice(prompt_length, context_length, vocab_size):
    config = BASE.replace(vocab_size=vocab_size, context_length=context_length)
    model = load(config, dtype="float32")
    start = prompt(prompt_length, vocab=vocab_size)

    before = sum(TRACE_COUNTS.values())
    first = jax_backend.generate(model, start, 20, temperature=0.8, top_k=5, seed=0)
    assert 1 <= sum(TRACE_COUNTS.values()) - before <= 2

    traced = sum(TRACE_COUNTS.values())
    again = jax_backend.generate(model, start, 20, temperature=0.8, top_k=5, seed=0)
    other = jax_backend.generate(load(config, dtype="float32", seed=1), start, 20, temperature=1.2, seed=9)
    assert sum(TRACE_COUNTS.values()) == traced
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_zero_new_tokens_returns_prompt():
    start = prompt(3)
    result = jax_backend.generate(load(), start, 0, seed=0)
    assert np.array_equal(result, start)
    assert result.dtype == np.int64


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"top_k": 0}, "top_k must be a positive integer"),
        ({"max_new_tokens": -1}, "max_new_tokens must be a non-negative integer"),
        ({"prompt": np.array([[1, 31]])}, "token id 31 out of range for vocab_size 31"),
        ({"prompt": np.array([[0.5]])}, "prompt must be integer token ids"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    arguments = {"prompt": prompt(2), "max_new_tokens": 3} | kwargs
    with pytest.raises(ValueError, match=message):
        jax_backend.generate(load(), **arguments)


def test_float64_generation_leaves_x64_off():
    model = load(dtype="float64")
    assert not jax.config.jax_enable_x64
    jax_backend.generate(model, prompt(2), 3, seed=0)
    assert not jax.config.jax_enable_x64
