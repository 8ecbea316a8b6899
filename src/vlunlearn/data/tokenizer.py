"""CLIP's byte-level BPE tokenizer, as used by CLIP and MERU.

Written from the published description of the algorithm; produces the same ids as OpenAI CLIP,
MERU and open_clip on ordinary captions. The vocabulary file
``assets/bpe_simple_vocab_16e6.txt.gz`` is OpenAI's (MIT licence, see
``assets/CLIP_TOKENIZER_LICENSE``).

Pipeline for one caption:

1. clean: ``ftfy.fix_text``, ``html.unescape`` twice, collapse whitespace, strip, lowercase;
2. split into pre-tokens with the CLIP pattern (contractions, letter runs, single digits, runs of
   other non-space characters);
3. map each pre-token's UTF-8 bytes to printable unicode symbols, mark the last symbol with
   ``</w>`` and apply the BPE merges in rank order;
4. look the resulting symbols up in the vocabulary and wrap with ``<|startoftext|>`` /
   ``<|endoftext|>``.

The literal strings ``<|startoftext|>`` / ``<|endoftext|>`` inside a caption are treated as
ordinary text (as open_clip does), so a caption can never inject an EOT token.
"""

from __future__ import annotations

import functools
import gzip
import html
import os
import threading
import warnings
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import ftfy
import regex
import torch

from vlunlearn.errors import DataError

__all__ = ["Tokenizer", "bytes_to_unicode", "clean_text"]

_VOCAB_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
# 49408 = 256 byte symbols + 256 "</w>" variants + 48894 merges + 2 specials.
_NUM_MERGES = 49408 - 256 - 256 - 2
_SOT = "<|startoftext|>"
_EOT = "<|endoftext|>"
_END_OF_WORD = "</w>"

