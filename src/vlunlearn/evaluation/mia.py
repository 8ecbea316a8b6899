"""Membership inference: can an attacker tell the forget set D_f from unseen pairs of the same concepts?

Members are the D_f pairs, non-members test-forget pairs (same concepts, never trained on).
Each pair is described by three features (:func:`membership_features`):

0. the geometry's similarity of the image and its canonical caption (cosine, or negative
   geodesic distance);
1. the image-to-text cross-entropy of its caption against a caption gallery;
2. the rank (0 = best) of its caption in that gallery, for its image.

The gallery is the set of distinct canonical captions of members and non-members together,
so that no feature depends on which set an item was drawn from. (Features computed inside
each set separately, e.g. an in-batch contrastive loss, leak the set's composition: on the
built-in data such a loss let the attacker score AUC 0.97 on an untouched model whose
similarity feature alone scored 0.53.)

The attacker (:func:`membership_inference`) is a logistic regression on standardised features,
scored out of fold with stratified k-fold cross-validation on balanced classes. AUC and
accuracy are fractions in [0, 1]; 0.5 means the attacker cannot tell members from non-members,
and the target of unlearning is the retrained model's value, not 0.5 per se.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor

from vlunlearn.data import PairDataset, Tokenizer
from vlunlearn.evaluation.retrieval import best_positive_rank
from vlunlearn.evaluation.zero_shot import encode_images, encode_texts
from vlunlearn.training.losses import contrastive_logits

__all__ = ["FEATURE_NAMES", "membership_features", "membership_inference", "mia_metrics"]

FEATURE_NAMES = ("similarity", "caption_loss", "caption_rank")


@torch.no_grad()
def membership_features(
    model, data: PairDataset, tokenizer: Tokenizer, gallery: Sequence[str] | None = None, batch_size: int = 256
) -> Tensor:
    """Per-pair attack features of ``data``, float64 ``(N, 3)`` in the order of :data:`FEATURE_NAMES`.

    - ``similarity``: ``model.geometry.paired_similarity(image, canonical caption)``.
    - ``caption_loss``: ``-log softmax(exp(logit_scale) * s(image, gallery))`` at the item's caption.
    - ``caption_rank``: rank (0 = best, ties to the lower index) of the item's caption in the gallery.

    ``gallery`` is a list of distinct caption strings containing every canonical caption of
    ``data`` (default: the sorted distinct captions of ``data``); give members and non-members
    the same gallery. Deterministic for a given model and data.
    """
    captions = data.canonical_captions()
    gallery = sorted(set(captions)) if gallery is None else list(gallery)
    position = {caption: index for index, caption in enumerate(gallery)}
    missing = [caption for caption in captions if caption not in position]
    if missing:
        raise ValueError(f"{len(missing)} caption(s) are not in the gallery, e.g. {missing[0]!r}")
    if len(data) == 0:
        return torch.zeros(0, len(FEATURE_NAMES), dtype=torch.float64)
    image_emb = encode_images(model, data, batch_size)
    gallery_emb = encode_texts(model, tokenizer, gallery, batch_size)
    targets = torch.tensor([position[caption] for caption in captions])
    logits = contrastive_logits(model, image_emb, gallery_emb)
    similarity = logits.gather(1, targets[:, None]).squeeze(1) / model.logit_scale.exp()
    loss = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    ranks = best_positive_rank(logits, targets[:, None] == torch.arange(len(gallery))[None, :])
    return torch.stack([similarity.double(), loss.double(), ranks.double()], dim=1).cpu()


def _as_matrix(features, what: str) -> np.ndarray:
    if isinstance(features, Tensor):
        features = features.detach().cpu().double().numpy()
    array = np.asarray(features, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"{what} features must be (N, F), not shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} features contain NaN or infinite values")
    return array


def _subsample(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` of ``range(n)`` drawn without replacement, in increasing order (all of them if ``size >= n``)."""
    if size >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=size, replace=False))


