"""Batch sharding of the NumPy backend: shards cover the batch, and sharded results equal unsharded ones.

threadpoolctl sets the BLAS thread count, which decides the shard count, so each case runs
with 1, 2 and 3 shards whatever the machine's core count.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from numpy_impl import backend, parallel
from numpy_impl.model import GPTModel, loss_and_grads, model_logits, sharded_logits, sharded_loss_and_grads
from shared.config import GPTConfig
from shared.optim import AdamWConfig
from shared.weights import init_parameters
from tests.tolerances import assert_close

CONFIG = GPTConfig(vocab_size=13, context_length=8, d_model=16, num_heads=2, num_layers=2, dropout=0.0)


def library_threads() -> int:
    """Return the BLAS thread count in force now, as threadpoolctl reads it from the library."""
    return max(info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas")


def make_model(config: GPTConfig = CONFIG, dtype=np.float64) -> GPTModel:
    return backend.load(init_parameters(config, seed=0, dtype=dtype), config, dtype=np.dtype(dtype).name)


def make_batch(batch_size: int = 5, length: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, CONFIG.vocab_size, (batch_size, length))
    targets = rng.integers(0, CONFIG.vocab_size, (batch_size, length))
    return tokens, targets


@pytest.mark.parametrize(
    "batch_size, shards, sizes",
    [(8, 2, [4, 4]), (5, 3, [1, 2, 2]), (1, 4, [1]), (3, 1, [3]), (2, 2, [1, 1])],
)
def test_shard_slices_cover_batch(batch_size, shards, sizes):
    slices = parallel.shard_slices(batch_size, shards)
    assert [s.stop - s.start for s in slices] == sizes
    assert slices[0].start == 0
    assert slices[-1].stop == batch_size
    for before, after in zip(slices, slices[1:]):
        assert before.stop == after.start


def test_shard_slices_reject_zero():
    with pytest.raises(ValueError, match="batch_size and shards must be at least 1, got 0 and 2"):
        parallel.shard_slices(0, 2)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_shard_count_follows_blas_threads(threads):
    with threadpool_limits(threads, user_api="blas"):
        assert parallel.blas_threads() == threads
        assert len(parallel.batch_shards(5)) == threads


def test_run_parallel_uses_worker_threads():
    with threadpool_limits(2, user_api="blas"):
        names = parallel.run_parallel([lambda: threading.current_thread().name] * 2)
        threads_inside = parallel.run_parallel([library_threads] * 2)
        assert library_threads() == 2  # the limit is lifted afterwards
    assert all(name.startswith("trigpt-numpy") for name in names)
    assert threads_inside == [1, 1]


def test_shard_count_ignores_other_calls_limit():
    started, release = threading.Event(), threading.Event()

    def blocker():
        started.set()
        release.wait(timeout=30)

    with threadpool_limits(2, user_api="blas"):
        other = threading.Thread(target=parallel.run_parallel, args=([blocker, blocker],))
        other.start()
        try:
            assert started.wait(timeout=30)
            assert library_threads() == 1  # the other call's limit is in force
            # This thread still gets the count that BLAS has outside that limit.
            assert parallel.blas_threads() == 2
            assert len(parallel.batch_shards(5)) == 2
        finally:
            release.set()
            other.join(timeout=30)
        assert library_threads() == 2


def test_run_parallel_single_call_stays_on_caller():
    with threadpool_limits(2, user_api="blas"):
        [(name, threads)] = parallel.run_parallel([lambda: (threading.current_thread().name, library_threads())])
    assert name == threading.current_thread().name
    assert threads == 2


def test_run_parallel_error_restores_blas_threads():
    def fail():
        raise RuntimeError("shard failed")

    with threadpool_limits(2, user_api="blas"):
        with pytest.raises(RuntimeError, match="shard failed"):
            parallel.run_parallel([fail, library_threads])
        assert library_threads() == 2
        assert parallel.blas_threads() == 2


@pytest.mark.parametrize("threads", [2, 3])
def test_sharded_logits_equal_unsharded(threads):
    model = make_model()
    tokens, _ = make_batch()
    expected = model_logits(model, tokens)
    with threadpool_limits(threads, user_api="blas"):
        actual = sharded_logits(model, tokens)
    # Each sequence's logits do not depend on the others, so only BLAS rounding may differ.
    assert_close(actual, expected, "sharded logits", "float64")


@pytest.mark.parametrize("threads", [2, 3])
def test_sharded_gradients_equal_unsharded(threads):
    model = make_model()
    tokens, targets = make_batch()
    expected_loss, expected_grads = loss_and_grads(model, tokens, targets)
    with threadpool_limits(threads, user_api="blas"):
        loss, grads = sharded_loss_and_grads(model, tokens, targets)
    # The shards' sums of the loss and of each gradient add up in another order.
    assert_close(loss, expected_loss, "sharded loss", "float64")
    assert set(grads) == set(expected_grads)
    for name, grad in expected_grads.items():
        assert_close(grads[name], grad, f"sharded grad {name}", "float64")


def test_sharded_float32_stays_float32():
    model = make_model(dtype=np.float32)
    tokens, targets = make_batch()
    with threadpool_limits(2, user_api="blas"):
        logits = sharded_logits(model, tokens)
        _, grads = sharded_loss_and_grads(model, tokens, targets)
    assert logits.dtype == np.float32
    assert {grad.dtype for grad in grads.values()} == {np.dtype(np.float32)}


def train_losses(seed: int, threads: int, steps: int = 3) -> list[float]:
    config = CONFIG.replace(dropout=0.2)
    model = make_model(config)
    trainer = backend.make_trainer(model, AdamWConfig(), seed=seed)
    tokens, targets = make_batch()
    with threadpool_limits(threads, user_api="blas"):
        return [trainer.step(tokens, targets, 1e-2) for _ in range(steps)]


def test_sharded_dropout_repeats_for_seed():
    assert train_losses(seed=4, threads=2) == train_losses(seed=4, threads=2)
    assert train_losses(seed=4, threads=2) != train_losses(seed=5, threads=2)
