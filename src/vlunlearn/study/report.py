"""A study's merged report: ``summary.json``, ``report.md`` and ``figures/*.png`` (DESIGN §7).

:func:`write_study_report` reads the cells of a study folder (:func:`~vlunlearn.study.aggregate.load_records`),
summarises them over seeds, evaluates the claims (:mod:`vlunlearn.study.claims`; those the spec in
``study.json`` names, every claim when it names none) and writes, each
file atomically and replacing an older one (a resumed study rewrites its report):

- ``summary.json``: study name and seeds, cell counts, failures, claims, claims not measured and
  the per-(geometry, label, request) rows with every metric's mean, std, 95% interval and n;
- ``report.md``: the claims first, then per request kind a table of mean ± half-width of the 95%
  interval for the key metrics;
- figures (matplotlib, the ``report`` extra; skipped without it): ``headline.png`` (concept
  requests: CLIP+ac and MERU+hac with their oracles, forget and retain accuracy), ``curves_<kind>.png`` (metrics
  against the request size, per label and geometry, with 95% bands), ``ablations.png`` (combined
  score per ablation label, with 95% error bars) and ``hierarchy.png`` (where CLIP+ac's and
  MERU+hac's forget images land, and MERU's forget-image distances to the origin before/after).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlunlearn.io import atomic_write_text
from vlunlearn.report.writer import _matplotlib_available
from vlunlearn.runs import write_json
from vlunlearn.study.aggregate import Record, field, load_records, select, sort_order, spread, summarise
from vlunlearn.study.claims import combined_score, evaluate_claims

__all__ = ["write_study_report", "render_study_report", "KEY_COLUMNS"]

MISSING = "–"
KEY_COLUMNS: dict[str, tuple[tuple[str, str, int], ...]] = {  # request kind: (header, metric, decimals)
    "concepts": (("test forget %", "zs_test_forget", 1), ("test retain %", "zs_test_retain", 1),
                 ("MIA AUC", "mia_auc", 3), ("lands same", "landing_same", 2), ("lands other", "landing_other", 2),
                 ("D_f d0", "forget_input_d0", 2), ("probe input %", "probe_input_retain", 1),
                 ("seconds", "seconds", 1)),
    "samples": (("distinguish.", "distinguishability", 3), ("test retain %", "zs_test_retain", 1),
                ("R mean test", "retrieval_test_rmean", 1), ("probe input %", "probe_input_retain", 1),
                ("probe text %", "probe_text_retain", 1), ("MIA AUC", "mia_auc", 3), ("seconds", "seconds", 1)),
}
CURVES = {"concepts": ("zs_test_forget", "zs_test_retain"),
          "samples": ("distinguishability", "zs_test_retain", "retrieval_test_rmean", "probe_input_retain",
                      "probe_text_retain")}
LANDING = ("same", "sibling", "parent", "child", "other")
PERCENT_PREFIXES = ("zs_", "probe_", "retrieval_")  # metrics in 0..100
HEADLINE = (("CLIP + ac", ("euclidean", "ac"), "-", "tab:blue"), ("MERU + hac", ("lorentz", "hac"), "-", "tab:red"),
            ("CLIP retrained (oracle)", ("euclidean", "retrain"), "--", "tab:blue"),
            ("MERU retrained (oracle)", ("lorentz", "retrain"), "--", "tab:red"))  # name, (geometry, label), style, colour
VERDICT_RULE = ("Verdicts: supported when the whole 95% interval of the effect lies in the claimed region, "
                "contradicted when it lies wholly outside it, inconclusive otherwise (or with fewer than 2 pairs). "
                "Effects are paired differences (one pair per seed and request draw).")


def _plain(value: Any) -> Any:
    """``value`` with NaN and infinities as ``None`` and tuples as lists, so that it is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _study_info(out: Path, records: Sequence[Record]) -> dict:
    """Name, seeds and the claims to evaluate (all when empty) from ``OUT/study.json`` (top level or
    under ``spec``); name and seeds from the records when it is missing."""
    document: dict = {}
    if (out / "study.json").is_file():
        document = json.loads((out / "study.json").read_text(encoding="utf-8"))
    spec = document.get("spec") if isinstance(document.get("spec"), Mapping) else document
    name = spec.get("name") or next((r.get("study") for r in records if r.get("study")), None) or out.name
    seeds = spec.get("seeds") or sorted({r.get("seed") for r in records if r.get("seed") is not None})
    return {"name": name, "seeds": list(seeds), "claims": list(spec.get("claims") or [])}


def _number(value: float | None, decimals: int) -> str:
    return MISSING if value is None or not math.isfinite(value) else f"{value:.{decimals}f}"


