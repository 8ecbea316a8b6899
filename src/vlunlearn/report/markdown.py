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
from vlunlearn.evaluation.suite import NOT_APPLICABLE

__all__ = ["render_report", "group_records", "order_methods", "MISSING"]

MISSING = "–"
NO_ORACLE = (
    "No retrained oracle in this group: numbers are relative to the original model only "
    "and there is no oracle, so the oracle gap is n/a."
)

# (header, metric key, decimals); each table is one row per method
COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("test forget %", "zs_test_forget", 1),
    ("test retain %", "zs_test_retain", 1),
    ("AP forget", "det_ap_forget", 3),
    ("AP retain", "det_ap_retain", 3),
    ("R@1 test", "retrieval_test_i2t_r1", 1),
    ("R@1 D_f", "retrieval_forget_i2t_r1", 1),
    ("MIA AUC (calibrated)", "mia_calibrated_auc", 3),
    ("MIA AUC (CV)", "mia_auc", 3),
    ("distinguish.", "distinguishability", 3),
    ("KS p", "ks_pvalue", 3),
    ("alignment gap", "alignment_gap", 3),
    ("seconds", "seconds", 1),
    ("peak MiB", "peak_memory_mib", 0),
)
DETAIL_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("test forget top-5 %", "zs_test_forget_top5", 1),
    ("test forget macro %", "zs_test_forget_macro", 1),
    ("train forget %", "zs_train_forget", 1),
    ("train retain %", "zs_train_retain", 1),
    ("R@5 test", "retrieval_test_i2t_r5", 1),
    ("R@1 test t2i", "retrieval_test_t2i_r1", 1),
    ("MIA TPR@1%FPR", "mia_calibrated_tpr_at_1_fpr", 3),
    ("lands same", "landing_same", 2),
    ("sibling", "landing_sibling", 2),
    ("parent", "landing_parent", 2),
    ("other", "landing_other", 2),
    ("TIE", "tree_tie", 2),
    ("entail D_f", "entailment_rate_forget", 2),
    ("entail test forget", "entailment_rate_test_forget", 2),
    ("D_f d0", "forget_input_d0", 2),
)
INTERVALS = {"mia_calibrated_auc": "mia_calibrated_auc", "mia_auc": "mia_auc"}  # keys with a bootstrap interval
NOT_MEASURED = "Not measured on this data (left out, shown as –), and why:"
MIA_NOTE = (
    "The untouched original's {which} membership-attack interval [{low:.3f}, {high:.3f}] contains 0.5: "
    "this attack cannot tell its training pairs from unseen ones on this data, so its values below prove nothing "
    "about forgetting."
)


def _fmt(value: Any, decimals: int) -> str:
    number = as_number(value)
    return MISSING if number is None else f"{number:.{decimals}f}"


def _metric(record: Mapping[str, Any], key: str, decimals: int) -> str:
    """A cell: the value; ``mean ± std`` over seeds when the record merged several; the 95%
    bootstrap interval ``[low, high]`` of a single run's attack AUC."""
    metrics = record.get("metrics") or {}
    value = metrics.get(key)
    if key == "peak_memory_mib":
        value = None if as_number(metrics.get("peak_memory_bytes")) is None else metrics["peak_memory_bytes"] / 2**20
    text = _fmt(value, decimals)
    spread = (record.get("spread") or {}).get(key)
    if spread and spread.get("n", 1) > 1 and text != MISSING:
        return f"{text} ± {spread['std']:.{decimals}f}"
    if key in INTERVALS and text != MISSING and as_number(metrics.get(f"{key}_low")) is not None:
        return f"{text} [{metrics[f'{key}_low']:.2f}, {metrics[f'{key}_high']:.2f}]"
    return text


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


def _table(records: Sequence[Mapping[str, Any]], item: str) -> list[str]:
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
        name = _cell(record.get("method", "?"))
        gap = gaps.get(id(record))
        closest = best is not None and gap == best and record.get("method") not in ("original", "retrain")
        cells = [f"**{name}**" if closest else name]
        cells += [_metric(record, key, decimals) for _, key, decimals in COLUMNS]
        cells.append("n/a" if retrain is None else (f"**{_fmt(gap, 3)}**" if closest else _fmt(gap, 3)))
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""] + _not_measured(ordered) + _mia_notes(ordered) + _details(ordered, item) + _traversals(ordered, item)


def _not_measured(ordered: Sequence[Mapping[str, Any]]) -> list[str]:
    """The metrics the group's records left out (``artifacts.metrics_not_applicable``), grouped
    by reason: one line per reason, naming the metric keys."""
    reasons: dict[str, str] = {}
    for record in ordered:
        for key, reason in ((record.get("artifacts") or {}).get(NOT_APPLICABLE) or {}).items():
            reasons.setdefault(str(key), str(reason))
    keys_by_reason: dict[str, list[str]] = {}
    for key, reason in reasons.items():
        keys_by_reason.setdefault(reason, []).append(key)
    if not keys_by_reason:
        return []
    lines = [NOT_MEASURED, ""]
    lines += [f"- {', '.join(f'`{key}`' for key in keys)}: {_cell(reason)}" for reason, keys in keys_by_reason.items()]
    return lines + [""]


def _traversals(ordered: Sequence[Mapping[str, Any]], item: str) -> list[str]:
    """MERU's traversal of the same forget inputs under each model: before (original) and after."""
    shown = [r for r in ordered if (r.get("artifacts") or {}).get("traversals")]
    if not shown:
        return []
    lines = ["", f"Traversals of forget {item}s towards the origin (concepts met on the way, {item} end first):", ""]
    for record in shown:
        for walk in record["artifacts"]["traversals"]:
            lines.append(f"- {_cell(record.get('method', '?'))}, `{_cell(walk['id'])}`: {' → '.join(map(_cell, walk['path']))}")
    return lines


