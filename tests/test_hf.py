"""Hugging Face GPT-2 import and export, checked against transformers itself, offline."""

import importlib.util
import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model  # noqa: E402

from shared.backends import get_backend  # noqa: E402
from shared.cli import main  # noqa: E402
from shared.config import GPTConfig  # noqa: E402
from shared.convert import load_any  # noqa: E402
from shared.errors import UserError  # noqa: E402
from shared.hf import config_from_hf, load_gpt2, save_gpt2  # noqa: E402
from shared.weights import CheckpointError, read_safetensors, write_safetensors  # noqa: E402
from shared.tolerances import measure_difference  # noqa: E402
from tests.tolerances import assert_close  # noqa: E402

BACKENDS = ["torch", "jax", "numpy"]
VOCAB, CONTEXT, WIDTH = 64, 16, 16


def small_hf_model(tied=True, activation="gelu_new", n_inner=None, seed=0):
    """A random GPT2LMHeadModel with every parameter drawn, LayerNorms and biases included."""
    config = GPT2Config(
        vocab_size=VOCAB, n_positions=CONTEXT, n_embd=WIDTH, n_layer=2, n_head=4, n_inner=n_inner,
        activation_function=activation, tie_word_embeddings=tied, bos_token_id=None, eos_token_id=None,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.3)
    return model


def hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.from_numpy(tokens)).logits.numpy()


def tokens(batch=2, length=CONTEXT, seed=1):
    return np.random.default_rng(seed).integers(0, VOCAB, size=(batch, length))


def require_backend(name):
    if importlib.util.find_spec(f"{name}_impl.backend") is None:
        pytest.skip(f"{name}_impl.backend does not exist yet")
    return get_backend(name)


@pytest.fixture(params=[True, False], ids=["tied", "untied"])
def tied(request):
    return request.param


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("activation", ["gelu_new", "gelu"])
def test_import_matches_transformers(tmp_path, backend_name, activation, tied):
    backend = require_backend(backend_name)
    model = small_hf_model(tied, activation)
    model.save_pretrained(tmp_path / "hf")

    params, config = load_gpt2(tmp_path / "hf")
    assert config.weight_tying == tied
    assert config.gelu_approximation == {"gelu_new": "tanh", "gelu": "none"}[activation]
    ours = backend.forward(backend.load(params, config, dtype="float32"), tokens())
    expected = hf_logits(model, tokens())
    difference = measure_difference(ours, expected)
    print(f"{backend_name} {activation} tied={tied}: max abs logit diff {difference.max_abs:.2e}")
    assert_close(ours, expected, f"{backend_name} logits vs transformers", "float32")


def test_import_with_wider_mlp(tmp_path):
    model = small_hf_model(n_inner=2 * WIDTH)
    model.save_pretrained(tmp_path / "hf")
    params, config = load_gpt2(tmp_path / "hf")
    assert config.mlp_expansion == 2
    backend = get_backend("torch")
    ours = backend.forward(backend.load(params, config), tokens())
    assert_close(ours, hf_logits(model, tokens()), "torch logits vs transformers, n_inner=2C", "float32")


def test_export_reloads_with_identical_logits(tmp_path, tied):
    model = small_hf_model(tied)
    model.save_pretrained(tmp_path / "hf")
    params, config = load_gpt2(tmp_path / "hf")

    save_gpt2(tmp_path / "exported", params, config)
    reloaded, info = GPT2LMHeadModel.from_pretrained(tmp_path / "exported", output_loading_info=True)
    assert info["missing_keys"] == set()
    assert info["unexpected_keys"] == set()
    assert info["mismatched_keys"] == set()
    assert np.array_equal(hf_logits(reloaded.eval(), tokens()), hf_logits(model, tokens()))
    assert reloaded.config.tie_word_embeddings == tied


def test_export_from_trigpt_weights(tmp_path):
    """A trigpt model exported to GPT-2 gives transformers the logits trigpt computes."""
    from shared.weights import init_parameters

    config = GPTConfig(vocab_size=VOCAB, context_length=CONTEXT, d_model=WIDTH, num_heads=4, num_layers=2, weight_tying=False)
    params = init_parameters(config, seed=5)
    save_gpt2(tmp_path / "exported", params, config)
    reloaded = GPT2LMHeadModel.from_pretrained(tmp_path / "exported").eval()
    backend = get_backend("torch")
    ours = backend.forward(backend.load(params, config), tokens())
    assert_close(hf_logits(reloaded, tokens()), ours, "transformers logits of exported trigpt weights", "float32")


