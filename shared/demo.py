"""`trigpt demo`: one training run carried across PyTorch, JAX and NumPy, then checked in all three.

The demo trains a small byte-level model on the default corpus (shared.data). The first
third of the steps runs in torch, the second in JAX and the last in NumPy. Each segment
resumes from the checkpoint the previous one wrote, so the schedule and the batches are
those of one uninterrupted run. The demo then loads the final checkpoint into every
backend, compares validation losses and logits, continues a prompt in each backend with
the shared sampler, and draws the loss curve into loss.png.

The demo is also a check. It returns exit status 1 when the validation loss is not below
the unigram baseline, when two backends' float64 logits or float32 validation losses
differ beyond their rows of shared.tolerances, or when two backends continue the prompt
differently.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from shared.backends import get_backend
from shared.config import GPTConfig
from shared.data import Corpus, load_corpus, unigram_baseline_loss, validation_batches, validation_loss
from shared.errors import UserError
from shared.tokenizer import Tokenizer, checkpoint_tokenizer
from shared.tolerances import measure_difference, tolerance
from shared.train import CHECKPOINT_NAME, METRICS_NAME, TrainSettings, train
from shared.weights import Checkpoint, load_checkpoint_full

# The order in which the run moves across frameworks: one third of the steps each.
SEGMENT_BACKENDS = ("torch", "jax", "numpy")
REPORT_NAME = "demo.json"
PLOT_NAME = "loss.png"
DEFAULT_PROMPT = "The meaning of "
SAMPLE_TEMPERATURE = 0.8
SAMPLE_TOP_K = 40
FORWARD_REPEATS = 5
# The logits are checked in float64, where the backends agree to about 1e-13. In float32 the
# rounding of the trained model's logits came within 1.3x of the float32 row (7.3e-5 against
# an allowed 9.6e-5 with --seed 1), so a float32 check would fail on rounding alone.
LOGITS_TOLERANCE_ROW = "float64"
VAL_LOSS_TOLERANCE_ROW = "float32"  # the demo trains and evaluates in float32
BACKEND_COLORS = {"torch": "tab:red", "jax": "tab:blue", "numpy": "tab:green"}


@dataclass(frozen=True)
class DemoPlan:
    """Model, training settings and continuation length of one demo size."""

    config: GPTConfig
    settings: TrainSettings
    max_new_tokens: int


# The full demo: about 0.8M parameters. Context 64 instead of the tiny preset's 128 halves
# the attention cost per token, and 64 bytes are enough context to spell words.
# NOTE: sized to finish in under 3 minutes on an idle 2-core x86 CPU, an estimate that no
# idle run has confirmed. On a 2-core machine shared with other jobs, the demo took 135-230 s
# at a load average of 2.5-4 and up to 420 s at 5-8.
FULL_PLAN = DemoPlan(
    config=GPTConfig(vocab_size=256, context_length=64, d_model=128, num_heads=4, num_layers=4, dropout=0.0),
    settings=TrainSettings(steps=600, batch_size=32, lr=3e-3, eval_interval=50, eval_batches=8, checkpoint_interval=0),
    max_new_tokens=100,
)

# The --quick demo for tests: all four parts of the full demo on a model so small that JAX
# compilation takes most of the time.
QUICK_PLAN = DemoPlan(
    config=GPTConfig(vocab_size=256, context_length=32, d_model=32, num_heads=2, num_layers=2, dropout=0.0),
    settings=TrainSettings(steps=30, batch_size=8, lr=1e-2, eval_interval=5, eval_batches=2, checkpoint_interval=0),
    max_new_tokens=30,
)


@dataclass
class Segment:
    """One backend's share of the run."""

    backend: str
    start_step: int
    end_step: int
    seconds: float  # wall time of the whole train() call, including JAX compilation and evaluation
    tokens_per_s: float  # median over the segment's updates
    train_loss: float  # of the segment's last step
    val_loss: float  # after the segment's last step


@dataclass
class BackendRow:
    """The final checkpoint loaded into one backend."""

    backend: str
    val_loss: float
    forward_ms: float  # median of FORWARD_REPEATS forward passes over one validation batch


