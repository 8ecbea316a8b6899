"""Read a study's cell records and summarise them over seeds (DESIGN §7).

- :func:`load_records`: the finished records and the failures of a study folder.
- :func:`summarise`: one row per (geometry, model, data, label, request kind, request size), each
  metric as :func:`~vlunlearn.report.merge.seed_spread` over the cells (one per seed).
- :func:`paired_effect`: treatment minus control on one metric, paired by seed and request draw.

Pairing: requests with the same (data, seed, request kind, request size) use the same concepts or
samples for every label (the study's contract), so each such key is one request draw; a pair is
one treatment cell and one control cell with the same key. Pairs from several request sizes are
pooled as independent draws; the interval is :func:`seed_spread`'s 95% Student-t interval of the
mean difference.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from vlunlearn.evaluation.oracle import as_number
from vlunlearn.evaluation.records import with_current_names
from vlunlearn.report.merge import seed_spread

__all__ = ["load_records", "summarise", "paired_effect", "field", "select", "spread", "metric_value", "sort_order",
           "RETRIEVAL_TEST"]

Record = Mapping[str, Any]
Metric = str | Callable[[Record], float | None]

RETRIEVAL_TEST = tuple(f"retrieval_test_{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10))
ROW_KEY = ("geometry", "model", "data", "label", "kind", "size")
PAIR_KEY = ("data", "kind", "size", "seed")
_REQUEST_FIELDS = ("kind", "size")


def _read(path: Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def load_records(out: str | Path) -> tuple[list[dict], list[dict]]:
    """The records ``OUT/cells/*/record.json`` and the failures ``OUT/cells/*/failed.json``.

    Cells in name order. A cell with a record is done even if an older ``failed.json`` remains; a
    record that cannot be read counts as a failure (``{"cell", "error"}``). Returns
    ``(records, failures)``.
    """
    records, failures = [], []
    for cell in sorted(p for p in (Path(out) / "cells").glob("*") if p.is_dir()):
        record, failed = cell / "record.json", cell / "failed.json"
        try:
            if record.is_file():
                records.append(with_current_names(_read(record)))
            elif failed.is_file():
                failures.append(_read(failed))
        except (OSError, ValueError) as error:
            name = record.name if record.is_file() else failed.name
            failures.append({"cell": cell.name, "error": f"unreadable {name}: {error}"})
    return records, failures


def field(record: Record, key: str) -> Any:
    """``record[key]``, with ``"kind"`` and ``"size"`` read from ``record["request"]``."""
    if key in _REQUEST_FIELDS:
        return (record.get("request") or {}).get(key)
    return record.get(key)


def select(records: Sequence[Record], where: Mapping[str, Any]) -> list[Record]:
    """The records whose :func:`field` equals every value of ``where``."""
    return [r for r in records if all(field(r, key) == value for key, value in where.items())]


def metric_value(record: Record, metric: Metric) -> float | None:
    """A named metric of ``record`` (with ``retrieval_test_rmean``, the mean of the six test recalls,
    MultiDelete's r_mean) or ``metric(record)``; ``None`` when missing or not a number."""
    if callable(metric):
        return as_number(metric(record))
    metrics = record.get("metrics") or {}
    if metric == "retrieval_test_rmean":
        values = [as_number(metrics.get(name)) for name in RETRIEVAL_TEST]
        return None if None in values else sum(values) / len(values)
    return as_number(metrics.get(metric))


def spread(values: Sequence[float]) -> dict[str, float]:
    """:func:`seed_spread` of ``values``; all NaN with ``n = 0`` when there are none."""
    if not values:
        return {"mean": math.nan, "std": math.nan, "low": math.nan, "high": math.nan, "n": 0}
    return seed_spread(values)


def sort_order(value: Any) -> tuple:
    """Numbers first, in numeric order, then anything else by its text."""
    return (0, value, "") if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, 0, str(value))


