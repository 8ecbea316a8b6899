"""Where a run's data comes from: a built-in dataset by name, or a user's files (an annotation
file, a WebDataset tar shard or a folder of shards) with their held-out split; and the class list
that zero-shot evaluation ranks."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch

from vlunlearn.data.builtin import BUILTIN_DATASETS, load_builtin
from vlunlearn.data.concept_tree import check_test_concepts, describe
from vlunlearn.data.datasets import PairDataset
from vlunlearn.data.folder import load_image_text_folder, load_tar_shards
from vlunlearn.data.molecules import read_molecules
from vlunlearn.errors import DataError


def load_data(
    data: str,
    test_data: str | None,
    model_config,
    workers: int = 0,
    *,
    hierarchy: str | Path | None = None,
    level_captions: bool = False,
    classes: Sequence[str] | None = None,
) -> tuple[PairDataset, PairDataset]:
    """The train and test data of a run: a built-in dataset by name, or a user's data with its
    held-out split in ``test_data``, each an annotation file (CSV/JSONL, image paths relative
    to its folder), a WebDataset tar shard or a folder of shards.

    Users' images stay on disk and are decoded per batch, by ``workers`` processes, at the
    model's input size and channel count (``model_config``: a
    :class:`~vlunlearn.models.ModelConfig`). ``hierarchy`` (a child -> parent file) and
    ``level_captions`` (a caption per hierarchy level) go to the user-data loaders. The test
    split must show no concept the training split lacks; it is labelled on the training data's
    classes (and hierarchy). ``classes``, when given, restricts both splits' classes to those
    names (see :func:`restrict_classes`).

    Raises:
        DataError: an unknown name or missing path, a user's data without ``test_data``,
            ``test_data``/``hierarchy``/``level_captions`` given for built-in data, test
            concepts that the training data lacks, a class name the training data lacks.
    """
    if data in BUILTIN_DATASETS:
        given = [flag for flag, value in (("--test-data", test_data), ("--hierarchy", hierarchy),
                                          ("--level-captions", level_captions)) if value]
        if given:
            raise DataError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for a user's data; "
                            f"the built-in {data!r} has its own test split and hierarchy")
        train, test = load_builtin(data, "train"), load_builtin(data, "test")
    else:
        if not Path(data).exists():
            raise DataError(
                f"--data {data!r} is neither a built-in dataset ({', '.join(BUILTIN_DATASETS)}) nor an annotation "
                "file, a tar shard or a folder of shards"
            )
        if test_data is None:
            raise DataError(f"--data {data} is a user's data: give its held-out split with --test-data")
        size, channels = model_config.image_size, len(model_config.pixel_mean)
        train = _user_data(Path(data), size, channels, workers, hierarchy=hierarchy, level_captions=level_captions)
        # the test split is read on the training tree, so that its labels and level captions are the training data's
        test = _user_data(Path(test_data), size, channels, workers, level_captions=level_captions,
                          hierarchy=train.hierarchy if train.hierarchy is not None else hierarchy)
        check_test_concepts(train, test)
        if train.hierarchy is None:
            test = replace(_relabel(test, train.class_names), hierarchy=None)
    if model_config is not None and getattr(model_config, "modality", "image") != train.modality:
        raise DataError(f"{data!r} holds {train.modality}s but the model {model_config.name!r} encodes "
                        f"{model_config.modality}s; use {'a graph' if train.modality == 'graph' else 'an image'} model "
                        f"(e.g. --model {default_model(data)})")
    if classes is not None:
        train, test = restrict_classes(train, classes), _relabel(test, tuple(classes))
    return train, test


def default_model(data: str) -> str:
    """The named model a run on ``data`` starts from when none is given: ``tiny-graph`` for
    molecules (the built-in set, or a user's ``.npz`` of :func:`~vlunlearn.data.molecules.read_molecules`),
    else ``tiny``."""
    return "tiny-graph" if data == "molecules" or str(data).lower().endswith(".npz") else "tiny"


@dataclass(frozen=True)
class DataSource:
    """A run's data as the user names it (the arguments of :func:`load_data`)."""

    name: str
    test_data: str | None = None
    hierarchy: str | None = None
    level_captions: bool = False
    classes: tuple[str, ...] | None = None
    workers: int = 0

    def load(self, model_config) -> tuple[PairDataset, PairDataset]:
        """``(train, test)``, read for a model of ``model_config`` (see :func:`load_data`)."""
        return load_data(self.name, self.test_data, model_config, self.workers, hierarchy=self.hierarchy,
                         level_captions=self.level_captions, classes=self.classes)

    def record(self, train: PairDataset) -> dict:
        """What a results file records of the data: how it was named and read, the training
        data's size and content hash and, for a user's data, its classes and hierarchy in words
        (:func:`~vlunlearn.data.concept_tree.describe`)."""
        record = {"name": self.name, "modality": train.modality, "train_size": len(train), "train_hash": train.content_hash(),
                  "test_data": self.test_data, "hierarchy": self.hierarchy, "level_captions": self.level_captions,
                  "classes": None if self.classes is None else list(self.classes)}
        return record if self.name in BUILTIN_DATASETS else {**record, "description": describe(train)}


def _user_data(path: Path, size: int, channels: int, workers: int, **options) -> PairDataset:
    if path.is_dir():
        shards = sorted(path.glob("*.tar"))
        if not shards:
            raise DataError(f"{path} is a folder without .tar shards")
        return load_tar_shards(shards, size, channels, workers, name=path.name, **options)
    if path.suffix.lower() == ".npz":  # molecules written by `vlunlearn molecules`
        tree = options.get("hierarchy")  # a file the user names, or the training split's tree (for its test split)
        if isinstance(tree, (str, Path)) or options.get("level_captions"):
            raise DataError(f"{path} holds molecules with their functional-group hierarchy; "
                            "--hierarchy and --level-captions are for image data")
        molecules = read_molecules(path)
        if tree is not None and molecules.hierarchy != tree:
            raise DataError(f"{path} was written with another functional-group hierarchy than the training molecules")
        return molecules
    if path.suffix.lower() == ".tar":
        return load_tar_shards([path], size, channels, workers, **options)
    return load_image_text_folder(path.parent, path, size, channels=channels, stream=True, workers=workers, **options)


def restrict_classes(data: PairDataset, classes: Sequence[str]) -> PairDataset:
    """``data`` with the class list ``classes``: zero-shot evaluation ranks only these names.

    An item's label is the index of the one listed name among its concepts (for an item of one
    class: the index of its class), -1 when it shows none of them or several. With a concept
    hierarchy the names must be its classes (the most specific concepts).

    Raises:
        DataError: an empty or repeated name, a name the data does not show, or (with a
            hierarchy) a name that is not one of its classes.
    """
    classes = tuple(classes)
    if not classes or any(not isinstance(name, str) or not name.strip() for name in classes):
        raise DataError(f"a class list needs one or more non-empty names, not {list(classes)}")
    repeated = sorted({name for name in classes if classes.count(name) > 1})
    if repeated:
        raise DataError(f"the class list repeats {repeated}")
    if data.hierarchy is not None:
        unknown = [name for name in classes if name not in data.hierarchy.classes]
        if unknown:
            raise DataError(f"{unknown} {'is not a class' if len(unknown) == 1 else 'are not classes'} of "
                            f"{data.name!r}, whose classes are the most specific concepts of its hierarchy: "
                            f"{', '.join(data.hierarchy.classes)}")
    shown = set(data.class_names).union(*data.concepts)
    unknown = [name for name in classes if name not in shown]
    if unknown:
        raise DataError(f"{data.name!r} has no item of {unknown}; its concepts: {', '.join(sorted(shown))}")
    return _relabel(data, classes)


def _relabel(data: PairDataset, classes: tuple[str, ...]) -> PairDataset:
    """``data`` labelled on ``classes`` (see :func:`restrict_classes`), names not checked."""
    if data.class_names == classes:
        return data
    index = {name: k for k, name in enumerate(classes)}
    listed = [[index[name] for name in concepts if name in index] for concepts in data.concepts]
    labels = torch.tensor([shown[0] if len(shown) == 1 else -1 for shown in listed], dtype=torch.int64)
    return replace(data, class_names=classes, labels=labels)
