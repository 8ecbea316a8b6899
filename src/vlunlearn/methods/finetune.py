"""Fine-tune: keep training on D_r only and hope D_f fades (a baseline)."""

from __future__ import annotations

from dataclasses import dataclass

from vlunlearn.methods.base import MethodConfig, UnlearningMethod, encode, register
from vlunlearn.training.loop import StepOutput
from vlunlearn.training.losses import contrastive_loss


@dataclass(frozen=True)
class FinetuneConfig(MethodConfig):
    """Fine-tuning on D_r; the shared defaults of :class:`MethodConfig` apply."""


@register("finetune")
class Finetune(UnlearningMethod):
    """Fine-tuning on the retain set only: ``L = L_con(B_r)``."""

    config_class = FinetuneConfig

    def loss(self, model, retain, forget, step):
        loss = contrastive_loss(model, *encode(model, retain))
        return StepOutput(loss, {"retain": loss.item()})
