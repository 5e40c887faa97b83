"""GPTConfig: validation, serialisation, presets and parameter counts."""

import json

import pytest

from shared.config import PRESETS, GPTConfig


def test_defaults_are_gpt2_small():
    config = GPTConfig()
    assert (config.vocab_size, config.context_length, config.d_model) == (50257, 1024, 768)
    assert (config.num_heads, config.num_layers, config.mlp_expansion) == (12, 12, 4)
    assert config.dropout == 0.1
    assert config.use_bias
    assert config.weight_tying
    assert config.pre_ln
    assert config.layer_norm_eps == 1e-5
    assert config.gelu_approximation == "tanh"


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"vocab_size": 0}, ["vocab_size", "0", "positive"]),
        ({"num_layers": -2}, ["num_layers", "-2", "positive"]),
        ({"d_model": 2.5}, ["d_model", "2.5", "int"]),
        ({"num_heads": True}, ["num_heads", "True", "int"]),
        ({"d_model": 100, "num_heads": 3}, ["d_model", "100", "num_heads", "3", "divisible"]),
        ({"dropout": 1.0}, ["dropout", "1.0", "0 <= dropout < 1"]),
        ({"dropout": -0.1}, ["dropout", "-0.1"]),
        ({"layer_norm_eps": 0.0}, ["layer_norm_eps", "0.0", "> 0"]),
        ({"gelu_approximation": "erf"}, ["gelu_approximation", "'erf'", "tanh"]),
        ({"use_bias": 1}, ["use_bias", "True or False"]),
    ],
)
def test_invalid_field_message(changes, words):
    with pytest.raises(ValueError) as error:
        GPTConfig(**changes)
    for word in words:
        assert word in str(error.value)


def test_json_round_trip():
    config = GPTConfig.preset("tiny").replace(pre_ln=False, gelu_approximation="none", use_bias=False)
    assert GPTConfig.from_json(config.to_json()) == config
    assert GPTConfig.from_dict(config.to_dict()) == config
    assert json.loads(config.to_json())["pre_ln"] is False


def test_from_dict_rejects_unknown_keys():
    data = GPTConfig().to_dict() | {"n_embd": 768, "rotary": True}
    with pytest.raises(ValueError, match="n_embd, rotary"):
        GPTConfig.from_dict(data)


def test_from_json_rejects_invalid_json():
    with pytest.raises(ValueError, match="invalid GPTConfig JSON"):
        GPTConfig.from_json("{not json")


def test_replace_validates():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig().replace(num_heads=7)
    with pytest.raises(ValueError, match="unknown GPTConfig field"):
        GPTConfig().replace(n_layer=2)


def test_unknown_preset_lists_known():
    with pytest.raises(ValueError) as error:
        GPTConfig.preset("gpt3")
    for name in PRESETS:
        assert name in str(error.value)


@pytest.mark.parametrize(
    "name, expected",
    [
        # GPT-2 sizes as published with the original checkpoints (tied head counted once).
        ("gpt2", 124_439_808),
        ("gpt2-medium", 354_823_168),
        ("gpt2-large", 774_030_080),
        ("gpt2-xl", 1_557_611_200),
    ],
)
def test_preset_parameter_counts(name, expected):
    assert GPTConfig.preset(name).num_parameters() == expected


def test_untying_adds_head_matrix():
    config = GPTConfig.preset("gpt2")
    untied = config.replace(weight_tying=False)
    assert untied.num_parameters() - config.num_parameters() == 50257 * 768


def test_parameter_count_by_hand_without_bias():
    config = GPTConfig(vocab_size=10, context_length=6, d_model=8, num_heads=2, num_layers=3, use_bias=False)
    C, L = 8, 3
    per_block = 2 * 2 * C + C * 3 * C + C * C + C * 4 * C + 4 * C * C
    assert config.num_parameters() == 10 * C + 6 * C + L * per_block + 2 * C
