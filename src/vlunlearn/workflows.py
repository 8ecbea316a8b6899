"""End-to-end jobs behind the CLI: each writes one run folder with its model and results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from vlunlearn.errors import DataError, VlunlearnError
from vlunlearn.data import (
    PairDataset,
    Tokenizer,
    UnlearningRequest,
    load_builtin,
    load_class_folder,
    load_image_text_folder,
    load_tar_shards,
    make_splits,
)
from vlunlearn.data.builtin import BUILTIN_DATASETS
from vlunlearn.evaluation import evaluate_splits, evaluate_zero_shot
from vlunlearn.evaluation.zero_shot import class_prompts
from vlunlearn.evaluation.hierarchy import distance_to_origin_by_level
from vlunlearn.evaluation.oracle import peak_memory
from vlunlearn.models import load_any, read_metadata, save_model
from vlunlearn.models.releases import check_checkpoint_file
from vlunlearn.provenance import environment
from vlunlearn.runs import check_new_run_folder, create_run_folder, write_json
from vlunlearn.training import distributed
from vlunlearn.training.pretrain import PretrainConfig, pretrain
from vlunlearn.unlearning import EarlyStop, unlearn

STATE_FILE = "train_state.pt"


def pretrain_run(
    config: PretrainConfig,
    data_name: str,
    out: Path,
    *,
    resume: bool = False,
    precision: str = "fp32",
    grad_checkpointing: bool = False,
    progress: bool = True,
) -> dict:
    """Pretrain on a built-in dataset, evaluate on its test split, and write ``out``.

    ``out`` receives ``model/`` (native checkpoint) and ``results.json``. The training
    state is saved every epoch so that ``resume=True`` continues an interrupted run. In a
    distributed run only rank 0 evaluates and writes; the other ranks return ``{}``.
    """
    out = create_run_folder(out, resume=resume)
    if (out / "results.json").exists():
        raise VlunlearnError(f"the run in {out} is already complete; nothing to resume")
    train_data = load_builtin(data_name, "train")
    test_data = load_builtin(data_name, "test")
    tokenizer = Tokenizer()
    state_path = out / STATE_FILE
    model, result = pretrain(
        config,
        train_data,
        tokenizer=tokenizer,
        state_path=state_path,
        resume=resume,
        checkpoint_every=len(train_data) // config.batch_size,
        progress=progress,
        precision=precision,
        grad_checkpointing=grad_checkpointing,
    )
    if not distributed.is_main():  # rank 0 evaluates and writes
        return {}
    metrics = {"zero_shot_test": evaluate_zero_shot(model, test_data, tokenizer)}
    if model.geometry.hyperbolic:
        metrics["distance_to_origin"] = distance_to_origin_by_level(model, test_data, tokenizer)
        metrics["curvature"] = model.curvature().item()
    record = {
        "kind": "pretrain",
        "config": config.to_dict(),
        "model_config": model.config.to_dict(),
        "data": {"name": data_name, "train_size": len(train_data), "train_hash": train_data.content_hash()},
        "seed": config.seed,
        "environment": environment(),
        "training": {
            "steps": result.steps, "seconds": result.seconds, "resumed_from": result.resumed_from,
            "faults": result.faults, "precision": precision,
        },
        "metrics": metrics,
        "history": result.history,
    }
    save_model(model, out / "model", metadata={"pretrain": config.to_dict(), "data": record["data"], "run": record["training"]})
    write_json(out / "results.json", record)
    state_path.unlink(missing_ok=True)
    return record


def load_data(
    data: str, test_data: str | None, model_config, workers: int = 0
) -> tuple[PairDataset, PairDataset]:
    """The train and test data of a run: a built-in dataset by name, or a user's data with its
    held-out split in ``test_data``, each an annotation file (CSV/JSONL, image paths relative
    to its folder), a WebDataset tar shard or a folder of shards.

    Users' images stay on disk and are decoded per batch, by ``workers`` processes, at the
    model's input size and channel count.
    """
    if data in BUILTIN_DATASETS:
        if test_data is not None:
            raise DataError(f"--test-data is for a user's data; the built-in {data!r} has its own test split")
        return load_builtin(data, "train"), load_builtin(data, "test")
    if not Path(data).exists():
        raise DataError(
            f"--data {data!r} is neither a built-in dataset ({', '.join(BUILTIN_DATASETS)}) nor an annotation "
            "file, a tar shard or a folder of shards"
        )
    if test_data is None:
        raise DataError(f"--data {data} is a user's data: give its held-out split with --test-data")
    size, channels = model_config.image_size, len(model_config.pixel_mean)
    return tuple(_user_data(Path(path), size, channels, workers) for path in (data, test_data))


def _user_data(path: Path, size: int, channels: int, workers: int) -> PairDataset:
    if path.is_dir():
        shards = sorted(path.glob("*.tar"))
        if not shards:
            raise DataError(f"{path} is a folder without .tar shards")
        return load_tar_shards(shards, size, channels, workers, name=path.name)
    if path.suffix.lower() == ".tar":
        return load_tar_shards([path], size, channels, workers)
    return load_image_text_folder(path.parent, path, size, channels=channels, stream=True, workers=workers)


def unlearn_run(
    checkpoint: Path,
    data_name: str,
    request: UnlearningRequest,
    method: str,
    out: Path,
    *,
    overrides: dict[str, str],
    test_data: str | None = None,
    early_stop_target: float | None = None,
    resume: bool = False,
    precision: str = "fp32",
    grad_checkpointing: bool = False,
    sha256: str | None = None,
    workers: int = 0,
    progress: bool = True,
) -> dict:
    """Unlearn ``request`` from the model at ``checkpoint`` (never modified) and write ``out``.

    ``out`` receives ``model/`` (the unlearned model, whose metadata keeps the pretraining
    recipe) and ``results.json`` (request, method config, budget, data hash, versions, and
    zero-shot accuracy on the forget/retain splits before and after). Every input is checked
    before ``out`` is created; the training state is kept in ``out`` while the run goes on, so
    an interrupted run continues with ``resume=True`` and ends with the same model. In a
    distributed run only rank 0 evaluates and writes; the other ranks return ``{}``. The
    checkpoint's SHA-256 is recorded (and must equal ``sha256`` when given).
    """
    out = check_new_run_folder(out, resume=resume)
    if resume and (out / "results.json").exists():
        raise VlunlearnError(f"the run in {out} is already complete; nothing to resume")
    checkpoint_file = check_checkpoint_file(checkpoint, sha256)
    model = load_any(checkpoint)
    metadata = _metadata(checkpoint)
    recipe = PretrainConfig(**metadata["pretrain"]) if "pretrain" in metadata else None
    train_data, test_split = load_data(data_name, test_data, model.config, workers=workers)
    splits = make_splits(train_data, test_split, request)
    tokenizer = Tokenizer()
    early_stop = None if early_stop_target is None else EarlyStop(target=early_stop_target)
    state_path = out / STATE_FILE
    with peak_memory() as peak:
        unlearned, record = unlearn(
            model, splits, method, recipe=recipe, early_stop=early_stop, tokenizer=tokenizer,
            progress=progress, state_path=state_path, resume=resume, precision=precision,
            grad_checkpointing=grad_checkpointing, **overrides,
        )
    if not distributed.is_main():  # rank 0 evaluates and writes
        return {}
    result = {
        "kind": "unlearn",
        "checkpoint": str(checkpoint),
        "checkpoint_file": checkpoint_file,
        "model": model.config.name,
        "geometry": model.config.geometry,
        "data": {"name": data_name, "train_size": len(train_data), "train_hash": train_data.content_hash()},
        "request": record.request,
        "split_sizes": {"forget": len(splits.forget), "retain": len(splits.retain)},
        "method": method,
        "config": record.config,
        "updated_parameters": record.updated_parameters,
        "seed": record.config.get("seed"),
        "environment": environment(),
        "run": {
            "steps": record.steps, "seconds": record.seconds, "stopped_early": record.stopped_early,
            "early_stop_held_out": record.held_out,
            "faults": record.faults, "precision": precision, "grad_checkpointing": grad_checkpointing,
            "peak_memory_bytes": peak.peak_bytes,
        },
        "metrics": {
            "original": evaluate_splits(model, splits, tokenizer),
            "unlearned": evaluate_splits(unlearned, splits, tokenizer),
        },
        "history": record.history,
    }
    out = create_run_folder(out, resume=True)  # exists already when a training state was saved
    provenance = {k: result[k] for k in ("request", "method", "config", "run")}
    provenance["source_checkpoint"] = str(Path(checkpoint).resolve())
    inherited = {k: v for k, v in metadata.items() if k != "run"}  # "run" is the cost of the pretraining
    save_model(unlearned, out / "model", metadata={**inherited, "unlearn": provenance})
    write_json(out / "results.json", result)
    state_path.unlink(missing_ok=True)
    return result


DISK_SAMPLE = 300  # test images drawn in the Poincare-disk view


def disk_sample(test_data: PairDataset, seed: int) -> PairDataset:
    """The seeded test images every model of a request is drawn with in the disk view."""
    picks = torch.randperm(len(test_data), generator=torch.Generator().manual_seed(seed))[:DISK_SAMPLE]
    return test_data.subset(picks)


def original_disk_basis(model, test_data: PairDataset, seed: int):
    """The disk projection shared by every model of a request: the original's principal axes
    (``None`` for a Euclidean model, which gets no disk view)."""
    from vlunlearn.report.disk import disk_basis

    return disk_basis(model, disk_sample(test_data, seed)) if model.geometry.hyperbolic else None


def _disk_view(model, test_data: PairDataset, tokenizer: Tokenizer, seed: int, basis) -> dict:
    from vlunlearn.evaluation.landing import hierarchy_prompts
    from vlunlearn.report.disk import disk_view

    sample = disk_sample(test_data, seed)
    prompts = hierarchy_prompts(sample.hierarchy) if sample.hierarchy is not None else None
    return disk_view(model, sample, tokenizer, basis, prompts)


def evaluation_record(
    model, method: str, splits, test_data, tokenizer: Tokenizer, *, train_data=None, oracle_forget_scores=None,
    disk_basis=None, seed: int = 0, cost: dict | None = None,
) -> dict:
    """One ``results.json`` record: every metric of ``model`` on ``splits`` plus its figure artifacts.

    ``train_data`` is the gallery D_f is retrieved against; ``oracle_forget_scores`` the retrained
    model's D_f pair scores (for the KS test); ``cost`` (seconds, steps, peak memory) is merged into
    the metrics when known. The record's ``forget_pair_scores`` artifact lets the caller pass a
    retrain record's scores on to the other models; it is dropped before results are written.
    """
    from vlunlearn.evaluation.suite import evaluate_unlearning

    metrics, artifacts = evaluate_unlearning(
        model, splits, tokenizer, train=train_data, test=test_data, oracle_forget_scores=oracle_forget_scores, seed=seed,
    )
    if disk_basis is not None:
        artifacts.update(_disk_view(model, test_data, tokenizer, seed, disk_basis))
    metrics.update({key: value for key, value in (cost or {}).items() if value is not None})
    return {
        "model": model.config.name,
        "geometry": model.config.geometry,
        "forget": forget_label(splits.request.to_dict()),
        "method": method,
        "seed": seed,
        "metrics": metrics,
        "artifacts": artifacts,
    }


def evaluate_group(
    runs: list[tuple[str, Callable[[], object], dict]], splits, train_data, test_data, tokenizer: Tokenizer, *,
    seed: int = 0, progress: bool = False,
) -> list[dict]:
    """One :func:`evaluation_record` per ``(method, load, cost)`` of one request, in the given order.

    ``load()`` returns the model (so models are loaded one at a time); the first run's model
    gives the shared disk projection; the retrained oracle, when present, is evaluated first so
    that its D_f pair scores serve every other model's KS test.
    """
    records: list[dict] = [{} for _ in runs]
    oracle_scores = None
    basis = None
    order = sorted(range(len(runs)), key=lambda i: runs[i][0] != "retrain")
    for index in tqdm(order, desc="evaluate", unit="model", disable=not progress):
        method, load, cost = runs[index]
        model = load()
        if basis is None:
            basis = original_disk_basis(runs[0][1](), test_data, seed)
        record = evaluation_record(model, method, splits, test_data, tokenizer, train_data=train_data,
                                   oracle_forget_scores=oracle_scores, disk_basis=basis, seed=seed, cost=cost)
        scores = record["artifacts"].pop("forget_pair_scores")
        if method == "retrain" and oracle_scores is None:
            oracle_scores = torch.tensor(scores, dtype=torch.float64)
        records[index] = record
    return records


def add_ratio_to_retrain(group: list[dict]) -> list[dict]:
    """Add ``metrics.ratio_to_retrain`` (seconds / retrain seconds) to the unlearning records of
    one request's group, when the group has a timed retrain record. Returns ``group``."""
    retrain = next((r for r in group if r["method"] == "retrain"), None)
    retrain_seconds = (retrain or {}).get("metrics", {}).get("seconds")
    if retrain_seconds:
        for record in group:
            if record["method"] not in ("original", "retrain") and record["metrics"].get("seconds") is not None:
                record["metrics"]["ratio_to_retrain"] = record["metrics"]["seconds"] / retrain_seconds
    return group


