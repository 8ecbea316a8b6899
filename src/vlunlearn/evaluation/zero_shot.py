"""Zero-shot classification with prompt ensembles (MERU's and CLIP's protocol).

Class embeddings are the geometry's centroid of the prompt embeddings: for CLIP
normalise-mean-normalise, for MERU the mean in the tangent space at the origin
mapped back with ``exp_map0`` (equal to MERU's ensembling of unprojected features).
Images are assigned to the most similar class (cosine, or negative geodesic
distance, which ranks like MERU's Lorentzian inner product). Accuracy is top-1 and
top-5, micro (over images) and macro (over the classes present, MERU's metric); the
candidates are all classes by default (MERU's convention: forgotten classes stay
candidates), or only the retained ones.

For multi-concept images, :func:`concept_detection` scores each class as a detection
task: the average precision of the image-class similarity for "the image shows it".
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from sklearn.metrics import average_precision_score
from torch import Tensor

from vlunlearn.data import PairDataset, Tokenizer, UnlearningSplits
from vlunlearn.errors import ConfigError


@torch.no_grad()
def encode_inputs(model, data: PairDataset, batch_size: int = 500) -> Tensor:
    """Embeddings of every input (image or graph) of ``data``. Returns ``(N, D)``."""
    model.eval()
    chunks = [
        model.encode_input(data.input_batch(torch.arange(start, min(start + batch_size, len(data)))))
        for start in range(0, len(data), batch_size)
    ]
    return torch.cat(chunks)


@torch.no_grad()
def encode_texts(model, tokenizer: Tokenizer, texts: Sequence[str], batch_size: int = 500) -> Tensor:
    """Embeddings of ``texts``. Returns ``(N, D)``."""
    model.eval()
    context = model.config.context_length
    chunks = [
        model.encode_text(tokenizer(list(texts[start : start + batch_size]), context))
        for start in range(0, len(texts), batch_size)
    ]
    return torch.cat(chunks)


@torch.no_grad()
def class_embeddings(model, tokenizer: Tokenizer, prompts: Sequence[Sequence[str]]) -> Tensor:
    """One embedding per class from its prompt ensemble. ``K`` lists of prompts -> ``(K, D)``."""
    flat = [prompt for class_prompts in prompts for prompt in class_prompts]
    embeddings = encode_texts(model, tokenizer, flat)
    c = model.curvature()
    centroids, start = [], 0
    for class_prompts in prompts:
        centroids.append(model.geometry.mean(embeddings[start : start + len(class_prompts)], c))
        start += len(class_prompts)
    return torch.stack(centroids)


@torch.no_grad()
def zero_shot_scores(model, input_emb: Tensor, class_emb: Tensor) -> Tensor:
    """Similarity of every image to every class (larger is closer). ``(N, D), (K, D) -> (N, K)``."""
    return model.geometry.pairwise_similarity(input_emb, class_emb, model.curvature())


@torch.no_grad()
def zero_shot_predictions(model, input_emb: Tensor, class_emb: Tensor) -> Tensor:
    """Index of the most similar class for each image. ``(N, D), (K, D) -> (N,)``."""
    return zero_shot_scores(model, input_emb, class_emb).argmax(dim=1)


def _micro_macro(correct: Tensor, labels: Tensor) -> tuple[float, float]:
    """Percent of ``correct`` items and its mean over the classes in ``labels``. ``(N,), (N,)``, N > 0."""
    correct = correct.double()
    per_class = torch.stack([correct[labels == k].mean() for k in labels.unique()])
    return 100 * correct.mean().item(), 100 * per_class.mean().item()


def zero_shot_accuracy(predictions: Tensor, labels: Tensor) -> dict[str, float]:
    """Top-1 accuracy in percent: ``micro`` over images and ``macro`` over the classes present.

    ``predictions`` and ``labels`` are ``(N,)`` class indices; items labelled -1 are ignored.
    """
    keep = labels >= 0
    predictions, labels = predictions[keep], labels[keep]
    if labels.numel() == 0:
        return {"micro": float("nan"), "macro": float("nan"), "count": 0}
    micro, macro = _micro_macro(predictions == labels, labels)
    return {"micro": micro, "macro": macro, "count": int(labels.numel())}


def label_ranks(scores: Tensor, labels: Tensor) -> Tensor:
    """Rank (0 = best) of each item's true class among the ``K`` classes. ``(N, K), (N,) -> (N,)``.

    Ties go to the lower class index, as in ``argmax``; ``labels`` must lie in ``[0, K)``.
    """
    true = scores.gather(1, labels[:, None])
    lower = torch.arange(scores.shape[1], device=scores.device)[None, :] < labels[:, None]
    return ((scores > true) | ((scores == true) & lower)).sum(dim=1)


def topk_accuracy(scores: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy in percent from a ``(N, K)`` score matrix and ``(N,)`` labels.

    Keys ``top{k}_micro`` (over images) and ``top{k}_macro`` (over the classes present) for each
    ``k`` (capped at ``K``), and ``count``. Items labelled -1 are ignored; none left gives NaN.
    """
    if scores.ndim != 2 or scores.shape[0] != labels.numel():
        raise ValueError(f"scores must be (N, K) with N = {labels.numel()} labels, not {tuple(scores.shape)}")
    if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be positive ints, got {tuple(ks)!r}")
    keep = labels >= 0
    scores, labels = scores[keep.to(scores.device)], labels[keep].to(scores.device)
    result: dict[str, float] = {}
    ranks = label_ranks(scores, labels) if labels.numel() else None
    for k in ks:
        micro, macro = (math.nan, math.nan) if ranks is None else _micro_macro(ranks < min(k, scores.shape[1]), labels)
        result.update({f"top{k}_micro": micro, f"top{k}_macro": macro})
    result["count"] = int(labels.numel())
    return result


