"""Membership inference: can an attacker tell the forget set D_f from unseen pairs of the same concepts?

Members are the D_f pairs, non-members test-forget pairs (same concepts, never trained on).
Each pair is described by three features (:func:`membership_features`):

0. the geometry's similarity of the image and its canonical caption (cosine, or negative
   geodesic distance);
1. the image-to-text cross-entropy of its caption against a caption gallery;
2. the rank (0 = best) of its caption in that gallery, for its image.

The gallery is the set of distinct canonical captions of every set featurised together, so
that no feature depends on which set an item was drawn from. (Features computed inside each
set separately, e.g. an in-batch contrastive loss, leak the set's composition: on the built-in
data such a loss let the attacker score AUC 0.97 on an untouched model whose similarity
feature alone scored 0.53.)

Two attacks, both logistic regressions on standardised features over balanced classes:

- :func:`membership_inference` (cross-validated): trained and scored on D_f against
  test-forget, out of fold with stratified k-fold cross-validation.
- :func:`calibrated_attack` (the AC paper's calibration): trained on reference sets whose
  membership is known, in practice the retain set D_r against test-retain, then applied to
  D_f against test-forget. It asks whether D_f still looks like training data the way D_r does.

Both are scored by :func:`score_attack`: ROC AUC with a 95% bootstrap interval, balanced
accuracy at probability 0.5, and the TPR at 1% FPR, all fractions in [0, 1]. An AUC of 0.5
means the attacker cannot tell members from non-members; the target of unlearning is the
retrained model's value, not 0.5 per se. If the interval contains 0.5 on an untouched
(original) model, the attack finds no membership signal on that data, and its value after
unlearning proves nothing about forgetting.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from scipy.stats import bootstrap, mannwhitneyu
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score, roc_curve
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor

from vlunlearn.data import PairDataset, Tokenizer
from vlunlearn.evaluation.retrieval import best_positive_rank
from vlunlearn.evaluation.zero_shot import encode_inputs, encode_texts
from vlunlearn.training.losses import contrastive_logits

__all__ = [
    "FEATURE_NAMES",
    "calibrated_attack",
    "membership_features",
    "membership_inference",
    "mia_metrics",
    "score_attack",
]

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
    input_emb = encode_inputs(model, data, batch_size)
    gallery_emb = encode_texts(model, tokenizer, gallery, batch_size)
    targets = torch.tensor([position[caption] for caption in captions])
    logits = contrastive_logits(model, input_emb, gallery_emb)
    similarity = logits.gather(1, targets[:, None]).squeeze(1) / model.logit_scale.exp()
    loss = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    ranks = best_positive_rank(logits, targets[:, None] == torch.arange(len(gallery))[None, :])
    return torch.stack([similarity.double(), loss.double(), ranks.double()], dim=1).cpu()


# --------------------------------------------------------------------------- scoring


def _auc_statistic(member: np.ndarray, nonmember: np.ndarray, axis: int = -1) -> np.ndarray:
    """ROC AUC of ``member`` ``(..., Nm)`` against ``nonmember`` ``(..., Nn)`` along ``axis``
    (Mann-Whitney U over ``Nm * Nn``, ties counted half), shape ``(...)``."""
    u = mannwhitneyu(member, nonmember, axis=axis, method="asymptotic").statistic
    return u / (member.shape[axis] * nonmember.shape[axis])


def _labelled(members: np.ndarray, nonmembers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of members ``(Nm, ...)`` stacked over non-members ``(Nn, ...)``, ``(Nm + Nn, ...)``,
    and their labels ``(Nm + Nn,)``, 1 for members."""
    y = np.concatenate([np.ones(len(members), dtype=np.int64), np.zeros(len(nonmembers), dtype=np.int64)])
    return np.concatenate([members, nonmembers]), y


def _as_scores(scores, what: str) -> np.ndarray:
    if isinstance(scores, Tensor):
        scores = scores.detach().cpu().double().numpy()
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim != 1 or len(array) < 2:
        raise ValueError(f"{what} scores must be 1-d with at least 2 values, not shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} scores contain NaN or infinite values")
    return array


