"""The retrain oracle (exact unlearning): pretrain on D_r with the original recipe (from scratch,
or from the recipe's ``init`` checkpoint when the original was fine-tuned).

Every other method is judged by how close it comes to this model. It is not a loss over
(B_r, B_f) but the pretraining objective itself, so it runs through
:func:`vlunlearn.training.pretrain.pretrain` (the same training loop).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from vlunlearn.data import PairDataset, Tokenizer
from vlunlearn.errors import ConfigError
from vlunlearn.methods.base import make_config_values
from vlunlearn.models import ContrastiveModel
from vlunlearn.training.loop import TrainResult, checkpoint_interval
from vlunlearn.training.pretrain import PretrainConfig, pretrain

ORACLE = "retrain"


def retrain(
    model: ContrastiveModel,
    retain: PairDataset,
    recipe: PretrainConfig | None,
    overrides: dict[str, Any],
    *,
    tokenizer: Tokenizer,
    progress: bool,
    state_path: Path | None = None,
    resume: bool = False,
    checkpoint_every: int | None = None,
    precision: str = "fp32",
    grad_checkpointing: bool = False,
) -> tuple[ContrastiveModel, TrainResult, PretrainConfig]:
    """Pretrain a new model like ``model`` on ``retain``.

    ``recipe`` is how ``model`` was pretrained; ``overrides`` change recipe fields, e.g.
    ``seed``. Without a recipe (a checkpoint that records none, such as a released one) the
    overrides state it: their fields on top of the :class:`PretrainConfig` defaults for
    ``model``'s configuration and geometry. ``state_path``/``resume``/``checkpoint_every``
    (default: a tenth of the run), ``precision`` and ``grad_checkpointing`` as in
    :func:`vlunlearn.training.pretrain.pretrain`.

    Raises:
        ConfigError: no recipe, and the overrides state no recipe field other than ``seed``.
    """
    if recipe is None:
        check_stated(model, overrides)
        recipe = PretrainConfig(model=model.config.name, geometry=model.config.geometry)
    recipe = replace(recipe, **make_config_values(PretrainConfig, overrides))
    retrained, result = pretrain(
        recipe, retain, tokenizer=tokenizer, progress=progress, state_path=state_path, resume=resume,
        checkpoint_every=checkpoint_interval(recipe.steps, checkpoint_every), precision=precision,
        grad_checkpointing=grad_checkpointing,
    )
    return retrained, result, recipe


def check_stated(model: ContrastiveModel, overrides: dict[str, Any]) -> None:
    """Raise a :class:`~vlunlearn.errors.ConfigError` that says how to state a recipe, unless
    ``overrides`` state at least one recipe field other than ``seed``."""
    if set(overrides) - {"seed"}:
        return
    raise ConfigError(
        f"the retrain oracle repeats the original's pretraining recipe on D_r, and this {model.config.name}/"
        f"{model.config.geometry} checkpoint records none (a released or foreign checkpoint): state it with "
        "--set KEY=VALUE (e.g. --set steps=2000 --set lr=5e-4 --set batch_size=256; in a study file: recipe = {...}). "
        f"The stated fields go on top of the defaults (steps={PretrainConfig.steps}, "
        f"batch_size={PretrainConfig.batch_size}, lr={PretrainConfig.lr:g}, weight_decay={PretrainConfig.weight_decay:g}, "
        f"warmup_fraction={PretrainConfig.warmup_fraction:g}); "
        "the recipe used is recorded with recipe_source 'stated'"
    )
