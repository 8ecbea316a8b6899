"""Membership inference: the scores (closed-form balanced accuracy and TPR at 1% FPR, a bootstrap
AUC interval that is deterministic, narrows with n and excludes 0.5 only for a real signal); the
cross-validated attacker is at chance on identically distributed features and near perfect on
separable ones, balances unequal groups, is deterministic for a seed and refuses too few
examples; the calibrated attacker transfers a signal learned on reference sets and finds none
where the targets were forgotten; the per-pair features (similarity, gallery loss, caption rank)
and both attacks on fake models."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.stats import bootstrap
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from vlunlearn.data import PairDataset
from vlunlearn.evaluation.mia import (
    FEATURE_NAMES,
    balanced_indices,
    calibrated_attack,
    membership_features,
    membership_inference,
    mia_metrics,
    score_attack,
)
from vlunlearn.geometry import EUCLIDEAN, LORENTZ

SCORE_KEYS = {"auc", "auc_low", "auc_high", "balanced_accuracy", "tpr_at_1_fpr", "members", "nonmembers"}

def _gaussian(n: int, shift: float, seed: int, dims: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dims)) + shift


# --------------------------------------------------------------------------- score_attack


def test_scores_of_hand_made_probabilities():
    members, nonmembers = [0.9, 0.8, 0.55, 0.45, 0.2], [0.6, 0.4]
    result = score_attack(members, torch.tensor(nonmembers), resamples=50)
    assert set(result) == SCORE_KEYS and result["members"] == 5 and result["nonmembers"] == 2
    # member beats non-member in 2 + 2 + 1 + 1 + 0 of 10 pairs
    assert result["auc"] == pytest.approx(0.6)
    # > 0.5: 3 of 5 members called members, 1 of 2 non-members called non-members (plain accuracy 4/7)
    assert result["balanced_accuracy"] == pytest.approx((3 / 5 + 1 / 2) / 2)
    # FPR <= 1% of 2 non-members allows none above the threshold: members above 0.6
    assert result["tpr_at_1_fpr"] == pytest.approx(2 / 5)


def test_tpr_at_1_fpr_allows_exactly_one_percent_of_false_positives():
    # 200 non-members: 2 false positives (FPR 0.01) are allowed, 3 are not
    nonmembers = [0.1] * 197 + [0.95, 0.85, 0.75]
    members = [0.99, 0.9, 0.8, 0.7, 0.6]
    # threshold 0.8: non-members 0.95 and 0.85 above it, members 0.99, 0.9 and 0.8
    assert score_attack(members, nonmembers, resamples=50)["tpr_at_1_fpr"] == pytest.approx(3 / 5)
    assert score_attack([0.5, 0.6], [0.7, 0.8], resamples=50)["tpr_at_1_fpr"] == 0.0


def _interval(result: dict) -> tuple[float, float]:
    return result["auc_low"], result["auc_high"]


def test_bootstrap_interval_contains_the_estimate_and_is_deterministic():
    rng = np.random.default_rng(0)
    members, nonmembers = rng.normal(0.3, 1.0, 60), rng.normal(0.0, 1.0, 40)
    result = score_attack(members, nonmembers, seed=1)
    assert result["auc_low"] < result["auc"] < result["auc_high"]
    assert score_attack(members.copy(), nonmembers.copy(), seed=1) == result
    assert _interval(score_attack(members, nonmembers, seed=2)) != _interval(result)
    assert score_attack(members, nonmembers, seed=2)["auc"] == result["auc"]  # the estimate is not resampled


def test_bootstrap_interval_narrows_as_n_grows():
    rng = np.random.default_rng(1)
    small = score_attack(rng.normal(0.5, 1.0, 40), rng.normal(0.0, 1.0, 40), resamples=300)
    large = score_attack(rng.normal(0.5, 1.0, 640), rng.normal(0.0, 1.0, 640), resamples=300)
    # the width shrinks like 1 / sqrt(n): about 4 times narrower for 16 times the data
    assert large["auc_high"] - large["auc_low"] < 0.4 * (small["auc_high"] - small["auc_low"])


def test_bootstrap_interval_excludes_chance_only_for_a_real_signal():
    rng = np.random.default_rng(2)
    separated = score_attack(rng.normal(1.5, 1.0, 50), rng.normal(0.0, 1.0, 50))
    assert 0.5 < separated["auc_low"] and separated["auc"] > 0.8, separated
    same = score_attack(rng.normal(0.0, 1.0, 50), rng.normal(0.0, 1.0, 50))
    assert same["auc_low"] < 0.5 < same["auc_high"], same


def test_scores_refuse_bad_inputs():
    with pytest.raises(ValueError, match="at least 2"):
        score_attack([0.5], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        score_attack([0.5, np.nan], [0.1, 0.2])


def test_score_errors_name_the_bad_side():
    with pytest.raises(ValueError, match="^member scores must be 1-d with at least 2 values"):
        score_attack([0.5], [0.1, 0.2])
    with pytest.raises(ValueError, match="^non-member scores must be 1-d"):
        score_attack([0.1, 0.2], [[0.5], [0.6]])
    with pytest.raises(ValueError, match="^member scores must be 1-d"):
        score_attack([[0.5, 0.6], [0.7, 0.8]], [0.1, 0.2])
    with pytest.raises(ValueError, match="^member scores contain NaN"):
        score_attack([0.5, None], [0.1, 0.2])  # a missing score counts as NaN
    with pytest.raises(ValueError, match="^non-member scores contain NaN"):
        score_attack([0.5, 0.6], [0.1, np.inf])


def test_the_interval_is_the_percentile_bootstrap_of_the_auc():
    rng = np.random.default_rng(5)
    members, nonmembers = rng.normal(0.3, 1.0, 10), rng.normal(0.0, 1.0, 8)

    def auc(member, nonmember):  # the share of (member, non-member) pairs ordered right, ties half
        return (member[:, None] > nonmember[None, :]).mean() + 0.5 * (member[:, None] == nonmember[None, :]).mean()

    interval = bootstrap((members, nonmembers), auc, n_resamples=200, vectorized=False, method="percentile",
                         rng=np.random.default_rng(7)).confidence_interval
    result = score_attack(members, nonmembers, seed=7, resamples=200)
    assert (result["auc_low"], result["auc_high"]) == pytest.approx((interval.low, interval.high))
    assert result["auc"] == pytest.approx(auc(members, nonmembers))
    # all members above all non-members: every resample has AUC 1
    assert score_attack([0.9, 0.8, 0.7], [0.2, 0.1], resamples=50)["auc_low"] == 1.0


def test_score_attack_defaults_to_seed_0_and_1000_resamples():
    rng = np.random.default_rng(0)
    members, nonmembers = rng.normal(0.3, 1.0, 30), rng.normal(0.0, 1.0, 20)
    assert score_attack(members, nonmembers) == score_attack(members, nonmembers, seed=0, resamples=1000)


def test_a_probability_of_exactly_one_half_predicts_a_non_member():
    # members 0.7, 0.9 called members, 0.5 not; both non-members called non-members
    result = score_attack([0.5, 0.7, 0.9], [0.5, 0.2], resamples=20)
    assert result["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)


def test_tpr_at_1_fpr_keeps_collinear_points_of_the_roc_curve():
    # one member and one non-member tied at each of 0.9, 0.8, 0.7: the ROC points (FPR, TPR) =
    # (1/200, 1/5), (2/200, 2/5), (3/200, 3/5) lie on a line, and the one at FPR 0.01 counts
    members, nonmembers = [0.9, 0.8, 0.7, 0.05, 0.05], [0.9, 0.8, 0.7] + [0.1] * 197
    assert score_attack(members, nonmembers, resamples=20)["tpr_at_1_fpr"] == pytest.approx(2 / 5)


# --------------------------------------------------------------------------- membership_inference


def test_identically_distributed_features_give_chance():
    result = membership_inference(_gaussian(200, 0.0, 1), _gaussian(200, 0.0, 2))
    assert set(result) == SCORE_KEYS | {"accuracy"}
    assert abs(result["auc"] - 0.5) < 0.1, result
    assert abs(result["accuracy"] - 0.5) < 0.1, result
    assert result["balanced_accuracy"] == pytest.approx(result["accuracy"])  # balanced classes
    assert result["auc_low"] < 0.5 < result["auc_high"], result
    assert result["members"] == result["nonmembers"] == 200


def test_separable_features_are_found():
    result = membership_inference(torch.from_numpy(_gaussian(200, 4.0, 1)), torch.from_numpy(_gaussian(200, 0.0, 2)))
    assert result["auc"] > 0.95 and result["accuracy"] > 0.95, result
    assert result["auc_low"] > 0.9 and result["tpr_at_1_fpr"] > 0.5, result
    # the signal may sit in one feature among noise, at any scale (features are standardised)
    members, nonmembers = _gaussian(100, 0.0, 3), _gaussian(100, 0.0, 4)
    members[:, 1] = members[:, 1] * 1e-3 + 1e4
    nonmembers[:, 1] = nonmembers[:, 1] * 1e-3
    assert membership_inference(members, nonmembers)["auc"] > 0.95


def test_unequal_groups_are_balanced():
    # 300 members against 60 non-members from the same distribution: without balancing the
    # attacker would call everyone a member and score 300/360 = 0.83 accuracy
    result = membership_inference(_gaussian(300, 0.0, 5), _gaussian(60, 0.0, 6))
    assert result["members"] == result["nonmembers"] == 60
    assert abs(result["accuracy"] - 0.5) < 0.15, result
    flipped = membership_inference(_gaussian(40, 0.0, 7), _gaussian(250, 0.0, 8))
    assert flipped["members"] == flipped["nonmembers"] == 40


def test_deterministic_for_a_seed():
    members, nonmembers = _gaussian(150, 0.3, 9), _gaussian(90, 0.0, 10)
    first = membership_inference(members, nonmembers, seed=3)
    assert membership_inference(members.copy(), nonmembers.copy(), seed=3) == first
    assert membership_inference(members, nonmembers, seed=4) != first  # another subsample and other folds


def test_too_few_examples_and_bad_inputs_raise():
    with pytest.raises(ValueError, match="at least 5 examples per class"):
        membership_inference(_gaussian(4, 0.0, 0), _gaussian(4, 0.0, 1))
    with pytest.raises(ValueError, match="at least 5 examples per class"):
        membership_inference(_gaussian(100, 0.0, 0), _gaussian(3, 0.0, 1))  # balancing leaves 3 a side
    assert membership_inference(_gaussian(3, 0.0, 0), _gaussian(3, 5.0, 1), folds=3)["members"] == 3
    with pytest.raises(ValueError, match="features"):
        membership_inference(_gaussian(10, 0.0, 0, dims=3), _gaussian(10, 0.0, 1, dims=2))
    bad = _gaussian(10, 0.0, 0)
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        membership_inference(bad, _gaussian(10, 0.0, 1))
    with pytest.raises(ValueError, match="folds"):
        membership_inference(_gaussian(10, 0.0, 0), _gaussian(10, 0.0, 1), folds=1)


@pytest.mark.parametrize("folds", [1, 3.0, True, "5"])
def test_folds_must_be_an_int_of_at_least_2(folds):
    with pytest.raises(ValueError, match="folds must be an int >= 2"):
        membership_inference(_gaussian(10, 0.0, 0), _gaussian(10, 0.0, 1), folds=folds)


def test_feature_errors_name_the_bad_set():
    good, bad = _gaussian(10, 0.0, 0), _gaussian(10, 0.0, 1)
    bad[3, 0] = np.inf
    with pytest.raises(ValueError, match="^member features contain NaN"):
        membership_inference(bad, good)
    with pytest.raises(ValueError, match="^non-member features contain NaN"):
        membership_inference(good, bad)
    missing = good.tolist()
    missing[0][1] = None  # a missing feature counts as NaN
    with pytest.raises(ValueError, match="^member features contain NaN"):
        membership_inference(missing, good)
    with pytest.raises(ValueError, match=r"^non-member features must be \(N, F\)"):
        membership_inference(good, good[:, :, None])
    with pytest.raises(ValueError, match="different numbers of features"):
        membership_inference(good, good[:, :2])
    names = ["reference member", "reference non-member", "member", "non-member"]
    for position, name in enumerate(names):
        sets = [good] * 4
        sets[position] = bad
        with pytest.raises(ValueError, match=f"^{name} features contain NaN"):
            calibrated_attack(*sets)
        sets[position] = good[:, :2]
        with pytest.raises(ValueError, match="different numbers of features"):
            calibrated_attack(*sets)


def test_a_1d_input_is_one_feature():
    members, nonmembers = _gaussian(20, 1.0, 30, dims=1), _gaussian(20, 0.0, 31, dims=1)
    as_columns = membership_inference(members, nonmembers, resamples=50)
    assert membership_inference(members[:, 0], torch.from_numpy(nonmembers[:, 0]), resamples=50) == as_columns


def test_only_the_larger_group_is_subsampled():
    members, nonmembers = balanced_indices(3, 10, 2, seed=4)
    assert members.tolist() == [0, 1, 2]
    assert nonmembers.tolist() == np.sort(np.random.default_rng(4).choice(10, size=3, replace=False)).tolist()
    members, nonmembers = balanced_indices(10, 3, 2, seed=4)
    assert members.tolist() == np.sort(np.random.default_rng(4).choice(10, size=3, replace=False)).tolist()
    assert nonmembers.tolist() == [0, 1, 2]


def test_membership_inference_scores_out_of_fold_probabilities():
    members, nonmembers = _gaussian(12, 0.5, 32), _gaussian(12, 0.0, 33)
    x, y = np.concatenate([members, nonmembers]), np.r_[np.ones(12, dtype=int), np.zeros(12, dtype=int)]
    attacker = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    folds = StratifiedKFold(n_splits=4, shuffle=True, random_state=3)
    probability = cross_val_predict(attacker, x, y, cv=folds, method="predict_proba")[:, 1]
    expected = score_attack(probability[:12], probability[12:], seed=3, resamples=50)
    expected["accuracy"] = float(((probability > 0.5) == (y == 1)).mean())
    assert membership_inference(members, nonmembers, folds=4, seed=3, resamples=50) == pytest.approx(expected)


def test_membership_inference_defaults():
    members, nonmembers = _gaussian(30, 0.3, 34), _gaussian(20, 0.0, 35)
    assert membership_inference(members, nonmembers) == membership_inference(members, nonmembers, folds=5, seed=0,
                                                                            resamples=1000)
    assert membership_inference(members, nonmembers, folds=2, resamples=50)["members"] == 20


# --------------------------------------------------------------------------- calibrated_attack


def test_calibrated_attack_transfers_the_reference_signal():
    """Members shifted in the reference and the target sets: the attack learned on the reference
    finds the targets ("did not forget"); target members like non-members: chance ("forgot")."""
    reference_members, reference_nonmembers = _gaussian(200, 1.5, 11), _gaussian(150, 0.0, 12)
    remembered = calibrated_attack(reference_members, reference_nonmembers, _gaussian(80, 1.5, 13),
                                   torch.from_numpy(_gaussian(60, 0.0, 14)), seed=0)
    assert set(remembered) == SCORE_KEYS
    assert remembered["members"] == remembered["nonmembers"] == 60  # targets balanced
    assert remembered["auc"] > 0.9 and remembered["auc_low"] > 0.8, remembered
    forgot = calibrated_attack(reference_members, reference_nonmembers, _gaussian(80, 0.0, 15), _gaussian(60, 0.0, 14))
    assert abs(forgot["auc"] - 0.5) < 0.1 and forgot["auc_low"] < 0.5 < forgot["auc_high"], forgot
    assert forgot["tpr_at_1_fpr"] < remembered["tpr_at_1_fpr"], (forgot, remembered)


def test_calibrated_attack_uses_the_reference_direction():
    # the reference says members are LOW on feature 0; targets whose members are high score below chance
    reference_members, reference_nonmembers = _gaussian(100, -1.5, 16, dims=1), _gaussian(100, 0.0, 17, dims=1)
    result = calibrated_attack(reference_members, reference_nonmembers, _gaussian(50, 1.5, 18, dims=1),
                               _gaussian(50, 0.0, 19, dims=1))
    assert result["auc"] < 0.2, result
    assert calibrated_attack(reference_members, reference_nonmembers, _gaussian(50, 1.5, 18, dims=1),
                             _gaussian(50, 0.0, 19, dims=1)) == result


def test_calibrated_attack_is_the_reference_attacker_scored_on_the_targets():
    reference = _gaussian(30, 1.0, 22), _gaussian(30, 0.0, 23)
    targets = _gaussian(20, 1.0, 24), _gaussian(20, 0.0, 25)
    attacker = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    attacker.fit(np.concatenate(reference), np.r_[np.ones(30, dtype=int), np.zeros(30, dtype=int)])
    probabilities = [attacker.predict_proba(target)[:, 1] for target in targets]
    assert calibrated_attack(*reference, *targets) == pytest.approx(score_attack(*probabilities))
    assert calibrated_attack(*reference, *targets, seed=4, resamples=60) == pytest.approx(
        score_attack(*probabilities, seed=4, resamples=60))


def test_calibrated_attack_subsampling_is_seeded():
    sets = _gaussian(50, 1.0, 26), _gaussian(30, 0.0, 27), _gaussian(25, 1.0, 28), _gaussian(40, 0.0, 29)
    result = calibrated_attack(*sets, seed=2, resamples=50)
    assert result["members"] == result["nonmembers"] == 25
    assert calibrated_attack(*sets, seed=2, resamples=50) == result


@pytest.mark.parametrize("position", range(4))
def test_calibrated_attack_needs_two_examples_in_every_set(position):
    sets = [_gaussian(2, 0.0, k) for k in range(4)]
    assert calibrated_attack(*sets, resamples=20)["members"] == 2
    sets[position] = sets[position][:1]
    with pytest.raises(ValueError, match="the calibrated attack needs at least 2 examples in each set"):
        calibrated_attack(*sets)


def test_calibrated_attack_refuses_bad_inputs():
    with pytest.raises(ValueError, match="at least 2"):
        calibrated_attack(_gaussian(10, 0.0, 0), _gaussian(10, 0.0, 1), _gaussian(1, 0.0, 2), _gaussian(10, 0.0, 3))
    with pytest.raises(ValueError, match="features"):
        calibrated_attack(_gaussian(10, 0.0, 0), _gaussian(10, 0.0, 1), _gaussian(10, 0.0, 2, dims=2),
                          _gaussian(10, 0.0, 3))


# --------------------------------------------------------------------------- features on fake models


def _dataset(captions: list[str], name: str = "toy", offset: int = 0, image_index: list[int] | None = None
             ) -> PairDataset:
    """Item i's image stores ``offset + i`` (or ``image_index[i]``), which the fake encoder reads back
    as its index."""
    n = len(captions)
    images = torch.zeros(n, 1, 2, 2, dtype=torch.uint8)
    index = range(offset, offset + n) if image_index is None else image_index
    images[:, 0, 0, 0] = torch.tensor(index, dtype=torch.uint8)
    return PairDataset(name=name, inputs=images, captions=[(c,) for c in captions], concepts=[set() for _ in captions],
                       labels=torch.full((n,), -1), ids=[f"{name}/{i}" for i in range(n)], class_names=())


def _fake_model(image_table: torch.Tensor, text_table: dict[str, torch.Tensor], geometry=EUCLIDEAN,
                c: float | None = None, scale: float = 2.0):
    """Image i embeds as ``image_table[i]``, a caption as ``text_table[caption]``; logit scale ``scale``."""
    vocab = list(text_table)
    texts = torch.stack([text_table[t] for t in vocab])

    def tokenizer(batch, context_length):
        return torch.tensor([[vocab.index(t), 0] for t in batch])

    model = SimpleNamespace(
        geometry=geometry,
        curvature=lambda: None if c is None else torch.tensor(c),
        config=SimpleNamespace(context_length=2),
        eval=lambda: None,
        encode_input=lambda batch: image_table[(batch[:, 0, 0, 0] * 255).round().long()],
        encode_text=lambda tokens: texts[tokens[:, 0]],
        logit_scale=torch.tensor(math.log(scale)),
    )
    return model, tokenizer


def test_features_when_each_image_matches_its_caption():
    captions = [f"c{i}" for i in range(6)]
    eye = torch.eye(6)
    model, tokenizer = _fake_model(eye * 2.0, {c: eye[i] for i, c in enumerate(captions)}, scale=3.0)
    features = membership_features(model, _dataset(captions), tokenizer)
    assert features.shape == (6, len(FEATURE_NAMES)) and features.dtype == torch.float64
    torch.testing.assert_close(features[:, 0], torch.ones(6, dtype=torch.float64))  # cosine 1
    # gallery of 6 captions, logits 3 * I: loss = log(1 + 5 e^-3)
    expected_loss = math.log(1 + 5 * math.exp(-3.0))
    torch.testing.assert_close(features[:, 1], torch.full((6,), expected_loss, dtype=torch.float64))
    assert features[:, 2].tolist() == [0.0] * 6
    assert torch.equal(membership_features(model, _dataset(captions), tokenizer), features)


def test_features_when_images_are_shuffled():
    captions = ["c0", "c1", "c2", "c3"]
    eye = torch.eye(4)
    # image i looks like caption i+1; its own caption has cosine 0, tied with two others
    model, tokenizer = _fake_model(eye.roll(-1, dims=0), {c: eye[i] for i, c in enumerate(captions)}, scale=1.0)
    features = membership_features(model, _dataset(captions), tokenizer)
    torch.testing.assert_close(features[:, 0], torch.zeros(4, dtype=torch.float64))
    # text order for image 0 is c1, c0, c2, c3 (ties by index): rank 1; image 1: c2, c0, c1, c3: rank 2;
    # image 2: c3, c0, c1, c2: rank 3; image 3 looks like c0: c0, c1, c2, c3: rank 3
    assert features[:, 2].tolist() == [1.0, 2.0, 3.0, 3.0]
    # logits over the gallery are [1, 0, 0, 0] up to order, the true caption at 0: log(e + 3)
    torch.testing.assert_close(features[:, 1], torch.full((4,), math.log(math.e + 3), dtype=torch.float64))
    matched, _ = _fake_model(eye, {c: eye[i] for i, c in enumerate(captions)}, scale=1.0)
    good = membership_features(matched, _dataset(captions), tokenizer)
    assert (good[:, 0] > features[:, 0]).all() and (good[:, 1] < features[:, 1]).all()
    assert (good[:, 2] < features[:, 2]).all()


def test_features_do_not_depend_on_the_rest_of_the_set():
    """An item's features are the same whatever else is in its set, given one gallery; a
    set-dependent feature lets an attacker tell the sets apart by composition alone."""
    eye = torch.eye(3)
    table = {"a": eye[0], "b": eye[1], "c": eye[2]}
    model, tokenizer = _fake_model(torch.stack([eye[0], eye[1], eye[2], eye[0]]), table)
    gallery = ["a", "b", "c"]
    alone = membership_features(model, _dataset(["a"]), tokenizer, gallery)
    crowded = membership_features(model, _dataset(["a", "b", "c", "a"]), tokenizer, gallery)
    torch.testing.assert_close(crowded[0], alone[0])
    torch.testing.assert_close(crowded[3], alone[0])
    with pytest.raises(ValueError, match="not in the gallery"):
        membership_features(model, _dataset(["a", "b"]), tokenizer, ["a"])


def test_features_of_no_pairs():
    eye = torch.eye(2)
    model, tokenizer = _fake_model(eye, {"a": eye[0], "b": eye[1]})
    features = membership_features(model, _dataset(["a", "b"]).subset([]), tokenizer)
    assert features.shape == (0, len(FEATURE_NAMES)) and features.dtype == torch.float64


def test_rank_counts_identical_captions_as_the_true_caption():
    eye = torch.eye(2)
    captions = ["cat", "cat", "dog"]
    model, tokenizer = _fake_model(torch.stack([eye[0], eye[0], eye[1]]), {"cat": eye[0], "dog": eye[1]})
    # image 1's own caption (text 1) ties with text 0 and sorts second, but text 0 is the same string
    assert membership_features(model, _dataset(captions), tokenizer)[:, 2].tolist() == [0.0, 0.0, 0.0]


def test_lorentz_features_use_the_geodesic_distance():
    c = 1.0
    space = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])  # space components on the hyperboloid
    model, tokenizer = _fake_model(space + 0.1, {"a": space[0], "b": space[1], "e": space[2]}, geometry=LORENTZ, c=c)
    features = membership_features(model, _dataset(["a", "b", "e"]), tokenizer)
    expected = LORENTZ.paired_similarity(space + 0.1, space, torch.tensor(c)).double()
    torch.testing.assert_close(features[:, 0], expected)
    assert (features[:, 0] < 0).all() and features[:, 2].tolist() == [0.0, 0.0, 0.0]


# --------------------------------------------------------------------------- mia_metrics


def test_mia_metrics_separates_aligned_members_from_unaligned_nonmembers():
    generator = torch.Generator().manual_seed(0)
    n_members, n_nonmembers, dims = 30, 20, 16
    text = torch.randn(n_members + n_nonmembers, dims, generator=generator)
    captions = [f"c{i}" for i in range(n_members + n_nonmembers)]
    table = {c: text[i] for i, c in enumerate(captions)}
    # members: image = its caption + noise; non-members: unrelated images. One image table, two datasets
    member_images = text[:n_members] + 0.3 * torch.randn(n_members, dims, generator=generator)
    nonmember_images = torch.randn(n_nonmembers, dims, generator=generator)
    # one fake model; the non-members' images store indices after the members'
    model, tokenizer = _fake_model(torch.cat([member_images, nonmember_images]), table)
    members = _dataset(captions[:n_members], "forget")
    nonmembers = _dataset(captions[n_members:], "test", offset=n_members)

    result = mia_metrics(model, members, nonmembers, tokenizer, seed=0, resamples=200)
    assert set(result) == {f"mia_{key}" for key in SCORE_KEYS | {"accuracy"}}
    assert result["mia_members"] == result["mia_nonmembers"] == 20
    assert result["mia_auc"] > 0.95 and result["mia_accuracy"] > 0.9, result
    assert result["mia_auc_low"] > 0.8, result
    assert mia_metrics(model, members, nonmembers, tokenizer, seed=0, resamples=200) == result
    # swapping the roles leaves the attack as strong (the logistic regression learns the sign)
    swapped = mia_metrics(model, nonmembers, members, tokenizer, seed=0, resamples=200)
    assert swapped["mia_auc"] > 0.95
    with pytest.raises(ValueError, match="at least 5"):
        mia_metrics(model, members, nonmembers.subset(range(4)), tokenizer)


def _aligned_sets(aligned: list[bool], n: int = 40, dims: int = 16, noise: float = 0.3):
    """One fake model and four datasets of ``n`` pairs with distinct captions; set k's images
    are its captions' embeddings plus ``noise`` times Gaussian noise where ``aligned[k]``, unrelated otherwise."""
    generator = torch.Generator().manual_seed(4)
    text = torch.randn(len(aligned) * n, dims, generator=generator)
    images = torch.randn(len(aligned) * n, dims, generator=generator)
    for k, is_aligned in enumerate(aligned):
        if is_aligned:
            rows = slice(k * n, (k + 1) * n)
            images[rows] = text[rows] + noise * torch.randn(n, dims, generator=generator)
    captions = [f"c{i}" for i in range(len(aligned) * n)]
    model, tokenizer = _fake_model(images, {c: text[i] for i, c in enumerate(captions)})
    sets = [_dataset(captions[k * n:(k + 1) * n], f"set{k}", offset=k * n) for k in range(len(aligned))]
    return model, tokenizer, sets


