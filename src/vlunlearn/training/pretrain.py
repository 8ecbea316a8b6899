"""Contrastive pretraining (CLIP and MERU recipes); the retrain oracle reuses it on D_r."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from torch import nn

from vlunlearn.data import PairDataset, Tokenizer
from vlunlearn.errors import CheckpointError, ConfigError
from vlunlearn.models import ContrastiveModel, build_model, load_any
from vlunlearn.models.configs import model_config
from vlunlearn.models.releases import check_checkpoint_file
from vlunlearn.provenance import seed_everything
from vlunlearn.training.batches import PairSampler, TokenCache
from vlunlearn.training.distributed import data_parallel
from vlunlearn.training.loop import OptimConfig, StepOutput, TrainResult, train
from vlunlearn.training.losses import contrastive_loss, entailment_loss


@dataclass(frozen=True)
class PretrainConfig:
    """How a model is pretrained (from scratch, or fine-tuned from ``init``); also the recipe of
    the retrain oracle, which repeats it on D_r.

    The defaults are the recipe for the ``tiny`` model on the built-in data, chosen so
    that CLIP and MERU both exceed 80% zero-shot accuracy on Fashion-MNIST in under
    three minutes on two CPU cores. The budget is in steps, not epochs, so that the
    retrain oracle (the same recipe on the smaller D_r) costs as much as the original.

    Attributes:
        model: named model configuration (``tiny``, ``meru-vit-s``, ...).
        geometry: ``euclidean`` (CLIP) or ``lorentz`` (MERU); must agree with the model.
        steps: optimizer steps (468 = 12 passes over the 10,000 Fashion-MNIST pairs).
        batch_size: pairs per step; larger batches give the contrastive loss more negatives.
        lr: peak AdamW learning rate (higher than MERU's 5e-4: tiny models, short runs).
        weight_decay: 0.2 as in MERU.
        warmup_fraction: share of the steps spent warming the learning rate up.
        entail_weight: weight of MERU's entailment loss (0.2 as in MERU); Lorentz only.
        caption_weights: probability of drawing the generic, family and class caption of an
            item at each step, so that the hierarchy is seen at every level (``None``: always
            the canonical, most specific caption).
        seed: initialisation and batch order.
        init: the checkpoint (model folder or MERU/CLIP ``.pth``) training starts from, as an
            absolute path; ``None``: a random initialisation.
        init_sha256: SHA-256 of ``init``'s weights file, checked whenever training starts from it.
    """

    model: str = "tiny"
    geometry: str = "euclidean"
    steps: int = 468
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.2
    warmup_fraction: float = 0.1
    entail_weight: float = 0.2
    caption_weights: tuple[float, float, float] | None = (0.1, 0.2, 0.7)
    seed: int = 0
    init: str | None = None
    init_sha256: str | None = None

    def __post_init__(self) -> None:
        if self.caption_weights is not None:  # a list when read back from JSON
            object.__setattr__(self, "caption_weights", tuple(self.caption_weights))
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"recipe: {name} must be a positive integer, not {value!r}")
        if not self.lr > 0:
            raise ConfigError(f"recipe: lr must be positive, not {self.lr!r}")
        if self.init is None:
            model_config(self.model, self.geometry)  # an unknown model or a conflicting geometry raises

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PretrainConfig":
        """The recipe recorded by :meth:`to_dict` (older records lack ``init`` and ``init_sha256``)."""
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"the recorded recipe has unknown field(s) {unknown}")
        return cls(**values)


FINETUNE_LR = 1e-5
"""The default peak learning rate of a fine-tuning recipe (``init`` set): a pretrained model's
features are worth keeping, and a from-scratch rate (2e-3) overwrites them in a few steps; 1e-5
is in the range CLIP models are usually fine-tuned with."""


def pretrain_recipe(
    stated: dict[str, Any], *, model: str | None = None, geometry: str | None = None, seed: int = 0,
    init: str | Path | None = None,
) -> tuple[PretrainConfig, ContrastiveModel | None]:
    """The recipe of a pretraining run, and the model it starts from when ``init`` is given.

    From scratch: the :class:`PretrainConfig` defaults for ``model`` (default ``tiny``) and
    ``geometry`` (default: lorentz for ``meru-*`` models, else euclidean). With ``init``: the same
    defaults with ``lr`` = :data:`FINETUNE_LR`, the checkpoint's model and geometry, its absolute
    path and SHA-256. ``stated`` fields (strings as from ``--set``) go on top.

    Raises:
        ConfigError: an unknown field or a bad value; ``model`` or ``geometry`` given with ``init``.
        CheckpointError: ``init`` is missing or cannot be read.
    """
    from vlunlearn.methods.base import make_config_values

    values = make_config_values(PretrainConfig, stated)
    if {"init", "init_sha256"} & set(values):
        raise ConfigError("the checkpoint a run starts from is given as init (--init), which records its SHA-256")
    if init is None:
        model = model or PretrainConfig.model
        geometry = geometry or ("lorentz" if model.startswith("meru") else "euclidean")
        return PretrainConfig(**{"model": model, "geometry": geometry, "seed": seed, **values}), None
    given = [flag for flag, value in (("--model", model), ("--geometry", geometry)) if value]
    if given or {"model", "geometry"} & set(values):
        raise ConfigError(f"{init} sets the model and its geometry; leave out {', '.join(given) or 'model/geometry'}")
    path = Path(init).resolve()
    digest = check_checkpoint_file(path)["sha256"]
    start = load_any(path)
    recipe = PretrainConfig(model=start.config.name, geometry=start.config.geometry, seed=seed, lr=FINETUNE_LR,
                            init=str(path), init_sha256=digest)
    return replace(recipe, **values), start


def starting_model(config: PretrainConfig) -> ContrastiveModel:
    """A new model of ``config``'s architecture, or the checkpoint ``config.init`` (its SHA-256
    checked against ``config.init_sha256`` when recorded).

    Raises:
        ConfigError: ``init`` is missing, has changed, or holds another model or geometry.
    """
    if config.init is None:
        return build_model(config.model, config.geometry)
    try:
        check_checkpoint_file(config.init, config.init_sha256)
        model = load_any(config.init)
    except CheckpointError as error:
        raise ConfigError(f"the recipe starts from {config.init}, which must be the checkpoint it recorded: "
                          f"{error}") from None
    if (model.config.name, model.config.geometry) != (config.model, config.geometry):
        raise ConfigError(f"{config.init} holds a {model.config.name}/{model.config.geometry} model, but the recipe "
                          f"is for {config.model}/{config.geometry}")
    return model


class ContrastiveObjective:
    """``L_con`` on a stream of pairs, plus ``entail_weight * L_ent`` for hyperbolic models."""

    def __init__(self, sampler: PairSampler, entail_weight: float) -> None:
        self.sampler = sampler
        self.entail_weight = entail_weight

    def __call__(self, model: nn.Module, step: int) -> StepOutput:
        batch = self.sampler.batch(step)
        input_emb, text_emb = data_parallel(model, batch.inputs, batch.tokens)
        loss = contrastive_loss(model, input_emb, text_emb)
        logs = {"contrastive": loss.item()}
        if model.geometry.hyperbolic and self.entail_weight > 0:
            entailment = entailment_loss(model, text_emb, input_emb)
            loss = loss + self.entail_weight * entailment
            logs["entailment"] = entailment.item()
        return StepOutput(loss, logs)


def pretrain(
    config: PretrainConfig,
    data: PairDataset,
    *,
    tokenizer: Tokenizer | None = None,
    state_path: Path | None = None,
    resume: bool = False,
    checkpoint_every: int = 0,
    progress: bool = True,
    precision: str = "fp32",
    grad_checkpointing: bool = False,
    model: ContrastiveModel | None = None,
) -> tuple[ContrastiveModel, TrainResult]:
    """Train a model on ``data`` with ``config``'s recipe, in ``precision`` (``fp32``, ``bf16`` or
    ``fp16``), optionally with gradient checkpointing. It starts from :func:`starting_model`
    (a random initialisation, or ``config.init``), or from ``model`` when given (``config.init``
    already loaded, e.g. by :func:`pretrain_recipe`), which is trained in place."""
    seed_everything(config.seed)
    model = (starting_model(config) if model is None else model).set_grad_checkpointing(grad_checkpointing)
    tokens = TokenCache(tokenizer or Tokenizer(), model.config.context_length)
    sampler = PairSampler(data, tokens, config.batch_size, config.seed, config.caption_weights)
    optim = OptimConfig(
        steps=config.steps,
        lr=config.lr,
        weight_decay=config.weight_decay,
        warmup_steps=int(config.warmup_fraction * config.steps),
        checkpoint_every=checkpoint_every,
        precision=precision,
    )
    objective = ContrastiveObjective(sampler, config.entail_weight)
    result = train(
        model,
        objective,
        optim,
        state_path=state_path,
        resume=resume,
        description=f"pretrain {config.model}/{config.geometry}",
        progress=progress,
    )
    return model, result

