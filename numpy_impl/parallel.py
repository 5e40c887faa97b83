"""Run the NumPy model on shards of the batch, one thread per shard, so all cores do all the work.

NumPy runs its elementwise loops (softmax, GELU, LayerNorm, residual adds) on one thread,
and only its BLAS calls use more. So the backend splits the batch into as many shards as
BLAS has threads, runs each shard in a worker thread with BLAS limited to one thread, and
joins the results. NumPy releases the GIL inside ufunc loops and BLAS calls, so the
workers run in parallel. For the benchmark config (float32, d_model 384, 6 layers, batch 8)
on a 2-core Xeon this took the forward pass from 352 ms to 254 ms.

The shard count follows the BLAS thread count that threadpoolctl reads, so it follows
OPENBLAS_NUM_THREADS or OMP_NUM_THREADS, and a threadpoolctl limit set by the caller.
With one thread, or a batch of one sequence, the work runs on the calling thread as before.

Each sequence's forward does not depend on the others, so sharded logits equal unsharded
ones up to BLAS rounding (bit for bit with OpenBLAS 0.3.31). Gradients of the parameters
are summed over the shards, which changes float32 rounding with the shard count.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Callable, Sequence, TypeVar

import numpy as np
from threadpoolctl import ThreadpoolController

Result = TypeVar("Result")

# One sharded call runs at a time, because the BLAS limit is process-wide.
_lock = threading.Lock()
# Guards the BLAS limit together with _threads_outside_limit, the thread count that BLAS had
# before run_parallel limited it. While a sharded call runs, another thread that requests
# the shard count gets that count, not the temporary 1, so its shards and its dropout
# streams do not depend on the timing of the other call.
_limit_lock = threading.Lock()
_threads_outside_limit: int | None = None
_controller: ThreadpoolController | None = None
_executor: ThreadPoolExecutor | None = None
_executor_workers = 0


def _blas():
    """Return threadpoolctl's controller of the BLAS libraries loaded in this process."""
    global _controller
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller.select(user_api="blas")


def _library_threads() -> int:
    return max((library.num_threads for library in _blas().lib_controllers), default=1)


def blas_threads() -> int:
    """Return the BLAS thread count outside run_parallel's own limit: 1 when threadpoolctl finds no BLAS library."""
    with _limit_lock:
        if _threads_outside_limit is not None:
            return _threads_outside_limit
        return _library_threads()


def shard_slices(batch_size: int, shards: int) -> list[slice]:
    """Split range(batch_size) into min(shards, batch_size) consecutive slices whose sizes differ by at most 1."""
    if batch_size < 1 or shards < 1:
        raise ValueError(f"batch_size and shards must be at least 1, got {batch_size} and {shards}")
    count = min(shards, batch_size)
    bounds = [batch_size * i // count for i in range(count + 1)]
    return [slice(bounds[i], bounds[i + 1]) for i in range(count)]


def batch_shards(batch_size: int) -> list[slice]:
    """Split range(batch_size) into one consecutive slice per BLAS thread, at most one per sequence."""
    return shard_slices(batch_size, blas_threads())


def run_parallel(calls: Sequence[Callable[[], Result]]) -> list[Result]:
    """Run each call on its own worker thread, with BLAS limited to one thread, and return the results in order.

    A single call runs on the calling thread with BLAS left as it is.
    """
    global _executor, _executor_workers, _threads_outside_limit
    if len(calls) == 1:
        return [calls[0]()]
    with _lock:
        if _executor_workers < len(calls):
            if _executor is not None:
                _executor.shutdown()
            _executor = ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="trigpt-numpy")
            _executor_workers = len(calls)
        with _limit_lock:
            _threads_outside_limit = _library_threads()
            limiter = _blas().limit(limits=1)
        try:
            futures = [_executor.submit(call) for call in calls]
            wait(futures)  # every worker finishes before the BLAS limit is lifted, even when one raised
            return [future.result() for future in futures]
        finally:
            with _limit_lock:
                limiter.restore_original_limits()
                _threads_outside_limit = None


def concatenate_shards(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Return the one part, or the parts joined along the batch axis."""
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts, axis=0)