def score_attack(member_scores, nonmember_scores, seed: int = 0, resamples: int = 1000) -> dict:
    """Scores of an attack from its member probabilities: members ``(Nm,)``, non-members ``(Nn,)``.

    Returns fractions in [0, 1]: ``auc`` (ROC AUC, members positive), ``auc_low`` / ``auc_high``
    (95% percentile bootstrap interval of the AUC, members and non-members resampled
    independently, ``resamples`` resamples drawn with ``numpy.random.default_rng(seed)``),
    ``balanced_accuracy`` (probability > 0.5 predicts a member), ``tpr_at_1_fpr`` (the largest
    TPR whose FPR <= 0.01); and the counts ``members`` and ``nonmembers``.
    Deterministic for a seed. Raises ValueError for fewer than 2 scores a side.
    """
    members = _as_scores(member_scores, "member")
    nonmembers = _as_scores(nonmember_scores, "non-member")
    scores, y = _labelled(members, nonmembers)
    fpr, tpr, _ = roc_curve(y, scores, drop_intermediate=False)
    interval = bootstrap(
        (members, nonmembers), _auc_statistic, n_resamples=resamples, vectorized=True,
        method="percentile", rng=np.random.default_rng(seed),
    ).confidence_interval
    return {
        "auc": float(roc_auc_score(y, scores)),
        "auc_low": float(interval.low),
        "auc_high": float(interval.high),
        "balanced_accuracy": float(balanced_accuracy_score(y, scores > 0.5)),
        "tpr_at_1_fpr": float(tpr[fpr <= 0.01].max()),
        "members": len(members),
        "nonmembers": len(nonmembers),
    }


# --------------------------------------------------------------------------- attacks


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


def _as_matrices(features: dict) -> list[np.ndarray]:
    """Each feature set of ``{what: features}`` as a float64 ``(N, F)`` matrix; all must share ``F``."""
    matrices = [_as_matrix(value, what) for what, value in features.items()]
    widths = {name: matrix.shape[1] for name, matrix in zip(features, matrices)}
    if len(set(widths.values())) > 1:
        raise ValueError(f"feature sets have different numbers of features: {widths}")
    return matrices


