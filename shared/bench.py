"""`trigpt bench`: time every backend on one machine and set it against the machine's peak.

Every measurement runs in a Python subprocess of its own: one per backend variant and
config, and one per GEMM path. So the peak RSS of each backend is its own, and no thread
pool outlives its run to slow the next framework down (OpenBLAS workers keep spinning
after each call). The subprocesses run one after another.

Throughput is in tokens per second: B*T tokens per forward or train step, and
gen_batch * new_tokens per generate call. Model FLOPs use the usual transformer estimate:
2 FLOPs per parameter and token for the forward and 4 for the backward, plus the attention
scores and weighted sums. With N parameters, L layers, T tokens per row and C d_model:

    train step   6 * N + 12 * L * T * C   FLOPs per token
    forward      a third of that

Model FLOP utilisation (MFU) divides the achieved FLOP/s by the best float32 GEMM rate that
any framework reached on this machine in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

# The worker subprocesses import this module as __main__; OpenBLAS reads the timeout when
# numpy is first imported (see shared.cli).
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "1")

import numpy as np  # noqa: E402

from shared.config import PRESETS, GPTConfig  # noqa: E402
from shared.errors import UserError  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# The benchmark model: 6 layers of width 384 over a 256-token context and a 512-token
# vocabulary. Dropout is off, so the train step times the model rather than the random masks.
BENCH_CONFIG = GPTConfig(
    vocab_size=512, context_length=256, d_model=384, num_heads=6, num_layers=6, dropout=0.0
)
DEFAULT_CONFIGS = ("tiny", "bench")


@dataclass(frozen=True)
class Variant:
    """A backend plus the runtime options it runs with; each variant is one row of the table."""

    name: str
    backend: str
    description: str
    fused_attention: bool = False
    onednn_linear: bool = False


VARIANTS = {
    variant.name: variant
    for variant in (
        Variant("torch", "torch", "torch eager, explicit attention (the reference)"),
        Variant("torch-sdpa", "torch", "torch eager, F.scaled_dot_product_attention", fused_attention=True),
        Variant("torch-onednn", "torch", "torch eager, linear layers through oneDNN", onednn_linear=True),
        Variant("jax", "jax", "JAX/Flax NNX under jax.jit"),
        Variant("numpy", "numpy", "NumPy with a hand-written backward"),
    )
}
REFERENCE_VARIANT = "torch"
# torch-onednn runs only when asked: on CPUs where MKL already uses AVX-512 it measured no faster.
DEFAULT_VARIANTS = ("torch", "torch-sdpa", "jax", "numpy")

# Ways to run one float32 GEMM, and the framework each needs.
GEMM_PATHS = {
    "numpy": ("numpy", "a @ b through numpy's BLAS"),
    "torch": ("torch", "torch.mm (MKL sgemm in the x86 wheels)"),
    "torch-onednn": ("torch", "oneDNN matmul through torch.ops.mkldnn._linear_pointwise"),
    "jax": ("jax", "jax.jit(a @ b), XLA's CPU GEMM"),
}
# Environment variables that select the OpenBLAS kernel. When the environment sets them, the
# numpy GEMM also runs once more without them, as a separate path.
OPENBLAS_KERNEL_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")

# Environment variables that change how the frameworks use threads and kernels, recorded in the report.
RECORDED_VARIABLES = (
    "OPENBLAS_THREAD_TIMEOUT", "OPENBLAS_NUM_THREADS", *OPENBLAS_KERNEL_VARIABLES,
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "MKL_ENABLE_INSTRUCTIONS", "XLA_FLAGS",
)  # fmt: skip


@dataclass(frozen=True)
class Settings:
    """Sizes and repeat counts of one run."""

    batch_size: int = 8
    repeats: int = 5
    warmup: int = 2
    prompt_length: int = 16
    new_tokens: int = 256
    gen_batch: int = 1
    gen_repeats: int = 3
    gemm_size: int = 2048
    gemm_repeats: int = 10
    min_warmup_s: float = 2.0
    timeout_s: float = 900.0


QUICK_SETTINGS = dict(repeats=2, warmup=1, new_tokens=32, gen_repeats=1, gemm_repeats=5, min_warmup_s=0.5)


@dataclass(frozen=True)
class Target:
    """A goal for one measured quantity of one variant: value >= threshold."""

    description: str
    variant: str
    metric: str
    threshold: float
    unit: str  # "x" for a ratio, "%" for a fraction shown as a percentage


TARGETS = (
    Target("jax train step vs torch eager", "jax", "train_vs_torch", 1.0, "x"),
    Target("jax train-step MFU", "jax", "train_mfu", 0.45, "%"),
    Target("torch train-step MFU", "torch", "train_mfu", 0.40, "%"),
    Target("numpy forward vs torch eager", "numpy", "forward_vs_torch", 0.8, "x"),
    Target("numpy train step vs torch eager", "numpy", "train_vs_torch", 0.5, "x"),
    *(Target(f"{name} generate, KV cache vs none", name, "cache_speedup", 5.0, "x") for name in VARIANTS),
)


# Model FLOPs.


def train_flops_per_token(config: GPTConfig, sequence_length: int) -> float:
    """Estimate the FLOPs of one training token: 6 N for the weights plus 12 L T C for attention."""
    weights = 6 * config.num_parameters()
    attention = 12 * config.num_layers * sequence_length * config.d_model
    return float(weights + attention)


def forward_flops_per_token(config: GPTConfig, sequence_length: int) -> float:
    """Estimate the FLOPs of one forward token: a third of a training token's."""
    return train_flops_per_token(config, sequence_length) / 3


