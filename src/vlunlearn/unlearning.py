"""The public entry point: ``vlunlearn.unlearn(model, request, method=...)``."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from vlunlearn.data import PairDataset, Tokenizer, UnlearningRequest, UnlearningSplits, load_builtin, make_splits
from vlunlearn.evaluation.zero_shot import class_embeddings, class_prompts, encode_inputs, zero_shot_accuracy, zero_shot_predictions
from vlunlearn.methods import MethodContext, UnlearningObjective, get_method, make_config
from vlunlearn.methods.retrain import ORACLE, retrain
from vlunlearn.models import ContrastiveModel
from vlunlearn.provenance import seed_everything
from vlunlearn.training.batches import PairSampler, TokenCache
from vlunlearn.training.loop import OptimConfig, checkpoint_interval, train
from vlunlearn.training.pretrain import PretrainConfig
from vlunlearn.training.scope import restrict_parameters


@dataclass
class EarlyStop:
    """Stop once zero-shot accuracy on a held-out slice of D_f falls to ``target`` percent.

    The slice (a seeded draw of ``slice_size`` D_f pairs, at most a fifth of D_f) is held out:
    the method never trains on it, so the check measures whether forgetting generalises to
    forget pairs the run has not seen. The test split is never looked at.

    Attributes:
        target: forget accuracy (percent, over all classes) at which to stop.
        every: evaluate every this many steps.
        slice_size: number of D_f pairs held out for the check.
        templates: class prompt templates of the zero-shot check (``None``: the data's prompts;
            see :func:`~vlunlearn.evaluation.zero_shot.class_prompts`).
    """

    target: float
    every: int = 5
    slice_size: int = 256
    templates: Sequence[str] | None = None


@dataclass
class UnlearnRecord:
    """What ran: method, its full config (steps and lr resolved), the request, the budget used,
    the loss history, which parameters were updated (see
    :func:`~vlunlearn.training.scope.restrict_parameters`) and how many D_f pairs were held
    out for early stopping (not trained on)."""

    method: str
    config: dict[str, Any]
    request: dict[str, Any]
    steps: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False
    faults: list[dict[str, float]] = field(default_factory=list)
    updated_parameters: dict[str, Any] = field(default_factory=dict)
    held_out: int = 0


def unlearn(
    model: ContrastiveModel,
    request: UnlearningRequest | UnlearningSplits,
    method: str = "hac",
    *,
    data: str | tuple[PairDataset, PairDataset] = "fashion-mnist",
    recipe: PretrainConfig | None = None,
    early_stop: EarlyStop | None = None,
    tokenizer: Tokenizer | None = None,
    progress: bool = True,
    state_path: Path | None = None,
    resume: bool = False,
    checkpoint_every: int | None = None,
    precision: str = "fp32",
    grad_checkpointing: bool = False,
    **overrides: Any,
) -> tuple[ContrastiveModel, UnlearnRecord]:
    """Make a copy of ``model`` forget what ``request`` names; ``model`` itself is not modified.

    Args:
        request: concepts or sample ids, or ready-made splits.
        method: a registered method name (see ``vlunlearn.methods.available_methods()``) or
            ``"retrain"``, the oracle: pretraining on D_r with ``recipe`` (from scratch, or from
            the recipe's ``init`` checkpoint).
        data: a built-in dataset name, or ``(train, test)`` datasets.
        recipe: the pretraining recipe of ``model``, needed by ``retrain``; without one, the
            ``overrides`` must state it (fields on top of the
            :class:`~vlunlearn.training.pretrain.PretrainConfig` defaults for the model), else
            a :class:`~vlunlearn.errors.ConfigError` says how.
        early_stop: optional stop when forget accuracy on a held-out D_f slice reaches a target
            (see :class:`EarlyStop`; the slice is not trained on).
        state_path: file for training-state checkpoints, written every ``checkpoint_every``
            steps (default: a tenth of the run) and on SIGINT/SIGTERM.
        resume: continue from ``state_path``; the result equals an uninterrupted run's.
        precision: ``fp32``, ``bf16`` or ``fp16`` (mixed precision; Lorentz maths stays float32).
        grad_checkpointing: recompute transformer activations in backward to save memory.
        overrides: settings of the method's config, e.g. ``epochs=3, alpha=2.0``; the budget
            is ``epochs`` passes over D_f unless ``steps`` is given, ``lr=None`` is the model
            family's rate (see :class:`~vlunlearn.methods.MethodConfig`).

    Returns:
        The unlearned model and a record of what ran.
    """
    tokenizer = tokenizer or Tokenizer()
    splits = request if isinstance(request, UnlearningSplits) else _splits(request, data)
    saving = {"state_path": state_path, "resume": resume, "checkpoint_every": checkpoint_every}
    run = {"precision": precision, "grad_checkpointing": grad_checkpointing}
    if method == ORACLE:
        retrained, result, recipe = retrain(
            model, splits.retain, recipe, overrides, tokenizer=tokenizer, progress=progress, **saving, **run
        )
        record = UnlearnRecord(
            ORACLE, recipe.to_dict(), splits.request.to_dict(), result.steps, result.seconds, result.history,
            faults=result.faults,
        )
        return retrained, record

    method_class = get_method(method)
    forget, held_out = split_forget(splits.forget, early_stop)
    config = make_config(method_class.config_class, overrides).resolve(len(forget), model)
    seed_everything(config.seed)
    unlearned = copy.deepcopy(model)
    if grad_checkpointing:
        unlearned.set_grad_checkpointing(True)
    original = copy.deepcopy(model).eval().requires_grad_(False)
    if unlearned.config.hyperbolic and not config.learn_curvature:
        unlearned.curv.requires_grad_(False)
    scope = restrict_parameters(unlearned, config.towers, config.parameter_filter)
    tokens = TokenCache(tokenizer, model.config.context_length)
    context = MethodContext(
        original, splits.retain.canonical_captions(), forget.canonical_captions(), tokens, config.seed,
        splits.request.kind,
    )
    instance = method_class(config, context)
    instance.check_model(unlearned)
    objective = UnlearningObjective(
        instance,
        PairSampler(splits.retain, tokens, config.retain_batch_size, config.seed),
        PairSampler(forget, tokens, config.forget_batch_size, config.seed + 1, drop_last=False),
    )
    optim = OptimConfig(
        steps=config.steps, lr=config.lr, weight_decay=config.weight_decay, warmup_steps=config.warmup_steps,
        cosine=False, checkpoint_every=checkpoint_interval(config.steps, checkpoint_every), precision=precision,
        freeze_norm_statistics=True,
    )
    should_stop = None if early_stop is None else _early_stopper(early_stop, held_out, tokenizer, unlearned)
    instance.prepare(unlearned, objective.retain, objective.forget)
    try:
        result = train(
            unlearned, objective, optim, description=f"unlearn {method}", progress=progress, should_stop=should_stop,
            state_path=state_path, resume=resume,
        )
    finally:
        instance.finish(unlearned)
    record = UnlearnRecord(
        method, config.to_dict(), splits.request.to_dict(), result.steps, result.seconds, result.history,
        stopped_early=result.steps < config.steps, faults=result.faults, updated_parameters=scope,
        held_out=0 if held_out is None else len(held_out),
    )
    return unlearned, record


def _splits(request: UnlearningRequest, data: str | tuple[PairDataset, PairDataset]) -> UnlearningSplits:
    train_data, test_data = (load_builtin(data, "train"), load_builtin(data, "test")) if isinstance(data, str) else data
    return make_splits(train_data, test_data, request)


def split_forget(forget: PairDataset, rule: EarlyStop | None) -> tuple[PairDataset, PairDataset | None]:
    """``(trained on, held out)``: without an early-stop rule all of D_f is trained on; with one,
    a seeded draw of ``min(slice_size, |D_f| // 5)`` pairs (at least one) is held out for its checks."""
    if rule is None:
        return forget, None
    if len(forget) < 2:
        raise ValueError(f"early stopping holds out part of D_f, which has only {len(forget)} pair(s)")
    order = torch.randperm(len(forget), generator=torch.Generator().manual_seed(0))
    size = max(1, min(rule.slice_size, len(forget) // 5))
    return forget.subset(order[size:].sort().values), forget.subset(order[:size].sort().values)


def _early_stopper(rule: EarlyStop, validation: PairDataset, tokenizer: Tokenizer, model: ContrastiveModel):
    prompts = class_prompts(validation, rule.templates)

    def should_stop(steps_done: int) -> bool:
        if steps_done % rule.every:
            return False
        predictions = zero_shot_predictions(model, encode_inputs(model, validation), class_embeddings(model, tokenizer, prompts))
        return zero_shot_accuracy(predictions, validation.labels)["micro"] <= rule.target

    return should_stop
