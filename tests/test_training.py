"""Training: cross-backend loss curves, resuming across backends, Ctrl-C, metrics and the CLI.

Every run uses one tiny config with dropout 0, so the only differences between backends
are rounding. The uninterrupted runs and the step-10 checkpoints are cached per backend
and dtype and shared by the tests. Pairs that need no torch are marked slow.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import shared.train
from shared.backends import BACKENDS as BACKEND_MODULES
from shared.backends import get_backend
from shared.cli import main
from shared.config import GPTConfig
from shared.data import load_corpus, minimum_corpus_tokens, validation_batches, validation_loss
from shared.train import TrainingDiverged, TrainingInterrupted, TrainSettings, train
from shared.weights import init_parameters, load_checkpoint_full, save_checkpoint
from tests.tolerances import assert_close

BACKENDS = ("torch", "jax", "numpy")
DTYPES = ("float32", "float64")
CONFIG = GPTConfig(vocab_size=256, context_length=32, d_model=32, num_heads=2, num_layers=2, dropout=0.0)
SETTINGS = TrainSettings(steps=20, batch_size=4, lr=1e-3, warmup_steps=4, eval_interval=0, eval_batches=2)
HALF = 10

# Model options of the CLI that give CONFIG, and training options that give SETTINGS.
CLI_MODEL = ["--d-model", "32", "--num-layers", "2", "--num-heads", "2", "--context-length", "32"]
CLI_SETTINGS = ["--batch-size", "4", "--lr", "1e-3", "--warmup-steps", "4", "--eval-batches", "2", "--no-progress"]


def require_backend(name: str) -> None:
    """Skip the test while a backend module does not exist yet; a broken one still fails."""
    module_name = BACKEND_MODULES[name][0]
    try:
        get_backend(name)
    except ModuleNotFoundError as error:
        if error.name is not None and module_name.startswith(error.name):
            pytest.skip(f"{module_name} does not exist yet")
        raise


@pytest.fixture(scope="module")
def corpus():
    return load_corpus()


class RunCache:
    """Uninterrupted 20-step runs and step-10 checkpoints, each made once per backend and dtype."""

    def __init__(self, root, corpus):
        self.root = root
        self.corpus = corpus
        self.full_runs = {}
        self.half_checkpoints = {}

    def full(self, backend_name, dtype):
        key = (backend_name, dtype)
        if key not in self.full_runs:
            out = self.root / f"full-{backend_name}-{dtype}"
            settings = SETTINGS.replace(dtype=dtype)
            self.full_runs[key] = train(backend_name, settings, out, config=CONFIG, corpus=self.corpus)
        return self.full_runs[key]

    def half(self, backend_name, dtype):
        key = (backend_name, dtype)
        if key not in self.half_checkpoints:
            out = self.root / f"half-{backend_name}-{dtype}"
            settings = SETTINGS.replace(dtype=dtype)
            result = train(backend_name, settings, out, config=CONFIG, corpus=self.corpus, stop_at=HALF)
            self.half_checkpoints[key] = result.checkpoint_path
        return self.half_checkpoints[key]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus):
    return RunCache(tmp_path_factory.mktemp("runs"), corpus)


def read_metrics(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# Parity of whole training runs.


def curve_cases():
    for dtype, backend_name in itertools.product(DTYPES, ("jax", "numpy")):
        marks = [] if dtype == "float32" else [pytest.mark.slow]
        yield pytest.param(backend_name, dtype, marks=marks, id=f"{backend_name}-{dtype}")


@pytest.mark.parametrize("backend_name, dtype", list(curve_cases()))
def test_loss_curve_matches_torch(runs, backend_name, dtype):
    require_backend(backend_name)
    expected = runs.full("torch", dtype)
    actual = runs.full(backend_name, dtype)
    assert len(actual.losses) == SETTINGS.steps
    assert_close(actual.losses, expected.losses, f"{backend_name} loss curve", f"loss-curve-{dtype}")
    assert_close(
        actual.val_losses[SETTINGS.steps], expected.val_losses[SETTINGS.steps], f"{backend_name} val_loss",
        f"loss-curve-{dtype}",
    )


def test_loss_decreases(runs):
    losses = runs.full("torch", "float32").losses
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3


def resume_cases():
    for dtype, (first, second) in itertools.product(DTYPES, itertools.product(BACKENDS, repeat=2)):
        fast = first == second == "torch" or (dtype == "float32" and "torch" in (first, second))
        marks = [] if fast else [pytest.mark.slow]
        yield pytest.param(first, second, dtype, marks=marks, id=f"{first}-{second}-{dtype}")


@pytest.mark.parametrize("first, second, dtype", list(resume_cases()))
def test_resume_across_backends(runs, first, second, dtype):
    require_backend(first)
    require_backend(second)
    expected = runs.full(first, dtype)
    out = runs.root / f"resume-{first}-{second}-{dtype}"
    resumed = train(second, SETTINGS.replace(dtype=dtype), out, resume=runs.half(first, dtype), corpus=runs.corpus)
    assert (resumed.start_step, resumed.end_step) == (HALF, SETTINGS.steps)
    final = load_checkpoint_full(resumed.checkpoint_path)
    assert final.optimizer.step == SETTINGS.steps
    assert final.metadata["backend"] == second
    if first == second:
        # The same backend on the same params, state and batches repeats every operation.
        assert resumed.losses == expected.losses[HALF:]
        uninterrupted = load_checkpoint_full(expected.checkpoint_path)
        for name, value in uninterrupted.params.items():
            np.testing.assert_array_equal(final.params[name], value, err_msg=name)
    else:
        assert_close(resumed.losses, expected.losses[HALF:], f"{first} then {second} loss curve", f"loss-curve-{dtype}")


# One backend: metrics, checkpoints and stopping.


def test_metrics_lines(tmp_path, corpus):
    settings = SETTINGS.replace(steps=12, eval_interval=5)
    result = train("torch", settings, tmp_path, config=CONFIG, corpus=corpus)
    lines = read_metrics(tmp_path / "metrics.jsonl")
    assert [line["step"] for line in lines] == list(range(1, 13))
    assert [line["loss"] for line in lines] == result.losses
    for line in lines:
        assert line["backend"] == "torch"
        assert line["lr"] == settings.learning_rate(line["step"] - 1)
        assert line["tokens_per_s"] > 0
    evaluated = {line["step"]: line["val_loss"] for line in lines if "val_loss" in line}
    assert sorted(evaluated) == [5, 10, 12]
    assert evaluated == result.val_losses


def test_learning_rate_schedule_in_metrics(tmp_path, corpus):
    settings = SETTINGS.replace(steps=12, warmup_steps=3, min_lr_ratio=0.1)
    train("torch", settings, tmp_path, config=CONFIG, corpus=corpus)
    rates = [line["lr"] for line in read_metrics(tmp_path / "metrics.jsonl")]
    # Warm-up reaches the peak at step 3; the cosine starts from the peak at step 4.
    assert rates[:4] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3, 1e-3])
    assert all(later < earlier for earlier, later in zip(rates[3:], rates[4:]))
    assert rates[-1] > 1e-4


def test_checkpoint_contents(tmp_path, corpus):
    settings = SETTINGS.replace(steps=6, seed=5)
    result = train("torch", settings, tmp_path, config=CONFIG, corpus=corpus)
    checkpoint = load_checkpoint_full(tmp_path / "last.safetensors")
    assert checkpoint.config == CONFIG
    assert checkpoint.optimizer.step == 6
    metadata = checkpoint.metadata
    assert metadata["step"] == 6
    assert metadata["backend"] == "torch"
    assert metadata["seed"] == 5
    assert metadata["tokenizer"] == {"kind": "bytes"}
    assert metadata["training"] == settings.to_dict()
    assert metadata["data"] == corpus.describe()
    assert metadata["val_loss"] == result.val_losses[6]
    assert metadata["val_loss_step"] == 6
    backend = get_backend("torch")
    exported = backend.export(result.model)
    for name, value in checkpoint.params.items():
        np.testing.assert_array_equal(value, exported[name], err_msg=name)
    for name in ("tok_embed.weight", "blocks.0.ln1.scale"):
        assert np.any(checkpoint.optimizer.m[name] != 0), f"first moment of {name} is all zero"
        assert np.all(checkpoint.optimizer.v[name] >= 0), f"second moment of {name} is negative"


def test_val_loss_recomputes_from_checkpoint(tmp_path, corpus):
    train("torch", SETTINGS.replace(steps=4), tmp_path, config=CONFIG, corpus=corpus)
    checkpoint = load_checkpoint_full(tmp_path / "last.safetensors")
    backend = get_backend("torch")
    model = backend.load(checkpoint.params, checkpoint.config)
    batches = validation_batches(corpus.validation, SETTINGS.batch_size, CONFIG.context_length, SETTINGS.eval_batches)
    assert validation_loss(backend, model, batches) == checkpoint.metadata["val_loss"]


def test_periodic_checkpoints(tmp_path, corpus):
    steps_on_disk = []

    def record_checkpoint_step(record):
        path = tmp_path / "last.safetensors"
        steps_on_disk.append(load_checkpoint_full(path).optimizer.step if path.exists() else None)

    settings = SETTINGS.replace(steps=9, checkpoint_interval=4)
    train("torch", settings, tmp_path, config=CONFIG, corpus=corpus, callback=record_checkpoint_step)
    assert steps_on_disk == [None, None, None, 4, 4, 4, 4, 8, 9]


def test_resume_repeats_uninterrupted_run(runs, tmp_path):
    expected = runs.full("torch", "float32")
    train("torch", SETTINGS, tmp_path, config=CONFIG, corpus=runs.corpus, stop_at=7)
    second = train("torch", SETTINGS, tmp_path, resume=tmp_path / "last.safetensors", corpus=runs.corpus, stop_at=15)
    third = train("torch", SETTINGS, tmp_path, resume=tmp_path / "last.safetensors", corpus=runs.corpus)
    assert second.losses + third.losses == expected.losses[7:]
    lines = read_metrics(tmp_path / "metrics.jsonl")
    assert [line["step"] for line in lines] == list(range(1, 21))
    assert [line["loss"] for line in lines] == expected.losses


def test_resume_in_place_drops_later_metrics(tmp_path, corpus):
    checkpoint = tmp_path / "last.safetensors"
    train("torch", SETTINGS, tmp_path, config=CONFIG, corpus=corpus, stop_at=5)
    shutil.copy(checkpoint, tmp_path / "step5.safetensors")
    train("torch", SETTINGS, tmp_path, resume=checkpoint, corpus=corpus, stop_at=8)
    shutil.copy(tmp_path / "step5.safetensors", checkpoint)
    train("torch", SETTINGS, tmp_path, resume=checkpoint, corpus=corpus, stop_at=10)
    steps = [line["step"] for line in read_metrics(tmp_path / "metrics.jsonl")]
    assert steps == list(range(1, 11))


def test_resume_into_new_folder(tmp_path, runs):
    result = train("torch", SETTINGS, tmp_path / "next", resume=runs.half("torch", "float32"), corpus=runs.corpus)
    steps = [line["step"] for line in read_metrics(result.metrics_path)]
    assert steps == list(range(HALF + 1, SETTINGS.steps + 1))


def test_interrupt_from_callback_saves_checkpoint(tmp_path, runs):
    def interrupt_at_step_7(record):
        if record["step"] == 7:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as interrupted:
        train("torch", SETTINGS, tmp_path, config=CONFIG, corpus=runs.corpus, callback=interrupt_at_step_7)
    assert interrupted.value.step == 7
    checkpoint = load_checkpoint_full(interrupted.value.checkpoint_path)
    assert checkpoint.optimizer.step == 7
    assert checkpoint.metadata["step"] == 7
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == 7
    resumed = train("torch", SETTINGS, tmp_path, resume=interrupted.value.checkpoint_path, corpus=runs.corpus)
    assert resumed.losses == runs.full("torch", "float32").losses[7:]


def test_sigint_stops_after_current_step(tmp_path, corpus):
    previous_handler = signal.getsignal(signal.SIGINT)

    def press_ctrl_c_at_step_3(record):
        if record["step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted) as interrupted:
        train("torch", SETTINGS, tmp_path, config=CONFIG, corpus=corpus, callback=press_ctrl_c_at_step_3)
    assert interrupted.value.step == 3
    assert load_checkpoint_full(tmp_path / "last.safetensors").optimizer.step == 3
    assert signal.getsignal(signal.SIGINT) is previous_handler


def test_interrupt_inside_update_saves_nothing(tmp_path, corpus, monkeypatch):
    backend = get_backend("torch")
    make_trainer = backend.make_trainer

    def make_interrupted_trainer(model, adamw, state=None, seed=0):
        trainer = make_trainer(model, adamw, state=state, seed=seed)
        step = trainer.step

        def step_until_5(tokens, targets, lr):
            if trainer.state().step == 4:
                raise KeyboardInterrupt
            return step(tokens, targets, lr)

        trainer.step = step_until_5
        return trainer

    monkeypatch.setattr(backend, "make_trainer", make_interrupted_trainer)
    with pytest.raises(KeyboardInterrupt) as interrupted:
        train("torch", SETTINGS, tmp_path, config=CONFIG, corpus=corpus)
    assert not isinstance(interrupted.value, TrainingInterrupted)
    assert not (tmp_path / "last.safetensors").exists()
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == 4


def test_non_finite_loss_stops_training(tmp_path, corpus, monkeypatch):
    backend = get_backend("torch")
    make_trainer = backend.make_trainer

    def make_diverging_trainer(model, adamw, state=None, seed=0):
        trainer = make_trainer(model, adamw, state=state, seed=seed)
        trainer.step = lambda tokens, targets, lr: float("nan")
        return trainer

    monkeypatch.setattr(backend, "make_trainer", make_diverging_trainer)
    with pytest.raises(TrainingDiverged, match="loss is nan at step 1"):
        train("torch", SETTINGS, tmp_path, config=CONFIG, corpus=corpus)


def test_existing_checkpoint_needs_overwrite(tmp_path, corpus):
    settings = SETTINGS.replace(steps=3)
    train("torch", settings, tmp_path, config=CONFIG, corpus=corpus)
    with pytest.raises(Exception, match="already exists; pass --resume"):
        train("torch", settings, tmp_path, config=CONFIG, corpus=corpus)
    train("torch", settings.replace(steps=2), tmp_path, config=CONFIG, corpus=corpus, overwrite=True)
    assert [line["step"] for line in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]


def test_weights_only_checkpoint_cannot_resume(tmp_path, corpus):
    path = tmp_path / "init.safetensors"
    save_checkpoint(path, init_parameters(CONFIG), CONFIG)
    with pytest.raises(ValueError, match="contains no optimizer state"):
        train("torch", SETTINGS, tmp_path / "run", resume=path, corpus=corpus)


def test_init_from_weights_only_checkpoint(tmp_path, corpus):
    params = init_parameters(CONFIG, seed=7)
    path = tmp_path / "init.safetensors"
    save_checkpoint(path, params, CONFIG, metadata={"tokenizer": {"kind": "bytes"}})
    result = train("torch", SETTINGS.replace(steps=3), tmp_path / "run", init_from=path, corpus=corpus)
    assert (result.start_step, result.end_step) == (0, 3)
    # The first loss is computed before the first update, so it is the loss of the file's params.
    backend = get_backend("torch")
    inputs, targets = shared.train.get_batch(corpus.train, SETTINGS.batch_size, CONFIG.context_length, SETTINGS.seed, 0)
    expected_loss, _ = backend.loss_and_grads(backend.load(params, CONFIG), inputs, targets)
    assert_close(result.losses[0], expected_loss, "first loss after init_from", "float32")
    final = load_checkpoint_full(result.checkpoint_path)
    assert final.config == CONFIG
    assert final.optimizer.step == 3


def test_init_from_training_checkpoint_restarts_at_zero(tmp_path, runs):
    half = runs.half("torch", "float32")
    result = train("torch", SETTINGS.replace(steps=2), tmp_path, init_from=half, corpus=runs.corpus)
    assert (result.start_step, result.end_step) == (0, 2)
    assert load_checkpoint_full(result.checkpoint_path).optimizer.step == 2


def test_init_from_and_resume_exclusive(tmp_path, runs):
    half = runs.half("torch", "float32")
    with pytest.raises(ValueError, match="not both"):
        train("torch", SETTINGS, tmp_path, init_from=half, resume=half, corpus=runs.corpus)


def test_init_from_rejects_other_config(tmp_path, corpus):
    path = tmp_path / "init.safetensors"
    save_checkpoint(path, init_parameters(CONFIG), CONFIG)
    other = CONFIG.replace(d_model=64)
    with pytest.raises(ValueError, match="config differs from the init_from checkpoint's config"):
        train("torch", SETTINGS, tmp_path / "run", config=other, init_from=path, corpus=corpus)


def test_finished_run_has_nothing_to_train(tmp_path, runs):
    finished = runs.full("torch", "float32").checkpoint_path
    with pytest.raises(ValueError, match="nothing to train: the run is at step 20 and would stop at step 20"):
        train("torch", SETTINGS, tmp_path, resume=finished, corpus=runs.corpus)


def test_stop_at_beyond_schedule(tmp_path, corpus):
    with pytest.raises(ValueError, match="stop_at 21 is beyond the schedule's 20 steps"):
        train("torch", SETTINGS, tmp_path, config=CONFIG, corpus=corpus, stop_at=21)


def test_short_text_is_rejected(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("x" * (minimum_corpus_tokens(CONFIG.context_length) - 1))
    with pytest.raises(ValueError, match="too short"):
        train("torch", SETTINGS, tmp_path / "run", config=CONFIG, corpus=load_corpus(path))


def test_text_file_training(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    corpus = load_corpus(path)
    result = train("torch", SETTINGS.replace(steps=5), tmp_path / "run", config=CONFIG, corpus=corpus)
    metadata = load_checkpoint_full(result.checkpoint_path).metadata
    assert metadata["data"]["text_path"] == str(path)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"steps": 0}, "steps must be a positive integer, got 0"),
        ({"batch_size": 2.0}, "batch_size must be a positive integer, got 2.0"),
        ({"eval_interval": -1}, "eval_interval must be a non-negative integer, got -1"),
        ({"warmup_steps": -1}, "warmup_steps must be a non-negative integer, got -1"),
        ({"min_lr_ratio": 1.5}, "min_lr_ratio must satisfy 0 <= ratio <= 1, got 1.5"),
        ({"dtype": "float16"}, "dtype 'float16' is not supported"),
        ({"lr": 0.0}, "lr must be > 0, got 0.0"),
        ({"beta2": 1.0}, "beta2 must satisfy 0 <= beta2 < 1, got 1.0"),
    ],
)
def test_invalid_settings_message(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainSettings(**changes)


def test_default_warmup_is_tenth_of_steps():
    assert TrainSettings(steps=250).warmup_steps == 25
    assert TrainSettings(steps=250, warmup_steps=0).warmup_steps == 0


# The command line.


def test_cli_train_then_resume(tmp_path, capsys, runs):
    out = tmp_path / "run"
    first = ["train", "--out", str(out), "--steps", "20", "--stop-at", "10", *CLI_MODEL, *CLI_SETTINGS]
    assert main(first) == 0
    assert "steps 0 -> 10 of 20" in capsys.readouterr().out
    # The resumed run takes its schedule, batch size and seed from the checkpoint.
    assert main(["train", "--resume", str(out / "last.safetensors"), "--out", str(out), "--no-progress"]) == 0
    assert "steps 10 -> 20 of 20" in capsys.readouterr().out
    lines = read_metrics(out / "metrics.jsonl")
    assert [line["loss"] for line in lines] == runs.full("torch", "float32").losses


@pytest.mark.parametrize("second", ["jax", "numpy"])
def test_cli_resume_on_other_backend(tmp_path, capsys, second):
    require_backend(second)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--steps", "6", "--stop-at", "3", *CLI_MODEL, *CLI_SETTINGS]) == 0
    arguments = ["train", "--resume", str(out / "last.safetensors"), "--backend", second, "--out", str(out), "--no-progress"]
    assert main(arguments) == 0
    lines = read_metrics(out / "metrics.jsonl")
    assert [line["backend"] for line in lines] == ["torch"] * 3 + [second] * 3


def test_cli_longer_schedule_on_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--steps", "4", *CLI_MODEL, *CLI_SETTINGS]) == 0
    assert main(["train", "--resume", str(out / "last.safetensors"), "--out", str(out), "--steps", "6", "--no-progress"]) == 0
    metadata = load_checkpoint_full(out / "last.safetensors").metadata
    assert metadata["training"]["steps"] == 6
    # The recorded warm-up stays; only the cosine is stretched to the new length.
    assert metadata["training"]["warmup_steps"] == 4


def test_cli_resume_rejects_model_options(tmp_path, capsys, runs):
    checkpoint = runs.half("torch", "float32")
    arguments = ["train", "--resume", str(checkpoint), "--out", str(tmp_path), "--d-model", "64", "--preset", "tiny"]
    assert main(arguments) == 2
    error = capsys.readouterr().err
    assert "--preset, --d-model cannot be combined with --resume" in error


def test_cli_init_from_trigpt_init(tmp_path, capsys):
    init_path = tmp_path / "init.safetensors"
    assert main(["init", *CLI_MODEL, "--seed", "3", "-o", str(init_path)]) == 0
    out = tmp_path / "run"
    assert main(["train", "--init-from", str(init_path), "--out", str(out), "--steps", "2", *CLI_SETTINGS]) == 0
    assert "steps 0 -> 2 of 2" in capsys.readouterr().out
    final = load_checkpoint_full(out / "last.safetensors")
    assert final.config == load_checkpoint_full(init_path).config
    assert final.optimizer.step == 2


def test_cli_init_from_rejects_model_options(tmp_path, capsys):
    init_path = tmp_path / "init.safetensors"
    save_checkpoint(init_path, init_parameters(CONFIG), CONFIG)
    arguments = ["train", "--init-from", str(init_path), "--out", str(tmp_path / "run"), "--num-layers", "3"]
    assert main(arguments) == 2
    assert "--num-layers cannot be combined with --init-from" in capsys.readouterr().err


def test_cli_init_from_with_resume_rejected(tmp_path, capsys):
    init_path = tmp_path / "init.safetensors"
    save_checkpoint(init_path, init_parameters(CONFIG), CONFIG)
    arguments = ["train", "--init-from", str(init_path), "--resume", str(init_path), "--out", str(tmp_path / "run")]
    assert main(arguments) == 2
    assert "--resume and --init-from cannot be combined" in capsys.readouterr().err


def text_file(tmp_path, kind):
    path = tmp_path / f"{kind}.txt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "latin1":
        path.write_bytes("déjà vu ".encode("latin-1") * 200)
    elif kind == "short":
        path.write_text("x" * 100)
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("empty", "is empty"),
        ("latin1", "is not valid UTF-8"),
        ("short", "is too short"),
        ("missing", "not found"),
    ],
)
def test_cli_bad_text_is_one_line(tmp_path, capsys, kind, message):
    path = text_file(tmp_path, kind)
    arguments = ["train", "--out", str(tmp_path / "run"), "--text", str(path), "--steps", "2", *CLI_MODEL, *CLI_SETTINGS]
    assert main(arguments) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert error.startswith("trigpt train: error: ")
    assert str(path) in error
    assert message in error
    assert not (tmp_path / "run" / "last.safetensors").exists()


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--lr", "-1", "--lr must be > 0, got -1.0"),
        ("--beta1", "1.5", "--beta1 must satisfy 0 <= beta1 < 1, got 1.5"),
        ("--weight-decay", "-0.1", "--weight-decay must be >= 0, got -0.1"),
        ("--warmup-steps", "-3", "--warmup-steps must be a non-negative integer, got -3"),
        ("--min-lr-ratio", "2", "--min-lr-ratio must satisfy 0 <= ratio <= 1, got 2.0"),
        ("--batch-size", "0", "--batch-size must be a positive integer, got 0"),
    ],
)
def test_cli_bad_setting_names_option(tmp_path, capsys, option, value, message):
    arguments = ["train", "--out", str(tmp_path / "run"), *CLI_MODEL, *CLI_SETTINGS, option, value]
    assert main(arguments) == 2
    error = capsys.readouterr().err.strip()
    assert error == f"trigpt train: error: {message}"
    assert not (tmp_path / "run").exists()


def test_cli_ctrl_c_saves_and_exits_130(tmp_path, capsys, monkeypatch):
    get_batch = shared.train.get_batch

    def get_batch_then_press_ctrl_c(tokens, batch_size, context_length, seed, index):
        if index == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return get_batch(tokens, batch_size, context_length, seed, index)

    monkeypatch.setattr(shared.train, "get_batch", get_batch_then_press_ctrl_c)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--steps", "10", *CLI_MODEL, *CLI_SETTINGS]) == 130
    error = capsys.readouterr().err
    assert "interrupted after step 3" in error
    assert f"trigpt train --resume {out / 'last.safetensors'}" in error
    assert load_checkpoint_full(out / "last.safetensors").optimizer.step == 3


def test_cli_process_ctrl_c(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "shared.cli", "train", "--out", str(out), "--steps", "100000", *CLI_MODEL, *CLI_SETTINGS]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        assert process.poll() is None, f"trigpt train exited early: {process.communicate()[1]}"
        assert time.monotonic() < deadline, "trigpt train wrote no metrics within 120 s"
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, error = process.communicate(timeout=120)
    assert process.returncode == 130, error
    assert "continue with: trigpt train --resume" in error
    assert "Traceback" not in error
    steps = [line["step"] for line in read_metrics(metrics)]
    assert load_checkpoint_full(out / "last.safetensors").optimizer.step == steps[-1]


def test_cli_help_lists_train_options(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = capsys.readouterr().out
    for option in ("--resume", "--init-from", "--steps", "--warmup-steps", "--min-lr-ratio", "--max-grad-norm", "--eval-interval",
                   "--checkpoint-interval", "--text", "--dtype", "--stop-at"):
        assert option in help_text
