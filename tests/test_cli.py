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
    assert f"{config.num_parameters():,}" in out and "tied" in out
    arguments = ["generate", str(path), "--prompt-ids", "1,2,3", "--max-new-tokens", "5", "--seed", "42", "--top-k", "20"]
    assert main(arguments) == 0
    first = capsys.readouterr().out.strip()
    assert main(arguments) == 0
    ids = [int(i) for i in first.split(",")]
    assert ids[:3] == [1, 2, 3] and len(ids) == 8
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
    assert "pre-LN" in out and "post-LN" in out and "ratio" in out
