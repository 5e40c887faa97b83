"""Training data: a tokenized text, its train/validation split, batches and reference losses.

Every backend trains on the same numpy batches. Batch i of a run is a pure function of
(seed, i), so a run resumed at step i draws the batches the uninterrupted run would have
drawn, whichever backend wrote the checkpoint.

The default corpus is the English text of the Python language reference, which every
CPython ships as the standard-library module `pydoc_data.topics` (the pages `help()` shows).
It needs no download. Its size depends on the Python version: 465,048 characters and
466,117 UTF-8 bytes in CPython 3.11.7.
"""

from __future__ import annotations

import hashlib
import math
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from shared.config import GPTConfig
from shared.tokenizer import ByteTokenizer

# The last tenth of the token stream is the validation split. A contiguous split keeps
# validation windows out of the training text, where random windows would overlap it.
VALIDATION_FRACTION = 0.1


class DataError(ValueError):
    """The training text is missing, unreadable, not UTF-8, or too short for the model."""


class TextEncoder(Protocol):
    """Any tokenizer: shared.tokenizer's classes, or an object with encode(str) -> list[int]."""

    def encode(self, text: str) -> list[int]: ...


def tokenizer_spec(tokenizer: TextEncoder) -> dict[str, Any]:
    """Return the JSON-serialisable description of a tokenizer that checkpoints store.

    A tokenizer with a spec() method describes itself; any other object is recorded by
    its class name only, which is not enough to rebuild it.
    """
    spec = getattr(tokenizer, "spec", None)
    if callable(spec):
        return dict(spec())
    return {"kind": type(tokenizer).__name__}


# Reading text.


def default_corpus_text() -> tuple[str, str]:
    """Return (source, text) of the default corpus: the topics of `pydoc_data.topics`.

    The topic texts are joined in sorted key order with a newline between them, so the
    text is the same on every run of one Python version.
    """
    from pydoc_data.topics import topics

    text = "\n".join(topics[key] for key in sorted(topics))
    return f"pydoc_data.topics (Python {platform.python_version()})", text


def read_text_file(path: str | Path) -> str:
    """Read a UTF-8 text file, raising DataError that names the file and the fix.

    A leading byte-order mark is dropped, because it is an encoding marker and not text.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"training text {path} not found; check the path or omit --text to use the default corpus") from None
    except IsADirectoryError:
        raise DataError(f"training text {path} is a folder; pass the path of a UTF-8 text file") from None
    except OSError as error:
        raise DataError(f"cannot read training text {path} ({error.strerror}); check its permissions") from None
    if not data:
        raise DataError(f"training text {path} is empty; pass a UTF-8 text file with enough text for the model's context")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        bad = data[error.start : error.start + 1].hex()
        raise DataError(
            f"training text {path} is not valid UTF-8 (byte 0x{bad} at offset {error.start}); "
            f"convert it first, for example with `iconv -f LATIN1 -t UTF-8 {path} > {path.stem}.utf8.txt`"
        ) from None


# The corpus and its split.


@dataclass(frozen=True)
class Corpus:
    """A tokenized text split into contiguous train and validation token arrays (int64)."""

    source: str  # the file path, or the default corpus's module and Python version
    text_path: str | None  # None for the default corpus
    sha256: str  # of the text's UTF-8 bytes, so a resumed run can tell whether its data changed
    num_characters: int
    tokenizer: dict[str, Any]
    train: np.ndarray
    validation: np.ndarray

    def describe(self) -> dict[str, Any]:
        """Return the JSON-serialisable description that checkpoints store as their data source."""
        return {
            "source": self.source,
            "text_path": self.text_path,
            "sha256": self.sha256,
            "characters": self.num_characters,
            "train_tokens": int(self.train.size),
            "validation_tokens": int(self.validation.size),
        }

    def check_fits(self, config: GPTConfig) -> None:
        """Raise DataError unless every token id is below vocab_size and both splits hold a full window.

        A window is context_length + 1 tokens: the inputs and, shifted by one, the targets.
        """
        window = config.context_length + 1
        for name, split in (("train", self.train), ("validation", self.validation)):
            if split.size < window:
                needed = minimum_corpus_tokens(config.context_length)
                raise DataError(
                    f"training text {self.source} is too short: its {name} split contains {split.size} tokens, but "
                    f"context_length {config.context_length} needs at least {window} in each split, so at least "
                    f"{needed} tokens in all ({self.train.size + self.validation.size} given); "
                    f"use a longer text or a smaller --context-length"
                )
        largest = max(int(self.train.max()), int(self.validation.max()))
        if largest >= config.vocab_size:
            raise DataError(
                f"training text {self.source}: token id {largest} out of range for vocab_size {config.vocab_size}; "
                f"the tokenizer {self.tokenizer} needs a larger --vocab-size"
            )


def split_tokens(ids: np.ndarray, validation_fraction: float = VALIDATION_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Split a token stream into (train, validation): the first part and the last validation_fraction of it."""
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must satisfy 0 < fraction < 1, got {validation_fraction}")
    num_validation = int(ids.size * validation_fraction)
    boundary = ids.size - num_validation
    return ids[:boundary], ids[boundary:]


