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
from torch import Tensor

from vlunlearn.errors import VlunlearnError
from vlunlearn.evaluation.alignment import alignment_gap
from vlunlearn.evaluation.oracle import as_number
from vlunlearn.io import atomic_path
from vlunlearn.report.markdown import group_key

__all__ = [
    "alignment_heatmaps",
    "distance_histograms",
    "poincare_disk",
    "to_disk_2d",
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


def alignment_heatmaps(
    matrices: Mapping[str, Any],
    path: str | Path,
    title: str,
    gaps: Mapping[str, float] | None = None,
    forget_rows: int | None = None,
) -> Path:
    """One heatmap per entry of ``matrices`` (name -> square matrix ``A_ij = s(v_i, t_j)``),
    side by side with a shared colour scale and one colour bar; each panel is titled with
    its name and alignment gap (from ``gaps``, else AC's plain gap of the matrix). When the
    first ``forget_rows`` rows/columns are forget pairs and the rest contrast pairs, dashed
    lines separate the blocks. Returns ``path``."""
    if not matrices:
        raise ValueError("alignment_heatmaps needs at least one matrix")
    arrays = {name: np.asarray(m, dtype=float) for name, m in matrices.items()}
    for name, a in arrays.items():
        if a.ndim != 2 or a.shape[0] != a.shape[1]:
            raise ValueError(f"alignment matrix {name!r} must be square, got shape {a.shape}")
    finite = np.concatenate([a[np.isfinite(a)] for a in arrays.values()] + [np.zeros(0)])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmin == vmax:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    k = len(arrays)
    fig = _new_figure(3.6 * k + 0.8, 3.9)
    axes = fig.subplots(1, k, squeeze=False)[0]
    image = None
    for ax, (name, a) in zip(axes, arrays.items()):
        image = ax.imshow(a, vmin=vmin, vmax=vmax, cmap="viridis", interpolation="nearest")
        gap = (gaps or {}).get(name)
        if gap is None:
            gap = alignment_gap(torch.as_tensor(a)) if len(a) > 1 else math.nan
        ax.set_title(f"{name}\ngap = {gap:.3f}", fontsize=10)
        split = forget_rows is not None and 0 < forget_rows < len(a)
        if split:
            for draw in (ax.axhline, ax.axvline):
                draw(forget_rows - 0.5, color="white", linestyle="--", linewidth=1)
        ax.set_xlabel("caption j" + (" (forget | retain)" if split else ""))
        if ax is axes[0]:
            ax.set_ylabel("image i" + (" (forget | retain)" if split else ""))
    fig.colorbar(image, ax=list(axes), shrink=0.85, label="similarity s(v_i, t_j)")
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


def to_disk_2d(x: Tensor, c: float) -> np.ndarray:
    """A 2-D Poincare-disk view of Lorentz points that keeps each point's distance to the origin.

    ``x`` holds the space components ``(N, D)`` of points on the hyperboloid of curvature
    ``-c``. Each point is mapped to the tangent space at the origin with ``log_map0``; the
    norm of that vector is its geodesic distance to the origin ``d0``. Directions come from
    PCA: the centred tangent vectors are decomposed with ``torch.linalg.svd``, each vector
    is projected on the top two right singular vectors and the projection is normalised to
    unit length (a point whose projection vanishes is put on the first axis). The radius is
    ``tanh(sqrt(c) * d0 / 2)``: the Poincare-ball radius of a point at geodesic distance
    ``d0`` in curvature ``-c`` (``tanh(sqrt(c) d0 / 2) / sqrt(c)``) rescaled to the unit disk,
    so it is always in ``[0, 1)``. Distances to the origin are kept exactly; distances
    between points are only indicative (the angles are a linear projection).

    Returns a float64 array ``(N, 2)``.
    """
    from vlunlearn.geometry.lorentz import log_map0

    if x.ndim != 2:
        raise ValueError(f"to_disk_2d expects (N, D) space components, got shape {tuple(x.shape)}")
    if not c > 0:
        raise ValueError(f"the curvature magnitude c must be positive, got {c}")
    v = log_map0(x.detach().to(torch.float64).cpu(), float(c))
    n, dim = v.shape
    if n == 0:
        return np.zeros((0, 2))
    d0 = v.norm(dim=-1)
    centred = v - v.mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    components = vh[:2].T  # (D, <=2)
    if components.shape[1] < 2:  # D == 1 or N == 1
        components = torch.cat([components, torch.zeros(dim, 2 - components.shape[1], dtype=v.dtype)], dim=1)
    projected = v @ components  # (N, 2)
    norms = projected.norm(dim=-1, keepdim=True)
    fallback = torch.tensor([1.0, 0.0], dtype=v.dtype).expand_as(projected)
    direction = torch.where(norms > 1e-12, projected / norms.clamp(min=1e-12), fallback)
    radius = torch.tanh(math.sqrt(c) * d0 / 2)
    return (direction * radius[:, None]).numpy()


def poincare_disk(
    points: Mapping[str, Any],
    path: str | Path,
    title: str,
    labels: Mapping[str, Sequence[str]] | None = None,
) -> Path:
    """One Poincare-disk panel per entry of ``points`` (name -> ``(N, 2)`` array inside the
    unit disk, see :func:`to_disk_2d`), with the unit circle, equal aspect and points
    coloured by ``labels[name]`` (one label per point) with a legend. Returns ``path``."""
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
        ax.set_xlim(-1.05, 1.05)
        ax.set_ylim(-1.05, 1.05)
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