@dataclass
class PairRow:
    """Two backends compared on the final checkpoint."""

    first: str
    second: str
    logit_diff_float32: float  # max |logit difference| over one validation batch, shown only
    logit_diff_float64: float  # the same in float64, checked
    allowed_logit_diff_float64: float  # the LOGITS_TOLERANCE_ROW bound for that batch
    val_loss_diff: float  # float32, checked
    allowed_val_loss_diff: float  # the VAL_LOSS_TOLERANCE_ROW bound

    @property
    def ok(self) -> bool:
        logits_ok = self.logit_diff_float64 <= self.allowed_logit_diff_float64
        return logits_ok and self.val_loss_diff <= self.allowed_val_loss_diff


@dataclass
class Continuation:
    """One decoding mode applied to the prompt in every backend."""

    mode: str  # "greedy" or "sampled"
    texts: dict[str, str]  # backend -> prompt plus continuation
    identical: bool


@dataclass
class DemoReport:
    """Everything the demo measured, as stored in demo.json."""

    out_dir: str
    prompt: str
    config: dict[str, Any]
    settings: dict[str, Any]
    baseline_loss: float
    segments: list[Segment] = field(default_factory=list)
    backends: list[BackendRow] = field(default_factory=list)
    pairs: list[PairRow] = field(default_factory=list)
    continuations: list[Continuation] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> str:
        data = asdict(self)
        data["passed"] = self.passed
        for pair, row in zip(data["pairs"], self.pairs):
            pair["ok"] = row.ok
        return json.dumps(data, indent=2, ensure_ascii=False)


# Part 1: training, one segment per backend.


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Return the records of a metrics.jsonl file, one dict per step."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def segment_boundaries(steps: int) -> list[int]:
    """Return the step after which each backend stops: one third of the steps each, rounded."""
    if steps < len(SEGMENT_BACKENDS):
        raise UserError(f"--steps {steps} is invalid: the demo needs at least {len(SEGMENT_BACKENDS)} steps, one per backend")
    return [round(steps * (i + 1) / len(SEGMENT_BACKENDS)) for i in range(len(SEGMENT_BACKENDS))]


def train_segments(
    plan: DemoPlan, out_dir: Path, corpus: Corpus, echo: Callable[[str], None], progress: bool
) -> list[Segment]:
    """Train plan's run in torch, then JAX, then NumPy, each resuming from the previous checkpoint."""
    segments = []
    tokens_per_step = plan.settings.batch_size * plan.config.context_length
    checkpoint = None
    start_step = 0
    echo(f"{'backend':<8} {'steps':>11} {'time':>8} {'tok/s':>8} {'train loss':>11} {'val loss':>9}")
    for backend_name, stop_step in zip(SEGMENT_BACKENDS, segment_boundaries(plan.settings.steps)):
        started = time.perf_counter()
        result = train(
            backend_name,
            plan.settings,
            out_dir,
            config=plan.config if checkpoint is None else None,
            resume=checkpoint,
            corpus=corpus,
            stop_at=stop_step,
            progress=progress,
            overwrite=checkpoint is None,
        )
        seconds = time.perf_counter() - started
        records = read_metrics(result.metrics_path)
        step_speeds = [r["tokens_per_s"] for r in records if start_step < r["step"] and r["tokens_per_s"] is not None]
        segment = Segment(
            backend=backend_name,
            start_step=start_step,
            end_step=result.end_step,
            seconds=seconds,
            tokens_per_s=statistics.median(step_speeds) if step_speeds else float("nan"),
            train_loss=result.losses[-1],
            val_loss=result.val_losses[result.end_step],
        )
        segments.append(segment)
        steps = f"{segment.start_step}-{segment.end_step}"
        echo(
            f"{backend_name:<8} {steps:>11} {seconds:>6.1f} s {segment.tokens_per_s:>8,.0f} "
            f"{segment.train_loss:>11.4f} {segment.val_loss:>9.4f}"
        )
        checkpoint = result.checkpoint_path
        start_step = result.end_step
    echo(f"  (tok/s: median over the segment's updates of {tokens_per_step:,} tokens; time includes start-up,")
    echo("   JAX compilation, validation and the checkpoint write)")
    return segments