def _subsample(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` of ``range(n)`` drawn without replacement, in increasing order (all of them if ``size >= n``)."""
    if size >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=size, replace=False))


def _balance(members: np.ndarray, nonmembers: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``members`` ``(Nm, F)`` and ``nonmembers`` ``(Nn, F)``, the larger subsampled with
    ``rng`` (members first) to the size of the smaller, order kept."""
    size = min(len(members), len(nonmembers))
    return members[_subsample(len(members), size, rng)], nonmembers[_subsample(len(nonmembers), size, rng)]


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


def _attacker() -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))


def _member_probability(attacker: Pipeline, x: np.ndarray) -> np.ndarray:
    """The fitted attacker's member probability of each row of ``x`` ``(N, F)``, ``(N,)``."""
    return attacker.predict_proba(x)[:, list(attacker.classes_).index(1)]


def membership_inference(member_features, nonmember_features, folds: int = 5, seed: int = 0,
                         resamples: int = 1000) -> dict:
    """Out-of-fold logistic-regression attack separating members from non-members.

    ``member_features`` ``(Nm, F)`` and ``nonmember_features`` ``(Nn, F)``, tensors or arrays
    (a 1-d input is one feature). The larger group is subsampled without replacement to the
    size of the smaller with ``numpy.random.default_rng(seed)``; the attacker is
    ``StandardScaler`` + ``LogisticRegression`` fitted on the training folds only, scored by
    ``StratifiedKFold(folds, shuffle=True, random_state=seed)``. Returns the keys of
    :func:`score_attack` on the out-of-fold member probabilities (``members`` and
    ``nonmembers`` are the equal counts after balancing) and ``accuracy`` (probability > 0.5
    predicts a member; equal to ``balanced_accuracy`` on the balanced classes). Deterministic
    for a seed.

    Raises ValueError when, after balancing, a class has fewer than ``folds`` examples.
    """
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be an int >= 2, got {folds!r}")
    members, nonmembers = _as_matrices({"member": member_features, "non-member": nonmember_features})
    member_index, nonmember_index = balanced_indices(len(members), len(nonmembers), folds, seed)
    x, y = _labelled(members[member_index], nonmembers[nonmember_index])
    probability = np.empty(len(y), dtype=np.float64)
    for train, test in StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, y):
        probability[test] = _member_probability(_attacker().fit(x[train], y[train]), x[test])
    scores = score_attack(probability[y == 1], probability[y == 0], seed, resamples)
    return {**scores, "accuracy": float(((probability > 0.5) == (y == 1)).mean())}


def calibrated_attack(reference_member_features, reference_nonmember_features, member_features,
                      nonmember_features, seed: int = 0, resamples: int = 1000) -> dict:
    """The AC paper's calibrated attack: learn membership on reference sets, apply it to targets.

    All inputs are ``(N, F)`` tensors or arrays with one ``F``: reference members (in practice
    D_r) and non-members (test-retain), target members (D_f) and non-members (test-forget).
    Within the reference pair and within the target pair the larger group is subsampled to the
    size of the smaller with one ``numpy.random.default_rng(seed)`` (reference first).
    ``StandardScaler`` + ``LogisticRegression`` is fitted on the reference sets and scores the
    targets; returns :func:`score_attack`'s keys on the targets. Deterministic for a seed.

    Raises ValueError when a balanced pair has fewer than 2 examples a side.
    """
    reference_members, reference_nonmembers, members, nonmembers = _as_matrices({
        "reference member": reference_member_features, "reference non-member": reference_nonmember_features,
        "member": member_features, "non-member": nonmember_features,
    })
    if min(len(reference_members), len(reference_nonmembers), len(members), len(nonmembers)) < 2:
        raise ValueError(
            "the calibrated attack needs at least 2 examples in each set; got "
            f"{len(reference_members)}/{len(reference_nonmembers)} reference and "
            f"{len(members)}/{len(nonmembers)} target members/non-members"
        )
    rng = np.random.default_rng(seed)
    attacker = _attacker().fit(*_labelled(*_balance(reference_members, reference_nonmembers, rng)))
    members, nonmembers = _balance(members, nonmembers, rng)
    return score_attack(
        _member_probability(attacker, members), _member_probability(attacker, nonmembers), seed, resamples
    )


# --------------------------------------------------------------------------- on a model


def mia_metrics(model, members: PairDataset, nonmembers: PairDataset, tokenizer: Tokenizer, seed: int = 0,
                folds: int = 5, batch_size: int = 256, reference_members: PairDataset | None = None,
                reference_nonmembers: PairDataset | None = None, resamples: int = 1000,
                max_pairs: int = 1000) -> dict:
    """Membership-inference attacks on ``model``: members (D_f) against non-members (test-forget).

    Each dataset given is first subsampled to at most ``max_pairs`` items
    (``numpy.random.default_rng(seed)``, in the order members, non-members, reference members,
    reference non-members; order kept), then all are featurised against one gallery: the
    distinct canonical captions of all of them (so the cross-validated numbers depend on
    whether reference sets are given). Returns ``mia_<key>`` for each key of
    :func:`membership_inference`: ``mia_auc``, ``mia_auc_low``, ``mia_auc_high``,
    ``mia_accuracy``, ``mia_balanced_accuracy``, ``mia_tpr_at_1_fpr``, ``mia_members``,
    ``mia_nonmembers``. When both ``reference_members`` (D_r) and ``reference_nonmembers``
    (test-retain) are given, also ``mia_calibrated_<key>`` for each key of
    :func:`calibrated_attack`.

    Raises ValueError when only one reference dataset is given, or an attack has too few examples.
    """
    if (reference_members is None) != (reference_nonmembers is None):
        raise ValueError("give both reference_members and reference_nonmembers, or neither")
    if isinstance(max_pairs, bool) or not isinstance(max_pairs, int) or max_pairs < 1:
        raise ValueError(f"max_pairs must be an int >= 1, got {max_pairs!r}")
    datasets = [members, nonmembers]
    if reference_members is not None:
        datasets += [reference_members, reference_nonmembers]
    rng = np.random.default_rng(seed)
    datasets = [data.subset(torch.from_numpy(_subsample(len(data), max_pairs, rng))) for data in datasets]
    gallery = sorted(set().union(*(data.canonical_captions() for data in datasets)))
    features = [membership_features(model, data, tokenizer, gallery, batch_size) for data in datasets]
    result = membership_inference(features[0], features[1], folds=folds, seed=seed, resamples=resamples)
    metrics = {f"mia_{key}": value for key, value in result.items()}
    if reference_members is not None:
        calibrated = calibrated_attack(features[2], features[3], features[0], features[1], seed, resamples)
        metrics.update({f"mia_calibrated_{key}": value for key, value in calibrated.items()})
    return metrics