DEFAULT_PROMPTS = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.")


def check_templates(templates: Sequence[str] | None) -> None:
    """Raise :class:`~vlunlearn.errors.ConfigError` unless ``templates`` is ``None`` (the default
    prompts) or one or more strings, each with exactly one ``{}`` for the class name (and no
    other braces)."""
    if templates is None:
        return
    bad = [t for t in templates if not isinstance(t, str) or t.count("{}") != 1 or set("{}") & set(t.replace("{}", ""))]
    if not templates or bad:
        raise ConfigError(f"prompt templates need exactly one '{{}}' for the class name; got {list(bad or templates)}")


def class_prompts(data: PairDataset, templates: Sequence[str] | None = None) -> list[list[str]]:
    """The prompt ensemble of every class of ``data``: ``templates`` (each with one ``{}`` for
    the class name, see :func:`check_templates`) when given, else its hierarchy's, else generic
    templates."""
    if templates is not None:
        check_templates(templates)
        return [[template.format(name) for template in templates] for name in data.class_names]
    if data.hierarchy is not None:
        return [data.hierarchy.class_prompts(name) for name in data.class_names]
    return [[template.format(name) for template in DEFAULT_PROMPTS] for name in data.class_names]


def evaluate_zero_shot(
    model, data: PairDataset, tokenizer: Tokenizer, templates: Sequence[str] | None = None
) -> dict[str, float]:
    """Zero-shot accuracy (percent) of ``model`` on ``data`` over all of its classes, with the
    prompt ``templates`` when given (see :func:`class_prompts`). Keys: ``micro``, ``macro``
    (top-1), ``top5_micro``, ``top5_macro`` and ``count``."""
    class_emb = class_embeddings(model, tokenizer, class_prompts(data, templates))
    accuracy = topk_accuracy(zero_shot_scores(model, encode_inputs(model, data), class_emb), data.labels)
    return {"micro": accuracy["top1_micro"], "macro": accuracy["top1_macro"], "top5_micro": accuracy["top5_micro"],
            "top5_macro": accuracy["top5_macro"], "count": accuracy["count"]}


def candidate_labels(class_names: Sequence[str], candidates: Sequence[str], labels: Tensor) -> tuple[Tensor, Tensor]:
    """Columns of ``candidates`` among ``class_names`` and ``labels`` remapped to them (-1 when not one).

    Returns ``(columns (K',), labels (N,))``.
    """
    columns = torch.tensor([class_names.index(name) for name in candidates], dtype=torch.int64)
    remap = torch.full((len(class_names) + 1,), -1, dtype=torch.int64)  # the last slot maps label -1
    remap[columns] = torch.arange(len(columns))
    return columns, remap[labels]


_PARTS = ("test_forget", "test_retain", "train_forget", "train_retain")


