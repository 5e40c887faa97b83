"""Forward and train-step throughput of the JAX backend beside the torch backend, float32 on CPU.

    python benchmarks/jax_vs_torch.py [--rounds 5] [--batch-size 8] [--dropout 0.0]

Both backends load the same canonical init of one model (vocab 512, context 256, d_model
384, 6 heads, 6 layers) and run full-context batches. Compile time is the first call minus
the fastest steady call. The steady timings alternate between the backends round by round,
so load from other processes on the machine affects the two sides alike. The ratio columns use the best rounds and the median rounds.
"""

from __future__ import annotations

import os

# Idle OpenBLAS worker threads spin for 2**value cycles (value clamped to 4..30) before they
# sleep, and OpenBLAS reads the value when numpy loads it, so it is set before that import.
# A short spin keeps them off the cores that XLA and torch use between calls.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402

# Run as a script, Python puts benchmarks/ on the path; the packages live one level up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.backends import get_backend  # noqa: E402
from shared.config import GPTConfig  # noqa: E402
from shared.optim import AdamWConfig  # noqa: E402
from shared.weights import init_parameters  # noqa: E402

CONFIG = GPTConfig(vocab_size=512, context_length=256, d_model=384, num_heads=6, num_layers=6, dropout=0.0)
LEARNING_RATE = 3e-4


@dataclass
class Measurement:
    first_call_s: float
    round_s: list[float]  # one steady call per round

    @property
    def best_s(self) -> float:
        return min(self.round_s)

    @property
    def median_s(self) -> float:
        return statistics.median(self.round_s)

    @property
    def compile_s(self) -> float:
        """First call minus the fastest steady call: tracing and compilation (zero for torch eager)."""
        return max(0.0, self.first_call_s - self.best_s)


def time_call(function: Callable[[], Any]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def run(config: GPTConfig, batch_size: int, rounds: int) -> dict[tuple[str, str], Measurement]:
    """Time forward and train step of both backends; return {(backend, "forward" | "train"): Measurement}."""
    params = init_parameters(config, seed=0)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, config.vocab_size, (batch_size, config.context_length))
    targets = rng.integers(0, config.vocab_size, (batch_size, config.context_length))

    calls: dict[tuple[str, str], Callable[[], Any]] = {}
    for name in ("torch", "jax"):
        backend = get_backend(name)
        forward_model = backend.load(params, config)
        trainer = backend.make_trainer(backend.load(params, config), AdamWConfig(lr=LEARNING_RATE))
        calls[(name, "forward")] = lambda b=backend, m=forward_model: b.forward(m, tokens)
        # step returns the loss as a float, so every timed step has finished on the device.
        calls[(name, "train")] = lambda t=trainer: t.step(tokens, targets, LEARNING_RATE)

    results = {key: Measurement(first_call_s=time_call(call), round_s=[]) for key, call in calls.items()}
    for _ in range(rounds):
        for key, call in calls.items():
            results[key].round_s.append(time_call(call))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="steady calls per backend and task (default 5)")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per batch (default 8)")
    parser.add_argument("--dropout", type=float, default=0.0, help="dropout rate of the model (default 0.0)")
    args = parser.parse_args()
    config = CONFIG.replace(dropout=args.dropout)

    import jax
    import torch

    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )
    print(
        f"vocab {config.vocab_size}, context {config.context_length}, d_model {config.d_model}, "
        f"{config.num_heads} heads, {config.num_layers} layers, dropout {config.dropout}, "
        f"batch {args.batch_size}, float32, best of {args.rounds} rounds"
    )
    results = run(config, args.batch_size, args.rounds)
    tokens_per_call = args.batch_size * config.context_length

    print(f"{'task':<10}{'torch tok/s':>14}{'jax tok/s':>14}{'jax/torch':>11}{'median ratio':>14}{'jax compile s':>15}")
    for task in ("forward", "train"):
        torch_result, jax_result = results[("torch", task)], results[("jax", task)]
        torch_rate = tokens_per_call / torch_result.best_s
        jax_rate = tokens_per_call / jax_result.best_s
        median_ratio = torch_result.median_s / jax_result.median_s
        print(
            f"{task:<10}{torch_rate:>14,.0f}{jax_rate:>14,.0f}{jax_rate / torch_rate:>10.2f}x"
            f"{median_ratio:>13.2f}x{jax_result.compile_s:>15.1f}"
        )


if __name__ == "__main__":
    main()
