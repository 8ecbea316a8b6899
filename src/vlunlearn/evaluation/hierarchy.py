"""Hyperbolic hierarchy diagnostics: how far from the origin each level of the hierarchy sits."""

from __future__ import annotations

import torch

from vlunlearn.data import PairDataset, Tokenizer
from vlunlearn.evaluation.zero_shot import encode_images, encode_texts
from vlunlearn.geometry import lorentz


def _require_hyperbolic(model) -> None:
    if not model.geometry.hyperbolic:
        raise ValueError("hierarchy diagnostics need a hyperbolic (Lorentz) model; this one is Euclidean")


@torch.no_grad()
def distance_to_origin_by_level(model, data: PairDataset, tokenizer: Tokenizer) -> dict[str, float]:
    """Mean distance to the origin of the distinct captions at each caption level, and of the images.

    Levels are named by ``data.hierarchy.levels`` (generic -> specific) when the data has a
    hierarchy. In a model that learned the hierarchy the means rise with specificity,
    and images (the most specific items) lie furthest out.
    """
    _require_hyperbolic(model)
    c = model.curvature()
    depth = min(len(captions) for captions in data.captions)
    names = data.hierarchy.levels if data.hierarchy is not None else tuple(f"level{i}" for i in range(depth))
    result = {}
    for level, name in enumerate(names[:depth]):
        texts = sorted({captions[level] for captions in data.captions})
        result[name] = lorentz.dist_to_origin(encode_texts(model, tokenizer, texts), c).mean().item()
    result["images"] = lorentz.dist_to_origin(encode_images(model, data), c).mean().item()
    return result
