"""The trigpt command: help, the basic subcommands, and one-line errors."""

import subprocess
import sys

import pytest

from shared.cli import main
from shared.weights import load_checkpoint


def run(*args):
    return subprocess.run([sys.executable, "-m", "shared.cli", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_commands():
    result = run("--help")
    assert result.returncode == 0
    for command in ("init", "info", "generate", "prepost"):
        assert command in result.stdout


def test_init_info_generate(tmp_path, capsys):
    path = tmp_path / "model.safetensors"
    assert main(["init", "--preset", "tiny", "--num-layers", "2", "--seed", "3", "-o", str(path)]) == 0
    params, config = load_checkpoint(path)
    assert config.num_layers == 2
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{config.num_parameters():,}" in out
    assert "tied" in out
    arguments = ["generate", str(path), "--prompt-ids", "1,2,3", "--max-new-tokens", "5", "--seed", "42", "--top-k", "20"]
    assert main(arguments) == 0
    first = capsys.readouterr().out.strip()
    assert main(arguments) == 0
    ids = [int(i) for i in first.split(",")]
    assert ids[:3] == [1, 2, 3]
    assert len(ids) == 8
    assert capsys.readouterr().out.strip() == first


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "{model}", "--prompt-ids", "1,x"], "comma-separated integers"),
        (["generate", "{model}", "--prompt-ids", "1,256"], "token id 256 out of range for vocab_size 256"),
        (["generate", "{model}", "--temperature", "0"], "temperature must be > 0"),
        (["generate", "{folder}/absent.safetensors"], "file not found"),
        (["init", "--num-heads", "3", "-o", "{folder}/x.safetensors"], "divisible by num_heads"),
        (["init", "-o", "{folder}/missing/x.safetensors"], "does not exist"),
    ],
)
def test_user_error_is_one_line(tmp_path, args, message):
    model = tmp_path / "model.safetensors"
    assert main(["init", "-o", str(model)]) == 0
    args = [a.format(model=model, folder=tmp_path) for a in args]
    result = run(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr


def test_prepost_prints_ratio(capsys):
    assert main(["prepost"]) == 0
    out = capsys.readouterr().out
    assert "pre-LN" in out
    assert "post-LN" in out
    assert "ratio" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "{model}", "--prompt-ids", "99999999999999999999999"], "out of range"),
        (["generate", "{model}", "--prompt-ids", "1,,2"], "comma-separated integers"),
        (["generate", "{model}", "--temperature", "inf"], "temperature must be > 0 and finite"),
        (["generate", "{model}", "--seed", "-5"], "seed must be a non-negative integer"),
        (["init", "-o", "{folder}/x.npz"], "name it *.safetensors"),
        (["init", "-o", "{model}"], "already exists; pass --overwrite"),
        (["init", "--overwrite", "-o", "{folder}/sub.safetensors"], "it is a folder"),
        (["info", "{folder}/zip.safetensors"], "convert it first"),
        (["compare", "{model}", "--json", "{folder}/missing/report.json"], "does not exist"),
    ],
)
def test_more_user_errors_are_one_line(tmp_path, args, message):
    model = tmp_path / "model.safetensors"
    assert main(["init", "-o", str(model)]) == 0
    (tmp_path / "sub.safetensors").mkdir()
    (tmp_path / "zip.safetensors").write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    args = [a.format(model=model, folder=tmp_path) for a in args]
    result = run(*args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr


def test_written_files_follow_umask(tmp_path):
    import os

    path = tmp_path / "model.safetensors"
    old = os.umask(0o022)
    try:
        assert main(["init", "-o", str(path)]) == 0
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_info_shows_stored_dtype(tmp_path, capsys):
    path = tmp_path / "model.safetensors"
    half = tmp_path / "half.safetensors"
    assert main(["init", "-o", str(path)]) == 0
    assert main(["convert", str(path), str(half), "--dtype", "bfloat16"]) == 0
    capsys.readouterr()
    assert main(["info", str(half)]) == 0
    assert "bfloat16" in capsys.readouterr().out


def test_broken_pipe_is_quiet(tmp_path):
    path = tmp_path / "model.safetensors"
    assert main(["init", "-o", str(path)]) == 0
    result = subprocess.run(
        f"{sys.executable} -m shared.cli info {path} | head -1", shell=True, capture_output=True, text=True, timeout=300
    )
    assert "Traceback" not in result.stderr
    assert result.stdout.startswith("checkpoint")
