"""Distinguishability and forget quality: closed forms on hand-made scores, seeded chunking, pair
scores of a fake model with known embeddings, and a fake model that forgot D_f (its images moved
away from their captions) against one that did not."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from tests.fakes import FakeTokenizer, fake_model
from vlunlearn.data import PairDataset, UnlearningRequest, UnlearningSplits
from vlunlearn.evaluation.forget_quality import (
    distinguishability,
    forget_quality,
    forget_quality_metrics,
    pair_scores,
)
from vlunlearn.geometry import EUCLIDEAN, LORENTZ, lorentz

N_FORGET, N_RETAIN = 20, 100  # D_r: five copies of D_f's pair embeddings


def _dataset(captions: list[str]) -> PairDataset:
    n = len(captions)
    return PairDataset(
        name="toy",
        inputs=torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous(),
        captions=[("a thing.", caption) for caption in captions],
        concepts=[frozenset() for _ in range(n)],
        labels=torch.full((n,), -1),
        ids=[f"toy/{i:03d}" for i in range(n)],
        class_names=(),
    )


def _splits(data: PairDataset) -> UnlearningSplits:
    forget, retain = data.subset(range(N_FORGET)), data.subset(range(N_FORGET, len(data)))
    return UnlearningSplits(
        request=UnlearningRequest(sample_ids=tuple(forget.ids)),
        forget=forget,
        retain=retain,
        test_forget=forget,
        test_retain=retain,
        forget_classes=(),
        retain_classes=(),
    )


def _toy(geometry, forgot: bool, c=None):
    """Every image embeds near its caption, except D_f's when ``forgot`` (moved to the antipode).
    Item ``i`` has the embeddings of item ``i % N_FORGET``, so D_r holds five copies of D_f's pairs."""
    n = N_FORGET + N_RETAIN
    captions = [f"thing number {i}." for i in range(n)]
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(N_FORGET, 4, generator=generator, dtype=torch.float64)
    noisy = base + 0.3 * torch.randn(N_FORGET, 4, generator=generator, dtype=torch.float64)
    texts = torch.cat([torch.zeros(1, 4, dtype=torch.float64), base.repeat(n // N_FORGET, 1)])
    images = noisy.repeat(n // N_FORGET, 1)
    if forgot:
        images[:N_FORGET] = -texts[1 : N_FORGET + 1]
    model = fake_model(geometry, images, texts, c)
    return model, _splits(_dataset(captions)), FakeTokenizer(["a thing."] + captions)


# --------------------------------------------------------------------------- closed forms


def test_disjoint_score_ranges_give_auc_one_or_zero():
    low, high = [0.0, 0.1, 0.2], list(np.linspace(1.0, 2.0, 20))
    assert distinguishability(low, high)["auc"] == 1.0
    assert distinguishability(high[:3], [-1.0, -2.0, -3.0, -4.0])["auc"] == 0.0
    result = distinguishability(low, high)
    assert result["auc_std"] == 0.0 and result["chunks"] == 5 and result["chunk_size"] == 3


def test_identical_scores_give_auc_one_half():
    assert distinguishability([0.7] * 4, [0.7] * 40)["auc"] == 0.5


def test_disjoint_chunks_cover_retain_so_mean_auc_is_the_full_auc():
    rng = np.random.default_rng(1)
    forget, retain = rng.normal(size=3), rng.normal(size=15)
    full = roc_auc_score(np.r_[np.zeros(3), np.ones(15)], np.r_[forget, retain])
    for seed in range(3):
        result = distinguishability(forget, retain, chunks=5, seed=seed)
        assert result["auc"] == pytest.approx(full) and result["chunk_size"] == 3


def test_small_retain_draws_overlapping_chunks_of_its_size():
    result = distinguishability([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], [0.5, 1.5, 2.5, 3.5])
    # every chunk is the whole of D_r: pairs with r > f are 4 + 3 + 2 + 1 = 10 of 24
    assert result["chunk_size"] == 4 and result["auc"] == pytest.approx(10 / 24) and result["auc_std"] == 0.0


def test_chunks_are_seeded():
    rng = np.random.default_rng(2)
    forget, retain = rng.normal(size=5), rng.normal(size=200)
    assert distinguishability(forget, retain, seed=3) == distinguishability(forget, retain, seed=3)
    assert distinguishability(forget, retain, seed=3)["auc"] != distinguishability(forget, retain, seed=4)["auc"]


@pytest.mark.parametrize(
    ("forget", "retain", "match"),
    [([], [1.0], "forget scores are empty"), ([1.0], [], "retain scores are empty"),
     ([1.0, math.nan], [1.0], "non-finite"), ([1.0], [math.inf], "non-finite")],
)
def test_bad_scores_raise(forget, retain, match):
    with pytest.raises(ValueError, match=match):
        distinguishability(forget, retain)
    with pytest.raises(ValueError, match=match.replace("forget", "unlearned").replace("retain", "oracle")):
        forget_quality(forget, retain)


def test_zero_chunks_raise():
    with pytest.raises(ValueError, match="chunks"):
        distinguishability([1.0], [2.0], chunks=0)


def test_one_chunk_of_the_whole_retain_set():
    # one chunk of size 2 = all of D_r: pairs with r > f are 2 (r = 1.5) + 3 (r = 2.5) of 6
    assert distinguishability([0.0, 1.0, 2.0], [1.5, 2.5], chunks=1, seed=3) == {
        "auc": pytest.approx(5 / 6), "auc_std": 0.0, "chunks": 1, "chunk_size": 2}


def test_default_seed_is_zero():
    rng = np.random.default_rng(2)
    forget, retain = rng.normal(size=5), rng.normal(size=200)
    assert distinguishability(forget, retain) == distinguishability(forget, retain, seed=0)
    assert distinguishability(forget, retain) != distinguishability(forget, retain, seed=1)


def test_ks_of_identical_and_disjoint_samples():
    identical = forget_quality([0.1, 0.2, 0.3], torch.tensor([0.3, 0.1, 0.2], dtype=torch.float64))
    assert identical == {"ks_statistic": 0.0, "ks_pvalue": 1.0}
    result = forget_quality([0.0, 0.1, 0.2, 0.3, 0.4], [1.0, 1.1, 1.2, 1.3, 1.4])
    # exact two-sided p of D = 1 for 5 vs 5: the two extreme orderings of C(10, 5) = 252
    assert result["ks_statistic"] == 1.0 and result["ks_pvalue"] == pytest.approx(2 / 252)


# --------------------------------------------------------------------------- pair scores


def test_pair_scores_are_the_cosine_of_each_image_and_its_caption_encoded_once():
    images = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]], dtype=torch.float64)
    texts = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, -1.0]], dtype=torch.float64)
    model = fake_model(EUCLIDEAN, images, texts)
    seen = []
    encode_text = model.encode_text
    model.encode_text = lambda tokens: seen.append(len(tokens)) or encode_text(tokens)
    data = _dataset(["diagonal", "down", "diagonal"])
    scores = pair_scores(model, data, FakeTokenizer(["a thing.", "diagonal", "down"]))
    assert scores.dtype == torch.float64 and seen == [2]
    assert scores.tolist() == pytest.approx([1 / math.sqrt(2), -1.0, 1.0])


