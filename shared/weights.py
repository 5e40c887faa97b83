"""Canonical parameters and the trigpt checkpoint file.

Canonical parameters are one flat mapping from name to numpy array. Every linear weight is
stored as (in_features, out_features), so y = x @ W + b; the qkv columns are [q | k | v]
with the heads contiguous inside each block of d_model columns. This is the layout of the
original GPT-2 checkpoints and of Flax kernels. docs/weight-format.md specifies the file.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import ml_dtypes
import numpy as np

from shared.config import GPTConfig

FORMAT_NAME = "trigpt"
FORMAT_VERSION = 1
INIT_STD = 0.02

# Prefixes of the optimizer tensors that a training checkpoint stores beside the parameters.
ADAM_M_PREFIX = "optimizer.m."
ADAM_V_PREFIX = "optimizer.v."

# safetensors dtype codes this format reads, and the numpy dtype of each.
_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
}
_CODES = {dtype: code for code, dtype in _DTYPES.items()}
_MAX_HEADER_BYTES = 100 * 1024 * 1024


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or does not match its config."""


def parameter_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Return the canonical parameter names and shapes, in their canonical order."""
    C, V, H = config.d_model, config.vocab_size, config.d_mlp
    shapes: dict[str, tuple[int, ...]] = {
        "tok_embed.weight": (V, C),
        "pos_embed.weight": (config.context_length, C),
    }

    def linear(prefix: str, d_in: int, d_out: int) -> None:
        shapes[f"{prefix}.weight"] = (d_in, d_out)
        if config.use_bias:
            shapes[f"{prefix}.bias"] = (d_out,)

    for i in range(config.num_layers):
        block = f"blocks.{i}"
        shapes[f"{block}.ln1.scale"] = (C,)
        shapes[f"{block}.ln1.shift"] = (C,)
        linear(f"{block}.attn.qkv", C, 3 * C)
        linear(f"{block}.attn.out_proj", C, C)
        shapes[f"{block}.ln2.scale"] = (C,)
        shapes[f"{block}.ln2.shift"] = (C,)
        linear(f"{block}.mlp.fc1", C, H)
        linear(f"{block}.mlp.fc2", H, C)
    shapes["final_ln.scale"] = (C,)
    shapes["final_ln.shift"] = (C,)
    if not config.weight_tying:
        shapes["lm_head.weight"] = (C, V)
    return shapes


def is_residual_projection(name: str) -> bool:
    """Say whether a weight writes into the residual stream and so gets the 1/sqrt(2L) init scale."""
    return name.endswith(".attn.out_proj.weight") or name.endswith(".mlp.fc2.weight")


def init_parameters(config: GPTConfig, seed: int = 0, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """Draw the canonical initialisation from numpy's default Generator.

    Linear and embedding weights are N(0, 0.02), biases and LayerNorm shifts 0, LayerNorm
    scales 1. The residual projections are then scaled once by 1/sqrt(2 * num_layers), as in
    GPT-2, so the residual stream's variance does not grow with depth. Draws happen in
    canonical order in float64, so every dtype starts from the same numbers.
    """
    rng = np.random.default_rng(seed)
    residual_scale = 1.0 / math.sqrt(2 * config.num_layers)
    params: dict[str, np.ndarray] = {}
    for name, shape in parameter_shapes(config).items():
        if name.endswith(".scale"):
            value = np.ones(shape)
        elif name.endswith(".shift") or name.endswith(".bias"):
            value = np.zeros(shape)
        else:
            value = rng.normal(0.0, INIT_STD, size=shape)
            if is_residual_projection(name):
                value = value * residual_scale
        params[name] = value.astype(dtype)
    return params


def check_parameters(params: Mapping[str, np.ndarray], config: GPTConfig, source: str = "parameters") -> None:
    """Raise CheckpointError unless params has exactly the canonical names and shapes of config."""
    expected = parameter_shapes(config)
    missing = [name for name in expected if name not in params]
    unexpected = sorted(name for name in params if name not in expected)
    if missing:
        hint = ""
        if missing == ["lm_head.weight"]:
            hint = " (the config says weight_tying=False, so the head needs its own matrix)"
        raise CheckpointError(f"{source}: missing tensor(s) {', '.join(missing[:5])}{hint}")
    if unexpected:
        hint = ""
        if unexpected == ["lm_head.weight"]:
            hint = " (the config says weight_tying=True, so the head must not be stored)"
        raise CheckpointError(f"{source}: unexpected tensor(s) {', '.join(unexpected[:5])}{hint}")
    for name, shape in expected.items():
        actual = tuple(np.shape(params[name]))
        if actual != shape:
            raise CheckpointError(
                f"{source}: tensor {name} has shape {actual} but the config expects {shape}; "
                f"the checkpoint was written for another config"
            )


@dataclass
class Checkpoint:
    """Everything one checkpoint file holds."""

    params: dict[str, np.ndarray]
    config: GPTConfig
    metadata: dict[str, Any] = field(default_factory=dict)
    optimizer: Any = None  # shared.optim.AdamWState, or None for a weights-only file


# Writing.


def atomic_write(path: str | os.PathLike, write: Any) -> None:
    """Call write(file) on a temporary file beside path, then rename it over path.

    A crash or an exception leaves either the old file or none, never a half-written one.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise CheckpointError(f"cannot write {path}: folder {folder} does not exist; create it first")
    if path.is_dir():
        raise CheckpointError(f"cannot write {path}: it is a folder; pass a file path")
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        # mkstemp creates the file readable by its owner only; give it the usual umask mode instead.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write tensors and string metadata as one safetensors file, atomically."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    arrays = []
    for name, value in tensors.items():
        array = np.ascontiguousarray(value)
        if array.dtype not in _CODES:
            raise CheckpointError(f"tensor {name} has dtype {array.dtype}; trigpt stores float64, float32, float16 or bfloat16")
        size = array.nbytes
        header[name] = {"dtype": _CODES[array.dtype], "shape": list(array.shape), "data_offsets": [offset, offset + size]}
        arrays.append(array)
        offset += size
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    # The format pads the header with spaces so that the data starts 8-byte aligned.
    header_bytes += b" " * (-len(header_bytes) % 8)

    def write(file: Any) -> None:
        file.write(struct.pack("<Q", len(header_bytes)))
        file.write(header_bytes)
        for array in arrays:
            file.write(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())

    atomic_write(path, write)


