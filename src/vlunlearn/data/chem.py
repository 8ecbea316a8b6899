"""Molecules as graphs with functional-group concepts, and users' SMILES files.

Captions: :mod:`vlunlearn.data.molecule_captions`.

RDKit is optional: it is imported inside the functions that need it, and the constants and
:func:`read_smiles_file` work without it. Reading converted files needs only numpy
(:func:`~vlunlearn.data.molecules.read_molecules`).

Graphs hold the heavy atoms (atomic number > 1: hydrogens are a feature of their atom, dummy
atoms ``*`` are left out) and the bonds between them, with categorical features:

- atoms (``ATOM_VOCAB``): element (C, N, O, S, F, Cl, Br, I, P, B, Si, Se, other: 13), heavy-atom
  degree (0..5, 6 or more: 7), formal charge (-2..+2, clipped: 5), attached hydrogens (0..4,
  clipped: 5), aromatic (2), hybridization (sp, sp2, sp3, sp3d, sp3d2, other: 6), in a ring (2);
- bonds (``BOND_VOCAB``): type (single, double, triple, aromatic, other such as dative: 5),
  conjugated (2), in a ring (2).

Concepts come from RDKit's ``Functional_Group_Hierarchy.txt``, read with RDKit's own
``rdkit.Chem.FunctionalGroups.BuildFuncGroupHierarchy``. Its top-level groups are families
(``Nitro`` -> ``nitro group``), its second-level groups classes, named by their label and their
family's (``Amine.Primary`` -> ``primary amine``); third-level groups are folded into their class
and only refine the specific caption (``primary aromatic amine``). An instance of a group is the
first atom of a SMARTS match, as in RDKit's functional-group fingerprint; a class (or a
refinement) counts only instances that its family (or class) matched. Left out:

- ``CROSS_CUTTING`` second-level groups, which sort a family's instances a second time along
  another axis (amines by aromaticity or ring after primary / secondary / tertiary; halogens by
  element after aromatic / aliphatic; alpha amino acids among aliphatic acids): with them a
  molecule with one amine would show two amine classes (no label), and forgetting one class
  would take most of another;
- top-level groups without sub-groups (``TerminalAlkyne``): their only class would name exactly
  the family's molecules, two concepts for one set.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch

from vlunlearn.data.datasets import PairDataset
from vlunlearn.data.graphs import GraphSet
from vlunlearn.data.hierarchy import ConceptHierarchy
from vlunlearn.data.molecule_captions import CAPTION_TEMPLATES, PROMPT_TEMPLATES, molecule_captions
from vlunlearn.data.molecules import molecules_hierarchy, read_molecules, write_molecules
from vlunlearn.data.tokenizer import Tokenizer
from vlunlearn.data.tables import header_rows
from vlunlearn.errors import DataError

__all__ = [
    "ATOM_FEATURES", "ATOM_VOCAB", "BOND_FEATURES", "BOND_VOCAB", "Found", "candidate_hierarchy", "concepts_of",
    "find_groups", "graph_of", "graph_set", "molecule_graph", "molecules_from_table", "parse_smiles",
    "prune_hierarchy", "read_molecules", "read_smiles_file", "write_molecules",
]

_ELEMENTS = ("C", "N", "O", "S", "F", "Cl", "Br", "I", "P", "B", "Si", "Se")
_HYBRIDIZATIONS = ("SP", "SP2", "SP3", "SP3D", "SP3D2")
_BOND_TYPES = ("SINGLE", "DOUBLE", "TRIPLE", "AROMATIC")
ATOM_FEATURES = ("element", "degree", "formal charge", "hydrogens", "aromatic", "hybridization", "in ring")
ATOM_VOCAB: tuple[int, ...] = (len(_ELEMENTS) + 1, 7, 5, 5, 2, len(_HYBRIDIZATIONS) + 1, 2)
BOND_FEATURES = ("type", "conjugated", "in ring")
BOND_VOCAB: tuple[int, ...] = (len(_BOND_TYPES) + 1, 2, 2)

ROOT = "molecule"
MIN_CLASS_COUNT = 15  # a class with fewer training molecules is too rare to forget or to classify
CROSS_CUTTING = ("Amine.Aromatic", "Amine.Aliphatic", "Amine.Cyclic", "Halogen.NotFluorine", "Halogen.Bromine",
                 "CarboxylicAcid.AlphaAmino")
_FAMILY_NOUNS = {"Nitro": "nitro group"}  # RDKit labels that are not nouns


# ---------------------------------------------------------------- graphs


def parse_smiles(smiles: str):
    """The RDKit molecule of a SMILES string (RDKit's own log messages silenced).

    Raises:
        DataError: for a SMILES RDKit rejects (syntax or valence) or one without heavy atoms.
    """
    from rdkit import Chem, rdBase

    if not isinstance(smiles, str):
        raise DataError(f"a SMILES must be a string, not {type(smiles).__name__}")
    with rdBase.BlockLogs():
        mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise DataError(f"cannot parse SMILES {smiles!r} (RDKit rejects its syntax or valences)")
    if mol.GetNumHeavyAtoms() == 0:
        raise DataError(f"the molecule {smiles!r} has no atoms (hydrogens and '*' do not count)")
    return mol


def molecule_graph(smiles: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int64 ``(n_atoms, 7)`` node features, ``(n_bonds, 2)`` edges and ``(n_bonds, 3)`` edge features of a SMILES."""
    return graph_of(parse_smiles(smiles))


def graph_of(mol) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The graph of an RDKit molecule: heavy atoms and the bonds between them (see :func:`molecule_graph`)."""
    heavy = [atom for atom in mol.GetAtoms() if atom.GetAtomicNum() > 1]
    local = {atom.GetIdx(): k for k, atom in enumerate(heavy)}
    bonds = [b for b in mol.GetBonds() if b.GetBeginAtomIdx() in local and b.GetEndAtomIdx() in local]
    nodes = np.array([_atom_features(atom) for atom in heavy], dtype=np.int64).reshape(len(heavy), len(ATOM_VOCAB))
    edges = np.array([(local[b.GetBeginAtomIdx()], local[b.GetEndAtomIdx()]) for b in bonds], dtype=np.int64)
    features = np.array([_bond_features(b) for b in bonds], dtype=np.int64)
    return nodes, edges.reshape(len(bonds), 2), features.reshape(len(bonds), len(BOND_VOCAB))


def _position(names: tuple[str, ...], name: str) -> int:
    return names.index(name) if name in names else len(names)


def _atom_features(atom) -> tuple[int, ...]:
    degree = sum(1 for neighbour in atom.GetNeighbors() if neighbour.GetAtomicNum() > 1)
    return (_position(_ELEMENTS, atom.GetSymbol()), min(degree, 6), min(max(atom.GetFormalCharge(), -2), 2) + 2,
            min(atom.GetTotalNumHs(includeNeighbors=True), 4), int(atom.GetIsAromatic()),
            _position(_HYBRIDIZATIONS, atom.GetHybridization().name), int(atom.IsInRing()))


def _bond_features(bond) -> tuple[int, ...]:
    return _position(_BOND_TYPES, bond.GetBondType().name), int(bond.GetIsConjugated()), int(bond.IsInRing())


def graph_set(graphs: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> GraphSet:
    """One :class:`GraphSet` of graphs made by :func:`graph_of`."""
    node_counts = [nodes.shape[0] for nodes, _, _ in graphs]
    edge_counts = [edges.shape[0] for _, edges, _ in graphs]
    return GraphSet(
        torch.from_numpy(np.concatenate([g[0] for g in graphs])), torch.from_numpy(np.concatenate([g[1] for g in graphs])),
        torch.from_numpy(np.concatenate([g[2] for g in graphs])), torch.from_numpy(np.cumsum([0] + node_counts)),
        torch.from_numpy(np.cumsum([0] + edge_counts)), ATOM_VOCAB, BOND_VOCAB)


# ---------------------------------------------------------------- functional groups


@dataclass(frozen=True)
class _Group:
    concept: str
    pattern: object  # an RDKit query molecule (SMARTS)
    subgroups: tuple["_Group", ...]  # a family's classes, or a class's refinements


@dataclass(frozen=True)
class Found:
    """A group in a molecule: its concept, its number of instances and its sub-groups found
    (a family's classes, or a class's refinements, which name no concept)."""

    concept: str
    count: int
    parts: tuple["Found", ...] = ()


def _name(label: str, family_label: str, family: str) -> str:
    """A sub-group's readable name: its label's words that its family's label lacks, then the family."""
    family_words = family_label.lower().split()
    return " ".join([w for w in label.lower().split() if w not in family_words] + [family])


@functools.lru_cache(maxsize=1)
def _families() -> tuple[_Group, ...]:
    """RDKit's functional groups as families of classes (see the module docstring)."""
    from rdkit.Chem import FunctionalGroups

    families, seen = [], set()
    for top in FunctionalGroups.BuildFuncGroupHierarchy():
        if not top.children:
            continue
        family = _FAMILY_NOUNS.get(top.name, top.name.lower())
        classes = tuple(
            _Group(_name(child.name, top.name, family), child.pattern,
                   tuple(_Group(_name(leaf.name, top.name, family), leaf.pattern, ()) for leaf in child.children))
            for child in top.children if child.label not in CROSS_CUTTING)
        for name in [family, *(c.concept for c in classes)]:
            if name in seen or name == ROOT:
                raise DataError(f"RDKit's functional groups name {name!r} twice; concept names must be unique")
            seen.add(name)
        families.append(_Group(family, top.pattern, classes))
    return tuple(families)


def _group(name: str) -> _Group:
    for family in _families():
        for group in (family, *family.subgroups):
            if group.concept == name:
                return group
    raise DataError(f"{name!r} is not a functional group of RDKit's Functional_Group_Hierarchy.txt")


def candidate_hierarchy() -> ConceptHierarchy:
    """Every family and class of RDKit's groups (before rare classes are dropped)."""
    parents = {family.concept: ROOT for family in _families()}
    parents.update({c.concept: family.concept for family in _families() for c in family.subgroups})
    return _hierarchy(tuple(c.concept for family in _families() for c in family.subgroups), parents, ())


def _hierarchy(classes: tuple[str, ...], parents: dict[str, str], notes: tuple[str, ...]) -> ConceptHierarchy:
    return ConceptHierarchy(name="molecules", classes=classes, parents=parents, root=ROOT,
                            caption_templates=CAPTION_TEMPLATES, prompt_templates=PROMPT_TEMPLATES, notes=notes)


def prune_hierarchy(hierarchy: ConceptHierarchy, counts: Mapping[str, int],
                    min_count: int = MIN_CLASS_COUNT) -> tuple[ConceptHierarchy, tuple[str, ...]]:
    """Drop classes with fewer than ``min_count`` molecules (``counts``: class -> training molecules)
    and the families left without a class. Returns the hierarchy and the dropped concepts."""
    kept = tuple(c for c in hierarchy.classes if counts.get(c, 0) >= min_count)
    if not kept:
        raise DataError(f"no functional-group class has {min_count} training molecules")
    families = {hierarchy.parents[c] for c in kept}
    parents = {c: p for c, p in hierarchy.parents.items() if c in kept or c in families}
    dropped = tuple(c for c in hierarchy.concepts if c != hierarchy.root and c not in parents)
    notes = (f"RDKit functional groups; classes with fewer than {min_count} training molecules and families "
             f"left without a class dropped: {', '.join(dropped) or 'none'}",)
    return _hierarchy(kept, parents, notes), dropped


def _sites(mol, pattern, within: frozenset[int] | None) -> frozenset[int]:
    """The first atoms of the matches of ``pattern`` (those in ``within`` when given)."""
    first = frozenset(match[0] for match in mol.GetSubstructMatches(pattern))
    return first if within is None else first & within


def find_groups(mol, hierarchy: ConceptHierarchy) -> tuple[Found, ...]:
    """The families of ``hierarchy`` found in an RDKit molecule, with their classes and refinements."""
    found = []
    for family in hierarchy.concepts_at("family"):
        sites = _sites(mol, _group(family).pattern, None)
        if not sites:
            continue
        classes = []
        for name in hierarchy.classes_under(family):
            group = _group(name)
            class_sites = _sites(mol, group.pattern, sites)
            if class_sites:
                refined = [(leaf.concept, _sites(mol, leaf.pattern, class_sites)) for leaf in group.subgroups]
                classes.append(Found(name, len(class_sites), tuple(Found(n, len(s)) for n, s in refined if s)))
        found.append(Found(family, len(sites), tuple(classes)))
    return tuple(found)


def concepts_of(found: tuple[Found, ...], hierarchy: ConceptHierarchy) -> frozenset[str]:
    """The root and every family and class found (a set closed under ancestors)."""
    return frozenset([hierarchy.root, *(f.concept for f in found), *(c.concept for f in found for c in f.parts)])


# ---------------------------------------------------------------- users' tables


def molecules_from_table(rows: Iterable[Mapping[str, object]], name: str,
                         hierarchy: ConceptHierarchy | None = None) -> PairDataset:
    """A graph dataset from rows with ``smiles``, optional ``caption`` and optional ``id``.

    Each molecule gets the generic and family captions of
    :func:`~vlunlearn.data.molecule_captions.molecule_captions`, then its own caption or, without
    one, the generated specific caption. Its concepts are the groups of ``hierarchy``
    (default: the built-in ``molecules`` hierarchy) it shows, ancestors included; its label is
    its class if it shows exactly one, else -1. Ids default to ``"<name>/<row index>"``.
    Molecules are taken as given (no fragment is dropped).
    """
    hierarchy = molecules_hierarchy() if hierarchy is None else hierarchy
    tokenizer, index = Tokenizer(), {c: k for k, c in enumerate(hierarchy.classes)}
    graphs, captions, concepts, labels, ids = [], [], [], [], []
    for number, row in enumerate(rows):
        where = f"{name}, row {number + 1}"
        smiles = row.get("smiles")
        if not isinstance(smiles, str) or not smiles.strip():
            raise DataError(f"{where}: no SMILES")
        try:
            mol = parse_smiles(smiles.strip())
        except DataError as error:
            raise DataError(f"{where}: {error}") from error
        found = find_groups(mol, hierarchy)
        generic, family, specific = molecule_captions(mol, found, hierarchy, tokenizer)
        caption = row.get("caption")
        captions.append((generic, family, caption.strip() if isinstance(caption, str) and caption.strip() else specific))
        shown = concepts_of(found, hierarchy)
        classes = [c for c in shown if c in index]
        concepts.append(shown)
        labels.append(index[classes[0]] if len(classes) == 1 else -1)
        ids.append(str(row["id"]).strip() if row.get("id") not in (None, "") else f"{name}/{number:05d}")
        graphs.append(graph_of(mol))
    if not graphs:
        raise DataError(f"{name}: no molecules")
    return PairDataset(name=name, inputs=graph_set(graphs), captions=captions, concepts=concepts, labels=labels,
                       ids=ids, class_names=hierarchy.classes, hierarchy=hierarchy)


def read_smiles_file(path: str | Path) -> list[dict[str, str]]:
    """Rows (``smiles``, and ``caption`` and ``id`` where given) of a SMILES file.

    Formats: CSV (``.csv``) or TSV (``.tsv``) with a header naming a ``smiles`` column and
    optionally ``caption`` and ``id`` (any case; other columns are ignored); or ``.smi`` with
    ``SMILES [id]`` per line (blank lines, ``#`` comments and a ``smiles`` header line skipped).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"SMILES file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".smi"):
        raise DataError(f"{path}: unknown SMILES file format {suffix!r}; use .csv or .tsv (with a smiles column) or .smi")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not a UTF-8 text file ({error})") from error
    rows = _smi_rows(text) if suffix == ".smi" else _table_rows(path, text, "\t" if suffix == ".tsv" else ",")
    if not rows:
        raise DataError(f"{path}: no molecules")
    return rows


def _smi_rows(text: str) -> list[dict[str, str]]:
    rows = []
    for line in text.splitlines():
        parts = line.split(maxsplit=1)
        if not parts or parts[0].startswith("#") or (not rows and parts[0].lower() == "smiles"):
            continue
        rows.append({"smiles": parts[0], **({"id": parts[1].strip()} if len(parts) > 1 else {})})
    return rows


def _table_rows(path: Path, text: str, delimiter: str) -> list[dict[str, str]]:
    rows = []
    for where, cells in header_rows(path, text, delimiter, ("smiles",), "a smiles column"):
        row = {key: cells[key].strip() for key in ("smiles", "caption", "id") if key in cells}
        if not row["smiles"]:
            raise DataError(f"{where}: the smiles field is empty")
        rows.append({key: value for key, value in row.items() if value})
    return rows
