"""The PyTorch reference model, its generation and its canonical conversion."""

import numpy as np
import pytest
import torch

from shared.backends import get_backend
from shared.config import GPTConfig
from shared.weights import init_parameters
from tests.tolerances import assert_close
from torch_impl import (
    GPTModel,
    count_parameters,
    from_canonical,
    generate,
    prepost_experiment,
    to_canonical,
    top_k_filter,
)
from torch_impl.model import KVCache, onednn_linear_available

CONFIG = GPTConfig(vocab_size=50, context_length=12, d_model=16, num_heads=2, num_layers=2, dropout=0.0)


def model_for(config=CONFIG, seed=0, dtype="float64"):
    return from_canonical(init_parameters(config, seed=seed, dtype=np.dtype(dtype)), config)


def tokens(batch=2, length=8, vocab=CONFIG.vocab_size, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, vocab, (batch, length)))


def test_output_shapes_and_loss():
    model = model_for()
    x = tokens()
    logits = model(x)
    assert logits.shape == (2, 8, 50)
    logits, loss = model(x, x)
    assert loss.shape == ()
    expected = -torch.log_softmax(logits, -1).gather(-1, x[..., None]).mean()
    assert torch.allclose(loss, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("pre_ln", [True, False])
def test_future_tokens_do_not_change_past(pre_ln):
    model = model_for(CONFIG.replace(pre_ln=pre_ln))
    x = tokens()
    changed = x.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % CONFIG.vocab_size
    before, after = model(x), model(changed)
    assert torch.equal(before[:, :5], after[:, :5])
    assert not torch.allclose(before[:, 5:], after[:, 5:])


def test_pre_and_post_ln_differ():
    params = init_parameters(CONFIG, seed=0, dtype=np.float64)
    pre = from_canonical(params, CONFIG)
    post = from_canonical(params, CONFIG.replace(pre_ln=False))
    x = tokens()
    assert not torch.allclose(pre(x), post(x))


def test_tied_storage_shared_untied_not():
    tied = model_for()
    assert tied.lm_head.weight is tied.tok_embed.weight
    untied = model_for(CONFIG.replace(weight_tying=False))
    assert untied.lm_head.weight.data_ptr() != untied.tok_embed.weight.data_ptr()
    assert count_parameters(untied) - count_parameters(tied) == CONFIG.vocab_size * CONFIG.d_model
    assert count_parameters(tied) == CONFIG.num_parameters()


def test_tied_gradient_sums_embedding_and_head():
    model = model_for()
    x = tokens()
    _, loss = model(x, x)
    loss.backward()
    total = model.tok_embed.weight.grad.clone()

    # The same loss with the head's matrix detached gives the embedding's share alone.
    model.zero_grad()
    hidden = model.hidden_states(x)
    head_only = hidden @ model.tok_embed.weight.detach().T
    torch.nn.functional.cross_entropy(head_only.reshape(-1, 50), x.reshape(-1)).backward()
    embedding_share = model.tok_embed.weight.grad.clone()
    model.zero_grad()
    hidden = model.hidden_states(x).detach()
    torch.nn.functional.cross_entropy((hidden @ model.tok_embed.weight.T).reshape(-1, 50), x.reshape(-1)).backward()
    head_share = model.tok_embed.weight.grad.clone()
    assert torch.allclose(total, embedding_share + head_share, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_canonical_round_trip_bit_exact(tied, dtype):
    config = CONFIG.replace(weight_tying=tied)
    params = init_parameters(config, seed=2, dtype=np.dtype(dtype))
    # A non-symmetric square weight: a shape check cannot tell W from W.T.
    params["blocks.0.attn.out_proj.weight"] = np.arange(16 * 16, dtype=dtype).reshape(16, 16) / 256
    model = from_canonical(params, config)
    back = to_canonical(model)
    assert list(back) == list(params)
    for name in params:
        assert back[name].dtype == params[name].dtype
        assert back[name].tobytes() == params[name].tobytes(), name
    weight = model.blocks[0].attn.out_proj.weight.detach().numpy()
    assert np.array_equal(weight, params["blocks.0.attn.out_proj.weight"].T)


def test_linear_layout_matches_canonical_matmul():
    params = init_parameters(CONFIG, seed=0, dtype=np.float64)
    model = from_canonical(params, CONFIG)
    x = np.random.default_rng(1).standard_normal((3, 16))
    expected = x @ params["blocks.1.mlp.fc1.weight"] + params["blocks.1.mlp.fc1.bias"]
    actual = model.blocks[1].mlp.fc1(torch.from_numpy(x)).detach().numpy()
    assert_close(actual, expected, "fc1 output", "float64")


@pytest.mark.parametrize("pre_ln", [True, False])
def test_fused_attention_matches_explicit(pre_ln):
    model = model_for(CONFIG.replace(pre_ln=pre_ln))
    x = tokens()
    explicit = model(x)
    model.set_fused_attention(True)
    fused = model(x)
    assert_close(fused.detach().numpy(), explicit.detach().numpy(), "fused attention logits", "float64")


@pytest.mark.skipif(not onednn_linear_available(), reason="this torch build has no oneDNN linear op")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_onednn_linear_matches_default(dtype):
    config = CONFIG.replace(d_model=64, num_heads=4)
    backend = get_backend("torch")
    params = init_parameters(config, seed=0, dtype=np.dtype(dtype))
    x = tokens(length=12).numpy()
    reference = backend.load(params, config, dtype=dtype)
    onednn = backend.load(params, config, dtype=dtype)
    onednn.set_onednn_linear(True)

    expected_loss, expected_grads = backend.loss_and_grads(reference, x, x)
    loss, grads = backend.loss_and_grads(onednn, x, x)
    assert_close(loss, expected_loss, "loss", dtype)
    for name, expected in expected_grads.items():
        assert_close(grads[name], expected, f"grad {name}", f"{dtype}-grad" if dtype == "float32" else dtype)
    if dtype == "float64":
        # oneDNN has no float64 GEMM, so float64 takes nn.Linear's path and matches bit for bit.
        assert loss == expected_loss


def test_kv_cache_steps_match_full_forward():
    model = model_for()
    x = tokens(length=10)
    full = model.lm_head(model.hidden_states(x))
    cache = KVCache(CONFIG.num_layers)
    steps = [model.lm_head(model.hidden_states(x[:, :4], cache))]
    for t in range(4, 10):
        steps.append(model.lm_head(model.hidden_states(x[:, t : t + 1], cache)))
    assert_close(torch.cat(steps, dim=1).detach().numpy(), full.detach().numpy(), "cached logits", "kv-cache-float64")


def test_cache_overflow_raises():
    model = model_for()
    cache = KVCache(CONFIG.num_layers)
    model.hidden_states(tokens(length=12), cache)
    with pytest.raises(ValueError, match="exceeds context_length 12"):
        model.hidden_states(tokens(length=1), cache)


@pytest.mark.parametrize(
    "bad, message",
    [
        (tokens(length=13), "sequence length 13 but context_length is 12"),
        (torch.tensor([[1, 2, 50]]), "token id 50 out of range for vocab_size 50"),
        (torch.tensor([[1, -1]]), "token id -1 out of range"),
        (torch.tensor([[1.0, 2.0]]), "integer tensor"),
        (torch.tensor([1, 2]), "shape \\(batch, sequence\\)"),
    ],
)
def test_bad_input_raises(bad, message):
    with pytest.raises(ValueError, match=message):
        model_for()(bad)


def test_generation_reproducible_with_seed():
    model = model_for()
    prompt = tokens(length=3)
    first = generate(model, prompt, 15, temperature=0.8, top_k=10, seed=42)
    second = generate(model, prompt, 15, temperature=0.8, top_k=10, seed=42)
    other = generate(model, prompt, 15, temperature=0.8, top_k=10, seed=43)
    assert first.shape == (2, 18)
    assert torch.equal(first[:, :3], prompt)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_generation_cache_matches_no_cache_past_window():
    model = model_for()
    prompt = tokens(length=20)  # longer than the context: cropped before each step
    cached = generate(model, prompt, 10, seed=1, use_cache=True)
    uncached = generate(model, prompt, 10, seed=1, use_cache=False)
    assert cached.shape == (2, 30)
    assert torch.equal(cached, uncached)
    short = generate(model, tokens(length=3), 20, seed=5, use_cache=True)
    assert torch.equal(short, generate(model, tokens(length=3), 20, seed=5, use_cache=False))


def test_greedy_is_argmax():
    model = model_for()
    prompt = tokens(length=4)
    result = generate(model, prompt, 1, top_k=1, seed=0)
    assert torch.equal(result[:, -1], model(prompt)[:, -1].argmax(-1))


def test_generation_restores_mode():
    model = model_for()
    model.train()
    generate(model, tokens(length=2), 2, seed=0)
    assert model.training
    model.eval()
    generate(model, tokens(length=2), 2, seed=0)
    assert not model.training


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"temperature": -1.0}, "temperature must be > 0"),
        ({"top_k": 0}, "top_k must be a positive integer"),
        ({"max_new_tokens": -1}, "max_new_tokens must be a non-negative integer"),
    ],
)
def test_generation_bad_arguments(kwargs, message):
    arguments = {"max_new_tokens": 3} | kwargs
    with pytest.raises(ValueError, match=message):
        generate(model_for(), tokens(length=2), **arguments)


