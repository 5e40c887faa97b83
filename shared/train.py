"""The training loop and the `trigpt train` command.

One loop drives every backend through make_trainer (docs/backends.md): batches come from
shared.data, the learning rate from shared.optim.learning_rate, and the trainer does the
forward, backward, global-norm clipping and AdamW update. A checkpoint stores params and
AdamW state under canonical names, so any backend can resume a run that another wrote.

Steps count updates. Step s (1-based) trains on batch s - 1 with the learning rate of
schedule step s - 1, and a checkpoint written after step s stores step s.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from shared.backends import BACKENDS, get_backend
from shared.config import GPTConfig
from shared.data import Corpus, DataError, get_batch, load_corpus, validation_batches, validation_loss
from shared.errors import UserError
from shared.inputs import check_dtype
from shared.optim import AdamWConfig, learning_rate
from shared.tokenizer import KINDS, checkpoint_tokenizer, relocate_spec, resolve_spec
from shared.weights import Checkpoint, CheckpointError, init_parameters, load_checkpoint_full, save_checkpoint

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.safetensors"
METRICS_NAME = "metrics.jsonl"


@dataclass(frozen=True)
class TrainSettings:
    """Hyperparameters and bookkeeping intervals of one training run.

    steps is the total length of the schedule, counted from step 0 of the run, not the
    number of steps one call adds: resuming a 30-step run at step 10 trains 20 more.
    warmup_steps=None becomes steps // 10 when the settings are created. An interval of 0
    means "only at the end of the call" (and on Ctrl-C for checkpoints).
    """

    steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-3  # the peak learning rate, reached at the end of warm-up
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    warmup_steps: int | None = None
    min_lr_ratio: float = 0.1  # the cosine decays to min_lr_ratio * lr at step `steps`
    max_grad_norm: float | None = 1.0  # None disables clipping
    dtype: str = "float32"
    seed: int = 0  # seeds the initialisation, the batches and dropout
    eval_interval: int = 100
    eval_batches: int = 8
    checkpoint_interval: int = 500

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_batches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("seed", "eval_interval", "checkpoint_interval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if self.warmup_steps is None:
            object.__setattr__(self, "warmup_steps", self.steps // 10)
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be a non-negative integer, got {self.warmup_steps!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must satisfy 0 <= ratio <= 1, got {self.min_lr_ratio}")
        check_dtype(self.dtype)
        # AdamWConfig checks lr, the betas, eps, weight_decay and max_grad_norm.
        self.adamw()

    def adamw(self) -> AdamWConfig:
        return AdamWConfig(
            lr=self.lr,
            beta1=self.beta1,
            beta2=self.beta2,
            eps=self.eps,
            weight_decay=self.weight_decay,
            max_grad_norm=self.max_grad_norm,
        )

    def learning_rate(self, step_index: int) -> float:
        """Return the learning rate of the 0-based update step_index."""
        return learning_rate(step_index, self.lr, self.steps, self.warmup_steps, self.min_lr_ratio)

    def replace(self, **changes: Any) -> "TrainSettings":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainSettings":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training setting(s): {', '.join(unknown)}")
        return cls(**data)


@dataclass
class TrainResult:
    """Result of one train() call: the steps it ran, their losses, and the files it wrote."""

    backend: str
    config: GPTConfig
    start_step: int  # steps done before this call
    end_step: int  # steps done when it returned
    losses: list[float]  # training loss of each step start_step + 1 .. end_step
    val_losses: dict[int, float]  # step -> validation loss after that step
    checkpoint_path: Path
    metrics_path: Path
    model: Any = field(repr=False)  # the backend's model, holding the trained params


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training after a completed step, and a checkpoint of that step was written."""

    def __init__(self, step: int, checkpoint_path: Path) -> None:
        super().__init__(f"interrupted after step {step}; saved {checkpoint_path}")
        self.step = step
        self.checkpoint_path = checkpoint_path


