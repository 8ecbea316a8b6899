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

Concept requests. AC audits sample deletion, where every forget pair has its own caption.
When a whole concept is forgotten, every forget caption names that concept ("a photo of a
sneaker."), so the off-diagonal of a forget-only matrix holds the same caption as the
diagonal and the gap is zero by construction. The audit therefore (a) never counts an entry
whose caption equals the row's own caption as a mismatch, and (b) accepts ``contrast`` pairs
(retain pairs) that fill half of the matrix: rows and columns list the forget pairs first,
then the contrast pairs, and the gap is taken over the forget rows only, i.e. how much
closer a forget image is to its own caption than to the captions of other concepts. With
distinct captions and no contrast this is exactly AC's gap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from vlunlearn.data import PairDataset, Tokenizer
from vlunlearn.evaluation.retrieval import caption_positives
from vlunlearn.evaluation.zero_shot import encode_inputs, encode_texts


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
def _matrix_of(model, subsets: Sequence[PairDataset], captions: Sequence[str], tokenizer: Tokenizer) -> Tensor:
    if not captions:
        return torch.zeros(0, 0)
    images = torch.cat([encode_inputs(model, subset) for subset in subsets if len(subset)])
    texts = encode_texts(model, tokenizer, list(captions))
    return model.geometry.pairwise_similarity(images, texts, model.curvature())


@torch.no_grad()
def alignment_matrix(model, data: PairDataset, tokenizer: Tokenizer, max_pairs: int = 64, seed: int = 0) -> Tensor:
    """``A_ij = s(v_i, t_j)`` over a seeded selection of pairs of ``data``. Returns ``(n, n)``.

    ``v_i`` is the embedding of image ``i``, ``t_j`` that of the canonical caption of pair
    ``j`` and ``s`` the geometry's ``pairwise_similarity`` (cosine, or negative geodesic
    distance for a Lorentz model). The pairs are the ``n = min(max_pairs, len(data))``
    items chosen by :func:`alignment_selection` (a seeded permutation, first ``n``, sorted).
    """
    subset = data.subset(alignment_selection(len(data), max_pairs, seed))
    return _matrix_of(model, [subset], subset.canonical_captions(), tokenizer)


def alignment_gap(matrix: Tensor, captions: Sequence[str] | None = None, rows: int | None = None) -> float:
    """Mean matched minus mean mismatched similarity of a square ``(n, n)`` matrix.

    Without ``captions``: mean of the diagonal minus mean of the off-diagonal (AC's gap).
    With ``captions`` (the ``n`` caption strings of the columns, row ``i`` paired with
    caption ``i``), an entry ``(i, j)`` counts as a mismatch only when ``captions[j] !=
    captions[i]``. Only the first ``rows`` rows enter (default: all). Raises ``ValueError``
    when the matrix is not square or no mismatched entry remains.
    """
    matrix = torch.as_tensor(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"the alignment matrix must be square, not of shape {tuple(matrix.shape)}")
    n = matrix.shape[0]
    rows = n if rows is None else rows
    matrix = matrix.detach().to(device="cpu", dtype=torch.float64)
    if captions is None:
        mismatched = ~torch.eye(n, dtype=torch.bool)
    else:
        if len(captions) != n:
            raise ValueError(f"{len(captions)} captions for a {n} x {n} alignment matrix")
        mismatched = ~caption_positives(captions)
    mismatched = mismatched[:rows]
    if rows < 1 or not bool(mismatched.any()):
        raise ValueError("the alignment gap needs at least one mismatched pair (two pairs with different captions)")
    return (matrix[:rows].diagonal().mean() - matrix[:rows][mismatched].mean()).item()


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


def _by_caption(data: PairDataset, index: Tensor) -> Tensor:
    captions = data.canonical_captions(index)
    return index[sorted(range(len(index)), key=lambda k: captions[k])]


def alignment_audit(
    model,
    data: PairDataset,
    tokenizer: Tokenizer,
    max_pairs: int = 64,
    seed: int = 0,
    contrast: PairDataset | None = None,
) -> dict:
    """The alignment matrix and gap of ``model`` on ``data``, ready for JSON.

    Without ``contrast``, the matrix covers up to ``max_pairs`` pairs of ``data``. With
    ``contrast`` (for a concept request: retain pairs), up to ``max_pairs // 2`` pairs of
    ``data`` come first and contrast pairs fill the rest, each part grouped by caption; the gap is then taken over the
    ``data`` rows only. In both cases entries whose caption equals the row's caption are not
    mismatches (see the module docstring). Returns ``{"matrix": [[float]] (row = image,
    column = caption), "gap": float (NaN when no mismatched pair exists), "n": int,
    "n_forget": int (rows that belong to ``data``), "ids": [str], "captions": [str]}``.
    """
    if contrast is None:
        parts = [(data, alignment_selection(len(data), max_pairs, seed))]
    else:  # both parts grouped by caption, so that concepts show as blocks
        own = _by_caption(data, alignment_selection(len(data), max(1, max_pairs // 2), seed))
        room = max(1, max_pairs - len(own))
        parts = [(data, own), (contrast, _by_caption(contrast, alignment_selection(len(contrast), room, seed)))]
    subsets = [source.subset(index) for source, index in parts]
    captions = [caption for subset in subsets for caption in subset.canonical_captions()]
    ids = [source.ids[i] for source, index in parts for i in index.tolist()]
    n_forget = len(parts[0][1])
    matrix = _matrix_of(model, subsets, captions, tokenizer).detach().to(device="cpu", dtype=torch.float64)
    try:
        gap = alignment_gap(matrix, captions, rows=n_forget)
    except ValueError:
        gap = math.nan
    return {"matrix": matrix.tolist(), "gap": gap, "n": len(ids), "n_forget": n_forget, "ids": ids, "captions": captions}
