"""The evaluation suite: every DESIGN §5 metric of a model on a request, in one flat record."""

import math

import pytest

from vlunlearn.data import Tokenizer, UnlearningRequest, load_builtin, make_splits
from vlunlearn.evaluation import evaluate_splits
from vlunlearn.evaluation.suite import evaluate_unlearning
from vlunlearn.models import build_model


@pytest.mark.parametrize("geometry", ["euclidean", "lorentz"])
def test_suite_reports_every_metric(geometry):
    train, test = load_builtin("digits", "train").subset(range(400)), load_builtin("digits", "test").subset(range(200))
    splits = make_splits(train, test, UnlearningRequest(concepts=("seven",)))
    model, tokenizer = build_model("tiny", geometry), Tokenizer()
    metrics, artifacts = evaluate_unlearning(model, splits, tokenizer, retain_sample=100)
    expected = {"zs_test_forget", "zs_test_retain", "zs_train_forget", "zs_train_retain", "mia_auc", "mia_accuracy",
                "alignment_gap"} | {f"retrieval_{part}_{d}_r{k}" for part in ("forget", "retain", "test_forget")
                                    for d in ("i2t", "t2i") for k in (1, 5, 10)}
    if geometry == "lorentz":
        expected |= {"entailment_rate_forget", "entailment_rate_retain", "forget_image_d0"}
        assert len(artifacts["image_d0"]) == len(splits.forget)
    assert set(metrics) == expected
    assert all(math.isfinite(value) for value in metrics.values())
    assert {k: metrics[k] for k in evaluate_splits(model, splits, tokenizer)} == evaluate_splits(model, splits, tokenizer)
    # a concept request: 32 forget pairs first, then 32 retain pairs to contrast with
    assert len(splits.forget) >= 32 and artifacts["alignment_forget_rows"] == 32
    assert len(artifacts["alignment_matrix"]) == 64 and len(artifacts["alignment_matrix"][0]) == 64
    assert 0.0 <= metrics["mia_auc"] <= 1.0
