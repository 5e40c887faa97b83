"""Measure tokens per second of the NumPy and torch backends, forward and train step, side by side.

Run from the repository root:  python benchmarks/numpy_vs_torch.py

The config is float32, vocab 512, context 256, d_model 384, 6 heads, 6 layers, batch 8.
The two backends are timed in alternation, so a burst of load from other processes hits
both, and each reports the best and the median of its repeats. The ratios use the best
times. The CPU column is the process CPU time of the best run. With --threads 1 that is the
work itself, which other load on the machine changes far less than the wall time, so on a
shared machine the CPU ratio of a --threads 1 run is the steadier figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each measurement (default 5)")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per batch (default 8)")
    parser.add_argument("--dropout", type=float, default=0.0, help="dropout rate in the train step (default 0.0)")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="threads for OpenBLAS and torch (default: each library's own choice, 2 on a 2-core machine)",
    )
    return parser.parse_args()


ARGUMENTS = parse_arguments()

# After each call, OpenBLAS worker threads spin for 2^OPENBLAS_THREAD_TIMEOUT TSC cycles before
# they sleep (driver/others/blas_server.c: default 28, about 0.1 s at 2.6 GHz, clamped to
# 4..30). In a process that also runs torch, the spinning threads take cores from torch's
# threads, so the benchmark uses the minimum. OpenBLAS reads both variables when numpy is
# first imported.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
if ARGUMENTS.threads is not None:
    os.environ["OPENBLAS_NUM_THREADS"] = str(ARGUMENTS.threads)

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.backends import get_backend  # noqa: E402
from shared.config import GPTConfig  # noqa: E402
from shared.optim import AdamWConfig  # noqa: E402
from shared.weights import init_parameters  # noqa: E402

BACKENDS = ("numpy", "torch")
MEASURES = ("forward", "train step")


def main() -> None:
    if ARGUMENTS.threads is not None:
        torch.set_num_threads(ARGUMENTS.threads)
    config = GPTConfig(
        vocab_size=512, context_length=256, d_model=384, num_heads=6, num_layers=6, dropout=ARGUMENTS.dropout
    )
    rng = np.random.default_rng(0)
    shape = (ARGUMENTS.batch_size, config.context_length)
    tokens = rng.integers(0, config.vocab_size, shape)
    targets = rng.integers(0, config.vocab_size, shape)
    params = init_parameters(config, seed=0, dtype=np.float32)

    jobs = {}
    for name in BACKENDS:
        backend = get_backend(name)
        model = backend.load(params, config, dtype="float32")
        trainer = backend.make_trainer(model, AdamWConfig(), seed=0)
        jobs[(name, "forward")] = lambda backend=backend, model=model: backend.forward(model, tokens)
        jobs[(name, "train step")] = lambda trainer=trainer: trainer.step(tokens, targets, 1e-4)

    for job in jobs.values():  # warm-up: first-call allocations and thread start-up
        job()
    wall: dict[tuple[str, str], list[float]] = {key: [] for key in jobs}
    cpu: dict[tuple[str, str], list[float]] = {key: [] for key in jobs}
    for _ in range(ARGUMENTS.repeats):
        for key, job in jobs.items():
            start_cpu, start_wall = time.process_time(), time.perf_counter()
            job()
            wall[key].append(time.perf_counter() - start_wall)
            cpu[key].append(time.process_time() - start_cpu)

    threads = "library default" if ARGUMENTS.threads is None else str(ARGUMENTS.threads)
    print(
        f"float32, vocab {config.vocab_size}, context {config.context_length}, d_model {config.d_model}, "
        f"{config.num_heads} heads, {config.num_layers} layers, batch {ARGUMENTS.batch_size}, "
        f"dropout {config.dropout}; {ARGUMENTS.repeats} repeats; threads {threads}; "
        f"OPENBLAS_THREAD_TIMEOUT={os.environ['OPENBLAS_THREAD_TIMEOUT']}; load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'backend':<8} {'measure':<11} {'best tok/s':>11} {'median tok/s':>13} {'CPU s (best run)':>17}")
    best_tokens_per_second, best_cpu = {}, {}
    for key in jobs:
        name, measure = key
        fastest = int(np.argmin(wall[key]))
        best_tokens_per_second[key] = tokens.size / wall[key][fastest]
        best_cpu[key] = cpu[key][fastest]
        median = tokens.size / statistics.median(wall[key])
        print(f"{name:<8} {measure:<11} {best_tokens_per_second[key]:>11.0f} {median:>13.0f} {best_cpu[key]:>17.3f}")
    for measure in MEASURES:
        ratio = best_tokens_per_second[("numpy", measure)] / best_tokens_per_second[("torch", measure)]
        cpu_ratio = best_cpu[("torch", measure)] / best_cpu[("numpy", measure)]
        print(f"numpy / torch {measure}: {ratio:.2f}x by wall time, {cpu_ratio:.2f}x by CPU time")


if __name__ == "__main__":
    main()
