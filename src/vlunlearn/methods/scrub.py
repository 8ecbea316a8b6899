"""SCRUB (Kurmanji et al., NeurIPS 2023) on dual encoders: a student that stays close to its
teacher on D_r and moves away from it on D_f.

The teacher is the frozen original ``f0``, the student the model being unlearned. Their
"output distributions" on a batch are the in-batch similarity distributions: the softmax of
each row (image -> text) and of each column (text -> image) of the contrastive logits.

- min step (every step): ``L_min = KL_r + gamma * L_con(B_r)``;
- max step (every other step in the first ``max_fraction`` of the run, as SCRUB interleaves
  max and min epochs early on): ``L_min - alpha * KL_f``,

where ``KL_r`` and ``KL_f`` are ``KL(teacher || student)`` on B_r and on B_f. With
``retain_negatives`` (default) the forget distributions are the forget rows and columns of one
similarity matrix over ``B_f + B_r``: in a concept request every forget caption names the same
concept, so within B_f alone the row distributions are uniform whatever the model does.
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
        retain_negatives: the forget KL compares distributions over the forget *and* retain
            captions and images (see the module), so that it can act on a concept request.
    """

    alpha: float = 1.0
    gamma: float = 1.0
    max_fraction: float = 0.5
    retain_negatives: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("alpha", "gamma"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        if not 0 <= self.max_fraction <= 1:
            raise ValueError(f"max_fraction must be in [0, 1], got {self.max_fraction}")


def row_kl(teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
    """Mean over rows of ``KL(softmax(teacher row) || softmax(student row))``. ``(B1, B2), (B1, B2) -> ()``."""
    return F.kl_div(student_logits.log_softmax(-1), teacher_logits.log_softmax(-1), log_target=True,
                    reduction="batchmean")


def similarity_kl(teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
    """``KL(teacher || student)`` of the row softmaxes (image -> text) and of the column softmaxes
    (text -> image), each a mean over its rows or columns, averaged over both. ``(B1, B2), (B1, B2) -> ()``."""
    return (row_kl(teacher_logits, student_logits) + row_kl(teacher_logits.T, student_logits.T)) / 2


def leading_kl(teacher_logits: Tensor, student_logits: Tensor, n: int) -> Tensor:
    """:func:`similarity_kl` restricted to the first ``n`` rows (over all columns) and the first
    ``n`` columns (over all rows). ``(B, B), (B, B) -> ()``."""
    rows = row_kl(teacher_logits[:n], student_logits[:n])
    return (rows + row_kl(teacher_logits[:, :n].T, student_logits[:, :n].T)) / 2


@register("scrub")
class Scrub(UnlearningMethod):
    """SCRUB: a student that keeps its teacher's (the original's) similarities on D_r and departs from them on D_f."""

    config_class = ScrubConfig

    def is_max_step(self, step: int) -> bool:
        """Whether ``step`` also ascends the forget KL (needs the resolved ``steps``)."""
        if self.config.steps is None:
            raise ValueError("SCRUB's step schedule needs a resolved config (steps is None)")
        return step % 2 == 0 and step < self.config.max_fraction * self.config.steps

    def joint_logits(self, model: nn.Module, forget: PairBatch, retain: PairBatch) -> tuple[Tensor, Tensor]:
        """Teacher and student contrastive logits over ``B_f + B_r`` (forget first). ``-> (N, N), (N, N)``."""
        with torch.no_grad():
            teacher = contrastive_logits(self.context.original, *joint(encode_original(self.context, forget),
                                                                       encode_original(self.context, retain)))
        return teacher, contrastive_logits(model, *joint(encode(model, forget), encode(model, retain)))

    def loss(self, model, retain, forget, step):
        cfg = self.config
        n = len(forget)
        teacher, student = self.joint_logits(model, forget, retain)
        kl_retain = similarity_kl(teacher[n:, n:], student[n:, n:])
        contrastive = pairwise_contrastive_loss(student[n:, n:]).mean()
        loss = kl_retain + cfg.gamma * contrastive
        if cfg.retain_negatives:
            kl_forget = leading_kl(teacher, student, n)
        else:
            kl_forget = similarity_kl(teacher[:n, :n], student[:n, :n])
        if self.is_max_step(step):
            loss = loss - cfg.alpha * kl_forget
        return StepOutput(loss, {"kl_retain": kl_retain.item(), "kl_forget": kl_forget.item(), "retain": contrastive.item()})


def joint(first: tuple[Tensor, Tensor], second: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Image and text embeddings of two batches, stacked. ``(B1, D) x 2, (B2, D) x 2 -> (B1 + B2, D) x 2``."""
    return torch.cat([first[0], second[0]]), torch.cat([first[1], second[1]])
