"""Measure tokens per second of the NumPy and torch backends, forward and train step, side by side.

Run from the repository root:  python benchmarks/numpy_vs_torch.py

The config is float32, vocab 512, context 256, d_model 384, 6 heads, 6 layers, batch 8.
The two backends are timed in alternation, so a burst of load from other processes hits
both, and each gets the best and the median of its repeats. The ratios use the best times.
"""

from __future__ import annotations

import os

# OpenBLAS threads spin for 2^28 cycles (about 0.1 s) after each call before they sleep, so
# with numpy and torch in one process, numpy's idle threads would take cores from torch.
# 2^4 cycles makes them sleep at once. It must be set before numpy is first imported.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.backends import get_backend  # noqa: E402
from shared.config import GPTConfig  # noqa: E402
from shared.optim import AdamWConfig  # noqa: E402
from shared.weights import init_parameters  # noqa: E402

BACKENDS = ("numpy", "torch")


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each measurement (default 5)")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per batch (default 8)")
    parser.add_argument("--dropout", type=float, default=0.0, help="dropout rate in the train step (default 0.0)")
    return parser.parse_args()


def main() -> None:
    arguments = parse_arguments()
    config = GPTConfig(
        vocab_size=512, context_length=256, d_model=384, num_heads=6, num_layers=6, dropout=arguments.dropout
    )
    rng = np.random.default_rng(0)
    shape = (arguments.batch_size, config.context_length)
    tokens = rng.integers(0, config.vocab_size, shape)
    targets = rng.integers(0, config.vocab_size, shape)
    tokens_per_batch = tokens.size
    params = init_parameters(config, seed=0, dtype=np.float32)

    jobs = {}
    for name in BACKENDS:
        backend = get_backend(name)
        model = backend.load(params, config, dtype="float32")
        trainer = backend.make_trainer(model, AdamWConfig(), seed=0)
        jobs[(name, "forward")] = lambda backend=backend, model=model: backend.forward(model, tokens)
        jobs[(name, "train step")] = lambda trainer=trainer: trainer.step(tokens, targets, 1e-4)

    for job in jobs.values():  # warm-up: first-call allocation and thread start-up
        job()
    seconds: dict[tuple[str, str], list[float]] = {key: [] for key in jobs}
    for _ in range(arguments.repeats):
        for key, job in jobs.items():
            start = time.perf_counter()
            job()
            seconds[key].append(time.perf_counter() - start)

    print(f"float32, vocab {config.vocab_size}, context {config.context_length}, d_model {config.d_model}, "
          f"{config.num_heads} heads, {config.num_layers} layers, batch {arguments.batch_size}, dropout {config.dropout}; "
          f"{arguments.repeats} repeats, OPENBLAS_THREAD_TIMEOUT={os.environ['OPENBLAS_THREAD_TIMEOUT']}")
    print(f"{'backend':<8} {'measure':<11} {'best tok/s':>11} {'median tok/s':>13}")
    best = {}
    for (name, measure), times in seconds.items():
        best[(name, measure)] = tokens_per_batch / min(times)
        median = tokens_per_batch / statistics.median(times)
        print(f"{name:<8} {measure:<11} {best[(name, measure)]:>11.0f} {median:>13.0f}")
    for measure in ("forward", "train step"):
        ratio = best[("numpy", measure)] / best[("torch", measure)]
        print(f"numpy / torch {measure}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
