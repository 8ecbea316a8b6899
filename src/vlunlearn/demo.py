"""The end-to-end demo: pretrain (or reuse cached) tiny CLIP and MERU, retrain the oracle and run
every method on each request (one concept, or several with ``forget``; the molecules demo forgets
one functional group, then several), evaluate everything, write the report."""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from vlunlearn.data import PairDataset, Tokenizer, UnlearningRequest, UnlearningSplits, load_builtin, make_splits
from vlunlearn.errors import ConfigError
from vlunlearn.evaluation.oracle import peak_memory
from vlunlearn.models import load_any, save_model
from vlunlearn.provenance import environment
from vlunlearn.runs import create_run_folder, write_json
from vlunlearn.training.pretrain import PretrainConfig, pretrain
from vlunlearn.unlearning import unlearn
from vlunlearn.evaluation.records import add_ratio_to_retrain, evaluate_group

# molecules: one functional-group family (328 of the 3,938 training molecules), then two (451). Whole
# families: the retrained oracle then never reads their names, so it cannot recognise them by composing
# words it learned elsewhere, as it does a class ("aromatic nitro group" from "aliphatic nitro group").
MOLECULES_DEMO_ONE = ("nitro group",)
MOLECULES_DEMO_SEVERAL = ("aldehyde", "carboxylic acid")
# 200 steps of 128 pairs (6.5 passes over the molecules) of tiny-graph at lr 2e-3: zero-shot
# functional-group accuracy 53-61% of 13 classes (chance 8%) and test retrieval R@1 47-56% (chance
# 0.1%) in about a minute on one core
MOLECULES_RECIPE = {"model": "tiny-graph", "steps": 200, "batch_size": 128, "lr": 2e-3}
DEMO_FORGET: dict[str, tuple[tuple[str, ...], ...]] = {  # the requests each demo runs, in order
    "fashion-scenes": (("sneaker",),), "fashion-mnist": (("sneaker",),), "digits": (("seven",),),
    "molecules": (MOLECULES_DEMO_ONE, MOLECULES_DEMO_SEVERAL),
}
DEMO_RECIPES = {
    # fashion-scenes: 500 steps of 128 pairs (21 passes over the 3,000 scenes) of the cheaper
    # tiny-scenes model at half the default learning rate (2e-3 sometimes derails MERU here) make
    # originals worth auditing: concepts well above chance, test retrieval R@1 above 20% and a
    # membership signal that the calibrated attack detects (README, "Built-in data").
    "fashion-scenes": {"model": "tiny-scenes", "steps": 500, "batch_size": 128, "lr": 1e-3},
    # the single-item sets: half the full recipe, enough for ~80% zero-shot accuracy.
    "fashion-mnist": {"steps": 234},
    "digits": {"steps": 234},
    "molecules": MOLECULES_RECIPE,
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
    workers: int | None = None,
) -> dict:
    """Pretrain (or reuse) the originals, retrain the oracle without the concepts ``forget``
    (default: each request of ``DEMO_FORGET[data_name]`` in turn) and run every method; evaluate
    every model and write the report to ``out``.

    ``seed`` seeds pretraining, every method and the evaluation samples; the data is the same
    for every seed, so demo runs with several seeds merge with ``vlunlearn report``.
    Pretrained originals are cached under ``cache`` (default :func:`default_cache`) keyed by
    data, model, geometry, recipe and seed. ``workers=2`` (the default with two cores or more)
    runs CLIP and MERU side by side in two processes, each on half the threads, with one line
    of progress per finished stage instead of bars; the numbers then differ from a one-process
    run only in floating-point rounding.
    """
    from vlunlearn.report import write_report

    workers = workers or (2 if (os.cpu_count() or 1) >= 2 else 1)
    if workers not in (1, 2):
        raise ConfigError(f"workers must be 1 or 2 (one process per geometry), not {workers}")
    train_data, test_data = load_builtin(data_name, "train"), load_builtin(data_name, "test")
    requests = [tuple(forget)] if forget else DEMO_FORGET[data_name]
    splits = [make_splits(train_data, test_data, UnlearningRequest(concepts=concepts)) for concepts in requests]
    out = create_run_folder(out)
    jobs = [
        GeometryJob(geometry, data_name, train_data, test_data, splits, DEMO_RECIPES[data_name], METHOD_STEPS, seed,
                    cache or default_cache(), progress, parallel=workers > 1)
        for geometry in ("euclidean", "lorentz")
    ]
    if workers == 1:
        groups = [job.records() for job in jobs]
    else:
        threads = max(1, torch.get_num_threads() // workers)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=torch.set_num_threads, initargs=(threads,)) as pool:
            groups = list(pool.map(GeometryJob.records, jobs))
    results = {
        "kind": "demo",
        "config": {
            "data": data_name,
            "forget": [list(s.request.concepts) for s in splits] if len(splits) > 1 else list(splits[0].request.concepts),
            "seed": seed,
            "workers": workers,
            **{f"pretrain_{k}": v for k, v in DEMO_RECIPES[data_name].items()},
        },
        "data": {"name": data_name, "train_hash": train_data.content_hash(), "modality": train_data.modality},
        "environment": environment(),
        "records": [record for group in groups for record in group],
    }
    write_report(results, out)
    return results


@dataclass
class GeometryJob:
    """The demo's work for one geometry, self-contained so that it can run in another process."""

    geometry: str
    data_name: str
    train_data: PairDataset
    test_data: PairDataset
    splits: list[UnlearningSplits]
    recipe: dict
    method_steps: int | None
    seed: int
    cache: Path
    progress: bool
    parallel: bool

    def records(self) -> list[dict]:
        """Original (cached), then for each request the oracle and every method, evaluated together."""
        tokenizer = Tokenizer()
        recipe = PretrainConfig(geometry=self.geometry, seed=self.seed, **self.recipe)
        original, pretrain_seconds = _cached_original(recipe, self.data_name, self.train_data, self.cache, tokenizer,
                                                      self.progress and not self.parallel)
        self.say(f"original ready ({pretrain_seconds:.0f} s of pretraining)")
        cost = {"seconds": pretrain_seconds, "steps": recipe.steps}
        return [record for splits in self.splits for record in self.request_records(original, cost, recipe, splits, tokenizer)]

    def request_records(self, original, cost: dict, recipe: PretrainConfig, splits: UnlearningSplits,
                        tokenizer: Tokenizer) -> list[dict]:
        """The oracle and every method on one request, evaluated with the original."""
        from vlunlearn.methods import available_methods

        bars = self.progress and not self.parallel
        runs = [("original", _given(original), cost)]
        methods = [m for m in available_methods() if self.geometry == "lorentz" or m != "hac"]
        forget = "+".join(splits.request.concepts)
        for method in ("retrain", *methods):
            steps = {} if self.method_steps is None or method == "retrain" else {"steps": self.method_steps}
            with peak_memory() as peak:
                model, run = unlearn(
                    original, splits, method, recipe=recipe, tokenizer=tokenizer, progress=bars, seed=self.seed,
                    **steps,
                )
            runs.append((method, _given(model), {"seconds": run.seconds, "steps": run.steps,
                                                 "peak_memory_bytes": peak.peak_bytes}))
            self.say(f"{forget}: {method} done in {run.seconds:.0f} s")
        records = evaluate_group(runs, splits, self.train_data, self.test_data, tokenizer, seed=self.seed)
        self.say(f"{forget}: {len(records)} models evaluated")
        return add_ratio_to_retrain(records)

    def say(self, message: str) -> None:
        """One progress line per stage when bars would interleave between processes."""
        if self.progress and self.parallel:
            print(f"[{self.geometry}] {message}", flush=True)


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