def _with_interval(spread_: Mapping[str, float] | None, decimals: int) -> str:
    """``mean ± half-width`` of the 95% interval (no ``±`` for a single value)."""
    if not spread_:
        return MISSING
    mean = _number(spread_["mean"], decimals)
    return mean if spread_["n"] < 2 else f"{mean} ± {_number((spread_['high'] - spread_['low']) / 2, decimals)}"


def _detail(row: Mapping) -> str:
    """One per-size row of a claim: ``[geometry ]size[ vs baseline]: effect [low, high] (n=..)``."""
    where = " ".join(str(v) for v in (row.get("geometry"), row["size"]) if v is not None)
    versus = f" vs {row['best_baseline']}" if row.get("best_baseline") else ""
    return (f"{where}{versus}: {_number(row['effect'], 2)} [{_number(row['low'], 2)}, {_number(row['high'], 2)}] "
            f"(n={row['n']})")


def _claims_section(claims: Sequence[Mapping], not_measured: Sequence[Mapping]) -> list[str]:
    lines = ["## Claims", "", VERDICT_RULE, ""]
    if claims:
        lines += ["| claim | measure | effect [95% CI] | n | verdict |", "|---|---|---|---|---|"]
        for c in claims:
            effect = f"{_number(c['effect'], 2)} [{_number(c['low'], 2)}, {_number(c['high'], 2)}]"
            lines.append(f"| **{c['id']}**: {c['statement']} ({c['source']}) | {c['measure']} | {effect} | {c['n']} "
                         f"| **{c['verdict']}** |")
        lines += ["", "Why, and per request size:", ""]
        for c in claims:
            sizes = "; ".join(_detail(d) for d in c.get("details") or [])
            per_size = f" Per size: {sizes}." if sizes else ""
            lines.append(f"- **{c['id']}** ({c['verdict']}): {c['reason']}.{per_size}")
    else:
        lines.append("No claim could be measured with the labels this study ran.")
    if not_measured:
        lines += ["", "Not measured in this study: " + "; ".join(
            f"{m['id']} ({m['reason']})" for m in not_measured) + "."]
    return lines + [""]


def _tables(rows: Sequence[Mapping]) -> list[str]:
    lines: list[str] = []
    for kind in dict.fromkeys(row["kind"] for row in rows):
        chosen = [row for row in rows if row["kind"] == kind]
        columns = KEY_COLUMNS.get(kind) or KEY_COLUMNS["concepts"]
        columns = [c for c in columns if any(c[1] in row["metrics"] for row in chosen)]
        unit = {"concepts": "number of concepts", "samples": "fraction of training pairs"}.get(kind, "size")
        lines += [f"## {str(kind).capitalize()} requests", "",
                  f"Mean ± half-width of the 95% interval over seeds; size = {unit}.", "",
                  "| geometry | label | size | n | " + " | ".join(c[0] for c in columns) + " |",
                  "|---" * (4 + len(columns)) + "|"]
        for row in chosen:
            cells = [_with_interval(row["metrics"].get(key), decimals) for _, key, decimals in columns]
            lines.append(f"| {row['geometry']} | {row['label']} | {row['size']} | {len(row['cells'])} | "
                         + " | ".join(cells) + " |")
        lines.append("")
    return lines


