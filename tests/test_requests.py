"""Unlearning requests -> forget / retain / test splits, and every way a request can be wrong."""

from __future__ import annotations

import pytest
import torch

from vlunlearn.data import PairDataset, UnlearningRequest, load_builtin, make_splits
from vlunlearn.errors import DataError, RequestError


@pytest.fixture(scope="module")
def fashion():
    return load_builtin("fashion-mnist", "train"), load_builtin("fashion-mnist", "test")


def _check_partition(splits, train, test):
    assert len(splits.forget) + len(splits.retain) == len(train)
    assert set(splits.forget.ids).isdisjoint(splits.retain.ids)
    assert set(splits.forget.ids) | set(splits.retain.ids) == set(train.ids)
    assert set(splits.test_forget.ids).isdisjoint(splits.test_retain.ids)
    assert len(splits.test_forget) + len(splits.test_retain) == len(test)


def test_single_concept(fashion):
    train, test = fashion
    splits = make_splits(train, test, UnlearningRequest(concepts=("sneaker",)))
    _check_partition(splits, train, test)
    assert len(splits.forget) == 1000 and len(splits.retain) == 9000
    assert len(splits.test_forget) == 200 and len(splits.test_retain) == 1800
    assert splits.forget_classes == ("sneaker",)
    assert "sneaker" not in splits.retain_classes and len(splits.retain_classes) == 9
    assert set(splits.forget.labels.tolist()) == {7}
    assert 7 not in splits.retain.labels.tolist() and 7 not in splits.test_retain.labels.tolist()
    assert set(splits.test_forget.labels.tolist()) == {7}
    assert splits.forget.name.endswith("forget") and splits.retain.hierarchy is train.hierarchy


def test_several_concepts(fashion):
    train, test = fashion
    request = UnlearningRequest(concepts=("sneaker", "bag", "coat"))
    splits = make_splits(train, test, request)
    _check_partition(splits, train, test)
    assert len(splits.forget) == 3000 and len(splits.retain) == 7000
    assert len(splits.test_forget) == 600
    assert splits.forget_classes == ("coat", "sneaker", "bag")  # label order
    assert set(splits.forget.labels.tolist()) == {4, 7, 8}
    assert request.describe() == "forget concepts sneaker, bag, coat"


def test_family_concept(fashion):
    train, test = fashion
    splits = make_splits(train, test, UnlearningRequest(concepts="footwear"))
    _check_partition(splits, train, test)
    assert splits.forget_classes == ("sandal", "sneaker", "ankle boot")
    assert len(splits.forget) == 3000 and len(splits.test_forget) == 600
    assert all("footwear" in c for c in splits.forget.concepts)
    assert not any("footwear" in c for c in splits.retain.concepts)
    assert splits.retain_classes == ("t-shirt", "trouser", "pullover", "dress", "coat", "shirt", "bag")


def test_digits_family():
    train, test = load_builtin("digits", "train"), load_builtin("digits", "test")
    splits = make_splits(train, test, UnlearningRequest(concepts=("odd",)))
    assert splits.forget_classes == ("one", "three", "five", "seven", "nine")
    assert set(splits.test_forget.labels.tolist()) == {1, 3, 5, 7, 9}
    assert set(splits.retain.labels.tolist()) == {0, 2, 4, 6, 8}


def test_sample_ids(fashion):
    train, test = fashion
    ids = ("fashion-mnist/train/00000", "fashion-mnist/train/00010", "fashion-mnist/train/00011")
    splits = make_splits(train, test, UnlearningRequest(sample_ids=ids))
    assert len(splits.forget) + len(splits.retain) == len(train)
    assert set(splits.forget.ids) | set(splits.retain.ids) == set(train.ids)
    assert splits.forget.ids == list(ids) and len(splits.retain) == len(train) - 3
    assert splits.forget_classes == () and splits.retain_classes == train.class_names
    forget_labels = set(splits.forget.labels.tolist())
    assert set(splits.test_forget.labels.tolist()) == forget_labels
    assert len(splits.test_forget) == 200 * len(forget_labels)
    assert splits.test_retain.ids == test.ids  # every test item is knowledge to keep, whatever D_f's classes
    assert UnlearningRequest(sample_ids=ids).describe().startswith("forget 3 samples")
    # a repeated id counts once
    assert len(make_splits(train, test, UnlearningRequest(sample_ids=ids + ids[:1])).forget) == 3


