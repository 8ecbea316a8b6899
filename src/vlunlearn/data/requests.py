"""Unlearning requests and the forget / retain / test splits they define (DESIGN.md §3).

A request names either concepts or training sample ids, never both.

Concept request
    D_f (``forget``) holds the training items whose ``concepts`` contain any requested
    concept. Items carry their ancestors, so a family name ("footwear") forgets every class
    under it (sandal, sneaker, ankle boot). ``forget_classes`` are the classes whose ancestry
    meets the request; ``retain_classes`` the others. ``test_forget`` holds the test items
    that show a requested concept (for labelled single-class data: the test items of the
    forget classes) and ``test_retain`` the rest.

Sample request
    D_f holds the training items with the listed ids. No class is forgotten as such, so
    ``forget_classes`` is ``()`` and ``retain_classes`` are all classes. ``test_forget``
    holds the test items that share a label with some D_f item (the classes the forgotten
    samples come from: the membership attack's non-members) and ``test_retain`` is the whole
    test split, since every test item is knowledge to keep. (Taking only the test items of
    classes D_f does not touch would leave nothing to measure once a few percent of the pairs
    are forgotten: they touch every class.)

In both cases D_r (``retain``) is the rest of the training data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlunlearn.data.datasets import PairDataset
from vlunlearn.errors import DataError, RequestError


def _as_names(value, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    names = []
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise RequestError(f"{what} must be non-empty strings, not {item!r}")
        if item.strip() not in names:
            names.append(item.strip())
    return tuple(names)


def _listing(names, limit: int = 5) -> str:
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


@dataclass(frozen=True)
class UnlearningRequest:
    """What to forget: concept names, or training sample ids (exactly one of the two)."""

    concepts: tuple[str, ...] = ()
    sample_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "concepts", _as_names(self.concepts, "concepts"))
        object.__setattr__(self, "sample_ids", _as_names(self.sample_ids, "sample ids"))

    @property
    def kind(self) -> str:
        """``"concepts"`` or ``"samples"`` (or ``"invalid"`` for an empty or mixed request)."""
        if bool(self.concepts) == bool(self.sample_ids):
            return "invalid"
        return "concepts" if self.concepts else "samples"

    def describe(self) -> str:
        """A one-line description for logs and reports."""
        parts = []
        if self.concepts:
            parts.append(f"forget concept{'s' if len(self.concepts) > 1 else ''} {', '.join(self.concepts)}")
        if self.sample_ids:
            count = len(self.sample_ids)
            parts.append(f"forget {count} sample{'s' if count > 1 else ''} ({_listing(self.sample_ids, 3)})")
        return "; ".join(parts) if parts else "empty request"

    def to_dict(self) -> dict:
        return {"concepts": list(self.concepts), "sample_ids": list(self.sample_ids)}


@dataclass
class UnlearningSplits:
    """The datasets an unlearning run works with.

    ``forget`` is D_f and ``retain`` is D_r (together the training data); ``test_forget``
    and ``test_retain`` partition the held-out test data for a concept request, and for a
    sample request ``test_retain`` is all of it (see the module docstring).
    """

    request: UnlearningRequest
    forget: PairDataset
    retain: PairDataset
    test_forget: PairDataset
    test_retain: PairDataset
    forget_classes: tuple[str, ...]
    retain_classes: tuple[str, ...]

    def summary(self) -> dict:
        return {
            "request": self.request.to_dict(),
            "forget": len(self.forget),
            "retain": len(self.retain),
            "test_forget": len(self.test_forget),
            "test_retain": len(self.test_retain),
            "forget_classes": list(self.forget_classes),
            "retain_classes": list(self.retain_classes),
        }


def _valid_concepts(train: PairDataset, test: PairDataset) -> tuple[str, ...]:
    if train.hierarchy is not None:
        return train.hierarchy.concepts
    seen: dict[str, None] = dict.fromkeys(train.class_names)
    for concepts in list(train.concepts) + list(test.concepts):
        seen.update(dict.fromkeys(sorted(concepts)))
    return tuple(seen)


def _class_ancestry(data: PairDataset, class_name: str) -> frozenset[str]:
    if data.hierarchy is not None and class_name in data.hierarchy.classes:
        return frozenset(data.hierarchy.ancestors(class_name))
    return frozenset({class_name})


def make_splits(train: PairDataset, test: PairDataset, request: UnlearningRequest) -> UnlearningSplits:
    """Split ``train`` into forget / retain and ``test`` into test_forget / test_retain.

    Raises:
        RequestError: a request with neither or both of concepts and sample ids; unknown
            concepts or ids; an empty forget set; a forget set that is all the training
            data; a concept request that leaves no class to evaluate zero-shot retention on.
        DataError: ``train`` and ``test`` have different class names.
    """
    if request.kind == "invalid":
        which = "both concepts and sample ids" if request.concepts else "neither concepts nor sample ids"
        raise RequestError(f"an unlearning request names concepts or sample ids, exactly one of the two; this one has {which}")
    if train.class_names != test.class_names:
        raise DataError(
            f"the training data {train.name!r} and test data {test.name!r} have different classes: "
            f"{list(train.class_names)} vs {list(test.class_names)}"
        )
    class_names = train.class_names

    if request.kind == "concepts":
        valid = _valid_concepts(train, test)
        unknown = [c for c in request.concepts if c not in valid]
        if unknown:
            raise RequestError(
                f"unknown concept{'s' if len(unknown) > 1 else ''} {', '.join(repr(c) for c in unknown)}; "
                f"valid concepts: {', '.join(valid)}"
            )
        wanted = frozenset(request.concepts)
        forget_mask = torch.tensor([bool(c & wanted) for c in train.concepts], dtype=torch.bool)
        test_mask = torch.tensor([bool(c & wanted) for c in test.concepts], dtype=torch.bool)
        forget_classes = tuple(c for c in class_names if _class_ancestry(train, c) & wanted)
    else:
        position = {item_id: i for i, item_id in enumerate(train.ids)}
        unknown = [i for i in request.sample_ids if i not in position]
        if unknown:
            in_test = set(unknown) & set(test.ids)
            hint = f"; {len(in_test)} of them are test ids, and only training items can be forgotten" if in_test else ""
            raise RequestError(
                f"{len(unknown)} sample id{'s' if len(unknown) > 1 else ''} not in the training data "
                f"{train.name!r}: {_listing(unknown)}{hint}"
            )
        forget_mask = torch.zeros(len(train), dtype=torch.bool)
        forget_mask[[position[i] for i in request.sample_ids]] = True
        labels = train.labels[forget_mask]
        forget_labels = labels[labels >= 0].unique()
        test_mask = torch.isin(test.labels, forget_labels) & (test.labels >= 0)
        forget_classes = ()

    n_forget = int(forget_mask.sum())
    if n_forget == 0:
        raise RequestError(f"the request ({request.describe()}) selects no training item of {train.name!r}; nothing to forget")
    if n_forget == len(train):
        raise RequestError(
            f"the request ({request.describe()}) selects all {len(train)} training items of {train.name!r}; "
            "nothing would be retained"
        )
    retain_classes = tuple(c for c in class_names if c not in forget_classes)
    if class_names and not retain_classes and bool((train.labels >= 0).any()):
        raise RequestError(
            f"the request ({request.describe()}) forgets every class ({', '.join(class_names)}); "
            "at least one class must be retained to measure zero-shot retention"
        )
    return UnlearningSplits(
        request=request,
        forget=train.subset(forget_mask, name=f"{train.name}/forget"),
        retain=train.subset(~forget_mask, name=f"{train.name}/retain"),
        test_forget=test.subset(test_mask, name=f"{test.name}/forget"),
        test_retain=test.subset(~test_mask if request.kind == "concepts" else torch.ones_like(test_mask),
                                name=f"{test.name}/retain"),
        forget_classes=forget_classes,
        retain_classes=retain_classes,
    )
