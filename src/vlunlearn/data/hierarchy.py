"""Concept hierarchies: leaf classes, their ancestors, the captions and prompts made from them,
and users' hierarchy files (child -> parent edges).

A hierarchy is a tree whose root is the most generic concept ("clothing"), whose middle
level groups classes into families ("footwear") and whose leaves are the classes of a
dataset ("sneaker"). Each training image gets one caption per level, generic -> specific,
so that a hyperbolic model (MERU) can learn the partial order "generic text entails specific
text entails image".
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from vlunlearn.data.tables import header_rows
from vlunlearn.errors import DataError, RequestError

LEVELS = ("generic", "family", "class")
Edges = dict[str, tuple[str, str]]  # child -> (parent, where the edge is written), as users' files give them

_ARTICLE = re.compile(r"\ba \{\}")
_CONSONANT_SOUND = ("one", "uni", "use", "eu")  # vowel letters that sound like "w" or "y"


def fill(template: str, name: str) -> str:
    """``template.format(name)``, writing "an" instead of "a" before a name that starts with a vowel."""
    lower = name.lower()
    if lower[:1] in "aeiou" and not lower.startswith(_CONSONANT_SOUND):
        template = _ARTICLE.sub("an {}", template)
    return template.format(name)


def _choose(rng, n: int) -> int:
    if isinstance(rng, random.Random):
        return rng.randrange(n)
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(n))
    raise TypeError(f"rng must be a random.Random or a numpy Generator, not {type(rng).__name__}")


@dataclass(frozen=True)
class ConceptHierarchy:
    """A tree of concepts over the classes of a dataset.

    Attributes:
        name: the hierarchy's name (usually the dataset's).
        classes: leaf class names in label order.
        parents: child -> parent for every concept except the root.
        root: the most generic concept.
        caption_templates: for each level name, the templates (with one ``{}``) of the
            captions at that level.
        prompt_templates: the zero-shot prompt ensemble for class names.
        levels: level names ordered generic -> specific; the root is at ``levels[0]`` and
            every class at ``levels[-1]``.
        synthetic_root: the root was added above several top concepts (users' trees, see
            :mod:`vlunlearn.data.concept_tree`): no caption names it and no item shows it.
        notes: how the hierarchy was made, for reports (not compared).
    """

    name: str
    classes: tuple[str, ...]
    parents: Mapping[str, str] = field(hash=False)
    root: str
    caption_templates: Mapping[str, tuple[str, ...]] = field(hash=False)
    prompt_templates: tuple[str, ...]
    levels: tuple[str, ...] = LEVELS
    synthetic_root: bool = False
    notes: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "parents", dict(self.parents))
        object.__setattr__(self, "caption_templates", {k: tuple(v) for k, v in self.caption_templates.items()})
        object.__setattr__(self, "prompt_templates", tuple(self.prompt_templates))
        object.__setattr__(self, "levels", tuple(self.levels))
        object.__setattr__(self, "notes", tuple(self.notes))
        problem = self._problem()
        if problem:
            raise DataError(f"invalid concept hierarchy {self.name!r}: {problem}")

    def _problem(self) -> str | None:
        if len(set(self.classes)) != len(self.classes) or not self.classes:
            return "classes must be a non-empty tuple of distinct names"
        if self.root in self.parents:
            return f"the root {self.root!r} must not have a parent"
        known = set(self.parents) | {self.root}
        for child, parent in self.parents.items():
            if parent not in known:
                return f"the parent {parent!r} of {child!r} is not a concept"
        for name in self.classes:
            if name not in self.parents:
                return f"class {name!r} has no parent"
        depth = len(self.levels) - 1
        for name in known:
            chain, current = [name], name
            while current != self.root:
                current = self.parents[current]
                if current in chain:
                    return f"the ancestry of {name!r} has a cycle"
                chain.append(current)
            if (name in self.classes) != (len(chain) - 1 == depth):
                return f"{name!r} is at depth {len(chain) - 1}; classes, and only classes, must be at depth {depth}"
        if set(self.caption_templates) != set(self.levels):
            return f"caption_templates must have exactly the levels {self.levels}"
        for level, templates in self.caption_templates.items():
            if not templates or any(t.count("{}") != 1 for t in templates):
                return f"every caption template of level {level!r} must contain one '{{}}'"
        if not self.prompt_templates or any(t.count("{}") != 1 for t in self.prompt_templates):
            return "every prompt template must contain one '{}'"
        return None

    # ---------------------------------------------------------------- structure

    @property
    def concepts(self) -> tuple[str, ...]:
        """Every concept, by level (generic -> specific), in class order within a level."""
        ordered: dict[str, None] = {}
        for level in range(len(self.levels)):
            for name in self.classes:
                chain = self.ancestors(name)
                ordered[chain[len(chain) - 1 - level]] = None
        return tuple(ordered)

    def _check(self, name: str) -> None:
        if name != self.root and name not in self.parents:
            raise RequestError(
                f"unknown concept {name!r} in hierarchy {self.name!r}; valid concepts: {', '.join(self.concepts)}"
            )

    def ancestors(self, name: str) -> tuple[str, ...]:
        """``name`` and its ancestors, from ``name`` itself up to the root."""
        self._check(name)
        chain = [name]
        while chain[-1] != self.root:
            chain.append(self.parents[chain[-1]])
        return tuple(chain)

    def level_of(self, name: str) -> str:
        """The level name (one of ``levels``) of a concept."""
        return self.levels[len(self.ancestors(name)) - 1]

    def classes_under(self, name: str) -> tuple[str, ...]:
        """The leaf classes at or below ``name``, in label order."""
        self._check(name)
        return tuple(c for c in self.classes if name in self.ancestors(c))

    def concepts_at(self, level: str) -> tuple[str, ...]:
        """The concepts of a level, in class order."""
        if level not in self.levels:
            raise RequestError(f"unknown level {level!r}; valid levels: {', '.join(self.levels)}")
        return tuple(c for c in self.concepts if self.level_of(c) == level)

    # ---------------------------------------------------------------- text

    @property
    def caption_levels(self) -> tuple[str, ...]:
        """The levels :meth:`captions_for` writes a caption for: every level but an added root's."""
        return self.levels[1:] if self.synthetic_root else self.levels

    def captions_for(self, class_name: str, rng: random.Random | np.random.Generator) -> tuple[str, ...]:
        """One caption per level of :attr:`caption_levels`, generic -> specific, for an image of ``class_name``.

        Each caption fills a template of its level, chosen with ``rng``, with the concept
        of that level on the class's ancestry.
        """
        if class_name not in self.classes:
            self._check(class_name)
            raise RequestError(f"{class_name!r} is not a class of {self.name!r}; classes: {', '.join(self.classes)}")
        chain = self.ancestors(class_name)[::-1]
        skip = len(self.levels) - len(self.caption_levels)
        captions = []
        for level, concept in list(zip(self.levels, chain))[skip:]:
            templates = self.caption_templates[level]
            captions.append(fill(templates[_choose(rng, len(templates))], concept))
        return tuple(captions)

    def class_prompts(self, class_name: str) -> list[str]:
        """The zero-shot prompt ensemble of one class."""
        if class_name not in self.classes:
            self._check(class_name)
            raise RequestError(f"{class_name!r} is not a class of {self.name!r}; classes: {', '.join(self.classes)}")
        return [fill(t, class_name) for t in self.prompt_templates]

    def level_prompts(self, level: str) -> dict[str, list[str]]:
        """Prompts for every concept of ``level``, made from that level's caption templates.

        The caption templates (not the zero-shot ensemble) are used so that hierarchy
        diagnostics embed the same kind of text the model saw at that level.
        """
        return {c: [fill(t, c) for t in self.caption_templates[level]] for c in self.concepts_at(level)}


