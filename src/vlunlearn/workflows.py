"""End-to-end jobs behind the CLI: each writes one run folder with its model and results."""

from __future__ import annotations

from pathlib import Path

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
