"""Tokenizers: bytes, GPT-2 BPE from local files, checkpoint specs and `generate --prompt`."""

import json
import os
import subprocess
import sys

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from shared.cli import main  # noqa: E402
from shared.config import GPTConfig  # noqa: E402
from shared.tokenizer import (  # noqa: E402
    ByteTokenizer,
    GPT2BPETokenizer,
    TokenizerError,
    check_spec,
    checkpoint_tokenizer,
    gpt2_byte_alphabet,
    load_tokenizer,
    relocate_spec,
)
from shared.weights import init_parameters, save_checkpoint  # noqa: E402

# A hand-made GPT-2-style vocabulary: single characters, a few merges, and the end-of-text token.
# "Ġ" is the byte alphabet's character for the space byte.
VOCAB = {"h": 0, "e": 1, "l": 2, "o": 3, "Ġ": 4, "w": 5, "r": 6, "d": 7, "he": 8, "ll": 9, "hell": 10, "hello": 11, "<|endoftext|>": 12}
MERGES = ["h e", "l l", "he ll", "hell o"]


@pytest.fixture
def bpe_files(tmp_path):
    (tmp_path / "vocab.json").write_text(json.dumps(VOCAB), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n", encoding="utf-8")
    return tmp_path / "vocab.json", tmp_path / "merges.txt"


# Bytes.


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_bytes_round_trip_any_text(text):
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode(text)
    assert all(0 <= token_id < 256 for token_id in ids)
    assert len(ids) == len(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text


def test_bytes_multibyte_characters():
    assert ByteTokenizer().encode("é€") == [0xC3, 0xA9, 0xE2, 0x82, 0xAC]


def test_bytes_invalid_utf8_strict_and_replace():
    tokenizer = ByteTokenizer()
    cut = tokenizer.encode("a€")[:-1]  # "a" and the first two of the euro sign's three bytes
    with pytest.raises(TokenizerError, match="not valid UTF-8"):
        tokenizer.decode(cut)
    assert tokenizer.decode(cut, errors="replace") == "a\ufffd"


def test_bytes_out_of_range_id():
    tokenizer = ByteTokenizer()
    with pytest.raises(TokenizerError, match="token id 300 out of range for the byte tokenizer"):
        tokenizer.decode([104, 300])
    assert tokenizer.decode([104, 300, 105], errors="replace") == "h\ufffdi"


def test_bytes_lone_surrogate_rejected():
    with pytest.raises(TokenizerError, match="lone surrogate"):
        ByteTokenizer().encode("a\ud800")


# GPT-2 BPE.


def test_byte_alphabet_is_a_bijection():
    alphabet = gpt2_byte_alphabet()
    assert len(set(alphabet.values())) == 256
    assert alphabet[ord(" ")] == "Ġ"
    assert alphabet[ord("A")] == "A"


def test_bpe_encodes_hand_made_vocab(bpe_files):
    tokenizer = GPT2BPETokenizer(*bpe_files)
    assert tokenizer.vocab_size == 13
    assert tokenizer.encode("hello world") == [11, 4, 5, 3, 6, 2, 7]
    assert tokenizer.encode("hell") == [10]
    assert tokenizer.decode([11, 4, 5, 3, 6, 2, 7]) == "hello world"


def test_bpe_end_of_text_is_one_token(bpe_files):
    tokenizer = GPT2BPETokenizer(*bpe_files)
    ids = tokenizer.encode("hello<|endoftext|>he")
    assert ids == [11, 12, 8]
    assert tokenizer.decode(ids) == "hello<|endoftext|>he"


def test_bpe_matches_transformers(bpe_files):
    transformers = pytest.importorskip("transformers")
    # from_pretrained on a local folder reads its vocab.json and merges.txt; nothing is downloaded.
    reference = transformers.GPT2Tokenizer.from_pretrained(str(bpe_files[0].parent))
    tokenizer = GPT2BPETokenizer(*bpe_files)
    for text in ["hello world", "hello hello", "held", "world hello<|endoftext|>"]:
        assert tokenizer.encode(text) == reference.encode(text), text


def test_bpe_text_outside_vocab(bpe_files):
    with pytest.raises(TokenizerError, match="cannot encode all of the text 'hello!'"):
        GPT2BPETokenizer(*bpe_files).encode("hello!")


def test_bpe_unknown_id(bpe_files):
    tokenizer = GPT2BPETokenizer(*bpe_files)
    with pytest.raises(TokenizerError, match="token id 40 is not in"):
        tokenizer.decode([11, 40])
    assert tokenizer.decode([11, 40, 4, 8], errors="replace") == "hello\ufffd he"


@pytest.mark.parametrize("missing", ["vocab.json", "merges.txt"])
def test_bpe_missing_file_named(bpe_files, missing):
    folder = bpe_files[0].parent
    (folder / missing).unlink()
    with pytest.raises(TokenizerError, match=f"file not found: {folder / missing}"):
        GPT2BPETokenizer(*bpe_files)


def test_bpe_invalid_vocab(bpe_files):
    bpe_files[0].write_text("{")
    with pytest.raises(TokenizerError, match="not a valid vocab.json"):
        GPT2BPETokenizer(*bpe_files)


# Specs.


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"kind": "sentencepiece"}, "unknown tokenizer kind 'sentencepiece'"),
        ({"kind": "gpt2-bpe", "vocab": "v.json"}, "missing field(s) merges"),
        ({"kind": "bytes", "vocab": "v.json"}, "unknown field(s) vocab"),
        ("bytes", "a tokenizer spec is a JSON object"),
    ],
)
def test_invalid_spec(spec, message):
    with pytest.raises(TokenizerError) as error:
        check_spec(spec)
    assert message in str(error.value)


