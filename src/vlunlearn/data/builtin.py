"""Built-in datasets that work offline: scenes of Fashion-MNIST items, a vendored Fashion-MNIST
subset, scikit-learn's digits and real molecules.

The image sets have 10 classes, 28x28 grey images and a three-level concept hierarchy
(generic -> family -> class), so every item has three captions. ``molecules`` pairs the graphs
of NCI molecules with captions and functional-group concepts (see :mod:`vlunlearn.data.molecules`).

- ``fashion-scenes`` (the demo's default): 3,000 training and 2,000 test scenes of one to
  three Fashion-MNIST items with pair-specific captions (see :mod:`vlunlearn.data.scenes`).

- ``fashion-mnist``: 1000 images per class for training (10,000) and 200 per class for
  testing (2,000), taken from the official train and test files by
  ``scripts/make_fashion_mnist_subset.py`` (MIT licence, Zalando SE; see
  ``assets/FASHION_MNIST_LICENSE``).
- ``digits``: the 1,797 8x8 images of ``sklearn.datasets.load_digits``, scaled to 0..255
  and resized to 28x28 (bilinear); a fixed stratified 80/20 split (1,437 / 360) that does
  not depend on the ``seed`` argument.

Captions are fixed: a run's seed never changes which pairs a model is trained on, so runs
with several seeds share one data hash and their reports merge.
"""

from __future__ import annotations

import functools
import random
from importlib import resources

import numpy as np
import torch

from vlunlearn.data.datasets import PairDataset
from vlunlearn.data.hierarchy import DIGITS, FASHION_MNIST, ConceptHierarchy
from vlunlearn.data.molecules import load_molecules, molecules_hierarchy
from vlunlearn.data.scenes import FASHION_SCENES, TEST_SCENES, TRAIN_SCENES, compose_scenes
from vlunlearn.errors import DataError

BUILTIN_DATASETS = ("fashion-scenes", "fashion-mnist", "digits", "molecules")
SPLITS = ("train", "test")
HIERARCHIES: dict[str, ConceptHierarchy] = {
    "fashion-scenes": FASHION_SCENES, "fashion-mnist": FASHION_MNIST, "digits": DIGITS,
}
CAPTION_SEED = 0  # the caption templates of fashion-mnist and digits are drawn once, with this seed

FASHION_MNIST_FILE = "fashion_mnist_subset.npz"
DIGITS_SPLIT_SEED = 20240601  # fixed: the digits split must not move with the caption seed
DIGITS_TEST_FRACTION = 0.2
IMAGE_SIZE = 28


def builtin_hierarchy(name: str) -> ConceptHierarchy:
    """The concept hierarchy of a built-in dataset."""
    _check_name(name)
    return molecules_hierarchy() if name == "molecules" else HIERARCHIES[name]


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


def load_builtin(name: str, split: str) -> PairDataset:
    """Load a built-in dataset split.

    Args:
        name: one of ``BUILTIN_DATASETS``.
        split: ``"train"`` or ``"test"``.

    Returns:
        A ``PairDataset`` with uint8 ``(N, 1, 28, 28)`` images (``molecules``: a
        :class:`~vlunlearn.data.graphs.GraphSet`), three captions per item (generic, family,
        class) and ids ``"<name>/<split>/<index>"``. Its content (and so its hash) is always the same.
    """
    _check_name(name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} of {name!r}; valid splits: {', '.join(SPLITS)}")
    if name == "fashion-scenes":
        return _load_scenes(split)
    if name == "molecules":
        return load_molecules(split)
    hierarchy = HIERARCHIES[name]
    arrays = _arrays(name)
    images = torch.from_numpy(arrays[f"{split}_images"].copy()).unsqueeze(1)
    labels = torch.from_numpy(arrays[f"{split}_labels"].astype(np.int64))
    rng = random.Random(f"vlunlearn/{name}/{split}/{CAPTION_SEED}")
    classes = [hierarchy.classes[k] for k in labels.tolist()]
    concepts_of = {c: frozenset(hierarchy.ancestors(c)) for c in hierarchy.classes}
    return PairDataset(
        name=f"{name}/{split}",
        inputs=images,
        captions=[hierarchy.captions_for(c, rng) for c in classes],
        concepts=[concepts_of[c] for c in classes],
        labels=labels,
        ids=[f"{name}/{split}/{i:05d}" for i in range(len(classes))],
        class_names=hierarchy.classes,
        hierarchy=hierarchy,
    )


def _load_scenes(split: str) -> PairDataset:
    arrays = _fashion_mnist_arrays()
    items, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"].astype(np.int64)
    count = TRAIN_SCENES if split == "train" else TEST_SCENES
    scenes = compose_scenes(np.ascontiguousarray(items).tobytes(), np.ascontiguousarray(labels).tobytes(), count, split)
    hierarchy = FASHION_SCENES
    return PairDataset(
        name=f"fashion-scenes/{split}",
        inputs=torch.from_numpy(scenes["images"].copy()).unsqueeze(1),
        captions=scenes["captions"],
        concepts=[frozenset(a for k in shown for a in hierarchy.ancestors(hierarchy.classes[k])) for shown in scenes["classes"]],
        labels=torch.from_numpy(scenes["labels"].copy()),
        ids=[f"fashion-scenes/{split}/{i:05d}" for i in range(count)],
        class_names=hierarchy.classes,
        hierarchy=hierarchy,
    )