def evaluate_run(
    checkpoints: list[Path],
    data_name: str,
    out: Path,
    *,
    test_data: str | None = None,
    request: UnlearningRequest | None = None,
    original: Path | None = None,
    retrain: Path | None = None,
    sha256: list[str] | None = None,
    seed: int = 0,
    workers: int = 0,
    progress: bool = True,
) -> dict:
    """Evaluate unlearned models against their original and the retrained oracle; write a report.

    Each checkpoint is labelled by the method recorded in its metadata (``vlunlearn unlearn``
    writes it), else by its folder name; a checkpoint made with ``--method retrain`` serves as
    the oracle. The request defaults to the one recorded in the first checkpoint, and the
    original to the checkpoint that run started from. Without an oracle, the report is
    relative to the original and says so. ``out`` receives results.json, report.md, figures/.
    ``sha256``, when given, holds the expected digest of each checkpoint, in order.
    """
    from vlunlearn.report import write_report

    out = check_new_run_folder(out)
    if not checkpoints:
        raise VlunlearnError("nothing to evaluate: give at least one --checkpoint")
    expected = sha256 or [None] * len(checkpoints)
    if len(expected) != len(checkpoints):
        raise VlunlearnError(f"{len(expected)} --sha256 digests for {len(checkpoints)} --checkpoint paths; give one per checkpoint")
    digests = [check_checkpoint_file(path, digest) for path, digest in zip(checkpoints, expected)]
    provenance = [_metadata(path).get("unlearn", {}) for path in checkpoints]
    if request is None:
        recorded = next((p["request"] for p in provenance if "request" in p), None)
        if recorded is None:
            raise VlunlearnError("no forget request given (--forget / --forget-ids) and none recorded in the checkpoints")
        request = UnlearningRequest(
            concepts=tuple(recorded.get("concepts", ())), sample_ids=tuple(recorded.get("sample_ids", ()))
        )
    if original is None:
        source = next((Path(p["source_checkpoint"]) for p in provenance if "source_checkpoint" in p), None)
        original = source if source is not None and source.exists() else None

    entries: list[tuple[str, Path]] = [("original", Path(original))] if original is not None else []
    if retrain is not None:
        entries.append(("retrain", Path(retrain)))
    for path, recorded in zip(checkpoints, provenance):
        entries.append((recorded.get("method") or Path(path).resolve().parent.name, Path(path)))
    first_model = load_any(entries[0][1])  # its input size and channels decide how users' images are read
    train_data, test_split = load_data(data_name, test_data, first_model.config, workers=workers)
    splits = make_splits(train_data, test_split, request)
    tokenizer = Tokenizer()
    def loader(index: int, path: Path) -> Callable[[], object]:
        def load():
            model = first_model if index == 0 else load_any(path)
            if model.config.geometry != first_model.config.geometry:
                raise VlunlearnError(f"{path} is a {model.config.geometry} model but {entries[0][1]} is {first_model.config.geometry}")
            return model
        return load

    runs = []
    for index, (method, path) in enumerate(entries):
        recorded = _metadata(path)
        run = recorded.get("unlearn", {}).get("run") or recorded.get("run") or {}  # cost, when a run recorded it
        runs.append((method, loader(index, path), {"seconds": run.get("seconds"), "steps": run.get("steps")}))
    group = evaluate_group(runs, splits, train_data, test_split, tokenizer, seed=seed, progress=progress)
    for record, (_, path) in zip(group, entries):
        record["checkpoint"] = str(path)
    for record, digest in zip(group[len(group) - len(checkpoints) :], digests):
        record["checkpoint_file"] = digest
    results = {
        "kind": "evaluate",
        "config": {"data": data_name, "seed": seed, "request": request.describe()},
        "data": {"name": data_name, "train_hash": train_data.content_hash()},
        "split_sizes": {"forget": len(splits.forget), "retain": len(splits.retain)},
        "environment": environment(),
        "records": add_ratio_to_retrain(group),
    }
    write_report(results, create_run_folder(out))
    return results


