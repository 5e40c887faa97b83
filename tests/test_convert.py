"""Weight conversion: every pair of formats, tying, layout, dtypes and bad input."""

import importlib.util
import itertools
import json
import pathlib
import zipfile

import ml_dtypes
import numpy as np
import pytest
import torch

from shared.cli import main
from shared.config import GPTConfig
from shared.convert import FORMATS, NPZ_HEADER, convert, load_any, save_any
from shared.errors import UserError
from shared.weights import CheckpointError, load_checkpoint_full, parameter_shapes, save_checkpoint
from torch_impl.model import GPTModel

CONFIG = GPTConfig(vocab_size=40, context_length=12, d_model=8, num_heads=2, num_layers=2, dropout=0.0)
FILE_NAMES = {
    "safetensors": "model.safetensors",
    "torch": "model.pt",
    "flax": "model.msgpack",
    "npz": "model.npz",
    "hf": "model_hf",
}
HAS_FLAX = importlib.util.find_spec("flax") is not None and importlib.util.find_spec("jax_impl.convert") is not None
AVAILABLE = [name for name in FORMATS if name != "flax" or HAS_FLAX]
NEEDS_CONFIG = ("torch", "flax")


def make_config(tied: bool) -> GPTConfig:
    return CONFIG.replace(weight_tying=tied)


