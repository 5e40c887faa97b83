"""Conversion between weight formats, and the `trigpt convert` command.

Five formats hold the same canonical parameters (docs/formats.md):

    safetensors  the trigpt checkpoint (shared.weights), with config and metadata
    torch        a PyTorch state_dict file (.pt, .pth): GPTModel's names, nn.Linear layout
    flax         a Flax NNX state as msgpack (.msgpack), in jax_impl's layout
    npz          NumPy arrays under canonical names, config and metadata as a JSON entry
    hf           a Hugging Face GPT-2 folder (shared.hf)

Every conversion copies the arrays without arithmetic unless a dtype is requested, so any
round trip is bit-exact. Only the weights travel: the optimizer state of a training
checkpoint is not converted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import re
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any, Mapping

import ml_dtypes
import numpy as np

from shared.config import GPTConfig
from shared.errors import UserError
from shared.weights import (
    FORMAT_NAME,
    FORMAT_VERSION,
    CheckpointError,
    atomic_write,
    check_parameters,
    load_checkpoint_full,
    parameter_shapes,
    save_checkpoint,
)

logger = logging.getLogger(__name__)

FORMATS = {
    "safetensors": "trigpt checkpoint (.safetensors), with config and metadata",
    "torch": "PyTorch state_dict (.pt, .pth); needs --config to read",
    "flax": "Flax NNX state as msgpack (.msgpack); needs --config to read",
    "npz": "NumPy arrays (.npz), with config and metadata",
    "hf": "Hugging Face GPT-2 folder (config.json and model.safetensors)",
}
EXTENSIONS = {
    ".safetensors": "safetensors",
    ".pt": "torch",
    ".pth": "torch",
    ".msgpack": "flax",
    ".npz": "npz",
}
# Formats whose files store the config beside the weights.
SELF_DESCRIBING = ("safetensors", "npz", "hf")

DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float16": np.dtype(np.float16),
}

# Name of the .npz entry that contains the JSON header (config, metadata, bfloat16 names).
NPZ_HEADER = "__trigpt__"

Params = dict[str, np.ndarray]


# Formats and dtypes.


def detect_format(path: str | os.PathLike, format: str | None = None, writing: bool = False) -> str:
    """Return format if given, else the format that path's extension names (a folder is hf)."""
    if format is not None:
        if format not in FORMATS:
            raise UserError(f"unknown format {format!r}; known formats: {', '.join(FORMATS)}")
        return format
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in EXTENSIONS:
        return EXTENSIONS[suffix]
    if path.is_dir() or (writing and not path.exists() and suffix == ""):
        return "hf"
    flag = "--to" if writing else "--from"
    raise UserError(
        f"cannot tell the format of {path} from its extension; use {', '.join(EXTENSIONS)} or a folder "
        f"for Hugging Face, or name the format with {flag} ({', '.join(FORMATS)})"
    )


def cast_params(params: Mapping[str, np.ndarray], dtype: str | None) -> Params:
    """Return params cast to dtype (a name in DTYPES), or unchanged when dtype is None.

    Raises CheckpointError when a value overflows the target dtype, such as |x| > 65504 in float16.
    """
    if dtype is None:
        return dict(params)
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    cast = {}
    for name, value in params.items():
        with np.errstate(over="ignore"):  # overflow is reported below, with the tensor's name
            converted = np.asarray(value).astype(DTYPES[dtype])
        if not np.all(np.isfinite(converted)):
            largest = float(np.max(np.abs(np.asarray(value, dtype=np.float64))))
            raise CheckpointError(f"tensor {name} overflows {dtype}: its largest magnitude is {largest:g}")
        cast[name] = converted
    return cast


def _check_finite(params: Mapping[str, np.ndarray], source: str) -> None:
    for name, value in params.items():
        finite = np.isfinite(value)
        if not np.all(finite):
            bad = int(finite.size - np.count_nonzero(finite))
            raise CheckpointError(f"{source}: tensor {name} contains {bad} non-finite value(s) (NaN or inf)")


def _check_float(params: Mapping[str, np.ndarray], source: str) -> None:
    for name, value in params.items():
        if value.dtype not in DTYPES.values():
            raise CheckpointError(f"{source}: tensor {name} has dtype {value.dtype}; expected one of {', '.join(DTYPES)}")


