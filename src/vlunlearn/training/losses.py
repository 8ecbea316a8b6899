"""Losses shared by pretraining and the unlearning methods.

All of them go through the model's geometry, so one formula serves CLIP (cosine)
and MERU (negative geodesic distance).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vlunlearn.geometry import lorentz


def contrastive_logits(model, input_emb: Tensor, text_emb: Tensor) -> Tensor:
    """Input-to-text logits ``exp(logit_scale) * s(input_i, text_j)`` (an input is an image or a graph). ``(B1, D), (B2, D) -> (B1, B2)``."""
    similarity = model.geometry.pairwise_similarity(input_emb, text_emb, model.curvature())
    return model.logit_scale.exp() * similarity


def pairwise_contrastive_loss(logits: Tensor, targets: Tensor | None = None) -> Tensor:
    """Symmetric cross-entropy per pair: ``l_i = (CE(row i) + CE(column i)) / 2``.

    ``logits`` is ``(B, B)`` input-to-text; ``targets`` (B,) gives the column of each
    row's positive (default: the diagonal). Returns ``(B,)``.
    """
    if targets is None:
        targets = torch.arange(logits.shape[0], device=logits.device)
    input_to_text = F.cross_entropy(logits, targets, reduction="none")
    text_to_input = F.cross_entropy(logits.T, targets, reduction="none")
    return (input_to_text + text_to_input) / 2


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
