"""Comparable 2-D disk views of embeddings (DESIGN §6 figures).

Every model of one request is drawn with the same projection: :func:`disk_basis` takes two
principal directions of the tangent space at the origin from the ORIGINAL model, and
:func:`disk_view` projects any model's images (and concept prompts) on them, so the
"before" and "after" panels share their axes.

Projection of an embedding ``x`` on a basis ``B`` ``(D, 2)``:

- Lorentz (curvature ``-c``): ``u = log_map0(x)``, whose norm is the geodesic distance to
  the origin ``d0``. The direction is ``u @ B`` normalised (the first axis when it
  vanishes); the radius is ``tanh(sqrt(c) * d0 / 2)``, i.e. the Poincare-ball radius
  ``tanh(sqrt(c) d0 / 2) / sqrt(c)`` of curvature ``-c`` multiplied by ``sqrt(c)`` so the
  ball of radius ``1/sqrt(c)`` becomes the unit disk. The radius uses the full ``d0`` (not
  the norm of the 2-D projection), so each point's distance to the origin is kept exactly
  and a point nearer the origin on the hyperboloid is always nearer the centre; angles
  and distances between points are only a linear projection.
- Euclidean: ``normalize(x) @ B``. The embeddings are unit vectors and ``B`` orthonormal,
  so the coordinates already lie in the closed unit disk: the scale factor is 1 for every
  view, which keeps views of different models comparable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from vlunlearn.data import PairDataset, Tokenizer
from vlunlearn.geometry import euclidean, lorentz

__all__ = [
    "NO_CLASS", "disk_basis", "disk_view", "item_labels", "lorentz_to_disk", "principal_axes", "project_to_disk",
]

NO_CLASS = "(no class)"


def principal_axes(v: Tensor) -> Tensor:
    """Top-2 principal axes of the rows of ``v`` (centred, ``torch.linalg.svd``), each with its
    largest-magnitude entry positive so the result is deterministic. ``(N, D) -> (D, 2)``
    float64 with orthonormal columns; needs ``D >= 2``."""
    if v.ndim != 2 or v.shape[1] < 2:
        raise ValueError(f"principal axes need (N, D) vectors with D >= 2, got shape {tuple(v.shape)}")
    v = v.detach().to("cpu", torch.float64)
    _, _, vh = torch.linalg.svd(v - v.mean(dim=0, keepdim=True), full_matrices=True)
    axes = vh[:2].T
    signs = torch.sign(axes.gather(0, axes.abs().argmax(dim=0, keepdim=True)))
    return axes * torch.where(signs == 0, torch.ones_like(signs), signs)


def lorentz_to_disk(u: Tensor, basis: Tensor, c: float) -> Tensor:
    """Tangent vectors at the origin -> unit-disk points keeping the distance to the origin
    (module docstring). ``(N, D), (D, 2) -> (N, 2)`` float64."""
    if not c > 0:
        raise ValueError(f"the curvature magnitude c must be positive, got {c}")
    u = u.detach().to("cpu", torch.float64)
    projected = u @ basis.to(torch.float64)
    norms = projected.norm(dim=-1, keepdim=True)
    fallback = torch.tensor([1.0, 0.0], dtype=torch.float64).expand_as(projected)
    direction = torch.where(norms > 1e-12, projected / norms.clamp(min=1e-12), fallback)
    return direction * torch.tanh(math.sqrt(c) * u.norm(dim=-1) / 2)[:, None]


def _curvature(model) -> float | None:
    c = model.curvature() if model.geometry.hyperbolic else None
    return None if c is None else float(c.detach())


def _tangent(x: Tensor, c: float | None) -> Tensor:
    """Embeddings -> the vectors the basis is fitted on: ``log_map0`` (Lorentz, ``c``) or the
    normalised embeddings (Euclidean, ``c is None``). ``(N, D) -> (N, D)`` float64."""
    x = x.detach().to("cpu", torch.float64)
    return euclidean.normalize(x) if c is None else lorentz.log_map0(x, c)


def project_to_disk(x: Tensor, basis: Tensor, c: float | None) -> Tensor:
    """Embeddings -> 2-D points in the unit disk (module docstring); ``c`` is the curvature
    magnitude of a Lorentz model, ``None`` for a Euclidean one. ``(N, D), (D, 2) -> (N, 2)``."""
    u = _tangent(x, c)
    return u @ basis.to(torch.float64) if c is None else lorentz_to_disk(u, basis, c)


def disk_basis(model, images: PairDataset) -> Tensor:
    """Two orthonormal tangent directions at the origin: the principal axes of the model's
    image embeddings mapped by ``log_map0`` (Lorentz) or normalised (Euclidean). Compute it
    once from the original model and pass it to :func:`disk_view` for every model of the
    request. Returns ``(D, 2)`` float64."""
    from vlunlearn.evaluation.zero_shot import encode_inputs

    return principal_axes(_tangent(encode_inputs(model, images), _curvature(model)))


def item_labels(data: PairDataset) -> list[str]:
    """One class name per item: its label, or for an item labelled -1 the first class of
    ``data.class_names`` among its concepts (``NO_CLASS`` when none is)."""
    labels = []
    for label, concepts in zip(data.labels.tolist(), data.concepts):
        if label >= 0:
            labels.append(data.class_names[label])
        else:
            labels.append(next((name for name in data.class_names if name in concepts), NO_CLASS))
    return labels


def disk_view(
    model,
    images: PairDataset,
    tokenizer: Tokenizer,
    basis: Tensor,
    prompts: Mapping[str, Sequence[str]] | None = None,
) -> dict:
    """JSON-ready disk artifacts of ``model`` on ``basis`` ``(D, 2)``: ``disk_points``
    (``N`` pairs of floats), ``disk_labels`` (``N`` class names, :func:`item_labels`) and,
    when ``prompts`` (concept -> prompts, e.g. ``landing.hierarchy_prompts``) is given,
    ``disk_prompt_points`` (``K`` pairs: each concept's prompt-ensemble centroid) and
    ``disk_prompt_labels`` (the ``K`` concept names)."""
    from vlunlearn.evaluation.zero_shot import class_embeddings, encode_inputs

    c = _curvature(model)
    view = {
        "disk_points": project_to_disk(encode_inputs(model, images), basis, c).tolist(),
        "disk_labels": item_labels(images),
    }
    if prompts:
        centroids = class_embeddings(model, tokenizer, [list(p) for p in prompts.values()])
        view["disk_prompt_points"] = project_to_disk(centroids, basis, c).tolist()
        view["disk_prompt_labels"] = [str(name) for name in prompts]
    return view
