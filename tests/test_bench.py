"""`trigpt bench` on a very small config with one repeat: the report's shape, not its speed."""

import json

import pytest

from shared.bench import (
    BENCH_CONFIG,
    TARGETS,
    forward_flops_per_token,
    Settings,
    generation_length,
    run_worker,
    train_flops_per_token,
)
from shared.cli import main
from shared.config import GPTConfig

SMALL_SIZES = [
    "--vocab-size", "64", "--context-length", "32", "--d-model", "32", "--num-heads", "2", "--num-layers", "2",
]  # fmt: skip


def test_flops_match_hand_count():
    # 10,942,464 parameters; 6 N + 12 L T C = 65,654,784 + 7,077,888 FLOPs per token.
    assert BENCH_CONFIG.num_parameters() == 10_942_464
    assert train_flops_per_token(BENCH_CONFIG, 256) == 72_732_672
    assert forward_flops_per_token(BENCH_CONFIG, 256) == 72_732_672 / 3


def test_generation_stays_inside_context():
    config = GPTConfig.preset("tiny")  # context 128
    assert generation_length(config, Settings(prompt_length=16, new_tokens=256)) == 112
    assert generation_length(config, Settings(prompt_length=16, new_tokens=20)) == 20


def test_bench_writes_json_and_png(tmp_path, capsys):
    arguments = [
        "bench", "--preset", "tiny", *SMALL_SIZES, "--backends", "torch,torch-sdpa",
        "--batch-size", "2", "--repeats", "1", "--warmup", "0", "--min-warmup", "0",
        "--new-tokens", "4", "--prompt-length", "2", "--gen-repeats", "1", "--gemm-size", "64", "-o", str(tmp_path),
    ]  # fmt: skip
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    assert "torch-sdpa" in printed
    assert (tmp_path / "bench.png").stat().st_size > 0

    report = json.loads((tmp_path / "bench.json").read_text())
    for key in ("machine", "settings", "peak", "configs", "wall_s", "load_average_start", "load_average_end"):
        assert key in report
    assert set(report["peak"]["paths"]) >= {"numpy", "torch", "torch-onednn", "jax"}
    assert report["peak"]["best_gflops"] > 0

    (summary,) = report["configs"]
    assert summary["name"] == "tiny"
    assert summary["config"]["d_model"] == 32
    assert summary["generation"]["new_tokens"] == 4
    assert set(summary["results"]) == {"torch", "torch-sdpa"}
    for variant in ("torch", "torch-sdpa"):
        result = summary["results"][variant]
        assert "error" not in result, result.get("error")
        for phase in ("forward", "train_step", "generate_cache", "generate_no_cache"):
            assert len(result[phase]["times_s"]) == 1
            assert result[phase]["tokens_per_s_median"] > 0
        assert result["peak_rss_mib"] >= result["rss_after_import_mib"] > 0
        derived = summary["derived"][variant]
        assert 0 < derived["train_mfu"]
        assert derived["cache_speedup"] > 0
    assert summary["derived"]["torch"]["train_vs_torch"] == 1.0
    targets = summary["targets"]
    assert {target["variant"] for target in targets} == {"torch", "torch-sdpa"}
    assert len(targets) == len([target for target in TARGETS if target.variant in ("torch", "torch-sdpa")])


def test_failing_worker_returns_error():
    # d_model 7 with 12 heads fails inside the subprocess; the parent gets the last stderr line.
    task = {"kind": "backend", "variant": "torch", "config": {"d_model": 7}, "settings": {}}
    result = run_worker(task, timeout_s=120)
    assert "divisible by num_heads" in result["error"]


@pytest.mark.parametrize(
    "options, message",
    [
        (["--backends", "torch,tensorflow"], "unknown backend 'tensorflow'"),
        (["--configs", "tiny,huge"], "unknown config 'huge'"),
        (["--repeats", "0"], "--repeats must be at least 1"),
        (["--prompt-length", "128"], "leaves no room to generate"),
    ],
)
def test_bench_rejects_bad_options(tmp_path, capsys, options, message):
    assert main(["bench", *options, "-o", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
