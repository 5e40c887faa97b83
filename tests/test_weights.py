"""Canonical parameters and the checkpoint file."""

import json
import math
import struct

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy

from shared.config import GPTConfig
from shared.optim import AdamWState
from shared.weights import (
    CheckpointError,
    init_parameters,
    load_checkpoint,
    load_checkpoint_full,
    parameter_shapes,
    read_safetensors,
    save_checkpoint,
    write_safetensors,
)

SMALL = GPTConfig(vocab_size=64, context_length=16, d_model=32, num_heads=4, num_layers=2)


def test_parameter_shapes_layout():
    shapes = parameter_shapes(SMALL.replace(weight_tying=False))
    assert shapes["tok_embed.weight"] == (64, 32)
    assert shapes["pos_embed.weight"] == (16, 32)
    assert shapes["blocks.1.attn.qkv.weight"] == (32, 96)
    assert shapes["blocks.1.attn.qkv.bias"] == (96,)
    assert shapes["blocks.0.mlp.fc1.weight"] == (32, 128)
    assert shapes["blocks.0.mlp.fc2.weight"] == (128, 32)
    assert shapes["lm_head.weight"] == (32, 64)
    assert list(shapes)[:3] == ["tok_embed.weight", "pos_embed.weight", "blocks.0.ln1.scale"]


def test_no_bias_and_tied_shapes():
    shapes = parameter_shapes(SMALL.replace(use_bias=False))
    assert not any(name.endswith(".bias") for name in shapes)
    assert "lm_head.weight" not in shapes


def test_init_statistics():
    config = GPTConfig(vocab_size=512, context_length=64, d_model=256, num_heads=4, num_layers=8)
    params = init_parameters(config, seed=0)
    residual_std = 0.02 / math.sqrt(2 * config.num_layers)
    for name, value in params.items():
        if name.endswith((".attn.out_proj.weight", ".mlp.fc2.weight")):
            # Applied once: twice would give 0.02 / (2 * num_layers).
            assert value.std() == pytest.approx(residual_std, rel=0.03), name
        elif name.endswith(".weight"):
            assert value.std() == pytest.approx(0.02, rel=0.03), name
            assert abs(value.mean()) < 0.002, name
        elif name.endswith(".scale"):
            assert np.all(value == 1.0), name
        else:
            assert np.all(value == 0.0), name


def test_init_is_seeded_and_dtype_independent():
    a = init_parameters(SMALL, seed=3)
    b = init_parameters(SMALL, seed=3, dtype=np.float64)
    c = init_parameters(SMALL, seed=4)
    assert all(a[n].dtype == np.float32 and b[n].dtype == np.float64 for n in a)
    assert all(np.array_equal(a[n], b[n].astype(np.float32)) for n in a)
    assert not np.array_equal(a["tok_embed.weight"], c["tok_embed.weight"])


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_checkpoint_round_trip_bit_exact(tmp_path, tied, dtype):
    config = SMALL.replace(weight_tying=tied)
    params = init_parameters(config, seed=1, dtype=dtype)
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, params, config, metadata={"note": "round trip"})
    checkpoint = load_checkpoint_full(path)
    assert checkpoint.config == config
    assert checkpoint.metadata == {"note": "round trip"}
    assert list(checkpoint.params) == list(params)
    for name in params:
        assert checkpoint.params[name].dtype == dtype
        assert checkpoint.params[name].tobytes() == params[name].tobytes(), name


def test_tied_head_stored_once(tmp_path):
    params = init_parameters(SMALL, seed=0)
    params["lm_head.weight"] = params["tok_embed.weight"].T
    path = tmp_path / "tied.safetensors"
    save_checkpoint(path, params, SMALL)
    tensors, _ = read_safetensors(path)
    assert "lm_head.weight" not in tensors


def test_optimizer_state_round_trip(tmp_path):
    params = init_parameters(SMALL, seed=0)
    rng = np.random.default_rng(0)
    m = {n: rng.standard_normal(v.shape).astype(np.float32) for n, v in params.items()}
    v = {n: rng.random(p.shape).astype(np.float32) for n, p in params.items()}
    path = tmp_path / "train.safetensors"
    save_checkpoint(path, params, SMALL, optimizer=AdamWState(step=17, m=m, v=v))
    state = load_checkpoint_full(path).optimizer
    assert state.step == 17
    assert all(np.array_equal(state.m[n], m[n]) and np.array_equal(state.v[n], v[n]) for n in params)
    weights_only = tmp_path / "weights.safetensors"
    save_checkpoint(weights_only, params, SMALL)
    assert load_checkpoint_full(weights_only).optimizer is None


def test_file_readable_by_safetensors_library(tmp_path):
    params = init_parameters(SMALL, seed=0)
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, params, SMALL)
    loaded = safetensors.numpy.load_file(str(path))
    assert all(np.array_equal(loaded[n], params[n]) for n in params)


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, init_parameters(SMALL, seed=0), SMALL)
    return path


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[:-1], id="cut-by-one-byte"),
        pytest.param(lambda data: data[:8], id="cut-to-8-bytes"),
        pytest.param(lambda data: b"", id="empty"),
        pytest.param(lambda data: struct.pack("<Q", 2**40) + data[8:], id="garbage-header-length"),
        pytest.param(lambda data: data[:8] + b"\xff" * 16 + data[24:], id="garbage-header-bytes"),
    ],
)
def test_corrupt_file_names_path(saved, damage):
    saved.write_bytes(damage(saved.read_bytes()))
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(saved)
    assert str(saved) in str(error.value)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="file not found"):
        load_checkpoint(tmp_path / "absent.safetensors")