# Part 2: the final checkpoint in every backend.


def compare_final_checkpoint(
    checkpoint: Checkpoint, corpus: Corpus, plan: DemoPlan
) -> tuple[list[BackendRow], list[PairRow], dict[str, Any]]:
    """Load the checkpoint into every backend and return per-backend rows, per-pair rows and the float32 models.

    Validation loss runs in float32 over the same batches as during training. The logits
    compared are those of the first validation batch, in float32 and in float64.
    """
    batches = validation_batches(
        corpus.validation, plan.settings.batch_size, checkpoint.config.context_length, plan.settings.eval_batches
    )
    inputs = batches[0][0]
    models: dict[str, Any] = {}
    logits: dict[str, np.ndarray] = {}
    logits_float64: dict[str, np.ndarray] = {}
    rows = []
    for backend_name in SEGMENT_BACKENDS:
        backend = get_backend(backend_name)
        model = backend.load(checkpoint.params, checkpoint.config, dtype="float32")
        # validation_loss also runs the first forward pass, which compiles the JAX model.
        loss = validation_loss(backend, model, batches)
        timings = []
        for _ in range(FORWARD_REPEATS):
            started = time.perf_counter()
            logits[backend_name] = backend.forward(model, inputs)
            timings.append(time.perf_counter() - started)
        models[backend_name] = model
        rows.append(BackendRow(backend=backend_name, val_loss=loss, forward_ms=1000 * statistics.median(timings)))
        model_float64 = backend.load(checkpoint.params, checkpoint.config, dtype="float64")
        logits_float64[backend_name] = backend.forward(model_float64, inputs)

    logits_rtol, logits_atol = tolerance(LOGITS_TOLERANCE_ROW)
    loss_rtol, loss_atol = tolerance(VAL_LOSS_TOLERANCE_ROW)
    val_losses = {row.backend: row.val_loss for row in rows}
    pairs = []
    for first, second in itertools.combinations(SEGMENT_BACKENDS, 2):
        difference_float64 = measure_difference(logits_float64[second], logits_float64[first])
        loss_difference = measure_difference(val_losses[second], val_losses[first])
        pairs.append(
            PairRow(
                first=first,
                second=second,
                logit_diff_float32=measure_difference(logits[second], logits[first]).max_abs,
                logit_diff_float64=difference_float64.max_abs,
                allowed_logit_diff_float64=logits_rtol * difference_float64.scale + logits_atol,
                val_loss_diff=loss_difference.max_abs,
                allowed_val_loss_diff=loss_rtol * loss_difference.scale + loss_atol,
            )
        )
    return rows, pairs, models


def print_comparison(rows: list[BackendRow], pairs: list[PairRow], plan: DemoPlan, echo: Callable[[str], None]) -> None:
    batch = f"{plan.settings.batch_size} x {plan.config.context_length}"
    echo(f"{'backend':<8} {'val loss':>9} {'forward ms':>11}   (forward: one batch of {batch} tokens, median of {FORWARD_REPEATS})")
    for row in rows:
        echo(f"{row.backend:<8} {row.val_loss:>9.4f} {row.forward_ms:>11.1f}")
    echo("")
    echo("max |difference|   logits float32   logits float64   allowed   val loss   allowed")
    for pair in pairs:
        mark = "ok" if pair.ok else "OUT OF TOLERANCE"
        echo(
            f"{pair.first + ' vs ' + pair.second:<16} {pair.logit_diff_float32:>16.2e} {pair.logit_diff_float64:>16.2e} "
            f"{pair.allowed_logit_diff_float64:>9.1e} {pair.val_loss_diff:>10.2e} {pair.allowed_val_loss_diff:>9.1e}  {mark}"
        )
    logits_rtol, _ = tolerance(LOGITS_TOLERANCE_ROW)
    loss_rtol, _ = tolerance(VAL_LOSS_TOLERANCE_ROW)
    echo("  (float32 logits differ by rounding and are not checked. Allowed: the largest |value| times the")
    echo(
        f"   rtol of shared.tolerances' {LOGITS_TOLERANCE_ROW} row ({logits_rtol:g}) for logits and "
        f"{VAL_LOSS_TOLERANCE_ROW} row ({loss_rtol:g}) for val loss)"
    )


