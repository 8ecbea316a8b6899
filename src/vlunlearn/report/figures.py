"""Report figures (DESIGN §6): alignment heatmaps, d0 histograms, Poincare-disk views and a
forget-vs-retain scatter.

matplotlib is an optional extra (``pip install vlunlearn[report]``); it is imported only
inside the functions that draw, and figures are rendered with the Agg canvas directly
(``matplotlib.figure.Figure`` + ``FigureCanvasAgg``), so no global backend is set or needed.
Every figure is written atomically through :func:`vlunlearn.io.atomic_path`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlunlearn.errors import VlunlearnError
from vlunlearn.evaluation.alignment import alignment_gap
from vlunlearn.evaluation.oracle import as_number
from vlunlearn.io import atomic_path
from vlunlearn.report.markdown import MISSING, group_key

__all__ = [
    "alignment_heatmaps",
    "heatmap_scale",
    "distance_histograms",
    "poincare_disk",
    "forget_retain_scatter",
]

DPI = 120


def _new_figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise VlunlearnError("figures need matplotlib: pip install 'vlunlearn[report]'") from error
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    return path


def heatmap_scale(matrices: Mapping[str, Any], geometry: str | None = None) -> tuple[float, float, str]:
    """The colour scale shared by every panel of one alignment figure: ``(vmin, vmax, label)``.

    Euclidean: cosine similarities, fixed ``[-1, 1]``. Lorentz: negative geodesic distances
    (``<= 0``), from the smallest to the largest finite value over all ``matrices``. Unknown
    geometry (``None``): the same min/max with a generic label. A constant range is widened
    by 0.5 on each side."""
    if geometry == "euclidean":
        return -1.0, 1.0, "cosine similarity s(v_i, t_j)"
    label = "negative geodesic distance s(v_i, t_j)" if geometry == "lorentz" else "similarity s(v_i, t_j)"
    arrays = [np.asarray(m, dtype=float) for m in matrices.values()]
    finite = np.concatenate([a[np.isfinite(a)] for a in arrays] + [np.zeros(0)])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (-1.0, 0.0)
    if vmin == vmax:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    return vmin, vmax, label


def alignment_heatmaps(
    matrices: Mapping[str, Any],
    path: str | Path,
    title: str,
    gaps: Mapping[str, float] | None = None,
    forget_rows: int | None = None,
    geometry: str | None = None,
) -> Path:
    """One heatmap per entry of ``matrices`` (name -> square matrix ``A_ij = s(v_i, t_j)``),
    side by side with one colour scale for all panels, chosen by ``geometry``
    (:func:`heatmap_scale`), and one colour bar; each panel is titled with its name and
    alignment gap (from ``gaps``, else AC's plain gap of the matrix; ``–`` when NaN). When the first
    ``forget_rows`` rows/columns are forget pairs and the rest contrast pairs, dashed lines
    separate the blocks. Returns ``path``."""
    if not matrices:
        raise ValueError("alignment_heatmaps needs at least one matrix")
    arrays = {name: np.asarray(m, dtype=float) for name, m in matrices.items()}
    for name, a in arrays.items():
        if a.ndim != 2 or a.shape[0] != a.shape[1]:
            raise ValueError(f"alignment matrix {name!r} must be square, got shape {a.shape}")
    vmin, vmax, bar_label = heatmap_scale(arrays, geometry)
    k = len(arrays)
    fig = _new_figure(3.6 * k + 0.8, 3.9)
    axes = fig.subplots(1, k, squeeze=False)[0]
    image = None
    for ax, (name, a) in zip(axes, arrays.items()):
        image = ax.imshow(a, vmin=vmin, vmax=vmax, cmap="viridis", interpolation="nearest")
        gap = (gaps or {}).get(name)
        if gap is None:
            gap = alignment_gap(torch.as_tensor(a)) if len(a) > 1 else math.nan
        ax.set_title(f"{name}\ngap = {f'{gap:.3f}' if math.isfinite(gap) else MISSING}", fontsize=10)
        split = forget_rows is not None and 0 < forget_rows < len(a)
        if split:
            for draw in (ax.axhline, ax.axvline):
                draw(forget_rows - 0.5, color="white", linestyle="--", linewidth=1)
        ax.set_xlabel("caption j" + (" (forget | retain)" if split else ""))
        if ax is axes[0]:
            ax.set_ylabel("image i" + (" (forget | retain)" if split else ""))
    fig.colorbar(image, ax=list(axes), shrink=0.85, label=bar_label)
    fig.suptitle(title)
    return _save(fig, path)


def distance_histograms(
    distances: Mapping[str, Sequence[float]],
    path: str | Path,
    title: str,
    xlabel: str = "distance to origin",
) -> Path:
    """Overlaid step histograms, one per entry (shared bins), with a legend. Returns ``path``."""
    if not distances:
        raise ValueError("distance_histograms needs at least one series")
    series = {name: np.asarray(v, dtype=float).ravel() for name, v in distances.items()}
    series = {name: v[np.isfinite(v)] for name, v in series.items()}
    everything = np.concatenate(list(series.values()) + [np.zeros(0)])
    if everything.size:
        low, high = float(everything.min()), float(everything.max())
        if low == high:
            low, high = low - 0.5, high + 0.5
    else:
        low, high = 0.0, 1.0
    bins = np.linspace(low, high, 31)
    fig = _new_figure(6.0, 4.0)
    ax = fig.subplots()
    for name, values in series.items():
        ax.hist(values, bins=bins, histtype="step", linewidth=1.6, label=f"{name} (n={values.size})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)


DISK_LIMIT = 1.05  # both axes of every disk panel run over [-DISK_LIMIT, DISK_LIMIT]


def _draw_prompts(ax, points: np.ndarray, names: Sequence[str]) -> None:
    """Concept prompt centroids ``(K, 2)``: a black star with the concept's name beside it."""
    if not len(points):
        return
    ax.scatter(points[:, 0], points[:, 1], marker="*", s=70, color="black", edgecolor="white", linewidth=0.5, zorder=4)
    for (x, y), name in zip(points, names):
        ax.annotate(str(name), (x, y), xytext=(3, 3), textcoords="offset points", fontsize=6, zorder=5)


def poincare_disk(
    points: Mapping[str, Any],
    path: str | Path,
    title: str,
    labels: Mapping[str, Sequence[str]] | None = None,
    prompt_points: Mapping[str, Any] | None = None,
    prompt_labels: Mapping[str, Sequence[str]] | None = None,
) -> Path:
    """One disk panel per entry of ``points`` (name -> ``(N, 2)`` array inside the unit disk,
    see :mod:`vlunlearn.report.disk`), with the unit circle, equal aspect, the same axes
    limits on every panel and points coloured by ``labels[name]`` (one label per point) with
    a legend. ``prompt_points[name]`` ``(K, 2)`` with ``prompt_labels[name]`` (``K`` concept
    names) are drawn as labelled stars (on a hyperbolic view generic concepts sit near the
    centre). Returns ``path``."""
    if not points:
        raise ValueError("poincare_disk needs at least one set of points")
    arrays = {name: np.asarray(p, dtype=float).reshape(-1, 2) for name, p in points.items()}
    all_labels: list[str] = []
    for name in arrays:
        for label in (labels or {}).get(name) or []:
            if str(label) not in all_labels:
                all_labels.append(str(label))
    k = len(arrays)
    fig = _new_figure(4.2 * k, 4.6)
    axes = fig.subplots(1, k, squeeze=False)[0]
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(all_labels) <= 10 else "tab20"]
    colour = {label: cmap(i % cmap.N) for i, label in enumerate(all_labels)}
    theta = np.linspace(0, 2 * np.pi, 361)
    for ax, (name, p) in zip(axes, arrays.items()):
        ax.plot(np.cos(theta), np.sin(theta), color="black", linewidth=1.0)
        ax.scatter([0], [0], marker="+", color="black", s=40, zorder=3)
        point_labels = (labels or {}).get(name)
        if point_labels is not None and len(point_labels) == len(p) and len(p):
            names = np.asarray([str(label) for label in point_labels])
            for label in all_labels:
                mask = names == label
                if mask.any():
                    ax.scatter(p[mask, 0], p[mask, 1], s=14, alpha=0.8, color=colour[label], label=label)
            if ax is axes[-1]:
                ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), markerscale=1.2, frameon=False)
        elif len(p):
            ax.scatter(p[:, 0], p[:, 1], s=14, alpha=0.8)
        if (prompt_points or {}).get(name) is not None:
            _draw_prompts(ax, np.asarray(prompt_points[name], dtype=float).reshape(-1, 2), (prompt_labels or {}).get(name) or [])
        ax.set_xlim(-DISK_LIMIT, DISK_LIMIT)
        ax.set_ylim(-DISK_LIMIT, DISK_LIMIT)
        ax.set_aspect("equal")
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    return _save(fig, path)