FASHION_MNIST = ConceptHierarchy(
    name="fashion-mnist",
    classes=("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"),
    parents={
        "top": "clothing",
        "legwear": "clothing",
        "one-piece": "clothing",
        "footwear": "clothing",
        "accessory": "clothing",
        "t-shirt": "top",
        "pullover": "top",
        "coat": "top",
        "shirt": "top",
        "trouser": "legwear",
        "dress": "one-piece",
        "sandal": "footwear",
        "sneaker": "footwear",
        "ankle boot": "footwear",
        "bag": "accessory",
    },
    root="clothing",
    caption_templates={
        "generic": ("a photo of {}.", "an item of {}.", "a piece of {}."),
        "family": ("a kind of {}.", "a type of {}.", "a {} item."),
        "class": ("a photo of a {}.", "a picture of a {}.", "an image of the {}."),
    },
    prompt_templates=(
        "a photo of a {}.",
        "a picture of a {}.",
        "an image of the {}.",
        "a photo of the {}.",
        "a close-up photo of a {}.",
        "a low resolution photo of a {}.",
    ),
)

DIGITS = ConceptHierarchy(
    name="digits",
    classes=("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    parents={
        "even": "number",
        "odd": "number",
        **{name: ("even" if digit % 2 == 0 else "odd") for digit, name in enumerate(
            ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"))},
    },
    root="number",
    caption_templates={
        "generic": ("a handwritten {}.", "a picture of a {}.", "a {} written by hand."),
        "family": ("a {} number.", "a handwritten {} number.", "a {} digit."),
        "class": ("a handwritten {}.", "the number {}.", "a drawing of a {}."),
    },
    prompt_templates=(
        "a handwritten {}.",
        "the number {}.",
        "a photo of the number {}.",
        "a drawing of a {}.",
        "an image of the digit {}.",
    ),
)


# ---------------------------------------------------------------- users' hierarchy files


def read_hierarchy_file(path: str | Path) -> dict[str, str]:
    """child -> parent from a users' hierarchy file (see :func:`read_hierarchy_edges`)."""
    return {child: parent for child, (parent, _) in read_hierarchy_edges(Path(path)).items()}


def read_hierarchy_edges(path: Path) -> Edges:
    """child -> (parent, where the edge is written) from a users' hierarchy file: CSV or TSV with the
    header ``child,parent``, or a JSON or YAML mapping ``{"seven": "odd", ...}`` (YAML needs pyyaml).

    Raises:
        DataError: naming the file and line (or key) of a missing or malformed file, an empty
            name, a child with two parents, or a cycle.
    """
    if not path.is_file():
        raise DataError(f"hierarchy file not found: {path}")
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not a UTF-8 text file ({error})") from error
    if suffix in (".csv", ".tsv"):
        pairs = _table_pairs(path, text, "\t" if suffix == ".tsv" else ",")
    elif suffix in (".json", ".yaml", ".yml"):
        mapping = _json(path, text) if suffix == ".json" else _yaml(path, text)
        if not isinstance(mapping, dict):
            raise DataError(f"{path}: expected a mapping of child to parent, like {{\"seven\": \"odd\"}}")
        pairs = [(child, parent, f"{path}, key {child!r}") for child, parent in mapping.items()]
    else:
        raise DataError(f"{path}: unknown hierarchy format {suffix!r}; use .csv or .tsv (child,parent), .json or .yaml")
    edges: Edges = {}
    for child, parent, where in pairs:
        for role, name in (("child", child), ("parent", parent)):
            if not isinstance(name, str) or not name.strip():
                raise DataError(f"{where}: the {role} must be a non-empty concept name, not {name!r}")
        child, parent = child.strip(), parent.strip()
        if child in edges and edges[child][0] != parent:
            raise DataError(f"{where}: {child!r} has the parent {parent!r}, but {edges[child][1]} gives it {edges[child][0]!r}")
        edges.setdefault(child, (parent, where))
    if not edges:
        raise DataError(f"{path}: no child -> parent edges")
    check_acyclic(edges)
    return edges


def _table_pairs(path: Path, text: str, delimiter: str) -> list[tuple[str, str, str]]:
    """(child, parent, where) of each row of a CSV or TSV file with ``child`` and ``parent`` columns."""
    rows = header_rows(path, text, delimiter, ("child", "parent"), "the columns child and parent")
    return [(row["child"], row["parent"], where) for where, row in rows]


def _json(path: Path, text: str):
    def unique(pairs: list[tuple[str, object]]) -> dict:
        keys = Counter(key for key, _ in pairs)
        repeated = [key for key, n in keys.items() if n > 1]
        if repeated:
            raise DataError(f"{path}: the key {repeated[0]!r} appears {keys[repeated[0]]} times; a child has one parent")
        return dict(pairs)

    try:
        return json.loads(text, object_pairs_hook=unique)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}, line {error.lineno}: not valid JSON ({error.msg})") from error


def _yaml(path: Path, text: str):
    try:
        import yaml
    except ImportError as error:
        raise DataError(f"{path}: reading a YAML hierarchy needs pyyaml (pip install pyyaml); or write it as CSV or JSON") from error
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise DataError(f"{path}: not valid YAML ({error})") from error


def check_acyclic(edges: Edges) -> None:
    """Raise DataError naming where a cycle of child -> parent ``edges`` is written."""
    for start in edges:
        chain = [start]
        while chain[-1] in edges:
            parent = edges[chain[-1]][0]
            if parent in chain:
                cycle = chain[chain.index(parent):] + [parent]
                raise DataError(f"{edges[parent][1]}: the concept hierarchy has a cycle (child -> parent): {' -> '.join(cycle)}")
            chain.append(parent)
