"""``molecules``: built-in molecule-caption pairs for graph-language models, and the molecule file format.

Source: the 5,000-line NCI sample ``Data/NCI/first_5K.smi`` that ships inside the RDKit wheel
(4,999 molecules), with functional groups from RDKit's ``Data/Functional_Group_Hierarchy.txt``.
RDKit and its data files are BSD-licensed (BSD 3-Clause, Greg Landrum and others; the group file
is (c) 2010 Novartis Institutes for BioMedical Research, BSD); the asset derived from them is
shipped under the same terms. ``scripts/build_molecules.py`` builds the asset
``assets/molecules.npz`` from the wheel's files; reading it needs only numpy (no RDKit).

Each molecule keeps its largest fragment (137 salts and mixtures); the 8 molecules RDKit cannot
parse and 121 repeats of an earlier molecule (same non-stereo canonical SMILES, i.e. the same
graph) are left out: 4,870 molecules, 3,938 train and 932 test. The split is fixed by a hash of
the NCI id (about 80 / 20) and never moves with a run's seed. Graphs are heavy atoms (2 to 122,
median 15) with categorical features (see :mod:`vlunlearn.data.chem`); metal complexes that
differ only in the metal share a graph (metals are the element "other"), not a caption.

Concepts follow RDKit's functional-group hierarchy: root ``molecule`` -> 6 families (its
top-level groups) -> 13 classes (second-level groups), with training molecules showing each:

- carboxylic acid: aromatic carboxylic acid (136), aliphatic carboxylic acid (273)
- amine: primary amine (298), secondary amine (241), tertiary amine (246)
- alcohol: aromatic alcohol (417), aliphatic alcohol (482)
- aldehyde: aromatic aldehyde (27), aliphatic aldehyde (19)
- halogen: aromatic halogen (426), aliphatic halogen (212)
- nitro group: aromatic nitro group (287), aliphatic nitro group (42)

Classes with fewer than 15 training molecules (acid and sulfonyl chlorides, isocyanates, boronic
acids, azides) and the families left without a class are dropped; the hierarchy's ``notes`` list
them (:mod:`vlunlearn.data.chem` says which RDKit groups are left out and why). Every molecule
has three captions, generic (size) -> family (the families it shows) -> specific::

    "a small molecule."
    "a molecule with an amine and a nitro group."
    "C6H6N2O2, one aromatic ring: a molecule with a primary aromatic amine and an aromatic nitro
    group; also a benzene ring."

The specific caption names the formula, rings, methyl groups, the groups found (with RDKit's
third-level refinements and counts) and other common groups (ketone, ether, benzene ring, ...);
84 % of the 4,870 are unique to their molecule (91 % distinct), all fit 60 tokens. 39 % of the
molecules show no family ("a molecule with no listed functional group."). ``concepts`` holds
every family and class a molecule shows plus the root; its label is its class when it shows
exactly one class (41 %), else -1. Ids are ``molecules/<split>/<index>``.

File format (``read_molecules`` / ``write_molecules``, also for users' molecules converted with
:func:`vlunlearn.data.chem.molecules_from_table`): an ``.npz`` zip holding, per split, the five
:class:`~vlunlearn.data.graphs.GraphSet` arrays as ``<split>/<array>``, and ``meta``: UTF-8 JSON
(as uint8) with the hierarchy and, per split, name, vocabularies, captions, concepts, labels, ids
and class names. Zip entries carry fixed timestamps, so the same data gives the same bytes.
"""

from __future__ import annotations

import functools
import json
import re
import zipfile
from importlib import resources
from pathlib import Path
from typing import IO, Mapping

import numpy as np
import torch

from vlunlearn.data.datasets import PairDataset
from vlunlearn.data.graphs import GraphSet
from vlunlearn.data.hierarchy import ConceptHierarchy
from vlunlearn.errors import DataError
from vlunlearn.io import atomic_write_npz

