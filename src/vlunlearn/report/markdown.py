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
    gaps = {
        id(record): as_number(oracle_gap(record.get("metrics") or {}, retrain.get("metrics") or {})["mean"])
        for record in ordered
        if retrain is not None
    }
    candidates = [gaps[id(r)] for r in ordered if r.get("method") not in ("original", "retrain") and gaps.get(id(r)) is not None]
    best = min(candidates) if candidates else None
    headers = ["method"] + [h for h, _, _ in COLUMNS] + ["oracle gap"]
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "|".join([":---"] + ["---:"] * (len(headers) - 1)) + "|")
    for record in ordered:
        metrics = record.get("metrics") or {}
        name = _cell(record.get("method", "?"))
        gap = gaps.get(id(record))
        closest = best is not None and gap == best and record.get("method") not in ("original", "retrain")
        cells = [f"**{name}**" if closest else name]
        cells += [_fmt(metrics.get(key), decimals) for _, key, decimals in COLUMNS]
        cells.append("n/a" if retrain is None else (f"**{_fmt(gap, 3)}**" if closest else _fmt(gap, 3)))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


FIGURE_CAPTIONS = {
    "alignment": "Alignment audit: similarity of forget images (rows) to captions (columns); a bright diagonal "
    "block means the pairs are still remembered. For concept requests the lower-right block holds retain pairs "
    "for contrast, and the gap compares a forget image's own caption with other concepts' captions.",
    "d0": "Distance of the forget images to the origin of the hyperboloid (generic concepts live near the "
    "origin, specific ones far from it).",
    "disk": "Test images on the Poincare disk (first two spatial axes), before and after unlearning, coloured by class.",
    "scatter": "Zero-shot test accuracy on the forgotten concepts against the retained ones; the best methods "
    "sit next to the retrain star.",
}

GUIDE = (
    "How to read: an unlearning method succeeds when its **test forget %** falls to the retrained oracle's, "
    "its **test retain %** stays near the original's, and its **MIA AUC** and **alignment gap** match the "
    "oracle's (an AUC near 0.5 means the forget pairs look like unseen data). The oracle gap is the mean of "
    "|method - retrain| over train/test forget/retain accuracy (percent) and MIA AUC: lower is closer to "
    "retraining; the closest method of each table is in bold."
)


def render_report(results: Mapping[str, Any], figures: Sequence[str] | None = None) -> str:
    """The markdown report of a results document (see :mod:`vlunlearn.report`).

    ``figures`` are paths relative to the report's folder (``figures/...png``) that
    :func:`vlunlearn.report.writer.write_report` produced; they are shown in a "Figures"
    section, each with a caption chosen by its file name's prefix. Missing metrics show as ``–``.
    """
    lines = ["# vlunlearn results", "", _summary(results), "", GUIDE, ""]
    records = results.get("records") or []
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
            stem = name.rsplit("/", 1)[-1]
            caption = FIGURE_CAPTIONS.get(stem.split("_", 1)[0].removesuffix(".png"), "")
            lines += [f"### {stem}", "", f"![{stem}]({name})", ""]
            if caption:
                lines += [f"_{caption}_", ""]
    else:
        lines += ["_No figures were produced._", ""]
    return "\n".join(lines)