def save_checkpoint(
    path: str | os.PathLike,
    params: Mapping[str, np.ndarray],
    config: GPTConfig,
    metadata: dict[str, Any] | None = None,
    optimizer: Any = None,
) -> None:
    """Write params (and optionally an AdamW state) with their config as one .safetensors file.

    A tied head is stored once, as tok_embed.weight. The file is written to a temporary
    file in the same folder and renamed, so a crash never leaves a half-written checkpoint.
    """
    params = {name: np.asarray(value) for name, value in params.items()}
    if config.weight_tying and "lm_head.weight" in params:
        params.pop("lm_head.weight")
    check_parameters(params, config, source=str(path))
    tensors: dict[str, np.ndarray] = {}
    for name in parameter_shapes(config):
        tensors[name] = params[name]
    file_metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "config": config.to_json(),
        "metadata": json.dumps(metadata or {}, sort_keys=True),
    }
    if optimizer is not None:
        for name in parameter_shapes(config):
            tensors[ADAM_M_PREFIX + name] = np.asarray(optimizer.m[name])
            tensors[ADAM_V_PREFIX + name] = np.asarray(optimizer.v[name])
        file_metadata["optimizer"] = json.dumps({"name": "adamw", "step": int(optimizer.step)})
    write_safetensors(path, tensors, file_metadata)


