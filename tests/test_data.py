"""Training data: the default corpus, text files, the split, batches and reference losses."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shared.config import GPTConfig
from shared.data import (
    DataError,
    cross_entropy,
    default_corpus_text,
    get_batch,
    load_corpus,
    minimum_corpus_tokens,
    split_tokens,
    unigram_baseline_loss,
    validation_batches,
    validation_loss,
)

SMALL = GPTConfig(vocab_size=256, context_length=16, d_model=16, num_heads=2, num_layers=1, dropout=0.0)


@pytest.fixture(scope="module")
def corpus():
    return load_corpus()


# The default corpus.


def test_default_corpus_is_language_reference():
    source, text = default_corpus_text()
    assert source.startswith("pydoc_data.topics (Python ")
    # About 465,000 characters in CPython 3.11; the bound leaves room for other versions.
    assert 300_000 < len(text) < 1_000_000
    assert "The \"assert\" statement" in text
    assert default_corpus_text() == (source, text)


def test_default_corpus_split(corpus):
    total = corpus.train.size + corpus.validation.size
    _, text = default_corpus_text()
    assert total == len(text.encode("utf-8"))
    assert corpus.validation.size == total // 10
    assert corpus.text_path is None
    assert corpus.tokenizer == {"kind": "bytes"}
    assert corpus.train.dtype == np.int64
    ids = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    np.testing.assert_array_equal(np.concatenate([corpus.train, corpus.validation]), ids)


def test_describe_is_json_ready(corpus):
    description = corpus.describe()
    assert description["text_path"] is None
    assert description["train_tokens"] == corpus.train.size
    assert description["validation_tokens"] == corpus.validation.size
    assert len(description["sha256"]) == 64


# The split.


def test_split_is_contiguous():
    ids = np.arange(100)
    train, validation = split_tokens(ids)
    np.testing.assert_array_equal(train, np.arange(90))
    np.testing.assert_array_equal(validation, np.arange(90, 100))


def test_split_rejects_bad_fraction():
    with pytest.raises(ValueError, match="validation_fraction"):
        split_tokens(np.arange(10), validation_fraction=1.0)


def test_minimum_corpus_tokens_is_tight():
    for context_length in (1, 16, 32, 127, 128):
        needed = minimum_corpus_tokens(context_length)
        train, validation = split_tokens(np.arange(needed))
        assert min(train.size, validation.size) >= context_length + 1
        train, validation = split_tokens(np.arange(needed - 1))
        assert min(train.size, validation.size) < context_length + 1


# Text files.


def write(tmp_path, content, name="text.txt"):
    path = tmp_path / name
    path.write_bytes(content)
    return path


def test_text_file_is_tokenized_as_bytes(tmp_path):
    text = "Ünïcödé text. " * 40
    path = write(tmp_path, text.encode("utf-8"))
    corpus = load_corpus(path)
    assert corpus.text_path == str(path.resolve())
    assert corpus.source == str(path)
    assert corpus.num_characters == len(text)
    ids = list(text.encode("utf-8"))
    assert corpus.train.tolist() + corpus.validation.tolist() == ids
    corpus.check_fits(SMALL)


def test_byte_order_mark_is_dropped(tmp_path):
    path = write(tmp_path, b"\xef\xbb\xbf" + b"abc" * 100)
    corpus = load_corpus(path)
    assert corpus.train[:3].tolist() == list(b"abc")


@pytest.mark.parametrize(
    "content, words",
    [
        (b"", ["is empty", "UTF-8 text file"]),
        (b"caf\xe9 au lait" * 40, ["not valid UTF-8", "0xe9", "offset 3", "iconv"]),
    ],
    ids=["empty", "latin1"],
)
def test_bad_text_file_message(tmp_path, content, words):
    path = write(tmp_path, content)
    with pytest.raises(DataError) as error:
        load_corpus(path)
    assert str(path) in str(error.value)
    for word in words:
        assert word in str(error.value)


def test_missing_text_file(tmp_path):
    path = tmp_path / "absent.txt"
    with pytest.raises(DataError, match="not found; check the path") as error:
        load_corpus(path)
    assert str(path) in str(error.value)


def test_folder_as_text_file(tmp_path):
    with pytest.raises(DataError, match="is a folder") as error:
        load_corpus(tmp_path)
    assert str(tmp_path) in str(error.value)


def test_too_short_text_names_sizes(tmp_path):
    # 100 bytes split into 90 + 10, but a window of context_length 16 needs 17 in each split.
    path = write(tmp_path, b"x" * 100)
    corpus = load_corpus(path)
    with pytest.raises(DataError) as error:
        corpus.check_fits(SMALL)
    message = str(error.value)
    assert str(path) in message
    assert "validation split contains 10 tokens" in message
    assert f"at least {minimum_corpus_tokens(16)} tokens" in message
    assert "--context-length" in message


def test_minimum_length_text_fits(tmp_path):
    path = write(tmp_path, b"x" * minimum_corpus_tokens(SMALL.context_length))
    load_corpus(path).check_fits(SMALL)


def test_token_id_beyond_vocab(tmp_path):
    path = write(tmp_path, "é".encode("utf-8") * 200)
    corpus = load_corpus(path)
    with pytest.raises(DataError, match="token id 195 out of range for vocab_size 100") as error:
        corpus.check_fits(SMALL.replace(vocab_size=100))
    assert "--vocab-size" in str(error.value)


def test_custom_tokenizer(tmp_path):
    class WordTokenizer:
        def encode(self, text):
            return [len(word) for word in text.split()]

    path = write(tmp_path, b"one three fives " * 100)
    corpus = load_corpus(path, tokenizer=WordTokenizer())
    assert corpus.tokenizer == {"kind": "WordTokenizer"}
    assert corpus.train[:3].tolist() == [3, 5, 5]


# Batches.


def test_batch_shapes_and_shift(corpus):
    inputs, targets = get_batch(corpus.train, 4, 16, seed=0, index=0)
    assert inputs.shape == targets.shape == (4, 16)
    assert inputs.dtype == targets.dtype == np.int64
    np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])


def test_batch_rows_are_corpus_windows():
    tokens = np.arange(1000, dtype=np.int64)
    inputs, targets = get_batch(tokens, 8, 16, seed=3, index=5)
    for row_inputs, row_targets in zip(inputs, targets):
        start = row_inputs[0]
        np.testing.assert_array_equal(row_inputs, np.arange(start, start + 16))
        np.testing.assert_array_equal(row_targets, np.arange(start + 1, start + 17))


def test_batch_is_function_of_seed_and_index(corpus):
    first = get_batch(corpus.train, 4, 16, seed=7, index=12)
    get_batch(corpus.train, 4, 16, seed=7, index=3)
    again = get_batch(corpus.train, 4, 16, seed=7, index=12)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    other_index = get_batch(corpus.train, 4, 16, seed=7, index=13)
    other_seed = get_batch(corpus.train, 4, 16, seed=8, index=12)
    assert not np.array_equal(first[0], other_index[0])
    assert not np.array_equal(first[0], other_seed[0])


def test_batch_offsets_reach_last_window():
    # Seventeen tokens hold exactly one window of 16 inputs plus its shifted target.
    tokens = np.arange(17)
    inputs, targets = get_batch(tokens, 3, 16, seed=0, index=0)
    np.testing.assert_array_equal(inputs, np.tile(np.arange(16), (3, 1)))
    np.testing.assert_array_equal(targets, np.tile(np.arange(1, 17), (3, 1)))
    offsets = {int(get_batch(np.arange(20), 1, 16, seed=0, index=i)[0][0, 0]) for i in range(200)}
    assert offsets == {0, 1, 2, 3}


def test_batch_rejects_short_data():
    with pytest.raises(DataError, match="16 tokens cannot fill one window"):
        get_batch(np.arange(16), 1, 16, seed=0, index=0)


@pytest.mark.parametrize("kwargs", [{"seed": -1}, {"index": -1}])
def test_batch_rejects_negative_seed(kwargs):
    arguments = {"seed": 0, "index": 0} | kwargs
    with pytest.raises(ValueError, match="must be >= 0"):
        get_batch(np.arange(100), 1, 16, **arguments)


def test_validation_batches_are_fixed(corpus):
    batches = validation_batches(corpus.validation, 4, 16, 3)
    assert len(batches) == 3
    again = validation_batches(corpus.validation, 4, 16, 3)
    for (inputs, targets), (inputs_again, targets_again) in zip(batches, again):
        assert inputs.shape == targets.shape == (4, 16)
        np.testing.assert_array_equal(inputs, inputs_again)
        np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])


def test_validation_batches_span_split():
    tokens = np.arange(200)
    batches = validation_batches(tokens, 2, 16, 2)
    starts = [int(inputs[row, 0]) for inputs, _ in batches for row in range(2)]
    assert starts[0] == 0
    assert starts[-1] == 200 - 17
    assert starts == sorted(starts)


# Losses.


def test_cross_entropy_of_uniform_logits():
    logits = np.zeros((2, 3, 7), dtype=np.float32)
    targets = np.array([[0, 1, 2], [3, 4, 6]])
    assert cross_entropy(logits, targets) == pytest.approx(math.log(7), rel=1e-12)


def test_cross_entropy_by_hand():
    logits = np.array([[[2.0, 0.0, -1.0]]])
    expected = -math.log(math.exp(2.0) / (math.exp(2.0) + 1.0 + math.exp(-1.0)))
    assert cross_entropy(logits, np.array([[0]])) == pytest.approx(expected, rel=1e-12)


def test_cross_entropy_large_logits_stay_finite():
    logits = np.array([[[1000.0, 0.0]]])
    assert cross_entropy(logits, np.array([[1]])) == pytest.approx(1000.0, rel=1e-12)


def test_validation_loss_matches_backend_loss(corpus):
    from shared.weights import init_parameters

    backend = pytest.importorskip("torch_impl.backend")
    model = backend.load(init_parameters(SMALL, seed=0, dtype=np.float64), SMALL, dtype="float64")
    batches = validation_batches(corpus.validation, 2, 16, 3)
    expected = np.mean([backend.loss_and_grads(model, inputs, targets)[0] for inputs, targets in batches])
    assert validation_loss(backend, model, batches) == pytest.approx(expected, rel=1e-12)


def test_unigram_baseline_by_hand():
    train = np.array([0, 0, 0, 1])
    validation = np.array([0, 1, 2])
    # Add-one smoothed counts over a vocabulary of 3: 4, 2, 1 out of 7.
    expected = -(math.log(4 / 7) + math.log(2 / 7) + math.log(1 / 7)) / 3
    assert unigram_baseline_loss(train, validation, 3) == pytest.approx(expected, rel=1e-12)


def test_unigram_baseline_of_default_corpus(corpus):
    loss = unigram_baseline_loss(corpus.train, corpus.validation, 256)
    # English bytes carry about 4.5 bits (3.1 nats) each without context; uniform is ln 256 = 5.55.
    assert 2.5 < loss < math.log(256)
