"""Gradient ascent on the forget set (NegGrad / GA), a baseline."""

from __future__ import annotations

from dataclasses import dataclass

from vlunlearn.methods.base import MethodConfig, UnlearningMethod, encode, register
from vlunlearn.training.loop import StepOutput
from vlunlearn.training.losses import contrastive_loss


@dataclass(frozen=True)
class NegGradConfig(MethodConfig):
    """Gradient ascent; unbounded, so its budget is short.

    Attributes:
        steps: 10; ascent destroys the model quickly once D_f is forgotten.
        lr: 5e-5: at 2e-5 the forgotten concept is barely touched, at 1e-4 retain accuracy
            collapses by 14 points (built-in Fashion-MNIST, forgetting ``sneaker``).
    """

    steps: int = 10
    lr: float = 5e-5


@register("neggrad")
class NegGrad(UnlearningMethod):
    """``L = -L_con(B_f)``."""

    config_class = NegGradConfig

    def loss(self, model, retain, forget, step):
        forget_loss = contrastive_loss(model, *encode(model, forget))
        return StepOutput(-forget_loss, {"forget": forget_loss.item()})