# Measurements, run inside the worker subprocesses.


class CompileClock:
    """Sum of the durations JAX reports for tracing, lowering and compiling, in seconds."""

    def __init__(self) -> None:
        self.seconds = 0.0
        import jax.monitoring

        jax.monitoring.register_event_duration_secs_listener(self._record)

    def _record(self, event: str, duration: float, **kwargs: Any) -> None:
        if event.startswith("/jax/core/compile/"):
            self.seconds += duration


def time_phase(
    call: Callable[[], object],
    tokens: int,
    warmup: int,
    repeats: int,
    min_warmup_s: float,
    clock: CompileClock | None = None,
) -> dict[str, Any]:
    """Time `call`: once cold, then untimed until `warmup` more calls and `min_warmup_s` have
    passed, then `repeats` timed calls.

    The time floor is there because a fresh process runs its first calls several times slower
    while the allocator still maps new memory on each call. On the 2-core VM of this project,
    a tiny-config torch forward took 0.95 s for each of its first 5 calls and 0.06 s after.
    `call` must return only after its work is done. Every backend function returns numpy
    arrays or floats, which waits for JAX's asynchronous dispatch.
    """
    compile_start = clock.seconds if clock else 0.0
    start = time.perf_counter()
    call()
    first_s = time.perf_counter() - start
    warmup_calls = 0
    while warmup_calls < warmup or time.perf_counter() - start < min_warmup_s:
        call()
        warmup_calls += 1
    compile_before_repeats = clock.seconds if clock else 0.0

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)

    median_s = statistics.median(times)
    min_s = min(times)
    result: dict[str, Any] = {
        "tokens": tokens,
        "first_s": first_s,
        "warmup_calls": warmup_calls,
        "times_s": times,
        "median_s": median_s,
        "min_s": min_s,
        "tokens_per_s_median": tokens / median_s,
        "tokens_per_s_best": tokens / min_s,
    }
    if clock is not None:
        result["compile_s"] = compile_before_repeats - compile_start
        # Nonzero means the timed calls traced or compiled again, so their times include it.
        result["compile_during_repeats_s"] = clock.seconds - compile_before_repeats
    return result


def peak_rss_mib() -> float:
    """Return this process's peak resident set size in MiB."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def openblas_core_name() -> str | None:
    """Return the name of the kernel OpenBLAS picked at run time (e.g. SkylakeX), or None.

    numpy's wheels bundle OpenBLAS under a prefixed symbol name; the library is found among
    this process's memory maps, so numpy must already be imported.
    """
    import ctypes

    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "openblas" in line.lower() and "/" in line})
    except OSError:
        return None
    for path in paths:
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol in ("scipy_openblas_get_corename64_", "openblas_get_corename64_", "openblas_get_corename"):
            function = getattr(library, symbol, None)
            if function is not None:
                function.restype = ctypes.c_char_p
                return function().decode()
    return None


def native_output(call: Callable[[], object]) -> str:
    """Run call and return what native code printed to file descriptor 1 meanwhile (MKL and oneDNN verbose lines)."""
    import ctypes

    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 1)
        try:
            call()
        finally:
            libc.fflush(None)  # C stdio buffers output to a file until flushed
            os.dup2(saved, 1)
            os.close(saved)
        capture.seek(0)
        return capture.read().decode(errors="replace")


def torch_gemm_kernel(path: str, call: Callable[[], object]) -> str:
    """Name the library and instruction set that one torch GEMM call runs, from the library's verbose output."""
    import torch

    if path == "torch":
        with torch.backends.mkl.verbose(torch.backends.mkl.VERBOSE_ON):
            text = native_output(call)
        # e.g. "... Intel(R) Advanced Vector Extensions 512 (Intel(R) AVX-512) ..."
        match = re.search(r"\(Intel\(R\) (AVX[\w-]*)\)", text)
        library = "MKL sgemm" if "MKL_VERBOSE" in text else "BLAS (no MKL verbose output)"
    else:
        with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
            text = native_output(call)
        # e.g. "onednn_verbose,v1,primitive,exec,cpu,inner_product,brg_matmul:avx512_core,..."
        match = re.search(r"primitive,exec,cpu,[^,]*,([^,]+),", text)
        library = "oneDNN"
    code_path = match.group(1) if match else "code path unknown"
    return f"{library}, {code_path}, {torch.get_num_threads()} threads"