def render_study_report(info: Mapping, records: Sequence[Record], failures: Sequence[Mapping],
                        rows: Sequence[Mapping], claims: Sequence[Mapping], not_measured: Sequence[Mapping],
                        figures: Sequence[str] = ()) -> str:
    """The text of ``report.md`` (see the module docstring); ``figures`` are paths relative to the study folder."""
    seeds = ", ".join(map(str, info["seeds"])) or MISSING
    lines = [f"# Study: {info['name']}", "",
             f"Seeds: {seeds} · cells: {len(records)} done, {len(failures)} failed.", ""]
    if failures:
        lines += ["Failed cells:", ""] + [f"- `{f.get('cell')}`: {f.get('error')}" for f in failures] + [""]
    lines += _claims_section(claims, not_measured) + _tables(rows)
    if figures:
        lines += ["## Figures", ""] + [f"![{Path(p).stem}]({p})" for p in figures] + [""]
    elif records:
        lines += ["No figures were produced (matplotlib is missing, or no data to draw).", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- figures

def _colours(labels: Sequence[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {label: cmap(i % cmap.N) for i, label in enumerate(labels)}


def _curves(rows: Sequence[Mapping], kind: str, path: Path) -> Path | None:
    """Each curve metric (rows of panels) against the size, per geometry (columns), one line per label."""
    from vlunlearn.report.figures import _new_figure, _save

    chosen = [r for r in rows if r["kind"] == kind and r["label"] == r["method"]]
    metrics = [m for m in CURVES.get(kind, ()) if any(m in r["metrics"] for r in chosen)]
    geometries = list(dict.fromkeys(r["geometry"] for r in chosen))
    if not metrics or not geometries:
        return None
    colours = _colours(list(dict.fromkeys(r["label"] for r in chosen)))
    fig = _new_figure(4.6 * len(geometries) + 1.6, 3.2 * len(metrics))
    axes = fig.subplots(len(metrics), len(geometries), squeeze=False)
    for i, metric in enumerate(metrics):
        for j, geometry in enumerate(geometries):
            ax = axes[i][j]
            for label, colour in colours.items():
                points = sorted(((r["size"], r["metrics"][metric]) for r in chosen
                                 if r["label"] == label and r["geometry"] == geometry and metric in r["metrics"]),
                                key=lambda p: sort_order(p[0]))
                if not points:
                    continue
                x = [100 * p[0] if kind == "samples" else p[0] for p in points]
                ax.plot(x, [p[1]["mean"] for p in points], marker="o", color=colour, label=label)
                low, high = _band(metric, points)
                ax.fill_between(x, low, high, color=colour, alpha=0.15)
            ax.set_title(f"{geometry}: {metric}", fontsize=9)
            ax.set_xlabel("concepts forgotten" if kind == "concepts" else "% of training pairs forgotten")
            ax.grid(True, alpha=0.3)
    legend = {name: handle for ax in axes.ravel() for handle, name in zip(*ax.get_legend_handles_labels())}
    fig.legend(list(legend.values()), list(legend), loc="center right", fontsize=8, frameon=False)
    fig.suptitle(f"{kind} requests: mean over seeds with 95% bands")
    fig.subplots_adjust(right=1 - 1.5 / (4.6 * len(geometries) + 1.6), top=1 - 0.7 / (3.2 * len(metrics)),
                        hspace=0.5, wspace=0.3)
    return _save(fig, path)


def _band(metric: str, points: Sequence[tuple]) -> tuple[list[float], list[float]]:
    """The 95% band of ``points`` (size, summary), clipped to 0..100 for a percentage metric."""
    low, high = [p[1]["low"] for p in points], [p[1]["high"] for p in points]
    if metric.startswith(PERCENT_PREFIXES):
        low, high = [max(0.0, v) for v in low], [min(100.0, v) for v in high]
    return low, high


def _headline(rows: Sequence[Mapping], path: Path) -> Path | None:
    """The study's headline: each :data:`HEADLINE` model's test forget and retain accuracy against
    the number of concepts forgotten, with 95% bands, in one panel per metric."""
    from vlunlearn.report.figures import _new_figure, _save

    chosen = [r for r in rows if r["kind"] == "concepts"]
    lines = [(name, [r for r in chosen if (r["geometry"], r["label"]) == key], style, colour)
             for name, key, style, colour in HEADLINE]
    if sum(bool(found) for _, found, _, _ in lines) < 2:
        return None
    fig = _new_figure(10.0, 3.8)
    for ax, (metric, title) in zip(fig.subplots(1, 2), (("zs_test_forget", "test forget top-1 %"),
                                                          ("zs_test_retain", "test retain top-1 %"))):
        for name, found, style, colour in lines:
            points = sorted(((r["size"], r["metrics"][metric]) for r in found if metric in r["metrics"]),
                            key=lambda p: sort_order(p[0]))
            if points:
                x = [p[0] for p in points]
                ax.plot(x, [p[1]["mean"] for p in points], style, color=colour, marker="o", label=name)
                ax.fill_between(x, *_band(metric, points), color=colour, alpha=0.12)
        ax.set_xlabel("concepts forgotten")
        ax.set_title(title, fontsize=9)
        ax.set_ylim(-2, 102)
        ax.grid(True, alpha=0.3)
    fig.axes[0].legend(fontsize=8)
    fig.suptitle("CLIP+AC vs MERU+HAC against their retrained oracles: mean over seeds, 95% bands")
    return _save(fig, path)


def _ablation_bars(records: Sequence[Record], path: Path) -> Path | None:
    """Combined score (lower is better) of each method with variants and of its variants, per geometry."""
    from vlunlearn.report.figures import _new_figure, _save

    families = list(dict.fromkeys((field(r, "kind"), field(r, "geometry"), r.get("method")) for r in records
                                  if r.get("label") != r.get("method")))
    panels = []
    for kind, geometry, method in families:
        chosen = select(records, {"kind": kind, "geometry": geometry, "method": method})
        score = combined_score(select(records, {"kind": kind}), kind)
        labels = [method] + [label for label in dict.fromkeys(r.get("label") for r in chosen) if label != method]
        bars = {label: spread([v for v in (score(r) for r in select(chosen, {"label": label})) if v is not None])
                for label in labels}
        bars = {label: s for label, s in bars.items() if s["n"]}
        if bars:
            panels.append((f"{method} · {geometry} · {kind}", bars))
    if not panels:
        return None
    fig = _new_figure(max(4.0, 1.2 * max(len(b) for _, b in panels) + 1.5) * len(panels), 4.2)
    for ax, (title, bars) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        means = [s["mean"] for s in bars.values()]
        errors = np.array([[s["mean"] - s["low"], s["high"] - s["mean"]] for s in bars.values()]).T  # (2, bars)
        ax.bar(range(len(bars)), means, yerr=errors, capsize=4, color=["tab:blue"] + ["tab:gray"] * (len(bars) - 1))
        ax.set_xticks(range(len(bars)), list(bars), rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("combined score (points, lower is better)")
        ax.set_title(title, fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("Ablations: mean over seeds and request sizes, 95% error bars")
    return _save(fig, path)


def _hierarchy_view(records: Sequence[Record], path: Path) -> Path | None:
    """Landing shares of CLIP original/ac and MERU original/hac, and MERU's forget-image d0 before/after."""
    from vlunlearn.report.figures import _new_figure, _save

    concepts = select(records, {"kind": "concepts"})
    models = [("CLIP original", "euclidean", "original"), ("CLIP+ac", "euclidean", "ac"),
              ("MERU original", "lorentz", "original"), ("MERU+hac", "lorentz", "hac")]
    shares = {}
    for name, geometry, label in models:
        chosen = select(concepts, {"geometry": geometry, "label": label})
        values = {r: [v for v in ((c.get("metrics") or {}).get(f"landing_{r}") for c in chosen)
                      if isinstance(v, (int, float)) and math.isfinite(v)] for r in LANDING}
        if all(values.values()):
            shares[name] = {r: float(np.mean(v)) for r, v in values.items()}
    d0 = {}
    for label, when in (("original", "before"), ("hac", "after")):
        values = [x for r in select(concepts, {"geometry": "lorentz", "label": label})
                  for x in (r.get("artifacts") or {}).get("input_d0") or []]
        if values:
            d0[f"{label} ({when})"] = values
    if not shares and not d0:
        return None
    fig = _new_figure(11.0, 4.2)
    left, right = fig.subplots(1, 2)
    bottom = np.zeros(len(shares))
    for relation, colour in zip(LANDING, ("tab:green", "tab:olive", "tab:blue", "tab:cyan", "tab:red")):
        heights = np.array([s[relation] for s in shares.values()])
        left.bar(list(shares), heights, bottom=bottom, color=colour, label=relation)
        bottom += heights
    left.set_ylabel("share of forget images (mean over cells)")
    left.set_title("Where forget images land (nearest concept vs their class)", fontsize=9)
    left.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(LANDING), frameon=False)
    for name, values in d0.items():
        right.hist(values, bins=30, histtype="step", linewidth=1.6, label=f"{name} (n={len(values)})")
    right.set_xlabel("MERU forget-image distance to the origin")
    right.set_title("MERU: forget images before and after HAC", fontsize=9)
    if d0:
        right.legend(fontsize=7)
    fig.suptitle("Hierarchy view: CLIP+ac and MERU+hac (all concept requests pooled)")
    return _save(fig, path)


def _figures(out: Path, records: Sequence[Record], rows: Sequence[Mapping]) -> list[str]:
    figure_dir = out / "figures"
    kinds = sorted({str(field(r, "kind")) for r in records})
    made = [_headline(rows, figure_dir / "headline.png")]
    made += [_curves(rows, kind, figure_dir / f"curves_{kind}.png") for kind in kinds]
    made.append(_ablation_bars(records, figure_dir / "ablations.png"))
    made.append(_hierarchy_view(records, figure_dir / "hierarchy.png"))
    return [p.relative_to(out).as_posix() for p in made if p is not None]


def write_study_report(out: str | Path) -> Path:
    """Write ``summary.json``, the figures and ``report.md`` of the study folder ``out``; returns the report's path."""
    out = Path(out)
    records, failures = load_records(out)
    info = _study_info(out, records)
    rows = summarise(records)
    claims, not_measured = evaluate_claims(records, info["claims"])
    figures = _figures(out, records, rows) if records and _matplotlib_available() else []
    write_json(out / "summary.json", _plain({
        "study": info["name"], "seeds": info["seeds"], "cells": {"done": len(records), "failed": len(failures)},
        "failures": [{"cell": f.get("cell"), "error": f.get("error")} for f in failures],
        "claims": claims, "not_measured": not_measured, "rows": rows, "figures": figures,
    }))
    path = out / "report.md"
    atomic_write_text(path, render_study_report(info, records, failures, rows, claims, not_measured, figures))
    return path
