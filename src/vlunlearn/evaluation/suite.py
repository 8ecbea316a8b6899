"""Every metric of DESIGN §5 for one model on one unlearning request, as one flat record.

:func:`evaluate_unlearning` returns ``(metrics, artifacts)``: ``metrics`` is a flat dict of
numbers (accuracies and recalls in percent; AUCs, AP, rates and gaps as fractions) that
results files and the oracle gap use; ``artifacts`` holds what the figures need (the
alignment matrix, the model's D_f pair scores for the KS test of the next model and, for
hyperbolic models, distances to the origin and traversals of a few forget images).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vlunlearn.data import PairDataset, Tokenizer, UnlearningSplits
from vlunlearn.evaluation.alignment import alignment_audit
from vlunlearn.evaluation.forget_quality import forget_quality_metrics
from vlunlearn.evaluation.hierarchy import distance_to_origin_by_concept, distance_to_origin_by_level, entailment_rate
from vlunlearn.evaluation.landing import landing_metrics, traversal_examples
from vlunlearn.evaluation.memo import MemoEncoder
from vlunlearn.evaluation.mia import mia_metrics
from vlunlearn.evaluation.retrieval import retrieval_metrics
from vlunlearn.evaluation.zero_shot import detection_metrics, encode_images, evaluate_splits
from vlunlearn.geometry import lorentz

TRAVERSALS = 3  # forget images whose traversal to the origin is recorded


def forgotten_classes(data: PairDataset, forget_classes: tuple[str, ...]) -> list[str | None]:
    """For each item, the first class of ``forget_classes`` it shows (or, when that is empty, the
    first class of ``data.class_names`` it shows); ``None`` when it shows none."""
    candidates = forget_classes or data.class_names
    return [next((name for name in candidates if name in concepts), None) for concepts in data.concepts]


def _landing(model, splits: UnlearningSplits, tokenizer: Tokenizer) -> dict[str, float]:
    if splits.forget.hierarchy is None:
        return {}
    true = forgotten_classes(splits.forget, splits.forget_classes)
    keep = [i for i, name in enumerate(true) if name is not None]
    return landing_metrics(model, splits.forget.subset(keep), tokenizer, [true[i] for i in keep])


def _hyperbolic(model, splits: UnlearningSplits, test: PairDataset, retain_sample: PairDataset,
                tokenizer: Tokenizer) -> tuple[dict[str, float], dict]:
    metrics = {
        "entailment_rate_forget": entailment_rate(model, splits.forget, tokenizer),
        "entailment_rate_test_forget": entailment_rate(model, splits.test_forget, tokenizer),
        "entailment_rate_retain": entailment_rate(model, retain_sample, tokenizer),
    }
    by_level = distance_to_origin_by_level(model, test, tokenizer)  # caption levels, then "images"
    metrics.update({"d0_test_images" if level == "images" else f"d0_text_{level}": d0 for level, d0 in by_level.items()})
    by_concept = distance_to_origin_by_concept(model, test, tokenizer, group_by="concepts")
    metrics.update({f"d0_concept_{name}": value for name, value in by_concept.items()})
    d0 = lorentz.dist_to_origin(encode_images(model, splits.forget), model.curvature())
    metrics["forget_image_d0"] = d0.mean().item()
    artifacts = {"image_d0": d0.tolist()}
    if splits.forget.hierarchy is not None:
        artifacts["traversals"] = traversal_examples(model, splits.forget, tokenizer, count=TRAVERSALS)
    return metrics, artifacts


def evaluate_unlearning(
    model,
    splits: UnlearningSplits,
    tokenizer: Tokenizer,
    *,
    train: PairDataset | None = None,
    test: PairDataset | None = None,
    oracle_forget_scores: Tensor | None = None,
    candidates: str = "all",
    retain_sample: int = 1000,
    seed: int = 0,
) -> tuple[dict[str, float], dict]:
    """Every metric of DESIGN §5 for ``model`` on ``splits``.

    - zero-shot top-1/top-5, micro/macro, on D_f, D_r, test-forget and test-retain (all classes
      are candidates unless ``candidates="retain"``); per-concept detection AP on the test split;
    - retrieval Recall@1/5/10 both ways, by item, galleries deduplicated: on ``test`` (default
      test-forget), on D_f against the whole training gallery ``train`` (default D_f itself,
      MultiDelete's convention) and on a seeded sample of ``retain_sample`` D_r pairs;
    - membership inference (cross-validated on D_f vs test-forget, and calibrated on the D_r
      sample vs test-retain), with 95% bootstrap intervals;
    - distinguishability of D_f from D_r and, given the retrained oracle's D_f pair scores,
      the KS test against them;
    - the alignment audit (contrasted with retain pairs for a concept request);
    - where D_f images land in the concept tree (any geometry); for Lorentz models distances to
      the origin per caption level and per concept, entailment rates and traversals.

    The model is put in eval mode and each distinct image and caption is encoded once
    (:class:`~vlunlearn.evaluation.memo.MemoEncoder`).
    """
    model = MemoEncoder(model.eval())
    test = splits.test_forget if test is None else test
    generator = torch.Generator().manual_seed(seed)
    retain_sample_data = splits.retain.subset(torch.randperm(len(splits.retain), generator=generator)[:retain_sample])
    metrics: dict[str, float] = dict(evaluate_splits(model, splits, tokenizer, candidates=candidates))
    metrics.update(detection_metrics(model, splits, tokenizer))
    retrievals = (("test", test, None), ("forget", splits.forget, train), ("retain", retain_sample_data, None))
    for name, data, gallery in retrievals:
        for key, value in retrieval_metrics(model, data, tokenizer, gallery=gallery).items():
            metrics[f"retrieval_{name}_{key}"] = value
    metrics.update(mia_metrics(model, splits.forget, splits.test_forget, tokenizer, seed=seed,
                               reference_members=retain_sample_data, reference_nonmembers=splits.test_retain))
    quality, forget_scores = forget_quality_metrics(model, splits, tokenizer, oracle_forget_scores, seed=seed)
    metrics.update(quality)
    contrast = retain_sample_data if splits.request.concepts else None
    audit = alignment_audit(model, splits.forget, tokenizer, seed=seed, contrast=contrast)
    metrics["alignment_gap"] = audit["gap"]
    metrics.update(_landing(model, splits, tokenizer))
    artifacts: dict = {
        "alignment_matrix": audit["matrix"],
        "alignment_forget_rows": audit["n_forget"],
        "forget_pair_scores": forget_scores.tolist(),
    }
    if model.geometry.hyperbolic:
        extra, more = _hyperbolic(model, splits, test, retain_sample_data, tokenizer)
        metrics.update(extra)
        artifacts.update(more)
    return metrics, artifacts
