"""End-to-end jobs behind the CLI: each writes one run folder with its model and results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

from vlunlearn.errors import VlunlearnError
from vlunlearn.data import PairDataset, Tokenizer, UnlearningRequest, load_class_folder, make_splits
from vlunlearn.data.sources import DataSource
from vlunlearn.evaluation import evaluate_splits, evaluate_zero_shot, retrieval_metrics
from vlunlearn.evaluation.zero_shot import check_templates, class_prompts
from vlunlearn.evaluation.hierarchy import distance_to_origin_by_level
from vlunlearn.evaluation.oracle import peak_memory
from vlunlearn.evaluation.records import add_ratio_to_retrain, evaluate_group, forget_label, with_current_names
from vlunlearn.methods.retrain import ORACLE, check_stated
from vlunlearn.models import ContrastiveModel, load_any, read_metadata, save_model
from vlunlearn.models.configs import model_config
from vlunlearn.models.releases import check_checkpoint_file
from vlunlearn.provenance import environment
from vlunlearn.runs import check_new_run_folder, create_run_folder, write_json
from vlunlearn.training import distributed
from vlunlearn.training.pretrain import PretrainConfig, pretrain, starting_model
from vlunlearn.unlearning import EarlyStop, unlearn

STATE_FILE = "train_state.pt"


def pretrain_run(
    config: PretrainConfig,
    source: DataSource,
    out: Path,
    *,
    templates: Sequence[str] | None = None,
    start: ContrastiveModel | None = None,
    resume: bool = False,
    precision: str = "fp32",
    grad_checkpointing: bool = False,
    progress: bool = True,
) -> dict:
    """Pretrain (or, with ``config.init``, fine-tune) on ``source``'s built-in or user's data,
    evaluate on its test split, and write ``out``; every input is checked before ``out`` is created.

    ``start`` is ``config.init`` already loaded (default: loaded here, or a random
    initialisation); users' images are read at its input size. ``out`` receives ``model/``
    (whose metadata records the recipe and the data) and ``results.json``. Test metrics:
    zero-shot accuracy with the prompt ``templates`` (when test items have classes), retrieval
    and, for Lorentz models, distances to the origin. The training state is saved every epoch so
    that ``resume=True`` continues an interrupted run. In a distributed run only rank 0
    evaluates and writes; the other ranks return ``{}``.
    """
    check_new_run_folder(out, resume=resume)
    if (Path(out) / "results.json").exists():
        raise VlunlearnError(f"the run in {out} is already complete; nothing to resume")
    check_templates(templates)
    if start is None and config.init is not None:
        start = starting_model(config)
    architecture = start.config if start is not None else model_config(config.model, config.geometry)
    train_data, test_split = source.load(architecture)
    out = create_run_folder(out, resume=resume)
    tokenizer = Tokenizer()
    state_path = out / STATE_FILE
    model, result = pretrain(
        config, train_data, tokenizer=tokenizer, state_path=state_path, resume=resume,
        checkpoint_every=max(1, len(train_data) // config.batch_size), progress=progress, precision=precision,
        grad_checkpointing=grad_checkpointing, model=start,
    )
    if not distributed.is_main():  # rank 0 evaluates and writes
        return {}
    data = source.record(train_data)
    metrics = _test_metrics(model, test_split, tokenizer, templates)
    record = {
        "kind": "pretrain",
        "config": config.to_dict(),
        "model_config": model.config.to_dict(),
        "data": data,
        "prompt_templates": templates,
        "seed": config.seed,
        "environment": environment(),
        "training": {
            "steps": result.steps, "seconds": result.seconds, "resumed_from": result.resumed_from,
            "faults": result.faults, "precision": precision,
        },
        "metrics": metrics,
        "warnings": _near_chance(metrics, test_split),
        "history": result.history,
    }
    save_model(model, out / "model", metadata={"pretrain": config.to_dict(), "data": data, "run": record["training"]})
    write_json(out / "results.json", record)
    state_path.unlink(missing_ok=True)
    return record


NEAR_CHANCE = 2.0  # a pretrained model within this factor of chance accuracy has probably not learned


def _near_chance(metrics: dict, test_data: PairDataset) -> list[str]:
    """A warning when zero-shot test accuracy is within :data:`NEAR_CHANCE` times chance."""
    accuracy = metrics.get("zero_shot_test", {}).get("micro")
    chance = 100.0 / max(1, len(test_data.class_names))
    if accuracy is None or accuracy > NEAR_CHANCE * chance:
        return []
    return [f"zero-shot test accuracy {accuracy:.1f}% is within {NEAR_CHANCE:g}x chance ({chance:.1f}%): the model has "
            "probably not learned; try a lower --lr or more --steps (an oracle retrained with this recipe would be as poor)"]


def _oracle_check(original: dict, retrained: dict) -> list[str]:
    """A warning when the retrained oracle keeps less than half the original's test-retain accuracy:
    its recipe has then not learned on D_r, and comparisons with it say nothing."""
    before, after = original.get("zs_test_retain"), retrained.get("zs_test_retain")
    if before is None or after is None or not after < 0.5 * before:  # NaN: not measured
        return []
    return [f"the retrained oracle's test retain accuracy {after:.1f}% is less than half the original's {before:.1f}%: "
            "the recipe did not learn on D_r (check the recipe, e.g. a lower lr), so comparisons with it say nothing"]


def _test_metrics(model, test_data: PairDataset, tokenizer: Tokenizer, templates: Sequence[str] | None) -> dict:
    """A pretrained model on the test split: zero-shot accuracy (when test items have classes),
    retrieval and, for a Lorentz model, distances to the origin and the curvature."""
    metrics = {}
    if bool((test_data.labels >= 0).any()):
        metrics["zero_shot_test"] = evaluate_zero_shot(model, test_data, tokenizer, templates)
    metrics["retrieval_test"] = retrieval_metrics(model, test_data, tokenizer)
    if model.geometry.hyperbolic:
        metrics["distance_to_origin"] = distance_to_origin_by_level(model, test_data, tokenizer)
        metrics["curvature"] = model.curvature().item()
    return metrics


def unlearn_run(
    checkpoint: Path,
    source: DataSource,
    request: UnlearningRequest,
    method: str,
    out: Path,
    *,
    overrides: dict[str, str],
    templates: Sequence[str] | None = None,
    early_stop_target: float | None = None,
    resume: bool = False,
    precision: str = "fp32",
    grad_checkpointing: bool = False,
    sha256: str | None = None,
    progress: bool = True,
) -> dict:
    """Unlearn ``request`` from the model at ``checkpoint`` (never modified) on ``source``'s data
    and write ``out``.

    ``out`` receives ``model/`` (the unlearned model, whose metadata keeps the pretraining recipe)
    and ``results.json`` (request, method config, budget, data hash, versions, and zero-shot
    accuracy with the prompt ``templates`` on the forget/retain splits before and after). The
    oracle (``method="retrain"``) repeats the recipe recorded in the checkpoint, or one stated in
    ``overrides`` (``config.recipe_source`` says which). Every input
    is checked before ``out`` is created; the training state is kept in ``out`` while the run
    goes on, so an interrupted run continues with ``resume=True`` and ends with the same model.
    In a distributed run only rank 0 evaluates and writes; the other ranks return ``{}``. The
    checkpoint's SHA-256 is recorded (and must equal ``sha256`` when given).
    """
    out = check_new_run_folder(out, resume=resume)
    if resume and (out / "results.json").exists():
        raise VlunlearnError(f"the run in {out} is already complete; nothing to resume")
    check_templates(templates)
    checkpoint_file = check_checkpoint_file(checkpoint, sha256)
    model = load_any(checkpoint)
    metadata = _metadata(checkpoint)
    recipe = PretrainConfig.from_dict(metadata["pretrain"]) if "pretrain" in metadata else None
    if method == ORACLE and recipe is None:
        check_stated(model, overrides)
    train_data, test_split = source.load(model.config)
    splits = make_splits(train_data, test_split, request)
    tokenizer = Tokenizer()
    early_stop = None if early_stop_target is None else EarlyStop(target=early_stop_target, templates=templates)
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
        "data": source.record(train_data),
        "request": record.request,
        "split_sizes": {"forget": len(splits.forget), "retain": len(splits.retain)},
        "method": method,
        "config": {**record.config, "recipe_source": "recorded" if recipe else "stated"} if method == ORACLE
        else record.config,
        "prompt_templates": templates,
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
            "original": evaluate_splits(model, splits, tokenizer, templates=templates),
            "unlearned": evaluate_splits(unlearned, splits, tokenizer, templates=templates),
        },
        "history": record.history,
    }
    result["warnings"] = _oracle_check(result["metrics"]["original"], result["metrics"]["unlearned"]) if method == ORACLE else []
    out = create_run_folder(out, resume=True)  # exists already when a training state was saved
    provenance = {k: result[k] for k in ("request", "method", "config", "run")}
    provenance["source_checkpoint"] = str(Path(checkpoint).resolve())
    inherited = {k: v for k, v in metadata.items() if k != "run"}  # "run" is the cost of the pretraining
    save_model(unlearned, out / "model", metadata={**inherited, "unlearn": provenance})
    write_json(out / "results.json", result)
    state_path.unlink(missing_ok=True)
    return result


def evaluate_run(
    checkpoints: list[Path],
    source: DataSource,
    out: Path,
    *,
    templates: Sequence[str] | None = None,
    request: UnlearningRequest | None = None,
    original: Path | None = None,
    retrain: Path | None = None,
    sha256: list[str] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Evaluate unlearned models against their original and the retrained oracle; write a report.

    Each checkpoint is labelled by the method recorded in its metadata (``vlunlearn unlearn``
    writes it), else by its folder name; a checkpoint made with ``--method retrain`` serves as
    the oracle. The request defaults to the one recorded in the first checkpoint, and the
    original to the checkpoint that run started from. Without an oracle, the report is
    relative to the original and says so. ``out`` receives results.json, report.md, figures/.
    ``sha256``, when given, holds the expected digest of each checkpoint, in order. Zero-shot
    metrics use the class prompt ``templates``.
    """
    from vlunlearn.report import write_report

    out = check_new_run_folder(out)
    check_templates(templates)
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
        started = next((Path(p["source_checkpoint"]) for p in provenance if "source_checkpoint" in p), None)
        original = started if started is not None and started.exists() else None

    entries: list[tuple[str, Path]] = [("original", Path(original))] if original is not None else []
    if retrain is not None:
        entries.append(("retrain", Path(retrain)))
    for path, recorded in zip(checkpoints, provenance):
        entries.append((recorded.get("method") or Path(path).resolve().parent.name, Path(path)))
    first_model = load_any(entries[0][1])  # its input size and channels decide how users' images are read
    train_data, test_split = source.load(first_model.config)
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
    group = evaluate_group(runs, splits, train_data, test_split, tokenizer, seed=seed, progress=progress,
                           templates=templates)
    for record, (_, path) in zip(group, entries):
        record["checkpoint"] = str(path)
    for record, digest in zip(group[len(group) - len(checkpoints) :], digests):
        record["checkpoint_file"] = digest
    results = {
        "kind": "evaluate",
        "config": {"data": source.name, "seed": seed, "request": request.describe()},
        "data": source.record(train_data),
        "prompt_templates": templates,
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
    hashes, modalities = [], set()
    for source in sources:
        path = Path(source) / "results.json" if Path(source).is_dir() else Path(source)
        try:
            document = json.loads(path.read_text())
        except FileNotFoundError:
            raise VlunlearnError(f"no results at {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise VlunlearnError(f"{path} is not a results.json file: {error}") from None
        hashes.append((document.get("data") or {}).get("train_hash"))
        modalities.add((document.get("data") or {}).get("modality", "image"))
        records += [with_current_names(record) for record in _records_of(document, path)]
    if len(set(hashes)) > 1:
        raise VlunlearnError("these runs used different training data (their data hashes differ); report them separately")
    results = {
        "kind": "report",
        "config": {"sources": [str(s) for s in sources]},
        "data": {"train_hash": hashes[0], "modality": modalities.pop()},  # one data hash: one modality
        "environment": environment(),
        "records": merge_seeds(records),
    }
    write_report(results, create_run_folder(out))
    return results


def _metadata(path: Path) -> dict:
    """The metadata stored with a native model folder; none for other checkpoint files."""
    return read_metadata(path) if Path(path).is_dir() else {}


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
