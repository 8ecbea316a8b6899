"""SCRUB (Kurmanji et al., NeurIPS 2023) on dual encoders: a student that stays close to its
teacher on D_r and moves away from it on D_f.

The teacher is the frozen original ``f0``, the student the model being unlearned. Their
"output distributions" on a batch are the in-batch similarity distributions: the softmax of
each row (image -> text) and of each column (text -> image) of the contrastive logits.

- min step (every step): ``L_min = KL_r + gamma * L_con(B_r)``;
- max step (every other step in the first ``max_fraction`` of the run, as SCRUB interleaves
  max and min epochs early on): ``L_min - alpha * KL_f``,

where ``KL_r`` and ``KL_f`` are ``KL(teacher || student)`` on B_r and on B_f.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlunlearn.methods.base import MethodConfig, UnlearningMethod, encode, encode_original, register
from vlunlearn.training.batches import PairBatch
from vlunlearn.training.loop import StepOutput
from vlunlearn.training.losses import contrastive_logits, pairwise_contrastive_loss


@dataclass(frozen=True)
class ScrubConfig(MethodConfig):
    """SCRUB; the shared budget and ``tiny_lr`` (2e-4, not tuned for SCRUB): unlike NegGrad's
    unbounded ascent, each max step also descends the retain terms and max steps end halfway.

    Attributes:
        alpha: weight of the forget KL on max steps; 1.0 weighs it like the retain KL it
            competes with (the paper's max step uses the KL unweighted).
        gamma: weight of the retain contrastive loss, SCRUB's task loss; 1.0 is the paper's
            ``gamma`` on its cross-entropy term.
        max_fraction: max steps are the even steps in the first ``max_fraction`` of the run;
            0.5 alternates max and min steps over the first half, then only min steps repair
            the retained knowledge (the paper stops max steps after a few early epochs).
    """

    alpha: float = 1.0
    gamma: float = 1.0
    max_fraction: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("alpha", "gamma"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        if not 0 <= self.max_fraction <= 1:
            raise ValueError(f"max_fraction must be in [0, 1], got {self.max_fraction}")


def similarity_kl(teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
    """``KL(teacher || student)`` of the row softmaxes (image -> text) and of the column softmaxes
    (text -> image), each a mean over its rows or columns, averaged over both. ``(B1, B2), (B1, B2) -> ()``."""

    def kl(teacher: Tensor, student: Tensor) -> Tensor:
        return F.kl_div(student.log_softmax(-1), teacher.log_softmax(-1), log_target=True, reduction="batchmean")

    return (kl(teacher_logits, student_logits) + kl(teacher_logits.T, student_logits.T)) / 2


@register("scrub")
class Scrub(UnlearningMethod):
    """SCRUB: a student that keeps its teacher's (the original's) similarities on D_r and departs from them on D_f."""

    config_class = ScrubConfig

    def is_max_step(self, step: int) -> bool:
        """Whether ``step`` also ascends the forget KL (needs the resolved ``steps``)."""
        if self.config.steps is None:
            raise ValueError("SCRUB's step schedule needs a resolved config (steps is None)")
        return step % 2 == 0 and step < self.config.max_fraction * self.config.steps

    def batch_logits(self, model: nn.Module, batch: PairBatch) -> tuple[Tensor, Tensor]:
        """Teacher and student contrastive logits of ``batch``. ``-> (B, B), (B, B)``."""
        with torch.no_grad():
            teacher = contrastive_logits(self.context.original, *encode_original(self.context, batch))
        return teacher, contrastive_logits(model, *encode(model, batch))

    def loss(self, model, retain, forget, step):
        cfg = self.config
        teacher, student = self.batch_logits(model, retain)
        kl_retain = similarity_kl(teacher, student)
        contrastive = pairwise_contrastive_loss(student).mean()
        loss = kl_retain + cfg.gamma * contrastive
        max_step = self.is_max_step(step)
        with torch.set_grad_enabled(max_step and torch.is_grad_enabled()):
            kl_forget = similarity_kl(*self.batch_logits(model, forget))
        if max_step:
            loss = loss - cfg.alpha * kl_forget
        return StepOutput(loss, {"kl_retain": kl_retain.item(), "kl_forget": kl_forget.item(), "retain": contrastive.item()})
