"""Hugging Face GPT-2 checkpoints, read and written offline.

A Hugging Face GPT-2 folder contains config.json and the weights as model.safetensors, a
sharded model.safetensors.index.json, or pytorch_model.bin. GPT-2 stores its projections as
Conv1D modules, whose weights are already (in, out) with the qkv columns [q | k | v], so
they equal trigpt's canonical layout. Only the head is an nn.Linear, (out, in), and is
transposed. docs/formats.md lists the field mapping and what is rejected.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from shared.config import GPTConfig
from shared.errors import UserError
from shared.weights import CheckpointError, atomic_write, check_parameters, parameter_shapes, read_safetensors, write_safetensors

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TOKENIZER_FILES = ("vocab.json", "merges.txt")

# GPT2LMHeadModel prefixes the body's tensors with "transformer."; a bare GPT2Model does not.
BODY_PREFIX = "transformer."

# Defaults of transformers.GPT2Config (transformers 5.25), used for fields config.json omits,
# as transformers itself would.
GPT2_DEFAULTS: dict[str, Any] = {
    "vocab_size": 50257,
    "n_positions": 1024,
    "n_embd": 768,
    "n_layer": 12,
    "n_head": 12,
    "n_inner": None,
    "activation_function": "gelu_new",
    "resid_pdrop": 0.1,
    "embd_pdrop": 0.1,
    "attn_pdrop": 0.1,
    "layer_norm_epsilon": 1e-5,
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "add_cross_attention": False,
    "tie_word_embeddings": True,
}

# HF activation names and the trigpt GELU form each one computes.
ACTIVATIONS = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}
EXPORT_ACTIVATIONS = {"tanh": "gelu_new", "none": "gelu"}

# Buffers that older transformers versions saved beside the weights: the causal mask and
# its fill value. trigpt builds its own mask, so they are skipped.
_IGNORED_BUFFER = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")


# Config.


def _field(hf: Mapping[str, Any], name: str) -> Any:
    return hf.get(name, GPT2_DEFAULTS[name])


def config_from_hf(hf: Mapping[str, Any], source: str = CONFIG_FILE) -> GPTConfig:
    """Map a GPT-2 config.json dict to a GPTConfig, raising CheckpointError for what trigpt cannot run."""
    model_type = hf.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise CheckpointError(f"{source}: model_type is {model_type!r}; trigpt imports only GPT-2 (model_type \"gpt2\")")

    def reject(name: str, reason: str) -> CheckpointError:
        return CheckpointError(f"{source}: {name}={_field(hf, name)!r} is not supported: {reason}")

    if _field(hf, "scale_attn_weights") is not True:
        raise reject("scale_attn_weights", "trigpt always divides attention scores by sqrt(head_size)")
    if _field(hf, "scale_attn_by_inverse_layer_idx") is not False:
        raise reject("scale_attn_by_inverse_layer_idx", "trigpt scales every layer's scores alike")
    if _field(hf, "add_cross_attention") is not False:
        raise reject("add_cross_attention", "trigpt is a decoder without cross-attention")
    # NOTE: reorder_and_upcast_attn is accepted. It only reorders the scaling and computes the
    # scores in float32, which is the same function; trigpt computes them in the model's dtype.

    activation = _field(hf, "activation_function")
    if activation not in ACTIVATIONS:
        raise reject("activation_function", f"trigpt runs only {', '.join(ACTIVATIONS)}")

    n_embd = _field(hf, "n_embd")
    n_inner = _field(hf, "n_inner")
    if n_inner is None:
        mlp_expansion = 4
    elif isinstance(n_inner, int) and isinstance(n_embd, int) and n_embd > 0 and n_inner > 0 and n_inner % n_embd == 0:
        mlp_expansion = n_inner // n_embd
    else:
        raise reject("n_inner", f"trigpt's MLP width is a whole multiple of n_embd ({n_embd})")

    dropouts = {name: _field(hf, name) for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop")}
    if len(set(dropouts.values())) != 1:
        listed = ", ".join(f"{name}={value}" for name, value in dropouts.items())
        raise CheckpointError(
            f"{source}: the dropout rates differ ({listed}) but trigpt has one dropout rate; "
            f"set all three to the same value in {CONFIG_FILE} (dropout does not change inference)"
        )

    try:
        return GPTConfig(
            vocab_size=_field(hf, "vocab_size"),
            context_length=_field(hf, "n_positions"),
            d_model=n_embd,
            num_heads=_field(hf, "n_head"),
            num_layers=_field(hf, "n_layer"),
            mlp_expansion=mlp_expansion,
            dropout=dropouts["resid_pdrop"],
            use_bias=True,
            weight_tying=_field(hf, "tie_word_embeddings"),
            pre_ln=True,
            layer_norm_eps=_field(hf, "layer_norm_epsilon"),
            gelu_approximation=ACTIVATIONS[activation],
        )
    except ValueError as error:
        raise CheckpointError(f"{source}: {error}") from None


def config_to_hf(config: GPTConfig, dtype: str = "float32") -> dict[str, Any]:
    """Write a GPTConfig as a GPT-2 config.json dict, raising UserError for what GPT-2 cannot express."""
    if not config.use_bias:
        raise UserError("GPT-2 has a bias in every projection, so a use_bias=False model cannot be exported to it")
    if not config.pre_ln:
        raise UserError("GPT-2 normalises before each sublayer, so a post-LN model (pre_ln=False) cannot be exported to it")
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.context_length,
        "n_embd": config.d_model,
        "n_layer": config.num_layers,
        "n_head": config.num_heads,
        "n_inner": None if config.mlp_expansion == 4 else config.d_mlp,
        "activation_function": EXPORT_ACTIVATIONS[config.gelu_approximation],
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": config.layer_norm_eps,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "add_cross_attention": False,
        "tie_word_embeddings": config.weight_tying,
        # The token ids belong to the tokenizer, so save_gpt2 fills them in when it is given one.
        "bos_token_id": None,
        "eos_token_id": None,
        "dtype": dtype,
    }


# Names.


def hf_names(config: GPTConfig) -> dict[str, str]:
    """Map each canonical name of config to its GPT-2 name, without the "transformer." prefix."""
    names = {"tok_embed.weight": "wte.weight", "pos_embed.weight": "wpe.weight"}
    for i in range(config.num_layers):
        for ours, theirs in (
            ("ln1.scale", "ln_1.weight"),
            ("ln1.shift", "ln_1.bias"),
            ("attn.qkv.weight", "attn.c_attn.weight"),
            ("attn.qkv.bias", "attn.c_attn.bias"),
            ("attn.out_proj.weight", "attn.c_proj.weight"),
            ("attn.out_proj.bias", "attn.c_proj.bias"),
            ("ln2.scale", "ln_2.weight"),
            ("ln2.shift", "ln_2.bias"),
            ("mlp.fc1.weight", "mlp.c_fc.weight"),
            ("mlp.fc1.bias", "mlp.c_fc.bias"),
            ("mlp.fc2.weight", "mlp.c_proj.weight"),
            ("mlp.fc2.bias", "mlp.c_proj.bias"),
        ):
            names[f"blocks.{i}.{ours}"] = f"h.{i}.{theirs}"
    names["final_ln.scale"] = "ln_f.weight"
    names["final_ln.shift"] = "ln_f.bias"
    names["lm_head.weight"] = "lm_head.weight"
    return {name: theirs for name, theirs in names.items() if name in parameter_shapes(config) or name == "lm_head.weight"}


def params_from_hf(tensors: Mapping[str, np.ndarray], config: GPTConfig, source: str) -> dict[str, np.ndarray]:
    """Map GPT-2 tensors (with or without the "transformer." prefix) to canonical params.

    With a tied head, either matrix of the pair is enough; when both are present the
    embedding wins, as transformers does when it ties them.
    """
    state: dict[str, np.ndarray] = {}
    for key, value in tensors.items():
        name = key[len(BODY_PREFIX):] if key.startswith(BODY_PREFIX) else key
        if _IGNORED_BUFFER.match(name):
            continue
        if name in state:
            raise CheckpointError(f"{source}: tensor {name} is stored twice (with and without the {BODY_PREFIX!r} prefix)")
        state[name] = value

    if config.weight_tying:
        embedding, head = state.get("wte.weight"), state.pop("lm_head.weight", None)
        if embedding is None and head is not None:
            state["wte.weight"] = head
        elif embedding is not None and head is not None and not np.array_equal(embedding, head):
            logger.warning(
                "%s: tie_word_embeddings is true but lm_head.weight differs from wte.weight; using wte.weight", source
            )
    elif "lm_head.weight" not in state:
        raise CheckpointError(
            f"{source}: {CONFIG_FILE} sets tie_word_embeddings=false but the weights contain no lm_head.weight; "
            f"set it to true if the head shares the embedding matrix"
        )

    shapes = parameter_shapes(config)
    names = hf_names(config)
    if config.weight_tying:
        names.pop("lm_head.weight")
    missing = [theirs for theirs in names.values() if theirs not in state]
    unexpected = sorted(set(state) - set(names.values()))
    if missing:
        raise CheckpointError(f"{source}: missing tensor(s) {', '.join(missing[:5])} for the GPT-2 config in {CONFIG_FILE}")
    if unexpected:
        raise CheckpointError(f"{source}: unexpected tensor(s) {', '.join(unexpected[:5])}; trigpt imports GPT2LMHeadModel weights only")

    params: dict[str, np.ndarray] = {}
    for name, theirs in names.items():
        value = state[theirs]
        expected = shapes[name][::-1] if name == "lm_head.weight" else shapes[name]
        if tuple(value.shape) != expected:
            raise CheckpointError(
                f"{source}: tensor {theirs} has shape {tuple(value.shape)} but {CONFIG_FILE} implies {expected}"
            )
        if not np.issubdtype(value.dtype, np.floating) and value.dtype.name != "bfloat16":
            raise CheckpointError(f"{source}: tensor {theirs} has dtype {value.dtype}; expected floating point weights")
        # The head is an nn.Linear, (V, C); trigpt stores it as (in, out) = (C, V).
        params[name] = np.ascontiguousarray(value.T) if name == "lm_head.weight" else value
    check_parameters(params, config, source=source)
    return params


def params_to_hf(params: Mapping[str, np.ndarray], config: GPTConfig) -> dict[str, np.ndarray]:
    """Map canonical params to GPT2LMHeadModel tensor names; a tied head is not written."""
    params = dict(params)
    if config.weight_tying:
        params.pop("lm_head.weight", None)
    check_parameters(params, config)
    names = hf_names(config)
    tensors: dict[str, np.ndarray] = {}
    for name in parameter_shapes(config):
        value = np.asarray(params[name])
        if name == "lm_head.weight":
            tensors[names[name]] = np.ascontiguousarray(value.T)  # (C, V) -> (V, C)
        else:
            tensors[BODY_PREFIX + names[name]] = value
    return tensors


# Folders.


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from None


def read_hf_tensors(folder: str | os.PathLike) -> tuple[dict[str, np.ndarray], str]:
    """Read every tensor of a Hugging Face folder; return them and the file they came from.

    Looks for model.safetensors, then model.safetensors.index.json (shards), then
    pytorch_model.bin (read with torch.load(weights_only=True), which runs no pickled code).
    """
    folder = Path(folder)
    single = folder / SAFETENSORS_FILE
    if single.is_file():
        tensors, _ = read_safetensors(single)
        return tensors, str(single)

    index = folder / SAFETENSORS_INDEX_FILE
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: no \"weight_map\" object; the index file is corrupt")
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = folder / shard
            if Path(shard).name != shard:
                raise CheckpointError(f"{index}: shard name {shard!r} must be a file name inside {folder}")
            shard_tensors, _ = read_safetensors(shard_path)
            tensors.update(shard_tensors)
        return tensors, str(index)

    torch_file = folder / TORCH_FILE
    if torch_file.is_file():
        from shared.convert import read_torch_tensors

        return read_torch_tensors(torch_file), str(torch_file)

    raise CheckpointError(
        f"{folder}: no weights found; a Hugging Face GPT-2 folder contains {SAFETENSORS_FILE}, "
        f"{SAFETENSORS_INDEX_FILE} or {TORCH_FILE}"
    )


def tokenizer_spec(folder: str | os.PathLike) -> dict[str, Any] | None:
    """Return a gpt2-bpe spec with absolute paths if the folder contains vocab.json and merges.txt, else None."""
    folder = Path(folder).resolve()
    vocab, merges = (folder / name for name in TOKENIZER_FILES)
    if vocab.is_file() and merges.is_file():
        return {"kind": "gpt2-bpe", "vocab": str(vocab), "merges": str(merges)}
    return None


def load_gpt2(folder: str | os.PathLike) -> tuple[dict[str, np.ndarray], GPTConfig]:
    """Import a Hugging Face GPT-2 folder as canonical params (dtype as stored) and a GPTConfig."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder; a Hugging Face checkpoint is a folder containing {CONFIG_FILE}")
    config_path = folder / CONFIG_FILE
    hf_config = _read_json(config_path)
    if not isinstance(hf_config, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object")
    config = config_from_hf(hf_config, source=str(config_path))
    tensors, source = read_hf_tensors(folder)
    return params_from_hf(tensors, config, source), config


def save_gpt2(
    folder: str | os.PathLike,
    params: Mapping[str, np.ndarray],
    config: GPTConfig,
    tokenizer: Mapping[str, Any] | None = None,
) -> None:
    """Export canonical params as a folder that transformers.GPT2LMHeadModel.from_pretrained loads.

    Writes config.json and model.safetensors (each atomically), creating the folder if
    needed. A gpt2-bpe tokenizer spec (with paths that resolve from the working folder) also
    copies vocab.json and merges.txt into the folder.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"{folder}: exists and is not a folder; a Hugging Face checkpoint is written as a folder")
    tensors = params_to_hf(params, config)
    dtypes = sorted({value.dtype.name for value in tensors.values()})
    hf_config = config_to_hf(config, dtype=dtypes[0] if len(dtypes) == 1 else "float32")

    if tokenizer is not None and tokenizer.get("kind") == "gpt2-bpe":
        from shared.tokenizer import GPT2_END_OF_TEXT, GPT2BPETokenizer

        bpe = GPT2BPETokenizer(tokenizer["vocab"], tokenizer["merges"])
        end_of_text = {token: token_id for token_id, token in bpe.id_to_token.items()}.get(GPT2_END_OF_TEXT)
        hf_config["bos_token_id"] = hf_config["eos_token_id"] = end_of_text

    folder.mkdir(parents=True, exist_ok=True)
    # transformers rejects a safetensors file whose metadata lacks the "pt" format tag.
    write_safetensors(folder / SAFETENSORS_FILE, tensors, {"format": "pt"})
    text = json.dumps(hf_config, indent=2, sort_keys=True) + "\n"
    atomic_write(folder / CONFIG_FILE, lambda file: file.write(text.encode("utf-8")))
    if tokenizer is not None and tokenizer.get("kind") == "gpt2-bpe":
        for name, key in zip(TOKENIZER_FILES, ("vocab", "merges")):
            source = Path(tokenizer[key])
            destination = folder / name
            if source.resolve() != destination.resolve():
                atomic_write(destination, lambda file, source=source: file.write(source.read_bytes()))
