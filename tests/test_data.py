"""Concept hierarchies, built-in datasets, PairDataset and users' image-text folders."""

from __future__ import annotations

import hashlib
import json
import random
from importlib import resources

import numpy as np
import pytest
import torch
from PIL import Image

from vlunlearn.data import (
    BUILTIN_DATASETS,
    DIGITS,
    FASHION_MNIST,
    ConceptHierarchy,
    PairDataset,
    builtin_hierarchy,
    load_builtin,
    load_image_text_folder,
)
from vlunlearn.errors import DataError, RequestError

FASHION_MNIST_SHA256 = "ab24fe9edc89f08f6472f9ddcc78bf2599ba8031b55970c5a7a653b6ab7a6587"


# ---------------------------------------------------------------- hierarchy


def test_fashion_mnist_hierarchy_ancestry():
    h = FASHION_MNIST
    assert h.levels == ("generic", "family", "class")
    assert h.classes[0] == "t-shirt" and h.classes[9] == "ankle boot" and len(h.classes) == 10
    assert h.ancestors("sneaker") == ("sneaker", "footwear", "clothing")
    assert h.ancestors("clothing") == ("clothing",)
    assert h.classes_under("footwear") == ("sandal", "sneaker", "ankle boot")
    assert h.classes_under("top") == ("t-shirt", "pullover", "coat", "shirt")
    assert h.classes_under("bag") == ("bag",)
    assert h.classes_under("clothing") == h.classes
    assert [h.level_of(c) for c in ("clothing", "footwear", "sneaker")] == ["generic", "family", "class"]
    families = h.concepts_at("family")
    assert set(families).isdisjoint(h.classes) and len(families) == 5
    assert set(h.concepts) == {"clothing", *families, *h.classes}


def test_digits_hierarchy():
    assert DIGITS.classes == ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    assert DIGITS.classes_under("even") == ("zero", "two", "four", "six", "eight")
    assert DIGITS.ancestors("seven") == ("seven", "odd", "number")


def test_unknown_concept_lists_valid_ones():
    with pytest.raises(RequestError, match="valid concepts: clothing, top") as info:
        FASHION_MNIST.ancestors("hat")
    assert "'hat'" in str(info.value) and "ankle boot" in str(info.value)
    with pytest.raises(RequestError, match="hat"):
        FASHION_MNIST.classes_under("hat")
    with pytest.raises(RequestError, match="not a class"):
        FASHION_MNIST.class_prompts("footwear")
    with pytest.raises(RequestError, match="valid levels"):
        FASHION_MNIST.level_prompts("species")


def test_captions_and_prompts():
    captions = FASHION_MNIST.captions_for("ankle boot", random.Random(0))
    assert len(captions) == 3
    for caption, concept in zip(captions, ("clothing", "footwear", "ankle boot")):
        assert concept in caption
    assert captions == FASHION_MNIST.captions_for("ankle boot", random.Random(0))
    generator = FASHION_MNIST.captions_for("bag", np.random.default_rng(0))
    assert "bag" in generator[-1] and "accessory" in generator[1]
    prompts = FASHION_MNIST.class_prompts("ankle boot")
    assert 4 <= len(prompts) <= 6 and all("ankle boot" in p for p in prompts)
    assert "a photo of an ankle boot." in prompts  # the article follows the name
    assert "a drawing of a one." in DIGITS.class_prompts("one")
    family = FASHION_MNIST.level_prompts("family")
    assert list(family) == ["top", "legwear", "one-piece", "footwear", "accessory"]
    assert all(all(name in p for p in prompts) for name, prompts in family.items())
    assert list(FASHION_MNIST.level_prompts("generic")) == ["clothing"]
    with pytest.raises(TypeError):
        FASHION_MNIST.captions_for("bag", 0)


def test_invalid_hierarchy_is_rejected():
    templates = {"generic": ("{}",), "family": ("{}",), "class": ("{}",)}
    good = dict(name="x", classes=("a", "b"), parents={"f": "r", "a": "f", "b": "f"}, root="r",
                caption_templates=templates, prompt_templates=("{}",))
    ConceptHierarchy(**good)
    with pytest.raises(DataError, match="depth"):
        ConceptHierarchy(**{**good, "parents": {"f": "r", "a": "f", "b": "r"}})
    with pytest.raises(DataError, match="not a concept"):
        ConceptHierarchy(**{**good, "parents": {"f": "r", "a": "f", "b": "g"}})
    with pytest.raises(DataError, match="levels"):
        ConceptHierarchy(**{**good, "caption_templates": {"generic": ("{}",)}})


