"""Hyperbolic hierarchy diagnostics (Lorentz models only).

- :func:`distance_to_origin_by_level` and :func:`distance_to_origin_by_concept`: how far
  from the origin captions of each level, and images of each class, sit. A model that
  learned the hierarchy puts generic text near the origin and specific items further out.
- :func:`entailment_rate`: how often an image lies inside the entailment cone of its caption.
- :func:`input_traversal`: MERU's image traversal (``reference/meru.md`` §4.4), the labels
  met on the geodesic from an input's embedding (an image's or a graph's) to the origin.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import Tensor

from vlunlearn.data import PairDataset, Tokenizer
from vlunlearn.data.graphs import GraphSet
from vlunlearn.evaluation.zero_shot import class_embeddings, encode_inputs, encode_texts
from vlunlearn.geometry import lorentz

ROOT = "[ROOT]"


def _require_hyperbolic(model) -> None:
    if not model.geometry.hyperbolic:
        raise ValueError("hierarchy diagnostics need a hyperbolic (Lorentz) model; this one is Euclidean")


@torch.no_grad()
def distance_to_origin_by_level(model, data: PairDataset, tokenizer: Tokenizer) -> dict[str, float]:
    """Mean distance to the origin of the distinct captions at each caption level, and of the inputs
    (images or graphs, key ``"inputs"``).

    When the data has a hierarchy and items with a caption for each of its
    ``caption_levels`` (generic -> specific), those items' captions are measured by level and
    named by it (users' own captions after them are left out). Otherwise caption position
    ``i`` of every item is ``level{i}``, up to the fewest captions an item has. In a model
    that learned the hierarchy the means rise with specificity, and the inputs (the most
    specific items) lie furthest out.
    """
    _require_hyperbolic(model)
    c = model.curvature()
    names = data.hierarchy.caption_levels if data.hierarchy is not None else ()
    rows = [captions for captions in data.captions if len(captions) >= len(names)]
    if not names or not rows:  # no hierarchy, or captions not written from it (users' own captions)
        rows = data.captions
        names = tuple(f"level{i}" for i in range(min(len(captions) for captions in rows)))
    result = {}
    for level, name in enumerate(names):
        texts = sorted({captions[level] for captions in rows})
        result[name] = lorentz.dist_to_origin(encode_texts(model, tokenizer, texts), c).mean().item()
    result["inputs"] = lorentz.dist_to_origin(encode_inputs(model, data), c).mean().item()
    return result


@torch.no_grad()
def distance_to_origin_by_concept(
    model, data: PairDataset, tokenizer: Tokenizer, group_by: str = "labels"
) -> dict[str, float]:
    """Mean distance to the origin of the image embeddings of each class, by class name.

    ``group_by="labels"`` (default): an image counts for the class of its label (items
    labelled -1 are ignored). ``group_by="concepts"``: an image counts for every class of
    ``data.class_names`` in its ``concepts``, so a multi-item scene counts once for each class
    it shows (other concepts, such as ancestors, are ignored). Classes are listed in
    ``data.class_names`` order; classes without any image are left out. ``tokenizer`` is
    unused (kept for a uniform signature).
    """
    _require_hyperbolic(model)
    if group_by not in ("labels", "concepts"):
        raise ValueError(f"group_by must be 'labels' or 'concepts', not {group_by!r}")
    if len(data) == 0:
        return {}
    d0 = lorentz.dist_to_origin(encode_inputs(model, data), model.curvature()).cpu()  # (N,)
    if group_by == "labels":
        members = {name: data.labels == k for k, name in enumerate(data.class_names)}
    else:
        members = {name: torch.tensor([name in shown for shown in data.concepts]) for name in data.class_names}
    return {name: d0[mask].mean().item() for name, mask in members.items() if bool(mask.any())}


@torch.no_grad()
def entailment_rate(model, data: PairDataset, tokenizer: Tokenizer) -> float:
    """Fraction (0..1) of pairs whose image lies in the entailment cone of its canonical caption.

    A pair counts when ``ext(t, v) <= aper(t)``: the exterior angle at the caption
    embedding ``t`` of the triangle origin-``t``-``v`` is at most the cone's half-aperture
    (MERU's entailment condition, the one its entailment loss penalises). NaN for empty data.
    """
    _require_hyperbolic(model)
    if len(data) == 0:
        return math.nan
    c = model.curvature()
    images = encode_inputs(model, data)
    captions = data.canonical_captions()
    distinct = sorted(set(captions))
    position = {text: i for i, text in enumerate(distinct)}
    texts = encode_texts(model, tokenizer, distinct)[torch.tensor([position[t] for t in captions])]
    texts = texts.to(images.device)
    inside = lorentz.exterior_angle(texts, images, c) <= lorentz.half_aperture(texts, c)
    return inside.double().mean().item()


def _prompt_lists(prompts: Mapping[str, Sequence[str] | str]) -> tuple[list[str], list[list[str]]]:
    names, lists = [], []
    for name, value in prompts.items():
        if name == ROOT:
            raise ValueError(f"{ROOT!r} is reserved for the origin and cannot name a concept")
        texts = [value] if isinstance(value, str) else list(value)
        if not texts:
            raise ValueError(f"concept {name!r} has no prompts")
        names.append(str(name))
        lists.append(texts)
    return names, lists


@torch.no_grad()
def input_traversal(
    model,
    item: Tensor | GraphSet,
    prompts: Mapping[str, Sequence[str] | str],
    tokenizer: Tokenizer,
    steps: int = 50,
) -> list[str]:
    """MERU's image traversal: the concepts met walking from an input's embedding to the origin.

    Args:
        item: one image ``(C, H, W)`` (or ``(1, C, H, W)``), floating point in [0, 1]
            (uint8 is scaled by 1/255), or a :class:`GraphSet` of one graph.
        prompts: concept name -> its prompt(s); e.g. ``hierarchy.level_prompts(level)``
            for the levels of interest merged into one dict. A concept's embedding is the
            geometry mean of its prompt embeddings (tangent mean at the origin, mapped back).
        steps: number of points on the path (at least 2).

    The points are ``exp_map0(s * log_map0(v))`` for ``s`` = ``steps`` evenly spaced values
    from 1 (the image embedding ``v``) down to 0 (the origin). Each point gets the label of
    the candidate with the largest Lorentzian inner product with it (equivalently the
    smallest geodesic distance) among the concepts whose entailment cone contains the point,
    ``ext(text, point) <= aper(text)``, and ``"[ROOT]"`` (the origin), which is always a
    candidate. Ties go to the concept listed first, ``"[ROOT]"`` last. Consecutive repeats
    are removed. Returns the labels, image end first; the last is always ``"[ROOT]"``,
    because the origin is nearest to itself and lies in no cone.
    """
    _require_hyperbolic(model)
    if steps < 2:
        raise ValueError(f"steps must be at least 2, not {steps}")
    names, lists = _prompt_lists(prompts)
    if isinstance(item, GraphSet):
        if len(item) != 1:
            raise ValueError(f"expected one graph, got {len(item)}")
    else:
        if item.ndim == 3:
            item = item.unsqueeze(0)
        if item.ndim != 4 or item.shape[0] != 1:
            raise ValueError(f"expected one image of shape (C, H, W), got {tuple(item.shape)}")
        if not item.dtype.is_floating_point:
            item = item.to(torch.float32) / 255.0
    model.eval()
    c = model.curvature()
    v = model.encode_input(item)[0]
    weights = torch.linspace(1.0, 0.0, steps, dtype=v.dtype, device=v.device)
    points = lorentz.exp_map0(weights[:, None] * lorentz.log_map0(v, c)[None, :], c)  # (S, D)

    if names:
        concepts = class_embeddings(model, tokenizer, lists).to(device=points.device, dtype=points.dtype)  # (K, D)
        scores = lorentz.pairwise_inner(points, concepts, c)  # (S, K)
        S, K = scores.shape
        apex = concepts[None, :, :].expand(S, K, -1).reshape(S * K, -1)
        where = points[:, None, :].expand(S, K, -1).reshape(S * K, -1)
        inside = (lorentz.exterior_angle(apex, where, c) <= lorentz.half_aperture(apex, c)).reshape(S, K)
        scores = scores.masked_fill(~inside, -math.inf)
    else:
        scores = points.new_zeros(points.shape[0], 0)
    root = lorentz.pairwise_inner(points, torch.zeros_like(points[:1]), c)  # (S, 1)
    best = torch.cat([scores, root], dim=1).argmax(dim=1).tolist()

    labels = names + [ROOT]
    sequence: list[str] = []
    for index in best:
        if not sequence or sequence[-1] != labels[index]:
            sequence.append(labels[index])
    return sequence