def test_wrong_width_names_tensor_and_shapes(tmp_path):
    narrow = SMALL.replace(d_model=16)
    path = tmp_path / "narrow.safetensors"
    save_checkpoint(path, init_parameters(narrow, seed=0), narrow)
    tensors, metadata = read_safetensors(path)
    metadata["config"] = SMALL.to_json()  # the config claims d_model 32
    write_safetensors(path, tensors, metadata)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert "tok_embed.weight" in message
    assert "(64, 16)" in message
    assert "(64, 32)" in message


def test_missing_and_unexpected_tensors(tmp_path, saved):
    tensors, metadata = read_safetensors(saved)
    del tensors["blocks.1.mlp.fc2.bias"]
    write_safetensors(saved, tensors, metadata)
    with pytest.raises(CheckpointError, match="missing tensor.*blocks.1.mlp.fc2.bias"):
        load_checkpoint(saved)
    tensors["blocks.1.mlp.fc2.bias"] = np.zeros(32, np.float32)
    tensors["lm_head.weight"] = np.zeros((32, 64), np.float32)
    write_safetensors(saved, tensors, metadata)
    with pytest.raises(CheckpointError, match="unexpected tensor.*lm_head.weight.*weight_tying=True"):
        load_checkpoint(saved)


def test_non_finite_values_rejected(saved):
    tensors, metadata = read_safetensors(saved)
    tensors["final_ln.scale"] = tensors["final_ln.scale"].copy()
    tensors["final_ln.scale"][3] = np.nan
    write_safetensors(saved, tensors, metadata)
    with pytest.raises(CheckpointError, match="final_ln.scale.*contains 1 non-finite"):
        load_checkpoint(saved)


def test_unknown_format_version(saved):
    tensors, metadata = read_safetensors(saved)
    metadata["format_version"] = "99"
    write_safetensors(saved, tensors, metadata)
    with pytest.raises(CheckpointError, match="unknown format version '99'"):
        load_checkpoint(saved)


def test_foreign_safetensors_file(tmp_path):
    path = tmp_path / "foreign.safetensors"
    safetensors.numpy.save_file({"wte": np.zeros((4, 4), np.float32)}, str(path))
    with pytest.raises(CheckpointError, match="not a trigpt checkpoint.*trigpt convert"):
        load_checkpoint(path)


@pytest.mark.parametrize("low", [np.float16, ml_dtypes.bfloat16])
def test_half_precision_files_upcast(tmp_path, low):
    params = init_parameters(SMALL, seed=0)
    path = tmp_path / "half.safetensors"
    save_checkpoint(path, {n: v.astype(low) for n, v in params.items()}, SMALL)
    loaded, _ = load_checkpoint(path)
    assert loaded["tok_embed.weight"].dtype == np.float32
    assert np.array_equal(loaded["tok_embed.weight"], params["tok_embed.weight"].astype(low).astype(np.float32))
    loaded64, _ = load_checkpoint(path, dtype=np.float64)
    assert loaded64["blocks.0.attn.qkv.weight"].dtype == np.float64


def test_failed_save_leaves_old_file(saved):
    before = saved.read_bytes()
    params = init_parameters(SMALL, seed=0)
    params["tok_embed.weight"] = params["tok_embed.weight"].astype(np.int32)  # not a float dtype: fails mid-write
    with pytest.raises(CheckpointError, match="dtype int32"):
        save_checkpoint(saved, params, SMALL)
    assert saved.read_bytes() == before
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]


def test_save_into_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        save_checkpoint(tmp_path / "no" / "model.safetensors", init_parameters(SMALL), SMALL)


def test_metadata_holds_config_json(saved):
    _, metadata = read_safetensors(saved)
    assert metadata["format"] == "trigpt"
    assert GPTConfig.from_dict(json.loads(metadata["config"])) == SMALL


def test_crash_mid_write_leaves_old_file(saved, monkeypatch):
    before = saved.read_bytes()

    def crash(descriptor):
        raise OSError("disk full")

    monkeypatch.setattr("shared.weights.os.fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(saved, init_parameters(SMALL, seed=9), SMALL)
    assert saved.read_bytes() == before
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]


def test_invalid_optimizer_metadata(tmp_path):
    params = init_parameters(SMALL, seed=0)
    zeros = {n: np.zeros_like(v) for n, v in params.items()}
    path = tmp_path / "train.safetensors"
    save_checkpoint(path, params, SMALL, optimizer=AdamWState(step=3, m=zeros, v=zeros))
    tensors, metadata = read_safetensors(path)
    metadata["optimizer"] = "{broken"
    write_safetensors(path, tensors, metadata)
    with pytest.raises(CheckpointError, match="optimizer metadata .* is invalid"):
        load_checkpoint_full(path)