def balanced_indices(n_members: int, n_nonmembers: int, folds: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices that subsample the larger group to the size of the smaller, drawn with
    ``numpy.random.default_rng(seed)`` (members first), each in increasing order.

    Raises ValueError when the smaller group has fewer than ``folds`` examples.
    """
    size = min(n_members, n_nonmembers)
    if size < folds:
        raise ValueError(
            f"membership inference with {folds}-fold cross-validation needs at least {folds} examples per class "
            f"after balancing; got {n_members} members and {n_nonmembers} non-members"
        )
    rng = np.random.default_rng(seed)
    return _subsample(n_members, size, rng), _subsample(n_nonmembers, size, rng)


def membership_inference(member_features, nonmember_features, folds: int = 5, seed: int = 0) -> dict:
    """Out-of-fold logistic-regression attack separating members from non-members.

    ``member_features`` ``(Nm, F)`` and ``nonmember_features`` ``(Nn, F)``, tensors or arrays
    (a 1-d input is one feature). The larger group is subsampled without replacement to the
    size of the smaller with ``numpy.random.default_rng(seed)``; the attacker is
    ``StandardScaler`` + ``LogisticRegression`` fitted on the training folds only, scored by
    ``StratifiedKFold(folds, shuffle=True, random_state=seed)``. From the out-of-fold member
    probabilities it reports ``auc`` (ROC AUC) and ``accuracy`` (probability > 0.5 predicts a
    member), both fractions in [0, 1], and ``members`` / ``nonmembers``: the counts used after
    balancing (equal). Deterministic for a seed.

    Raises ValueError when, after balancing, a class has fewer than ``folds`` examples.
    """
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be an int >= 2, got {folds!r}")
    members = _as_matrix(member_features, "member")
    nonmembers = _as_matrix(nonmember_features, "non-member")
    if members.shape[1] != nonmembers.shape[1]:
        raise ValueError(f"members have {members.shape[1]} features but non-members {nonmembers.shape[1]}")
    member_index, nonmember_index = balanced_indices(len(members), len(nonmembers), folds, seed)
    members, nonmembers = members[member_index], nonmembers[nonmember_index]
    size = len(members)
    x = np.concatenate([members, nonmembers])
    y = np.concatenate([np.ones(size, dtype=np.int64), np.zeros(size, dtype=np.int64)])
    probability = np.empty(len(y), dtype=np.float64)
    for train, test in StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, y):
        attacker = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        attacker.fit(x[train], y[train])
        probability[test] = attacker.predict_proba(x[test])[:, list(attacker.classes_).index(1)]
    return {
        "auc": float(roc_auc_score(y, probability)),
        "accuracy": float(((probability > 0.5) == (y == 1)).mean()),
        "members": int(size),
        "nonmembers": int(size),
    }


def mia_metrics(model, members: PairDataset, nonmembers: PairDataset, tokenizer: Tokenizer, seed: int = 0,
                folds: int = 5, batch_size: int = 256) -> dict:
    """Membership-inference attack of ``model``: members (D_f) against non-members (test-forget).

    The larger dataset is first subsampled (``numpy.random.default_rng(seed)``, order kept) to the
    size of the smaller, and both are featurised against one gallery: the distinct canonical
    captions of both. Returns
    ``mia_auc`` and ``mia_accuracy`` (fractions in [0, 1]) and the counts ``mia_members`` and
    ``mia_nonmembers`` (equal). See :func:`membership_inference` for the attacker.
    """
    member_index, nonmember_index = balanced_indices(len(members), len(nonmembers), folds, seed)
    members, nonmembers = members.subset(torch.from_numpy(member_index)), nonmembers.subset(torch.from_numpy(nonmember_index))
    gallery = sorted(set(members.canonical_captions()) | set(nonmembers.canonical_captions()))
    result = membership_inference(
        membership_features(model, members, tokenizer, gallery, batch_size),
        membership_features(model, nonmembers, tokenizer, gallery, batch_size),
        folds=folds,
        seed=seed,
    )
    return {f"mia_{key}": value for key, value in result.items()}
