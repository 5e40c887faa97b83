"""Tokenizers: the built-in byte-level tokenizer and GPT-2 BPE from local files.

A checkpoint names its tokenizer with a small JSON spec stored in its metadata under the
key "tokenizer" (docs/formats.md):

    {"kind": "bytes"}
    {"kind": "gpt2-bpe", "vocab": "vocab.json", "merges": "merges.txt"}

Relative paths in a gpt2-bpe spec are resolved against the folder of the checkpoint that
stores the spec. Nothing is ever downloaded: the BPE files must exist on disk.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from shared.config import GPTConfig

logger = logging.getLogger(__name__)

TOKENIZER_KEY = "tokenizer"
BYTES_SPEC = {"kind": "bytes"}
KINDS = ("bytes", "gpt2-bpe")
GPT2_END_OF_TEXT = "<|endoftext|>"
DECODE_ERRORS = ("strict", "replace")


class TokenizerError(ValueError):
    """A tokenizer spec, tokenizer file, text or token id that trigpt cannot use."""


def gpt2_byte_alphabet() -> dict[int, str]:
    """Map each byte to the printable character that GPT-2's byte-level BPE writes for it.

    Bytes that are printable Latin-1 characters (other than space and the soft hyphen) stand
    for themselves. The other 68 bytes, in increasing order, take the characters U+0100 onward,
    so that no token string contains whitespace or a control character.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    alphabet = {byte: chr(byte) for byte in printable}
    next_code = 256
    for byte in range(256):
        if byte not in alphabet:
            alphabet[byte] = chr(next_code)
            next_code += 1
    return alphabet


class Tokenizer:
    """Shared decoding rules. Subclasses provide encode, decode_bytes, is_known and vocab_size."""

    kind = ""
    vocab_size = 0

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        raise NotImplementedError

    def is_known(self, token_id: int) -> bool:
        raise NotImplementedError

    def decode(self, ids: Iterable[int], errors: str = "strict") -> str:
        """Decode token ids to text.

        errors="strict" raises TokenizerError for an unknown id or for bytes that are not
        valid UTF-8. errors="replace" writes U+FFFD for each unknown id and for each invalid
        byte sequence; sampled tokens need it, because a model may stop in the middle of a
        multi-byte character or emit ids the tokenizer does not know.
        """
        if errors not in DECODE_ERRORS:
            raise ValueError(f"errors must be one of {DECODE_ERRORS}, got {errors!r}")
        ids = [int(token_id) for token_id in ids]
        if errors == "strict":
            data = self.decode_bytes(ids)
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError as error:
                raise TokenizerError(
                    f"token ids decode to bytes that are not valid UTF-8 ({error.reason} at byte {error.start}); "
                    f'pass errors="replace" to write U+FFFD there'
                ) from None

        pieces: list[str] = []
        run: list[int] = []
        for token_id in ids:
            if self.is_known(token_id):
                run.append(token_id)
                continue
            pieces.append(self.decode_bytes(run).decode("utf-8", errors="replace"))
            pieces.append("\ufffd")
            run = []
        pieces.append(self.decode_bytes(run).decode("utf-8", errors="replace"))
        return "".join(pieces)


class ByteTokenizer(Tokenizer):
    """One token per UTF-8 byte: ids 0..255, lossless for every Unicode string."""

    kind = "bytes"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        try:
            return list(text.encode("utf-8"))
        except UnicodeEncodeError as error:
            # Only lone surrogates (U+D800..U+DFFF) cannot be written as UTF-8.
            raise TokenizerError(
                f"text contains {text[error.start:error.end]!r} at position {error.start}, "
                f"which has no UTF-8 encoding (a lone surrogate); remove it"
            ) from None

    def is_known(self, token_id: int) -> bool:
        return 0 <= token_id < 256

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        ids = list(ids)
        for token_id in ids:
            if not self.is_known(token_id):
                raise TokenizerError(f"token id {token_id} out of range for the byte tokenizer (0..255)")
        return bytes(ids)

    def spec(self) -> dict[str, Any]:
        return dict(BYTES_SPEC)


