"""Unimodal retained knowledge (MultiDelete's UKR): a k-NN probe on each tower's embeddings.

MultiDelete splits retained knowledge into multimodal (retrieval, zero-shot: both towers
together) and unimodal (each tower on its own). :func:`probe_metrics` measures the unimodal
part: a k-nearest-neighbour classifier (scikit-learn) is fitted on the embeddings of D_r
(the training pairs that were kept) and scored on the test-retain split, with the items' class
labels as targets (items labelled -1 are left out), once on image embeddings and once on the
embeddings of each item's canonical (most specific) caption.

Distances follow the geometry (choice documented here): Euclidean embeddings use the cosine
distance ``1 - cos``; Lorentz embeddings the geodesic distance of the hyperboloid
(:func:`vlunlearn.geometry.lorentz.pairwise_dist`, the same distance the model ranks by), both
passed to scikit-learn as a precomputed distance matrix. A tower that kept its knowledge scores
about as high as the original; one whose embeddings no longer separate the classes scores near
chance (one over the number of classes).

Read it against the original and the retrained model, not against chance: captions name their
class, so even an untrained text tower scores far above chance (a random ``tiny`` text tower:
100% on ``digits``, whose captions are one template per class, so there the text probe cannot
fail; a random ``tiny-scenes`` one about 73% on ``fashion-scenes``, whose captions vary).
"""

from __future__ import annotations

import math

import torch
from sklearn.neighbors import KNeighborsClassifier
from torch import Tensor

from vlunlearn.data import PairDataset, Tokenizer, UnlearningSplits
from vlunlearn.evaluation.zero_shot import encode_inputs, encode_texts
from vlunlearn.geometry import lorentz

__all__ = ["probe_metrics", "probe_distances", "knn_accuracy"]


def probe_distances(model, x: Tensor, y: Tensor) -> Tensor:
    """Distances between embeddings: ``1 - cos`` (Euclidean) or geodesic (Lorentz).

    ``(N, D), (M, D) -> (N, M)`` float64, non-negative."""
    x, y = x.double().cpu(), y.double().cpu()
    if model.geometry.hyperbolic:
        return lorentz.pairwise_dist(x, y, model.curvature().double().cpu())
    return (1 - model.geometry.pairwise_similarity(x, y, None)).clamp_min(0)


def knn_accuracy(model, train: Tensor, train_labels: Tensor, test: Tensor, test_labels: Tensor, k: int) -> float:
    """Percent of ``test`` items whose ``k`` nearest ``train`` items (majority vote) give their label.

    ``(N, D), (N,), (M, D), (M,) -> float``; ``k`` is capped at ``N``; NaN when ``N`` or ``M`` is 0."""
    if len(train) == 0 or len(test) == 0:
        return math.nan
    classifier = KNeighborsClassifier(n_neighbors=min(k, len(train)), metric="precomputed")
    classifier.fit(probe_distances(model, train, train).numpy(), train_labels.numpy())
    predicted = classifier.predict(probe_distances(model, test, train).numpy())
    return 100.0 * float((predicted == test_labels.numpy()).mean())


def _labelled_sample(data: PairDataset, max_items: int, generator: torch.Generator) -> PairDataset:
    """At most ``max_items`` labelled items of ``data``, drawn without replacement when there are more."""
    labelled = torch.nonzero(data.labels >= 0).flatten()
    if len(labelled) > max_items:
        labelled = labelled[torch.randperm(len(labelled), generator=generator)[:max_items]].sort().values
    return data.subset(labelled)


def _caption_embeddings(model, tokenizer: Tokenizer, data: PairDataset) -> Tensor:
    """Embeddings of each item's canonical (last) caption. ``(N, D)``."""
    return encode_texts(model, tokenizer, [captions[-1] for captions in data.captions])


@torch.no_grad()
def probe_metrics(
    model, splits: UnlearningSplits, tokenizer: Tokenizer, *, k: int = 10, max_items: int = 2000, seed: int = 0,
) -> dict[str, float]:
    """k-NN accuracy (percent) of each tower's embeddings: fitted on D_r, scored on test-retain.

    At most ``max_items`` labelled items of each split are used (a seeded draw). Returns
    ``probe_input_retain`` and ``probe_text_retain`` (NaN when either split has no labelled item).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    generator = torch.Generator().manual_seed(seed)
    fit = _labelled_sample(splits.retain, max_items, generator)
    score = _labelled_sample(splits.test_retain, max_items, generator)
    if len(fit) == 0 or len(score) == 0:
        return {"probe_input_retain": math.nan, "probe_text_retain": math.nan}
    towers = {
        "probe_input_retain": lambda data: encode_inputs(model, data),
        "probe_text_retain": lambda data: _caption_embeddings(model, tokenizer, data),
    }
    return {name: knn_accuracy(model, encode(fit), fit.labels, encode(score), score.labels, k)
            for name, encode in towers.items()}
