"""End-to-end jobs behind the CLI: each writes one run folder with its model and results."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from vlunlearn.errors import VlunlearnError
from vlunlearn.data import Tokenizer, UnlearningRequest, load_builtin, make_splits
from vlunlearn.evaluation import evaluate_splits, evaluate_zero_shot
from vlunlearn.evaluation.hierarchy import distance_to_origin_by_level
from vlunlearn.models import load_any, read_metadata, save_model
from vlunlearn.provenance import environment
from vlunlearn.runs import check_new_run_folder, create_run_folder, write_json
from vlunlearn.training.pretrain import PretrainConfig, pretrain
from vlunlearn.unlearning import EarlyStop, unlearn

STATE_FILE = "train_state.pt"


def pretrain_run(config: PretrainConfig, data_name: str, out: Path, *, resume: bool = False, progress: bool = True) -> dict:
    """Pretrain on a built-in dataset, evaluate on its test split, and write ``out``.

    ``out`` receives ``model/`` (native checkpoint) and ``results.json``. The training
    state is saved every epoch so that ``resume=True`` continues an interrupted run.
    """
    out = create_run_folder(out, resume=resume)
    if (out / "results.json").exists():
        raise VlunlearnError(f"the run in {out} is already complete; nothing to resume")
    train_data = load_builtin(data_name, "train", seed=config.seed)
    test_data = load_builtin(data_name, "test", seed=config.seed)
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
    )
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
        "training": {"steps": result.steps, "seconds": result.seconds, "resumed_from": result.resumed_from},
        "metrics": metrics,
        "history": result.history,
    }
    save_model(model, out / "model", metadata={"pretrain": config.to_dict(), "data": record["data"]})
    write_json(out / "results.json", record)
    state_path.unlink(missing_ok=True)
    return record


def unlearn_run(
    checkpoint: Path,
    data_name: str,
    request: UnlearningRequest,
    method: str,
    out: Path,
    *,
    overrides: dict[str, str],
    epochs: float | None = None,
    early_stop_target: float | None = None,
    progress: bool = True,
) -> dict:
    """Unlearn ``request`` from the model at ``checkpoint`` (never modified) and write ``out``.

    ``out`` receives ``model/`` (the unlearned model, whose metadata keeps the pretraining
    recipe) and ``results.json`` (request, method config, budget, data hash, versions, and
    zero-shot accuracy on the forget/retain splits before and after).
    """
    out = check_new_run_folder(out)
    model = load_any(checkpoint)
    metadata = read_metadata(checkpoint) if Path(checkpoint).is_dir() else {}
    recipe = PretrainConfig(**metadata["pretrain"]) if "pretrain" in metadata else None
    seed = recipe.seed if recipe is not None else 0
    train_data = load_builtin(data_name, "train", seed=seed)
    splits = make_splits(train_data, load_builtin(data_name, "test", seed=seed), request)
    tokenizer = Tokenizer()
    early_stop = None if early_stop_target is None else EarlyStop(target=early_stop_target)
    unlearned, record = unlearn(
        model, splits, method, recipe=recipe, epochs=epochs, early_stop=early_stop,
        tokenizer=tokenizer, progress=progress, **overrides,
    )
    result = {
        "kind": "unlearn",
        "checkpoint": str(checkpoint),
        "data": {"name": data_name, "train_size": len(train_data), "train_hash": train_data.content_hash()},
        "request": record.request,
        "split_sizes": {"forget": len(splits.forget), "retain": len(splits.retain)},
        "method": method,
        "config": record.config,
        "seed": record.config.get("seed"),
        "environment": environment(),
        "run": {"steps": record.steps, "seconds": record.seconds, "stopped_early": record.stopped_early},
        "metrics": {
            "original": evaluate_splits(model, splits, tokenizer),
            "unlearned": evaluate_splits(unlearned, splits, tokenizer),
        },
        "history": record.history,
    }
    out = create_run_folder(out)
    save_model(unlearned, out / "model", metadata={**metadata, "unlearn": {k: result[k] for k in ("request", "method", "config")}})
    write_json(out / "results.json", result)
    return result


DEMO_REQUESTS = {
    "fashion-mnist": (("sneaker",), ("sneaker", "bag", "coat")),
    "digits": (("seven",), ("one", "four", "seven")),
}
DEMO_STEPS = 234  # half the full recipe, so that the whole demo fits in 15 minutes on 2 cores
DISK_SAMPLE = 300  # test images drawn in the Poincare-disk view


def demo_run(data_name: str, out: Path, *, seed: int = 0, cache: Path | None = None, progress: bool = True) -> dict:
    """The end-to-end demo: pretrain (or reuse cached) tiny CLIP and MERU, retrain the oracle and
    run every method for one and for three concepts, evaluate everything, write the report.

    Pretrained originals are cached under ``cache`` (default ``$XDG_CACHE_HOME/vlunlearn`` or
    ``~/.cache/vlunlearn``) keyed by data, geometry, steps and seed.
    """
    from vlunlearn.evaluation.oracle import peak_memory
    from vlunlearn.evaluation.suite import evaluate_unlearning
    from vlunlearn.methods import available_methods
    from vlunlearn.report import write_report

    out = create_run_folder(out)
    cache = cache or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vlunlearn"
    tokenizer = Tokenizer()
    train_data, test_data = load_builtin(data_name, "train", seed=seed), load_builtin(data_name, "test", seed=seed)
    records = []
    for geometry in ("euclidean", "lorentz"):
        recipe = PretrainConfig(geometry=geometry, steps=DEMO_STEPS, seed=seed)
        original, pretrain_seconds = _cached_original(recipe, data_name, train_data, cache, tokenizer, progress)
        methods = [m for m in available_methods() if geometry == "lorentz" or m != "hac"]
        for concepts in DEMO_REQUESTS[data_name]:
            splits = make_splits(train_data, test_data, UnlearningRequest(concepts=concepts))
            base = {"model": recipe.model, "geometry": geometry, "forget": list(concepts)}

            def record(method: str, model, seconds: float, steps: int, peak_bytes: int | None) -> dict:
                metrics, artifacts = evaluate_unlearning(model, splits, tokenizer, seed=seed)
                if geometry == "lorentz":
                    artifacts.update(_disk_view(model, test_data, seed))
                metrics.update(seconds=seconds, steps=steps, peak_memory_bytes=peak_bytes)
                return {**base, "method": method, "metrics": metrics, "artifacts": artifacts}

            records.append(record("original", original, pretrain_seconds, recipe.steps, None))
            for method in ("retrain", *methods):
                with peak_memory() as peak:
                    model, run = unlearn(original, splits, method, recipe=recipe, tokenizer=tokenizer, progress=progress)
                records.append(record(method, model, run.seconds, run.steps, peak.peak_bytes))
            retrain_seconds = records[-len(methods) - 1]["metrics"]["seconds"]
            for entry in records[-len(methods):]:
                entry["metrics"]["ratio_to_retrain"] = entry["metrics"]["seconds"] / retrain_seconds
    results = {
        "kind": "demo",
        "config": {"data": data_name, "seed": seed, "pretrain_steps": DEMO_STEPS},
        "data": {"name": data_name, "train_hash": train_data.content_hash()},
        "environment": environment(),
        "records": records,
    }
    write_report(results, out)
    return results


def _cached_original(recipe, data_name, train_data, cache, tokenizer, progress):
    folder = cache / f"{data_name}-{recipe.geometry}-{recipe.steps}-seed{recipe.seed}"
    results = folder / "results.json"
    if results.exists():
        return load_any(folder / "model"), json.loads(results.read_text())["seconds"]
    model, result = pretrain(recipe, train_data, tokenizer=tokenizer, progress=progress)
    save_model(model, folder / "model", metadata={"pretrain": recipe.to_dict()}, overwrite=True)
    write_json(results, {"seconds": result.seconds, "train_hash": train_data.content_hash()})
    return model, result.seconds


def _disk_view(model, test_data, seed: int) -> dict:
    from vlunlearn.evaluation import encode_images
    from vlunlearn.report.figures import to_disk_2d

    picks = torch.randperm(len(test_data), generator=torch.Generator().manual_seed(seed))[:DISK_SAMPLE]
    sample = test_data.subset(picks)
    points = to_disk_2d(encode_images(model, sample), model.curvature().item())
    return {"disk_points": points.tolist(), "disk_labels": [sample.class_names[i] for i in sample.labels.tolist()]}