def _reconcile_config(stored: GPTConfig | None, requested: GPTConfig | None, path: Path, format: str) -> GPTConfig:
    """Return the config of a file: the one it stores, or the one passed for formats that store none."""
    if stored is None:
        if requested is None:
            raise UserError(
                f"{path}: a {format} file does not store the model config; pass it with --config CONFIG.json "
                f"(config= in Python), for example the config of the trigpt checkpoint it came from"
            )
        return requested
    if requested is not None and requested != stored:
        differences = [
            f"{key} {stored_value!r} vs {requested.to_dict()[key]!r}"
            for key, stored_value in stored.to_dict().items()
            if requested.to_dict()[key] != stored_value
        ]
        raise UserError(
            f"{path} stores its own config, which differs from --config in {', '.join(differences)}; drop --config"
        )
    return stored


def read_config_file(path: str | os.PathLike) -> GPTConfig:
    """Read a GPTConfig from a JSON file (as GPTConfig.to_json writes it) or from a trigpt checkpoint."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        return load_checkpoint_full(path).config
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"--config {path}: file not found") from None
    except (IsADirectoryError, UnicodeDecodeError) as error:
        raise UserError(f"--config {path}: cannot read it as JSON text ({error})") from None
    try:
        return GPTConfig.from_json(text)
    except ValueError as error:
        raise UserError(f"--config {path}: {error}") from None


# The API.


def load_any(
    path: str | os.PathLike, format: str | None = None, config: GPTConfig | None = None
) -> tuple[Params, GPTConfig, dict[str, Any]]:
    """Read weights in any format as (canonical params, config, metadata).

    Params keep the stored dtype, and a tied head is returned once, as tok_embed.weight.
    config is required for formats that do not store one (torch, flax, an npz file without
    a trigpt header) and must match the stored one otherwise. File paths in a tokenizer spec
    are returned absolute.
    """
    path = Path(path)
    format = detect_format(path, format)
    if format == "safetensors":
        params, stored, metadata = _load_safetensors(path)
    elif format == "torch":
        params, stored, metadata = _load_torch(path, config)
    elif format == "flax":
        params, stored, metadata = _load_flax(path)
    elif format == "npz":
        params, stored, metadata = _load_npz(path)
    else:
        params, stored, metadata = _load_hf(path)
    config = _reconcile_config(stored, config, path, format)
    check_parameters(params, config, source=str(path))
    _check_float(params, str(path))
    _check_finite(params, str(path))
    params = {name: params[name] for name in parameter_shapes(config)}
    return params, config, _resolve_tokenizer(metadata, path, format)


def save_any(
    path: str | os.PathLike,
    params: Mapping[str, np.ndarray],
    config: GPTConfig,
    format: str | None = None,
    dtype: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> str:
    """Write canonical params in any format, atomically, and return the format written.

    dtype (a name in DTYPES) casts every tensor first. metadata travels where the format
    can store it (safetensors, npz, and the tokenizer files of an hf folder).
    """
    path = Path(path)
    format = detect_format(path, format, writing=True)
    params = {name: np.asarray(value) for name, value in params.items()}
    if config.weight_tying:
        params.pop("lm_head.weight", None)
    check_parameters(params, config, source=str(path))
    params = cast_params({name: params[name] for name in parameter_shapes(config)}, dtype)
    metadata = dict(metadata or {})

    if format == "safetensors":
        save_checkpoint(path, params, config, metadata=_relocate_tokenizer(metadata, path.parent))
    elif format == "torch":
        _save_torch(path, params, config)
    elif format == "flax":
        _save_flax(path, params, config)
    elif format == "npz":
        _save_npz(path, params, config, _relocate_tokenizer(metadata, path.parent))
    else:
        from shared.hf import save_gpt2

        save_gpt2(path, params, config, tokenizer=metadata.get("tokenizer"))
    return format


def convert(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    source_format: str | None = None,
    destination_format: str | None = None,
    dtype: str | None = None,
    config: GPTConfig | None = None,
) -> tuple[str, str, GPTConfig]:
    """Convert one weight file or folder to another; return (source format, destination format, config)."""
    source_format = detect_format(source, source_format)
    destination_format = detect_format(destination, destination_format, writing=True)
    params, config, metadata = load_any(source, source_format, config)
    save_any(destination, params, config, destination_format, dtype=dtype, metadata=metadata)
    return source_format, destination_format, config


# Tokenizer paths: absolute in memory, relative to the checkpoint's folder on disk.


def _resolve_tokenizer(metadata: dict[str, Any], path: Path, format: str) -> dict[str, Any]:
    from shared.tokenizer import TOKENIZER_KEY, resolve_spec

    spec = metadata.get(TOKENIZER_KEY)
    if spec is not None:
        folder = path if format == "hf" else path.parent
        metadata = {**metadata, TOKENIZER_KEY: resolve_spec(spec, folder)}
    return metadata


def _relocate_tokenizer(metadata: dict[str, Any], folder: Path) -> dict[str, Any]:
    from shared.tokenizer import TOKENIZER_KEY, relocate_spec

    spec = metadata.get(TOKENIZER_KEY)
    if spec is not None:
        metadata = {**metadata, TOKENIZER_KEY: relocate_spec(spec, folder)}
    return metadata


# safetensors.


def _stored_dtype(path: Path) -> str | None:
    """Return the one dtype of a safetensors file's tensors, or None if they differ or the header is unreadable."""
    try:
        with open(path, "rb") as file:
            (length,) = struct.unpack("<Q", file.read(8))
            header = json.loads(file.read(min(length, 100 * 1024 * 1024)))
    except (OSError, struct.error, ValueError):
        return None  # load_checkpoint_full reports the defect with its own message
    codes = {entry.get("dtype") for name, entry in header.items() if name != "__metadata__" and isinstance(entry, dict)}
    names = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}
    return names.get(codes.pop()) if len(codes) == 1 else None


