"""Built-in datasets that work offline: a vendored Fashion-MNIST subset and scikit-learn's digits.

Both have 10 classes, 28x28 grey images and a three-level concept hierarchy
(generic -> family -> class), so every item has three captions.

- ``fashion-mnist``: 1000 images per class for training (10,000) and 200 per class for
  testing (2,000), taken from the official train and test files by
  ``scripts/make_fashion_mnist_subset.py`` (MIT licence, Zalando SE; see
  ``assets/FASHION_MNIST_LICENSE``).
- ``digits``: the 1,797 8x8 images of ``sklearn.datasets.load_digits``, scaled to 0..255
  and resized to 28x28 (bilinear); a fixed stratified 80/20 split (1,437 / 360) that does
  not depend on the ``seed`` argument.

The ``seed`` argument only chooses the caption templates, so datasets loaded with
different seeds have the same images and different captions.
"""

from __future__ import annotations

import functools
import random
from importlib import resources

import numpy as np
import torch

from vlunlearn.data.datasets import PairDataset
from vlunlearn.data.hierarchy import DIGITS, FASHION_MNIST, ConceptHierarchy
from vlunlearn.errors import DataError

BUILTIN_DATASETS = ("fashion-mnist", "digits")
SPLITS = ("train", "test")
HIERARCHIES: dict[str, ConceptHierarchy] = {"fashion-mnist": FASHION_MNIST, "digits": DIGITS}

FASHION_MNIST_FILE = "fashion_mnist_subset.npz"
DIGITS_SPLIT_SEED = 20240601  # fixed: the digits split must not move with the caption seed
DIGITS_TEST_FRACTION = 0.2
IMAGE_SIZE = 28


def builtin_hierarchy(name: str) -> ConceptHierarchy:
    """The concept hierarchy of a built-in dataset."""
    _check_name(name)
    return HIERARCHIES[name]


def _check_name(name: str) -> None:
    if name not in BUILTIN_DATASETS:
        raise DataError(f"unknown built-in dataset {name!r}; valid names: {', '.join(BUILTIN_DATASETS)}")


@functools.lru_cache(maxsize=None)
def _fashion_mnist_arrays() -> dict[str, np.ndarray]:
    asset = resources.files("vlunlearn.data").joinpath("assets", FASHION_MNIST_FILE)
    try:
        with asset.open("rb") as handle, np.load(handle) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as error:
        raise DataError(
            f"cannot read the vendored Fashion-MNIST subset {asset}: {error}; "
            "rebuild it with scripts/make_fashion_mnist_subset.py"
        ) from error
    for array in arrays.values():
        array.setflags(write=False)
    return arrays


@functools.lru_cache(maxsize=None)
def _digits_arrays() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    scaled = np.rint(digits.images.astype(np.float64) * (255.0 / 16.0)).clip(0, 255)
    small = torch.from_numpy(scaled.astype(np.float32)).unsqueeze(1)
    large = torch.nn.functional.interpolate(small, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    images = large.round().clamp(0, 255).to(torch.uint8).squeeze(1).numpy()
    labels = digits.target.astype(np.int64)

    # Stratified split: ceil(20 %) of the items in test (360 of 1,797, like scikit-learn's
    # train_test_split), shared among the classes by largest remainder, each class's test
    # items drawn with a fixed generator.
    classes, sizes = np.unique(labels, return_counts=True)
    total = int(np.ceil(labels.size * DIGITS_TEST_FRACTION))
    exact = sizes * total / labels.size
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    rng = np.random.default_rng(DIGITS_SPLIT_SEED)
    test = [rng.permutation(np.flatnonzero(labels == label))[:count] for label, count in zip(classes, counts)]
    is_test = np.zeros(labels.size, dtype=bool)
    is_test[np.concatenate(test)] = True
    arrays = {
        "train_images": images[~is_test],
        "train_labels": labels[~is_test],
        "test_images": images[is_test],
        "test_labels": labels[is_test],
    }
    for array in arrays.values():
        array.setflags(write=False)
    return arrays


def _arrays(name: str) -> dict[str, np.ndarray]:
    return _fashion_mnist_arrays() if name == "fashion-mnist" else _digits_arrays()


def load_builtin(name: str, split: str, seed: int = 0) -> PairDataset:
    """Load a built-in dataset split.

    Args:
        name: one of ``BUILTIN_DATASETS``.
        split: ``"train"`` or ``"test"``.
        seed: chooses the caption templates of every item; the same seed gives the same
            captions (and content hash), another seed other captions over the same images.

    Returns:
        A ``PairDataset`` with uint8 ``(N, 1, 28, 28)`` images, three captions per item
        (generic, family, class) and ids ``"<name>/<split>/<index>"``.
    """
    _check_name(name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} of {name!r}; valid splits: {', '.join(SPLITS)}")
    hierarchy = HIERARCHIES[name]
    arrays = _arrays(name)
    images = torch.from_numpy(arrays[f"{split}_images"].copy()).unsqueeze(1)
    labels = torch.from_numpy(arrays[f"{split}_labels"].astype(np.int64))
    rng = random.Random(f"vlunlearn/{name}/{split}/{int(seed)}")
    classes = [hierarchy.classes[k] for k in labels.tolist()]
    concepts_of = {c: frozenset(hierarchy.ancestors(c)) for c in hierarchy.classes}
    return PairDataset(
        name=f"{name}/{split}",
        images=images,
        captions=[hierarchy.captions_for(c, rng) for c in classes],
        concepts=[concepts_of[c] for c in classes],
        labels=labels,
        ids=[f"{name}/{split}/{i:05d}" for i in range(len(classes))],
        class_names=hierarchy.classes,
        hierarchy=hierarchy,
    )