class GPT2BPETokenizer(Tokenizer):
    """GPT-2's byte-level BPE, read from a local vocab.json and merges.txt.

    Encoding runs the `tokenizers` library (ByteLevel pre-tokenizer without a prefix space,
    as GPT-2 does); "<|endoftext|>" in the vocabulary is matched as one special token.
    Decoding maps each token string back to bytes through the GPT-2 byte alphabet.
    """

    kind = "gpt2-bpe"

    def __init__(self, vocab_path: str | os.PathLike, merges_path: str | os.PathLike) -> None:
        self.vocab_path = Path(vocab_path)
        self.merges_path = Path(merges_path)
        for role, path in (("vocab", self.vocab_path), ("merges", self.merges_path)):
            if not path.is_file():
                raise TokenizerError(
                    f"GPT-2 BPE {role} file not found: {path}; put the model's "
                    f"{'vocab.json' if role == 'vocab' else 'merges.txt'} there or fix the tokenizer spec"
                )
        try:
            vocab = json.loads(self.vocab_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise TokenizerError(f"{self.vocab_path}: not a valid vocab.json ({error})") from None
        if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
            raise TokenizerError(f"{self.vocab_path}: vocab.json must be a JSON object mapping token strings to ids")
        self.id_to_token = {token_id: token for token, token_id in vocab.items()}
        self.vocab_size = max(self.id_to_token, default=-1) + 1
        self._char_to_byte = {char: byte for byte, char in gpt2_byte_alphabet().items()}
        self._tokenizer = self._build(vocab)

    def _build(self, vocab: Mapping[str, int]) -> Any:
        from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

        try:
            model = models.BPE.from_file(str(self.vocab_path), str(self.merges_path))
        except Exception as error:  # the tokenizers library raises a bare Exception for bad files
            raise TokenizerError(
                f"cannot read GPT-2 BPE files {self.vocab_path} and {self.merges_path}: {error}"
            ) from None
        tokenizer = HFTokenizer(model)
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        if GPT2_END_OF_TEXT in vocab:
            tokenizer.add_special_tokens([AddedToken(GPT2_END_OF_TEXT, special=True)])
        return tokenizer

    def encode(self, text: str) -> list[int]:
        ids = self._tokenizer.encode(text).ids
        # BPE without an unknown token drops characters its vocabulary cannot spell; a
        # prompt must not lose text silently, so check the round trip.
        decoded = self.decode(ids, errors="replace")
        if decoded != text:
            raise TokenizerError(
                f"{self.vocab_path} cannot encode all of the text {text[:60]!r}: it has no tokens for some "
                f"characters (the encoding decodes to {decoded[:60]!r}); use a complete GPT-2 vocab.json"
            )
        return ids

    def is_known(self, token_id: int) -> bool:
        return token_id in self.id_to_token

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        data = bytearray()
        for token_id in ids:
            token = self.id_to_token.get(token_id)
            if token is None:
                raise TokenizerError(f"token id {token_id} is not in {self.vocab_path}")
            for char in token:
                byte = self._char_to_byte.get(char)
                # A character outside the byte alphabet can only come from a token added as
                # literal text, so it stands for its own UTF-8 bytes.
                data.extend(char.encode("utf-8") if byte is None else bytes([byte]))
        return bytes(data)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "vocab": str(self.vocab_path), "merges": str(self.merges_path)}


# Specs.


def check_spec(spec: Any, source: str = "tokenizer spec") -> dict[str, Any]:
    """Return spec as a plain dict if it names a known tokenizer kind with its fields, else raise TokenizerError."""
    if not isinstance(spec, Mapping):
        raise TokenizerError(f"{source}: a tokenizer spec is a JSON object such as {{\"kind\": \"bytes\"}}, got {spec!r}")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise TokenizerError(f"{source}: unknown tokenizer kind {kind!r}; known kinds: {', '.join(KINDS)}")
    expected = {"kind"} if kind == "bytes" else {"kind", "vocab", "merges"}
    missing = sorted(expected - set(spec))
    unexpected = sorted(set(spec) - expected)
    if missing or unexpected:
        problems = [f"missing field(s) {', '.join(missing)}"] if missing else []
        problems += [f"unknown field(s) {', '.join(unexpected)}"] if unexpected else []
        raise TokenizerError(f"{source}: {kind} tokenizer spec has {' and '.join(problems)}")
    for name in expected - {"kind"}:
        if not isinstance(spec[name], str) or not spec[name]:
            raise TokenizerError(f"{source}: tokenizer field {name!r} must be a file path, got {spec[name]!r}")
    return dict(spec)


def resolve_spec(spec: Mapping[str, Any], folder: str | os.PathLike) -> dict[str, Any]:
    """Return a copy of spec whose relative file paths are made absolute against folder."""
    spec = check_spec(spec)
    for name in ("vocab", "merges"):
        if name in spec:
            spec[name] = str((Path(folder) / spec[name]).resolve())
    return spec


def relocate_spec(spec: Mapping[str, Any], folder: str | os.PathLike) -> dict[str, Any]:
    """Return a copy of spec whose file paths are relative to folder, for a checkpoint written there."""
    spec = check_spec(spec)
    for name in ("vocab", "merges"):
        if name in spec:
            target = Path(spec[name])
            if target.is_absolute():
                spec[name] = os.path.relpath(target, Path(folder).resolve())
    return spec


def load_tokenizer(spec: Mapping[str, Any], folder: str | os.PathLike | None = None) -> Tokenizer:
    """Build the tokenizer a spec names; relative paths are resolved against folder (default: the working folder)."""
    spec = check_spec(spec)
    if spec["kind"] == "bytes":
        return ByteTokenizer()
    if folder is not None:
        spec = resolve_spec(spec, folder)
    return GPT2BPETokenizer(spec["vocab"], spec["merges"])


def checkpoint_tokenizer(
    metadata: Mapping[str, Any], config: GPTConfig, checkpoint_path: str | os.PathLike
) -> Tokenizer:
    """Return the tokenizer of a checkpoint from its metadata and config.

    A checkpoint whose metadata names no tokenizer gets the byte tokenizer when its
    vocabulary has room for all 256 byte ids, and a TokenizerError otherwise. The tokenizer's
    ids must fit the model's vocabulary.
    """
    source = str(checkpoint_path)
    spec = metadata.get(TOKENIZER_KEY)
    if spec is None:
        if config.vocab_size < 256:
            raise TokenizerError(
                f"{source} names no tokenizer and its vocab_size {config.vocab_size} is below the 256 ids of the "
                f"byte tokenizer; pass token ids with --prompt-ids"
            )
        if config.vocab_size > 256:
            logger.warning(
                "%s names no tokenizer; assuming bytes, although its vocab_size is %d", source, config.vocab_size
            )
        return ByteTokenizer()
    tokenizer = load_tokenizer(check_spec(spec, source), folder=Path(checkpoint_path).parent)
    if tokenizer.vocab_size > config.vocab_size:
        raise TokenizerError(
            f"{source}: the {tokenizer.kind} tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is "
            f"{config.vocab_size}; the checkpoint names the wrong tokenizer"
        )
    return tokenizer
