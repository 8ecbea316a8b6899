"""The evaluation suite: every DESIGN §5 metric of a model on a request, in one flat record."""

import math

import pytest
import torch
from scipy.stats import ks_2samp

from vlunlearn.data import Tokenizer, UnlearningRequest, load_builtin, make_splits
from vlunlearn.evaluation.forget_quality import pair_scores
from vlunlearn.evaluation.suite import evaluate_unlearning, forgotten_classes
from vlunlearn.models import build_model

PARTS = ("test_forget", "test_retain", "train_forget", "train_retain")
EXPECTED = (
    {f"zs_{p}{s}" for p in PARTS for s in ("", "_macro", "_top5", "_top5_macro")}
    | {"det_ap_forget", "det_ap_retain", "alignment_gap", "distinguishability", "distinguishability_std"}
    | {f"retrieval_{part}_{d}_r{k}" for part in ("test", "forget", "retain") for d in ("i2t", "t2i") for k in (1, 5, 10)}
    | {f"mia_{a}{k}" for a in ("", "calibrated_") for k in ("auc", "auc_low", "auc_high", "balanced_accuracy",
                                                            "tpr_at_1_fpr", "members", "nonmembers")}
    | {"mia_accuracy", "ks_statistic", "ks_pvalue"}
    | {f"landing_{r}" for r in ("same", "sibling", "parent", "child", "other")}
    | {f"tree_{m}" for m in ("tie", "lca", "jaccard", "hp", "hr")}
)
HYPERBOLIC = (
    {"entailment_rate_forget", "entailment_rate_test_forget", "entailment_rate_retain", "forget_image_d0",
     "d0_text_generic", "d0_text_family", "d0_text_class", "d0_test_images"}
    | {f"d0_concept_{name}" for name in ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")}
)


@pytest.mark.parametrize("geometry", ["euclidean", "lorentz"])
def test_suite_reports_every_metric(geometry):
    train, test = load_builtin("digits", "train").subset(range(400)), load_builtin("digits", "test").subset(range(200))
    splits = make_splits(train, test, UnlearningRequest(concepts=("seven",)))
    model, tokenizer = build_model("tiny", geometry), Tokenizer()
    oracle = pair_scores(build_model("tiny", geometry), splits.forget, tokenizer)
    metrics, artifacts = evaluate_unlearning(model, splits, tokenizer, train=train, test=test,
                                             oracle_forget_scores=oracle, retain_sample=100)
    expected = EXPECTED | (HYPERBOLIC if geometry == "lorentz" else set())
    assert set(metrics) == expected
    assert all(math.isfinite(value) for value in metrics.values())
    if geometry == "lorentz":
        assert len(artifacts["image_d0"]) == len(splits.forget) and len(artifacts["traversals"]) == 3
        assert all(t["path"][-1] == "[ROOT]" for t in artifacts["traversals"])
    scores = torch.tensor(artifacts["forget_pair_scores"], dtype=torch.float64)
    assert torch.allclose(scores, pair_scores(model, splits.forget, tokenizer), atol=1e-5)
    # KS of this model's D_f scores against the other (random) model's, not against itself
    expected = ks_2samp(scores.numpy(), oracle.numpy())
    assert metrics["ks_statistic"] == pytest.approx(expected.statistic) and metrics["ks_statistic"] > 0
    assert metrics["ks_pvalue"] == pytest.approx(expected.pvalue)
    # an oracle whose every D_f score lies above this model's: completely separated distributions
    above_all = scores + scores.max() - scores.min() + 1
    above, _ = evaluate_unlearning(model, splits, tokenizer, oracle_forget_scores=above_all, retain_sample=100)
    n = len(splits.forget)
    assert above["ks_statistic"] == 1.0 and above["ks_pvalue"] == pytest.approx(2 / math.comb(2 * n, n))
    # a concept request: 32 forget pairs first, then 32 retain pairs to contrast with
    assert len(splits.forget) >= 32 and artifacts["alignment_forget_rows"] == 32
    assert len(artifacts["alignment_matrix"]) == 64 and len(artifacts["alignment_matrix"][0]) == 64
    # D_f retrieved against the whole training gallery is harder than against D_f alone
    alone, _ = evaluate_unlearning(model, splits, tokenizer, retain_sample=100)
    assert metrics["retrieval_forget_i2t_r10"] <= alone["retrieval_forget_i2t_r10"]


def test_forgotten_class_of_each_item():
    scenes = load_builtin("fashion-scenes", "test").subset(range(40))
    shown = forgotten_classes(scenes, ("bag", "sneaker"))
    for name, concepts in zip(shown, scenes.concepts):
        assert name == ("bag" if "bag" in concepts else "sneaker" if "sneaker" in concepts else None)
    # a sample request forgets no class: the first class the item shows
    assert forgotten_classes(scenes, ())[0] == next(c for c in scenes.class_names if c in scenes.concepts[0])