def zeroshot_run(
    checkpoint: Path,
    images: Path,
    out: Path,
    *,
    templates: list[str] | None = None,
    sha256: str | None = None,
    workers: int = 0,
) -> dict:
    """Zero-shot top-1 (micro and macro) of the model at ``checkpoint`` on an ImageFolder-style
    tree ``images`` (one sub-folder per class), with the prompt ``templates`` (default: generic
    ones), images resized to the model's input (shorter side, bicubic) and centre-cropped as in
    MERU's protocol. Writes ``out/results.json``."""
    out = check_new_run_folder(out)
    checkpoint_file = check_checkpoint_file(checkpoint, sha256)
    model = load_any(checkpoint)
    data = load_class_folder(
        images, model.config.image_size, channels=len(model.config.pixel_mean), stream=True, workers=workers
    )
    accuracy = evaluate_zero_shot(model, data, Tokenizer(), templates)
    result = {
        "kind": "zeroshot",
        "checkpoint": str(checkpoint),
        "checkpoint_file": checkpoint_file,
        "model": model.config.name,
        "geometry": model.config.geometry,
        "data": {"name": str(images), "size": len(data), "classes": list(data.class_names), "hash": data.content_hash()},
        "prompts": class_prompts(data, templates)[0] if data.class_names else [],
        "environment": environment(),
        "metrics": {"zero_shot": accuracy},
    }
    write_json(create_run_folder(out) / "results.json", result)
    return result


