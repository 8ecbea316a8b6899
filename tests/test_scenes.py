"""fashion-scenes: pair-specific captions, co-occurring concepts, a three-level hierarchy, fixed content."""

from __future__ import annotations

import torch

from vlunlearn.data import UnlearningRequest, load_builtin, make_splits
from vlunlearn.data.scenes import CELL, POSITIONS, TEST_SCENES, TRAIN_SCENES


def test_sizes_levels_and_fixed_content():
    train, test = load_builtin("fashion-scenes", "train"), load_builtin("fashion-scenes", "test")
    assert (len(train), len(test)) == (TRAIN_SCENES, TEST_SCENES)
    assert train.inputs.shape[1:] == (1, 28, 28) and train.hierarchy.levels == ("generic", "family", "class")
    assert all(len(captions) == 3 for captions in train.captions)
    assert load_builtin("fashion-scenes", "train").content_hash() == train.content_hash()
    assert train.content_hash() != test.content_hash()


def test_captions_are_pair_specific_and_name_every_item():
    train = load_builtin("fashion-scenes", "train")
    canonical = train.canonical_captions()
    assert len(set(canonical)) / len(canonical) > 0.75  # templates would give a few dozen strings
    for captions, concepts in zip(train.captions[:300], train.concepts[:300]):
        generic, family, specific = captions
        shown = [c for c in train.class_names if c in concepts]
        assert all(name in specific for name in shown)
        assert generic.endswith("of clothing.") and family.endswith("item.") or "items" in family
        assert {train.hierarchy.parents[c] for c in shown} <= concepts and "clothing" in concepts


def test_single_item_scenes_are_labelled_and_drawn_in_their_cell():
    test = load_builtin("fashion-scenes", "test")
    singles = (test.labels >= 0).nonzero().flatten()
    assert 0.1 < len(singles) / len(test) < 0.3
    assert (test.labels[test.labels < 0].numel() + len(singles)) == len(test)
    for index in singles[:50].tolist():
        caption = test.canonical_captions([index])[0]
        cell = next(i for i, position in enumerate(POSITIONS) if caption.endswith(f"{position}."))
        row, col = divmod(cell, 2)
        image = test.inputs[index, 0].clone()
        assert image[row * CELL : (row + 1) * CELL, col * CELL : (col + 1) * CELL].sum() > 0
        image[row * CELL : (row + 1) * CELL, col * CELL : (col + 1) * CELL] = 0
        assert image.sum() == 0  # nothing outside the item's cell
        assert test.class_names[int(test.labels[index])] in caption


def test_forgetting_a_concept_takes_scenes_it_shares_with_retained_concepts():
    train, test = load_builtin("fashion-scenes", "train"), load_builtin("fashion-scenes", "test")
    splits = make_splits(train, test, UnlearningRequest(concepts=("sneaker",)))
    assert all("sneaker" in concepts for concepts in splits.forget.concepts)
    assert not any("sneaker" in concepts for concepts in splits.retain.concepts)
    shared = sum(len({c for c in concepts if c in train.class_names}) > 1 for concepts in splits.forget.concepts)
    assert shared / len(splits.forget) > 0.5  # most forgotten scenes also show retained classes
    family = make_splits(train, test, UnlearningRequest(concepts=("footwear",)))
    assert len(family.forget) > len(splits.forget)
    assert torch.equal(splits.test_forget.labels[splits.test_forget.labels >= 0].unique(), torch.tensor([7]))
