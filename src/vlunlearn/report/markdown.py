"""``report.md``: the results of a run as tables a reader can compare at a glance (DESIGN §6).

One table per (model, geometry, forget set) group, one row per method: the original model
first, the retrained oracle second (when present), then the unlearning methods in the order
they were recorded. Accuracies are in percent; the oracle gap is the mean of
:func:`vlunlearn.evaluation.oracle.oracle_gap` against the group's retrain record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from vlunlearn.evaluation.oracle import as_number, oracle_gap

__all__ = ["render_report", "group_records", "order_methods", "MISSING"]

MISSING = "–"
NO_ORACLE = (
    "No retrained oracle in this group: numbers are relative to the original model only "
    "and there is no oracle, so the oracle gap is n/a."
)

# (header, metric key, decimals)
COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("test forget %", "zs_test_forget", 1),
    ("test retain %", "zs_test_retain", 1),
    ("train forget %", "zs_train_forget", 1),
    ("train retain %", "zs_train_retain", 1),
    ("MIA AUC", "mia_auc", 3),
    ("alignment gap", "alignment_gap", 3),
    ("seconds", "seconds", 1),
)


def _fmt(value: Any, decimals: int) -> str:
    number = as_number(value)
    return MISSING if number is None else f"{number:.{decimals}f}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def group_key(record: Mapping[str, Any]) -> tuple[str, str, tuple[str, ...]]:
    """``(model, geometry, forget concepts)`` of a record."""
    forget = record.get("forget") or []
    if isinstance(forget, str):
        forget = [forget]
    return (str(record.get("model", "?")), str(record.get("geometry", "?")), tuple(str(f) for f in forget))


def group_records(records: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, tuple[str, ...]], list[Mapping[str, Any]]]:
    """Records grouped by :func:`group_key`, groups in order of first appearance."""
    groups: dict[tuple[str, str, tuple[str, ...]], list[Mapping[str, Any]]] = {}
    for record in records:
        groups.setdefault(group_key(record), []).append(record)
    return groups


def order_methods(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Original first, retrain second, then the other records in their given order."""
    rank = {"original": 0, "retrain": 1}
    indexed = list(enumerate(records))
    indexed.sort(key=lambda item: (rank.get(str(item[1].get("method")), 2), item[0]))
    return [record for _, record in indexed]


def _summary(results: Mapping[str, Any]) -> str:
    data = results.get("data") or {}
    parts = []
    if data.get("name") is not None:
        parts.append(f"data: **{_cell(data['name'])}**")
    if data.get("train_hash"):
        parts.append(f"train hash `{str(data['train_hash'])[:12]}`")
    config = results.get("config") or {}
    scalars = [f"{k}={v}" for k, v in config.items() if isinstance(v, (str, int, float, bool)) or v is None]
    if scalars:
        shown = scalars[:12]
        parts.append("config: " + ", ".join(_cell(s) for s in shown) + (", …" if len(scalars) > len(shown) else ""))
    if results.get("schema_version") is not None:
        parts.append(f"schema v{results['schema_version']}")
    return " · ".join(parts) if parts else "no data or config recorded"


def _table(records: Sequence[Mapping[str, Any]]) -> list[str]:
    ordered = order_methods(records)
    retrain = next((r for r in ordered if r.get("method") == "retrain"), None)
    lines = []
    if retrain is None:
        lines += [f"_{NO_ORACLE}_", ""]
    headers = ["method"] + [h for h, _, _ in COLUMNS] + ["oracle gap"]
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "|".join([":---"] + ["---:"] * (len(headers) - 1)) + "|")
    for record in ordered:
        metrics = record.get("metrics") or {}
        cells = [_cell(record.get("method", "?"))]
        cells += [_fmt(metrics.get(key), decimals) for _, key, decimals in COLUMNS]
        if retrain is None:
            cells.append("n/a")
        else:
            cells.append(_fmt(oracle_gap(metrics, retrain.get("metrics") or {})["mean"], 3))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_report(results: Mapping[str, Any], figures: Sequence[str] | None = None) -> str:
    """The markdown report of a results document (see :mod:`vlunlearn.report`).

    ``figures`` are paths relative to the report's folder (``figures/...png``) that
    :func:`vlunlearn.report.writer.write_report` produced; they are linked in a "Figures"
    section. Missing metrics show as ``–``.
    """
    lines = ["# vlunlearn results", "", _summary(results), ""]
    records = results.get("records") or []
    lines += [
        "Accuracies are zero-shot top-1 in percent; the oracle gap is the mean of "
        "|unlearned - retrain| over train/test forget/retain accuracy and MIA AUC "
        "(lower is closer to the retrained oracle).",
        "",
    ]
    if not records:
        lines += ["_No records._", ""]
    for (model, geometry, forget), group in group_records(records).items():
        lines.append(f"## {_cell(model)} · {_cell(geometry)} · forget: {_cell(', '.join(forget) or '(nothing)')}")
        lines.append("")
        lines += _table(group)
        lines.append("")
    lines += ["## Figures", ""]
    if figures:
        for figure in figures:
            name = str(figure).replace("\\", "/")
            lines.append(f"- [{name.rsplit('/', 1)[-1]}]({name})")
            lines.append(f"  ![{name.rsplit('/', 1)[-1]}]({name})")
    else:
        lines.append("_No figures were produced._")
    lines.append("")
    return "\n".join(lines)
