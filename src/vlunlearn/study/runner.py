"""Running a study: every cell of the grid, wave by wave, through an executor; resumable.

``OUT/study.json`` keeps the resolved spec, the data hash and the grid; each cell writes
``OUT/cells/<id>/record.json`` (atomically, last) or ``failed.json``. A rerun with the same spec
skips the cells that have a record and retries the failed ones; a different spec is refused.
Cells run in dependency waves (the pretraining originals, then the oracles and the originals'
other requests, then the methods), each wave through an executor: ``local`` runs them in this
process (``jobs=1``) or in ``jobs`` spawned worker processes; ``slurm`` submits them with
submitit (the ``cluster`` extra) as a job array and waits for them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from vlunlearn.errors import ConfigError
from vlunlearn.runs import write_json
from vlunlearn.study.grid import Cell, cells, study_data, waves
from vlunlearn.study.report import write_study_report
from vlunlearn.study.spec import StudySpec

EXECUTORS = ("local", "slurm")
KEPT_ARTIFACTS = ("input_d0", "metrics_not_applicable")  # small enough for every record
ORACLE_SCORES = "forget_pair_scores"  # kept in retrain records only: the D_f pair scores of the KS test


def run_study(
    spec: StudySpec,
    out: str | Path,
    jobs: int = 1,
    executor: str = "local",
    progress: bool = True,
    *,
    cluster: str = "slurm",
    executor_parameters: dict[str, Any] | None = None,
) -> dict:
    """Run every cell of ``spec`` not yet done in ``out``, then write the study report.

    ``jobs``: worker processes of the ``local`` executor (each with ``cores // jobs`` threads).
    ``cluster`` and ``executor_parameters`` (e.g. ``{"timeout_min": 60, "slurm_partition":
    "gpu"}``) configure ``submitit.AutoExecutor`` for ``executor="slurm"``; ``cluster="local"``
    runs the same path on this machine. A failed cell writes ``failed.json`` and the others go on;
    the cells that need it fail with ``dependency <id> failed``. With ``progress``, one line per
    finished cell.

    Returns ``{"done", "skipped", "failed"}`` (cell counts of this run) and ``"report"`` (the
    report's path).
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; choose from {list(EXECUTORS)}")
    if jobs < 1:
        raise ConfigError(f"jobs must be at least 1, not {jobs}")
    if executor == "slurm":
        _submitit_module(cluster)  # a clear error before anything is written
    out = Path(out)
    train = study_data(spec)[0]
    grid = cells(spec, train)
    open_study(out, spec, grid, train.content_hash())
    counts = {"done": 0, "skipped": 0, "failed": 0}
    done_before = sum(_has_record(out, cell.id) for cell in grid)
    say = print if progress else (lambda *_: None)
    say(f"study {spec.name}: {len(grid)} cells, {done_before} already done; {executor} executor, {jobs} job(s) -> {out}")
    with contextlib.ExitStack() as stack:
        run = _executor(executor, jobs, spec, out, cluster, executor_parameters or {}, stack)
        for wave in waves(grid):
            _run_wave(wave, run, out, counts, done_before, len(grid), say)
    say(f"study {spec.name}: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed")
    report = write_study_report(out)
    say(f"report: {report}")
    return {**counts, "report": str(report)}


def _run_wave(wave: list[Cell], run: Callable[[list[Cell]], Iterator[dict]], out: Path, counts: dict[str, int],
              done_before: int, total: int, say: Callable[[str], None]) -> None:
    """Skip the wave's done cells, fail those whose dependencies failed, run the others; count them."""
    def line(cell_id: str, detail: str) -> None:
        say(f"[{counts['done'] + counts['failed']}/{total - done_before}] {cell_id}: {detail}")

    pending = []
    for cell in wave:
        missing = next((d for d in cell.depends_on if not _has_record(out, d)), None)
        if _has_record(out, cell.id):
            counts["skipped"] += 1
        elif missing is not None:
            write_failure(out, cell.id, f"dependency {missing} failed")
            counts["failed"] += 1
            line(cell.id, f"FAILED: dependency {missing} failed")
        else:
            pending.append(cell)
    if pending:
        for outcome in run(pending):
            counts[outcome["status"]] += 1
            line(outcome["cell"], f"done in {outcome['seconds']:.0f} s" if outcome["status"] == "done"
                 else f"FAILED: {outcome['error']}")


def open_study(out: Path, spec: StudySpec, grid: list[Cell], train_hash: str) -> None:
    """Start ``out/study.json``, or check that the study in ``out`` is this one (resume)."""
    path = out / "study.json"
    expected = {"spec": spec.to_dict(), "data": {"name": spec.data, "train_hash": train_hash}}
    if path.is_file():
        existing = json.loads(path.read_text(encoding="utf-8"))
        differ = sorted(k for k, v in expected["spec"].items() if existing.get("spec", {}).get(k) != v)
        if existing.get("data", {}).get("train_hash") != train_hash:
            differ.append("data (its content hash)")
        if differ:
            raise ConfigError(f"{out} holds the study {existing.get('spec', {}).get('name')!r} with a different "
                              f"{', '.join(differ)}; choose a new --out, or rerun that study's spec to resume it")
        return
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not a study folder (no study.json); choose a new --out")
    from vlunlearn.provenance import environment

    write_json(path, {**expected, "environment": environment(), "grid": [cell.to_dict() for cell in grid]})


def _has_record(out: Path, cell_id: str) -> bool:
    return (out / "cells" / cell_id / "record.json").is_file()


def write_failure(out: Path, cell_id: str, error: str, trace: str = "") -> None:
    """``out/cells/<cell_id>/failed.json``: the error in one line and its traceback."""
    write_json(out / "cells" / cell_id / "failed.json", {"cell": cell_id, "error": error, "traceback": trace})


# ------------------------------------------------------------------------------------ executors


def _executor(kind: str, jobs: int, spec: StudySpec, out: Path, cluster: str, parameters: dict[str, Any],
              stack: contextlib.ExitStack) -> Callable[[list[Cell]], Iterator[dict]]:
    """A function that runs a wave's pending cells and yields each outcome (see :func:`run_cell`)
    as it finishes; the local worker processes are started once and live as long as ``stack``."""
    if kind == "slurm":
        return lambda pending: _submitit(pending, spec, out, cluster, parameters)
    if jobs == 1:
        return lambda pending: (run_cell(spec, cell, out) for cell in pending)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // jobs)
    pool = stack.enter_context(ProcessPoolExecutor(
        jobs, mp_context=multiprocessing.get_context("spawn"), initializer=torch.set_num_threads, initargs=(threads,)))
    return lambda pending: _in_pool(pool, pending, spec, out)


def _in_pool(pool, pending: list[Cell], spec: StudySpec, out: Path) -> Iterator[dict]:
    from concurrent.futures import as_completed

    futures = {pool.submit(run_cell, spec, cell, out): cell for cell in pending}
    for future in as_completed(futures):
        try:
            yield future.result()
        except Exception as error:  # the worker process itself died (e.g. out of memory)
            yield _lost(out, futures[future], error)


def _submitit_module(cluster: str):
    """The ``submitit`` module, checked to be usable with ``cluster``."""
    try:
        import submitit
    except ImportError:
        raise ConfigError("the slurm executor needs submitit: pip install 'vlunlearn[cluster]'") from None
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise ConfigError("the slurm executor submits with sbatch, which is not on this machine's PATH")
    return submitit


def _submitit(pending: list[Cell], spec: StudySpec, out: Path, cluster: str, parameters: dict[str, Any]) -> Iterator[dict]:
    submitit = _submitit_module(cluster)
    executor = submitit.AutoExecutor(folder=out / "slurm", cluster=cluster)
    executor.update_parameters(name=f"vlunlearn-{spec.name}", **parameters)
    submitted = executor.map_array(run_cell, [spec] * len(pending), pending, [out] * len(pending))
    by_job = {job.job_id: cell for job, cell in zip(submitted, pending)}
    for job in submitit.helpers.as_completed(submitted, poll_frequency=1 if cluster in ("local", "debug") else 10):
        try:
            yield job.result()
        except Exception as error:  # the job itself failed (killed, timed out, preempted)
            yield _lost(out, by_job[job.job_id], error)


def _lost(out: Path, cell: Cell, error: BaseException) -> dict:
    message = _one_line(error)
    write_failure(out, cell.id, message, "".join(traceback.format_exception(error)))
    return {"cell": cell.id, "status": "failed", "error": message, "seconds": 0.0}


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


# ----------------------------------------------------------------------------------------- cells


def run_cell(spec: StudySpec, cell: Cell, out: Path) -> dict:
    """Run one cell and write its ``record.json``, or its ``failed.json`` when anything raises.

    Returns ``{"cell", "status": "done" | "failed", "seconds", "error"}``."""
    start = time.perf_counter()
    folder = Path(out) / "cells" / cell.id
    try:
        record = cell_record(spec, cell, Path(out))
        (folder / "failed.json").unlink(missing_ok=True)
        write_json(folder / "record.json", record)
        return {"cell": cell.id, "status": "done", "seconds": time.perf_counter() - start, "error": None}
    except Exception as error:
        write_failure(Path(out), cell.id, _one_line(error), traceback.format_exc())
        return {"cell": cell.id, "status": "failed", "seconds": time.perf_counter() - start, "error": _one_line(error)}


def cell_record(spec: StudySpec, cell: Cell, out: Path) -> dict:
    """Make the cell's model (pretrain, load, retrain or unlearn) and evaluate it: its record."""
    from vlunlearn.data import Tokenizer, UnlearningRequest, make_splits
    from vlunlearn.evaluation.oracle import peak_memory
    from vlunlearn.evaluation.probe import probe_metrics
    from vlunlearn.unlearning import unlearn
    from vlunlearn.evaluation.records import evaluation_record

    tokenizer = Tokenizer()
    train, test = study_data(spec)
    request = cell.request
    splits = make_splits(train, test, UnlearningRequest(concepts=tuple(request.get("concepts", ())),
                                                        sample_ids=tuple(request.get("sample_ids", ()))))
    original, recipe, cost = _original(spec, cell, out, train, tokenizer)
    model = original
    if cell.method != "original":
        settings = cell.settings if cell.method == "retrain" else {"seed": cell.seed, **cell.settings}
        with peak_memory() as peak:
            model, run = unlearn(original, splits, cell.method, recipe=recipe, tokenizer=tokenizer, progress=False,
                                 **settings)
        cost = {"seconds": run.seconds, "steps": run.steps, "peak_memory_bytes": peak.peak_bytes}
        if cell.method == "retrain":
            _save(model, out / "cells" / cell.id, run.config, cell)
    oracle = _read_record(out, cell.oracle) if cell.oracle else None
    oracle_scores = None if oracle is None else torch.tensor(oracle["artifacts"][ORACLE_SCORES], dtype=torch.float64)
    evaluated = evaluation_record(model, cell.method, splits, test, tokenizer, train_data=train,
                                  oracle_forget_scores=oracle_scores, seed=cell.seed, templates=spec.prompts)
    metrics = {**evaluated["metrics"], **probe_metrics(model, splits, tokenizer, seed=cell.seed), **cost}
    retrain_seconds = None if oracle is None else oracle["metrics"].get("seconds")
    metrics["ratio_to_retrain"] = cost["seconds"] / retrain_seconds if retrain_seconds and cost["seconds"] is not None else None
    kept = (*KEPT_ARTIFACTS, ORACLE_SCORES) if cell.method == "retrain" else KEPT_ARTIFACTS
    return {
        "cell": cell.id, "study": cell.study, "label": cell.label, "method": cell.method, "settings": cell.settings,
        "geometry": cell.geometry, "model": evaluated["model"], "data": cell.data, "request": cell.record_request(),
        "seed": cell.seed, "prompts": _listed(spec.prompts), "classes": _listed(spec.classes), "metrics": metrics,
        "artifacts": {k: v for k, v in evaluated["artifacts"].items() if k in kept},
    }


def _listed(names: tuple[str, ...] | None) -> list[str] | None:
    return None if names is None else list(names)


def _original(spec: StudySpec, cell: Cell, out: Path, train, tokenizer):
    """``(model, recipe, cost)`` of the cell's original: pretrained here (and kept), or loaded
    from its original cell or checkpoint; ``cost`` is the pretraining's seconds and steps. The
    recipe is the one recorded in the model, else the study's (for a user's data only when the
    study file states one; ``None`` otherwise, which a ``retrain`` cell refuses)."""
    from vlunlearn.data.builtin import BUILTIN_DATASETS
    from vlunlearn.models import load_any, read_metadata
    from vlunlearn.training.pretrain import PretrainConfig, pretrain

    if cell.pretrains:
        recipe = PretrainConfig.from_dict({**spec.recipe, "geometry": cell.geometry, "seed": cell.seed})
        model, result = pretrain(recipe, train, tokenizer=tokenizer, progress=False)
        _save(model, out / "cells" / cell.id, recipe.to_dict(), cell)
        return model, recipe, {"seconds": result.seconds, "steps": result.steps}
    path = Path(cell.checkpoint) if cell.checkpoint else out / "cells" / cell.original / "model"
    model = load_any(path)
    recorded = read_metadata(path).get("pretrain") if path.is_dir() else None
    stated = {**spec.recipe, "model": model.config.name, "geometry": cell.geometry}
    if recorded is None and not spec.recipe and spec.data not in BUILTIN_DATASETS:
        recipe = None
    else:
        recipe = replace(PretrainConfig.from_dict(recorded or stated), seed=cell.seed)
    if cell.checkpoint:
        return model, recipe, {"seconds": None, "steps": None}
    pretrained = _read_record(out, cell.original)["metrics"]
    return model, recipe, {"seconds": pretrained.get("seconds"), "steps": pretrained.get("steps")}


def _save(model, folder: Path, recipe: dict, cell: Cell) -> None:
    from vlunlearn.models import save_model

    save_model(model, folder / "model", metadata={"pretrain": recipe, "study": {"cell": cell.id, "study": cell.study}},
               overwrite=True)


def _read_record(out: Path, cell_id: str) -> dict:
    return json.loads((out / "cells" / cell_id / "record.json").read_text(encoding="utf-8"))
