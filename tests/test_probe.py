"""The unimodal k-NN probe: hand-checked distances and votes in both geometries, and fake models
whose towers keep (image: classes separated) or lose (text: noise) their class knowledge."""

from __future__ import annotations

import math

import pytest
import torch

from tests.fakes import FakeTokenizer, fake_model
from vlunlearn.data import PairDataset, UnlearningRequest, make_splits
from vlunlearn.evaluation.probe import knn_accuracy, probe_distances, probe_metrics
from vlunlearn.geometry import EUCLIDEAN, LORENTZ, lorentz

D = torch.float64
CLASSES = ("c0", "c1", "c2", "c3")
TRAIN_PER_CLASS, TEST_PER_CLASS = 40, 24


def _pairs(start: int, per_class: int, name: str) -> PairDataset:
    """``per_class`` items of each class; item ``j`` has image value and caption number ``start + j``."""
    labels = torch.arange(len(CLASSES)).repeat_interleave(per_class)
    n = len(labels)
    index = torch.arange(start, start + n, dtype=torch.uint8)
    return PairDataset(name=name, inputs=index[:, None, None, None].expand(n, 1, 2, 2).contiguous(),
                       captions=[(f"item {start + j}",) for j in range(n)],
                       concepts=[{CLASSES[k]} for k in labels.tolist()], labels=labels,
                       ids=[f"{name}/{j}" for j in range(n)], class_names=CLASSES)


def _setup(geometry):
    """Images of class k sit near axis k (the image tower kept its knowledge); captions are noise (lost)."""
    train, test = _pairs(0, TRAIN_PER_CLASS, "train"), _pairs(len(CLASSES) * TRAIN_PER_CLASS, TEST_PER_CLASS, "test")
    generator = torch.Generator().manual_seed(0)
    n = len(train) + len(test)
    labels = torch.cat([train.labels, test.labels])
    images = 2 * torch.eye(8, dtype=D)[labels] + 0.3 * torch.randn(n, 8, generator=generator, dtype=D)
    texts = torch.randn(n, 8, generator=generator, dtype=D)
    if geometry is EUCLIDEAN:
        images, texts = images / images.norm(dim=1, keepdim=True), texts / texts.norm(dim=1, keepdim=True)
    model = fake_model(geometry, images, texts, None if geometry is EUCLIDEAN else 1.0)
    splits = make_splits(train, test, UnlearningRequest(concepts=("c0",)))
    return model, FakeTokenizer([f"item {i}" for i in range(n)]), splits


@pytest.mark.parametrize("geometry", [EUCLIDEAN, LORENTZ], ids=["euclidean", "lorentz"])
def test_a_tower_that_kept_its_classes_scores_100_and_a_noisy_one_near_chance(geometry):
    model, tokenizer, splits = _setup(geometry)
    assert len(splits.test_retain) == 3 * TEST_PER_CLASS  # c1..c3: chance is 1/3
    result = probe_metrics(model, splits, tokenizer)
    assert set(result) == {"probe_input_retain", "probe_text_retain"}
    assert result["probe_input_retain"] == 100.0
    assert 10.0 < result["probe_text_retain"] < 60.0


def test_euclidean_distance_is_one_minus_cosine_and_votes_go_to_the_nearest():
    model = fake_model(EUCLIDEAN, None, None)
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=D)
    assert probe_distances(model, torch.tensor([[1.0, 1.0]], dtype=D), train) == pytest.approx(
        torch.full((1, 2), 1 - 2 ** -0.5, dtype=D))
    test = torch.tensor([[0.9, 0.1], [0.1, 0.9], [1.0, 0.2]], dtype=D)
    # the third item is labelled 1 but lies nearer the label-0 point
    accuracy = knn_accuracy(model, train, torch.tensor([0, 1]), test, torch.tensor([0, 1, 1]), k=1)
    assert accuracy == pytest.approx(200 / 3)
    # k is capped at the number of training items: with both neighbours the vote ties and goes to label 0
    assert knn_accuracy(model, train, torch.tensor([0, 1]), test, torch.tensor([0, 0, 0]), k=10) == 100.0


def test_lorentz_uses_the_geodesic_distance_where_cosine_cannot_tell():
    model = fake_model(LORENTZ, None, None, c=1.0)
    train = torch.tensor([[1.0, 0.0], [10.0, 0.0]], dtype=D)
    test = torch.tensor([[6.0, 0.0]], dtype=D)  # same direction as both: cosine distance 0 to each
    distances = probe_distances(model, test, train)
    assert distances == pytest.approx(lorentz.pairwise_dist(test, train, 1.0))
    assert distances[0, 1] < distances[0, 0]
    assert knn_accuracy(model, train, torch.tensor([0, 1]), test, torch.tensor([1]), k=1) == 100.0
    euclidean = fake_model(EUCLIDEAN, None, None)
    assert probe_distances(euclidean, test, train) == pytest.approx(torch.zeros(1, 2, dtype=D))


def test_unlabelled_items_are_left_out_and_max_items_caps_each_split():
    model, tokenizer, splits = _setup(EUCLIDEAN)
    seen = []
    encode_input = model.encode_input
    model.encode_input = lambda images: seen.append(len(images)) or encode_input(images)
    probe_metrics(model, splits, tokenizer, max_items=7)
    assert seen == [7, 7]
    unlabelled = splits.test_retain.subset(range(len(splits.test_retain)))
    unlabelled.labels[:] = -1
    empty = type(splits)(splits.request, splits.forget, splits.retain, splits.test_forget, unlabelled,
                         splits.forget_classes, splits.retain_classes)
    assert all(math.isnan(v) for v in probe_metrics(model, empty, tokenizer).values())
    assert math.isnan(knn_accuracy(model, torch.zeros(0, 2, dtype=D), torch.zeros(0), torch.ones(1, 2, dtype=D),
                                   torch.zeros(1), k=1))
    with pytest.raises(ValueError, match="k must be"):
        probe_metrics(model, splits, tokenizer, k=0)
