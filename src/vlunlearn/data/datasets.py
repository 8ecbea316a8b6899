"""The in-memory image-text dataset that every part of vlunlearn consumes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Sequence

import torch

from vlunlearn.data.hierarchy import ConceptHierarchy
from vlunlearn.errors import DataError
from vlunlearn.data.streaming import ImageFiles


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
    """Image-text pairs.

    Attributes:
        name: a short name used in messages and reports.
        images: uint8 ``(N, C, H, W)`` with ``C`` in {1, 3}: a tensor in memory, or an
            :class:`~vlunlearn.data.streaming.ImageFiles` that decodes from disk on demand.
        captions: per item, its captions ordered generic -> specific; the last one is the
            canonical caption.
        concepts: per item, every concept the image shows, ancestors included.
        labels: int64 ``(N,)``, index into ``class_names``, -1 for an item without a class.
        ids: unique, stable item ids such as ``"fashion-mnist/train/00042"``.
        class_names: the classes that ``labels`` index.
        hierarchy: the concept hierarchy, when the data has one.
    """

    name: str
    images: torch.Tensor | ImageFiles
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
        if not isinstance(self.images, (torch.Tensor, ImageFiles)) or self.images.dtype != torch.uint8:
            raise DataError(f"{where}: images must be a uint8 tensor or ImageFiles")
        if self.images.ndim != 4 or self.images.shape[1] not in (1, 3):
            raise DataError(f"{where}: images must have shape (N, C, H, W) with C in {{1, 3}}, not {tuple(self.images.shape)}")
        n = self.images.shape[0]
        lengths = {
            "captions": len(self.captions),
            "concepts": len(self.concepts),
            "labels": self.labels.numel(),
            "ids": len(self.ids),
        }
        wrong = {key: value for key, value in lengths.items() if value != n}
        if wrong or self.labels.ndim != 1:
            raise DataError(f"{where}: {n} images but " + ", ".join(f"{v} {k}" for k, v in lengths.items()))
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
        return self.images.shape[0]

    def __repr__(self) -> str:
        shape = "x".join(str(s) for s in self.images.shape[1:])
        return f"PairDataset({self.name!r}, {len(self)} items, images {shape}, {len(self.class_names)} classes)"

    def subset(self, indices: Sequence[int] | torch.Tensor, name: str | None = None) -> "PairDataset":
        """The items at ``indices`` (or where a boolean mask is true), in that order."""
        index = as_index(indices, len(self))
        rows = index.tolist()
        return PairDataset(
            name=self.name if name is None else name,
            images=self.images[index],
            captions=[self.captions[i] for i in rows],
            concepts=[self.concepts[i] for i in rows],
            labels=self.labels[index],
            ids=[self.ids[i] for i in rows],
            class_names=self.class_names,
            hierarchy=self.hierarchy,
        )

    def image_batch(self, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """float32 ``(B, C, H, W)`` images scaled to [0, 1] (decoded now when streamed)."""
        images = self.images[as_index(indices, len(self))]
        if isinstance(images, ImageFiles):
            images = images.decode()
        return images.to(torch.float32).div_(255.0)

    def canonical_captions(self, indices: Sequence[int] | torch.Tensor | None = None) -> list[str]:
        """The canonical (most specific, last) caption of each item, or of the items at ``indices``."""
        rows = range(len(self)) if indices is None else as_index(indices, len(self)).tolist()
        return [self.captions[i][-1] for i in rows]

    def content_hash(self) -> str:
        """SHA-256 (hex) over the images, captions, ids, labels, concepts and class names.

        It depends only on the content, so it is the same across runs and machines. For
        streamed images it covers the files' names, sizes and modification times instead of
        the pixels (see :meth:`ImageFiles.fingerprint`).
        """
        digest = hashlib.sha256()
        digest.update(json.dumps({"shape": list(self.images.shape), "dtype": str(self.images.dtype)}).encode())
        if isinstance(self.images, ImageFiles):
            digest.update(self.images.fingerprint())
        else:
            digest.update(self.images.contiguous().numpy().tobytes())
        text = {
            "captions": [list(c) for c in self.captions],
            "ids": self.ids,
            "labels": self.labels.tolist(),
            "concepts": [sorted(c) for c in self.concepts],
            "class_names": list(self.class_names),
        }
        digest.update(json.dumps(text, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
        return digest.hexdigest()