def gemm_function(path: str, size: int) -> tuple[Callable[[], object], str]:
    """Build a call that multiplies two random float32 (size, size) matrices; return it and the kernel's name."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    framework = GEMM_PATHS[path][0]

    if framework == "numpy":
        return (lambda: a @ b), f"OpenBLAS {openblas_core_name() or 'kernel unknown'}"

    if framework == "torch":
        import torch

        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        if path == "torch":
            call = lambda: torch.mm(ta, tb)  # noqa: E731
        else:
            weight = tb.t().contiguous()  # (N, K): a linear layer's weight, so a @ weight.T == a @ b
            linear = torch.ops.mkldnn._linear_pointwise
            call = lambda: linear(ta, weight, None, "none", [], "")  # noqa: E731
        return call, torch_gemm_kernel(path, call)

    import jax
    import jax.numpy as jnp

    ja, jb = jnp.asarray(a), jnp.asarray(b)
    matmul = jax.jit(lambda x, y: jnp.matmul(x, y, precision=jax.lax.Precision.HIGHEST))
    return (lambda: matmul(ja, jb).block_until_ready()), f"XLA {jax.devices()[0].platform}"


def measure_gemm(path: str, settings: Settings) -> dict[str, Any]:
    """Time one float32 GEMM path and return its GFLOP/s."""
    call, kernel = gemm_function(path, settings.gemm_size)
    flops = 2.0 * settings.gemm_size**3
    timing = time_phase(call, 1, 2, settings.gemm_repeats, settings.min_warmup_s)
    return {
        "kernel": kernel,
        "size": settings.gemm_size,
        "times_s": timing["times_s"],
        "gflops_median": flops / timing["median_s"] / 1e9,
        "gflops_best": flops / timing["min_s"] / 1e9,
        "peak_rss_mib": peak_rss_mib(),
    }


def apply_variant(variant: Variant, model: object) -> None:
    """Switch the runtime options of a variant on a loaded model."""
    if variant.fused_attention:
        model.set_fused_attention(True)
    if variant.onednn_linear:
        model.set_onednn_linear(True)


def measure_backend(variant: Variant, config: GPTConfig, settings: Settings) -> dict[str, Any]:
    """Time forward, train step and generation of one variant on one config."""
    from shared.backends import get_backend
    from shared.optim import AdamWConfig
    from shared.weights import init_parameters

    start = time.perf_counter()
    backend = get_backend(variant.backend)
    import_s = time.perf_counter() - start
    clock = CompileClock() if variant.backend == "jax" else None
    rss_after_import = peak_rss_mib()

    params = init_parameters(config, seed=0, dtype=np.dtype(np.float32))
    model = backend.load(params, config, dtype="float32")
    apply_variant(variant, model)

    rng = np.random.default_rng(0)
    B, T = settings.batch_size, config.context_length
    tokens = rng.integers(0, config.vocab_size, (B, T))
    targets = rng.integers(0, config.vocab_size, (B, T))
    result: dict[str, Any] = {"import_s": import_s, "rss_after_import_mib": rss_after_import}
    if variant.backend == "torch":
        import torch

        result["threads"] = torch.get_num_threads()

    warmup, repeats, min_warmup_s = settings.warmup, settings.repeats, settings.min_warmup_s
    result["forward"] = time_phase(
        lambda: backend.forward(model, tokens), B * T, warmup, repeats, min_warmup_s, clock
    )
    trainer = backend.make_trainer(model, AdamWConfig())
    result["train_step"] = time_phase(
        lambda: trainer.step(tokens, targets, 1e-4), B * T, warmup, repeats, min_warmup_s, clock
    )

    new_tokens = generation_length(config, settings)
    prompt = rng.integers(0, config.vocab_size, (settings.gen_batch, settings.prompt_length))
    for use_cache, key in ((True, "generate_cache"), (False, "generate_no_cache")):
        result[key] = time_phase(
            lambda: backend.generate(model, prompt, new_tokens, seed=0, use_cache=use_cache),
            settings.gen_batch * new_tokens,
            0,  # the cold first call is the warm-up, extended to min_warmup_s
            settings.gen_repeats,
            settings.min_warmup_s,
            clock,
        )
    result["peak_rss_mib"] = peak_rss_mib()
    return result


def generation_length(config: GPTConfig, settings: Settings) -> int:
    """Return how many tokens to generate: new_tokens, cut so that the window never slides.

    Once the window slides, every step rebuilds the cache from the whole window, which would
    time the rebuild rather than the cache.
    """
    return min(settings.new_tokens, config.context_length - settings.prompt_length)


def run_task(task: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement described by a task dict; the worker subprocess calls this."""
    settings = Settings(**task["settings"])
    try:
        if task["kind"] == "gemm":
            return measure_gemm(task["path"], settings)
        config = GPTConfig.from_dict(task["config"])
        return measure_backend(VARIANTS[task["variant"]], config, settings)
    except ImportError as error:
        # A framework or a backend module that is not installed: report it, do not fail the run.
        return {"error": f"{type(error).__name__}: {error}"}


