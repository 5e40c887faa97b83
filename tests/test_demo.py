"""trigpt demo: one --quick run checked part by part, plus the pieces that need no training."""

from __future__ import annotations

import contextlib
import io
import json
import re

import pytest

from shared.cli import main
from shared.demo import (
    PLOT_NAME,
    QUICK_PLAN,
    REPORT_NAME,
    BackendRow,
    Continuation,
    DemoReport,
    PairRow,
    _prepare_out_dir,
    find_failures,
    segment_boundaries,
)
from shared.errors import UserError
from shared.weights import init_parameters, save_checkpoint

BACKENDS = ["torch", "jax", "numpy"]
PAIRS = ["torch vs jax", "torch vs numpy", "jax vs numpy"]
PROMPT = "The meaning of "


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """Run `trigpt demo --quick` once and return (exit status, printed report, out folder)."""
    out = tmp_path_factory.mktemp("demo")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(["demo", "--quick", "--out", str(out), "--no-progress", "--prompt", PROMPT])
    return status, printed.getvalue(), out


@pytest.fixture(scope="module")
def report(quick_demo):
    _, _, out = quick_demo
    return json.loads((out / REPORT_NAME).read_text(encoding="utf-8"))


def test_quick_demo_passes(quick_demo):
    status, printed, _ = quick_demo
    assert status == 0, printed
    assert "check passed" in printed


def test_segments_run_in_order(quick_demo, report):
    _, _, out = quick_demo
    segments = report["segments"]
    assert [segment["backend"] for segment in segments] == BACKENDS
    steps = QUICK_PLAN.settings.steps
    assert [(s["start_step"], s["end_step"]) for s in segments] == [(0, steps // 3), (steps // 3, 2 * steps // 3), (2 * steps // 3, steps)]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, steps + 1))
    assert [line["backend"] for line in lines] == [name for name in BACKENDS for _ in range(steps // 3)]


def test_segment_lines_printed(quick_demo):
    _, printed, _ = quick_demo
    steps = QUICK_PLAN.settings.steps
    for backend_name, start in zip(BACKENDS, range(0, steps, steps // 3)):
        pattern = rf"^{backend_name}\s+{start}-{start + steps // 3}\s+[\d.]+ s\s+[\d,]+\s+[\d.]+\s+[\d.]+$"
        assert re.search(pattern, printed, re.MULTILINE), f"no segment line for {backend_name}:\n{printed}"


def test_val_loss_below_baseline(report):
    assert report["segments"][-1]["val_loss"] < report["baseline_loss"]
    for row in report["backends"]:
        assert row["val_loss"] < report["baseline_loss"], row["backend"]


def test_loss_plot_is_png(quick_demo):
    _, _, out = quick_demo
    data = (out / PLOT_NAME).read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")


def test_table_rows(quick_demo, report):
    _, printed, _ = quick_demo
    assert [row["backend"] for row in report["backends"]] == BACKENDS
    for backend_name in BACKENDS:
        assert re.search(rf"^{backend_name}\s+\d+\.\d{{4}}\s+[\d.]+$", printed, re.MULTILINE), backend_name
    assert [f"{pair['first']} vs {pair['second']}" for pair in report["pairs"]] == PAIRS
    for pair_name in PAIRS:
        line = next((line for line in printed.splitlines() if line.startswith(pair_name)), None)
        assert line is not None, f"no table row for {pair_name}"
        assert line.endswith("ok")
    for pair in report["pairs"]:
        assert pair["logit_diff_float64"] <= pair["allowed_logit_diff_float64"]
        assert pair["val_loss_diff"] <= pair["allowed_val_loss_diff"]


def test_continuations_identical(quick_demo, report):
    _, printed, _ = quick_demo
    assert [continuation["mode"] for continuation in report["continuations"]] == ["greedy", "sampled"]
    for continuation in report["continuations"]:
        assert continuation["identical"], continuation["texts"]
        assert sorted(continuation["texts"]) == sorted(BACKENDS)
        assert len(set(continuation["texts"].values())) == 1
        assert continuation["texts"]["torch"].startswith(PROMPT)
        assert f"{continuation['mode']}: identical in torch, jax, numpy" in printed


def test_segment_boundaries():
    assert segment_boundaries(600) == [200, 400, 600]
    assert segment_boundaries(3) == [1, 2, 3]
    assert segment_boundaries(10) == [3, 7, 10]
    with pytest.raises(UserError, match="needs at least 3 steps"):
        segment_boundaries(2)


def test_too_few_steps_exit_status(tmp_path, capsys):
    assert main(["demo", "--quick", "--steps", "2", "--out", str(tmp_path)]) == 2
    assert "needs at least 3 steps" in capsys.readouterr().err


def test_foreign_run_folder_rejected(tmp_path, capsys):
    config = QUICK_PLAN.config
    save_checkpoint(tmp_path / "last.safetensors", init_parameters(config), config)
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 2
    assert "was not written by `trigpt demo`" in capsys.readouterr().err


def test_previous_demo_folder_reused(tmp_path):
    config = QUICK_PLAN.config
    save_checkpoint(tmp_path / "last.safetensors", init_parameters(config), config)
    (tmp_path / REPORT_NAME).write_text("{}")
    (tmp_path / PLOT_NAME).write_bytes(b"old plot")
    _prepare_out_dir(tmp_path)
    assert not (tmp_path / PLOT_NAME).exists()
    assert json.loads((tmp_path / REPORT_NAME).read_text()) == {"finished": False}


def failing_report():
    return DemoReport(
        out_dir="runs/demo",
        prompt=PROMPT,
        config=QUICK_PLAN.config.to_dict(),
        settings=QUICK_PLAN.settings.to_dict(),
        baseline_loss=3.2,
        backends=[BackendRow("torch", 3.3, 1.0), BackendRow("jax", 3.3, 1.0)],
        pairs=[
            PairRow(
                "torch", "jax", logit_diff_float32=1e-3, logit_diff_float64=1e-3, allowed_logit_diff_float64=1e-9,
                val_loss_diff=0.0, allowed_val_loss_diff=1e-5,
            )
        ],
        continuations=[Continuation("greedy", {"torch": "a", "jax": "b"}, identical=False)],
    )


def test_failures_name_each_problem():
    failures = find_failures(failing_report())
    assert len(failures) == 4
    assert "torch: validation loss 3.3000 is not below the unigram baseline 3.2000" in failures[0]
    assert "torch vs jax: max float64 logit difference 1.00e-03 (allowed 1.0e-09)" in failures[2]
    assert "the greedy continuations differ between backends" in failures[3]


def test_passing_report_has_no_failures():
    report = failing_report()
    report.backends = [BackendRow("torch", 2.0, 1.0)]
    report.pairs = [PairRow("torch", "jax", 1e-5, 1e-14, 1e-9, 0.0, 1e-5)]
    report.continuations = [Continuation("greedy", {"torch": "a", "jax": "a"}, identical=True)]
    assert find_failures(report) == []
    assert report.passed


def test_help_lists_options(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    help_text = capsys.readouterr().out
    for option in ("--out", "--steps", "--quick", "--seed", "--prompt"):
        assert option in help_text
