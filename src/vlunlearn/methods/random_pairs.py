"""Random pairs (the relabelling analogue): forget images trained against D_r captions."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlunlearn.methods.base import MethodConfig, UnlearningMethod, register
from vlunlearn.training.batches import concat_tokens
from vlunlearn.training.distributed import data_parallel
from vlunlearn.training.loop import StepOutput
from vlunlearn.training.losses import contrastive_loss


@dataclass(frozen=True)
class RandomPairsConfig(MethodConfig):
    """Random relabelling.

    Attributes:
        lr: 5e-4; at the shared 2e-4 the relabelled pairs leave half of the forgotten
            concept recognisable within the budget (built-in Fashion-MNIST).
    """

    lr: float = 5e-4


@register("random_pairs")
class RandomPairs(UnlearningMethod):
    """``L = L_con(B_r + B_f')`` where B_f' pairs each forget image with a random D_r caption."""

    config_class = RandomPairsConfig

    def loss(self, model, retain, forget, step):
        random_tokens = self.context.random_retain_tokens(len(forget), step, salt=11)
        images = torch.cat([retain.images, forget.images])
        tokens = concat_tokens(retain.tokens, random_tokens)
        loss = contrastive_loss(model, *data_parallel(model, images, tokens))
        return StepOutput(loss, {"contrastive": loss.item()})

