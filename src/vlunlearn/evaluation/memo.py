"""Memoized embeddings of a frozen model, so that the metrics of one evaluation encode each
distinct input (image or graph) and caption once instead of once per metric.

:class:`MemoEncoder` wraps any object with ``encode_input`` and ``encode_text`` (a
:class:`~vlunlearn.models.ContrastiveModel`, an open_clip adapter, a test fake) and caches one
embedding per distinct input row:

- a caption by its token ids with the trailing padding zeros stripped, so the same caption
  padded to different lengths (the tokenizer pads to the longest caption of each batch) hits;
- an image by a BLAKE2b digest of its bytes plus its shape and dtype: hashing is exact, so any
  change of one pixel (or of the dtype) is a miss.

Each call encodes only the distinct rows it has not seen, in one batch, and returns the rows in
input order on the model's output device and dtype. A row's cached embedding is the model's
output for the batch in which it was first encoded; a model need not be bitwise
batch-invariant (CPU kernels block by batch size), so encoding it again in another batch may
differ in the last bits.

The cache is valid only while the wrapped model's weights do not change: the wrapper refuses a
model in training mode, but it cannot see weights edited in eval mode. Memory grows with the
number of distinct inputs (for an evaluation: tens of thousands of 128-d rows, a few MB).
Every other attribute (``geometry``, ``curvature``, ``logit_scale``, ``config``, ...) is the
wrapped model's.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Hashable

import torch
from torch import Tensor

from vlunlearn.data.graphs import GraphSet

__all__ = ["MemoEncoder", "input_keys", "token_keys"]


def token_keys(tokens: Tensor) -> list[tuple[int, ...]]:
    """One key per row of ``(B, L)`` token ids: the row's ids without its trailing zeros."""
    keys = []
    for row in tokens.tolist():
        end = len(row)
        while end and row[end - 1] == 0:
            end -= 1
        keys.append(tuple(row[:end]))
    return keys


def input_keys(inputs: Tensor | GraphSet) -> list[tuple]:
    """One key per input: for images ``(B, C, H, W)``, ``(dtype, (C, H, W), 16-byte BLAKE2b of
    its bytes)``; for graphs, ``("graph", digest of its nodes, edges and features)``."""
    if isinstance(inputs, GraphSet):
        return [("graph", key) for key in inputs.graph_keys()]
    flat = inputs.detach().cpu().contiguous().reshape(inputs.shape[0], -1)
    raw = flat.view(torch.uint8).numpy()  # (B, bytes per image), any dtype (bfloat16 included)
    shape, dtype = tuple(inputs.shape[1:]), str(inputs.dtype)
    return [(dtype, shape, hashlib.blake2b(row.tobytes(), digest_size=16).digest()) for row in raw]


class MemoEncoder:
    """A frozen ``model`` whose ``encode_input`` / ``encode_text`` are memoized per row.

    Attributes:
        model: the wrapped model (must stay in eval mode with unchanged weights).
        hits: rows served from the cache (also a row repeated within one call, after its first).
        misses: rows encoded by the model.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.hits = 0
        self.misses = 0
        self._inputs: dict[Hashable, Tensor] = {}
        self._texts: dict[Hashable, Tensor] = {}
        self._check_frozen()

    def __getattr__(self, name: str) -> Any:
        model = self.__dict__.get("model")
        if model is None:  # during copy/unpickling, before __init__ has run
            raise AttributeError(name)
        return getattr(model, name)

    def __repr__(self) -> str:
        return f"MemoEncoder({self.model!r}, cached={len(self._inputs)} inputs/{len(self._texts)} texts)"

    def _check_frozen(self) -> None:
        if getattr(self.model, "training", False):
            raise RuntimeError(
                "MemoEncoder needs a frozen model in eval mode: memoizing a model in training mode "
                "(whose weights may change) would return stale embeddings; call model.eval() first"
            )

    def eval(self) -> "MemoEncoder":
        """Put the wrapped model in eval mode; returns the wrapper (not the bare model)."""
        self.model.eval()
        return self

    @torch.no_grad()
    def encode_input(self, inputs: Tensor | GraphSet) -> Tensor:
        """Memoized ``model.encode_input``. ``(B, C, H, W)`` images or ``B`` graphs ``-> (B, D)``."""
        return self._encode(inputs, input_keys(inputs), self._inputs, self.model.encode_input)

    @torch.no_grad()
    def encode_text(self, tokens: Tensor) -> Tensor:
        """Memoized ``model.encode_text``. ``(B, L)`` token ids, right-padded with 0 ``-> (B, D)``."""
        return self._encode(tokens, token_keys(tokens), self._texts, self.model.encode_text)

    def _encode(self, batch: Tensor | GraphSet, keys: list, cache: dict[Hashable, Tensor],
                encode: Callable[[Tensor], Tensor]) -> Tensor:
        """Rows of ``batch`` from ``cache``, encoding the distinct missing ones in one batch. ``(B, ...) -> (B, D)``."""
        self._check_frozen()
        if not keys:
            return encode(batch)
        first: dict[Hashable, int] = {}  # missing key -> its first row in the batch
        for row, key in enumerate(keys):
            if key not in cache and key not in first:
                first[key] = row
        if first:
            rows = list(first.values())
            encoded = encode(batch if len(rows) == len(keys) else batch[torch.tensor(rows, device=batch.device)])
            cache.update(zip(first, encoded))
        self.misses += len(first)
        self.hits += len(keys) - len(first)
        return torch.stack([cache[key] for key in keys])
