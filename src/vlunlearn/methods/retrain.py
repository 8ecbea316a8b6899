"""The retrain oracle (exact unlearning): pretrain from scratch on D_r with the original recipe.

Every other method is judged by how close it comes to this model. It is not a loss over
(B_r, B_f) but the pretraining objective itself, so it runs through
:func:`vlunlearn.training.pretrain.pretrain` (the same training loop).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from vlunlearn.data import PairDataset, Tokenizer
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

    ``recipe`` is how ``model`` was pretrained (default: the built-in recipe for its
    configuration and geometry); ``overrides`` change recipe fields, e.g. ``seed``.
    ``state_path``/``resume``/``checkpoint_every`` (default: a tenth of the run), ``precision``
    and ``grad_checkpointing`` as in :func:`vlunlearn.training.pretrain.pretrain`.
    """
    recipe = recipe or PretrainConfig(model=model.config.name, geometry=model.config.geometry)
    recipe = replace(recipe, **make_config_values(PretrainConfig, overrides))
    retrained, result = pretrain(
        recipe, retain, tokenizer=tokenizer, progress=progress, state_path=state_path, resume=resume,
        checkpoint_every=checkpoint_interval(recipe.steps, checkpoint_every), precision=precision,
        grad_checkpointing=grad_checkpointing,
    )
    return retrained, result, recipe