def _mia_notes(ordered: Sequence[Mapping[str, Any]]) -> list[str]:
    original = next((r for r in ordered if r.get("method") == "original"), None)
    if original is None:
        return []
    notes = []
    for which, key in (("calibrated", "mia_calibrated_auc"), ("cross-validated", "mia_auc")):
        metrics = original.get("metrics") or {}
        low, high = as_number(metrics.get(f"{key}_low")), as_number(metrics.get(f"{key}_high"))
        if low is not None and high is not None and low <= 0.5 <= high:
            notes += [f"_{MIA_NOTE.format(which=which, low=low, high=high)}_", ""]
    return notes


def _details(ordered: Sequence[Mapping[str, Any]], item: str) -> list[str]:
    columns = [c for c in DETAIL_COLUMNS if any(as_number((r.get("metrics") or {}).get(c[1])) is not None for r in ordered)]
    if not columns:
        return []
    lines = [f"More metrics (top-5 and macro accuracy, retrieval, attack TPR, where forget {item}s land, hierarchy):", ""]
    lines.append("| method | " + " | ".join(h for h, _, _ in columns) + " |")
    lines.append("|" + "|".join([":---"] + ["---:"] * len(columns)) + "|")
    for record in ordered:
        cells = [_cell(record.get("method", "?"))] + [_metric(record, key, decimals) for _, key, decimals in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


FIGURE_CAPTIONS = {
    "alignment": "Alignment audit: similarity of forget {item}s (rows) to captions (columns); a bright diagonal "
    "block means the pairs are still remembered. For concept requests the lower-right block holds retain pairs "
    "for contrast, and the gap compares a forget {item}'s own caption with other concepts' captions.",
    "d0": "Distance of the forget {item}s to the origin of the hyperboloid (generic concepts live near the "
    "origin, specific ones far from it).",
    "disk": "Test {item}s on the Poincare disk (first two spatial axes), before and after unlearning, coloured by class.",
    "scatter": "Zero-shot test accuracy on the forgotten concepts against the retained ones; the best methods "
    "sit next to the retrain star.",
}

INPUT_NOUNS = {"image": "image", "graph": "molecule"}  # what the report calls a data item, by modality

GUIDE = (
    "How to read: an unlearning method succeeds when its **test forget %** (zero-shot top-1 on single-class test "
    "{item}s of the forgotten concepts; every class, forgotten ones included, stays a candidate, MERU's convention) "
    "and **AP forget** (detection of the forgotten concepts in every test {item}) fall to the retrained oracle's, "
    "its **test retain %** and **AP retain** stay near the original's, and its privacy metrics match the oracle's: "
    "**MIA AUC** (an attack trained on retain members vs unseen test-retain pairs, applied to D_f vs test-forget; "
    "95% bootstrap interval in brackets; 0.5 = D_f looks unseen), **distinguish.** (ROC-AUC of the pair "
    "similarity of D_f against D_r; higher = the deleted pairs stand apart from the kept ones), **KS p** (KS test "
    "of the D_f pair-similarity distribution against the oracle's; high = indistinguishable from retraining) and "
    "the **alignment gap**. Retrieval **R@1** is {item}-to-text Recall@1 by item on the test split, and for D_f "
    "against the whole training gallery. The **oracle gap** is the mean over the forget/retain accuracies, the "
    "two MIA AUCs and distinguishability of |method - retrain|, each on a common scale (accuracies as fractions, "
    "so 10 points weigh as much as 0.1 of AUC): lower is closer to retraining; the closest method of each table "
    "is in bold. With several seeds a cell shows mean ± standard deviation over the seeds."
)


def render_report(
    results: Mapping[str, Any], figures: Sequence[str] | None = None, skipped_figures: Sequence[str] | None = None,
) -> str:
    """The markdown report of a results document (see :mod:`vlunlearn.report`).

    ``figures`` are paths relative to the report's folder (``figures/...png``) that
    :func:`vlunlearn.report.writer.write_report` produced; they are shown in a "Figures"
    section, each with a caption chosen by its file name's prefix; ``skipped_figures`` are
    one-line notes on figures left out for want of inputs, listed after them. Missing metrics
    show as ``–``; those a record names in ``artifacts.metrics_not_applicable`` are listed
    under their table with the reason.
    """
    item = INPUT_NOUNS.get(str((results.get("data") or {}).get("modality", "image")), "input")
    lines = ["# vlunlearn results", "", _summary(results), "", GUIDE.format(item=item), ""]
    records = results.get("records") or []
    if not records:
        lines += ["_No records._", ""]
    for (model, geometry, forget), group in group_records(records).items():
        lines.append(f"## {_cell(model)} · {_cell(geometry)} · forget: {_cell(', '.join(forget) or '(nothing)')}")
        lines.append("")
        lines += _table(group, item)
        lines.append("")
    lines += ["## Figures", ""]
    if figures:
        for figure in figures:
            name = str(figure).replace("\\", "/")
            stem = name.rsplit("/", 1)[-1]
            caption = FIGURE_CAPTIONS.get(stem.split("_", 1)[0].removesuffix(".png"), "").format(item=item)
            lines += [f"### {stem}", "", f"![{stem}]({name})", ""]
            if caption:
                lines += [f"_{caption}_", ""]
    else:
        lines += ["_No figures were produced._", ""]
    if skipped_figures:
        lines += [f"- Not drawn: {_cell(note)}" for note in skipped_figures] + [""]
    return "\n".join(lines)