class TrainingDiverged(ValueError):
    """The training loss became NaN or infinite."""


class _DeferredInterrupt:
    """Turn the first Ctrl-C into a request to stop after the current step.

    An update interrupted halfway leaves some parameters updated and others not, so the
    loop checks `requested` between steps and saves a consistent checkpoint. A second
    Ctrl-C raises KeyboardInterrupt at once. Signal handlers can only be set from the
    main thread, so elsewhere Ctrl-C keeps its default behaviour.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("interrupt received: saving a checkpoint after this step (press Ctrl-C again to stop without saving)")

    def __enter__(self) -> "_DeferredInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)


# Setting up a run.


def _load_resume_checkpoint(resume: Checkpoint | str | Path, dtype: str) -> Checkpoint:
    if isinstance(resume, Checkpoint):
        checkpoint = resume
        params = {name: value.astype(dtype) for name, value in checkpoint.params.items()}
        optimizer = checkpoint.optimizer
        if optimizer is not None:
            optimizer = dataclasses.replace(
                optimizer,
                m={name: value.astype(dtype) for name, value in optimizer.m.items()},
                v={name: value.astype(dtype) for name, value in optimizer.v.items()},
            )
        checkpoint = dataclasses.replace(checkpoint, params=params, optimizer=optimizer)
        source = "the checkpoint"
    else:
        checkpoint = load_checkpoint_full(resume, dtype=dtype)
        source = str(resume)
    if checkpoint.optimizer is None:
        raise CheckpointError(
            f"{source} contains no optimizer state (it was written by `trigpt init` or `trigpt convert`); "
            f"resume from a checkpoint that `trigpt train` wrote"
        )
    recorded_step = checkpoint.metadata.get("step")
    if recorded_step is not None and int(recorded_step) != checkpoint.optimizer.step:
        raise CheckpointError(
            f"{source}: metadata records step {recorded_step} but the optimizer state is at step "
            f"{checkpoint.optimizer.step}; the file is inconsistent"
        )
    return checkpoint


def _load_init_checkpoint(init_from: Checkpoint | str | Path, dtype: str) -> Checkpoint:
    """Load the params and config that start a fresh run, dropping any optimizer state in the file."""
    if isinstance(init_from, Checkpoint):
        params = {name: value.astype(dtype) for name, value in init_from.params.items()}
        checkpoint = dataclasses.replace(init_from, params=params)
    else:
        checkpoint = load_checkpoint_full(init_from, dtype=dtype)
    if checkpoint.optimizer is not None:
        logger.info(
            "starting from the params of %s at step 0 with fresh AdamW state; its optimizer state (step %d) is not used",
            init_from if not isinstance(init_from, Checkpoint) else "the checkpoint",
            checkpoint.optimizer.step,
        )
    return dataclasses.replace(checkpoint, optimizer=None)


def _absolute_spec(spec: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Make the file paths of a shared.tokenizer spec absolute, so that two specs can be compared."""
    return resolve_spec(spec, folder) if spec.get("kind") in KINDS else spec


def _check_tokenizer(checkpoint: Checkpoint, checkpoint_folder: Path, corpus: Corpus, action: str) -> None:
    recorded_tokenizer = checkpoint.metadata.get("tokenizer")
    if recorded_tokenizer is not None and _absolute_spec(recorded_tokenizer, checkpoint_folder) != _absolute_spec(
        corpus.tokenizer, Path.cwd()
    ):
        raise DataError(
            f"the checkpoint was written with tokenizer {recorded_tokenizer} but the corpus uses {corpus.tokenizer}; "
            f"{action} with the same tokenizer"
        )