def _load_safetensors(path: Path) -> tuple[Params, GPTConfig, dict[str, Any]]:
    # load_checkpoint_full upcasts half precision unless given a dtype, so pass the stored one.
    stored = _stored_dtype(path)
    checkpoint = load_checkpoint_full(path, dtype=None if stored is None else DTYPES[stored])
    if checkpoint.optimizer is not None:
        logger.info("%s: the optimizer state is not converted", path)
    return checkpoint.params, checkpoint.config, checkpoint.metadata


# PyTorch state_dict files.


def _torch_to_numpy(tensor: Any, name: str, source: Path) -> np.ndarray:
    import torch

    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        # numpy has no bfloat16, so move the raw 16-bit patterns and relabel them.
        return tensor.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    if tensor.dtype not in (torch.float16, torch.float32, torch.float64):
        raise CheckpointError(f"{source}: tensor {name} has dtype {tensor.dtype}; expected one of {', '.join(DTYPES)}")
    return tensor.numpy()


def _numpy_to_torch(array: np.ndarray) -> Any:
    import torch

    array = np.ascontiguousarray(array)
    if not array.flags.writeable:
        # torch.from_numpy shares memory and warns about read-only arrays, such as msgpack's.
        array = array.copy()
    if array.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def read_torch_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a file of named tensors written by torch.save, without running any pickled code.

    torch.load(weights_only=True) admits only tensors, containers and plain values; a file
    that pickles any other object (which could run code when unpickled) raises
    CheckpointError before that object is built.
    """
    path = Path(path)
    try:
        import torch
    except ImportError:
        raise ImportError(f"reading {path} needs torch, which is not installed; install it with: pip install 'trigpt[torch]'") from None
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found" if not path.exists() else f"{path}: not a file")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        detail = re.search(r"WeightsUnpickler error: ([^\n]*?)(?: Please use|$)", str(error), re.MULTILINE)
        reason = detail.group(1).strip() if detail else str(error).splitlines()[0]
        raise CheckpointError(
            f"{path}: rejected, not a plain file of tensors ({reason}); trigpt loads .pt files only with "
            f"weights_only=True, which runs no pickled code. Save model.state_dict() and nothing else"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch file (truncated or corrupt): {first_line}") from None

    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"{path}: contains a {type(loaded).__name__}, expected a state_dict of named tensors")
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(loaded.get(key), Mapping):
            raise CheckpointError(
                f"{path}: wraps its weights under the key {key!r}; save that state_dict alone with torch.save"
            )
    arrays = {}
    for name, value in loaded.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{path}: entry {name!r} is a {type(value).__name__}, expected a tensor; save a state_dict of tensors"
            )
        arrays[name] = _torch_to_numpy(value, name, path)
    return arrays


def _load_torch(path: Path, config: GPTConfig | None) -> tuple[Params, None, dict[str, Any]]:
    tensors = read_torch_tensors(path)
    from torch_impl.convert import torch_to_canonical

    if config is not None and config.weight_tying and "lm_head.weight" in tensors:
        # GPTModel.state_dict() lists the tied head under both names, with one storage.
        head = tensors.pop("lm_head.weight")
        embedding = tensors.get("tok_embed.weight")
        if embedding is None or not np.array_equal(head, embedding):
            raise CheckpointError(
                f"{path}: the config sets weight_tying=True but lm_head.weight differs from tok_embed.weight; "
                f"use a config with weight_tying=False"
            )
    return {name: torch_to_canonical(name, value) for name, value in tensors.items()}, None, {}


def _save_torch(path: Path, params: Params, config: GPTConfig) -> None:
    try:
        import torch
    except ImportError:
        raise ImportError(f"writing {path} needs torch, which is not installed; install it with: pip install 'trigpt[torch]'") from None
    from torch_impl.convert import canonical_to_torch

    state_dict = {name: _numpy_to_torch(canonical_to_torch(name, value)) for name, value in params.items()}
    if config.weight_tying:
        # As in GPTModel.state_dict(): the head is the embedding tensor, so torch.save stores one matrix.
        state_dict["lm_head.weight"] = state_dict["tok_embed.weight"]
    atomic_write(path, lambda file: torch.save(state_dict, file))


# NumPy .npz files.


def _load_npz(path: Path) -> tuple[Params, GPTConfig | None, dict[str, Any]]:
    try:
        with open(path, "rb") as file:
            magic = file.read(4)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a folder, expected an .npz file") from None
    if magic != b"PK\x03\x04":
        # np.load would treat any other file as a pickle and report that, which misleads.
        raise CheckpointError(f"{path}: not an .npz file (it does not start with a zip header)")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"{path}: not a readable .npz file, truncated or corrupt ({error})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise CheckpointError(f"{path}: contains a single array, expected an .npz archive of named arrays")
    with archive:
        try:
            arrays = {name: archive[name] for name in archive.files}
        except ValueError as error:
            # np.load raises ValueError for object arrays, which would need pickle.
            raise CheckpointError(f"{path}: contains an array that needs pickle to read ({error}); trigpt reads numeric arrays only") from None
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
            raise CheckpointError(f"{path}: truncated or corrupt .npz file ({error})") from None

    if NPZ_HEADER not in arrays:
        return arrays, None, {}
    try:
        header = json.loads(str(arrays.pop(NPZ_HEADER)))
        if header.get("format") != FORMAT_NAME:
            raise ValueError(f"format is {header.get('format')!r}")
        if header.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unknown format_version {header.get('format_version')!r}, this trigpt reads {FORMAT_VERSION}")
        config = GPTConfig.from_dict(header["config"])
        metadata = header.get("metadata", {})
        bfloat16_names = header.get("bfloat16", [])
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as error:
        raise CheckpointError(f"{path}: invalid {NPZ_HEADER} entry: {error}") from None
    for name in bfloat16_names:
        if name in arrays:
            # Stored as uint16 bit patterns, because .npy has no bfloat16 type.
            arrays[name] = arrays[name].view(ml_dtypes.bfloat16)
    return arrays, config, metadata


def _save_npz(path: Path, params: Params, config: GPTConfig, metadata: dict[str, Any]) -> None:
    arrays = {}
    bfloat16_names = []
    for name, value in params.items():
        if value.dtype == ml_dtypes.bfloat16:
            arrays[name] = np.ascontiguousarray(value).view(np.uint16)
            bfloat16_names.append(name)
        else:
            arrays[name] = value
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "metadata": metadata,
        "bfloat16": bfloat16_names,
    }
    # A 0-d unicode array, which np.load reads without pickle.
    arrays[NPZ_HEADER] = np.array(json.dumps(header, sort_keys=True))
    atomic_write(path, lambda file: np.savez(file, **arrays))


# Flax msgpack files.
#
# The file is flax.serialization.to_bytes of the pure dict of jax_impl's model parameters,
# nnx.to_pure_dict(nnx.state(model, nnx.Param)): nested dicts keyed by jax_impl.convert.flax_path,
# block indices as strings. flax.serialization.from_bytes restores it into that pure dict, and
# nnx.replace_by_pure_dict puts it back into a model's state.


def _import_flax(path: Path) -> tuple[Any, Any]:
    try:
        from flax import serialization

        from jax_impl.convert import canonical_name, flax_path
    except ImportError:
        raise ImportError(f"the flax format of {path} needs jax and flax; install them with: pip install 'trigpt[jax]'") from None
    return serialization, (canonical_name, flax_path)


def _load_flax(path: Path) -> tuple[Params, None, dict[str, Any]]:
    serialization, (canonical_name, _) = _import_flax(path)
    import msgpack

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a folder, expected a .msgpack file") from None
    try:
        tree = serialization.msgpack_restore(data)
    except (ValueError, TypeError, msgpack.exceptions.UnpackException) as error:
        raise CheckpointError(f"{path}: not a readable Flax msgpack file (truncated or corrupt): {error}") from None
    if not isinstance(tree, dict):
        raise CheckpointError(f"{path}: contains a {type(tree).__name__}, expected the nested dict of a Flax state")

    params: Params = {}

    def collect(node: Any, prefix: tuple[str, ...]) -> None:
        for key, value in node.items():
            path_in_state = (*prefix, str(key))
            if isinstance(value, dict):
                collect(value, path_in_state)
            elif isinstance(value, np.ndarray):
                params[canonical_name(path_in_state)] = value
            else:
                raise CheckpointError(
                    f"{path}: entry {'/'.join(path_in_state)} is a {type(value).__name__}, expected an array"
                )

    collect(tree, ())
    return params, None, {}


def _save_flax(path: Path, params: Params, config: GPTConfig) -> None:
    serialization, (_, flax_path) = _import_flax(path)
    tree: dict[str, Any] = {}
    for name, value in params.items():
        *parents, leaf = (str(part) for part in flax_path(name))
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = np.ascontiguousarray(value)
    data = serialization.msgpack_serialize(tree)
    atomic_write(path, lambda file: file.write(data))


# Hugging Face folders.


def _load_hf(path: Path) -> tuple[Params, GPTConfig, dict[str, Any]]:
    from shared.hf import load_gpt2, tokenizer_spec

    params, config = load_gpt2(path)
    spec = tokenizer_spec(path)
    return params, config, {} if spec is None else {"tokenizer": spec}


# The command.


def run_convert(args: argparse.Namespace) -> int:
    config = read_config_file(args.config) if args.config is not None else None
    source_format, destination_format, config = convert(
        args.input, args.output, args.source_format, args.destination_format, dtype=args.dtype, config=config
    )
    print(
        f"wrote {args.output} ({destination_format}) from {args.input} ({source_format}): "
        f"{config.num_parameters():,} parameters{', ' + args.dtype if args.dtype else ''}"
    )
    if destination_format not in SELF_DESCRIBING:
        print(f"note: {destination_format} files store no config; reading {args.output} back needs --config")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    formats = list(FORMATS)
    parser = subparsers.add_parser(
        "convert",
        help="convert weights between trigpt, PyTorch, Flax, NumPy and Hugging Face formats",
        description="Convert weights between formats. Formats: "
        + "; ".join(f"{name}: {text}" for name, text in FORMATS.items())
        + ". The format is taken from the extension (a folder is hf) unless --from or --to names it.",
    )
    parser.add_argument("input", type=Path, help="file or Hugging Face folder to read")
    parser.add_argument("output", type=Path, help="file or Hugging Face folder to write")
    parser.add_argument("--from", dest="source_format", choices=formats, help="format of the input (default: from its extension)")
    parser.add_argument("--to", dest="destination_format", choices=formats, help="format of the output (default: from its extension)")
    parser.add_argument("--dtype", choices=list(DTYPES), help="cast every tensor to this dtype (default: keep the stored dtype)")
    parser.add_argument(
        "--config",
        type=Path,
        help="GPTConfig JSON file, or a trigpt .safetensors checkpoint whose config to use; "
        "required when the input format stores no config (torch, flax)",
    )
    parser.set_defaults(handler=run_convert)
