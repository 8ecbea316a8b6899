"""The in-memory dataset of pairs (an image or a graph, and its captions) that every part of vlunlearn consumes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Sequence

import torch

from vlunlearn.data.graphs import GraphSet
from vlunlearn.data.hierarchy import ConceptHierarchy
from vlunlearn.errors import DataError
from vlunlearn.data.streaming import ImageFiles

Inputs = torch.Tensor | ImageFiles | GraphSet


def as_index(indices: Sequence[int] | torch.Tensor, size: int) -> torch.Tensor:
    """Indices (a sequence, an int64 tensor or a boolean mask of length ``size``) as an int64 tensor."""
    index = torch.as_tensor(indices)
    if index.dtype == torch.bool:
        if index.shape != (size,):
            raise DataError(f"a boolean mask must have shape ({size},), not {tuple(index.shape)}")
        return index.nonzero().flatten()
    if index.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    if index.dtype.is_floating_point or index.dtype.is_complex:
        raise DataError(f"indices must be integers, not {index.dtype}")
    index = index.to(torch.int64).flatten()
    if index.min() < -size or index.max() >= size:
        raise DataError(f"index out of range for a dataset of {size} items")
    return index % size if size else index


@dataclass
class PairDataset:
    """Pairs of an input (an image or a graph) and its captions.

    Attributes:
        name: a short name used in messages and reports.
        inputs: what the non-text tower encodes, one per item. Images: uint8 ``(N, C, H, W)``
            with ``C`` in {1, 3}, a tensor in memory or an
            :class:`~vlunlearn.data.streaming.ImageFiles` that decodes from disk on demand.
            Graphs (molecules): a :class:`~vlunlearn.data.graphs.GraphSet`.
        captions: per item, its captions ordered generic -> specific; the last one is the
            canonical caption.
        concepts: per item, every concept the input shows, ancestors included.
        labels: int64 ``(N,)``, index into ``class_names``, -1 for an item without a class.
        ids: unique, stable item ids such as ``"fashion-mnist/train/00042"``.
        class_names: the classes that ``labels`` index.
        hierarchy: the concept hierarchy, when the data has one.
    """

    name: str
    inputs: Inputs
    captions: list[tuple[str, ...]]
    concepts: list[frozenset[str]]
    labels: torch.Tensor
    ids: list[str]
    class_names: tuple[str, ...]
    hierarchy: ConceptHierarchy | None = None

    def __post_init__(self) -> None:
        self.captions = [tuple(c) for c in self.captions]
        self.concepts = [frozenset(c) for c in self.concepts]
        self.ids = [str(i) for i in self.ids]
        self.class_names = tuple(self.class_names)
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64)
        where = f"dataset {self.name!r}"
        if not isinstance(self.inputs, GraphSet):
            if not isinstance(self.inputs, (torch.Tensor, ImageFiles)) or self.inputs.dtype != torch.uint8:
                raise DataError(f"{where}: inputs must be images (a uint8 tensor or ImageFiles) or a GraphSet")
            if self.inputs.ndim != 4 or self.inputs.shape[1] not in (1, 3):
                raise DataError(f"{where}: images must have shape (N, C, H, W) with C in {{1, 3}}, "
                                f"not {tuple(self.inputs.shape)}")
        n = self.inputs.shape[0]
        lengths = {
            "captions": len(self.captions),
            "concepts": len(self.concepts),
            "labels": self.labels.numel(),
            "ids": len(self.ids),
        }
        wrong = {key: value for key, value in lengths.items() if value != n}
        if wrong or self.labels.ndim != 1:
            raise DataError(f"{where}: {n} {self.modality}s but " + ", ".join(f"{v} {k}" for k, v in lengths.items()))
        if any(not captions or not all(isinstance(c, str) for c in captions) for captions in self.captions):
            raise DataError(f"{where}: every item needs at least one caption, and captions must be strings")
        if len(set(self.ids)) != n:
            seen, duplicates = set(), []
            for item_id in self.ids:
                if item_id in seen and item_id not in duplicates:
                    duplicates.append(item_id)
                seen.add(item_id)
            raise DataError(f"{where}: ids must be unique; repeated: {', '.join(duplicates[:5])}")
        if n and (self.labels.min() < -1 or self.labels.max() >= len(self.class_names)):
            raise DataError(f"{where}: labels must lie in [-1, {len(self.class_names)})")

    def __len__(self) -> int:
        return self.inputs.shape[0]

    @property
    def modality(self) -> str:
        """``image`` or ``graph``: what the non-text side of the pairs is."""
        return "graph" if isinstance(self.inputs, GraphSet) else "image"

    def __repr__(self) -> str:
        shape = "graphs" if self.modality == "graph" else "images " + "x".join(str(s) for s in self.inputs.shape[1:])
        return f"PairDataset({self.name!r}, {len(self)} items, {shape}, {len(self.class_names)} classes)"

    def subset(self, indices: Sequence[int] | torch.Tensor, name: str | None = None) -> "PairDataset":
        """The items at ``indices`` (or where a boolean mask is true), in that order."""
        index = as_index(indices, len(self))
        rows = index.tolist()
        return PairDataset(
            name=self.name if name is None else name,
            inputs=self.inputs[index],
            captions=[self.captions[i] for i in rows],
            concepts=[self.concepts[i] for i in rows],
            labels=self.labels[index],
            ids=[self.ids[i] for i in rows],
            class_names=self.class_names,
            hierarchy=self.hierarchy,
        )

    def input_batch(self, indices: Sequence[int] | torch.Tensor) -> torch.Tensor | GraphSet:
        """The inputs at ``indices`` as a tower takes them: float32 ``(B, C, H, W)`` images scaled
        to [0, 1] (decoded now when streamed), or a :class:`GraphSet` of ``B`` graphs."""
        inputs = self.inputs[as_index(indices, len(self))]
        if isinstance(inputs, GraphSet):
            return inputs
        if isinstance(inputs, ImageFiles):
            inputs = inputs.decode()
        return inputs.to(torch.float32).div_(255.0)

    def canonical_captions(self, indices: Sequence[int] | torch.Tensor | None = None) -> list[str]:
        """The canonical (most specific, last) caption of each item, or of the items at ``indices``."""
        rows = range(len(self)) if indices is None else as_index(indices, len(self)).tolist()
        return [self.captions[i][-1] for i in rows]

    def content_hash(self) -> str:
        """SHA-256 (hex) over the inputs, captions, ids, labels, concepts and class names.

        It depends only on the content, so it is the same across runs and machines. For
        streamed images it covers the files' names, sizes and modification times instead of
        the pixels (see :meth:`ImageFiles.fingerprint`).
        """
        digest = hashlib.sha256()
        if isinstance(self.inputs, GraphSet):
            digest.update(b"graphs")
            digest.update(self.inputs.fingerprint())
        else:
            digest.update(json.dumps({"shape": list(self.inputs.shape), "dtype": str(self.inputs.dtype)}).encode())
            if isinstance(self.inputs, ImageFiles):
                digest.update(self.inputs.fingerprint())
            else:
                digest.update(self.inputs.contiguous().numpy().tobytes())
        text = {
            "captions": [list(c) for c in self.captions],
            "ids": self.ids,
            "labels": self.labels.tolist(),
            "concepts": [sorted(c) for c in self.concepts],
            "class_names": list(self.class_names),
        }
        digest.update(json.dumps(text, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
        return digest.hexdigest()