def report_run(sources: list[Path], out: Path) -> dict:
    """Merge the records of finished runs (demo, evaluate or unlearn run folders, or their
    results.json files) into one report in the new folder ``out``.

    An ``unlearn`` run contributes two records (original and unlearned, metrics only).
    Records of the same (model, geometry, forget, method) made with different seeds merge into
    one with the mean, standard deviation and 95% interval of every metric over the seeds
    (:func:`~vlunlearn.report.merge.merge_seeds`); of two with the same seed, the one with the
    most metrics is kept.
    """
    from vlunlearn.report import write_report
    from vlunlearn.report.merge import merge_seeds

    out = check_new_run_folder(out)
    if not sources:
        raise VlunlearnError("nothing to report: give at least one run folder or results.json")
    records: list[dict] = []
    hashes = []
    for source in sources:
        path = Path(source) / "results.json" if Path(source).is_dir() else Path(source)
        try:
            document = json.loads(path.read_text())
        except FileNotFoundError:
            raise VlunlearnError(f"no results at {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise VlunlearnError(f"{path} is not a results.json file: {error}") from None
        hashes.append((document.get("data") or {}).get("train_hash"))
        records += _records_of(document, path)
    if len(set(hashes)) > 1:
        raise VlunlearnError("these runs used different training data (their data hashes differ); report them separately")
    results = {
        "kind": "report",
        "config": {"sources": [str(s) for s in sources]},
        "data": {"train_hash": hashes[0]},
        "environment": environment(),
        "records": merge_seeds(records),
    }
    write_report(results, create_run_folder(out))
    return results


def _metadata(path: Path) -> dict:
    """The metadata stored with a native model folder; none for other checkpoint files."""
    return read_metadata(path) if Path(path).is_dir() else {}


def forget_label(request: dict) -> list[str]:
    """What a record's ``forget`` field shows: the concepts, or ``["<n> samples"]``."""
    return list(request.get("concepts") or []) or [f"{len(request.get('sample_ids') or [])} samples"]


def _records_of(document: dict, path: Path) -> list[dict]:
    if isinstance(document.get("records"), list):
        return document["records"]
    if document.get("kind") == "unlearn":
        base = {
            "model": document.get("model", "?"),
            "geometry": document.get("geometry", "?"),
            "forget": forget_label(document["request"]),
        }
        run = document.get("run", {})
        return [
            {**base, "method": "original", "metrics": document["metrics"]["original"]},
            {**base, "method": document["method"], "seed": document.get("seed"),
             "metrics": {**document["metrics"]["unlearned"], **run}},
        ]
    raise VlunlearnError(f"{path} holds no records (a results.json of a demo, evaluate or unlearn run is expected)")