def make_params(config: GPTConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random values everywhere (biases and LayerNorm too), and a non-symmetric square out_proj."""
    rng = np.random.default_rng(seed)
    params = {name: rng.normal(size=shape).astype(np.float32) for name, shape in parameter_shapes(config).items()}
    C = config.d_model
    # Distinct entries, so a transposed copy differs from the original in every off-diagonal element.
    params["blocks.0.attn.out_proj.weight"] = np.arange(C * C, dtype=np.float32).reshape(C, C) / 10
    return params


def path_for(folder: pathlib.Path, format: str, tag: str = "") -> pathlib.Path:
    name = FILE_NAMES[format]
    stem, dot, suffix = name.partition(".")
    return folder / f"{stem}{tag}{dot}{suffix}"


def assert_same_params(actual: dict, expected: dict) -> None:
    assert list(actual) == list(expected)
    for name in expected:
        assert actual[name].dtype == expected[name].dtype, name
        assert actual[name].shape == expected[name].shape, name
        assert np.array_equal(actual[name], expected[name]), name


@pytest.fixture(params=[True, False], ids=["tied", "untied"])
def tied(request):
    return request.param


@pytest.mark.parametrize("source, destination", list(itertools.product(AVAILABLE, AVAILABLE)))
def test_round_trip_bit_exact(tmp_path, source, destination, tied):
    config = make_config(tied)
    params = make_params(config)
    source_path = path_for(tmp_path, source, "_a")
    destination_path = path_for(tmp_path, destination, "_b")
    back_path = path_for(tmp_path, source, "_c")
    save_any(source_path, params, config)

    config_argument = config if source in NEEDS_CONFIG else None
    convert(source_path, destination_path, config=config_argument)
    loaded, loaded_config, _ = load_any(destination_path, config=config if destination in NEEDS_CONFIG else None)
    assert loaded_config == config
    assert_same_params(loaded, params)

    convert(destination_path, back_path, config=config if destination in NEEDS_CONFIG else None)
    loaded, _, _ = load_any(back_path, config=config_argument)
    assert_same_params(loaded, params)


def test_square_weight_untransposed_through_chain(tmp_path, tied):
    config = make_config(tied)
    params = make_params(config)
    expected = params["blocks.0.attn.out_proj.weight"]
    assert not np.array_equal(expected, expected.T)

    chain = ["safetensors", "torch", *(["flax"] if HAS_FLAX else []), "npz", "hf", "safetensors"]
    current = path_for(tmp_path, chain[0], "_0")
    save_any(current, params, config)
    for step, format in enumerate(chain[1:], start=1):
        following = path_for(tmp_path, format, f"_{step}")
        convert(current, following, config=config)
        current = following

    final, _, _ = load_any(current)
    assert np.array_equal(final["blocks.0.attn.out_proj.weight"], expected)
    assert_same_params(final, params)


def test_config_and_metadata_travel(tmp_path):
    config = CONFIG.replace(pre_ln=True, gelu_approximation="none", layer_norm_eps=1e-6, mlp_expansion=2)
    params = make_params(config)
    metadata = {"seed": 7, "tokenizer": {"kind": "bytes"}}
    save_any(tmp_path / "a.safetensors", params, config, metadata=metadata)
    convert(tmp_path / "a.safetensors", tmp_path / "b.npz")
    convert(tmp_path / "b.npz", tmp_path / "c.safetensors")
    checkpoint = load_checkpoint_full(tmp_path / "c.safetensors")
    assert checkpoint.config == config
    assert checkpoint.metadata == metadata


def test_torch_file_is_gptmodel_state_dict(tmp_path, tied):
    config = make_config(tied)
    params = make_params(config)
    save_any(tmp_path / "model.pt", params, config)
    state_dict = torch.load(tmp_path / "model.pt", weights_only=True)

    model = GPTModel(config)
    model.load_state_dict(state_dict, strict=True)
    assert list(state_dict) == list(model.state_dict())
    # nn.Linear stores (out, in), so the canonical (in, out) matrix arrives transposed.
    out_proj = state_dict["blocks.0.attn.out_proj.weight"].numpy()
    assert np.array_equal(out_proj, params["blocks.0.attn.out_proj.weight"].T)
    if tied:
        assert state_dict["lm_head.weight"].data_ptr() == state_dict["tok_embed.weight"].data_ptr()


def test_tied_head_stored_once(tmp_path):
    config = make_config(True)
    params = make_params(config)
    for format in AVAILABLE:
        save_any(path_for(tmp_path, format), params, config)

    storages = [n for n in zipfile.ZipFile(tmp_path / "model.pt").namelist() if "/data/" in n and not n.endswith("/")]
    assert len(storages) == len(parameter_shapes(config))
    with np.load(tmp_path / "model.npz", allow_pickle=False) as archive:
        assert "lm_head.weight" not in archive.files
    hf_config = json.loads((tmp_path / "model_hf" / "config.json").read_text())
    assert hf_config["tie_word_embeddings"] is True
    from safetensors import safe_open

    with safe_open(tmp_path / "model_hf" / "model.safetensors", "np") as file:
        assert "lm_head.weight" not in file.keys()


def test_untied_torch_file_needs_untied_config(tmp_path):
    config = make_config(False)
    save_any(tmp_path / "model.pt", make_params(config), config)
    with pytest.raises(CheckpointError, match="lm_head.weight differs from tok_embed.weight"):
        load_any(tmp_path / "model.pt", config=make_config(True))


def test_npz_reads_without_pickle(tmp_path):
    config = make_config(True)
    save_any(tmp_path / "model.npz", make_params(config), config, dtype="bfloat16")
    with np.load(tmp_path / "model.npz", allow_pickle=False) as archive:
        header = json.loads(str(archive[NPZ_HEADER]))
    assert header["config"] == config.to_dict()
    assert set(header["bfloat16"]) == set(parameter_shapes(config))


def test_plain_npz_needs_config(tmp_path):
    config = make_config(True)
    params = make_params(config)
    np.savez(tmp_path / "plain.npz", **params)
    with pytest.raises(UserError, match="--config"):
        load_any(tmp_path / "plain.npz")
    loaded, _, _ = load_any(tmp_path / "plain.npz", config=config)
    assert_same_params(loaded, params)


@pytest.mark.parametrize("format", NEEDS_CONFIG)
def test_config_flag_required(tmp_path, format):
    if format == "flax" and not HAS_FLAX:
        pytest.skip("jax_impl.convert or flax is not importable")
    config = make_config(True)
    path = path_for(tmp_path, format)
    save_any(path, make_params(config), config)
    with pytest.raises(UserError, match=r"does not store the model config; pass it with --config"):
        load_any(path)


def test_conflicting_config_rejected(tmp_path):
    config = make_config(True)
    save_any(tmp_path / "model.safetensors", make_params(config), config)
    with pytest.raises(UserError, match="differs from --config in num_heads 2 vs 4"):
        load_any(tmp_path / "model.safetensors", config=config.replace(num_heads=4))


# Dtypes.


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("format", [name for name in AVAILABLE if name != "safetensors"])
def test_half_precision_through_format(tmp_path, dtype, format):
    config = make_config(False)
    params = make_params(config)
    expected = {name: value.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float16) for name, value in params.items()}

    save_any(tmp_path / "model.safetensors", params, config)
    convert(tmp_path / "model.safetensors", path_for(tmp_path, format), dtype=dtype)
    config_argument = config if format in NEEDS_CONFIG else None
    loaded, _, _ = load_any(path_for(tmp_path, format), config=config_argument)
    assert_same_params(loaded, expected)

    convert(path_for(tmp_path, format), tmp_path / "back.safetensors", dtype="float32", config=config_argument)
    back, _, _ = load_any(tmp_path / "back.safetensors")
    assert_same_params(back, {name: value.astype(np.float32) for name, value in expected.items()})


def test_float64_round_trip(tmp_path):
    config = make_config(True)
    params = {name: value.astype(np.float64) * (1 + 1e-12) for name, value in make_params(config).items()}
    for format in AVAILABLE:
        path = path_for(tmp_path, format)
        save_any(path, params, config)
        loaded, _, _ = load_any(path, config=config if format in NEEDS_CONFIG else None)
        assert_same_params(loaded, params)


def test_float16_overflow_names_tensor(tmp_path):
    config = make_config(True)
    params = make_params(config)
    params["blocks.1.mlp.fc1.weight"][0, 0] = 1e5
    with pytest.raises(CheckpointError, match=r"blocks.1.mlp.fc1.weight overflows float16.*100000"):
        save_any(tmp_path / "model.safetensors", params, config, dtype="float16")
    assert not (tmp_path / "model.safetensors").exists()


# Unsafe and broken input.


class _TouchOnUnpickle:
    """An object whose unpickling creates a file, as a harmless example of code that a .pt file could run."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_malicious_torch_file_runs_nothing(tmp_path, zip_format):
    marker = tmp_path / "code-ran"
    payload = {"tok_embed.weight": torch.zeros(2, 2), "payload": _TouchOnUnpickle(marker)}
    torch.save(payload, tmp_path / "evil.pt", _use_new_zipfile_serialization=zip_format)

    with pytest.raises(CheckpointError, match=r"evil.pt: rejected, not a plain file of tensors"):
        load_any(tmp_path / "evil.pt", config=make_config(True))
    assert not marker.exists()
    assert main(["convert", str(tmp_path / "evil.pt"), str(tmp_path / "out.safetensors"), "--config", _config_file(tmp_path)]) == 2
    assert not marker.exists()
    assert not (tmp_path / "out.safetensors").exists()

    # The payload is real: an unrestricted unpickler does run it.
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


def _config_file(folder: pathlib.Path) -> str:
    path = folder / "config.json"
    path.write_text(make_config(True).to_json())
    return str(path)


def test_wrapped_state_dict_rejected(tmp_path):
    config = make_config(True)
    torch.save({"model": {"tok_embed.weight": torch.zeros(2)}, "step": 3}, tmp_path / "wrapped.pt")
    with pytest.raises(CheckpointError, match="under the key 'model'"):
        load_any(tmp_path / "wrapped.pt", config=config)


@pytest.mark.parametrize("format", [name for name in AVAILABLE if name != "hf"])
def test_corrupt_file_names_path(tmp_path, format):
    config = make_config(True)
    path = path_for(tmp_path, format)
    save_any(path, make_params(config), config)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(CheckpointError, match=str(path.name)):
        load_any(path, config=config if format in NEEDS_CONFIG else None)


def test_missing_input_file(tmp_path):
    with pytest.raises(CheckpointError, match="file not found"):
        load_any(tmp_path / "absent.npz")


def test_non_finite_weights_rejected(tmp_path):
    config = make_config(True)
    params = make_params(config)
    params["final_ln.scale"][3] = np.nan
    np.savez(tmp_path / "nan.npz", **params)
    with pytest.raises(CheckpointError, match="final_ln.scale contains 1 non-finite"):
        load_any(tmp_path / "nan.npz", config=config)


def test_npz_format_forced_on_other_file(tmp_path):
    config = make_config(True)
    save_any(tmp_path / "model.safetensors", make_params(config), config)
    with pytest.raises(CheckpointError, match="not an .npz file"):
        load_any(tmp_path / "model.safetensors", format="npz")


def test_unknown_extension(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(UserError, match="--from"):
        load_any(tmp_path / "weights.bin")


# Tokenizer paths and the command.


def test_tokenizer_paths_follow_the_file(tmp_path):
    config = make_config(True)
    (tmp_path / "a" / "tok").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / "a" / "tok" / name).write_text("")
    spec = {"kind": "gpt2-bpe", "vocab": "tok/vocab.json", "merges": "tok/merges.txt"}
    save_checkpoint(tmp_path / "a" / "model.safetensors", make_params(config), config, metadata={"tokenizer": spec})

    convert(tmp_path / "a" / "model.safetensors", tmp_path / "b" / "model.safetensors")
    moved = load_checkpoint_full(tmp_path / "b" / "model.safetensors").metadata["tokenizer"]
    assert moved["vocab"] == "../a/tok/vocab.json"
    assert (tmp_path / "b" / moved["merges"]).resolve() == (tmp_path / "a" / "tok" / "merges.txt").resolve()


def test_cli_convert(tmp_path, capsys):
    config = make_config(False)
    params = make_params(config)
    save_any(tmp_path / "model.safetensors", params, config)
    assert main(["convert", str(tmp_path / "model.safetensors"), str(tmp_path / "model.pt"), "--dtype", "bfloat16"]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out
    assert "needs --config" in out

    config_path = tmp_path / "config.json"
    config_path.write_text(config.to_json())
    arguments = ["convert", str(tmp_path / "model.pt"), str(tmp_path / "weights.data"), "--to", "npz"]
    assert main(arguments) == 2
    assert "pass it with --config" in capsys.readouterr().err
    assert main([*arguments, "--config", str(config_path)]) == 0
    loaded, _, _ = load_any(tmp_path / "weights.data", format="npz")
    assert all(value.dtype == ml_dtypes.bfloat16 for value in loaded.values())

    # A trigpt checkpoint can lend its config too.
    arguments = ["convert", str(tmp_path / "model.pt"), str(tmp_path / "again.npz"), "--config", str(tmp_path / "model.safetensors")]
    assert main(arguments) == 0
    _, loaded_config, _ = load_any(tmp_path / "again.npz")
    assert loaded_config == config


@pytest.mark.skipif(not HAS_FLAX, reason="jax_impl.convert or flax is not importable")
def test_flax_file_is_nnx_pure_dict(tmp_path, tied):
    from flax import nnx, serialization

    from jax_impl.convert import from_canonical, to_canonical

    config = make_config(tied)
    params = make_params(config)
    save_any(tmp_path / "model.msgpack", params, config)

    # Restore the file into a jax_impl model the way a Flax user would.
    model = from_canonical(make_params(config, seed=1), config)
    state = nnx.state(model, nnx.Param)
    restored = serialization.from_bytes(nnx.to_pure_dict(state), (tmp_path / "model.msgpack").read_bytes())
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(model, state)
    assert_same_params(to_canonical(model), params)

    # And the other way: Flax's own serialization of the model reads back as canonical params.
    (tmp_path / "flax.msgpack").write_bytes(serialization.to_bytes(nnx.to_pure_dict(nnx.state(model, nnx.Param))))
    loaded, _, _ = load_any(tmp_path / "flax.msgpack", config=config)
    assert_same_params(loaded, params)
