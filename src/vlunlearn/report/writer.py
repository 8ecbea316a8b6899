"""Write a run's report folder: ``results.json``, ``figures/*.png`` and ``report.md`` (DESIGN §6).

A folder that already holds a ``results.json`` is refused, so a finished run is never
overwritten. Every file is written atomically. Figures need matplotlib (the ``report``
extra); without it ``results.json`` and ``report.md`` are still written and the report
says that no figures were produced.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlunlearn.errors import VlunlearnError
from vlunlearn.evaluation.oracle import as_number
from vlunlearn.evaluation.suite import NOT_APPLICABLE
from vlunlearn.io import atomic_write_text
from vlunlearn.report.markdown import group_records, order_methods, render_report
from vlunlearn.runs import SCHEMA_VERSION, write_json

__all__ = ["write_report", "safe_name"]

_UNSAFE = re.compile(r"[^A-Za-z0-9+_-]+")
_UNLEARN_PREFERRED = ("ac", "hac")
SCATTER_KEYS = ("zs_test_forget", "zs_test_retain")  # the scatter's x and y


def safe_name(text: str) -> str:
    """``text`` with every run of characters outside ``[A-Za-z0-9+_-]`` replaced by ``_``."""
    cleaned = _UNSAFE.sub("_", str(text)).strip("_")
    return cleaned or "none"


def _artifact(record: Mapping[str, Any], key: str) -> Any:
    return (record.get("artifacts") or {}).get(key)


def _has(record: Mapping[str, Any], key: str) -> bool:
    value = _artifact(record, key)
    return value is not None and len(value) > 0


def _methods(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in records if r.get("method") not in ("original", "retrain")]


def _alignment_panels(records: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], dict[str, float], int | None]:
    """original, retrain, then ac/hac when present, else the first method: at most 4 panels.

    Returns (name -> matrix, name -> recorded alignment gap, forget rows of the matrices)."""
    with_matrix = [r for r in order_methods(records) if _has(r, "alignment_matrix")]
    chosen = [r for r in with_matrix if r.get("method") in ("original", "retrain")]
    others = _methods(with_matrix)
    preferred = [r for r in others if r.get("method") in _UNLEARN_PREFERRED]
    chosen += preferred if preferred else others[:1]
    panels: dict[str, Any] = {}
    gaps: dict[str, float] = {}
    for record in chosen[:4]:
        name = str(record.get("method"))
        while name in panels:
            name += "'"
        panels[name] = _artifact(record, "alignment_matrix")
        gap = as_number((record.get("metrics") or {}).get("alignment_gap"))
        if gap is not None:
            gaps[name] = gap
        elif "alignment_gap" in (_artifact(record, NOT_APPLICABLE) or {}):
            gaps[name] = math.nan  # not defined on these pairs: no gap is recomputed from the matrix
    forget_rows = _artifact(chosen[0], "alignment_forget_rows") if chosen else None
    return panels, gaps, forget_rows


def _disk_panels(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """before = original, after = hac (else the first method) with disk points.

    Returns the keyword arguments of :func:`figures.poincare_disk` that hold data: ``points``,
    ``labels``, ``prompt_points`` and ``prompt_labels`` (panel name -> artifact)."""
    with_points = [r for r in records if _has(r, "disk_points")]
    before = next((r for r in with_points if r.get("method") == "original"), None)
    others = _methods(with_points)
    after = next((r for r in others if r.get("method") == "hac"), others[0] if others else None)
    panels: dict[str, dict[str, Any]] = {"points": {}, "labels": {}, "prompt_points": {}, "prompt_labels": {}}
    for tag, record in (("before (original)", before), (f"after ({after.get('method') if after else ''})", after)):
        if record is None:
            continue
        panels["points"][tag] = np.asarray(_artifact(record, "disk_points"), dtype=float)
        for key, artifact in (("labels", "disk_labels"), ("prompt_labels", "disk_prompt_labels")):
            if _artifact(record, artifact) is not None:
                panels[key][tag] = [str(name) for name in _artifact(record, artifact)]
        if _has(record, "disk_prompt_points"):
            panels["prompt_points"][tag] = np.asarray(_artifact(record, "disk_prompt_points"), dtype=float)
    return panels


def _matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _scatter_gap(records: Sequence[Mapping[str, Any]]) -> str | None:
    """Why no record can be placed on the forget-vs-retain scatter, or ``None`` when one can."""
    if any(all(as_number((r.get("metrics") or {}).get(key)) is not None for key in SCATTER_KEYS) for r in records):
        return None
    reasons = dict.fromkeys(str(reason) for record in records
                            for key, reason in (_artifact(record, NOT_APPLICABLE) or {}).items() if key in SCATTER_KEYS)
    why = "; ".join(reasons)
    return "no record has both test-forget and test-retain zero-shot accuracy" + (f" ({why})" if why else "")


def _draw_figures(records: Sequence[Mapping[str, Any]], figure_dir: Path) -> tuple[list[Path], list[str]]:
    """Draw every figure the records have inputs for. Returns the written paths and one line per
    figure left out for want of inputs (which figure, why)."""
    from vlunlearn.report import figures as fig

    used: set[str] = set()
    paths: list[Path] = []
    skipped: list[str] = []

    def name_for(kind: str, model: str, geometry: str, forget: tuple[str, ...]) -> Path:
        stem = f"{kind}_{safe_name(geometry)}_{safe_name('+'.join(forget))}"
        if stem in used:
            stem = f"{kind}_{safe_name(model)}_{safe_name(geometry)}_{safe_name('+'.join(forget))}"
        base, n = stem, 2
        while stem in used:
            stem, n = f"{base}_{n}", n + 1
        used.add(stem)
        return figure_dir / f"{stem}.png"

    for (model, geometry, forget), group in group_records(records).items():
        label = f"{model} · {geometry} · forget {', '.join(forget) or '(nothing)'}"
        panels, gaps, forget_rows = _alignment_panels(group)
        if panels:
            path = name_for("alignment", model, geometry, forget)
            paths.append(fig.alignment_heatmaps(
                panels, path, f"Alignment audit: {label}", gaps=gaps, forget_rows=forget_rows, geometry=geometry,
            ))
        else:
            skipped.append(f"alignment heatmaps of {label}: no record has an alignment matrix")
        if geometry == "lorentz":
            d0 = {str(r.get("method")): _artifact(r, "input_d0") for r in order_methods(group) if _has(r, "input_d0")}
            if d0:
                path = name_for("d0", model, geometry, forget)
                title = f"Forget inputs' distance to the origin: {label}"
                paths.append(fig.distance_histograms(d0, path, title, xlabel="d0 (geodesic)"))
            else:
                skipped.append(f"d0 histograms of {label}: no record has forget inputs' distances to the origin")
        disk = _disk_panels(group)
        if disk["points"]:
            path = name_for("disk", model, geometry, forget)
            kind = "Poincare disk" if geometry == "lorentz" else "Disk view"
            extra = {key: value or None for key, value in disk.items() if key != "points"}
            paths.append(fig.poincare_disk(disk["points"], path, f"{kind}: {label}", **extra))
        elif geometry == "lorentz":
            skipped.append(f"Poincare disk of {label}: no record has disk points")
    gap = _scatter_gap(records)
    if gap is None:
        paths.append(fig.forget_retain_scatter(records, figure_dir / "scatter.png", "Forget vs retain accuracy (test)"))
    else:
        skipped.append(f"forget-vs-retain scatter: {gap}")
    return paths, skipped


def write_report(results: Mapping[str, Any], out: Path) -> list[Path]:
    """Write ``results.json``, the figures under ``out/figures/`` and ``report.md``.

    ``results`` is the results document (``config``, ``environment``, ``data``, ``records``;
    a ``schema_version`` key is replaced by the current one). Figures, per (model, geometry,
    forget) group: ``alignment_<geometry>_<forget>.png`` (records with
    ``artifacts.alignment_matrix``), ``d0_<geometry>_<forget>.png`` (Lorentz groups, from
    ``artifacts.input_d0``), ``disk_<geometry>_<forget>.png`` (``artifacts.disk_points``, with
    ``disk_prompt_points``/``disk_prompt_labels`` when present);
    and ``scatter.png`` over the records with test-forget and test-retain accuracy. When two
    groups would share a file name the model name is added. A figure without inputs is left
    out and ``report.md`` says which and why in one line. Raises :class:`VlunlearnError` when
    ``out/results.json`` already exists. Returns the written paths (results.json, figures, report.md).
    """
    out = Path(out)
    if (out / "results.json").exists():
        raise VlunlearnError(f"{out} already holds a results.json; choose a new output folder")
    if out.exists() and not out.is_dir():
        raise VlunlearnError(f"{out} exists and is not a folder")
    payload = {k: v for k, v in dict(results).items() if k != "schema_version"}
    records = list(payload.get("records") or [])

    written: list[Path] = []
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", payload)
    written.append(out / "results.json")

    figure_paths, skipped = _draw_figures(records, out / "figures") if _matplotlib_available() else ([], [])
    written += figure_paths

    relative = [p.relative_to(out).as_posix() for p in figure_paths]
    document = {"schema_version": SCHEMA_VERSION, **payload}
    atomic_write_text(out / "report.md", render_report(document, figures=relative, skipped_figures=skipped))
    written.append(out / "report.md")
    return written
