"""Score-distribution metrics of forgetting (DESIGN.md §5).

Both work on the pair score ``s(v, t)``: the geometry's similarity of an image and its canonical
caption (cosine for CLIP, negative geodesic distance for MERU).

- Distinguishability (MultiDelete): ROC-AUC of D_f pair scores against equal-size chunks of D_r,
  averaged over chunks. 0.5 = the deleted pairs look like the remaining ones; above 0.5 = they
  score lower (separated); 1 = every deleted pair scores below every remaining pair.
- Forget quality (OpenUnlearning): two-sided Kolmogorov-Smirnov test of the D_f pair-score
  distribution of the unlearned model against that of the retrained oracle.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from scipy.stats import ks_2samp
from sklearn.metrics import roc_auc_score
from torch import Tensor

from vlunlearn.data import PairDataset, Tokenizer, UnlearningSplits
from vlunlearn.evaluation.zero_shot import encode_inputs, encode_texts

Scores = Tensor | np.ndarray | Sequence[float]


@torch.no_grad()
def pair_scores(model, data: PairDataset, tokenizer: Tokenizer, batch_size: int = 500) -> Tensor:
    """Pair score of each image of ``data`` with its canonical caption (each distinct caption
    encoded once). Returns float64 ``(N,)`` on the CPU."""
    if len(data) == 0:
        return torch.empty(0, dtype=torch.float64)
    captions = data.canonical_captions()
    distinct = list(dict.fromkeys(captions))
    row = {caption: k for k, caption in enumerate(distinct)}
    text_emb = encode_texts(model, tokenizer, distinct, batch_size)
    input_emb = encode_inputs(model, data, batch_size)
    index = torch.tensor([row[caption] for caption in captions], device=text_emb.device)
    scores = model.geometry.paired_similarity(input_emb, text_emb[index], model.curvature())
    return scores.detach().to("cpu", torch.float64)


def _checked(scores: Scores, name: str) -> np.ndarray:
    """Scores as a float64 ``(N,)`` array; ValueError when empty or not finite."""
    array = torch.as_tensor(scores, dtype=torch.float64).detach().cpu().numpy().ravel()
    if array.size == 0:
        raise ValueError(f"{name} scores are empty")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} scores contain {int((~np.isfinite(array)).sum())} non-finite value(s)")
    return array


def _chunk_indices(n_retain: int, size: int, chunks: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``chunks`` index arrays of ``size`` into D_r: disjoint when ``chunks * size <= n_retain``,
    else each drawn without replacement on its own."""
    if chunks * size <= n_retain:
        return list(rng.permutation(n_retain)[: chunks * size].reshape(chunks, size))
    return [rng.choice(n_retain, size=size, replace=False) for _ in range(chunks)]


def distinguishability(forget_scores: Scores, retain_scores: Scores, chunks: int = 5, seed: int = 0) -> dict:
    """MultiDelete's distinguishability: ROC-AUC separating D_r (label 1) from D_f (label 0) by
    the pair score, over ``chunks`` chunks of D_r of size ``m = min(len(D_f), len(D_r))``.

    Chunks are drawn with ``numpy.random.default_rng(seed)``; they are disjoint when D_r holds
    ``chunks * m`` scores, otherwise each chunk is drawn without replacement independently (chunks
    may then overlap). 0.5 = D_f indistinguishable from D_r; above 0.5 = deleted pairs score below
    remaining ones. ``(N_f,), (N_r,) ->`` ``auc`` (mean over chunks), ``auc_std`` (population
    standard deviation over chunks), ``chunks`` and ``chunk_size``.
    """
    forget, retain = _checked(forget_scores, "forget"), _checked(retain_scores, "retain")
    if chunks < 1:
        raise ValueError(f"chunks must be at least 1, got {chunks}")
    size = min(len(forget), len(retain))
    labels = np.concatenate([np.zeros(len(forget)), np.ones(size)])
    aucs = [
        roc_auc_score(labels, np.concatenate([forget, retain[index]]))
        for index in _chunk_indices(len(retain), size, chunks, np.random.default_rng(seed))
    ]
    return {"auc": float(np.mean(aucs)), "auc_std": float(np.std(aucs)), "chunks": chunks, "chunk_size": size}


def forget_quality(unlearned_scores: Scores, oracle_scores: Scores) -> dict[str, float]:
    """OpenUnlearning's forget quality: two-sided two-sample KS test of the D_f pair scores of
    the unlearned model against those of the retrained oracle. A high p-value means the unlearned
    model's score distribution cannot be told from the oracle's. ``(N1,), (N2,) ->``
    ``ks_statistic`` (in [0, 1]) and ``ks_pvalue``."""
    unlearned, oracle = _checked(unlearned_scores, "unlearned"), _checked(oracle_scores, "oracle")
    result = ks_2samp(unlearned, oracle, alternative="two-sided")
    return {"ks_statistic": float(result.statistic), "ks_pvalue": float(result.pvalue)}


def forget_quality_metrics(
    model,
    splits: UnlearningSplits,
    tokenizer: Tokenizer,
    oracle_forget_scores: Scores | None = None,
    seed: int = 0,
    chunks: int = 5,
    batch_size: int = 500,
) -> tuple[dict[str, float], Tensor]:
    """Distinguishability of ``model`` on D_f vs D_r and, given the oracle's D_f pair scores,
    forget quality against them.

    Only the D_r items the chunks can use are scored: ``chunks * len(D_f)`` of them drawn with
    ``numpy.random.default_rng(seed)`` (all of D_r when it is smaller). Returns the metrics
    ``distinguishability``, ``distinguishability_std`` and, with oracle scores, ``ks_statistic``
    and ``ks_pvalue``; and this model's D_f pair scores (float64 ``(N_f,)``) to pass on as the
    next model's ``oracle_forget_scores``.
    """
    forget_scores = pair_scores(model, splits.forget, tokenizer, batch_size)
    rng = np.random.default_rng(seed)
    n_retain = len(splits.retain)
    sample = np.sort(rng.choice(n_retain, size=min(n_retain, chunks * len(splits.forget)), replace=False))
    retain_scores = pair_scores(model, splits.retain.subset(torch.from_numpy(sample)), tokenizer, batch_size)
    result = distinguishability(forget_scores, retain_scores, chunks, seed)
    metrics = {"distinguishability": result["auc"], "distinguishability_std": result["auc_std"]}
    if oracle_forget_scores is not None:
        metrics.update(forget_quality(forget_scores, oracle_forget_scores))
    return metrics, forget_scores
