"""NegGrad+ (gradient difference): descend on D_r while ascending on D_f."""

from __future__ import annotations

from dataclasses import dataclass

from vlunlearn.methods.base import MethodConfig, UnlearningMethod, register
from vlunlearn.methods.neggrad import forget_and_retain_losses
from vlunlearn.training.loop import StepOutput


@dataclass(frozen=True)
class NegGradPlusConfig(MethodConfig):
    """Gradient difference.

    Attributes:
        gamma: weight of the ascent term; below 1 so retention dominates once D_f is forgotten.
        retain_negatives: forget and retain pairs share one similarity matrix, so the retain
            captions are negatives of the forget pairs (see :class:`~vlunlearn.methods.neggrad.NegGradConfig`).
    """

    gamma: float = 0.5
    retain_negatives: bool = True


@register("neggrad_plus")
class NegGradPlus(UnlearningMethod):
    """Gradient difference: ``L = L_con(B_r) - gamma * L_con(B_f)``."""

    config_class = NegGradPlusConfig

    def loss(self, model, retain, forget, step):
        forget_loss, retain_loss = forget_and_retain_losses(model, retain, forget, self.config.retain_negatives)
        loss = retain_loss - self.config.gamma * forget_loss
        return StepOutput(loss, {"retain": retain_loss.item(), "forget": forget_loss.item()})