# Part 3: continuations.


def continue_prompt(
    models: dict[str, Any], tokenizer: Tokenizer, prompt: str, max_new_tokens: int, seed: int
) -> list[Continuation]:
    """Continue the prompt greedily and by seeded sampling in every backend."""
    prompt_ids = np.array([tokenizer.encode(prompt)], dtype=np.int64)  # (1, T)
    modes = {
        # top_k 1 keeps only the most likely token, so the sampler decodes greedily.
        "greedy": dict(temperature=1.0, top_k=1),
        "sampled": dict(temperature=SAMPLE_TEMPERATURE, top_k=SAMPLE_TOP_K),
    }
    continuations = []
    for mode, sampling in modes.items():
        tokens = {}
        for backend_name, model in models.items():
            generated = get_backend(backend_name).generate(model, prompt_ids, max_new_tokens, seed=seed, **sampling)
            tokens[backend_name] = generated[0]
        reference = tokens[SEGMENT_BACKENDS[0]]
        identical = all(np.array_equal(reference, other) for other in tokens.values())
        # Sampled bytes need not form valid UTF-8, so invalid sequences decode to U+FFFD.
        texts = {name: tokenizer.decode(ids, errors="replace") for name, ids in tokens.items()}
        continuations.append(Continuation(mode=mode, texts=texts, identical=identical))
    return continuations


def print_continuations(continuations: list[Continuation], echo: Callable[[str], None]) -> None:
    backends = ", ".join(SEGMENT_BACKENDS)
    for continuation in continuations:
        if continuation.identical:
            echo(f"{continuation.mode}: identical in {backends}")
            echo(f"  {json.dumps(continuation.texts[SEGMENT_BACKENDS[0]], ensure_ascii=False)}")
            continue
        echo(f"{continuation.mode}: DIFFERENT across backends")
        for backend_name, text in continuation.texts.items():
            echo(f"  {backend_name:<6} {json.dumps(text, ensure_ascii=False)}")


# Part 4: the loss curve.