def test_mia_metrics_calibrated_attack_on_a_fake_model():
    # order: D_f, test-forget, D_r, test-retain; trained-on sets are aligned
    model, tokenizer, (forget, test_forget, retain, test_retain) = _aligned_sets([True, False, True, False])
    result = mia_metrics(model, forget, test_forget, tokenizer, reference_members=retain,
                         reference_nonmembers=test_retain, resamples=200)
    assert set(result) == {f"mia_{key}" for key in SCORE_KEYS | {"accuracy"}} | {
        f"mia_calibrated_{key}" for key in SCORE_KEYS}
    assert result["mia_calibrated_members"] == result["mia_calibrated_nonmembers"] == 40
    assert result["mia_calibrated_auc"] > 0.95 and result["mia_calibrated_auc_low"] > 0.8, result
    assert result["mia_calibrated_balanced_accuracy"] > 0.8, result

    # D_f forgotten: no longer aligned, like test-forget, while D_r still is
    model, tokenizer, (forget, test_forget, retain, test_retain) = _aligned_sets([False, False, True, False])
    forgot = mia_metrics(model, forget, test_forget, tokenizer, reference_members=retain,
                         reference_nonmembers=test_retain, resamples=200)
    assert forgot["mia_calibrated_auc_low"] < 0.5 < forgot["mia_calibrated_auc_high"], forgot
    assert forgot["mia_auc_low"] < 0.5 < forgot["mia_auc_high"], forgot

    capped = mia_metrics(model, forget, test_forget, tokenizer, reference_members=retain,
                         reference_nonmembers=test_retain, resamples=50, max_pairs=20)
    assert capped["mia_members"] == capped["mia_calibrated_members"] == 20
    assert mia_metrics(model, forget, test_forget, tokenizer, reference_members=retain,
                       reference_nonmembers=test_retain, resamples=50, max_pairs=20) == capped
    with pytest.raises(ValueError, match="both"):
        mia_metrics(model, forget, test_forget, tokenizer, reference_members=retain)