def forget_retain_scatter(records: Sequence[Mapping[str, Any]], path: str | Path, title: str) -> Path:
    """Test-forget accuracy (x) against test-retain accuracy (y): one panel per (model,
    geometry, forget set) group, one point per record with both metrics, coloured by method
    (the same colour in every panel, one legend); the original is a cross and the retrained
    oracle a star. Axes are zoomed to the group's points. Better unlearning is close to the
    star: low forget and high retain accuracy. Returns ``path``."""
    groups: dict[tuple, list[tuple[str, float, float]]] = {}
    methods: list[str] = []
    for record in records:
        metrics = record.get("metrics") or {}
        x, y = as_number(metrics.get("zs_test_forget")), as_number(metrics.get("zs_test_retain"))
        if x is None or y is None:
            continue
        method = str(record.get("method", "?"))
        groups.setdefault(group_key(record), []).append((method, x, y))
        if method not in methods and method not in ("original", "retrain"):
            methods.append(method)
    if not groups:
        raise ValueError("forget_retain_scatter needs at least one record with test forget and retain accuracy")
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(methods) <= 10 else "tab20"]
    style = {m: {"marker": "o", "s": 60, "color": cmap(i % cmap.N)} for i, m in enumerate(methods)}
    style["original"] = {"marker": "X", "s": 90, "color": "dimgray"}
    style["retrain"] = {"marker": "*", "s": 260, "color": "gold"}
    columns = min(len(groups), 2)
    rows = math.ceil(len(groups) / columns)
    fig = _new_figure(4.4 * columns + 1.8, 3.8 * rows)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    shown: dict[str, Any] = {}
    for ax, ((model, geometry, forget), points) in zip(axes, groups.items()):
        for method, x, y in points:
            handle = ax.scatter([x], [y], edgecolor="black", linewidth=0.6, zorder=3, **style[method])
            shown.setdefault(method, handle)
        xs, ys = [x for _, x, _ in points], [y for _, _, y in points]
        ax.set_xlim(-3, min(100.0, max(xs) + 8))
        ax.set_ylim(max(0.0, min(ys) - 4), min(100.0, max(ys) + 4))
        ax.set_title(f"{model} · {geometry} · forget {'+'.join(map(str, forget)) or '(nothing)'}", fontsize=9)
        ax.set_xlabel("test-forget accuracy (%)")
        ax.set_ylabel("test-retain accuracy (%)")
        ax.grid(True, alpha=0.3)
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    order = [m for m in ("original", "retrain") if m in shown] + [m for m in methods if m in shown]
    fig.legend([shown[m] for m in order], order, loc="center right", fontsize=8, frameon=False)
    fig.suptitle(f"{title}: best is near the retrain star (low forget, high retain)", fontsize=10)
    fig.subplots_adjust(right=1 - 1.6 / (4.4 * columns + 1.8), hspace=0.45, wspace=0.3)
    return _save(fig, path)
