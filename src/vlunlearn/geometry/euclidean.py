"""Euclidean (CLIP) geometry: unit-norm embeddings compared by cosine similarity."""

from __future__ import annotations

from torch import Tensor


def normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    """L2-normalise the last dimension. ``(..., D) -> (..., D)``."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def pairwise_cosine(x: Tensor, y: Tensor) -> Tensor:
    """Cosine similarity of every row of ``x`` with every row of ``y``. ``(B1, D), (B2, D) -> (B1, B2)``."""
    return normalize(x) @ normalize(y).T


def paired_cosine(x: Tensor, y: Tensor) -> Tensor:
    """Cosine similarity of matching rows. ``(B, D), (B, D) -> (B,)``."""
    return (normalize(x) * normalize(y)).sum(dim=-1)