def _batch_sizes(model, encoder: str = "encode_input") -> list[int]:
    """Wrap ``model.<encoder>`` to record the batch size of every call."""
    calls, encode = [], getattr(model, encoder)
    setattr(model, encoder, lambda batch: calls.append(len(batch)) or encode(batch))
    return calls


def test_mia_metrics_featurise_all_sets_against_one_gallery_then_attack():
    # weakly aligned members, so that no score saturates at 0 or 1
    model, tokenizer, sets = _aligned_sets([True, False, True, False], n=12, noise=4.0)
    gallery = sorted(caption for data in sets for caption in data.canonical_captions())
    features = [membership_features(model, data, tokenizer, gallery) for data in sets]
    images, texts = _batch_sizes(model), _batch_sizes(model, "encode_text")
    result = mia_metrics(model, sets[0], sets[1], tokenizer, seed=3, folds=4, batch_size=5, resamples=40,
                         reference_members=sets[2], reference_nonmembers=sets[3])
    assert max(images) == max(texts) == 5 and sum(images) == 48
    assert 0.55 < result["mia_auc"] < 0.95 and 0.55 < result["mia_calibrated_auc"] < 0.95, result
    expected = {f"mia_{key}": value
                for key, value in membership_inference(*features[:2], folds=4, seed=3, resamples=40).items()}
    calibrated = calibrated_attack(*features[2:], *features[:2], seed=3, resamples=40)
    expected.update({f"mia_calibrated_{key}": value for key, value in calibrated.items()})
    assert result == pytest.approx(expected)


