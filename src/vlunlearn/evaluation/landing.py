"""Where forgotten images land in the concept tree (DESIGN §5, hierarchy diagnostics).

Each image is assigned its nearest concept among every concept of the hierarchy (classes,
families and the root), and the assignment is compared with the image's true concept:

- :func:`tree_relation`: same concept, sibling, ancestor ("parent"), descendant ("child")
  or another branch ("other").
- :func:`tree_metrics`: the hierarchical-classification distances HyCoCLIP reports
  (arXiv 2410.06912, after Kosmopoulos et al. 2015): TIE, LCA, Jaccard, hP and hR.

Ancestor sets: ``A(x)`` is ``x`` itself and all of its ancestors, root included
(:meth:`ConceptHierarchy.ancestors`). With ``P = A(predicted)``, ``T = A(true)``:

- ``tie`` = ``|P xor T|``, the tree-induced error: the number of edges on the path between
  the prediction and the truth (0 when they are equal).
- ``lca`` = ``|P| - |P & T| + 1``, HyCoCLIP's LCA error: the number of edges from the
  prediction up to the lowest common ancestor of prediction and truth, plus one (so a
  correct prediction scores 1, a sibling 2, an ancestor of the truth 1).
- ``jaccard`` = ``|P & T| / |P | T|``; ``hp`` = ``|P & T| / |P|``; ``hr`` = ``|P & T| / |T|``.

:func:`landing_metrics` uses only the model's geometry, so it runs for Euclidean and Lorentz
models alike; :func:`traversal_examples` (MERU's traversal) needs a Lorentz model.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import torch

from vlunlearn.data import ConceptHierarchy, PairDataset, Tokenizer
from vlunlearn.errors import ConfigError, DataError
from vlunlearn.evaluation.hierarchy import _require_hyperbolic, input_traversal
from vlunlearn.evaluation.zero_shot import class_embeddings, encode_inputs, zero_shot_predictions

RELATIONS = ("same", "sibling", "parent", "child", "other")
TREE_METRICS = ("tie", "lca", "jaccard", "hp", "hr")


def hierarchy_prompts(hierarchy: ConceptHierarchy) -> dict[str, list[str]]:
    """Prompts for every concept, in ``hierarchy.concepts`` order (generic -> specific).

    Classes get their zero-shot ensemble (:meth:`ConceptHierarchy.class_prompts`); families
    and the root get the caption templates of their level (:meth:`ConceptHierarchy.level_prompts`).
    A root added above a users' top concepts (``synthetic_root``) names nothing and gets none.
    """
    by_level = {level: hierarchy.level_prompts(level) for level in hierarchy.caption_levels[:-1]}
    return {
        name: hierarchy.class_prompts(name) if name in hierarchy.classes else by_level[hierarchy.level_of(name)][name]
        for name in _named_concepts(hierarchy)
    }


def _named_concepts(hierarchy: ConceptHierarchy) -> list[str]:
    """Every concept of ``hierarchy`` but an added root."""
    return [name for name in hierarchy.concepts if not (hierarchy.synthetic_root and name == hierarchy.root)]


def tree_relation(hierarchy: ConceptHierarchy, predicted: str, true: str) -> str:
    """How ``predicted`` sits relative to ``true``: one of :data:`RELATIONS`.

    ``"same"``: equal; ``"parent"``: a strict ancestor of ``true`` (any level up);
    ``"child"``: a strict descendant; ``"sibling"``: a different concept with the same
    parent; ``"other"``: anything else (another branch, e.g. a cousin or an uncle).
    """
    if predicted == true:
        return "same"
    predicted_chain, true_chain = hierarchy.ancestors(predicted), hierarchy.ancestors(true)
    if predicted in true_chain:
        return "parent"
    if true in predicted_chain:
        return "child"
    if len(predicted_chain) > 1 and len(true_chain) > 1 and predicted_chain[1] == true_chain[1]:
        return "sibling"
    return "other"


def tree_metrics(hierarchy: ConceptHierarchy, predicted: str, true: str) -> dict[str, float]:
    """TIE, LCA, Jaccard, hP and hR of one prediction (definitions in the module docstring).

    Returns keys :data:`TREE_METRICS`. E.g. for leaves of a three-level tree: same ->
    ``tie 0, lca 1, jaccard 1, hp 1, hr 1``; sibling -> ``2, 2, 1/2, 2/3, 2/3``; leaves of
    different families -> ``4, 3, 1/5, 1/3, 1/3``.
    """
    p, t = set(hierarchy.ancestors(predicted)), set(hierarchy.ancestors(true))
    shared = len(p & t)
    return {
        "tie": float(len(p ^ t)),
        "lca": float(len(p) - shared + 1),
        "jaccard": shared / len(p | t),
        "hp": shared / len(p),
        "hr": shared / len(t),
    }


def _candidate_names(hierarchy: ConceptHierarchy, candidates: str | Sequence[str]) -> list[str]:
    if candidates == "all":
        return _named_concepts(hierarchy)
    if candidates == "classes":
        return list(hierarchy.classes)
    if isinstance(candidates, str):
        raise ConfigError(f"candidates must be 'all', 'classes' or a list of concepts, not {candidates!r}")
    names = list(candidates)
    unknown = [name for name in names if name not in _named_concepts(hierarchy)]
    if not names or unknown:
        raise ConfigError(f"candidates must be concepts of {hierarchy.name!r}; unknown: {unknown or 'none given'}")
    return names


def _require_hierarchy(data: PairDataset) -> ConceptHierarchy:
    if data.hierarchy is None:
        raise DataError(f"dataset {data.name!r} has no concept hierarchy")
    return data.hierarchy


@torch.no_grad()
def nearest_concepts(
    model, data: PairDataset, tokenizer: Tokenizer, candidates: str | Sequence[str] = "all"
) -> list[str]:
    """The nearest candidate concept of each image of ``data`` (``N`` names).

    Concept embeddings are the geometry mean of each concept's :func:`hierarchy_prompts`
    (as in zero-shot classification); nearest = largest ``model.geometry.pairwise_similarity``,
    ties to the concept listed first. ``candidates``: ``"all"`` (every concept of the
    hierarchy but an added root, the default), ``"classes"`` (leaf classes only) or a list of concept names.
    """
    hierarchy = _require_hierarchy(data)
    names = _candidate_names(hierarchy, candidates)
    if len(data) == 0:
        return []
    prompts = hierarchy_prompts(hierarchy)
    concepts = class_embeddings(model, tokenizer, [prompts[name] for name in names])  # (K, D)
    images = encode_inputs(model, data)  # (N, D)
    nearest = zero_shot_predictions(model, images, concepts.to(device=images.device, dtype=images.dtype))  # (N,)
    return [names[k] for k in nearest.tolist()]


def landing_metrics(
    model,
    data: PairDataset,
    tokenizer: Tokenizer,
    true_classes: Sequence[str],
    candidates: str | Sequence[str] = "all",
) -> dict[str, float]:
    """Where the images of ``data`` land: tree relations and mean tree distances to the truth.

    Args:
        true_classes: the true concept of each image (``len(data)`` names); for a multi-item
            scene, the forgotten class it shows.
        candidates: see :func:`nearest_concepts`.

    Returns ``landing_same, landing_sibling, landing_parent, landing_child, landing_other``
    (fractions of images, summing to 1; see :func:`tree_relation`) and ``tree_tie, tree_lca,
    tree_jaccard, tree_hp, tree_hr`` (means over images; see :func:`tree_metrics`). All NaN
    for empty data. A model that still recognises forgotten images lands them on "same"
    (TIE 0); one that forgot them lands them elsewhere.
    """
    hierarchy = _require_hierarchy(data)
    if len(true_classes) != len(data):
        raise ValueError(f"true_classes has {len(true_classes)} names for {len(data)} images")
    keys = [f"landing_{r}" for r in RELATIONS] + [f"tree_{m}" for m in TREE_METRICS]
    if len(data) == 0:
        return dict.fromkeys(keys, math.nan)
    pairs = Counter(zip(nearest_concepts(model, data, tokenizer, candidates), true_classes))
    result = dict.fromkeys(keys, 0.0)
    for (predicted, true), count in pairs.items():
        weight = count / len(data)
        result[f"landing_{tree_relation(hierarchy, predicted, true)}"] += weight
        for name, value in tree_metrics(hierarchy, predicted, true).items():
            result[f"tree_{name}"] += weight * value
    return result


def traversal_examples(model, data: PairDataset, tokenizer: Tokenizer, count: int = 3, steps: int = 50) -> list[dict]:
    """MERU's traversal (:func:`input_traversal`) of the first ``count`` images of ``data``.

    The concepts are :func:`hierarchy_prompts` of ``data.hierarchy``. Returns one
    ``{"id": item id, "path": [concept names, image end first, ending with "[ROOT]"]}``
    per image. Lorentz models only.
    """
    _require_hyperbolic(model)
    prompts = hierarchy_prompts(_require_hierarchy(data))
    return [
        {"id": data.ids[i], "path": input_traversal(model, data.input_batch([i]), prompts, tokenizer, steps)}
        for i in range(min(count, len(data)))
    ]