def _check_resume_data(checkpoint: Checkpoint, checkpoint_folder: Path, corpus: Corpus) -> None:
    _check_tokenizer(checkpoint, checkpoint_folder, corpus, "resume")
    recorded_data = checkpoint.metadata.get("data") or {}
    if recorded_data.get("sha256") not in (None, corpus.sha256):
        logger.warning(
            "the training text differs from the checkpoint's (%s), so batches after the resume differ "
            "from those of the uninterrupted run",
            recorded_data.get("source"),
        )


def _prepare_metrics(metrics_path: Path, keep_until_step: int) -> None:
    """Keep the metrics of steps up to keep_until_step and drop later ones.

    A run resumed from an earlier checkpoint in the same folder replaces the lines that
    the abandoned continuation wrote, so every step appears once.
    """
    kept_lines: list[str] = []
    if keep_until_step > 0 and metrics_path.exists():
        for line in metrics_path.read_text(encoding="utf-8").splitlines():
            if line.strip() and json.loads(line).get("step", 0) <= keep_until_step:
                kept_lines.append(line)
    metrics_path.write_text("".join(line + "\n" for line in kept_lines), encoding="utf-8")


def _checkpoint_metadata(
    backend_name: str,
    step: int,
    settings: TrainSettings,
    corpus: Corpus,
    out_dir: Path,
    val_loss: tuple[int, float] | None,
) -> dict[str, Any]:
    tokenizer = corpus.tokenizer
    if tokenizer.get("kind") in KINDS:
        # shared.tokenizer resolves relative file paths of a spec against the checkpoint's folder.
        tokenizer = relocate_spec(tokenizer, out_dir)
    return {
        "step": step,
        "backend": backend_name,
        "training": settings.to_dict(),
        "seed": settings.seed,
        "data": corpus.describe(),
        "tokenizer": tokenizer,
        # The latest validation loss and the step it was measured after, which can be
        # earlier than `step` when the checkpoint and evaluation intervals differ.
        "val_loss": None if val_loss is None else val_loss[1],
        "val_loss_step": None if val_loss is None else val_loss[0],
    }