def test_pair_scores_are_negative_geodesic_distances_for_lorentz():
    model, splits, tokenizer = _toy(LORENTZ, forgot=False, c=0.5)
    texts = model.encode_text(torch.arange(1, N_FORGET + 1)[:, None])
    images = model.encode_input(splits.forget.input_batch(range(N_FORGET)))
    expected = -lorentz.paired_dist(images, texts, 0.5)
    assert torch.allclose(pair_scores(model, splits.forget, tokenizer, batch_size=7), expected)


def test_pair_scores_of_empty_data():
    model, splits, tokenizer = _toy(EUCLIDEAN, forgot=False)
    scores = pair_scores(model, splits.forget.subset([]), tokenizer)
    assert scores.shape == (0,) and scores.dtype == torch.float64


def _batch_sizes(model) -> list[tuple[str, int]]:
    """Wrap the encoders of ``model`` to record ``(encoder, batch size)`` of every call."""
    calls = []
    for name in ("encode_input", "encode_text"):
        encode = getattr(model, name)
        setattr(model, name, lambda batch, encode=encode, name=name: calls.append((name, len(batch))) or encode(batch))
    return calls


def test_images_and_captions_are_encoded_in_batches_of_batch_size():
    model, splits, tokenizer = _toy(EUCLIDEAN, forgot=False)
    calls = _batch_sizes(model)
    pair_scores(model, splits.forget, tokenizer, batch_size=7)  # 20 images with 20 distinct captions
    assert sorted(calls) == [("encode_input", 6), *[("encode_input", 7)] * 2, ("encode_text", 6),
                             *[("encode_text", 7)] * 2]
    calls.clear()
    forget_quality_metrics(model, splits, tokenizer, batch_size=7)  # D_f, then 100 of D_r
    assert max(size for _, size in calls) == 7 and sum(size for name, size in calls if name == "encode_input") == 120