def plot_loss_curve(metrics_path: Path, segments: list[Segment], baseline_loss: float, path: Path) -> None:
    """Draw train loss per step and validation loss points, coloured by the backend of each segment."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = read_metrics(metrics_path)
    figure = Figure(figsize=(8, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for segment in segments:
        inside = [r for r in records if segment.start_step < r["step"] <= segment.end_step]
        color = BACKEND_COLORS[segment.backend]
        label = f"{segment.backend}: steps {segment.start_step}-{segment.end_step}"
        axes.plot([r["step"] for r in inside], [r["loss"] for r in inside], color=color, linewidth=1, label=label)
        evaluated = [r for r in inside if "val_loss" in r]
        axes.plot(
            [r["step"] for r in evaluated], [r["val_loss"] for r in evaluated], "o", color=color,
            markeredgecolor="black", markersize=5,
        )  # fmt: skip
        if segment.start_step > 0:
            axes.axvline(segment.start_step, color="gray", linestyle=":", linewidth=1)
    axes.axhline(baseline_loss, color="gray", linestyle="--", linewidth=1, label=f"unigram baseline {baseline_loss:.2f}")
    axes.plot([], [], "o", color="white", markeredgecolor="black", label="validation loss")
    axes.set_xlabel("step")
    axes.set_ylabel("cross-entropy (nats per byte)")
    axes.set_title("One training run moved across PyTorch, JAX and NumPy")
    axes.legend()
    figure.savefig(path, dpi=110)


# The whole demo.


def _prepare_out_dir(out_dir: Path) -> None:
    """Create out_dir and remove the previous demo's plot, but reject a folder with a run the demo did not write."""
    if (out_dir / CHECKPOINT_NAME).exists() and not (out_dir / REPORT_NAME).exists():
        raise UserError(
            f"{out_dir / CHECKPOINT_NAME} exists and was not written by `trigpt demo` (no {REPORT_NAME} beside it), "
            f"so the demo will not replace it: pass another --out or remove that folder"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    # The report is written first, so an interrupted demo can still be rerun into the folder.
    (out_dir / REPORT_NAME).write_text(json.dumps({"finished": False}) + "\n", encoding="utf-8")
    (out_dir / PLOT_NAME).unlink(missing_ok=True)


def print_header(plan: DemoPlan, corpus: Corpus, baseline: float, echo: Callable[[str], None]) -> None:
    config, settings = plan.config, plan.settings
    echo("trigpt demo: one byte-level GPT, trained in torch, then JAX, then NumPy")
    echo(
        f"model     {config.num_layers} layers, d_model {config.d_model}, {config.num_heads} heads, "
        f"context {config.context_length}, {config.num_parameters():,} parameters, float32"
    )
    echo(f"data      {corpus.source}: {corpus.train.size:,} train and {corpus.validation.size:,} validation bytes")
    echo(
        f"training  {settings.steps} steps of {settings.batch_size} x {config.context_length} tokens, AdamW lr {settings.lr:g} "
        f"(warm-up {settings.warmup_steps}, cosine to {settings.lr * settings.min_lr_ratio:g}), seed {settings.seed}"
    )
    echo(f"baseline  unigram (byte frequencies, no context): validation loss {baseline:.4f}")


def run_demo(
    out_dir: str | Path,
    plan: DemoPlan,
    prompt: str = DEFAULT_PROMPT,
    seed: int = 0,
    echo: Callable[[str], None] = print,
    progress: bool = False,
) -> DemoReport:
    """Run the four parts of the demo into out_dir and return what they measured.

    seed sets the initialisation, the batches and the sampled continuation. echo receives
    each line of the printed report.
    """
    if not prompt:
        raise UserError("--prompt is empty: give at least one character of text")
    try:
        import matplotlib  # noqa: F401  (checked before training, not after it)
    except ImportError:
        raise ImportError("the demo draws loss.png with matplotlib, which is not installed. Install it with: pip install 'trigpt[plot]'") from None

    started = time.perf_counter()
    out_dir = Path(out_dir)
    plan = DemoPlan(plan.config, plan.settings.replace(seed=seed), plan.max_new_tokens)
    segment_boundaries(plan.settings.steps)
    for backend_name in SEGMENT_BACKENDS:
        get_backend(backend_name)  # raises ImportError with the install command when a framework is missing
    _prepare_out_dir(out_dir)

    corpus = load_corpus()
    corpus.check_fits(plan.config)
    baseline = unigram_baseline_loss(corpus.train, corpus.validation, plan.config.vocab_size)
    report = DemoReport(
        out_dir=str(out_dir),
        prompt=prompt,
        config=plan.config.to_dict(),
        settings=plan.settings.to_dict(),
        baseline_loss=baseline,
    )
    print_header(plan, corpus, baseline, echo)

    echo("")
    echo("1. training, moved across frameworks")
    report.segments = train_segments(plan, out_dir, corpus, echo, progress)
    checkpoint_path = out_dir / CHECKPOINT_NAME
    checkpoint = load_checkpoint_full(checkpoint_path)
    final_val_loss = report.segments[-1].val_loss
    echo(f"final validation loss {final_val_loss:.4f} vs unigram baseline {baseline:.4f}")

    echo("")
    echo(f"2. the final checkpoint ({checkpoint_path}) in each backend")
    report.backends, report.pairs, models = compare_final_checkpoint(checkpoint, corpus, plan)
    print_comparison(report.backends, report.pairs, plan, echo)

    echo("")
    echo(
        f"3. continuations of {json.dumps(prompt, ensure_ascii=False)}, {plan.max_new_tokens} bytes: greedy (top_k 1) "
        f"and sampled (temperature {SAMPLE_TEMPERATURE}, top_k {SAMPLE_TOP_K}, seed {seed})"
    )
    tokenizer = checkpoint_tokenizer(checkpoint.metadata, checkpoint.config, checkpoint_path)
    report.continuations = continue_prompt(models, tokenizer, prompt, plan.max_new_tokens, seed)
    print_continuations(report.continuations, echo)

    echo("")
    plot_path = out_dir / PLOT_NAME
    plot_loss_curve(out_dir / METRICS_NAME, report.segments, baseline, plot_path)
    echo(f"4. loss curve: {plot_path}")

    report.failures = find_failures(report)
    report.seconds = time.perf_counter() - started
    (out_dir / REPORT_NAME).write_text(report.to_json() + "\n", encoding="utf-8")
    echo("")
    if report.passed:
        echo(
            f"check passed: validation loss below the unigram baseline, backends within tolerance, "
            f"identical continuations ({report.seconds:.0f} s)"
        )
    else:
        echo(f"check FAILED ({report.seconds:.0f} s):")
        for failure in report.failures:
            echo(f"  {failure}")
    return report


def find_failures(report: DemoReport) -> list[str]:
    """List each way in which the demo's run falls short of the check, as one sentence each."""
    failures = []
    for row in report.backends:
        if not row.val_loss < report.baseline_loss:
            failures.append(
                f"{row.backend}: validation loss {row.val_loss:.4f} is not below the unigram baseline "
                f"{report.baseline_loss:.4f}; train longer (--steps)"
            )
    for pair in report.pairs:
        if not pair.ok:
            failures.append(
                f"{pair.first} vs {pair.second}: max float64 logit difference {pair.logit_diff_float64:.2e} (allowed "
                f"{pair.allowed_logit_diff_float64:.1e}), validation loss difference {pair.val_loss_diff:.2e} "
                f"(allowed {pair.allowed_val_loss_diff:.1e}). Find where they part with "
                f"`trigpt compare {Path(report.out_dir) / CHECKPOINT_NAME} --dtype float64`"
            )
    for continuation in report.continuations:
        if not continuation.identical:
            # NOTE: the JAX sampler works in float32 and shared.sampling in float64. A uniform
            # within rounding of a cumulative-probability boundary could therefore pick a
            # different token, although none did in the demo runs so far.
            failures.append(f"the {continuation.mode} continuations differ between backends")
    return failures


# The command.


def run_demo_command(args: argparse.Namespace) -> int:
    # By default a libgomp thread (torch's CPU threads) spins while it waits for work, which
    # takes the CPU from the working thread when other processes share the cores. On a busy
    # 2-core machine, PASSIVE made a train step of the full demo's model 2.8x faster. libgomp
    # reads the variable when torch is imported, and the trigpt command imports torch later.
    # NOTE: the cost of PASSIVE on an idle machine was not measured.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    plan = QUICK_PLAN if args.quick else FULL_PLAN
    if args.steps is not None:
        plan = DemoPlan(plan.config, plan.settings.replace(steps=args.steps, warmup_steps=None), plan.max_new_tokens)
    report = run_demo(args.out, plan, prompt=args.prompt, seed=args.seed, progress=sys.stderr.isatty() and not args.no_progress)
    return 0 if report.passed else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    full = FULL_PLAN.settings
    parser = subparsers.add_parser(
        "demo",
        help="train one model across torch, JAX and NumPy, then compare the three on it",
        description=(
            "Train a small byte-level model on the default corpus: the first third of the steps in torch, "
            "the second in JAX, the last in NumPy, each resuming from the previous checkpoint. Then load the "
            "final checkpoint into all three backends, compare validation losses, logits and continuations, "
            "and draw the loss curve. Exit status 1 when the validation loss is not below the unigram "
            "baseline or the backends disagree beyond tolerance."
        ),
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="folder for the checkpoint, metrics, loss.png and demo.json (default: runs/demo)")
    parser.add_argument("--steps", type=int, help=f"total training steps, split in thirds (default: {full.steps}, or {QUICK_PLAN.settings.steps} with --quick)")
    parser.add_argument("--quick", action="store_true", help="a much smaller model and run, for tests")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initialisation, the batches and the sampled continuation (default: 0)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"text to continue (default: {DEFAULT_PROMPT!r})")
    parser.add_argument("--no-progress", action="store_true", help="hide the training progress bars, which show only on a terminal")
    parser.set_defaults(handler=run_demo_command)
