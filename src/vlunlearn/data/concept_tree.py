"""Concept hierarchies in users' annotations, and the class of each item.

A hierarchy comes from the first of these that the data has:

1. a hierarchy file (``hierarchy=FILE``) of child -> parent edges: CSV or TSV with the header
   ``child,parent`` (one edge a line), JSON ``{"seven": "odd", "odd": "number"}`` or the same
   mapping in YAML (needs pyyaml). The file is the tree: every concept of the data must be in
   it, and concept paths in the data must agree with it. A cycle, an empty name or a child with
   two parents is refused, and so is an unknown parent: when the data names top concepts of
   the file (rows like ``["seven", "odd", "number"]``), a top concept (a parent without a
   parent) that it has items under but never names, usually a typo (``even,nubmer``). Top
   concepts are otherwise the file's to name (rows may list only classes); a top concept
   without items is no error, so test data with fewer classes gets the same tree.
2. concept paths in the annotations, generic -> specific, ``/``-separated (``number/odd/seven``):
   a path names each of its concepts and puts each under the one before it; plain names add no edge.
3. neither: the tree the concept lists imply. ``A`` is below ``B`` when every item with ``A`` also
   has ``B`` and ``B`` is on more items. Concepts on exactly the same items are ordered as the
   rows list them, when every row lists them in one order and the rows list the other related
   concepts consistently specific-first (``["seven", "odd", "number"]``) or generic-first;
   otherwise neither is below the other. ``A``'s parent is the most specific concept above it;
   the concepts above ``A`` must form a chain (else DataError). Data whose lists imply no edge
   (one concept per item, or unrelated concepts) has no hierarchy: classes are its sorted
   concepts and an item's label is its concept when it has exactly one.

Test data goes on the training data's tree: load it with ``hierarchy=train.hierarchy`` (a
ConceptHierarchy), or relabel it with :func:`with_hierarchy`; a file gives equal trees anyway.

In the tree, several top concepts get an added root, :data:`SYNTHETIC_ROOT` (``"[entity]"`` if
the data has an ``"entity"``): no item shows it, no caption or prompt names it. The classes are
the leaves, and must all be at one depth (ConceptHierarchy's levels are depths): a tree with
leaves at different depths is refused with a DataError. Levels are named ``generic``,
``level2``..., ``family``, ``class``; captions are "a photo of {}." above the classes and
"a photo of a {}." for them, prompts the generic zero-shot ones. An item's concepts are closed
upward (ancestors added); its label is its most specific concept when that is one class, else
-1 (a most specific concept above the classes, several of them, or none), counted by
:func:`describe`, which also says where the tree comes from and what was inferred.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from vlunlearn.data.datasets import PairDataset
from vlunlearn.data.hierarchy import ConceptHierarchy, Edges, check_acyclic, read_hierarchy_edges
from vlunlearn.errors import DataError

SYNTHETIC_ROOT = "entity"
PATH_SEPARATOR = "/"
CAPTION_TEMPLATES = ("a photo of {}.", "a photo of a {}.")  # a users' tree: levels above the classes; classes
# evaluation.zero_shot.DEFAULT_PROMPTS, repeated because vlunlearn.evaluation imports vlunlearn.data
PROMPT_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.")


@dataclass
class ConceptLabels:
    """Users' items on a concept tree: ``concepts`` closed upward, int64 ``labels`` ``(N,)`` (-1: no class)."""

    hierarchy: ConceptHierarchy | None
    class_names: tuple[str, ...]
    concepts: list[frozenset[str]]
    labels: torch.Tensor

    def captions(self, own: Sequence[str], level_captions: bool) -> list[tuple[str, ...]]:
        """Per item ``(own[i],)``; with ``level_captions``, an item with a class gets its class's
        hierarchy captions generic -> specific first, and its own caption stays last (canonical)."""
        if not level_captions or self.hierarchy is None:
            return [(text,) for text in own]
        rng = random.Random(0)  # one template per level: nothing is drawn
        return [(*self.hierarchy.captions_for(self.class_names[k], rng), text) if k >= 0 else (text,)
                for text, k in zip(own, self.labels.tolist())]