def test_default_batch_size_is_500():
    n = 503
    data = PairDataset(name="same", inputs=torch.zeros(n, 1, 2, 2, dtype=torch.uint8), captions=[("x", "x.")] * n,
                       concepts=[frozenset()] * n, labels=torch.full((n,), -1), ids=[f"same/{i}" for i in range(n)],
                       class_names=())
    model = fake_model(EUCLIDEAN, torch.ones(1, 2), torch.ones(1, 2))
    calls = _batch_sizes(model)
    assert pair_scores(model, data, FakeTokenizer(["x."])).tolist() == pytest.approx([1.0] * n)
    assert calls == [("encode_text", 1), ("encode_input", 500), ("encode_input", 3)]
    calls.clear()
    splits = UnlearningSplits(request=UnlearningRequest(sample_ids=tuple(data.ids[2:])),
                              forget=data.subset(range(2, n)), retain=data.subset([0, 1]), test_forget=data,
                              test_retain=data, forget_classes=(), retain_classes=())
    forget_quality_metrics(model, splits, FakeTokenizer(["x."]))  # the 501 D_f images, then both of D_r
    assert [size for name, size in calls if name == "encode_input"] == [500, 1, 2]


def test_forget_quality_metrics_score_a_seeded_sample_of_the_retain_set():
    model, splits, tokenizer = _toy(EUCLIDEAN, forgot=False)
    # two chunks of |D_f| = 20 need 40 of the 100 D_r items, drawn with default_rng(seed)
    metrics, forget_scores = forget_quality_metrics(model, splits, tokenizer, seed=3, chunks=2)
    sample = np.sort(np.random.default_rng(3).choice(N_RETAIN, size=2 * N_FORGET, replace=False))
    retain_scores = pair_scores(model, splits.retain.subset(torch.from_numpy(sample)), tokenizer)
    expected = distinguishability(forget_scores, retain_scores, chunks=2, seed=3)
    assert metrics == {"distinguishability": expected["auc"], "distinguishability_std": expected["auc_std"]}
    default = forget_quality_metrics(model, splits, tokenizer, chunks=2)[0]
    assert default == forget_quality_metrics(model, splits, tokenizer, seed=0, chunks=2)[0] != metrics


# --------------------------------------------------------------------------- forgot vs did not


@pytest.mark.parametrize(("geometry", "c"), [(EUCLIDEAN, None), (LORENTZ, 1.0)])
def test_forgetting_separates_forget_from_retain_and_matches_its_oracle(geometry, c):
    kept, splits, tokenizer = _toy(geometry, forgot=False, c=c)
    forgot, _, _ = _toy(geometry, forgot=True, c=c)
    oracle, oracle_scores = forget_quality_metrics(forgot, splits, tokenizer, seed=1)
    assert set(oracle) == {"distinguishability", "distinguishability_std"}
    assert oracle["distinguishability"] == 1.0 and oracle_scores.shape == (N_FORGET,)

    metrics, scores = forget_quality_metrics(kept, splits, tokenizer, oracle_scores, seed=1)
    # five disjoint chunks cover D_r, so the mean AUC is that of D_f against copies of itself
    assert metrics["distinguishability"] == 0.5 and metrics["distinguishability_std"] > 0
    assert metrics["ks_statistic"] == 1.0 and metrics["ks_pvalue"] < 1e-6
    assert torch.equal(scores, pair_scores(kept, splits.forget, tokenizer))

    again, _ = forget_quality_metrics(forgot, splits, tokenizer, oracle_scores, seed=1)
    assert again["ks_statistic"] == 0.0 and again["ks_pvalue"] == 1.0
    assert again["distinguishability"] == oracle["distinguishability"]
