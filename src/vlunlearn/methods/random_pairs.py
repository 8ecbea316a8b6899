"""Random pairs (the relabelling analogue): forget inputs trained against D_r captions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vlunlearn.data.graphs import concat_inputs
from vlunlearn.methods.base import MethodConfig, UnlearningMethod, register
from vlunlearn.training.batches import concat_tokens
from vlunlearn.training.distributed import data_parallel
from vlunlearn.training.loop import StepOutput
from vlunlearn.training.losses import contrastive_loss


@dataclass(frozen=True)
class RandomPairsConfig(MethodConfig):
    """Random relabelling.

    Attributes:
        tiny_lr: 5e-4; at the shared 2e-4 the relabelled pairs leave half of the forgotten
            concept recognisable within the budget (built-in Fashion-MNIST).
    """

    tiny_lr: ClassVar[float] = 5e-4


@register("random_pairs")
class RandomPairs(UnlearningMethod):
    """Random relabelling: ``L = L_con(B_r + B_f')``, each forget input paired with a random D_r caption."""

    config_class = RandomPairsConfig

    def loss(self, model, retain, forget, step):
        # salt 13, AC's: AC with alpha = 1, beta = 0 and D_r partners is this loss exactly
        random_tokens = self.context.random_retain_tokens(len(forget), step, salt=13)
        inputs = concat_inputs([retain.inputs, forget.inputs])
        tokens = concat_tokens(retain.tokens, random_tokens)
        loss = contrastive_loss(model, *data_parallel(model, inputs, tokens))
        return StepOutput(loss, {"contrastive": loss.item()})

