"""Geometries of the joint embedding space, as stateless objects over pure functions.

A :class:`Geometry` is how methods and metrics see the space without asking which
one it is: ``embed`` turns projected features into embeddings, ``pairwise_similarity``
and ``paired_similarity`` compare them (cosine, or negative geodesic distance), and
``to_tangent``/``from_tangent`` move to and from a flat chart (identity and
normalisation for Euclidean, log/exp maps at the origin for Lorentz). The
curvature ``c`` is an argument; the Euclidean geometry ignores it.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from vlunlearn.errors import ConfigError
from vlunlearn.geometry import euclidean, lorentz

__all__ = ["Geometry", "EUCLIDEAN", "LORENTZ", "get_geometry", "euclidean", "lorentz"]


@dataclass(frozen=True)
class Geometry:
    """Base class; see the module docstring. Instances hold no state."""

    name: str
    hyperbolic: bool

    def embed(self, features: Tensor, scale: Tensor | None, c: Tensor | float | None) -> Tensor:
        """Projected features -> embeddings. ``(B, D) -> (B, D)``."""
        raise NotImplementedError

    def pairwise_similarity(self, x: Tensor, y: Tensor, c: Tensor | float | None) -> Tensor:
        """``(B1, D), (B2, D) -> (B1, B2)``; larger is more similar."""
        raise NotImplementedError

    def paired_similarity(self, x: Tensor, y: Tensor, c: Tensor | float | None) -> Tensor:
        """``(B, D), (B, D) -> (B,)``."""
        raise NotImplementedError

    def to_tangent(self, x: Tensor, c: Tensor | float | None) -> Tensor:
        """Embeddings -> a flat chart where averaging and interpolation make sense. ``(..., D) -> (..., D)``."""
        raise NotImplementedError

    def from_tangent(self, v: Tensor, c: Tensor | float | None) -> Tensor:
        """Inverse of :meth:`to_tangent` (onto the unit sphere for Euclidean). ``(..., D) -> (..., D)``."""
        raise NotImplementedError

    def mean(self, x: Tensor, c: Tensor | float | None) -> Tensor:
        """Centroid of embeddings (prompt ensembling). ``(N, D) -> (D,)``."""
        return self.from_tangent(self.to_tangent(x, c).mean(dim=0), c)


@dataclass(frozen=True)
class _Euclidean(Geometry):
    def embed(self, features, scale, c):
        return euclidean.normalize(features)

    def pairwise_similarity(self, x, y, c):
        return euclidean.pairwise_cosine(x, y)

    def paired_similarity(self, x, y, c):
        return euclidean.paired_cosine(x, y)

    def to_tangent(self, x, c):
        return x

    def from_tangent(self, v, c):
        return euclidean.normalize(v)


@dataclass(frozen=True)
class _Lorentz(Geometry):
    def embed(self, features, scale, c):
        return lorentz.exp_map0(features * scale, c)

    def pairwise_similarity(self, x, y, c):
        return lorentz.pairwise_neg_dist(x, y, c)

    def paired_similarity(self, x, y, c):
        return -lorentz.paired_dist(x, y, c)

    def to_tangent(self, x, c):
        return lorentz.log_map0(x, c)

    def from_tangent(self, v, c):
        return lorentz.exp_map0(v, c)


EUCLIDEAN: Geometry = _Euclidean(name="euclidean", hyperbolic=False)
LORENTZ: Geometry = _Lorentz(name="lorentz", hyperbolic=True)
_BY_NAME = {g.name: g for g in (EUCLIDEAN, LORENTZ)}


def get_geometry(name: str) -> Geometry:
    """Look a geometry up by name (``euclidean`` or ``lorentz``)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ConfigError(f"unknown geometry {name!r}; choose one of {sorted(_BY_NAME)}") from None
