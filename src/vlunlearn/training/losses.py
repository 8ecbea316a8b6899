"""Losses shared by pretraining and the unlearning methods.

All of them go through the model's geometry, so one formula serves CLIP (cosine)
and MERU (negative geodesic distance).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vlunlearn.geometry import lorentz
from vlunlearn.geometry.blocks import row_blocks


def contrastive_logits(model, input_emb: Tensor, text_emb: Tensor) -> Tensor:
    """Input-to-text logits ``exp(logit_scale) * s(input_i, text_j)`` (an input is an image or a graph). ``(B1, D), (B2, D) -> (B1, B2)``."""
    similarity = model.geometry.pairwise_similarity(input_emb, text_emb, model.curvature())
    return model.logit_scale.exp() * similarity


def pairwise_contrastive_loss(logits: Tensor, targets: Tensor | None = None) -> Tensor:
    """Symmetric cross-entropy per pair: ``l_i = (CE(row i) + CE(column i)) / 2``.

    ``logits`` is ``(B, B)`` input-to-text; ``targets`` (B,) gives the column of each
    row's positive (default: the diagonal), and so the row of each column's. Returns ``(B,)``.
    Half-precision logits are upcast to float32 first.
    """
    if targets is None:
        targets = torch.arange(logits.shape[0], device=logits.device)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return _SymmetricCrossEntropy.apply(logits, targets)


class _SymmetricCrossEntropy(torch.autograd.Function):
    """``pairwise_contrastive_loss`` with log-sum-exps over rows and columns and a backward that
    writes the one ``(B, B)`` gradient block by block: the same values as ``F.cross_entropy``
    on ``logits`` and ``logits.T``, without its transposed copies and one-hot buffers."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor) -> Tensor:
        n = logits.shape[0]
        if logits.shape != (n, n) or targets.shape != (n,):
            raise ValueError(f"need square logits and one target per row, "
                             f"got {tuple(logits.shape)} and {tuple(targets.shape)}")
        row_lse = logits.new_empty(n)
        column_lse = logits.new_full((n,), -math.inf)
        for rows in row_blocks(n, n, logits.device):
            row_lse[rows] = torch.logsumexp(logits[rows], 1)
            column_lse = torch.logaddexp(column_lse, torch.logsumexp(logits[rows], 0))
        index = torch.arange(n, device=logits.device)
        ctx.save_for_backward(logits, row_lse, column_lse, targets)
        return (row_lse - logits[index, targets] + column_lse - logits[targets, index]) / 2

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        logits, row_lse, column_lse, targets = ctx.saved_tensors
        half = grad / 2
        # the gradient of sum_i grad_i l_i: row i gets half_i (softmax(row i) - onehot(targets_i)),
        # column j gets half_j (softmax(column j) - onehot(targets_j))
        grad_logits, blocks = torch.empty_like(logits), row_blocks(*logits.shape, logits.device)
        scratch = logits.new_empty(logits[blocks[0]].shape) if blocks else None
        for rows in blocks:
            block = torch.sub(logits[rows], row_lse[rows, None], out=grad_logits[rows]).exp_().mul_(half[rows, None])
            block.add_(torch.sub(logits[rows], column_lse, out=scratch[: len(block)]).exp_().mul_(half))
        index = torch.arange(len(targets), device=logits.device)
        grad_logits.index_put_((index, targets), -half, accumulate=True)
        grad_logits.index_put_((targets, index), -half, accumulate=True)
        return grad_logits, None


def contrastive_loss(model, input_emb: Tensor, text_emb: Tensor) -> Tensor:
    """Mean symmetric contrastive loss ``L_con`` of matched pairs. Returns a scalar."""
    return pairwise_contrastive_loss(contrastive_logits(model, input_emb, text_emb)).mean()


def entailment_violation(model, text_emb: Tensor, input_emb: Tensor) -> Tensor:
    """Per-pair ``max(0, ext(t, v) - aper(t))``: how far each input lies outside its text's cone. ``(B,)``."""
    c = model.curvature()
    if c is None:
        raise ValueError("entailment cones exist only in hyperbolic geometry; this model is Euclidean")
    return torch.clamp(lorentz.exterior_angle(text_emb, input_emb, c) - lorentz.half_aperture(text_emb, c), min=0)


def entailment_loss(model, text_emb: Tensor, input_emb: Tensor) -> Tensor:
    """MERU's ``L_ent``: mean entailment-cone violation of matched (text parent, input child) pairs."""
    return entailment_violation(model, text_emb, input_emb).mean()