def _sort_key(row: Mapping[str, Any], labels: list) -> tuple:
    return (str(row["kind"]), str(row["geometry"]), str(row["model"]), str(row["data"]), labels.index(row["label"]),
            sort_order(row["size"]))


def summarise(records: Sequence[Record]) -> list[dict]:
    """One row per (geometry, model, data, label, request kind, request size).

    Each row: those six fields, ``method``, ``seeds`` (sorted), ``cells`` and ``metrics``: per
    numeric metric (plus ``retrieval_test_rmean`` when the test recalls are there),
    :func:`seed_spread` over the row's cells that report it. Rows are sorted by kind, geometry,
    model, data, label (original, retrain, then first appearance) and size.
    """
    groups: dict[tuple, list[Record]] = {}
    for record in records:
        groups.setdefault(tuple(field(record, key) for key in ROW_KEY), []).append(record)
    labels = list(dict.fromkeys(["original", "retrain"] + [field(r, "label") for r in records]))
    rows = []
    for key, group in groups.items():
        names = list(dict.fromkeys(name for r in group for name in (r.get("metrics") or {})))
        if all(name in names for name in RETRIEVAL_TEST):
            names.append("retrieval_test_rmean")
        metrics = {}
        for name in names:
            values = [v for v in (metric_value(r, name) for r in group) if v is not None]
            if values:
                metrics[name] = seed_spread(values)
        rows.append({
            **dict(zip(ROW_KEY, key)),
            "method": group[0].get("method"),
            "seeds": sorted({r.get("seed") for r in group}, key=sort_order),
            "cells": [r.get("cell") for r in group],
            "metrics": metrics,
        })
    return sorted(rows, key=lambda row: _sort_key(row, labels))


def _by_pair_key(records: Sequence[Record], where: Mapping[str, Any], role: str) -> dict[tuple, Record]:
    chosen: dict[tuple, Record] = {}
    for record in select(records, where):
        key = tuple(field(record, name) for name in PAIR_KEY)
        if key in chosen:
            raise ValueError(f"the {role} selection {dict(where)} matches several cells for "
                             f"{dict(zip(PAIR_KEY, key))}: {chosen[key].get('cell')} and {record.get('cell')}; "
                             "name the model or geometry too")
        chosen[key] = record
    return chosen


def paired_effect(records: Sequence[Record], metric: Metric, treatment: Mapping[str, Any],
                  control: Mapping[str, Any]) -> dict:
    """Treatment minus control on ``metric``, paired by seed and request draw.

    ``treatment`` and ``control`` select cells by :func:`field` (e.g. ``{"geometry": "lorentz",
    "label": "hac"}``); a treatment cell pairs with the control cell of the same (data, request
    kind, request size, seed). ``metric`` is a metric name (see :func:`metric_value`) or a
    function of a record. Pairs where either value is missing are left out.

    Returns ``mean, std, low, high, n`` (:func:`seed_spread` of the differences; NaN with ``n = 0``
    when no pair) and ``pairs``: per pair ``seed, kind, size, treatment, control, difference,
    cells`` (the two cell ids), sorted by data, kind, size and seed. Raises ``ValueError`` when a selection
    matches two cells with the same pairing key.
    """
    treated = _by_pair_key(records, treatment, "treatment")
    controls = _by_pair_key(records, control, "control")
    pairs = []
    for key in sorted(set(treated) & set(controls), key=lambda k: tuple(sort_order(v) for v in k)):
        t, c = metric_value(treated[key], metric), metric_value(controls[key], metric)
        if t is None or c is None:
            continue
        _, kind, size, seed = key
        pairs.append({"seed": seed, "kind": kind, "size": size, "treatment": t, "control": c, "difference": t - c,
                      "cells": [treated[key].get("cell"), controls[key].get("cell")]})
    return {**spread([p["difference"] for p in pairs]), "pairs": pairs}
