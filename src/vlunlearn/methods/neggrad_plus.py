"""NegGrad+ (gradient difference): descend on D_r while ascending on D_f."""

from __future__ import annotations

from dataclasses import dataclass

from vlunlearn.methods.base import MethodConfig, UnlearningMethod, encode, register
from vlunlearn.training.loop import StepOutput
from vlunlearn.training.losses import contrastive_loss


@dataclass(frozen=True)
class NegGradPlusConfig(MethodConfig):
    """Gradient difference.

    Attributes:
        gamma: weight of the ascent term; below 1 so retention dominates once D_f is forgotten.
    """

    gamma: float = 0.5


@register("neggrad_plus")
class NegGradPlus(UnlearningMethod):
    """``L = L_con(B_r) - gamma * L_con(B_f)``."""

    config_class = NegGradPlusConfig

    def loss(self, model, retain, forget, step):
        retain_loss = contrastive_loss(model, *encode(model, retain))
        forget_loss = contrastive_loss(model, *encode(model, forget))
        loss = retain_loss - self.config.gamma * forget_loss
        return StepOutput(loss, {"retain": retain_loss.item(), "forget": forget_loss.item()})