def test_neither_or_both(fashion):
    train, test = fashion
    with pytest.raises(RequestError, match="neither"):
        make_splits(train, test, UnlearningRequest())
    with pytest.raises(RequestError, match="both"):
        make_splits(train, test, UnlearningRequest(concepts=("bag",), sample_ids=("fashion-mnist/train/00000",)))


def test_unknown_concepts_are_listed_with_valid_ones(fashion):
    train, test = fashion
    with pytest.raises(RequestError) as info:
        make_splits(train, test, UnlearningRequest(concepts=("bag", "hat", "scarf")))
    message = str(info.value)
    assert "'hat'" in message and "'scarf'" in message and "'bag'" not in message
    assert "valid concepts:" in message and "ankle boot" in message and "footwear" in message
    with pytest.raises(RequestError, match="non-empty strings"):
        UnlearningRequest(concepts=("",))


def test_unknown_sample_ids(fashion):
    train, test = fashion
    unknown = tuple(f"nope/{i}" for i in range(7))
    with pytest.raises(RequestError) as info:
        make_splits(train, test, UnlearningRequest(sample_ids=("fashion-mnist/train/00001",) + unknown))
    message = str(info.value)
    assert message.startswith("7 sample ids not in the training data")
    assert "'nope/0'" in message and "'nope/4'" in message and "'nope/5'" not in message and "7 in all" in message
    with pytest.raises(RequestError, match="1 of them are test ids"):
        make_splits(train, test, UnlearningRequest(sample_ids=("fashion-mnist/test/00001",)))


def test_empty_forget_set(fashion):
    train, test = fashion
    no_bags = train.subset(train.labels != 8)
    with pytest.raises(RequestError, match="selects no training item"):
        make_splits(no_bags, test, UnlearningRequest(concepts=("bag",)))


def test_forget_set_equal_to_all_training_data(fashion):
    train, test = fashion
    with pytest.raises(RequestError, match="selects all 10000 training items"):
        make_splits(train, test, UnlearningRequest(concepts=("clothing",)))
    small = train.subset([0, 1])
    with pytest.raises(RequestError, match="selects all 2"):
        make_splits(small, test, UnlearningRequest(sample_ids=tuple(small.ids)))
    families = ("top", "legwear", "one-piece", "footwear", "accessory")
    with pytest.raises(RequestError, match="selects all"):
        make_splits(train, test, UnlearningRequest(concepts=families))


def _flat(n_labelled, n_unlabelled, name):
    n = n_labelled + n_unlabelled
    return PairDataset(
        name=name,
        inputs=torch.zeros(n, 3, 4, 4, dtype=torch.uint8),
        captions=[(f"item {i}",) for i in range(n)],
        concepts=[frozenset({"cat" if i % 2 else "dog"}) if i < n_labelled else frozenset() for i in range(n)],
        labels=torch.tensor([i % 2 if i < n_labelled else -1 for i in range(n)]),
        ids=[f"{name}/{i}" for i in range(n)],
        class_names=("dog", "cat"),
    )


def test_no_retain_class_left():
    train, test = _flat(4, 2, "train"), _flat(2, 1, "test")
    splits = make_splits(train, test, UnlearningRequest(concepts=("cat",)))  # data without a hierarchy
    assert splits.forget_classes == ("cat",) and splits.retain_classes == ("dog",)
    assert len(splits.forget) == 2 and len(splits.test_forget) == 1
    with pytest.raises(RequestError, match="forgets every class"):
        make_splits(train, test, UnlearningRequest(concepts=("cat", "dog")))
    with pytest.raises(RequestError, match="unknown concept 'bird'.*valid concepts: dog, cat"):
        make_splits(train, test, UnlearningRequest(concepts=("bird",)))


def test_train_and_test_classes_must_agree(fashion):
    train, _ = fashion
    with pytest.raises(DataError, match="different classes"):
        make_splits(train, load_builtin("digits", "test"), UnlearningRequest(concepts=("bag",)))