def test_relative_paths_resolve_against_checkpoint_folder(tmp_path, bpe_files, monkeypatch):
    monkeypatch.chdir("/")
    spec = {"kind": "gpt2-bpe", "vocab": "vocab.json", "merges": "merges.txt"}
    config = GPTConfig(vocab_size=13)
    tokenizer = checkpoint_tokenizer({"tokenizer": spec}, config, tmp_path / "model.safetensors")
    assert tokenizer.encode("hello") == [11]
    absolute = {**spec, "vocab": str(bpe_files[0]), "merges": str(bpe_files[1])}
    assert relocate_spec(absolute, tmp_path) == spec


def test_no_spec_means_bytes_only_with_room():
    assert checkpoint_tokenizer({}, GPTConfig(vocab_size=256), "model.safetensors").kind == "bytes"
    with pytest.raises(TokenizerError, match="vocab_size 100 is below the 256 ids"):
        checkpoint_tokenizer({}, GPTConfig(vocab_size=100), "model.safetensors")


def test_tokenizer_larger_than_model(bpe_files):
    spec = {"kind": "gpt2-bpe", "vocab": str(bpe_files[0]), "merges": str(bpe_files[1])}
    with pytest.raises(TokenizerError, match="has 13 ids but the model's vocab_size is 10"):
        checkpoint_tokenizer({"tokenizer": spec}, GPTConfig(vocab_size=10), "model.safetensors")


def test_load_tokenizer_bytes():
    assert isinstance(load_tokenizer({"kind": "bytes"}), ByteTokenizer)


# generate --prompt.

TINY = ["--preset", "tiny", "--num-layers", "1", "--d-model", "32", "--num-heads", "2", "--context-length", "32"]


def test_generate_prompt_bytes(tmp_path, capsys):
    model = tmp_path / "model.safetensors"
    assert main(["init", *TINY, "-o", str(model)]) == 0
    capsys.readouterr()
    arguments = ["generate", str(model), "--prompt", "héllo", "--max-new-tokens", "6", "--seed", "3"]
    assert main(arguments) == 0
    text = capsys.readouterr().out.rstrip("\n")
    assert text.startswith("héllo")
    assert main(arguments) == 0
    assert capsys.readouterr().out.rstrip("\n") == text


def test_generate_prompt_bpe(tmp_path, bpe_files, capsys):
    config = GPTConfig(vocab_size=13, context_length=16, d_model=16, num_heads=2, num_layers=1)
    spec = {"kind": "gpt2-bpe", "vocab": "vocab.json", "merges": "merges.txt"}
    save_checkpoint(tmp_path / "model.safetensors", init_parameters(config), config, metadata={"tokenizer": spec})
    assert main(["generate", str(tmp_path / "model.safetensors"), "--prompt", "hello world", "--max-new-tokens", "5", "--seed", "0"]) == 0
    assert capsys.readouterr().out.startswith("hello world")


def run(*args):
    return subprocess.run([sys.executable, "-m", "shared.cli", *args], capture_output=True, text=True, timeout=300)


def test_generate_missing_tokenizer_file_one_line(tmp_path, bpe_files):
    config = GPTConfig(vocab_size=13, context_length=16, d_model=16, num_heads=2, num_layers=1)
    spec = {"kind": "gpt2-bpe", "vocab": "vocab.json", "merges": "merges.txt"}
    save_checkpoint(tmp_path / "model.safetensors", init_parameters(config), config, metadata={"tokenizer": spec})
    bpe_files[1].unlink()
    result = run("generate", str(tmp_path / "model.safetensors"), "--prompt", "hello")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert f"merges file not found: {bpe_files[1]}" in result.stderr


def test_prompt_and_prompt_ids_exclusive(tmp_path):
    result = run("generate", str(tmp_path / "model.safetensors"), "--prompt", "hi", "--prompt-ids", "1,2")
    assert result.returncode == 2
    assert "not allowed with argument" in result.stderr