# Orchestration, in the parent process.


def worker_environment(unset: tuple[str, ...] = ()) -> dict[str, str]:
    """Return the environment of a worker: this one, with the OpenBLAS timeout and the project on the path."""
    env = dict(os.environ)
    env.setdefault("OPENBLAS_THREAD_TIMEOUT", "1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    for name in unset:
        env.pop(name, None)
    return env


def cpu_busy_seconds() -> float | None:
    """Return the CPU seconds that all processes have spent busy since boot, summed over CPUs (Linux only)."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    # user nice system idle iowait irq softirq steal; guest time is already inside user.
    ticks = [int(value) for value in fields[1:9]]
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """Return the user plus system CPU seconds of the child processes that have been waited for."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_worker(task: dict[str, Any], timeout_s: float, unset: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run one task in a fresh Python process and return its result, or {"error": ...}.

    The result also gets "other_cpu_share": the fraction of all CPU time that processes other
    than the worker used while it ran. Above a few percent, the worker's times are inflated.
    """
    with tempfile.TemporaryDirectory(prefix="trigpt-bench-") as folder:
        task_path = Path(folder) / "task.json"
        result_path = Path(folder) / "result.json"
        task_path.write_text(json.dumps(task))
        command = [sys.executable, "-m", "shared.bench", "--worker", str(task_path), str(result_path)]
        busy_before, own_before = cpu_busy_seconds(), children_cpu_seconds()
        start = time.perf_counter()
        try:
            process = subprocess.run(
                command, env=worker_environment(unset), capture_output=True, text=True, timeout=timeout_s
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout_s:.0f} s; raise --timeout or use smaller sizes"}
        wall_s = time.perf_counter() - start
        busy_after, own_after = cpu_busy_seconds(), children_cpu_seconds()

        if process.returncode != 0 or not result_path.exists():
            lines = process.stderr.strip().splitlines() or ["no output"]
            return {"error": f"worker failed with exit status {process.returncode}: {lines[-1]}"}
        result = json.loads(result_path.read_text())
        result["wall_s"] = wall_s
        result["other_cpu_share"] = None
        if busy_before is not None and busy_after is not None:
            other = (busy_after - busy_before) - (own_after - own_before)
            result["other_cpu_share"] = max(0.0, other) / (wall_s * (os.cpu_count() or 1))
        return result


def machine_info() -> dict[str, Any]:
    """Describe the CPU, the Python and package versions and the environment that affect speed."""
    cpu_model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for package in ("numpy", "torch", "jax", "jaxlib", "flax", "optax", "matplotlib"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu_model": cpu_model,
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "environment": {name: os.environ.get(name) for name in RECORDED_VARIABLES},
    }


def load_average() -> float | None:
    """Return the 1-minute load average, which shows whether other work shared the CPU."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def measure_gemm_paths(settings: Settings, progress: Callable[[str], None]) -> dict[str, Any]:
    """Time every GEMM path once, each in its own subprocess."""
    runs: list[tuple[str, str, tuple[str, ...]]] = [(path, path, ()) for path in GEMM_PATHS]
    kernel_variables = tuple(name for name in OPENBLAS_KERNEL_VARIABLES if name in os.environ)
    if kernel_variables:
        runs.insert(1, ("numpy-kernel-unset", "numpy", kernel_variables))

    paths: dict[str, Any] = {}
    for label, path, unset in runs:
        progress(f"GEMM {settings.gemm_size}^3 float32: {label}")
        task = {"kind": "gemm", "path": path, "settings": dataclasses.asdict(settings)}
        result = run_worker(task, settings.timeout_s, unset)
        result["description"] = GEMM_PATHS[path][1]
        if unset:
            result["description"] += f", with {' and '.join(unset)} unset"
        paths[label] = result
    return paths


def combine_peaks(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Keep each path's faster round, and name the best path over all of them.

    The GEMMs run before and after the backends, so one busy moment on a shared machine does
    not lower the peak that every MFU is divided by.
    """
    paths: dict[str, Any] = {}
    for label in rounds[0]:
        measured = [paths_round[label] for paths_round in rounds if "error" not in paths_round[label]]
        if not measured:
            paths[label] = rounds[0][label]
            continue
        paths[label] = dict(max(measured, key=lambda result: result["gflops_best"]))
        paths[label]["gflops_best_per_round"] = [result["gflops_best"] for result in measured]

    measured_paths = {label: result for label, result in paths.items() if "error" not in result}
    best = max(measured_paths, key=lambda label: measured_paths[label]["gflops_best"], default=None)
    return {
        "paths": paths,
        "best_path": best,
        "best_gflops": measured_paths[best]["gflops_best"] if best else None,
    }


def summarise_config(
    name: str, config: GPTConfig, settings: Settings, results: dict[str, Any], peak_gflops: float | None
) -> dict[str, Any]:
    """Add MFU, ratios against torch eager and the cache speedup to one config's raw results."""
    T = config.context_length
    train_flops = train_flops_per_token(config, T)
    forward_flops = forward_flops_per_token(config, T)
    reference = results.get(REFERENCE_VARIANT, {})

    derived: dict[str, dict[str, float | None]] = {}
    for variant, result in results.items():
        if "error" in result:
            continue
        values: dict[str, float | None] = {}
        for phase, flops in (("forward", forward_flops), ("train", train_flops)):
            key = "train_step" if phase == "train" else phase
            rate = result[key]["tokens_per_s_median"]
            values[f"{phase}_mfu"] = rate * flops / (peak_gflops * 1e9) if peak_gflops else None
            values[f"{phase}_mfu_best"] = (
                result[key]["tokens_per_s_best"] * flops / (peak_gflops * 1e9) if peak_gflops else None
            )
            values[f"{phase}_vs_torch"] = rate / reference[key]["tokens_per_s_median"] if key in reference else None
        for phase in ("generate_cache", "generate_no_cache"):
            rate = result[phase]["tokens_per_s_median"]
            values[f"{phase}_vs_torch"] = (
                rate / reference[phase]["tokens_per_s_median"] if phase in reference else None
            )
        values["cache_speedup"] = result["generate_no_cache"]["median_s"] / result["generate_cache"]["median_s"]
        derived[variant] = values

    return {
        "name": name,
        "config": config.to_dict(),
        "parameters": config.num_parameters(),
        "batch_size": settings.batch_size,
        "sequence_length": T,
        "train_flops_per_token": train_flops,
        "forward_flops_per_token": forward_flops,
        "train_gflop_per_step": train_flops * settings.batch_size * T / 1e9,
        "generation": {
            "batch": settings.gen_batch,
            "prompt_length": settings.prompt_length,
            "new_tokens": generation_length(config, settings),
        },
        "results": results,
        "derived": derived,
        "targets": evaluate_targets(list(results), derived),
    }


def evaluate_targets(variants: list[str], derived: dict[str, dict[str, float | None]]) -> list[dict[str, Any]]:
    """Check the targets of the variants in this run against the median-based values of one config."""
    checked = []
    for target in TARGETS:
        if target.variant not in variants:
            continue
        value = derived.get(target.variant, {}).get(target.metric)
        checked.append(
            {
                **dataclasses.asdict(target),
                "value": value,
                "met": None if value is None else value >= target.threshold,
            }
        )
    return checked


def run_bench(
    configs: list[tuple[str, GPTConfig]],
    variants: list[str],
    settings: Settings,
    progress: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Measure the GEMM peak, every variant on every config, the peak again, and return the report as a dict."""
    report: dict[str, Any] = {
        "machine": machine_info(),
        "settings": dataclasses.asdict(settings),
        "load_average_start": load_average(),
    }
    started = time.perf_counter()
    peak_rounds = [measure_gemm_paths(settings, progress)]

    raw_results: list[dict[str, Any]] = []
    for name, config in configs:
        results: dict[str, Any] = {}
        for variant in variants:
            progress(f"{name} config: {variant}")
            task = {
                "kind": "backend",
                "variant": variant,
                "config": config.to_dict(),
                "settings": dataclasses.asdict(settings),
            }
            results[variant] = run_worker(task, settings.timeout_s)
        raw_results.append(results)

    peak_rounds.append(measure_gemm_paths(settings, progress))
    report["peak"] = combine_peaks(peak_rounds)
    report["configs"] = [
        summarise_config(name, config, settings, results, report["peak"]["best_gflops"])
        for (name, config), results in zip(configs, raw_results)
    ]
    report["load_average_end"] = load_average()
    report["wall_s"] = time.perf_counter() - started
    return report


# Output: the terminal table, the JSON file and the bar chart.


def format_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def format_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def format_percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def format_seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render_table(headers: list[str], rows: list[list[str]]) -> str:
    """Lay out rows under headers; the first column is left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for row in [headers, *rows]:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def describe_config(summary: dict[str, Any]) -> str:
    config = summary["config"]
    return (
        f"{summary['name']} config: vocab {config['vocab_size']}, context {config['context_length']}, "
        f"d_model {config['d_model']}, {config['num_heads']} heads, {config['num_layers']} layers, "
        f"dropout {config['dropout']}; {summary['parameters'] / 1e6:.2f}M parameters; "
        f"batch {summary['batch_size']} x {summary['sequence_length']} tokens, "
        f"{summary['train_gflop_per_step']:.1f} GFLOP per train step"
    )


def format_peak(peak: dict[str, Any]) -> str:
    rows = []
    for label, result in peak["paths"].items():
        if "error" in result:
            rows.append([label, "-", "-", "-", result["error"]])
            continue
        rounds = " / ".join(f"{value:.0f}" for value in result["gflops_best_per_round"])
        rows.append(
            [
                label,
                f"{result['gflops_median']:.0f}",
                f"{result['gflops_best']:.0f}",
                rounds,
                format_percent(result.get("other_cpu_share")),
                result["kernel"],
            ]
        )
    headers = ["GEMM path", "median GFLOP/s", "best GFLOP/s", "best per round", "other CPU", "kernel"]
    table = render_table(headers, rows)
    if peak["best_gflops"] is None:
        return table + "\nno GEMM path ran, so no MFU can be computed"
    return table + f"\npeak used for MFU: {peak['best_gflops']:.0f} GFLOP/s ({peak['best_path']}, best of its repeats)"


TABLE_HEADERS = [
    "backend",
    "fwd tok/s", "best", "vs torch",
    "train tok/s", "best", "vs torch", "MFU",
    "gen cache", "no cache", "speedup",
    "compile s", "peak RSS MiB", "other CPU",
]  # fmt: skip

# Above this share of the CPU taken by other processes, a measurement gets a warning.
BUSY_MACHINE_SHARE = 0.05


def variant_row(variant: str, result: dict[str, Any], values: dict[str, float | None]) -> list[str]:
    """Format one measured variant as a row under TABLE_HEADERS."""
    compile_s = None
    if "compile_s" in result["train_step"]:
        compile_s = result["forward"]["compile_s"] + result["train_step"]["compile_s"]
    return [
        variant,
        format_rate(result["forward"]["tokens_per_s_median"]),
        format_rate(result["forward"]["tokens_per_s_best"]),
        format_ratio(values["forward_vs_torch"]),
        format_rate(result["train_step"]["tokens_per_s_median"]),
        format_rate(result["train_step"]["tokens_per_s_best"]),
        format_ratio(values["train_vs_torch"]),
        format_percent(values["train_mfu"]),
        format_rate(result["generate_cache"]["tokens_per_s_median"]),
        format_rate(result["generate_no_cache"]["tokens_per_s_median"]),
        format_ratio(values["cache_speedup"]),
        format_seconds(compile_s),
        f"{result['peak_rss_mib']:,.0f}",
        format_percent(result.get("other_cpu_share")),
    ]


def format_config(summary: dict[str, Any]) -> str:
    """Format one config's throughput table and target checks."""
    rows = []
    failures = []
    for variant, result in summary["results"].items():
        if "error" in result:
            failures.append(f"{variant}: not measured: {result['error']}")
        else:
            rows.append(variant_row(variant, result, summary["derived"][variant]))

    generation = summary["generation"]
    legend = (
        "tok/s columns are medians and 'best' the fastest repeat; MFU comes from the median train step; "
        f"generation: batch {generation['batch']}, {generation['prompt_length']}-token prompt, "
        f"{generation['new_tokens']} new tokens; compile s: JAX tracing and compiling of forward and train step; "
        "other CPU: share of the machine's CPU time that other processes used meanwhile"
    )
    lines = [describe_config(summary), render_table(TABLE_HEADERS, rows), *failures, legend]
    lines += ["", format_targets(summary["targets"])]
    return "\n".join(lines)


def format_targets(targets: list[dict[str, Any]]) -> str:
    rows = []
    for target in targets:
        if target["unit"] == "%":
            value, threshold = format_percent(target["value"]), format_percent(target["threshold"])
        else:
            value, threshold = format_ratio(target["value"]), format_ratio(target["threshold"])
        verdict = {True: "met", False: "NOT met", None: "not measured"}[target["met"]]
        rows.append([target["description"], f">= {threshold}", value, verdict])
    return render_table(["target", "goal", "measured", "result"], rows)


def format_report(report: dict[str, Any]) -> str:
    machine = report["machine"]
    versions = ", ".join(f"{name} {version}" for name, version in machine["versions"].items() if version)
    lines = [
        f"machine: {machine['cpu_model']}, {machine['logical_cpus']} logical CPUs; Python {machine['python']}",
        f"versions: {versions}",
        f"1-minute load average: {report['load_average_start']} at start, {report['load_average_end']} at end "
        f"(above the CPU count means other work shared the CPU)",
        "",
        format_peak(report["peak"]),
    ]
    for summary in report["configs"]:
        lines += ["", format_config(summary)]
    busy = busy_measurements(report)
    if busy:
        lines += [
            "",
            f"warning: other processes used more than {100 * BUSY_MACHINE_SHARE:.0f}% of the CPU during "
            f"{', '.join(busy)}; their times are longer than on an idle machine, so rerun those before quoting them",
        ]
    lines += ["", f"total time {report['wall_s']:.0f} s"]
    return "\n".join(lines)


def is_busy(result: dict[str, Any]) -> bool:
    """Say whether other processes used more than BUSY_MACHINE_SHARE of the CPU during a measurement."""
    return (result.get("other_cpu_share") or 0.0) > BUSY_MACHINE_SHARE


def busy_measurements(report: dict[str, Any]) -> list[str]:
    """Name the measurements during which other processes used more than BUSY_MACHINE_SHARE of the CPU."""
    busy = []
    for label, result in report["peak"]["paths"].items():
        if is_busy(result):
            busy.append(f"GEMM {label}")
    for summary in report["configs"]:
        for variant, result in summary["results"].items():
            if is_busy(result):
                busy.append(f"{variant} on {summary['name']}")
    return busy


def plot_report(report: dict[str, Any], path: Path) -> None:
    """Draw throughput relative to torch eager and train-step MFU, one row of panels per config."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summaries = report["configs"]
    figure, axes = plt.subplots(len(summaries), 2, figsize=(11, 3.4 * len(summaries)), squeeze=False)
    metrics = (
        ("forward_vs_torch", "forward"),
        ("train_vs_torch", "train step"),
        ("generate_cache_vs_torch", "generate\nKV cache"),
        ("generate_no_cache_vs_torch", "generate\nno cache"),
    )
    for row, summary in zip(axes, summaries):
        variants = list(summary["derived"])
        width = 0.8 / max(1, len(variants))
        ratio_axis, mfu_axis = row

        # Hatched bars: other processes used more than BUSY_MACHINE_SHARE of the CPU meanwhile.
        hatches = ["//" if is_busy(summary["results"][variant]) else "" for variant in variants]
        for index, variant in enumerate(variants):
            values = [summary["derived"][variant][key] or math.nan for key, _ in metrics]
            positions = [m + (index - (len(variants) - 1) / 2) * width for m in range(len(metrics))]
            ratio_axis.bar(positions, values, width, label=variant, hatch=hatches[index])
        # Ratios spread over more than a decade, so a log axis keeps 0.5x and 2x equally far from 1x.
        ratio_axis.set_yscale("log")
        ratio_axis.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ratio_axis.set_xticks(range(len(metrics)), [label for _, label in metrics])
        ratio_axis.set_ylabel("tokens/s relative to torch eager")
        title = f"{summary['name']} config: throughput (median)"
        if any(hatches):
            title += f"\nhatched: other processes used > {100 * BUSY_MACHINE_SHARE:.0f}% of the CPU"
        ratio_axis.set_title(title, fontsize="medium")
        ratio_axis.legend(fontsize="small")

        mfu = [100 * (summary["derived"][variant]["train_mfu"] or 0.0) for variant in variants]
        mfu_axis.bar(variants, mfu, color=[f"C{i}" for i in range(len(variants))], hatch=hatches)
        for variant, value in zip(variants, mfu):
            mfu_axis.annotate(f"{value:.0f}%", (variant, value), ha="center", va="bottom", fontsize="small")
        for target in TARGETS:
            if target.metric == "train_mfu" and target.variant in variants:
                mfu_axis.axhline(100 * target.threshold, color="grey", linewidth=0.8, linestyle=":")
        mfu_axis.set_ylabel("train-step MFU (%)")
        best = report["peak"]["best_gflops"]
        peak_text = f"{best:.0f} GFLOP/s" if best else "unknown"
        mfu_axis.set_title(f"{summary['name']} config: share of the {peak_text} GEMM peak")

    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


# The command line.


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Return the GPTConfig fields given on the command line."""
    fields = [field.name for field in dataclasses.fields(GPTConfig)]
    return {name: getattr(args, name) for name in fields if getattr(args, name, None) is not None}


def base_config(name: str) -> GPTConfig:
    return BENCH_CONFIG if name == "bench" else GPTConfig.preset(name)


def selected_configs(args: argparse.Namespace) -> list[tuple[str, GPTConfig]]:
    """Return the (name, config) pairs to measure: --preset alone, else --configs, each with the overrides."""
    if args.preset:
        names = [args.preset]
    elif args.configs:
        names = [name.strip() for name in args.configs.split(",") if name.strip()]
    else:
        names = ["tiny"] if args.quick else list(DEFAULT_CONFIGS)
    known = ["bench", *PRESETS]
    for name in names:
        if name not in known:
            raise UserError(f"unknown config {name!r} in --configs; known configs: {', '.join(known)}")
    overrides = config_overrides(args)
    return [(name, base_config(name).replace(**overrides)) for name in names]


def selected_variants(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    for name in names:
        if name not in VARIANTS:
            raise UserError(f"unknown backend {name!r} in --backends; known: {', '.join(VARIANTS)}")
    if not names:
        raise UserError("--backends lists no backend; pass comma-separated names such as torch,jax")
    return names


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Start from the defaults (or the --quick ones) and apply every option that was given."""
    values = dataclasses.asdict(Settings())
    if args.quick:
        values.update(QUICK_SETTINGS)
    for name in values:
        given = getattr(args, name, None)
        if given is not None:
            values[name] = given
    for name in ("batch_size", "repeats", "prompt_length", "new_tokens", "gen_batch", "gen_repeats", "gemm_size"):
        if values[name] < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {values[name]}")
    if values["warmup"] < 0:
        raise UserError(f"--warmup must be at least 0, got {values['warmup']}")
    if values["min_warmup_s"] < 0:
        raise UserError(f"--min-warmup must be at least 0 seconds, got {values['min_warmup_s']}")
    return Settings(**values)


def check_generation_fits(configs: list[tuple[str, GPTConfig]], settings: Settings) -> None:
    for name, config in configs:
        if settings.prompt_length >= config.context_length:
            raise UserError(
                f"--prompt-length {settings.prompt_length} leaves no room to generate in the {name} config's "
                f"context of {config.context_length} tokens; use a shorter prompt"
            )


def run_command(args: argparse.Namespace) -> int:
    configs = selected_configs(args)
    variants = selected_variants(args.backends)
    settings = settings_from_args(args)
    check_generation_fits(configs, settings)
    args.output_dir.mkdir(parents=True, exist_ok=True)

    def progress(message: str) -> None:
        print(f"bench: {message}", file=sys.stderr, flush=True)

    report = run_bench(configs, variants, settings, progress)
    # argv contains the command only when bench ran from the command line, not from main([...]).
    report["command"] = "trigpt " + shlex.join(sys.argv[1:]) if "bench" in sys.argv[1:] else None
    json_path = args.output_dir / "bench.json"
    png_path = args.output_dir / "bench.png"
    json_path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    plot_report(report, png_path)

    print(format_report(report))
    print(f"\nwrote {json_path} and {png_path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from shared.commands import add_config_options

    parser = subparsers.add_parser(
        "bench",
        help="time every backend and compare it with the machine's GEMM peak",
        description=(
            "Time forward, train step and generation of each backend, each in its own subprocess, "
            "and set the model FLOP rate against the best float32 GEMM rate measured in numpy, torch and JAX."
        ),
        # bench redefines --preset from add_config_options: it may also name the bench config.
        conflict_handler="resolve",
    )
    add_config_options(parser)
    parser.add_argument(
        "--preset",
        choices=["bench", *PRESETS],
        default=None,
        help="measure this one config instead of --configs",
    )
    parser.add_argument(
        "--configs",
        default=None,
        help=f"comma-separated configs to measure, among bench and the presets (default: {','.join(DEFAULT_CONFIGS)}; "
        "with --quick: tiny); the config overrides below apply to each",
    )
    parser.add_argument(
        "--backends",
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma-separated variants among {', '.join(VARIANTS)} (default: {','.join(DEFAULT_VARIANTS)})",
    )
    defaults = Settings()
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer repeats, 32 new tokens, and only the tiny config unless --configs or --preset is given",
    )
    parser.add_argument("--batch-size", type=int, help=f"rows per forward and train step (default: {defaults.batch_size})")
    parser.add_argument("--repeats", type=int, help=f"timed calls per measurement (default: {defaults.repeats})")
    parser.add_argument("--warmup", type=int, help=f"untimed calls after the first one (default: {defaults.warmup})")
    parser.add_argument(
        "--min-warmup",
        dest="min_warmup_s",
        type=float,
        help=f"seconds of untimed calls, at least, before each timed series (default: {defaults.min_warmup_s})",
    )
    parser.add_argument("--prompt-length", type=int, help=f"prompt tokens for generation (default: {defaults.prompt_length})")
    parser.add_argument(
        "--new-tokens",
        type=int,
        help=f"tokens to generate, cut to fit the context after the prompt (default: {defaults.new_tokens})",
    )
    parser.add_argument("--gen-batch", type=int, help=f"rows per generate call (default: {defaults.gen_batch})")
    parser.add_argument("--gen-repeats", type=int, help=f"timed generate calls (default: {defaults.gen_repeats})")
    parser.add_argument("--gemm-size", type=int, help=f"side of the square peak GEMM (default: {defaults.gemm_size})")
    parser.add_argument("--timeout", dest="timeout_s", type=float, help="seconds allowed per subprocess (default: 900)")
    parser.add_argument(
        "-o", "--output-dir", type=Path, default=Path("runs/bench"), help="folder for bench.json and bench.png (default: runs/bench)"
    )
    parser.set_defaults(handler=run_command)


def worker_main(argv: list[str]) -> int:
    """Entry point of a worker subprocess: python -m shared.bench --worker TASK.json RESULT.json."""
    if len(argv) != 3 or argv[0] != "--worker":
        print("usage: python -m shared.bench --worker TASK.json RESULT.json", file=sys.stderr)
        return 2
    task = json.loads(Path(argv[1]).read_text())
    result = run_task(task)
    Path(argv[2]).write_text(json.dumps(result, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
