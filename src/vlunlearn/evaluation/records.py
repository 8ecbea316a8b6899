"""A model's evaluation record (every metric plus its figure artifacts) and the group of records
of one request: what ``evaluate``, the demo and studies write to ``results.json``."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from vlunlearn.data import PairDataset, Tokenizer

DISK_SAMPLE = 300  # test inputs drawn in the Poincare-disk view
# metric and artifact names of records written before graph inputs, when they named images
RENAMED = {"probe_image_retain": "probe_input_retain", "forget_image_d0": "forget_input_d0",
           "d0_test_images": "d0_test_inputs", "image_d0": "input_d0"}


def with_current_names(record: dict) -> dict:
    """``record`` with the metric and artifact names of :data:`RENAMED` (and their ``_low``,
    ``_high``, ... variants) under today's names; other records come back unchanged."""
    def renamed(values):
        if not isinstance(values, dict):
            return values
        out = {}
        for key, value in values.items():
            old = next((name for name in RENAMED if key == name or key.startswith(name + "_")), None)
            out[RENAMED[old] + key[len(old):] if old else key] = value
        return out

    return {**record, **{part: renamed(record[part]) for part in ("metrics", "artifacts") if part in record}}


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
    disk_basis=None, seed: int = 0, cost: dict | None = None, templates: Sequence[str] | None = None,
) -> dict:
    """One ``results.json`` record: every metric of ``model`` on ``splits`` plus its figure artifacts.

    ``train_data`` is the gallery D_f is retrieved against; ``oracle_forget_scores`` the retrained
    model's D_f pair scores (for the KS test); ``cost`` (seconds, steps, peak memory) is merged into
    the metrics when known; ``templates`` are the zero-shot class prompt templates (``None``: the
    data's). The record's ``forget_pair_scores`` artifact lets the caller pass a
    retrain record's scores on to the other models; it is dropped before results are written.
    """
    from vlunlearn.evaluation.suite import evaluate_unlearning

    metrics, artifacts = evaluate_unlearning(
        model, splits, tokenizer, train=train_data, test=test_data, oracle_forget_scores=oracle_forget_scores, seed=seed,
        templates=templates,
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
    seed: int = 0, progress: bool = False, templates: Sequence[str] | None = None,
) -> list[dict]:
    """One :func:`evaluation_record` per ``(method, load, cost)`` of one request, in the given order
    (zero-shot metrics with the class prompt ``templates``).

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
                                   oracle_forget_scores=oracle_scores, disk_basis=basis, seed=seed, cost=cost,
                                   templates=templates)
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


def forget_label(request: dict) -> list[str]:
    """What a record's ``forget`` field shows: the concepts, or ``["<n> samples"]``."""
    return list(request.get("concepts") or []) or [f"{len(request.get('sample_ids') or [])} samples"]
