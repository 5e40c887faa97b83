"""`trigpt compare`: run one checkpoint in several backends and find where they part ways.

Every backend runs the same batch. Each point of the model (the embedding sum, each block's
output, the final LayerNorm, the logits, the loss, each parameter gradient) is compared for
every pair of backends, in model order, against the tolerance table of shared.tolerances.
"""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from shared.backends import BACKENDS, get_backend
from shared.config import GPTConfig
from shared.errors import UserError
from shared.tolerances import measure_difference, tolerance
from shared.weights import atomic_write, load_checkpoint, parameter_shapes


@dataclass(frozen=True)
class PointDifference:
    """One point of the model compared between two backends."""

    point: str
    first: str
    second: str
    max_abs: float
    max_rel: float
    index: tuple[int, ...]
    tolerance_name: str
    rtol: float
    atol: float
    ok: bool


@dataclass
class CompareReport:
    """Every point of every pair, in model order, and the first one out of tolerance."""

    backends: list[str]
    dtype: str
    points: list[str]
    differences: list[PointDifference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(difference.ok for difference in self.differences)

    @property
    def first_divergence(self) -> PointDifference | None:
        return next((difference for difference in self.differences if not difference.ok), None)


def point_tolerance(point: str, dtype: str) -> str:
    """Name the row of the tolerance table that applies to a point in a dtype."""
    if dtype == "float64":
        return "float64"
    return "float32-grad" if point.startswith("grad ") else "float32"


def describe_point(point: str) -> str:
    if point.startswith("blocks."):
        return f"{point} output"
    return point


def run_backend(
    name: str, params: Mapping[str, np.ndarray], config: GPTConfig, dtype: str, tokens: np.ndarray, targets: np.ndarray
) -> dict[str, np.ndarray]:
    """Return every comparison point of one backend, keyed by point name, in model order."""
    backend = get_backend(name)
    model = backend.load(params, config, dtype=dtype)
    values: dict[str, np.ndarray] = dict(backend.activations(model, tokens))
    loss, grads = backend.loss_and_grads(model, tokens, targets)
    values["loss"] = np.asarray(loss)
    for parameter in parameter_shapes(config):
        values[f"grad {parameter}"] = grads[parameter]
    return values


def compare_backends(
    params: Mapping[str, np.ndarray],
    config: GPTConfig,
    backends: list[str],
    dtype: str,
    tokens: np.ndarray,
    targets: np.ndarray,
    perturbation: tuple[str, str, float] | None = None,
) -> CompareReport:
    """Compare every point of the model between every pair of backends.

    perturbation (backend, tensor, size) adds seeded noise of that size to one tensor in one
    backend only: a self-check that shows the report finds a known divergence.
    """
    results = {}
    for name in backends:
        loaded = dict(params)
        if perturbation is not None and perturbation[0] == name:
            _, tensor, size = perturbation
            noise = np.random.default_rng(0).standard_normal(loaded[tensor].shape) * size
            loaded[tensor] = (loaded[tensor] + noise).astype(loaded[tensor].dtype)
        results[name] = run_backend(name, loaded, config, dtype, tokens, targets)
    points = list(results[backends[0]])
    report = CompareReport(backends=list(backends), dtype=dtype, points=points)
    for point in points:
        tolerance_name = point_tolerance(point, dtype)
        rtol, atol = tolerance(tolerance_name)
        for first, second in itertools.combinations(backends, 2):
            difference = measure_difference(results[second][point], results[first][point])
            report.differences.append(
                PointDifference(
                    point=point,
                    first=first,
                    second=second,
                    max_abs=difference.max_abs,
                    max_rel=difference.max_rel,
                    index=difference.index,
                    tolerance_name=tolerance_name,
                    rtol=rtol,
                    atol=atol,
                    ok=difference.within(rtol, atol),
                )
            )
    return report


def format_report(report: CompareReport) -> str:
    """Render the report as a table: one row per point, one column per pair (max abs / max rel)."""
    pairs = list(itertools.combinations(report.backends, 2))
    by_key = {(d.point, d.first, d.second): d for d in report.differences}
    point_width = max(len(describe_point(point)) for point in report.points) + 2
    cell_width = 24
    header = "point".ljust(point_width) + "".join(f"{a} vs {b}".ljust(cell_width) for a, b in pairs) + "tolerance"
    lines = [header, "-" * len(header)]
    for point in report.points:
        cells = []
        for first, second in pairs:
            difference = by_key[(point, first, second)]
            mark = "" if difference.ok else " !"
            cells.append(f"{difference.max_abs:.1e} / {difference.max_rel:.1e}{mark}".ljust(cell_width))
        tolerance_name = point_tolerance(point, report.dtype)
        rtol, atol = tolerance(tolerance_name)
        lines.append(describe_point(point).ljust(point_width) + "".join(cells) + f"{tolerance_name} (rtol {rtol:g})")
    lines.append("")
    lines.append("cells: max abs diff / max rel diff (relative to the first backend's max |value|); ! = out of tolerance")
    divergence = report.first_divergence
    if divergence is None:
        lines.append(f"all {len(report.differences)} comparisons within tolerance")
    else:
        failed = sum(not d.ok for d in report.differences)
        lines.append(
            f"first divergence: {describe_point(divergence.point)}, {divergence.first} vs {divergence.second} "
            f"(max rel diff {divergence.max_rel:.2e} > rtol {divergence.rtol:g}); "
            f"{failed} of {len(report.differences)} comparisons out of tolerance"
        )
    return "\n".join(lines)


def report_to_json(report: CompareReport, settings: dict) -> str:
    divergence = report.first_divergence
    data = {
        **settings,
        "backends": report.backends,
        "dtype": report.dtype,
        "ok": report.ok,
        "first_divergence": None if divergence is None else asdict(divergence),
        "differences": [asdict(difference) for difference in report.differences],
    }
    return json.dumps(data, indent=2)


def parse_backends(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in BACKENDS]
    if unknown:
        raise UserError(f"--backends: unknown backend(s) {', '.join(unknown)}; known backends: {', '.join(BACKENDS)}")
    if len(names) < 2 or len(set(names)) != len(names):
        raise UserError(f"--backends needs at least two different backends, got {text!r}")
    return names


def parse_perturbation(text: str | None, backends: list[str], config: GPTConfig) -> tuple[str, str, float] | None:
    if text is None:
        return None
    try:
        backend, tensor, size = text.split(":")
        size_value = float(size)
    except ValueError:
        raise UserError(f"--perturb {text!r} must read BACKEND:TENSOR:SIZE, e.g. numpy:blocks.1.attn.qkv.weight:1e-3") from None
    if backend not in backends:
        raise UserError(f"--perturb names backend {backend!r}, which is not among --backends {', '.join(backends)}")
    if tensor not in parameter_shapes(config):
        raise UserError(f"--perturb names tensor {tensor!r}, which this checkpoint does not have; see `trigpt info`")
    return backend, tensor, size_value


def run_compare(args: argparse.Namespace) -> int:
    params, config = load_checkpoint(args.checkpoint)
    backends = parse_backends(args.backends)
    seq_len = min(config.context_length, 32) if args.seq_len is None else args.seq_len
    if not 1 <= seq_len <= config.context_length:
        raise UserError(f"--seq-len {seq_len} must be between 1 and the context length {config.context_length}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size} must be at least 1")
    perturbation = parse_perturbation(args.perturb, backends, config)
    if args.json is not None and not (args.json.parent if str(args.json.parent) else Path(".")).is_dir():
        raise UserError(f"--json {args.json}: folder {args.json.parent} does not exist; create it first")
    rng = np.random.default_rng(args.seed)
    tokens = rng.integers(0, config.vocab_size, (args.batch_size, seq_len))
    targets = rng.integers(0, config.vocab_size, (args.batch_size, seq_len))
    report = compare_backends(params, config, backends, args.dtype, tokens, targets, perturbation)
    print(f"checkpoint {args.checkpoint}, {args.dtype}, batch {args.batch_size} x {seq_len}, seed {args.seed}")
    print(format_report(report))
    if args.json is not None:
        settings = {
            "checkpoint": str(args.checkpoint),
            "batch_size": args.batch_size,
            "seq_len": seq_len,
            "seed": args.seed,
            "perturb": args.perturb,
        }
        text = report_to_json(report, settings)
        atomic_write(args.json, lambda file: file.write(text.encode("utf-8")))
    return 0 if report.ok else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="run one checkpoint in several backends and report where they differ",
        description="Exit status 0 when every point is within tolerance, 1 when not.",
    )
    parser.add_argument("checkpoint", type=Path, help="trigpt .safetensors checkpoint")
    parser.add_argument("--backends", default="torch,jax,numpy", help="comma-separated backends (default: torch,jax,numpy)")
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"], help="compute dtype (default: float64)")
    parser.add_argument("--batch-size", type=int, default=2, help="sequences in the batch (default: 2)")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: min(context, 32))")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random tokens and targets (default: 0)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers to this JSON file")
    parser.add_argument(
        "--perturb",
        default=None,
        metavar="BACKEND:TENSOR:SIZE",
        help="add seeded noise of SIZE to one tensor in one backend, to check that the report catches it",
    )
    parser.set_defaults(handler=run_compare)
