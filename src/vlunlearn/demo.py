"""The end-to-end demo: pretrain (or reuse cached) tiny CLIP and MERU, retrain the oracle and run
every method on one request (one concept, or several with ``forget``), evaluate everything,
write the report."""

from __future__ import annotations

import json
import os
from pathlib import Path


from vlunlearn.data import Tokenizer, UnlearningRequest, load_builtin, make_splits
from vlunlearn.evaluation.oracle import peak_memory
from vlunlearn.models import load_any, save_model
from vlunlearn.provenance import environment
from vlunlearn.runs import create_run_folder, write_json
from vlunlearn.training.pretrain import PretrainConfig, pretrain
from vlunlearn.unlearning import unlearn
from vlunlearn.workflows import add_ratio_to_retrain, evaluate_group

DEMO_FORGET = {"fashion-scenes": ("sneaker",), "fashion-mnist": ("sneaker",), "digits": ("seven",)}
DEMO_RECIPES = {
    # fashion-scenes: 700 steps of 128 pairs (30 passes over the 3,000 scenes) of the cheaper
    # tiny-scenes model make originals worth auditing: concepts well above chance, test retrieval
    # R@1 above 20% and a membership signal that the calibrated attack detects (README, "Built-in data").
    "fashion-scenes": {"model": "tiny-scenes", "steps": 700, "batch_size": 128},
    # the single-item sets: half the full recipe, enough for ~80% zero-shot accuracy.
    "fashion-mnist": {"steps": 234},
    "digits": {"steps": 234},
}
METHOD_STEPS: int | None = None  # None: each method's documented default; the demo test shortens it


def default_cache() -> Path:
    """``$XDG_CACHE_HOME/vlunlearn`` or ``~/.cache/vlunlearn``: where pretrained originals are kept."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vlunlearn"


def demo_run(
    data_name: str,
    out: Path,
    *,
    forget: tuple[str, ...] | None = None,
    seed: int = 0,
    cache: Path | None = None,
    progress: bool = True,
) -> dict:
    """Pretrain (or reuse) the originals, retrain the oracle without the concepts ``forget``
    (default ``DEMO_FORGET[data_name]``) and run every method; evaluate every model and write
    the report to ``out``.

    ``seed`` seeds pretraining, every method and the evaluation samples; the data is the same
    for every seed, so demo runs with several seeds merge with ``vlunlearn report``.
    Pretrained originals are cached under ``cache`` (default :func:`default_cache`) keyed by
    data, model, geometry, recipe and seed.
    """
    from vlunlearn.methods import available_methods
    from vlunlearn.report import write_report

    tokenizer = Tokenizer()
    train_data, test_data = load_builtin(data_name, "train"), load_builtin(data_name, "test")
    splits = make_splits(train_data, test_data, UnlearningRequest(concepts=tuple(forget or DEMO_FORGET[data_name])))
    out = create_run_folder(out)
    cache = cache or default_cache()
    records = []
    for geometry in ("euclidean", "lorentz"):
        recipe = PretrainConfig(geometry=geometry, seed=seed, **DEMO_RECIPES[data_name])
        original, pretrain_seconds = _cached_original(recipe, data_name, train_data, cache, tokenizer, progress)
        methods = [m for m in available_methods() if geometry == "lorentz" or m != "hac"]
        runs = [("original", _given(original), {"seconds": pretrain_seconds, "steps": recipe.steps})]
        for method in ("retrain", *methods):
            steps = {} if METHOD_STEPS is None or method == "retrain" else {"steps": METHOD_STEPS}
            with peak_memory() as peak:
                model, run = unlearn(
                    original, splits, method, recipe=recipe, tokenizer=tokenizer, progress=progress, seed=seed, **steps
                )
            cost = {"seconds": run.seconds, "steps": run.steps, "peak_memory_bytes": peak.peak_bytes}
            runs.append((method, _given(model), cost))
        records += add_ratio_to_retrain(evaluate_group(runs, splits, train_data, test_data, tokenizer, seed=seed))
    results = {
        "kind": "demo",
        "config": {
            "data": data_name,
            "forget": list(splits.request.concepts),
            "seed": seed,
            **{f"pretrain_{k}": v for k, v in DEMO_RECIPES[data_name].items()},
        },
        "data": {"name": data_name, "train_hash": train_data.content_hash()},
        "environment": environment(),
        "records": records,
    }
    write_report(results, out)
    return results


def _given(model):
    """A loader of a model already in memory."""
    return lambda: model


def _cached_original(recipe: PretrainConfig, data_name: str, train_data, cache: Path, tokenizer, progress: bool):
    folder = cache / f"{data_name}-{recipe.model}-{recipe.geometry}-{recipe.steps}x{recipe.batch_size}-seed{recipe.seed}"
    results = folder / "results.json"
    if results.exists() and json.loads(results.read_text()).get("train_hash") == train_data.content_hash():
        return load_any(folder / "model"), json.loads(results.read_text())["seconds"]
    model, result = pretrain(recipe, train_data, tokenizer=tokenizer, progress=progress)
    save_model(model, folder / "model", metadata={"pretrain": recipe.to_dict()}, overwrite=True)
    write_json(results, {"seconds": result.seconds, "train_hash": train_data.content_hash()})
    return model, result.seconds