def minimum_corpus_tokens(context_length: int, validation_fraction: float = VALIDATION_FRACTION) -> int:
    """Return the fewest tokens whose split leaves context_length + 1 tokens in both parts."""
    window = context_length + 1
    total = max(2 * window, math.ceil(window / validation_fraction))
    while True:
        num_validation = int(total * validation_fraction)
        if num_validation >= window and total - num_validation >= window:
            return total
        total += 1


def load_corpus(text_path: str | Path | None = None, tokenizer: TextEncoder | None = None) -> Corpus:
    """Read, tokenize and split the training text: the file at text_path, or the default corpus.

    The tokenizer defaults to shared.tokenizer.ByteTokenizer. Call Corpus.check_fits before training.
    """
    tokenizer = tokenizer or ByteTokenizer()
    if text_path is None:
        source, text = default_corpus_text()
    else:
        source, text = str(text_path), read_text_file(text_path)
    ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
    if ids.size == 0:
        raise DataError(f"training text {source} encodes to no tokens; pass a file with text in it")
    if int(ids.min()) < 0:
        raise DataError(f"tokenizer {tokenizer_spec(tokenizer)} returned negative token id {int(ids.min())}")
    train, validation = split_tokens(ids)
    return Corpus(
        source=source,
        # An absolute path lets a resumed run find the file from any working folder.
        text_path=None if text_path is None else str(Path(text_path).resolve()),
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        num_characters=len(text),
        tokenizer=tokenizer_spec(tokenizer),
        train=train,
        validation=validation,
    )


# Batches.


def windows(tokens: np.ndarray, offsets: np.ndarray, context_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut (inputs, targets), each (len(offsets), context_length), with targets shifted one token right."""
    index = offsets[:, None] + np.arange(context_length + 1)[None, :]  # (B, T + 1)
    rows = tokens[index]
    return rows[:, :-1].astype(np.int64), rows[:, 1:].astype(np.int64)


def get_batch(
    tokens: np.ndarray, batch_size: int, context_length: int, seed: int, index: int
) -> tuple[np.ndarray, np.ndarray]:
    """Draw training batch number index: (inputs, targets), each (batch_size, context_length) int64.

    The start offsets are uniform over every full window and come from a numpy Generator
    seeded with (seed, index). Any batch can be drawn on its own, so a resumed run needs
    no random state beyond the step count.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    if seed < 0 or index < 0:
        raise ValueError(f"seed and batch index must be >= 0, got seed {seed} and index {index}")
    num_offsets = tokens.size - context_length  # offsets 0 .. size - T - 1 leave room for the shifted target
    if num_offsets < 1:
        raise DataError(f"{tokens.size} tokens cannot fill one window of context_length {context_length} plus a target")
    rng = np.random.default_rng([seed, index])
    offsets = rng.integers(0, num_offsets, size=batch_size)
    return windows(tokens, offsets, context_length)


def validation_batches(
    tokens: np.ndarray, batch_size: int, context_length: int, num_batches: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return a fixed list of num_batches (inputs, targets) pairs evenly spaced over the validation split.

    No seed is involved, so every run on the same text is evaluated on the same windows and
    their validation losses can be compared.
    """
    if num_batches < 1:
        raise ValueError(f"num_batches must be a positive integer, got {num_batches}")
    last_offset = tokens.size - context_length - 1
    if last_offset < 0:
        raise DataError(f"{tokens.size} tokens cannot fill one window of context_length {context_length} plus a target")
    offsets = np.round(np.linspace(0, last_offset, num_batches * batch_size)).astype(np.int64)
    return [windows(tokens, chunk, context_length) for chunk in np.split(offsets, num_batches)]


# Reference losses.


def cross_entropy(logits: np.ndarray, targets: np.ndarray) -> float:
    """Return the mean cross-entropy in nats of logits (..., V) against integer targets (...), computed in float64."""
    logits = np.asarray(logits, dtype=np.float64)
    peak = logits.max(axis=-1, keepdims=True)
    log_normaliser = peak[..., 0] + np.log(np.exp(logits - peak).sum(axis=-1))
    target_logits = np.take_along_axis(logits, np.asarray(targets)[..., None], axis=-1)[..., 0]
    return float(np.mean(log_normaliser - target_logits))


def validation_loss(backend: Any, model: Any, batches: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Return the mean cross-entropy of model over batches, from backend.forward in eval mode.

    A forward pass and a numpy cross-entropy cost less than backend.loss_and_grads, which
    also computes gradients. Every batch has the same shape, so the mean over batches is
    the mean over all positions.
    """
    losses = [cross_entropy(backend.forward(model, inputs), targets) for inputs, targets in batches]
    return float(np.mean(losses))


def unigram_baseline_loss(train: np.ndarray, validation: np.ndarray, vocab_size: int) -> float:
    """Return the cross-entropy in nats of the train split's token frequencies on the validation split.

    This is the loss of a model that ignores context. Counts are add-one smoothed, so a token
    that occurs only in the validation split gets a finite loss.
    """
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64) + 1.0
    log_probabilities = np.log(counts / counts.sum())
    return float(-np.mean(log_probabilities[validation]))
