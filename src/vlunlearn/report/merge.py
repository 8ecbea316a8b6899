"""Merge the records of runs made with several seeds into one record per method, with spreads.

Runs over the same data with different ``--seed`` values hold one record per (model, geometry,
forget, method) and seed. :func:`merge_seeds` turns them into one record per (model, geometry,
forget, method) whose ``metrics`` are the means over seeds and whose ``spread`` gives, per
metric, the standard deviation over seeds (``ddof=1``), a 95% Student-t interval of the mean
and the number of seeds that reported it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from vlunlearn.evaluation.oracle import as_number

__all__ = ["merge_seeds", "record_key", "seed_spread"]


def record_key(record: Mapping[str, Any]) -> tuple:
    """``(model, geometry, forget, method)`` of a record."""
    forget = record.get("forget") or ()
    return (record.get("model"), record.get("geometry"), tuple([forget] if isinstance(forget, str) else forget),
            record.get("method"))


def seed_spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, standard deviation (ddof=1) and 95% t-interval of the mean of per-seed values.

    One value gives std 0 and an interval collapsed on the value. Returns ``{"mean", "std",
    "low", "high", "n"}``.
    """
    array = np.asarray(values, dtype=np.float64)
    mean = float(array.mean())
    if len(array) < 2:
        return {"mean": mean, "std": 0.0, "low": mean, "high": mean, "n": len(array)}
    std = float(array.std(ddof=1))
    half = float(stats.t.ppf(0.975, len(array) - 1)) * std / math.sqrt(len(array))
    return {"mean": mean, "std": std, "low": mean - half, "high": mean + half, "n": len(array)}


def merge_seeds(records: Sequence[Mapping[str, Any]]) -> list[dict]:
    """One record per :func:`record_key`, in order of first appearance.

    A key seen with one seed keeps its record unchanged. A key seen with several seeds becomes a
    record with ``seeds`` (sorted), ``metrics`` (per-metric mean over the seeds that report a
    number) and ``spread`` (per metric: :func:`seed_spread`); the artifacts of the lowest seed
    are kept for the figures. Two records with the same key and seed: the one with more metrics wins.
    """
    by_key: dict[tuple, dict[Any, Mapping[str, Any]]] = {}
    for record in records:
        seeds = by_key.setdefault(record_key(record), {})
        seed = record.get("seed")
        if len((record.get("metrics") or {})) >= len((seeds.get(seed) or {}).get("metrics") or {}):
            seeds[seed] = record
    merged = []
    for seeds in by_key.values():
        if len(seeds) == 1:
            merged.append(dict(next(iter(seeds.values()))))
            continue
        ordered = [seeds[s] for s in sorted(seeds, key=lambda s: (s is None, s))]
        names = dict.fromkeys(k for r in ordered for k in (r.get("metrics") or {}))
        spread = {}
        for name in names:
            values = [as_number((r.get("metrics") or {}).get(name)) for r in ordered]
            values = [v for v in values if v is not None]
            if values:
                spread[name] = seed_spread(values)
        merged.append({
            **ordered[0],
            "seed": None,
            "seeds": [r.get("seed") for r in ordered],
            "metrics": {name: value["mean"] for name, value in spread.items()},
            "spread": spread,
        })
    return merged
