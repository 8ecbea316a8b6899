"""Every metric of DESIGN §5 for one model on one unlearning request, as one flat record.

:func:`evaluate_unlearning` returns ``(metrics, artifacts)``: ``metrics`` is a flat dict of
numbers (accuracies and recalls in percent; AUCs, AP, rates and gaps as fractions) that
results files and the oracle gap use; ``artifacts`` holds what the figures need (the
alignment matrix, the model's D_f pair scores for the KS test of the next model and, for
hyperbolic models, distances to the origin and traversals of a few forget images).

Metrics the data gives nothing to measure (zero-shot accuracy on a split where no item has a
class, detection without classes, landing without a concept hierarchy, a membership attack
without test-forget pairs, ...) are left out of ``metrics`` rather than set to NaN, and
``artifacts["metrics_not_applicable"]`` maps each left-out metric key to the reason, e.g.
``{"zs_test_forget": "no item of the test forget split has a class"}``; the key is absent
when every metric was measured.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from vlunlearn.data import PairDataset, Tokenizer, UnlearningSplits
from vlunlearn.evaluation.alignment import alignment_audit
from vlunlearn.evaluation.forget_quality import forget_quality_metrics
from vlunlearn.evaluation.hierarchy import distance_to_origin_by_concept, distance_to_origin_by_level, entailment_rate
from vlunlearn.evaluation.landing import RELATIONS, TREE_METRICS, landing_metrics, traversal_examples
from vlunlearn.evaluation.memo import MemoEncoder
from vlunlearn.evaluation.mia import mia_metrics
from vlunlearn.evaluation.retrieval import retrieval_metrics
from vlunlearn.evaluation.zero_shot import candidate_labels, detection_metrics, encode_inputs, evaluate_splits
from vlunlearn.geometry import lorentz

TRAVERSALS = 3  # forget images whose traversal to the origin is recorded
NOT_APPLICABLE = "metrics_not_applicable"  # the artifact naming each left-out metric and why
NO_CLASSES = "the data has no classes (no item lists a concept)"
MIA_FOLDS = 5  # cross-validation folds of the membership attack: it needs this many pairs a side
_ATTACK_KEYS = ("auc", "auc_low", "auc_high", "balanced_accuracy", "tpr_at_1_fpr", "members", "nonmembers")
MIA_KEYS = (*(f"mia_{key}" for key in (*_ATTACK_KEYS, "accuracy")), *(f"mia_calibrated_{key}" for key in _ATTACK_KEYS))
LANDING_KEYS = (*(f"landing_{r}" for r in RELATIONS), *(f"tree_{m}" for m in TREE_METRICS))
_ZS_PARTS = (("test_forget", "test forget split"), ("test_retain", "test retain split"),
             ("train_forget", "training forget set D_f"), ("train_retain", "training retain set D_r"))
_ZS_SUFFIXES = ("", "_macro", "_top5", "_top5_macro")

NotApplicable = dict[str, str]  # metric key -> why the data gives it nothing to measure


def forgotten_classes(data: PairDataset, forget_classes: tuple[str, ...]) -> list[str | None]:
    """For each item, the first class of ``forget_classes`` it shows (or, when that is empty, the
    first class of ``data.class_names`` it shows); ``None`` when it shows none."""
    candidates = forget_classes or data.class_names
    return [next((name for name in candidates if name in concepts), None) for concepts in data.concepts]


def zero_shot_not_applicable(splits: UnlearningSplits, candidates: str = "all") -> NotApplicable:
    """The zero-shot keys of :func:`~vlunlearn.evaluation.zero_shot.evaluate_splits` that have
    nothing to measure, with the reason: no classes at all, an empty part, or no item of the
    part with a class among the candidates (all classes, or the retained ones)."""
    if candidates not in ("all", "retain"):
        raise ValueError(f"candidates must be 'all' or 'retain', not {candidates!r}")
    class_names = splits.retain.class_names
    names = class_names if candidates == "all" else splits.retain_classes
    kind = "class" if candidates == "all" else "retained class (candidates='retain')"
    parts = (splits.test_forget, splits.test_retain, splits.forget, splits.retain)
    result: NotApplicable = {}
    for (part, label), data in zip(_ZS_PARTS, parts):
        if not class_names:
            reason = NO_CLASSES
        elif len(data) == 0:
            reason = f"the {label} is empty"
        elif not bool((candidate_labels(class_names, names, data.labels)[1] >= 0).any()):
            reason = f"no item of the {label} has a {kind}"
        else:
            continue
        result.update({f"zs_{part}{suffix}": reason for suffix in _ZS_SUFFIXES})
    return result


def _zero_shot(model, splits: UnlearningSplits, tokenizer: Tokenizer, candidates: str,
               prompts: dict) -> tuple[dict[str, float], NotApplicable]:
    skipped = zero_shot_not_applicable(splits, candidates)
    if len(skipped) == len(_ZS_PARTS) * len(_ZS_SUFFIXES):
        return {}, skipped
    measured = evaluate_splits(model, splits, tokenizer, candidates=candidates, **prompts)
    return {key: value for key, value in measured.items() if key not in skipped}, skipped


def _detection(model, splits: UnlearningSplits, tokenizer: Tokenizer,
               prompts: dict) -> tuple[dict[str, float], NotApplicable]:
    keys = {"det_ap_forget": splits.forget_classes, "det_ap_retain": splits.retain_classes}
    if not splits.retain.class_names:
        return {}, dict.fromkeys(keys, NO_CLASSES)
    metrics, skipped = {}, {}
    for key, value in detection_metrics(model, splits, tokenizer, **prompts).items():
        if not math.isnan(value):
            metrics[key] = value
        elif not keys[key]:
            skipped[key] = "the request forgets no class" if key == "det_ap_forget" else "every class is forgotten"
        else:
            group = "forgotten" if key == "det_ap_forget" else "retained"
            skipped[key] = f"every {group} class is shown by all test items or by none"
    return metrics, skipped


def _landing(model, splits: UnlearningSplits, tokenizer: Tokenizer) -> tuple[dict[str, float], NotApplicable]:
    if splits.forget.hierarchy is None:
        return {}, dict.fromkeys(LANDING_KEYS, "the data has no concept hierarchy")
    true = forgotten_classes(splits.forget, splits.forget_classes)
    keep = [i for i, name in enumerate(true) if name is not None]
    if not keep:
        return {}, dict.fromkeys(LANDING_KEYS, "no item of D_f shows a class")
    return landing_metrics(model, splits.forget.subset(keep), tokenizer, [true[i] for i in keep]), {}


def membership_shortfall(splits: UnlearningSplits, retain_sample: PairDataset) -> str | None:
    """Why the membership attacks cannot run on these splits (too few pairs: ``MIA_FOLDS`` a side
    for the cross-validated attack, 2 a side for the calibrated one), or ``None`` when they can."""
    sizes = {"D_f": len(splits.forget), "test forget": len(splits.test_forget),
             "D_r sample": len(retain_sample), "test retain": len(splits.test_retain)}
    needed = {"D_f": MIA_FOLDS, "test forget": MIA_FOLDS, "D_r sample": 2, "test retain": 2}
    short = [f"{sizes[name]} {name} pairs (needs {needed[name]})" for name in sizes if sizes[name] < needed[name]]
    if not short:
        return None
    hint = ("; a sample request's test forget split holds the test items of the classes of D_f"
            if splits.request.kind == "samples" and sizes["test forget"] < MIA_FOLDS else "")
    return f"too few pairs for the membership attacks: {', '.join(short)}{hint}"


def _membership(model, splits: UnlearningSplits, tokenizer: Tokenizer, retain_sample: PairDataset,
                seed: int) -> tuple[dict[str, float], NotApplicable]:
    try:  # the attacks refuse too few pairs (ValueError); the shortfall then says why
        return mia_metrics(model, splits.forget, splits.test_forget, tokenizer, seed=seed, folds=MIA_FOLDS,
                           reference_members=retain_sample, reference_nonmembers=splits.test_retain), {}
    except ValueError:
        reason = membership_shortfall(splits, retain_sample)
        if reason is None:
            raise
        return {}, dict.fromkeys(MIA_KEYS, reason)


def _alignment_gap(gap: float) -> tuple[dict[str, float], NotApplicable]:
    if math.isnan(gap):
        return {}, {"alignment_gap": "no two audited D_f pairs have different captions"}
    return {"alignment_gap": gap}, {}


def _hyperbolic(model, splits: UnlearningSplits, test: PairDataset, retain_sample: PairDataset,
                tokenizer: Tokenizer) -> tuple[dict[str, float], dict, NotApplicable]:
    metrics = {
        "entailment_rate_forget": entailment_rate(model, splits.forget, tokenizer),
        "entailment_rate_retain": entailment_rate(model, retain_sample, tokenizer),
    }
    skipped: NotApplicable = {}
    if len(splits.test_forget):
        metrics["entailment_rate_test_forget"] = entailment_rate(model, splits.test_forget, tokenizer)
    else:
        skipped["entailment_rate_test_forget"] = "the test forget split is empty"
    by_level = distance_to_origin_by_level(model, test, tokenizer)  # caption levels, then "inputs"
    metrics.update({"d0_test_inputs" if level == "inputs" else f"d0_text_{level}": d0 for level, d0 in by_level.items()})
    by_concept = distance_to_origin_by_concept(model, test, tokenizer, group_by="concepts")
    metrics.update({f"d0_concept_{name}": value for name, value in by_concept.items()})
    d0 = lorentz.dist_to_origin(encode_inputs(model, splits.forget), model.curvature())
    metrics["forget_input_d0"] = d0.mean().item()
    artifacts = {"input_d0": d0.tolist()}
    if splits.forget.hierarchy is not None:
        artifacts["traversals"] = traversal_examples(model, splits.forget, tokenizer, count=TRAVERSALS)
    return metrics, artifacts, skipped


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
    templates: Sequence[str] | None = None,
) -> tuple[dict[str, float], dict]:
    """Every metric of DESIGN §5 for ``model`` on ``splits``.

    - zero-shot top-1/top-5, micro/macro, on D_f, D_r, test-forget and test-retain (all classes
      are candidates unless ``candidates="retain"``); per-concept detection AP on the test split;
      class prompts from ``templates`` (each with one ``{}``) when given, else the data's own;
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

    Metrics with nothing to measure are left out and named, with the reason, in
    ``artifacts["metrics_not_applicable"]`` (module docstring). The model is put in eval mode
    and each distinct image and caption is encoded once
    (:class:`~vlunlearn.evaluation.memo.MemoEncoder`).
    """
    model = MemoEncoder(model.eval())
    test = splits.test_forget if test is None else test
    prompts = {} if templates is None else {"templates": templates}  # None: the zero-shot defaults
    generator = torch.Generator().manual_seed(seed)
    retain_sample_data = splits.retain.subset(torch.randperm(len(splits.retain), generator=generator)[:retain_sample])
    parts = [_zero_shot(model, splits, tokenizer, candidates, prompts), _detection(model, splits, tokenizer, prompts)]
    retrievals = (("test", test, None), ("forget", splits.forget, train), ("retain", retain_sample_data, None))
    for name, data, gallery in retrievals:
        found = retrieval_metrics(model, data, tokenizer, gallery=gallery)
        parts.append(({f"retrieval_{name}_{key}": value for key, value in found.items()}, {}))
    parts.append(_membership(model, splits, tokenizer, retain_sample_data, seed))
    quality, forget_scores = forget_quality_metrics(model, splits, tokenizer, oracle_forget_scores, seed=seed)
    contrast = retain_sample_data if splits.request.concepts else None
    audit = alignment_audit(model, splits.forget, tokenizer, seed=seed, contrast=contrast)
    parts += [(quality, {}), _alignment_gap(audit["gap"]), _landing(model, splits, tokenizer)]
    artifacts: dict = {
        "alignment_matrix": audit["matrix"],
        "alignment_forget_rows": audit["n_forget"],
        "forget_pair_scores": forget_scores.tolist(),
    }
    if model.geometry.hyperbolic:
        extra, more, left_out = _hyperbolic(model, splits, test, retain_sample_data, tokenizer)
        parts.append((extra, left_out))
        artifacts.update(more)
    metrics: dict[str, float] = {}
    skipped: NotApplicable = {}
    for measured, left_out in parts:
        metrics.update(measured)
        skipped.update(left_out)
    if skipped:
        artifacts[NOT_APPLICABLE] = skipped
    return metrics, artifacts