# Contractions, runs of letters, single digits, runs of anything else that is not whitespace.
_SPLIT_PATTERN = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r"\s+")


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Reversible map from each byte value to a printable unicode character.

    Printable Latin-1 bytes map to themselves; the other 68 bytes (controls, space, soft hyphen,
    ...) map, in increasing byte order, to code points 256, 257, ...  The dict's insertion order
    (printable bytes first, then the remapped ones) defines the first 256 vocabulary entries.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def clean_text(text: str) -> str:
    """CLIP/MERU caption cleaning: fix mojibake, unescape HTML twice, squash whitespace, lowercase."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    text = _WHITESPACE.sub(" ", text).strip()
    return text.lower()


class _Vocab:
    """The parsed vocabulary: token<->id tables, merge ranks and a per-word BPE cache."""

    def __init__(self, merge_lines: list[str], source: str) -> None:
        if len(merge_lines) < _NUM_MERGES:
            raise DataError(
                f"BPE vocabulary {source} has {len(merge_lines)} merge lines; "
                f"at least {_NUM_MERGES} are needed"
            )
        merges: list[tuple[str, str]] = []
        for lineno, line in enumerate(merge_lines[:_NUM_MERGES], start=2):
            parts = line.split()
            if len(parts) != 2:
                raise DataError(f"BPE vocabulary {source}, line {lineno}: expected two symbols, got {line!r}")
            merges.append((parts[0], parts[1]))

        byte_symbols = list(bytes_to_unicode().values())
        tokens = byte_symbols + [s + _END_OF_WORD for s in byte_symbols]
        tokens += [a + b for a, b in merges]
        tokens += [_SOT, _EOT]
        self.encoder: dict[str, int] = {tok: i for i, tok in enumerate(tokens)}
        if len(self.encoder) != len(tokens) or len(tokens) != Tokenizer.vocab_size:
            raise DataError(f"BPE vocabulary {source} does not yield {Tokenizer.vocab_size} distinct tokens")
        self.decoder: list[str] = tokens
        self.ranks: dict[tuple[str, str], int] = {pair: i for i, pair in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.bpe = functools.lru_cache(maxsize=1 << 17)(self._bpe)

    def _bpe(self, word: str) -> tuple[str, ...]:
        """Apply the merges to one pre-token (already byte-mapped); returns its final symbols."""
        symbols = list(word[:-1]) + [word[-1] + _END_OF_WORD]
        ranks = self.ranks
        while len(symbols) > 1:
            best_rank, best_pair = None, None
            for pair in zip(symbols, symbols[1:]):
                rank = ranks.get(pair)
                if rank is not None and (best_rank is None or rank < best_rank):
                    best_rank, best_pair = rank, pair
            if best_pair is None:
                break
            first, second = best_pair
            merged: list[str] = []
            i = 0
            n = len(symbols)
            while i < n:
                if i < n - 1 and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return tuple(symbols)


_VOCAB_CACHE: dict[str, _Vocab] = {}
_VOCAB_LOCK = threading.Lock()
_DEFAULT_KEY = "<packaged>"


def _read_merge_lines(vocab_path: str | os.PathLike | None) -> tuple[list[str], str]:
    if vocab_path is None:
        resource = resources.files("vlunlearn").joinpath("data", "assets", _VOCAB_FILENAME)
        source = f"vlunlearn/data/assets/{_VOCAB_FILENAME}"
        try:
            raw = resource.read_bytes()
        except OSError as exc:
            raise DataError(f"packaged BPE vocabulary {source} is missing: {exc}") from exc
    else:
        source = str(vocab_path)
        try:
            raw = Path(vocab_path).read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read BPE vocabulary {source}: {exc}") from exc
    try:
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        text = raw.decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"BPE vocabulary {source} is not a valid (gzipped) UTF-8 text file: {exc}") from exc
    lines = text.split("\n")
    # The first line is a "#version" header; merges follow.
    return lines[1:], source


def _get_vocab(vocab_path: str | os.PathLike | None) -> _Vocab:
    key = _DEFAULT_KEY if vocab_path is None else str(Path(vocab_path).resolve())
    vocab = _VOCAB_CACHE.get(key)
    if vocab is not None:
        return vocab
    with _VOCAB_LOCK:
        vocab = _VOCAB_CACHE.get(key)
        if vocab is None:
            lines, source = _read_merge_lines(vocab_path)
            vocab = _Vocab(lines, source)
            _VOCAB_CACHE[key] = vocab
    return vocab


def _shorten(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Tokenizer:
    """CLIP byte-level BPE tokenizer (vocabulary 49408, SOT 49406, EOT 49407, pad 0).

    ``encode`` returns ``[SOT, ..., EOT]`` without truncation. Calling the tokenizer on one or
    more captions returns a ``(B, L)`` LongTensor right-padded with 0 to the longest sequence,
    ``L <= context_length``; longer sequences are cut to ``context_length`` with EOT in the last
    slot (so the EOT position is still the row's argmax), and a warning names how many were cut.
    """

    vocab_size: int = 49408
    sot_id: int = 49406
    eot_id: int = 49407
    pad_id: int = 0

    def __init__(self, vocab_path: str | os.PathLike | None = None) -> None:
        self._vocab = _get_vocab(vocab_path)
        self._known: dict[str, tuple[int, ...]] = {}  # evaluation tokenises the same captions many times

    def encode(self, text: str) -> list[int]:
        """Token ids of one caption, ``[SOT, ..., EOT]``, not truncated (each distinct text is
        tokenised once per tokenizer)."""
        if not isinstance(text, str):
            raise TypeError(f"Tokenizer.encode expects a str, got {type(text).__name__}")
        if text not in self._known:
            self._known[text] = tuple(self._encode(text))
        return list(self._known[text])

    def _encode(self, text: str) -> list[int]:
        vocab = self._vocab
        byte_encoder = vocab.byte_encoder
        encoder = vocab.encoder
        ids = [self.sot_id]
        for piece in _SPLIT_PATTERN.findall(clean_text(text)):
            mapped = "".join(byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(encoder[symbol] for symbol in vocab.bpe(mapped))
        ids.append(self.eot_id)
        return ids

    def __call__(self, texts: str | Sequence[str], context_length: int = 77) -> torch.LongTensor:
        """Tokenise a caption or a batch of captions into a right-padded ``(B, L)`` LongTensor."""
        if isinstance(context_length, bool) or not isinstance(context_length, int) or context_length < 2:
            raise ValueError(f"context_length must be an int >= 2 (room for SOT and EOT), got {context_length!r}")
        if isinstance(texts, str):
            texts = [texts]
        elif not isinstance(texts, Sequence):
            texts = list(texts)
        sequences: list[list[int]] = []
        truncated: list[str] = []
        for text in texts:
            ids = self.encode(text)
            if len(ids) > context_length:
                ids = ids[:context_length]
                ids[-1] = self.eot_id
                truncated.append(text)
            sequences.append(ids)
        if truncated:
            warnings.warn(
                f"{len(truncated)} of {len(sequences)} caption(s) exceeded context_length={context_length} "
                f"tokens and were truncated (EOT kept last); first: {_shorten(truncated[0])!r}",
                stacklevel=2,
            )
        length = max((len(s) for s in sequences), default=0)
        out = torch.full((len(sequences), length), self.pad_id, dtype=torch.long)
        for row, ids in enumerate(sequences):
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """Text of a token sequence, dropping SOT, everything from the first EOT on, and trailing pads.

        Words are separated by single spaces, so punctuation comes back space-separated
        (``"a dog."`` decodes to ``"a dog ."``); the result is stripped.
        """
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        values = [int(i) for i in ids]
        if self.eot_id in values:
            values = values[: values.index(self.eot_id)]
        else:
            while values and values[-1] == self.pad_id:
                values.pop()
        decoder = self._vocab.decoder
        byte_decoder = self._vocab.byte_decoder
        buffer = bytearray()
        for i in values:
            if i in (self.sot_id, self.eot_id):
                continue
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
            token = decoder[i]
            end_of_word = token.endswith(_END_OF_WORD)
            if end_of_word:
                token = token[: -len(_END_OF_WORD)]
            buffer.extend(byte_decoder[c] for c in token)
            if end_of_word:
                buffer.extend(b" ")
        return buffer.decode("utf-8", errors="replace").strip()
