"""The evaluation suite: every DESIGN §5 metric of a model on a request, in one flat record."""

import math

import pytest
import torch
from scipy.stats import ks_2samp

from tests.fakes import fake_model
from vlunlearn.data import DIGITS, PairDataset, Tokenizer, UnlearningRequest, load_builtin, make_splits
from vlunlearn.evaluation import suite
from vlunlearn.evaluation.forget_quality import pair_scores
from vlunlearn.evaluation.suite import evaluate_unlearning, forgotten_classes
from vlunlearn.geometry import LORENTZ, lorentz
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
    {"entailment_rate_forget", "entailment_rate_test_forget", "entailment_rate_retain", "forget_input_d0",
     "d0_text_generic", "d0_text_family", "d0_text_class", "d0_test_inputs"}
    | {f"d0_concept_{name}" for name in ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")}
)


# --------------------------------------------------------------------------- wiring, with the metrics stubbed


def _digits(n: int, name: str) -> PairDataset:
    """Item i shows digit i % 10 (image i % 256); a "seven" scene also shows a "one"."""
    classes = [DIGITS.classes[i % 10] for i in range(n)]
    shown = [frozenset(DIGITS.ancestors(c)) | (frozenset(DIGITS.ancestors("one")) if c == "seven" else frozenset())
             for c in classes]
    return PairDataset(
        name=name,
        inputs=(torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous(),
        captions=[("a digit.", f"the number {c}.") for c in classes],
        concepts=shown,
        labels=torch.tensor([i % 10 for i in range(n)]),
        ids=[f"{name}/{i}" for i in range(n)],
        class_names=DIGITS.classes,
        hierarchy=DIGITS,
    )


TRAIN, TEST = _digits(1250, "train"), _digits(30, "test")


def _stub_metrics(monkeypatch) -> dict[str, list]:
    """Replace every metric the suite calls by a stub that records its arguments; returns the records."""
    calls: dict[str, list] = {}
    results = {
        "evaluate_splits": {"zs_test_forget": 1.0}, "detection_metrics": {}, "retrieval_metrics": {"r1": 2.0},
        "mia_metrics": {"mia_auc": 0.5}, "forget_quality_metrics": ({"ks_statistic": 0.1}, torch.zeros(2)),
        "alignment_audit": {"gap": 0.25, "matrix": [[1.0]], "n_forget": 1}, "landing_metrics": {"landing_same": 1.0},
        "entailment_rate": 0.5, "distance_to_origin_by_level": {"images": 3.0},
        "distance_to_origin_by_concept": {"seven": 2.0}, "traversal_examples": [],
    }
    for name, result in results.items():
        def stub(*args, _name=name, _result=result, **kwargs):
            calls.setdefault(_name, []).append((args, kwargs))
            return _result
        monkeypatch.setattr(suite, name, stub)
    return calls


def _fake_meru():
    model = fake_model(LORENTZ, lorentz.exp_map0(torch.randn(256, 2, generator=torch.Generator().manual_seed(0),
                                                             dtype=torch.float64), 1.0), torch.zeros(1, 2), 1.0)
    model.eval = lambda: model
    return model


def test_suite_defaults_sample_1000_retain_pairs_with_seed_0(monkeypatch):
    calls = _stub_metrics(monkeypatch)
    splits = make_splits(TRAIN, TEST, UnlearningRequest(concepts=("seven",)))
    assert len(splits.retain) > 1001
    metrics, _ = evaluate_unlearning(_fake_meru(), splits, Tokenizer())
    sample = torch.randperm(len(splits.retain), generator=torch.Generator().manual_seed(0))[:1000]
    expected = [splits.retain.ids[i] for i in sample.tolist()]
    (_, mia_kwargs), = calls["mia_metrics"]
    assert mia_kwargs["seed"] == 0 and mia_kwargs["reference_members"].ids == expected
    (_, audit_kwargs), = calls["alignment_audit"]
    assert audit_kwargs["seed"] == 0 and audit_kwargs["contrast"].ids == expected  # a concept request: contrasted
    assert metrics["alignment_gap"] == 0.25 and metrics["mia_auc"] == 0.5 and metrics["retrieval_retain_r1"] == 2.0


def test_suite_passes_its_options_on(monkeypatch):
    calls = _stub_metrics(monkeypatch)
    splits = make_splits(TRAIN, TEST, UnlearningRequest(concepts=("seven",)))
    tokenizer = Tokenizer()
    metrics, artifacts = evaluate_unlearning(_fake_meru(), splits, tokenizer, train=TRAIN, candidates="retain",
                                             retain_sample=10, seed=3)
    assert calls["evaluate_splits"][0][1] == {"candidates": "retain"}
    galleries = [(args[1].name, kwargs["gallery"]) for args, kwargs in calls["retrieval_metrics"]]
    assert galleries == [("test/forget", None), ("train/forget", TRAIN), ("train/retain", None)]
    assert calls["mia_metrics"][0][1]["seed"] == 3 and len(calls["mia_metrics"][0][1]["reference_members"]) == 10
    assert calls["forget_quality_metrics"][0][1] == {"seed": 3}
    assert calls["alignment_audit"][0][1]["seed"] == 3
    # every forget scene shows a "one" too, but the class it lands against is the forgotten "seven"
    (landing_args, _), = calls["landing_metrics"]
    assert landing_args[3] == ["seven"] * len(splits.forget)
    # multi-item scenes count for every class they show
    assert [kwargs for _, kwargs in calls["distance_to_origin_by_concept"]] == [{"group_by": "concepts"}]
    assert metrics["d0_concept_seven"] == 2.0 and len(artifacts["input_d0"]) == len(splits.forget)


def test_a_sample_request_audits_alignment_without_contrast(monkeypatch):
    calls = _stub_metrics(monkeypatch)
    splits = make_splits(TRAIN, TEST, UnlearningRequest(sample_ids=("train/3", "train/4")))
    evaluate_unlearning(_fake_meru(), splits, Tokenizer(), retain_sample=10)
    assert calls["alignment_audit"][0][1]["contrast"] is None


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
        assert len(artifacts["input_d0"]) == len(splits.forget) and len(artifacts["traversals"]) == 3
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

