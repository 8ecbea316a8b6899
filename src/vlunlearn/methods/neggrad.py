"""Gradient ascent on the forget set (NegGrad / GA), a baseline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from vlunlearn.methods.base import MethodConfig, UnlearningMethod, encode, register
from vlunlearn.training.loop import StepOutput
from vlunlearn.training.losses import contrastive_logits, contrastive_loss, pairwise_contrastive_loss


@dataclass(frozen=True)
class NegGradConfig(MethodConfig):
    """Gradient ascent; unbounded, so its budget is short.

    Attributes:
        epochs: 1; ascent destroys the model quickly once D_f is forgotten.
        tiny_lr: 5e-5: at 2e-5 the forgotten concept is barely touched, at 1e-4 retain accuracy
            collapses (built-in data, forgetting ``sneaker``).
        retain_negatives: the forget pairs' contrastive loss also counts the retain batch as
            negatives. In a concept request every in-batch negative of a forget pair names the
            same concept, so without them the image-to-text term is constant and the
            text-to-image gradient sums to zero: ascent can barely act.
    """

    tiny_lr: ClassVar[float] = 5e-5
    epochs: float = 1.0
    retain_negatives: bool = True


def forget_and_retain_losses(model, retain, forget, retain_negatives: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean contrastive loss of the forget pairs and of the retain pairs. With ``retain_negatives``
    both come from one similarity matrix over ``B_f + B_r``, so each side is the other's negatives."""
    forget_input, forget_text = encode(model, forget)
    retain_input, retain_text = encode(model, retain)
    if not retain_negatives:
        return contrastive_loss(model, forget_input, forget_text), contrastive_loss(model, retain_input, retain_text)
    logits = contrastive_logits(model, torch.cat([forget_input, retain_input]), torch.cat([forget_text, retain_text]))
    per_pair = pairwise_contrastive_loss(logits)
    return per_pair[: len(forget_input)].mean(), per_pair[len(forget_input) :].mean()


@register("neggrad")
class NegGrad(UnlearningMethod):
    """Gradient ascent on the forget pairs' contrastive loss: ``L = -L_con(B_f)``."""

    config_class = NegGradConfig

    def loss(self, model, retain, forget, step):
        forget_loss, _ = forget_and_retain_losses(model, retain, forget, self.config.retain_negatives)
        return StepOutput(-forget_loss, {"forget": forget_loss.item()})
