"""Black-box alignment audit (Alignment Calibration, "AC"): the alignment matrix and its gap.

A data owner who can only query the encoders picks ``n`` of their pairs (usually forget
pairs) and looks at ``A_ij = s(v_i, t_j)``, the similarity of image ``i`` to caption ``j``
under the model's geometry (cosine for CLIP, negative geodesic distance for MERU). A model
that still remembers the pairs has a bright diagonal; after unlearning the diagonal should
fade towards the off-diagonal, as it is in a model retrained without them. The alignment
gap ``mean(diag A) - mean(offdiag A)`` summarises the picture in one number, and the
difference of two models' matrices (:func:`alignment_gap_matrix`, AC's "AGM") shows where
they differ.

The AC paper's exact definitions were not available; this follows DESIGN §5 and the
reconstruction in ``reference/ac.md`` §4.5, with the CLIP form ``A_ij = s(g_I(I_i), g_T(T_j))``
on projected embeddings, the canonical (most specific) caption of each pair, and no
augmentation.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vlunlearn.data import PairDataset, Tokenizer
from vlunlearn.evaluation.zero_shot import encode_images, encode_texts


def alignment_selection(num_items: int, max_pairs: int = 64, seed: int = 0) -> Tensor:
    """The indices of the pairs an audit looks at, in increasing order.

    A permutation of ``range(num_items)`` drawn from a ``torch.Generator`` seeded with
    ``seed``; its first ``n = min(max_pairs, num_items)`` entries are kept and sorted, so
    rows and columns follow the dataset order. The selection depends only on
    ``(num_items, max_pairs, seed)``: the same data audited under the original, unlearned
    and retrained models gives matrices over the same pairs. With ``max_pairs >= num_items``
    every pair is used.
    """
    if max_pairs < 1:
        raise ValueError(f"max_pairs must be at least 1, not {max_pairs}")
    if num_items < 0:
        raise ValueError(f"num_items must be non-negative, not {num_items}")
    generator = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(num_items, generator=generator)
    return order[: min(max_pairs, num_items)].sort().values


@torch.no_grad()
def _matrix_at(model, data: PairDataset, tokenizer: Tokenizer, index: Tensor) -> Tensor:
    if index.numel() == 0:
        return torch.zeros(0, 0)
    subset = data.subset(index)
    images = encode_images(model, subset)
    texts = encode_texts(model, tokenizer, subset.canonical_captions())
    return model.geometry.pairwise_similarity(images, texts, model.curvature())


@torch.no_grad()
def alignment_matrix(model, data: PairDataset, tokenizer: Tokenizer, max_pairs: int = 64, seed: int = 0) -> Tensor:
    """``A_ij = s(v_i, t_j)`` over a seeded selection of pairs of ``data``. Returns ``(n, n)``.

    ``v_i`` is the embedding of image ``i``, ``t_j`` that of the canonical caption of pair
    ``j`` and ``s`` the geometry's ``pairwise_similarity`` (cosine, or negative geodesic
    distance for a Lorentz model). The pairs are the ``n = min(max_pairs, len(data))``
    items chosen by :func:`alignment_selection` (a seeded permutation, first ``n``, sorted).
    """
    return _matrix_at(model, data, tokenizer, alignment_selection(len(data), max_pairs, seed))


def alignment_gap(matrix: Tensor) -> float:
    """Mean of the diagonal minus mean of the off-diagonal entries of a square ``(n, n)`` matrix.

    Positive when matched pairs are more similar than mismatched ones. Needs ``n >= 2``
    (otherwise there is no off-diagonal) and raises ``ValueError`` otherwise.
    """
    matrix = torch.as_tensor(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"the alignment matrix must be square, not of shape {tuple(matrix.shape)}")
    n = matrix.shape[0]
    if n < 2:
        raise ValueError(f"the alignment gap needs at least 2 pairs, got {n}")
    matrix = matrix.detach().to(device="cpu", dtype=torch.float64)
    diagonal = matrix.diagonal()
    off_diagonal_mean = (matrix.sum() - diagonal.sum()) / (n * n - n)
    return (diagonal.mean() - off_diagonal_mean).item()


def alignment_gap_matrix(matrix: Tensor, reference: Tensor) -> Tensor:
    """AC's alignment gap matrix: the element-wise difference ``matrix - reference``.

    For example the original model's matrix minus the unlearned one's, or the unlearned
    model's minus the retrained one's, both computed over the same pairs (same data, same
    ``max_pairs`` and ``seed``).
    """
    matrix, reference = torch.as_tensor(matrix), torch.as_tensor(reference)
    if matrix.shape != reference.shape:
        raise ValueError(f"alignment matrices of different shapes: {tuple(matrix.shape)} and {tuple(reference.shape)}")
    return matrix - reference


def alignment_audit(model, data: PairDataset, tokenizer: Tokenizer, max_pairs: int = 64, seed: int = 0) -> dict:
    """The alignment matrix and gap of ``model`` on ``data``, ready for JSON.

    Returns ``{"matrix": [[float]] (n x n, row = image, column = caption), "gap": float,
    "n": int, "ids": [str]}`` where ``ids`` are the item ids of the rows (and columns).
    ``gap`` is NaN when fewer than two pairs are available.
    """
    index = alignment_selection(len(data), max_pairs, seed)
    matrix = _matrix_at(model, data, tokenizer, index).detach().to(device="cpu", dtype=torch.float64)
    n = matrix.shape[0]
    return {
        "matrix": matrix.tolist(),
        "gap": alignment_gap(matrix) if n >= 2 else math.nan,
        "n": n,
        "ids": [data.ids[i] for i in index.tolist()],
    }