def test_tied_pair_either_matrix(tmp_path):
    model = small_hf_model(tied=True)
    model.save_pretrained(tmp_path / "hf")
    expected, _ = load_gpt2(tmp_path / "hf")
    tensors, _ = read_safetensors(tmp_path / "hf" / "model.safetensors")
    assert "lm_head.weight" not in tensors

    # Only the head, no embedding.
    tensors["lm_head.weight"] = tensors.pop("transformer.wte.weight")
    write_safetensors(tmp_path / "hf" / "model.safetensors", tensors, {"format": "pt"})
    params, _ = load_gpt2(tmp_path / "hf")
    assert np.array_equal(params["tok_embed.weight"], expected["tok_embed.weight"])

    # Both matrices, as GPT2LMHeadModel.state_dict() lists them.
    tensors["transformer.wte.weight"] = tensors["lm_head.weight"]
    write_safetensors(tmp_path / "hf" / "model.safetensors", tensors, {"format": "pt"})
    params, _ = load_gpt2(tmp_path / "hf")
    assert "lm_head.weight" not in params
    assert np.array_equal(params["tok_embed.weight"], expected["tok_embed.weight"])


def test_untied_keeps_both_matrices(tmp_path):
    model = small_hf_model(tied=False)
    model.save_pretrained(tmp_path / "hf")
    params, _ = load_gpt2(tmp_path / "hf")
    assert np.array_equal(params["tok_embed.weight"], model.transformer.wte.weight.detach().numpy())
    # nn.Linear stores (V, C); trigpt's head is (in, out) = (C, V).
    assert np.array_equal(params["lm_head.weight"], model.lm_head.weight.detach().numpy().T)
    assert not np.array_equal(params["lm_head.weight"], params["tok_embed.weight"].T)


def test_conv1d_weights_not_transposed(tmp_path):
    model = small_hf_model()
    model.save_pretrained(tmp_path / "hf")
    params, _ = load_gpt2(tmp_path / "hf")
    hf_weight = model.transformer.h[1].attn.c_proj.weight.detach().numpy()
    assert not np.array_equal(hf_weight, hf_weight.T)
    assert np.array_equal(params["blocks.1.attn.out_proj.weight"], hf_weight)
    assert np.array_equal(params["blocks.1.attn.qkv.weight"], model.transformer.h[1].attn.c_attn.weight.detach().numpy())


def test_pytorch_model_bin(tmp_path, tied):
    model = small_hf_model(tied)
    model.save_pretrained(tmp_path / "hf")
    os.remove(tmp_path / "hf" / "model.safetensors")
    torch.save(model.state_dict(), tmp_path / "hf" / "pytorch_model.bin")
    params, config = load_gpt2(tmp_path / "hf")
    backend = get_backend("torch")
    assert_close(backend.forward(backend.load(params, config), tokens()), hf_logits(model, tokens()), "logits from .bin", "float32")


def test_bare_gpt2model_with_old_mask_buffers(tmp_path):
    """GPT2Model keys have no "transformer." prefix; older files also store attn.bias masks."""
    lm = small_hf_model()
    body = GPT2Model(lm.config)
    body.load_state_dict(lm.transformer.state_dict())
    tensors = {name: value.numpy() for name, value in body.state_dict().items()}
    for i in range(lm.config.n_layer):
        tensors[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, CONTEXT, CONTEXT), dtype=np.float32))
        tensors[f"h.{i}.attn.masked_bias"] = np.array(-1e4, dtype=np.float32)
    (tmp_path / "hf").mkdir()
    write_safetensors(tmp_path / "hf" / "model.safetensors", tensors, {"format": "pt"})
    lm.config.to_json_file(tmp_path / "hf" / "config.json")
    params, config = load_gpt2(tmp_path / "hf")
    backend = get_backend("torch")
    assert_close(backend.forward(backend.load(params, config), tokens()), hf_logits(lm, tokens()), "bare body logits", "float32")


def test_sharded_safetensors(tmp_path):
    model = small_hf_model(tied=False)
    model.save_pretrained(tmp_path / "hf")
    expected, _ = load_gpt2(tmp_path / "hf")
    tensors, _ = read_safetensors(tmp_path / "hf" / "model.safetensors")
    os.remove(tmp_path / "hf" / "model.safetensors")
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for shard, shard_names in shards.items():
        write_safetensors(tmp_path / "hf" / shard, {n: tensors[n] for n in shard_names}, {"format": "pt"})
        weight_map.update({n: shard for n in shard_names})
    (tmp_path / "hf" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    params, _ = load_gpt2(tmp_path / "hf")
    for name in expected:
        assert np.array_equal(params[name], expected[name]), name


# Configs trigpt cannot represent.


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("scale_attn_by_inverse_layer_idx", True, "scale_attn_by_inverse_layer_idx=True is not supported"),
        ("scale_attn_weights", False, "scale_attn_weights=False is not supported"),
        ("add_cross_attention", True, "add_cross_attention=True is not supported"),
        ("n_inner", 20, "n_inner=20 is not supported: trigpt's MLP width is a whole multiple of n_embd (16)"),
        ("activation_function", "relu", "activation_function='relu' is not supported"),
        ("attn_pdrop", 0.0, "the dropout rates differ (resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.0)"),
        ("model_type", "gpt_neo", "model_type is 'gpt_neo'"),
        ("n_head", 3, "divisible by num_heads"),
    ],
)
def test_unsupported_config_names_field(tmp_path, field, value, message):
    model = small_hf_model()
    model.save_pretrained(tmp_path / "hf")
    config_path = tmp_path / "hf" / "config.json"
    hf_config = json.loads(config_path.read_text())
    hf_config[field] = value
    config_path.write_text(json.dumps(hf_config))
    with pytest.raises(CheckpointError) as error:
        load_gpt2(tmp_path / "hf")
    assert message in str(error.value)
    assert "config.json" in str(error.value)