def test_top_k_filter_keeps_ties():
    logits = torch.tensor([[1.0, 3.0, 2.0, 3.0, 2.0, 0.5]])
    assert torch.equal(
        torch.isfinite(top_k_filter(logits, 3)), torch.tensor([[False, True, True, True, True, False]])
    )
    assert torch.equal(top_k_filter(logits, 100), logits)
    with pytest.raises(ValueError, match="top_k"):
        top_k_filter(logits, 0)


def test_prepost_experiment_reports_norms():
    result = prepost_experiment()
    assert result.pre_ln_norm > 0
    assert result.post_ln_norm > 0
    assert result.ratio == pytest.approx(result.pre_ln_norm / result.post_ln_norm)
    assert result.pre_ln_norm != result.post_ln_norm


def test_backend_interface_round_trip():
    backend = get_backend("torch")
    params = init_parameters(CONFIG, seed=0)
    model = backend.load(params, CONFIG)
    assert all(np.array_equal(backend.export(model)[n], params[n]) for n in params)
    x = tokens().numpy()
    loss, grads = backend.loss_and_grads(model, x, x)
    assert set(grads) == set(params)
    assert np.isfinite(loss)
    acts = backend.activations(model, x)
    assert set(acts) == {"embed", "blocks.0", "blocks.1", "final_ln", "logits"}
    assert_close(acts["logits"], backend.forward(model, x), "activations logits", "float32")


def test_unknown_backend_lists_known():
    with pytest.raises(ValueError, match="torch, jax, numpy"):
        get_backend("tensorflow")
