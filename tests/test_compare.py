"""trigpt compare: the exit status gates CI, and the report names the first divergent point."""

import json

import pytest

from shared.cli import main
from shared.config import GPTConfig
from shared.weights import init_parameters, save_checkpoint

CONFIG = GPTConfig(vocab_size=13, context_length=8, d_model=16, num_heads=2, num_layers=3, dropout=0.0)


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, init_parameters(CONFIG, seed=0), CONFIG)
    return path


def test_agreeing_backends_exit_zero(checkpoint, tmp_path, capsys):
    report_path = tmp_path / "report.json"
    status = main(["compare", str(checkpoint), "--backends", "torch,numpy", "--dtype", "float64", "--json", str(report_path)])
    out = capsys.readouterr().out
    assert status == 0
    assert "within tolerance" in out
    report = json.loads(report_path.read_text())
    assert report["ok"] is True
    assert report["first_divergence"] is None
    points = [d["point"] for d in report["differences"]]
    assert points[:5] == ["embed", "blocks.0", "blocks.1", "blocks.2", "final_ln"]
    assert "loss" in points
    assert "grad blocks.2.mlp.fc2.weight" in points


def test_perturbed_backend_exits_one_and_names_point(checkpoint, tmp_path, capsys):
    report_path = tmp_path / "report.json"
    arguments = ["compare", str(checkpoint), "--backends", "torch,numpy", "--json", str(report_path)]
    status = main(arguments + ["--perturb", "numpy:blocks.1.attn.qkv.weight:1e-3"])
    out = capsys.readouterr().out
    assert status == 1
    assert "first divergence: blocks.1 output, torch vs numpy" in out
    report = json.loads(report_path.read_text())
    assert report["ok"] is False
    assert report["first_divergence"]["point"] == "blocks.1"
    earlier = [d for d in report["differences"] if d["point"] in ("embed", "blocks.0")]
    assert earlier and all(d["ok"] for d in earlier)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--backends", "torch"], "at least two different backends"),
        (["--backends", "torch,mxnet"], "unknown backend(s) mxnet"),
        (["--seq-len", "9"], "--seq-len 9 must be between 1 and the context length 8"),
        (["--seq-len", "0"], "--seq-len 0 must be between 1 and the context length 8"),
        (["--perturb", "numpy:nope:1"], "tensor 'nope'"),
    ],
)
def test_bad_arguments(checkpoint, capsys, extra, message):
    assert main(["compare", str(checkpoint)] + extra) == 2
    assert message in capsys.readouterr().err
