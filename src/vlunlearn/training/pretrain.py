"""Contrastive pretraining (CLIP and MERU recipes); the retrain oracle reuses it on D_r."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from torch import nn

from vlunlearn.data import PairDataset, Tokenizer
from vlunlearn.models import ContrastiveModel, build_model
from vlunlearn.provenance import seed_everything
from vlunlearn.training.batches import PairSampler, TokenCache
from vlunlearn.training.distributed import data_parallel
from vlunlearn.training.loop import OptimConfig, StepOutput, TrainResult, train
from vlunlearn.training.losses import contrastive_loss, entailment_loss


@dataclass(frozen=True)
class PretrainConfig:
    """How a model is pretrained from scratch; also the recipe of the retrain oracle.

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

    def to_dict(self) -> dict:
        return asdict(self)


class ContrastiveObjective:
    """``L_con`` on a stream of pairs, plus ``entail_weight * L_ent`` for hyperbolic models."""

    def __init__(self, sampler: PairSampler, entail_weight: float) -> None:
        self.sampler = sampler
        self.entail_weight = entail_weight

    def __call__(self, model: nn.Module, step: int) -> StepOutput:
        batch = self.sampler.batch(step)
        image_emb, text_emb = data_parallel(model, batch.images, batch.tokens)
        loss = contrastive_loss(model, image_emb, text_emb)
        logs = {"contrastive": loss.item()}
        if model.geometry.hyperbolic and self.entail_weight > 0:
            entailment = entailment_loss(model, text_emb, image_emb)
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
) -> tuple[ContrastiveModel, TrainResult]:
    """Train a new model from scratch on ``data`` with ``config``'s recipe, in ``precision``
    (``fp32``, ``bf16`` or ``fp16``), optionally with gradient checkpointing."""
    seed_everything(config.seed)
    model = build_model(config.model, config.geometry).set_grad_checkpointing(grad_checkpointing)
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

