"""The basic subcommands: init, info, generate and prepost."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from shared.backends import BACKENDS, get_backend
from shared.config import PRESETS, GPTConfig
from shared.errors import UserError
from shared.tokenizer import checkpoint_tokenizer
from shared.weights import init_parameters, load_checkpoint_full, read_safetensors, save_checkpoint


def parse_token_ids(text: str) -> np.ndarray:
    """Parse "1,2,3" into a (1, T) int64 array, rejecting anything that is not a comma-separated id list."""
    parts = [part.strip() for part in text.split(",")]
    if not any(parts):
        raise UserError(f"--prompt-ids {text!r} contains no token ids; pass comma-separated integers such as 1,2,3")
    try:
        ids = [int(part) for part in parts]
    except ValueError:
        raise UserError(f"--prompt-ids {text!r} must be comma-separated integers such as 1,2,3") from None
    for token in ids:
        # Ids past int64 would overflow numpy; the vocabulary check names the rest.
        if not -(2**62) < token < 2**62:
            raise UserError(f"token id {token} in --prompt-ids is out of range; ids lie in [0, vocab_size)")
    return np.array([ids], dtype=np.int64)


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """Add --preset and one option per GPTConfig field that overrides the preset."""
    parser.add_argument("--preset", default="tiny", choices=list(PRESETS), help="model preset (default: tiny)")
    group = parser.add_argument_group("model config overrides (default: the preset's value)")
    group.add_argument("--vocab-size", type=int, help="vocabulary size in tokens")
    group.add_argument("--context-length", type=int, help="maximum sequence length in tokens")
    group.add_argument("--d-model", type=int, help="width of the residual stream")
    group.add_argument("--num-heads", type=int, help="attention heads per block")
    group.add_argument("--num-layers", type=int, help="number of transformer blocks")
    group.add_argument("--mlp-expansion", type=int, help="MLP hidden size as a multiple of d_model")
    group.add_argument("--dropout", type=float, help="dropout probability in [0, 1)")
    group.add_argument("--no-bias", dest="use_bias", action="store_const", const=False, help="linear layers without bias")
    group.add_argument("--untied", dest="weight_tying", action="store_const", const=False, help="give the head its own matrix")
    group.add_argument("--post-ln", dest="pre_ln", action="store_const", const=False, help="LayerNorm after each residual add")
    group.add_argument("--layer-norm-eps", type=float, help="LayerNorm epsilon")
    group.add_argument("--gelu", dest="gelu_approximation", choices=["tanh", "none"], help="GELU form: tanh or exact erf")


def config_from_args(args: argparse.Namespace) -> GPTConfig:
    """Build the config from --preset with every override that was given."""
    fields = (
        "vocab_size", "context_length", "d_model", "num_heads", "num_layers", "mlp_expansion",
        "dropout", "use_bias", "weight_tying", "pre_ln", "layer_norm_eps", "gelu_approximation",
    )
    overrides = {name: getattr(args, name) for name in fields if getattr(args, name, None) is not None}
    return GPTConfig.preset(args.preset).replace(**overrides)


def run_init(args: argparse.Namespace) -> int:
    if args.output.suffix != ".safetensors":
        raise UserError(
            f"-o {args.output}: init writes a trigpt .safetensors file; name it *.safetensors "
            f"and use `trigpt convert` for other formats"
        )
    if args.output.exists() and not args.overwrite:
        raise UserError(f"-o {args.output} already exists; pass --overwrite to replace it")
    config = config_from_args(args)
    params = init_parameters(config, seed=args.seed, dtype=np.dtype(args.dtype))
    save_checkpoint(args.output, params, config, metadata={"seed": args.seed, "tokenizer": {"kind": "bytes"}})
    print(f"wrote {args.output}: {config.num_parameters():,} parameters, {args.dtype}, seed {args.seed}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    checkpoint = load_checkpoint_full(args.checkpoint)
    config = checkpoint.config
    # The dtypes as stored: loading upcasts float16 and bfloat16 to float32.
    stored, _ = read_safetensors(args.checkpoint)
    dtypes = sorted({stored[name].dtype.name for name in checkpoint.params})
    print(f"checkpoint   {args.checkpoint}")
    print(f"parameters   {config.num_parameters():,}")
    print(f"dtype        {', '.join(dtypes)}")
    print(f"head         {'tied to tok_embed' if config.weight_tying else 'untied (own lm_head.weight)'}")
    if checkpoint.optimizer is not None:
        print(f"optimizer    AdamW state at step {checkpoint.optimizer.step}")
    print("config")
    for key, value in config.to_dict().items():
        print(f"  {key:<20} {value}")
    if checkpoint.metadata:
        print("metadata")
        for key, value in sorted(checkpoint.metadata.items()):
            print(f"  {key:<20} {value}")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    checkpoint = load_checkpoint_full(args.checkpoint)
    tokenizer = None
    if args.prompt is not None:
        # Load the tokenizer before the model, so that a missing tokenizer file fails fast.
        tokenizer = checkpoint_tokenizer(checkpoint.metadata, checkpoint.config, args.checkpoint)
        ids = tokenizer.encode(args.prompt)
        if not ids:
            raise UserError("--prompt is empty; give at least one character of text")
        prompt = np.array([ids], dtype=np.int64)
    else:
        prompt = parse_token_ids(args.prompt_ids)
    backend = get_backend(args.backend)
    model = backend.load(checkpoint.params, checkpoint.config, dtype=args.dtype)
    tokens = backend.generate(
        model, prompt, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, seed=args.seed
    )
    if tokenizer is None:
        print(",".join(str(int(token)) for token in tokens[0]))
    else:
        # Sampled bytes need not form valid UTF-8, so invalid sequences print as U+FFFD.
        print(tokenizer.decode(tokens[0], errors="replace"))
    return 0


def run_prepost(args: argparse.Namespace) -> int:
    from shared.prepost import prepost_experiment

    result = prepost_experiment(backend=args.backend, seed=args.seed)
    print("gradient norm at the input of a 6-block stack, same weights")
    print(f"  pre-LN    {result.pre_ln_norm:.6g}")
    print(f"  post-LN   {result.post_ln_norm:.6g}")
    print(f"  ratio     {result.ratio:.6g} (pre / post)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    backends = list(BACKENDS)

    parser = subparsers.add_parser("init", help="write a freshly initialised checkpoint")
    add_config_options(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the initialisation (default: 0)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="parameter dtype (default: float32)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="path of the .safetensors file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    parser.set_defaults(handler=run_init)

    parser = subparsers.add_parser("info", help="print a checkpoint's config, size and dtype")
    parser.add_argument("checkpoint", type=Path, help="trigpt .safetensors checkpoint")
    parser.set_defaults(handler=run_info)

    parser = subparsers.add_parser("generate", help="continue a prompt with a checkpoint")
    parser.add_argument("checkpoint", type=Path, help="trigpt .safetensors checkpoint")
    parser.add_argument("--backend", default="torch", choices=backends, help="framework to run (default: torch)")
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--prompt-ids", default="0", help="comma-separated prompt token ids; prints ids (default: 0)")
    prompt.add_argument(
        "--prompt", help="prompt text, encoded with the checkpoint's tokenizer; prints the decoded text"
    )
    parser.add_argument("--max-new-tokens", type=int, default=20, help="tokens to generate (default: 20)")
    parser.add_argument("--temperature", type=float, default=1.0, help="softmax temperature, > 0 (default: 1.0)")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens (default: all)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (default: fresh randomness)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="compute dtype (default: float32)")
    parser.set_defaults(handler=run_generate)

    parser = subparsers.add_parser("prepost", help="run the pre-LN vs post-LN gradient-norm experiment")
    parser.add_argument("--backend", default="torch", choices=backends, help="framework to run (default: torch)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the input (default: 0)")
    parser.set_defaults(handler=run_prepost)