# ---------------------------------------------------------------- built-in data


def test_vendored_npz_matches_recorded_sha256():
    asset = resources.files("vlunlearn.data").joinpath("assets", "fashion_mnist_subset.npz")
    data = asset.read_bytes()
    assert hashlib.sha256(data).hexdigest() == FASHION_MNIST_SHA256
    assert len(data) < 10 * 2**20
    licence = resources.files("vlunlearn.data").joinpath("assets", "FASHION_MNIST_LICENSE").read_text()
    assert "Zalando SE" in licence and "MIT" in licence


@pytest.mark.parametrize(
    "name, split, size",
    [("fashion-mnist", "train", 10_000), ("fashion-mnist", "test", 2_000), ("digits", "train", 1_437), ("digits", "test", 360)],
)
def test_builtin_sizes_and_format(name, split, size):
    data = load_builtin(name, split)
    hierarchy = builtin_hierarchy(name)
    assert len(data) == size and data.hierarchy is hierarchy
    assert data.inputs.dtype == torch.uint8 and data.inputs.shape == (size, 1, 28, 28)
    assert int(data.inputs.max()) > 200 and int(data.inputs.min()) == 0
    assert data.labels.dtype == torch.int64 and data.class_names == hierarchy.classes
    counts = torch.bincount(data.labels, minlength=10)
    if name == "fashion-mnist":
        assert counts.tolist() == [size // 10] * 10
    else:
        assert counts.min() > 0
    assert len(set(data.ids)) == size and data.ids[42] == f"{name}/{split}/00042"
    for captions, concepts, label in zip(data.captions, data.concepts, data.labels.tolist()):
        chain = hierarchy.ancestors(hierarchy.classes[label])
        assert concepts == frozenset(chain)
        assert len(captions) == 3
        assert all(concept in caption for caption, concept in zip(captions, chain[::-1]))
    batch = data.input_batch([0, 1, 2])
    assert batch.dtype == torch.float32 and batch.shape == (3, 1, 28, 28)
    assert 0.0 <= float(batch.min()) and float(batch.max()) <= 1.0


def test_digits_split_is_stratified_and_complete():
    from sklearn.datasets import load_digits

    totals = np.bincount(load_digits().target, minlength=10)
    train, test = load_builtin("digits", "train"), load_builtin("digits", "test")
    train_counts = torch.bincount(train.labels, minlength=10).numpy()
    test_counts = torch.bincount(test.labels, minlength=10).numpy()
    assert (train_counts + test_counts == totals).all()
    assert np.abs(test_counts - 0.2 * totals).max() <= 1


def test_builtin_captions_are_fixed_and_templates_vary_by_item():
    a, b = load_builtin("fashion-mnist", "train"), load_builtin("fashion-mnist", "train")
    assert a.captions == b.captions and a.content_hash() == b.content_hash()
    assert len(set(a.canonical_captions()[:100])) > 10  # several templates per class
    assert load_builtin("fashion-mnist", "test").captions[:50] != a.captions[:50]
    # train and test digits are disjoint images
    train = load_builtin("digits", "train").inputs.flatten(1)
    assert not (load_builtin("digits", "test").inputs.flatten(1)[:20, None, :] == train[None]).all(-1).any()


def test_builtin_datasets_do_not_share_mutable_images():
    a = load_builtin("digits", "train")
    a.inputs[0].fill_(7)
    assert not torch.all(load_builtin("digits", "train").inputs[0] == 7)


def test_builtin_unknown_name_or_split():
    assert BUILTIN_DATASETS == ("fashion-scenes", "fashion-mnist", "digits", "molecules")
    with pytest.raises(DataError, match="fashion-mnist, digits"):
        load_builtin("cifar10", "train")
    with pytest.raises(DataError, match="train, test"):
        load_builtin("digits", "validation")


# ---------------------------------------------------------------- PairDataset


def _tiny(n=4, name="tiny"):
    return PairDataset(
        name=name,
        inputs=torch.arange(n * 3 * 2 * 2, dtype=torch.uint8).reshape(n, 3, 2, 2),
        captions=[(f"caption {i}",) for i in range(n)],
        concepts=[frozenset({"a" if i % 2 else "b"}) for i in range(n)],
        labels=torch.tensor([i % 2 for i in range(n)]),
        ids=[f"item{i}" for i in range(n)],
        class_names=("b", "a"),
    )


def test_subset_ids_and_hash():
    data = load_builtin("fashion-mnist", "test")
    part = data.subset([5, 3, 1], name="part")
    assert part.name == "part" and len(part) == 3
    assert part.ids == [data.ids[5], data.ids[3], data.ids[1]]
    assert torch.equal(part.inputs[0], data.inputs[5]) and part.captions[1] == data.captions[3]
    assert part.canonical_captions() == [data.captions[i][-1] for i in (5, 3, 1)]
    assert data.canonical_captions([0]) == [data.captions[0][-1]]
    mask = data.labels == 8
    bags = data.subset(mask)
    assert len(bags) == 200 and bags.name == data.name and set(bags.labels.tolist()) == {8}
    assert data.subset(torch.tensor([0, 1])).content_hash() == data.subset([0, 1]).content_hash()
    assert len(data.subset([])) == 0
    with pytest.raises(DataError):
        data.subset([len(data)])


def test_pair_dataset_validation():
    tiny = _tiny()
    assert len(tiny) == 4 and "tiny" in repr(tiny)
    assert len(tiny.content_hash()) == 64
    with pytest.raises(DataError, match="unique"):
        PairDataset(**{**tiny.__dict__, "ids": ["x", "y", "x", "z"]})
    with pytest.raises(DataError, match="3 captions"):
        PairDataset(**{**tiny.__dict__, "captions": tiny.captions[:3]})
    with pytest.raises(DataError, match="uint8"):
        PairDataset(**{**tiny.__dict__, "inputs": tiny.inputs.float()})
    with pytest.raises(DataError, match="C in"):
        PairDataset(**{**tiny.__dict__, "inputs": torch.zeros(4, 2, 2, 2, dtype=torch.uint8)})
    with pytest.raises(DataError, match="labels"):
        PairDataset(**{**tiny.__dict__, "labels": torch.tensor([0, 1, 2, 0])})
    changed = PairDataset(**{**tiny.__dict__, "captions": [("other",)] + tiny.captions[1:]})
    assert changed.content_hash() != tiny.content_hash()


# ---------------------------------------------------------------- image-text folders


def _write_images(root, names=("red.png", "green.png", "blue.png")):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    for name, colour in zip(names, colours):
        Image.new("RGB", (40, 20), colour).save(root / name)


def test_folder_csv(tmp_path):
    _write_images(tmp_path)
    Image.new("L", (10, 30), 128).save(tmp_path / "grey.png")
    (tmp_path / "ann.csv").write_text(
        "path,caption,concepts\n"
        "red.png,a red square,red;colour\n"
        "green.png,a green square,green\n"
        'blue.png,"a blue square, bright",\n'
        "grey.png,a grey square,grey\n"
    )
    data = load_image_text_folder(tmp_path, "ann.csv", image_size=16)
    assert data.name == "ann" and len(data) == 4
    assert data.inputs.shape == (4, 3, 16, 16) and data.inputs.dtype == torch.uint8
    assert data.inputs[0, :, 8, 8].tolist() == [255, 0, 0]
    assert data.inputs[3, :, 8, 8].tolist() == [128, 128, 128]
    assert data.captions[2] == ("a blue square, bright",)
    assert data.class_names == ("colour", "green", "grey", "red")
    assert data.labels.tolist() == [-1, 1, -1, 2]
    assert data.concepts[0] == frozenset({"red", "colour"}) and data.concepts[2] == frozenset()
    assert data.ids == ["red.png", "green.png", "blue.png", "grey.png"]
    assert data.hierarchy is None


def test_folder_jsonl(tmp_path):
    (tmp_path / "img").mkdir()
    _write_images(tmp_path / "img")
    lines = [
        {"path": "img/red.png", "caption": "red", "concepts": ["warm"], "id": "r"},
        {"path": "img/green.png", "caption": "green", "concepts": ["cool"], "id": "g"},
        {"path": "img/red.png", "caption": "red again", "id": "r2"},
    ]
    annotations = tmp_path / "ann.jsonl"
    annotations.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    data = load_image_text_folder(tmp_path, annotations, image_size=8, name="mine")
    assert data.name == "mine" and data.ids == ["r", "g", "r2"]
    assert data.class_names == ("cool", "warm") and data.labels.tolist() == [1, 0, -1]
    assert data.inputs.shape == (3, 3, 8, 8) and torch.equal(data.inputs[0], data.inputs[2])


def _csv(tmp_path, text):
    path = tmp_path / "ann.csv"
    path.write_text(text)
    return path


def test_folder_errors_name_the_file(tmp_path):
    _write_images(tmp_path)
    with pytest.raises(DataError, match="annotation file not found.*missing.csv"):
        load_image_text_folder(tmp_path, "missing.csv", 8)

    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    path = _csv(tmp_path, "path,caption\nred.png,ok\nbroken.png,bad\n")
    with pytest.raises(DataError, match=r"ann\.csv, line 3: cannot read image .*broken\.png"):
        load_image_text_folder(tmp_path, path, 8)

    path = _csv(tmp_path, "path,caption\nred.png,ok\nnope.png,missing\n")
    with pytest.raises(DataError, match=r"ann\.csv, line 3: image file not found: .*nope\.png"):
        load_image_text_folder(tmp_path, path, 8)

    path = _csv(tmp_path, "path,text\nred.png,ok\n")
    with pytest.raises(DataError, match=r"ann\.csv, line 1: .*caption"):
        load_image_text_folder(tmp_path, path, 8)

    path = _csv(tmp_path, "path,caption\nred.png,ok,extra\n")
    with pytest.raises(DataError, match=r"ann\.csv, line 2: 3 fields"):
        load_image_text_folder(tmp_path, path, 8)

    path = _csv(tmp_path, "path,caption\nred.png,ok\ngreen.png\n")
    with pytest.raises(DataError, match=r"ann\.csv, line 3: too few fields"):
        load_image_text_folder(tmp_path, path, 8)

    path = _csv(tmp_path, "path,caption\nred.png,\n")
    with pytest.raises(DataError, match=r"ann\.csv, line 2: 'caption'"):
        load_image_text_folder(tmp_path, path, 8)

    path = _csv(tmp_path, "path,caption\nred.png,one\nred.png,two\n")
    with pytest.raises(DataError, match=r"ann\.csv, line 3: id 'red.png' repeats line 2"):
        load_image_text_folder(tmp_path, path, 8)

    path = _csv(tmp_path, "path,caption\n")
    with pytest.raises(DataError, match=r"ann\.csv: no annotations"):
        load_image_text_folder(tmp_path, path, 8)

    jsonl = tmp_path / "ann.jsonl"
    jsonl.write_text('{"path": "red.png", "caption": "ok"}\n{"path": "green.png", "caption": \n')
    with pytest.raises(DataError, match=r"ann\.jsonl, line 2: not valid JSON"):
        load_image_text_folder(tmp_path, jsonl, 8)
    jsonl.write_text('{"path": "red.png"}\n')
    with pytest.raises(DataError, match=r"ann\.jsonl, line 1: missing key\(s\) caption"):
        load_image_text_folder(tmp_path, jsonl, 8)
    jsonl.write_text('{"path": "red.png", "caption": "x", "concepts": "red"}\n')
    with pytest.raises(DataError, match=r"ann\.jsonl, line 1: 'concepts' must be a list"):
        load_image_text_folder(tmp_path, jsonl, 8)
    jsonl.write_text('["red.png", "x"]\n')
    with pytest.raises(DataError, match=r"ann\.jsonl, line 1: expected a JSON object"):
        load_image_text_folder(tmp_path, jsonl, 8)

    other = tmp_path / "ann.txt"
    other.write_text("red.png\tx\n")
    with pytest.raises(DataError, match=r"ann\.txt: unknown annotation format"):
        load_image_text_folder(tmp_path, other, 8)
