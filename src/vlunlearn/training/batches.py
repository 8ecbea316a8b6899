"""Deterministic batch streams: batch ``k`` depends only on the seed and ``k``.

That makes resuming after an interruption exact (no sampler state to save) and lets
one training loop serve every objective: an objective asks its samplers for the
batch of the current step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from vlunlearn.data import PairDataset, Tokenizer
from vlunlearn.data.graphs import GraphSet
from vlunlearn.errors import DataError


@dataclass
class PairBatch:
    """Inputs (images ``(B, C, H, W)`` in [0, 1], or a :class:`GraphSet` of ``B`` graphs), token
    ids ``(B, L)`` and dataset indices ``(B,)``."""

    inputs: Tensor | GraphSet
    tokens: Tensor
    indices: Tensor

    def __len__(self) -> int:
        return self.indices.shape[0]


def step_generator(*seed_parts: int) -> torch.Generator:
    """A generator seeded by a stable mix of integers (seed, step, salt, ...)."""
    seed = 0
    for part in seed_parts:  # a simple, stable mix of the parts into one 63-bit seed
        seed = (seed * 1_000_003 + part + 1) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


class TokenCache:
    """Tokenises captions once; built-in datasets reuse a few hundred distinct strings."""

    def __init__(self, tokenizer: Tokenizer, context_length: int) -> None:
        self.tokenizer = tokenizer
        self.context_length = context_length
        self._ids: dict[str, Tensor] = {}

    def __call__(self, captions: Sequence[str]) -> Tensor:
        """Token ids ``(B, L)``, right-padded with 0 to the longest caption."""
        missing = [c for c in dict.fromkeys(captions) if c not in self._ids]
        if missing:
            for caption, row in zip(missing, self.tokenizer(missing, self.context_length)):
                self._ids[caption] = row[: int(row.argmax()) + 1]  # up to end-of-text, the largest id
        rows = [self._ids[c] for c in captions]
        return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=0)


class PairSampler:
    """Shuffled batches of input-caption pairs, reshuffled every epoch, without replacement.

    ``caption_weights`` (generic -> specific) draws one caption level per item and step,
    so a hyperbolic model sees every level of the hierarchy; ``None`` always uses the
    canonical (most specific) caption. An item with another number of captions (users' data
    with level captions, e.g. three levels plus the user's own) gets its canonical caption
    with the last weight's probability and one of its other captions, uniformly, otherwise. The batch size is capped at the dataset size.
    ``drop_last`` drops an epoch's last partial batch (pretraining); otherwise that batch is
    filled up with the epoch's first items, so that every item is seen in every epoch
    (unlearning, whose budget counts passes over D_f).
    """

    def __init__(
        self,
        dataset: PairDataset,
        tokens: TokenCache,
        batch_size: int,
        seed: int,
        caption_weights: Sequence[float] | None = None,
        drop_last: bool = True,
    ) -> None:
        if len(dataset) == 0:
            raise DataError(f"cannot sample batches from the empty dataset {dataset.name!r}")
        self.dataset = dataset
        self.tokens = tokens
        self.batch_size = min(batch_size, len(dataset))
        self.seed = seed
        self.drop_last = drop_last
        self.caption_weights = None if caption_weights is None else torch.tensor(caption_weights, dtype=torch.float)
        self._epoch = -1
        self._order = torch.empty(0, dtype=torch.long)

    @property
    def steps_per_epoch(self) -> int:
        full, partial = divmod(len(self.dataset), self.batch_size)
        return full + int(bool(partial) and not self.drop_last)

    def indices(self, step: int) -> Tensor:
        """Dataset indices of the batch at ``step``. ``() -> (B,)``."""
        epoch, position = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._order = torch.randperm(len(self.dataset), generator=step_generator(self.seed, epoch))
            self._epoch = epoch
        start = position * self.batch_size
        batch = self._order[start : start + self.batch_size]
        return torch.cat([batch, self._order[: self.batch_size - len(batch)]])

    def batch(self, step: int) -> PairBatch:
        indices = self.indices(step)
        return PairBatch(self.dataset.input_batch(indices), self.tokens(self._captions(indices, step)), indices)

    def _captions(self, indices: Tensor, step: int) -> list[str]:
        captions = [self.dataset.captions[i] for i in indices.tolist()]
        if self.caption_weights is None:
            return [levels[-1] for levels in captions]
        levels = torch.multinomial(
            self.caption_weights, len(captions), replacement=True, generator=step_generator(self.seed, step, 7)
        )
        last = len(self.caption_weights) - 1
        if all(len(c) == last + 1 for c in captions):  # the built-in data: one caption per weight
            return [c[level] for c, level in zip(captions, levels.tolist())]
        above = torch.rand(len(captions), generator=step_generator(self.seed, step, 8)).tolist()
        return [c[level] if len(c) == last + 1 else c[-1] if level == last or len(c) == 1
                else c[int(u * (len(c) - 1))] for c, level, u in zip(captions, levels.tolist(), above)]


def concat_tokens(*token_batches: Tensor) -> Tensor:
    """Stack token batches of different padded lengths. ``(B1, L1), (B2, L2) -> (B1 + B2, max L)``."""
    width = max(tokens.shape[1] for tokens in token_batches)
    return torch.cat([torch.nn.functional.pad(tokens, (0, width - tokens.shape[1])) for tokens in token_batches])