__all__ = ["MOLECULES_FILE", "SPLITS", "load_molecules", "molecules_hierarchy", "read_molecules", "write_molecules"]

MOLECULES_FILE = "molecules.npz"
SPLITS = ("train", "test")
FORMAT = "vlunlearn-molecules"
VERSION = 1
GRAPH_ARRAYS = ("node_features", "edge_index", "edge_features", "node_offsets", "edge_offsets")
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_-]+")


# ---------------------------------------------------------------- the built-in dataset


@functools.lru_cache(maxsize=None)
def _asset() -> tuple[dict, dict[str, np.ndarray]]:
    asset = resources.files("vlunlearn.data").joinpath("assets", MOLECULES_FILE)
    try:
        with asset.open("rb") as handle:
            meta, arrays = _read_archive(handle, str(asset))
    except OSError as error:
        raise DataError(f"cannot read the built-in molecules {asset}: {error}; rebuild it with scripts/build_molecules.py") from error
    for array in arrays.values():
        array.setflags(write=False)
    return meta, arrays


@functools.lru_cache(maxsize=None)
def molecules_hierarchy() -> ConceptHierarchy:
    """The concept hierarchy of the built-in ``molecules`` (molecule -> functional group family -> class)."""
    meta, _ = _asset()
    return _hierarchy_from_json(meta["hierarchy"], MOLECULES_FILE)


def load_molecules(split: str) -> PairDataset:
    """A split of the built-in ``molecules`` dataset.

    Args:
        split: ``"train"`` or ``"test"``.

    Returns:
        A ``PairDataset`` whose inputs are a :class:`GraphSet`, with three captions per item
        (generic, family, specific) and the hierarchy :func:`molecules_hierarchy`. Its content
        (and so its hash) is always the same.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} of 'molecules'; valid splits: {', '.join(SPLITS)}")
    meta, arrays = _asset()
    return _dataset(meta, arrays, split, MOLECULES_FILE, molecules_hierarchy())


# ---------------------------------------------------------------- reading and writing files


def read_molecules(path: str | Path, split: str | None = None) -> PairDataset:
    """The dataset stored in a molecule file written by :func:`write_molecules` (no RDKit needed).

    Args:
        path: the ``.npz`` file.
        split: which stored split to read; may be left out when the file holds one.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"molecule file not found: {path}")
    with path.open("rb") as handle:
        meta, arrays = _read_archive(handle, str(path))
    stored = list(meta["splits"])
    if split is None and len(stored) != 1:
        raise DataError(f"{path} holds the splits {', '.join(stored)}; name the one to read")
    split = stored[0] if split is None else split
    if split not in meta["splits"]:
        raise DataError(f"{path} has no split {split!r}; it holds {', '.join(stored)}")
    hierarchy = None if meta["hierarchy"] is None else _hierarchy_from_json(meta["hierarchy"], str(path))
    return _dataset(meta, arrays, split, str(path), hierarchy)


