"""Peak memory and wall time of every unlearning method against the retrain oracle.

For each geometry (CLIP, MERU) the tiny model is pretrained on the built-in data with a
short recipe (``--pretrain-steps``); then the oracle (``retrain``: the same recipe on D_r)
and every method (``hac`` on Lorentz only) unlearn the request (``--forget``, default
``sneaker``). Each ``vlunlearn.unlearn`` call runs in a fresh process, because the CPU figure
of ``vlunlearn.evaluation.oracle.peak_memory`` is the process's lifetime high-water mark
(``ru_maxrss``): in one process every method after the oracle would hide under its peak. A
spawned process starts from its parent's high-water mark, so pretraining runs in a fresh
process too and the parent only imports and waits.

Reported per method: wall seconds of the call; peak MB, the process's peak resident memory
(imports, data and model included); rise MB, how far that peak rose during the call (the
call's own extra memory); and each one's ratio to retrain's, measured in the same run. A
time ratio of 0.05 means the method takes 5% of the time of retraining *with the short
recipe*; the methods' step budgets do not depend on the recipe, so against the full recipe
(468 steps) every time ratio is about ``--pretrain-steps`` / 468 times this one. Memory
ratios do not depend on the number of steps. Also reported: the host memory and time of one NaN-recovery
snapshot (weights and AdamW moments), which training takes every 10 steps for models of this size.

    python benchmarks/method_memory.py [--pretrain-steps 60] [--out benchmarks/results]

Writes ``method_memory.json`` (environment, config, raw numbers) and ``method_memory.md``.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from vlunlearn import unlearn
from vlunlearn.data import Tokenizer, UnlearningRequest, load_builtin, make_splits
from vlunlearn.evaluation.oracle import peak_memory
from vlunlearn.models import load_model, save_model
from vlunlearn.training.pretrain import PretrainConfig, pretrain

from _common import GEOMETRY_METHODS, cell, markdown_table, snapshot_cost, write_results

NAME = "method_memory"
MB = 2**20
T = TypeVar("T")


def save_original(recipe: PretrainConfig, data: str, checkpoint: Path) -> None:
    """Pretrain the original with ``recipe`` on the training split of ``data`` and save it to ``checkpoint``."""
    original, _ = pretrain(recipe, load_builtin(data, "train"), tokenizer=Tokenizer(), progress=False)
    save_model(original, checkpoint)


def measure(checkpoint: Path, recipe: PretrainConfig, data: str, forget: tuple[str, ...], method: str) -> dict:
    """Unlearn ``forget`` from the model at ``checkpoint`` with ``method``; its seconds, steps and memory."""
    tokenizer = Tokenizer()
    original = load_model(checkpoint)
    splits = make_splits(load_builtin(data, "train"), load_builtin(data, "test"),
                         UnlearningRequest(concepts=forget))
    gc.collect()
    started = time.perf_counter()
    with peak_memory() as peak:
        _, record = unlearn(original, splits, method, recipe=recipe, tokenizer=tokenizer, progress=False)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "steps": record.steps, "peak_bytes": peak.cpu_start_bytes + peak.cpu_bytes,
            "rise_bytes": peak.cpu_bytes, "cuda_bytes": peak.cuda_bytes}


def in_fresh_process(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a new (spawned) process, so that its memory peak is its own."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--forget", nargs="+", default=["sneaker"], help="concepts of the request")
    parser.add_argument("--geometries", nargs="+", default=["euclidean", "lorentz"])
    parser.add_argument("--pretrain-steps", type=int, default=60, help="steps of the original's and retrain's recipe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    forget = tuple(args.forget)
    recipes = {g: PretrainConfig(geometry=g, steps=args.pretrain_steps, seed=args.seed) for g in args.geometries}

    rows, snapshots = [], {}
    with tempfile.TemporaryDirectory() as folder:
        for geometry, recipe in recipes.items():
            checkpoint = Path(folder) / geometry
            in_fresh_process(save_original, recipe, args.data, checkpoint)
            measured = {}
            for method in ("retrain", *GEOMETRY_METHODS[geometry]):
                measured[method] = in_fresh_process(measure, checkpoint, recipe, args.data, forget, method)
                print(f"{geometry} {method}: {measured[method]}", flush=True)
            oracle = measured["retrain"]
            seconds, host_mb = snapshot_cost(load_model(checkpoint))
            snapshots[geometry] = {"seconds": seconds, "host_mb": host_mb,
                                   "share_of_retrain_step": seconds / (oracle["seconds"] / oracle["steps"])}
            for method, cost in measured.items():
                row = {"geometry": geometry, "method": method, **cost}
                for key in ("seconds", "peak_bytes", "rise_bytes"):
                    known = cost[key] is not None and oracle[key]
                    row[f"{key}_ratio_to_retrain"] = cost[key] / oracle[key] if known else None
                rows.append(row)

    header = ["geometry", "method", "seconds", "/ retrain", "peak MB", "/ retrain", "rise MB", "/ retrain"]
    cells = [[row["geometry"], row["method"],
              cell(row["seconds"], ".1f"), cell(row["seconds_ratio_to_retrain"], ".3f"),
              cell(row["peak_bytes"], ".0f", MB), cell(row["peak_bytes_ratio_to_retrain"], ".3f"),
              cell(row["rise_bytes"], ".0f", MB), cell(row["rise_bytes_ratio_to_retrain"], ".3f")] for row in rows]
    config = {**{k: v for k, v in vars(args).items() if k != "out"},
              "recipes": {g: recipe.to_dict() for g, recipe in recipes.items()}}
    notes = "".join(
        f"\nNaN-recovery snapshot ({geometry}): {s['host_mb']:.0f} MB of host memory and "
        f"{1e3 * s['seconds']:.0f} ms per copy, {s['share_of_retrain_step']:.3f} of a retrain step.\n"
        for geometry, s in snapshots.items())
    write_results(args.out / f"{NAME}.json", args.out / f"{NAME}.md",
                  {"config": config, "rows": rows, "snapshots": snapshots}, markdown_table(header, cells, 2) + notes)


if __name__ == "__main__":
    main()
