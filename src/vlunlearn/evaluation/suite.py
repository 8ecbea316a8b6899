"""Every metric of DESIGN §5 for one model on one unlearning request, as one flat record.

:func:`evaluate_unlearning` returns ``(metrics, artifacts)``: ``metrics`` is a flat dict of
numbers (accuracies and recalls in percent, AUCs and rates as fractions) that results files
and the oracle gap use; ``artifacts`` holds what the figures need (the alignment matrix and,
for hyperbolic models, distances to the origin and a 2-D disk view of the forget images).
"""

from __future__ import annotations

import torch

from vlunlearn.data import Tokenizer, UnlearningSplits
from vlunlearn.evaluation.alignment import alignment_audit
from vlunlearn.evaluation.hierarchy import entailment_rate
from vlunlearn.evaluation.mia import mia_metrics
from vlunlearn.evaluation.retrieval import retrieval_metrics
from vlunlearn.evaluation.zero_shot import encode_images, evaluate_splits
from vlunlearn.geometry import lorentz


def evaluate_unlearning(
    model, splits: UnlearningSplits, tokenizer: Tokenizer, *, retain_sample: int = 1000, seed: int = 0
) -> tuple[dict[str, float], dict]:
    """Zero-shot accuracy, retrieval, membership inference, alignment audit and (Lorentz)
    hierarchy diagnostics of ``model`` on ``splits``.

    Retrieval runs on D_f, a seeded sample of ``retain_sample`` D_r pairs, and the test
    split's forget part; membership inference attacks D_f against test-forget. For a concept
    request the alignment audit contrasts forget pairs with retain pairs (see
    :func:`~vlunlearn.evaluation.alignment.alignment_audit`).
    """
    generator = torch.Generator().manual_seed(seed)
    retain_sample_data = splits.retain.subset(torch.randperm(len(splits.retain), generator=generator)[:retain_sample])
    metrics: dict[str, float] = dict(evaluate_splits(model, splits, tokenizer))
    for name, data in (("forget", splits.forget), ("retain", retain_sample_data), ("test_forget", splits.test_forget)):
        for key, value in retrieval_metrics(model, data, tokenizer).items():
            metrics[f"retrieval_{name}_{key}"] = value
    mia = mia_metrics(model, splits.forget, splits.test_forget, tokenizer, seed=seed)
    metrics["mia_auc"], metrics["mia_accuracy"] = mia["mia_auc"], mia["mia_accuracy"]
    contrast = retain_sample_data if splits.request.concepts else None
    audit = alignment_audit(model, splits.forget, tokenizer, seed=seed, contrast=contrast)
    metrics["alignment_gap"] = audit["gap"]
    artifacts: dict = {"alignment_matrix": audit["matrix"], "alignment_forget_rows": audit["n_forget"]}
    if model.geometry.hyperbolic:
        metrics["entailment_rate_forget"] = entailment_rate(model, splits.forget, tokenizer)
        metrics["entailment_rate_retain"] = entailment_rate(model, retain_sample_data, tokenizer)
        forget_images = encode_images(model, splits.forget)
        d0 = lorentz.dist_to_origin(forget_images, model.curvature())
        metrics["forget_image_d0"] = d0.mean().item()
        artifacts["image_d0"] = d0.tolist()
    return metrics, artifacts