def _prepare_out_dir(out_dir: Path, resume: Checkpoint | str | Path | None, start_step: int, overwrite: bool) -> None:
    """Create out_dir, trim its metrics.jsonl to start_step, and raise UserError rather than replace another run's checkpoint."""
    checkpoint_path = out_dir / CHECKPOINT_NAME
    resuming_in_place = isinstance(resume, (str, Path)) and Path(resume).resolve() == checkpoint_path.resolve()
    if checkpoint_path.exists() and not resuming_in_place and not overwrite:
        raise UserError(
            f"{checkpoint_path} already exists; pass --resume {checkpoint_path} to continue that run, "
            f"--overwrite to replace it, or another --out"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    _prepare_metrics(out_dir / METRICS_NAME, start_step if resuming_in_place else 0)


def _build_model_and_trainer(
    backend: Any,
    config: GPTConfig,
    settings: TrainSettings,
    checkpoint: Checkpoint | None,
    initial_params: dict[str, np.ndarray] | None = None,
) -> tuple[Any, Any]:
    """Load the checkpoint's params and AdamW state, or start fresh AdamW state on initial_params.

    initial_params=None on a fresh run draws the initialisation from settings.seed.
    """
    if checkpoint is None:
        params = initial_params
        if params is None:
            params = init_parameters(config, seed=settings.seed, dtype=np.dtype(settings.dtype))
        model = backend.load(params, config, dtype=settings.dtype)
        return model, backend.make_trainer(model, settings.adamw(), seed=settings.seed)
    model = backend.load(checkpoint.params, config, dtype=settings.dtype)
    # Dropout masks after a resume come from a new seed, so with dropout > 0 a resumed
    # run is repeatable but differs from the uninterrupted one.
    seed = settings.seed + checkpoint.optimizer.step
    return model, backend.make_trainer(model, settings.adamw(), state=checkpoint.optimizer, seed=seed)


# The loop.


def train(
    backend_name: str,
    settings: TrainSettings,
    out_dir: str | Path,
    *,
    config: GPTConfig | None = None,
    resume: Checkpoint | str | Path | None = None,
    init_from: Checkpoint | str | Path | None = None,
    corpus: Corpus | None = None,
    stop_at: int | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = False,
    overwrite: bool = False,
) -> TrainResult:
    """Train a model and write out_dir/metrics.jsonl and out_dir/last.safetensors.

    A fresh run needs config and initialises the params from settings.seed, or takes config
    and params from `init_from` (a path or a loaded Checkpoint, such as the weights-only
    file of `trigpt init` or `trigpt convert`) and starts at step 0 with fresh AdamW state.
    A resumed run takes config, params, AdamW state and step count from `resume`. Training
    stops after step stop_at (default settings.steps), so a run can be split into segments
    on different backends without changing its schedule. corpus defaults to load_corpus(),
    the default corpus in bytes.

    callback(record) runs after every step with the metrics line of that step. Ctrl-C, or
    a KeyboardInterrupt from the callback, saves a checkpoint of the last completed step
    and raises TrainingInterrupted.
    """
    backend = get_backend(backend_name)
    out_dir = Path(out_dir)
    checkpoint_path = out_dir / CHECKPOINT_NAME
    metrics_path = out_dir / METRICS_NAME

    checkpoint = None
    init_checkpoint = None
    if resume is not None and init_from is not None:
        raise ValueError("pass either resume= (continue a run) or init_from= (start a run from its params), not both")
    if resume is not None:
        checkpoint = _load_resume_checkpoint(resume, settings.dtype)
        if config is not None and config != checkpoint.config:
            raise ValueError("config differs from the resumed checkpoint's config; a resumed run keeps its model config")
        config = checkpoint.config
        start_step = checkpoint.optimizer.step
    elif init_from is not None:
        init_checkpoint = _load_init_checkpoint(init_from, settings.dtype)
        if config is not None and config != init_checkpoint.config:
            raise ValueError("config differs from the init_from checkpoint's config; the checkpoint fixes the model config")
        config = init_checkpoint.config
        start_step = 0
    elif config is None:
        raise ValueError("a fresh run needs a config; pass config=, init_from= or resume= a checkpoint")
    else:
        start_step = 0
    stop_step = settings.steps if stop_at is None else stop_at
    if stop_step > settings.steps:
        raise ValueError(f"stop_at {stop_step} is beyond the schedule's {settings.steps} steps; raise --steps or lower --stop-at")
    if stop_step <= start_step:
        raise ValueError(
            f"nothing to train: the run is at step {start_step} and would stop at step {stop_step}; "
            f"raise --steps (the total step count, not the number of steps to add) or --stop-at"
        )

    corpus = corpus if corpus is not None else load_corpus()
    corpus.check_fits(config)
    if checkpoint is not None:
        checkpoint_folder = Path(resume).parent if isinstance(resume, (str, Path)) else Path.cwd()
        _check_resume_data(checkpoint, checkpoint_folder, corpus)
    if init_checkpoint is not None:
        init_folder = Path(init_from).parent if isinstance(init_from, (str, Path)) else Path.cwd()
        _check_tokenizer(init_checkpoint, init_folder, corpus, "train")

    _prepare_out_dir(out_dir, resume, start_step, overwrite)
    initial_params = None if init_checkpoint is None else init_checkpoint.params
    model, trainer = _build_model_and_trainer(backend, config, settings, checkpoint, initial_params)
    eval_set = validation_batches(corpus.validation, settings.batch_size, config.context_length, settings.eval_batches)
    tokens_per_step = settings.batch_size * config.context_length

    def save(step: int, val_loss: tuple[int, float] | None) -> None:
        state = trainer.state()
        if state.step != step:
            raise RuntimeError(f"the {backend_name} trainer's AdamW state is at step {state.step}, expected {step}")
        metadata = _checkpoint_metadata(backend_name, step, settings, corpus, out_dir, val_loss)
        save_checkpoint(checkpoint_path, backend.export(model), config, metadata=metadata, optimizer=state)

    losses: list[float] = []
    val_losses: dict[int, float] = {}
    last_val_loss: tuple[int, float] | None = None
    if checkpoint is not None and checkpoint.metadata.get("val_loss") is not None:
        last_val_loss = (checkpoint.metadata.get("val_loss_step", start_step), checkpoint.metadata["val_loss"])
    completed = start_step
    in_update = False
    bar = _progress_bar(start_step, stop_step, backend_name, enabled=progress)
    metrics_file = metrics_path.open("a", encoding="utf-8")
    try:
        with _DeferredInterrupt() as interrupt:
            for step_index in range(start_step, stop_step):
                inputs, targets = get_batch(
                    corpus.train, settings.batch_size, config.context_length, settings.seed, step_index
                )
                lr = settings.learning_rate(step_index)
                in_update = True
                started = time.perf_counter()
                loss = trainer.step(inputs, targets, lr)
                elapsed = time.perf_counter() - started
                in_update = False
                completed = step_index + 1
                if not math.isfinite(loss):
                    raise TrainingDiverged(
                        f"training loss is {loss} at step {completed}; the run diverged, so lower --lr or "
                        f"--max-grad-norm and restart (the last checkpoint is {checkpoint_path})"
                    )
                losses.append(loss)

                record: dict[str, Any] = {
                    "step": completed,
                    "loss": loss,
                    "lr": lr,
                    "tokens_per_s": tokens_per_step / elapsed if elapsed > 0 else None,
                    "backend": backend_name,
                }
                if _is_due(completed, settings.eval_interval, stop_step):
                    val_loss = validation_loss(backend, model, eval_set)
                    val_losses[completed] = val_loss
                    last_val_loss = (completed, val_loss)
                    record["val_loss"] = val_loss
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
                bar.update(1)
                bar.set_postfix(_postfix(record, last_val_loss), refresh=False)

                if _is_due(completed, settings.checkpoint_interval, stop_step):
                    save(completed, last_val_loss)
                if callback is not None:
                    callback(record)
                if interrupt.requested:
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        if in_update:
            logger.error(
                "interrupted inside the update of step %d, so the model is half updated and was not saved",
                completed + 1,
            )
            raise
        save(completed, last_val_loss)
        raise TrainingInterrupted(completed, checkpoint_path) from None
    finally:
        metrics_file.close()
        bar.close()

    return TrainResult(
        backend=backend_name,
        config=config,
        start_step=start_step,
        end_step=completed,
        losses=losses,
        val_losses=val_losses,
        checkpoint_path=checkpoint_path,
        metrics_path=metrics_path,
        model=model,
    )


def _is_due(completed: int, interval: int, stop_step: int) -> bool:
    """Say whether a periodic action runs after step `completed`: every interval steps and after the last."""
    return completed == stop_step or (interval > 0 and completed % interval == 0)


def _progress_bar(start_step: int, stop_step: int, backend_name: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=stop_step,
        initial=start_step,
        desc=f"train {backend_name}",
        unit="step",
        file=sys.stderr,
        disable=not enabled,
        dynamic_ncols=True,
    )


def _postfix(record: dict[str, Any], val_loss: tuple[int, float] | None) -> dict[str, str]:
    postfix = {"loss": f"{record['loss']:.4f}"}
    if val_loss is not None:
        postfix["val"] = f"{val_loss[1]:.4f}"
    if record["tokens_per_s"] is not None:
        postfix["tok/s"] = f"{record['tokens_per_s']:,.0f}"
    return postfix


# The command.

# TrainSettings fields that the CLI sets, one option each (--batch-size sets batch_size). Their
# parser default is None, so a resumed run can tell an option given again from a recorded one.
_SETTING_OPTIONS = (
    "steps", "batch_size", "lr", "weight_decay", "beta1", "beta2", "warmup_steps", "min_lr_ratio",
    "max_grad_norm", "dtype", "seed", "eval_interval", "eval_batches", "checkpoint_interval",
)
_MODEL_OPTIONS = (
    "preset", "vocab_size", "context_length", "d_model", "num_heads", "num_layers", "mlp_expansion",
    "dropout", "use_bias", "weight_tying", "pre_ln", "layer_norm_eps", "gelu_approximation",
)


def settings_from_args(args: argparse.Namespace, recorded: dict[str, Any] | None = None) -> TrainSettings:
    """Build TrainSettings from the options given, then the checkpoint's recorded settings, then the defaults."""
    values = dict(recorded or {})
    # A longer or shorter schedule keeps the recorded warm-up unless --warmup-steps is given.
    for name in _SETTING_OPTIONS:
        value = getattr(args, name)
        if value is not None:
            values[name] = value
    if getattr(args, "max_grad_norm", None) == 0:
        values["max_grad_norm"] = None
    try:
        return TrainSettings.from_dict(values)
    except ValueError as error:
        raise UserError(_name_option(str(error))) from None


def _name_option(message: str) -> str:
    """Replace the field that a TrainSettings or AdamWConfig error starts with by its option, e.g. AdamWConfig.lr by --lr."""
    match = re.match(r"(?:AdamWConfig\.)?(\w+)(.*)", message, re.DOTALL)
    if match is None or match.group(1) not in _SETTING_OPTIONS:
        return message
    return "--" + match.group(1).replace("_", "-") + match.group(2)


def run_train(args: argparse.Namespace) -> int:
    from shared.commands import config_from_args

    checkpoint = None
    init_checkpoint = None
    config = None
    recorded: dict[str, Any] = {}
    if args.resume is not None and args.init_from is not None:
        raise UserError("--resume and --init-from cannot be combined: --resume continues a run, --init-from starts one")
    source_option = None
    if args.resume is not None:
        source_option = "--resume"
    elif args.init_from is not None:
        source_option = "--init-from"
    if source_option is not None:
        model_options = [name for name in _MODEL_OPTIONS if getattr(args, name) is not None]
        if model_options:
            options = ", ".join("--" + name.replace("_", "-") for name in model_options)
            raise UserError(f"{options} cannot be combined with {source_option}, because the checkpoint fixes the model config")
    if args.resume is not None:
        checkpoint = load_checkpoint_full(args.resume)
        recorded = dict(checkpoint.metadata.get("training") or {})
    elif args.init_from is not None:
        # Only the params and config are taken; the training options start from their defaults.
        init_checkpoint = load_checkpoint_full(args.init_from)
    else:
        if args.preset is None:
            args.preset = "tiny"
        config = config_from_args(args)
    settings = settings_from_args(args, recorded)

    text = args.text
    if text is None and checkpoint is not None:
        text = (checkpoint.metadata.get("data") or {}).get("text_path")
        if text is not None and not Path(text).exists():
            raise UserError(f"the checkpoint was trained on {text}, which was not found; pass its new path with --text")
    tokenizer = None
    if checkpoint is not None:
        tokenizer = checkpoint_tokenizer(checkpoint.metadata, checkpoint.config, args.resume)
    elif init_checkpoint is not None:
        tokenizer = checkpoint_tokenizer(init_checkpoint.metadata, init_checkpoint.config, args.init_from)
    corpus = load_corpus(text, tokenizer=tokenizer)

    try:
        result = train(
            args.backend,
            settings,
            args.out,
            config=config,
            resume=args.resume if checkpoint is not None else None,
            init_from=args.init_from if init_checkpoint is not None else None,
            corpus=corpus,
            stop_at=args.stop_at,
            progress=not args.no_progress,
            overwrite=args.overwrite,
        )
    except TrainingInterrupted as interrupted:
        print(
            f"interrupted after step {interrupted.step}; saved {interrupted.checkpoint_path}\n"
            f"continue with: trigpt train --resume {interrupted.checkpoint_path} --out {args.out}",
            file=sys.stderr,
        )
        return 130

    final_val = result.val_losses.get(result.end_step)
    print(f"{args.backend}: steps {result.start_step} -> {result.end_step} of {settings.steps}, "
          f"last loss {result.losses[-1]:.4f}, val_loss {final_val:.4f}")
    print(f"wrote {result.checkpoint_path} and {result.metrics_path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from shared.commands import add_config_options

    defaults = TrainSettings()
    parser = subparsers.add_parser(
        "train",
        help="train a model on a text file or the default corpus",
        description=(
            "Train with AdamW, linear warm-up and cosine decay. --steps is the total length of the schedule: "
            "a run resumed at step 10 with --steps 30 trains 20 more steps. A resumed run takes its model "
            "config from the checkpoint and, unless given again, its training options and text."
        ),
    )
    parser.add_argument("--backend", default="torch", choices=list(BACKENDS), help="framework to train with (default: torch)")
    parser.add_argument("--out", type=Path, required=True, help="run folder for last.safetensors and metrics.jsonl")
    parser.add_argument("--resume", type=Path, help="checkpoint written by `trigpt train` with any backend")
    parser.add_argument(
        "--init-from",
        type=Path,
        help="start a fresh run (step 0, fresh AdamW state) from the params and config of this checkpoint, "
        "for example one written by `trigpt init` or `trigpt convert`",
    )
    parser.add_argument("--text", type=Path, help="UTF-8 text file to train on (default: the Python language reference from pydoc_data)")
    parser.add_argument("--stop-at", type=int, help="stop after this step without changing the schedule (default: --steps)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint in --out")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    group = parser.add_argument_group("training options (default on --resume: the checkpoint's value)")
    group.add_argument("--steps", type=int, help=f"total optimizer steps of the schedule (default: {defaults.steps})")
    group.add_argument("--batch-size", type=int, help=f"sequences per batch (default: {defaults.batch_size})")
    group.add_argument("--lr", type=float, help=f"peak learning rate after warm-up (default: {defaults.lr:g})")
    group.add_argument("--weight-decay", type=float, help=f"AdamW decoupled weight decay on matrices (default: {defaults.weight_decay:g})")
    group.add_argument("--beta1", type=float, help=f"AdamW first-moment decay (default: {defaults.beta1:g})")
    group.add_argument("--beta2", type=float, help=f"AdamW second-moment decay (default: {defaults.beta2:g})")
    group.add_argument("--warmup-steps", type=int, help="steps of linear warm-up (default: 10%% of --steps)")
    group.add_argument("--min-lr-ratio", type=float, help=f"final learning rate as a fraction of --lr (default: {defaults.min_lr_ratio:g})")
    group.add_argument("--max-grad-norm", type=float, help=f"global gradient-norm clipping threshold, 0 disables (default: {defaults.max_grad_norm:g})")
    group.add_argument("--dtype", choices=["float32", "float64"], help=f"parameter and compute dtype (default: {defaults.dtype})")
    group.add_argument("--seed", type=int, help=f"seed of the initialisation, batches and dropout (default: {defaults.seed})")
    group.add_argument("--eval-interval", type=int, help=f"steps between validation losses, 0 for the last step only (default: {defaults.eval_interval})")
    group.add_argument("--eval-batches", type=int, help=f"validation batches per evaluation (default: {defaults.eval_batches})")
    group.add_argument("--checkpoint-interval", type=int, help=f"steps between checkpoints, 0 for the last step only (default: {defaults.checkpoint_interval})")

    add_config_options(parser)
    # With a preset default of None, a fresh run falls back to tiny and --resume can reject an explicit --preset.
    parser.set_defaults(preset=None, handler=run_train)