def write_molecules(datasets: PairDataset | Mapping[str, PairDataset], path: str | Path, overwrite: bool = False) -> Path:
    """Write graph datasets to an ``.npz`` molecule file, atomically (a temporary file, then a rename).

    Args:
        datasets: one dataset (stored as the split ``"data"``) or several by split name; they
            must hold graphs and share one hierarchy (or none).
        path: the file to write.
        overwrite: replace an existing file (by default an existing file is an error).

    Returns:
        ``path``.
    """
    path = Path(path)
    parts = {"data": datasets} if isinstance(datasets, PairDataset) else dict(datasets)
    if not parts:
        raise DataError(f"{path}: nothing to write")
    if path.exists() and not overwrite:
        raise DataError(f"{path} already exists; remove it or choose another file name")
    hierarchy = next(iter(parts.values())).hierarchy
    if any(dataset.hierarchy != hierarchy for dataset in parts.values()):
        raise DataError(f"{path}: the datasets to write have different hierarchies")
    meta = {"format": FORMAT, "version": VERSION, "hierarchy": _hierarchy_json(hierarchy), "splits": {}}
    arrays: dict[str, np.ndarray] = {}
    for split, dataset in parts.items():
        if not _SPLIT_NAME.fullmatch(split):
            raise DataError(f"{path}: a split name must be letters, digits, '-' or '_', not {split!r}")
        if not isinstance(dataset.inputs, GraphSet):
            raise DataError(f"{path}: dataset {dataset.name!r} holds images, not graphs")
        graphs = dataset.inputs
        meta["splits"][split] = {
            "name": dataset.name, "node_vocab": list(graphs.node_vocab), "edge_vocab": list(graphs.edge_vocab),
            "captions": [list(c) for c in dataset.captions], "concepts": [sorted(c) for c in dataset.concepts],
            "labels": dataset.labels.tolist(), "ids": dataset.ids, "class_names": list(dataset.class_names),
        }
        for key, tensor in graphs.to_arrays().items():
            arrays[f"{split}/{key}"] = _compact(tensor.cpu().numpy())
    arrays["meta"] = np.frombuffer(json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode("utf-8"), np.uint8)
    atomic_write_npz(path, arrays)
    return path


def _compact(array: np.ndarray) -> np.ndarray:
    """Non-negative integers in the smallest unsigned dtype that holds them (smaller files)."""
    if array.size == 0 or array.min() < 0:
        return array.astype(np.int64)
    return array.astype(np.min_scalar_type(int(array.max())))


def _read_archive(handle: IO[bytes], where: str) -> tuple[dict, dict[str, np.ndarray]]:
    try:
        with np.load(handle, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise DataError(f"{where}: not a readable molecule file ({error})") from error
    if "meta" not in arrays:
        raise DataError(f"{where}: not a molecule file (no 'meta' entry)")
    try:
        meta = json.loads(arrays.pop("meta").tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{where}: its 'meta' entry is not UTF-8 JSON ({error})") from error
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{where}: not a {FORMAT} file")
    if meta.get("version") != VERSION:
        raise DataError(f"{where}: format version {meta.get('version')!r}; this vlunlearn reads version {VERSION}")
    if not isinstance(meta.get("splits"), dict) or not meta["splits"]:
        raise DataError(f"{where}: its 'meta' entry lists no splits")
    return meta, arrays


def _dataset(meta: dict, arrays: Mapping[str, np.ndarray], split: str, where: str,
             hierarchy: ConceptHierarchy | None) -> PairDataset:
    try:
        info = meta["splits"][split]
        graph_arrays = {key: torch.from_numpy(arrays[f"{split}/{key}"].astype(np.int64)) for key in GRAPH_ARRAYS}
        graphs = GraphSet.from_arrays(graph_arrays, info["node_vocab"], info["edge_vocab"])
        return PairDataset(name=info["name"], inputs=graphs, captions=info["captions"], concepts=info["concepts"],
                           labels=info["labels"], ids=info["ids"], class_names=info["class_names"], hierarchy=hierarchy)
    except KeyError as error:
        raise DataError(f"{where}: split {split!r} lacks {error.args[0]!r}") from error
    except DataError as error:
        raise DataError(f"{where}, split {split!r}: {error}") from error


def _hierarchy_json(hierarchy: ConceptHierarchy | None) -> dict | None:
    if hierarchy is None:
        return None
    return {"name": hierarchy.name, "classes": list(hierarchy.classes), "parents": dict(hierarchy.parents),
            "root": hierarchy.root, "caption_templates": {k: list(v) for k, v in hierarchy.caption_templates.items()},
            "prompt_templates": list(hierarchy.prompt_templates), "levels": list(hierarchy.levels),
            "synthetic_root": hierarchy.synthetic_root, "notes": list(hierarchy.notes)}


def _hierarchy_from_json(data: dict, where: str) -> ConceptHierarchy:
    try:
        return ConceptHierarchy(**data)
    except TypeError as error:
        raise DataError(f"{where}: its stored hierarchy is malformed ({error})") from error
