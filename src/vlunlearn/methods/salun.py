"""SalUn (Fan et al., ICLR 2024) on dual encoders: random relabelling of the salient weights only.

Before training, the saliency of every trainable weight is ``|grad|`` of the forget loss summed
over a few forget batches; the top ``saliency_fraction`` of the weights it reaches (one global
threshold) form the mask. Gradient hooks zero every update outside the mask, and the loss is
:class:`~vlunlearn.methods.random_pairs.RandomPairs`' (the contrastive analogue of SalUn's
random labels): ``L_con`` over B_r plus the forget images paired with random D_r captions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from vlunlearn.methods.base import MethodContext, register
from vlunlearn.methods.neggrad import forget_and_retain_losses
from vlunlearn.methods.random_pairs import RandomPairs, RandomPairsConfig
from vlunlearn.training.batches import PairSampler
from vlunlearn.training.distributed import average_gradients


@dataclass(frozen=True)
class SalUnConfig(RandomPairsConfig):
    """SalUn: the random-pairs loss (and its ``tiny_lr``, 5e-4) on a saliency mask.

    Attributes:
        saliency_fraction: share of the weights the forget loss reaches (non-zero saliency) that
            may change, the top entries by saliency with one threshold across all parameters;
            0.5 is the paper's sparsity. Exactly ``max(1, round(fraction * n))`` of those ``n``
            entries are kept (ties broken by parameter order).
        saliency_batches: forget batches (sampler steps ``0 .. n-1``) whose gradients are
            summed into the saliency: 4 batches of 64 cover a few hundred forget pairs, enough
            for a stable ranking at the cost of 4 backward passes.
        retain_negatives: the forget loss of the saliency also counts the retain batch of the
            same step as negatives (as :class:`~vlunlearn.methods.neggrad.NegGradConfig`). In a
            concept request every forget caption names the same concept, so the forget batch
            alone gives a constant image-to-text loss and a saliency that only tells forget
            images apart; with retain negatives it ranks the weights that tie forget images
            to their concept rather than to other captions, like the paper's cross-entropy
            over all classes.
    """

    saliency_fraction: float = 0.5
    saliency_batches: int = 4
    retain_negatives: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.saliency_fraction <= 1:
            raise ValueError(f"saliency_fraction must be in (0, 1], got {self.saliency_fraction}")
        if self.saliency_batches < 1:
            raise ValueError(f"saliency_batches must be at least 1, got {self.saliency_batches}")


def top_fraction_masks(saliency: dict[str, Tensor], fraction: float) -> dict[str, Tensor]:
    """Boolean masks of the ``max(1, round(fraction * n))`` largest of the ``n`` *non-zero*
    entries of ``saliency`` (one global ranking; ties at the threshold go to the earliest entries
    in dict and flattening order). Entries the forget loss does not reach (saliency 0, such as
    the rows of unused tokens, most of a text tower's embedding table) are never salient: ranked
    among all weights they would fill the lower half, and the mask would keep every weight the
    forget loss moves. ``{name: (...)} -> {name: (...) bool}``."""
    flat = torch.cat([s.detach().flatten().float() for s in saliency.values()])
    reached = flat[flat > 0]
    chosen = torch.zeros_like(flat, dtype=torch.bool)
    if reached.numel():
        keep = max(1, round(fraction * reached.numel()))
        threshold = reached.kthvalue(reached.numel() - keep + 1).values
        above = flat > threshold
        ties = flat == threshold
        chosen = above | (ties & (ties.cumsum(0) <= keep - int(above.sum())))
    pieces = chosen.split([s.numel() for s in saliency.values()])
    return {name: piece.view_as(s) for (name, s), piece in zip(saliency.items(), pieces)}


def masked(mask: Tensor) -> Callable[[Tensor], Tensor]:
    """A gradient hook that zeroes the gradient outside ``mask``. ``(...) -> (...)``."""
    return lambda grad: torch.where(mask, grad, 0.0)


@register("salun")
class SalUn(RandomPairs):
    """SalUn: random relabelling (``random_pairs``) of only the weights most salient to the forget loss."""

    config_class = SalUnConfig

    def __init__(self, config: SalUnConfig, context: MethodContext) -> None:
        super().__init__(config, context)
        self.masks: dict[str, Tensor] = {}
        self.handles: list[RemovableHandle] = []

    def saliency(self, model: nn.Module, retain: PairSampler, forget: PairSampler) -> dict[str, Tensor]:
        """``|grad|`` of the forget loss summed over ``saliency_batches`` steps, for every trainable
        parameter, computed in eval mode (no dropout, no batch-norm updates); leaves no gradients."""
        cfg = self.config
        params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        was_training = model.training
        model.eval()
        model.zero_grad(set_to_none=True)
        for step in range(cfg.saliency_batches):
            loss, _ = forget_and_retain_losses(model, retain.batch(step), forget.batch(step), cfg.retain_negatives)
            loss.backward()
        average_gradients(model)
        saliency = {name: p.grad.abs() if p.grad is not None else torch.zeros_like(p) for name, p in params.items()}
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        return saliency

    def prepare(self, model, retain, forget):
        self.masks = top_fraction_masks(self.saliency(model, retain, forget), self.config.saliency_fraction)
        parameters = dict(model.named_parameters())
        self.handles = [parameters[name].register_hook(masked(mask)) for name, mask in self.masks.items()]

    def finish(self, model):
        for handle in self.handles:
            handle.remove()
        self.handles = []