def test_mia_metrics_defaults():
    model, tokenizer, sets = _aligned_sets([True, False], n=12, noise=4.0)
    explicit = mia_metrics(model, *sets, tokenizer, seed=0, folds=5, batch_size=256, resamples=1000, max_pairs=1000)
    assert mia_metrics(model, *sets, tokenizer) == explicit


@pytest.mark.parametrize("max_pairs", [0, -3, 2.5, True, "10"])
def test_max_pairs_must_be_a_positive_int(max_pairs):
    model, tokenizer, sets = _aligned_sets([True, False], n=6)
    with pytest.raises(ValueError, match="max_pairs must be an int >= 1"):
        mia_metrics(model, *sets, tokenizer, max_pairs=max_pairs)


def test_one_pair_a_side_is_a_valid_cap_that_the_attack_refuses():
    model, tokenizer, sets = _aligned_sets([True, False], n=6)
    with pytest.raises(ValueError, match="at least 2 examples per class"):
        mia_metrics(model, *sets, tokenizer, folds=2, max_pairs=1)


def test_mia_metrics_default_to_1000_pairs_encoded_256_at_a_time():
    n, eye = 1001, torch.eye(8)
    captions = [f"c{k}" for k in range(8)]
    model, tokenizer = _fake_model(eye, {c: eye[k] for k, c in enumerate(captions)})
    members = _dataset([captions[i % 4] for i in range(n)], "forget", image_index=[i % 4 for i in range(n)])
    # non-members show the image of another member caption, unrelated to their own caption
    nonmembers = _dataset([captions[4 + i % 4] for i in range(n)], "test",
                          image_index=[(i + 1) % 4 for i in range(n)])
    calls = _batch_sizes(model)
    assert membership_features(model, members, tokenizer).shape == (n, len(FEATURE_NAMES))
    assert calls == [256, 256, 256, 233]
    calls.clear()
    result = mia_metrics(model, members, nonmembers, tokenizer, resamples=20)
    assert result["mia_members"] == result["mia_nonmembers"] == 1000
    assert result["mia_auc"] == pytest.approx(1.0)
    assert calls == [256, 256, 256, 232] * 2


def test_a_model_trained_on_its_members_is_detected_and_one_that_never_saw_them_is_not():
    """A real tiny model overfit on 96 scenes (30 passes): the attack separates those scenes from
    96 unseen test scenes; the same recipe trained on 96 other scenes gives the attack nothing."""
    from vlunlearn.data import Tokenizer, load_builtin
    from vlunlearn.training.pretrain import PretrainConfig, pretrain

    train, test = load_builtin("fashion-scenes", "train"), load_builtin("fashion-scenes", "test")
    members, others, nonmembers = train.subset(range(96)), train.subset(range(96, 192)), test.subset(range(96))
    tokenizer = Tokenizer()
    recipe = PretrainConfig(model="tiny-scenes", steps=45, batch_size=64, lr=1e-3, caption_weights=None)
    auc = {}
    for name, data in (("trained", members), ("never saw them", others)):
        model, _ = pretrain(recipe, data, tokenizer=tokenizer, progress=False)
        auc[name] = mia_metrics(model.eval(), members, nonmembers, tokenizer, seed=0, resamples=200)
    assert auc["trained"]["mia_auc_low"] > 0.5, auc
    assert auc["never saw them"]["mia_auc_low"] < 0.5 < auc["never saw them"]["mia_auc_high"], auc
