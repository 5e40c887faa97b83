"""Generation in the NumPy backend: the KV cache against full forwards, and the sampler contract."""

from __future__ import annotations

import numpy as np
import pytest

from numpy_impl import backend
from numpy_impl import generate as generation
from numpy_impl.generate import CachedDecoder, uncached_next_logits
from shared.config import GPTConfig
from shared.weights import init_parameters
from tests.tolerances import assert_close

CONFIG = GPTConfig(vocab_size=17, context_length=6, d_model=16, num_heads=2, num_layers=2, dropout=0.0)


def random_model(config: GPTConfig = CONFIG, dtype: str = "float64"):
    params = init_parameters(config, seed=0, dtype=np.float64)
    rng = np.random.default_rng(0)
    # Larger weights than the init make the logits, and so any cache error, clearly visible.
    params = {name: value + rng.normal(0.0, 0.2, value.shape) for name, value in params.items()}
    return backend.load(params, config, dtype=dtype)


@pytest.mark.parametrize("pre_ln", [True, False])
def test_cached_logits_equal_full_forward(pre_ln):
    config = CONFIG.replace(pre_ln=pre_ln, gelu_approximation="none")
    model = random_model(config)
    sequence = np.random.default_rng(1).integers(0, config.vocab_size, (2, 12))
    decoder = CachedDecoder(model)
    # Lengths 2..12 cover the prefill, single-position steps, and the window sliding from length 7 on.
    for length in range(2, 13):
        cached = decoder.next_logits(sequence[:, :length])
        expected = uncached_next_logits(model, sequence[:, :length])
        assert_close(cached, expected, f"logits after {length} tokens", "kv-cache-float64")


def test_cache_runs_one_position_per_token(monkeypatch):
    model = random_model()
    calls = []
    original = generation.forward_cached

    def recording(model, tokens, cache):
        calls.append(tokens.shape[1])
        return original(model, tokens, cache)

    monkeypatch.setattr(generation, "forward_cached", recording)
    backend.generate(model, np.array([[1, 2, 3]]), max_new_tokens=6, seed=0)
    # Prompt of 3, then one position per token until 6 fit; past that the window of 6 is rebuilt.
    assert calls == [3, 1, 1, 1, 6, 6]


@pytest.mark.parametrize("temperature, top_k", [(1.0, None), (0.7, 5), (2.0, 1)])
def test_cached_and_uncached_tokens_identical(temperature, top_k):
    model = random_model()
    prompt = np.array([[3, 1, 4], [1, 5, 9]])
    cached = backend.generate(model, prompt, 10, temperature=temperature, top_k=top_k, seed=7, use_cache=True)
    uncached = backend.generate(model, prompt, 10, temperature=temperature, top_k=top_k, seed=7, use_cache=False)
    np.testing.assert_array_equal(cached, uncached)
    assert cached.shape == (2, 13)
    assert cached.dtype == np.int64
    np.testing.assert_array_equal(cached[:, :3], prompt)


def test_float32_cache_agrees():
    model = random_model(dtype="float32")
    prompt = np.array([[2, 7]])
    cached = backend.generate(model, prompt, 8, seed=3, use_cache=True)
    uncached = backend.generate(model, prompt, 8, seed=3, use_cache=False)
    np.testing.assert_array_equal(cached, uncached)


def test_generate_matches_torch():
    pytest.importorskip("torch")
    from shared.backends import get_backend

    torch_backend = get_backend("torch")
    params = backend.export(random_model())
    reference = torch_backend.load(params, CONFIG, dtype="float64")
    ours = backend.load(params, CONFIG, dtype="float64")
    prompt = np.array([[1, 2], [3, 4]])
    for use_cache in (True, False):
        expected = torch_backend.generate(reference, prompt, 9, temperature=0.9, top_k=8, seed=11, use_cache=use_cache)
        actual = backend.generate(ours, prompt, 9, temperature=0.9, top_k=8, seed=11, use_cache=use_cache)
        np.testing.assert_array_equal(actual, expected)


def test_greedy_takes_argmax():
    model = random_model()
    prompt = np.array([[5, 6, 7]])
    result = backend.generate(model, prompt, 1, top_k=1, seed=0)
    assert result[0, -1] == np.argmax(backend.forward(model, prompt)[0, -1])


def test_same_seed_same_tokens():
    model = random_model()
    prompt = np.array([[1, 2, 3]])
    first = backend.generate(model, prompt, 5, seed=4)
    np.testing.assert_array_equal(first, backend.generate(model, prompt, 5, seed=4))
    assert not np.array_equal(first, backend.generate(model, prompt, 5, seed=5))


def test_zero_new_tokens_returns_prompt():
    model = random_model()
    prompt = np.array([[1, 2, 3]], dtype=np.int32)
    result = backend.generate(model, prompt, 0)
    np.testing.assert_array_equal(result, prompt)
    assert result.dtype == np.int64


def test_prompt_longer_than_context_is_cropped():
    model = random_model()
    prompt = np.random.default_rng(2).integers(0, CONFIG.vocab_size, (1, 9))
    result = backend.generate(model, prompt, 1, top_k=1)
    expected = np.argmax(backend.forward(model, prompt[:, -CONFIG.context_length :])[0, -1])
    assert result[0, -1] == expected
    np.testing.assert_array_equal(result[:, :9], prompt)


def test_generate_restores_training_mode():
    model = random_model()
    model.training = True
    backend.generate(model, np.array([[1]]), 2, seed=0)
    assert model.training is True


def test_generate_rejects_bad_arguments():
    model = random_model()
    prompt = np.array([[1, 2]])
    with pytest.raises(ValueError, match="temperature must be > 0"):
        backend.generate(model, prompt, 2, temperature=0.0)
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        backend.generate(model, prompt, 2, top_k=0)
    with pytest.raises(ValueError, match="max_new_tokens must be a non-negative integer"):
        backend.generate(model, prompt, -1)
    with pytest.raises(ValueError, match="token id 17 out of range"):
        backend.generate(model, np.array([[17]]), 2)