def evaluate_splits(model, splits: UnlearningSplits, tokenizer: Tokenizer, candidates: str = "all",
                    templates: Sequence[str] | None = None) -> dict[str, float]:
    """Zero-shot accuracy (percent) on test-forget, test-retain, D_f and D_r, with the class prompt
    ``templates`` when given (see :func:`class_prompts`).

    For each part: ``zs_<part>`` (micro top-1), ``zs_<part>_macro``, ``zs_<part>_top5`` and
    ``zs_<part>_top5_macro``. ``candidates="all"`` ranks every class (MERU's convention);
    ``"retain"`` only ``splits.retain_classes``, ignoring items of a forgotten class, so that
    a part holding only such items (test-forget, D_f of a concept request) gives NaN.
    """
    if candidates not in ("all", "retain"):
        raise ValueError(f"candidates must be 'all' or 'retain', not {candidates!r}")
    class_names = splits.retain.class_names
    names = class_names if candidates == "all" else splits.retain_classes
    class_emb = class_embeddings(model, tokenizer, class_prompts(splits.retain, templates)) if names else None
    datasets = (splits.test_forget, splits.test_retain, splits.forget, splits.retain)
    result: dict[str, float] = {}
    for part, data in zip(_PARTS, datasets):
        columns, labels = candidate_labels(class_names, names, data.labels)
        if class_emb is None or len(data) == 0:  # nothing to score (no candidate leaves every label -1)
            scores = torch.zeros(len(data), len(columns))
        else:
            scores = zero_shot_scores(model, encode_inputs(model, data), class_emb[columns.to(class_emb.device)])
        accuracy = topk_accuracy(scores, labels)
        result.update({f"zs_{part}": accuracy["top1_micro"], f"zs_{part}_macro": accuracy["top1_macro"],
                       f"zs_{part}_top5": accuracy["top5_micro"], f"zs_{part}_top5_macro": accuracy["top5_macro"]})
    return result


def detection_ap(scores: Tensor, concepts: Sequence[frozenset[str]], class_names: Sequence[str]) -> dict[str, float]:
    """Average precision of each class's score column for "the item shows it" (``name in concepts[i]``).

    ``scores`` is ``(N, K)`` over ``class_names``; classes with no positive or no negative item
    are left out. Returns ``{class name: AP in [0, 1]}``.
    """
    scores = scores.detach().double().cpu().numpy()
    result = {}
    for k, name in enumerate(class_names):
        shown = [name in item for item in concepts]
        if any(shown) and not all(shown):
            result[name] = float(average_precision_score(shown, scores[:, k]))
    return result


@torch.no_grad()
def concept_detection(model, data: PairDataset, tokenizer: Tokenizer,
                      templates: Sequence[str] | None = None) -> dict[str, float]:
    """Per-class average precision of the image-class score for "the image shows the class".

    Class embeddings from the prompt ensembles of :func:`class_prompts`; see :func:`detection_ap`.
    """
    class_emb = class_embeddings(model, tokenizer, class_prompts(data, templates))
    scores = zero_shot_scores(model, encode_inputs(model, data), class_emb)
    return detection_ap(scores, data.concepts, data.class_names)


@torch.no_grad()
def detection_metrics(model, splits: UnlearningSplits, tokenizer: Tokenizer,
                      templates: Sequence[str] | None = None) -> dict[str, float]:
    """Mean detection AP over the forget and the retain classes on the whole test split, with the
    class prompt ``templates`` when given (see :func:`class_prompts`).

    Keys ``det_ap_forget`` and ``det_ap_retain`` (fractions); NaN for a group with no class
    that has both positive and negative test items.
    """
    parts = [data for data in (splits.test_forget, splits.test_retain) if len(data)]
    ap: dict[str, float] = {}
    if parts and splits.retain.class_names:
        class_emb = class_embeddings(model, tokenizer, class_prompts(splits.retain, templates))
        scores = torch.cat([zero_shot_scores(model, encode_inputs(model, data), class_emb) for data in parts])
        ap = detection_ap(scores, [c for data in parts for c in data.concepts], splits.retain.class_names)

    def mean(group: Sequence[str]) -> float:
        values = [ap[name] for name in group if name in ap]
        return sum(values) / len(values) if values else math.nan

    return {"det_ap_forget": mean(splits.forget_classes), "det_ap_retain": mean(splits.retain_classes)}