# Reading.


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read every tensor and the metadata of a safetensors file, raising CheckpointError on any defect."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a folder, expected a .safetensors file") from None
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read file ({error.strerror})") from None

    if data[:4] == b"PK\x03\x04":
        # .npz and torch.save files are zip archives, which cannot be a valid safetensors header.
        raise CheckpointError(
            f"{path}: this is a zip file (.npz or .pt), not safetensors; "
            f"convert it first with `trigpt convert {path} OUT.safetensors`"
        )
    if len(data) < 8:
        raise CheckpointError(f"{path}: file is {len(data)} bytes, too short to be safetensors (empty or truncated)")
    (header_length,) = struct.unpack("<Q", data[:8])
    if header_length > min(len(data) - 8, _MAX_HEADER_BYTES):
        raise CheckpointError(
            f"{path}: header length {header_length} exceeds the file size {len(data)}; "
            f"the file is truncated or not safetensors"
        )
    try:
        header = json.loads(data[8 : 8 + header_length].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: header is not valid JSON; the file is corrupt or not safetensors") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: header is not a JSON object; the file is corrupt or not safetensors")
    metadata = header.pop("__metadata__", {}) or {}

    body = memoryview(data)[8 + header_length :]
    tensors: dict[str, np.ndarray] = {}
    for name, entry in header.items():
        try:
            code, shape, (start, end) = entry["dtype"], tuple(int(n) for n in entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: tensor {name} has a malformed header entry {entry!r}") from None
        if code not in _DTYPES:
            raise CheckpointError(f"{path}: tensor {name} has dtype {code}; trigpt reads F64, F32, F16 and BF16")
        dtype = _DTYPES[code]
        expected_bytes = math.prod(shape) * dtype.itemsize
        if not (0 <= start <= end <= len(body)) or end - start != expected_bytes:
            raise CheckpointError(
                f"{path}: tensor {name} needs bytes {start}..{end} of a {len(body)}-byte body "
                f"({expected_bytes} bytes for shape {shape}); the file is truncated or corrupt"
            )
        array = np.frombuffer(body[start:end], dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)
        tensors[name] = array
    return tensors, metadata


def _cast(array: np.ndarray, dtype: Any) -> np.ndarray:
    if dtype is not None:
        return array.astype(dtype)
    if array.dtype in (np.float16, ml_dtypes.bfloat16):
        return array.astype(np.float32)
    return array


def load_checkpoint_full(path: str | os.PathLike, dtype: Any = None) -> Checkpoint:
    """Read and check a trigpt checkpoint: parameters, config, metadata and optimizer state.

    dtype=None keeps float32 and float64 as stored and upcasts float16 and bfloat16 to
    float32; any other dtype casts every tensor to it.
    """
    from shared.optim import AdamWState

    tensors, metadata = read_safetensors(path)
    if metadata.get("format") != FORMAT_NAME or "config" not in metadata:
        raise CheckpointError(
            f"{path}: not a trigpt checkpoint (no trigpt config in its metadata); "
            f"import foreign weights with `trigpt convert`"
        )
    version = metadata.get("format_version")
    if version != str(FORMAT_VERSION):
        raise CheckpointError(
            f"{path}: unknown format version {version!r}; this trigpt reads version {FORMAT_VERSION}, upgrade trigpt"
        )
    try:
        config = GPTConfig.from_json(metadata["config"])
    except ValueError as error:
        raise CheckpointError(f"{path}: invalid config in metadata: {error}") from None
    try:
        user_metadata = json.loads(metadata.get("metadata", "{}"))
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: metadata field is not valid JSON") from None

    params = {n: t for n, t in tensors.items() if not n.startswith((ADAM_M_PREFIX, ADAM_V_PREFIX))}
    check_parameters(params, config, source=str(path))
    for name, array in tensors.items():
        if not np.all(np.isfinite(array)):
            bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
            raise CheckpointError(f"{path}: tensor {name} contains {bad} non-finite value(s) (NaN or inf)")
    ordered = {name: _cast(params[name], dtype) for name in parameter_shapes(config)}

    optimizer = None
    if "optimizer" in metadata:
        try:
            step = int(json.loads(metadata["optimizer"])["step"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: optimizer metadata {metadata['optimizer']!r} is invalid; expected a step count") from None
        m, v = {}, {}
        for name, shape in parameter_shapes(config).items():
            for prefix, store in ((ADAM_M_PREFIX, m), (ADAM_V_PREFIX, v)):
                key = prefix + name
                if key not in tensors:
                    raise CheckpointError(f"{path}: optimizer state is missing tensor {key}")
                if tensors[key].shape != shape:
                    raise CheckpointError(f"{path}: tensor {key} has shape {tensors[key].shape}, expected {shape}")
                store[name] = _cast(tensors[key], dtype)
        optimizer = AdamWState(step=step, m=m, v=v)
    return Checkpoint(params=ordered, config=config, metadata=user_metadata, optimizer=optimizer)


def load_checkpoint(path: str | os.PathLike, dtype: Any = None) -> tuple[dict[str, np.ndarray], GPTConfig]:
    """Read and check a trigpt checkpoint, returning (params, config)."""
    checkpoint = load_checkpoint_full(path, dtype=dtype)
    return checkpoint.params, checkpoint.config