def _listing(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in list(names)[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


# ---------------------------------------------------------------- building the tree


def _split_rows(concept_lists: Sequence[Sequence[str]], where: Sequence[str]) -> tuple[list[list[str]], Edges]:
    """Per item its concepts in order (a path's parts included), and the child -> parent edges of the paths."""
    items, edges = [], {}
    for concepts, place in zip(concept_lists, where):
        if not isinstance(concepts, (list, tuple)) or not all(isinstance(c, str) for c in concepts):
            raise DataError(f"{place}: 'concepts' must be a list of strings")
        names: dict[str, None] = {}
        for text in concepts:
            parts = [part.strip() for part in text.split(PATH_SEPARATOR)]
            if text.strip() and not all(parts):
                raise DataError(f"{place}: the concept path {text!r} has an empty concept")
            if len(set(parts)) < len(parts):
                raise DataError(f"{place}: the concept path {text!r} names a concept twice")
            for parent, child in zip(parts, parts[1:]):
                if child in edges and edges[child][0] != parent:
                    raise DataError(f"{place}: the path {text!r} puts {child!r} under {parent!r}, "
                                    f"but {edges[child][1]} puts it under {edges[child][0]!r}")
                edges.setdefault(child, (parent, place))
            names.update(dict.fromkeys(part for part in parts if part))
        items.append(list(names))
    return items, edges


def hierarchy_from_parents(
    parents: dict[str, str], name: str, concepts: Sequence[str] = (), notes: Sequence[str] = ()
) -> ConceptHierarchy:
    """A users' ConceptHierarchy from child -> parent edges (and ``concepts`` without any edge).

    Adds :data:`SYNTHETIC_ROOT` above several top concepts; classes are the leaves, in tree order
    (children sorted by name). Raises DataError when the leaves are at different depths.
    """
    nodes = set(parents) | set(parents.values()) | set(concepts)
    parents = dict(parents)
    tops = sorted(node for node in nodes if node not in parents)
    root, synthetic = tops[0], len(tops) > 1
    if synthetic:
        root = SYNTHETIC_ROOT if SYNTHETIC_ROOT not in nodes else f"[{SYNTHETIC_ROOT}]"
        parents.update(dict.fromkeys(tops, root))
    children: dict[str, list[str]] = {}
    for child in sorted(parents):
        children.setdefault(parents[child], []).append(child)
    leaves, stack = [], [(root,)]  # root -> leaf chains, depth first
    while stack:
        chain = stack.pop()
        if chain[-1] not in children:
            leaves.append(chain)
        stack.extend(chain + (child,) for child in reversed(children.get(chain[-1], [])))
    shallow, deep = min(leaves, key=len), max(leaves, key=len)
    if len(shallow) != len(deep):
        raise DataError(
            f"the concept tree {notes[0] if notes else name}: the classes (the leaves) must all be at one depth, but "
            f"{shallow[-1]!r} is at depth {len(shallow) - 1} ({' > '.join(shallow)}) and {deep[-1]!r} at depth "
            f"{len(deep) - 1} ({' > '.join(deep)}); give every class the same number of levels above it (--hierarchy FILE or paths)"
        )
    middle = tuple(f"level{i}" for i in range(2, len(deep) - 1)) + (("family",) if len(deep) > 2 else ())
    levels = ("generic", *middle, "class")
    templates = {level: (CAPTION_TEMPLATES[level == "class"],) for level in levels}
    return ConceptHierarchy(name=name, classes=tuple(chain[-1] for chain in leaves), parents=parents, root=root,
                            caption_templates=templates, prompt_templates=PROMPT_TEMPLATES, levels=levels,
                            synthetic_root=synthetic, notes=tuple(notes))


def implied_parents(concept_lists: Sequence[Sequence[str]], source: str = "the data") -> tuple[dict[str, str], list[str]]:
    """The child -> parent edges that per-item concept lists imply, and notes on ties (module docstring).

    Raises DataError naming the concepts when the implied order is not a forest.
    """
    rows = [list(dict.fromkeys(row)) for row in concept_lists]
    count = Counter(c for row in rows for c in row)
    common: dict[str, set[str]] = {}  # the concepts on every item that has the key
    for row in map(set, rows):
        for c in row:
            common[c] = common[c] & row if c in common else set(row)
    positions = [{c: i for i, c in enumerate(row)} for row in rows]
    votes = Counter(row[c] < row[b] for row in positions for c in row for b in common[c] if count[b] > count[c])
    specific_first = None if bool(votes[True]) == bool(votes[False]) else bool(votes[True])
    rank, notes = {}, []  # rank: specificity (0 = most) within a group of concepts on the same items
    for group in sorted({frozenset(b for b in common[c] if count[b] == count[c]) for c in count}, key=sorted):
        if len(group) < 2:
            continue
        orders = {tuple(sorted(group, key=row.get)) for row in positions if next(iter(group)) in row}
        if specific_first is None or len(orders) != 1:
            notes.append(f"{_listing(sorted(group))} are on the same items and the rows do not order them: none is below another")
            continue
        chain = next(iter(orders))[:: 1 if specific_first else -1]
        rank.update({c: i for i, c in enumerate(chain)})
        notes.append(f"{_listing(sorted(group))} are on the same items; ordered as the rows list them: {' below '.join(chain)}")
    above = {c: {b for b in common[c] if (count[b], rank.get(b, 0)) > (count[c], rank.get(c, 0))} for c in count}
    parents = {}
    for c in sorted(count):
        if above[c]:
            parent = min(sorted(above[c]), key=lambda b: (count[b], rank.get(b, 0)))
            stray = sorted(above[c] - above[parent] - {parent})
            if stray:
                raise DataError(
                    f"{source}: the concept lists imply no tree: every item with {c!r} also has {parent!r} and {stray[0]!r}, "
                    f"and neither of those is below the other ({count[parent]} and {count[stray[0]]} items); give the "
                    "hierarchy with --hierarchy FILE (child,parent) or write concept paths (generic/.../specific)"
                )
            parents[c] = parent
    return parents, notes


def _check_on_tree(items: list[list[str]], where: Sequence[str], path_edges: Edges, tree_edges: Edges,
                   known: set[str], label: str) -> None:
    """Every concept of the data is in the tree, and every concept path agrees with it."""
    for row, place in zip(items, where):
        missing = [c for c in row if c not in known]
        if missing:
            every = sorted({c for r in items for c in r} - known)
            raise DataError(f"{place}: concept(s) {_listing(missing)} not in {label} "
                            f"({len(every)} concept(s) of the data in all: {_listing(every)})")
    for child, (parent, place) in sorted(path_edges.items()):
        if child not in tree_edges:
            raise DataError(f"{place}: a concept path puts {child!r} under {parent!r}, but in {label} it is a top concept")
        if tree_edges[child][0] != parent:
            raise DataError(f"{place}: a concept path puts {child!r} under {parent!r}, "
                            f"but {tree_edges[child][1]} puts it under {tree_edges[child][0]!r}")


def _file_tree(items: list[list[str]], where: Sequence[str], path_edges: Edges, file: Path, source: str) -> ConceptHierarchy:
    """The tree of a hierarchy file, once the data's concepts and paths are checked against it."""
    edges = read_hierarchy_edges(file)
    _check_on_tree(items, where, path_edges, edges, set(edges) | {p for p, _ in edges.values()}, f"the hierarchy file {file}")
    written = {c for row in items for c in row}

    def top(concept: str) -> str:
        while concept in edges:
            concept = edges[concept][0]
        return concept

    tops = {top(c) for c in written}  # the top concepts the data has items under
    unknown = sorted(tops - written) if tops & written else []
    if unknown:
        place = next(w for p, w in edges.values() if p == unknown[0])
        raise DataError(f"{place}: unknown parent {unknown[0]!r}: it has no parent in the file, and {source} has items "
                        f"under it but never names it, while it names the top concept(s) {_listing(sorted(tops & written))}; "
                        "a typo? Fix the file, or name it in the data too")
    return hierarchy_from_parents({c: p for c, (p, _) in edges.items()}, file.stem, notes=(f"from the hierarchy file {file}",))


def concept_labels(
    concept_lists: Sequence[Sequence[str]],
    where: Sequence[str],
    name: str,
    hierarchy: str | Path | ConceptHierarchy | None = None,
    source: str = "the data",
) -> ConceptLabels:
    """Users' per-item concept lists (names or paths) on a concept tree: the builder the loaders use.

    Args:
        concept_lists: per item, its concepts as written (``"seven"`` or ``"number/odd/seven"``).
        where: per item, where it is written (``"ann.csv, line 3"``), for messages.
        name: the tree's name when it does not come from a file (whose stem names it).
        hierarchy: a hierarchy file, a ConceptHierarchy to put the items on (the training data's),
            or None (concept paths, else the implied tree).
        source: the annotation file(s), for notes and messages.

    Raises:
        DataError: see the module docstring; messages name the file and line or item.
    """
    if len(where) != len(concept_lists):
        raise ValueError(f"{len(concept_lists)} concept lists but {len(where)} places")
    items, path_edges = _split_rows(concept_lists, where)
    named = sorted({c for row in items for c in row})
    if isinstance(hierarchy, ConceptHierarchy):
        tree, label = hierarchy, f"the hierarchy {hierarchy.name!r}"
        edges = {c: (p, label) for c, p in tree.parents.items() if p not in _added_root(tree)}
        _check_on_tree(items, where, path_edges, edges, set(tree.concepts) - _added_root(tree), label)
    elif hierarchy is not None:
        tree = _file_tree(items, where, path_edges, Path(hierarchy), source)
    elif path_edges:
        check_acyclic(path_edges)
        parents = {c: p for c, (p, _) in path_edges.items()}
        tree = hierarchy_from_parents(parents, name, named, notes=(f"from the concept paths in {source}",))
    else:
        parents, notes = implied_parents(items, source)
        if not parents:
            index = {c: k for k, c in enumerate(named)}
            labels = torch.tensor([index[row[0]] if len(row) == 1 else -1 for row in items], dtype=torch.int64)
            return ConceptLabels(None, tuple(named), [frozenset(row) for row in items], labels)
        tree = hierarchy_from_parents(parents, name, named, notes=(f"implied by the concept lists of {source}", *notes))
    hidden = _added_root(tree)
    chains = {c: tree.ancestors(c) for c in set(tree.concepts) - hidden}
    concepts = [frozenset(a for c in row for a in chains[c]) - hidden for row in items]
    specific = [_most_specific(closed, chains) for closed in concepts]
    index = {c: k for k, c in enumerate(tree.classes)}
    labels = [index.get(next(iter(s)), -1) if len(s) == 1 else -1 for s in specific]
    return ConceptLabels(tree, tree.classes, concepts, torch.tensor(labels, dtype=torch.int64))


def _added_root(tree: ConceptHierarchy) -> set[str]:
    """``{tree.root}`` when it was added above several top concepts (no item shows it), else empty."""
    return {tree.root} if tree.synthetic_root else set()


def _most_specific(concepts: frozenset[str], chains: dict[str, tuple[str, ...]]) -> set[str]:
    """The concepts of an item that are no ancestor of another of them (``chains``: concept -> its ancestors)."""
    return set(concepts) - {a for c in concepts for a in chains.get(c, ())[1:]}


# ---------------------------------------------------------------- train and test, reports


def with_hierarchy(data: PairDataset, hierarchy: ConceptHierarchy) -> PairDataset:
    """``data`` (usually test data) relabelled on ``hierarchy`` (usually the training data's).

    ``class_names`` become ``hierarchy.classes``, concepts are closed upward in it and labels are
    the most specific class. Captions are kept (for level captions on the training tree, load the
    data with ``hierarchy=train.hierarchy``). Raises DataError naming concepts the tree lacks.
    """
    where = [f"{data.name}, item {i!r}" for i in data.ids]
    result = concept_labels([sorted(c) for c in data.concepts], where, data.name, hierarchy)
    return dataclasses.replace(data, concepts=result.concepts, labels=result.labels, class_names=result.class_names,
                               hierarchy=hierarchy)


def check_test_concepts(train: PairDataset, test: PairDataset) -> None:
    """Raise DataError when ``test`` has concepts (or classes) that ``train`` lacks: those of no
    training item, no training class and no node of the training hierarchy. Names up to 5."""
    known = set(train.class_names).union(*train.concepts)
    if train.hierarchy is not None:
        known |= set(train.hierarchy.concepts)
    missing = sorted(set(test.class_names).union(*test.concepts) - known)
    if missing:
        raise DataError(f"the test data {test.name!r} has {len(missing)} concept(s) that the training data {train.name!r} "
                        f"lacks: {_listing(missing)}; a model cannot be tested on concepts it was not trained on")


def describe(data: PairDataset) -> list[str]:
    """Readable lines on ``data``'s classes and hierarchy: where the tree comes from, its levels,
    what is under each concept above the classes, and the items left without a class."""
    tree = data.hierarchy
    if tree is None:
        lines = [f"{data.name}: no concept hierarchy; {len(data.class_names)} classes: {_listing(data.class_names, 10)}"]
    else:
        children: dict[str, list[str]] = {}
        for child, parent in sorted(tree.parents.items()):
            children.setdefault(parent, []).append(child)
        lines = [f"{data.name}: concept hierarchy {tree.name!r} {tree.notes[0] if tree.notes else ''}".rstrip(),
                 f"{len(tree.levels)} levels ({' > '.join(tree.levels)}), {len(tree.classes)} classes, "
                 f"{len(tree.concepts)} concepts"]
        lines += [f"note: {note}" for note in tree.notes[1:]]
        if tree.synthetic_root:
            lines.append(f"added root {tree.root!r} above the top concepts {_listing(children[tree.root], 10)}; "
                         "no caption names it")
        inner = [c for c in tree.concepts if c not in tree.classes and c not in _added_root(tree)]
        lines += [f"{c} > {_listing(children[c], 8)}" for c in inner[:12]]
        lines += [f"... and {len(inner) - 12} more concepts above the classes"] if len(inner) > 12 else []
    chains = {c: tree.ancestors(c) for c in tree.concepts} if tree is not None else {}
    several = sum(len(_most_specific(c, chains)) > 1 for c in data.concepts)
    unlabelled = int((data.labels < 0).sum())
    lines.append(f"{len(data)} items: {len(data) - unlabelled} with a class; {unlabelled - several} without one (no "
                 f"concept, or a most specific concept that is not a class) and {several} with several most specific "
                 "concepts, labelled -1")
    return lines