def test_reorder_and_upcast_accepted():
    config = config_from_hf({"reorder_and_upcast_attn": True, "n_embd": 16, "n_head": 4})
    assert config.d_model == 16


def test_missing_fields_take_gpt2_defaults():
    config = config_from_hf({"model_type": "gpt2"})
    assert config == GPTConfig()


@pytest.mark.parametrize("change, message", [({"use_bias": False}, "use_bias=False"), ({"pre_ln": False}, "post-LN")])
def test_export_rejects_unrepresentable(tmp_path, change, message):
    from shared.weights import init_parameters

    config = GPTConfig(vocab_size=VOCAB, context_length=CONTEXT, d_model=WIDTH, num_heads=4, num_layers=1).replace(**change)
    with pytest.raises(UserError, match=message):
        save_gpt2(tmp_path / "out", init_parameters(config), config)
    assert not (tmp_path / "out").exists()


def test_untied_without_head_rejected(tmp_path):
    small_hf_model(tied=True).save_pretrained(tmp_path / "hf")
    config_path = tmp_path / "hf" / "config.json"
    config_path.write_text(config_path.read_text().replace('"tie_word_embeddings": true', '"tie_word_embeddings": false'))
    with pytest.raises(CheckpointError, match="tie_word_embeddings=false but the weights contain no lm_head.weight"):
        load_gpt2(tmp_path / "hf")


def test_folder_without_weights(tmp_path):
    small_hf_model().config.to_json_file(tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="no weights found"):
        load_gpt2(tmp_path)


def test_wrong_shape_names_hf_tensor(tmp_path):
    small_hf_model().save_pretrained(tmp_path / "hf")
    config_path = tmp_path / "hf" / "config.json"
    config_path.write_text(config_path.read_text().replace('"n_positions": 16', '"n_positions": 32'))
    with pytest.raises(CheckpointError, match=r"wpe.weight has shape \(16, 16\) but config.json implies \(32, 16\)"):
        load_gpt2(tmp_path / "hf")


# The command and tokenizer files.


def test_cli_round_trip(tmp_path, tied):
    model = small_hf_model(tied)
    model.save_pretrained(tmp_path / "hf")
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "model.safetensors")]) == 0
    assert main(["convert", str(tmp_path / "model.safetensors"), str(tmp_path / "back")]) == 0
    reloaded = GPT2LMHeadModel.from_pretrained(tmp_path / "back").eval()
    assert np.array_equal(hf_logits(reloaded, tokens()), hf_logits(model, tokens()))


def test_tokenizer_files_travel(tmp_path):
    small_hf_model().save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "vocab.json").write_text(json.dumps({"a": 0, "b": 1, "<|endoftext|>": 2}))
    (tmp_path / "hf" / "merges.txt").write_text("#version: 0.2\n")
    (tmp_path / "trigpt").mkdir()
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "trigpt" / "model.safetensors")]) == 0
    _, _, metadata = load_any(tmp_path / "trigpt" / "model.safetensors")
    assert metadata["tokenizer"]["kind"] == "gpt2-bpe"
    assert metadata["tokenizer"]["vocab"] == str((tmp_path / "hf" / "vocab.json").resolve())

    assert main(["convert", str(tmp_path / "trigpt" / "model.safetensors"), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "vocab.json").read_text() == (tmp_path / "hf" / "vocab.json").read_text()
    assert json.loads((tmp_path / "out" / "config.json").read_text())["eos_token_id"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_gpt2_small_shape_matches_transformers(tmp_path, backend_name):
    """The full GPT-2 small shape (12 layers, width 768, 50257 tokens), randomly initialised."""
    backend = require_backend(backend_name)
    config = GPT2Config(bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(tmp_path / "hf")
    batch = np.random.default_rng(2).integers(0, config.vocab_size, size=(1, 64))

    params, trigpt_config = load_gpt2(tmp_path / "hf")
    assert trigpt_config == GPTConfig.preset("gpt2")
    ours = backend.forward(backend.load(params, trigpt_config), batch)
    difference = measure_difference(ours, hf_logits(model, batch))
    print(f"{backend_name} GPT-2 small: max abs logit diff {difference.max_abs:.2e}, max rel {difference.max_rel:.2e}")
    assert_close(ours, hf_logits(model, batch), f"{backend_name} GPT-2 small logits vs transformers", "float32")
