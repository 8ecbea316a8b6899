"""What the benchmark scripts share: the methods per geometry, interleaved timing, Markdown
tables and the results writer."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import os
import time

import torch
from torch.utils.benchmark import Timer

from vlunlearn.io import atomic_write_text
from vlunlearn.methods import available_methods
from vlunlearn.provenance import environment
from vlunlearn.runs import write_json
from vlunlearn.training.loop import _snapshot

# Measure in the setting the ``vlunlearn`` command runs in (cli.main sets it too): CPU tensors of
# 2 MiB and more on transparent huge pages. Takes effect at the first such allocation.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

GEOMETRY_METHODS = {"euclidean": [m for m in available_methods() if m != "hac"], "lorentz": available_methods()}
"""The unlearning methods that run in each geometry (HAC needs hyperbolic space)."""


def timer(fn: Callable[[], object]) -> Timer:
    """A ``torch.utils.benchmark.Timer`` of ``fn()`` with this process's thread count
    (``Timer`` would otherwise run single-threaded); it synchronises CUDA around each block."""
    return Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())


def interleaved(measurements: Mapping[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Call every measurement once per round, in reversed order every other round, so that
    all of them see the same machine state. Returns the values per name, in round order."""
    values: dict[str, list[float]] = {name: [] for name in measurements}
    names = list(measurements)
    for round_index in range(rounds):
        for name in names if round_index % 2 == 0 else reversed(names):
            values[name].append(measurements[name]())
    return values


def cell(value: float | None, spec: str, scale: float = 1) -> str:
    """A table cell: ``value / scale`` formatted with ``spec``, or empty when the value is unknown."""
    return "" if value is None else format(value / scale, spec)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]], text_columns: int) -> str:
    """A Markdown table; the first ``text_columns`` columns are left-aligned, the others right-aligned."""
    align = "|" + "---|" * text_columns + "---:|" * (len(header) - text_columns)
    body = [f"| {' | '.join(str(value) for value in row)} |" for row in rows]
    return "\n".join([f"| {' | '.join(header)} |", align, *body]) + "\n"


def write_results(json_path: Path, md_path: Path, payload: dict[str, Any], table: str) -> None:
    """Write ``payload`` with the environment to ``json_path`` and ``table`` to ``md_path``,
    both atomically, then print the table."""
    write_json(json_path, {"environment": environment(), **payload})
    atomic_write_text(md_path, table)
    print(table, end="")


def snapshot_cost(model, rounds: int = 3) -> tuple[float, float]:
    """``(seconds, host MB)`` of one recovery snapshot of ``model`` with a stepped AdamW's state."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()  # creates the moments a snapshot copies
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        copy = _snapshot(model, optimizer, scheduler, 0, 1.0)
        times.append(time.perf_counter() - started)
    tensors = list(copy["model"].values()) + [v for state in copy["optimizer"]["state"].values()
                                             for v in state.values() if isinstance(v, torch.Tensor)]
    model.zero_grad(set_to_none=True)
    return min(times), sum(t.numel() * t.element_size() for t in tensors) / 2**20
