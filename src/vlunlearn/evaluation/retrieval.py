"""Image-text retrieval: Recall@K in both directions (image->text and text->image).

Ranking is by the model's geometry (cosine for CLIP, negative geodesic distance for MERU).
Ties are broken by gallery index (a stable descending sort): of two equally similar gallery
items the one with the lower index ranks first. A query counts as a hit at ``k`` when any of
its positives is among its first ``k`` gallery items; a query with no positive is a miss.

:func:`retrieval_metrics` follows CLIP_benchmark's convention with deduplicated galleries.
Captions repeat in the built-in data (many items share the same canonical caption), so the
text gallery holds each distinct canonical caption once: a query image is a hit when the entry
with its own caption string is in the top K, and a distinct caption is a hit when any image
captioned with that string is. Queries (``data``) may be a subset of a larger gallery, e.g. D_f
retrieved against the whole training set (MultiDelete's convention).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from vlunlearn.data import PairDataset, Tokenizer
from vlunlearn.evaluation.zero_shot import encode_inputs, encode_texts

__all__ = [
    "best_positive_rank", "caption_ids", "caption_positives", "gallery_positions", "recall_at_k", "recall_from_ranks",
    "retrieval_metrics",
]

_ROW_CHUNK = 1024  # query rows ranked at a time, to bound the memory of the sort


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive ints, got {ks!r}")
    return ks


def best_positive_rank(similarity: Tensor, positives: Tensor | None = None) -> Tensor:
    """Rank (0 = first) of each query's best-ranked positive; ``Ng`` when a query has none.

    ``similarity`` is ``(Nq, Ng)``, larger meaning more similar; ``positives`` a boolean
    ``(Nq, Ng)`` mask, or ``None`` for the diagonal of a square matrix. Gallery items are ranked
    by a stable descending sort, so ties go to the lower gallery index. Returns int64 ``(Nq,)``.
    """
    if similarity.ndim != 2:
        raise ValueError(f"similarity must be a 2-d (queries, gallery) matrix, not shape {tuple(similarity.shape)}")
    nq, ng = similarity.shape
    if positives is None:
        if nq != ng:
            raise ValueError(f"positives=None means the diagonal, which needs a square matrix, not {nq}x{ng}")
        positives = torch.eye(nq, dtype=torch.bool, device=similarity.device)
    elif positives.shape != similarity.shape:
        raise ValueError(f"positives has shape {tuple(positives.shape)}, similarity {tuple(similarity.shape)}")
    if similarity.is_floating_point() and torch.isnan(similarity).any():
        raise ValueError("similarity contains NaN; ranks would be meaningless")
    positives = positives.to(device=similarity.device, dtype=torch.bool)
    ranks = []
    for start in range(0, nq, _ROW_CHUNK):
        rows = slice(start, start + _ROW_CHUNK)
        order = torch.sort(similarity[rows], dim=1, descending=True, stable=True).indices
        hits = positives[rows].gather(1, order)
        first = hits.to(torch.int8).argmax(dim=1)  # first True; 0 when there is none
        ranks.append(torch.where(hits.any(dim=1), first, torch.full_like(first, ng)))
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.int64, device=similarity.device)


def recall_from_ranks(ranks: Tensor, gallery_size: int, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@K in percent from best-positive ranks (see :func:`best_positive_rank`).

    Keys are ``"r{k}"``. A query is a hit at ``k`` when its rank is below ``min(k, gallery_size)``,
    so a query without positives (rank ``gallery_size``) is never a hit. No queries -> NaN.
    """
    ks = _check_ks(ks)
    if ranks.numel() == 0:
        return {f"r{k}": float("nan") for k in ks}
    return {f"r{k}": 100.0 * (ranks < min(k, gallery_size)).double().mean().item() for k in ks}


def recall_at_k(similarity: Tensor, positives: Tensor | None = None,
                ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Percent of queries whose top-k gallery items contain a positive, for each k in ``ks``.

    ``similarity`` is ``(Nq, Ng)`` (larger is more similar); ``positives`` a boolean ``(Nq, Ng)``
    mask, ``None`` meaning the diagonal of a square matrix. Ties are broken by gallery index
    (lower first); ``k > Ng`` is capped at ``Ng``; a query with no positive is a miss; no queries
    gives NaN. Returns ``{"r1": ..., "r5": ..., "r10": ...}`` for the default ``ks``.
    """
    ks = _check_ks(ks)
    return recall_from_ranks(best_positive_rank(similarity, positives), similarity.shape[1], ks)


def caption_ids(captions: Sequence[str]) -> Tensor:
    """One int64 id per caption, equal exactly when the caption strings are identical. ``(N,)``."""
    index: dict[str, int] = {}
    return torch.tensor([index.setdefault(caption, len(index)) for caption in captions], dtype=torch.int64)


def caption_positives(captions: Sequence[str]) -> Tensor:
    """Boolean ``(N, N)`` mask: items i and j carry the identical caption string."""
    ids = caption_ids(captions)
    return ids[:, None] == ids[None, :]


def gallery_positions(data: PairDataset, gallery: PairDataset) -> Tensor:
    """Index in ``gallery`` of each item of ``data``, matched by id. ``(len(data),)`` int64.

    Raises ``ValueError`` when some item of ``data`` is not in ``gallery``.
    """
    position = {item_id: i for i, item_id in enumerate(gallery.ids)}
    missing = [item_id for item_id in data.ids if item_id not in position]
    if missing:
        raise ValueError(f"{len(missing)} item(s) of {data.name!r} are not in the gallery {gallery.name!r} "
                         f"(queries must be a subset of the gallery by id): {', '.join(missing[:5])}")
    return torch.tensor([position[item_id] for item_id in data.ids], dtype=torch.int64)


def _chunked_ranks(similarity_rows, targets: Tensor, gallery_ids: Tensor) -> Tensor:
    """Best-positive ranks of queries whose positives are the gallery entries with id ``targets[q]``.

    ``similarity_rows(rows)`` gives the ``(len(rows), Ng)`` similarity of a slice of queries;
    ``targets`` is ``(Nq,)`` and ``gallery_ids`` ``(Ng,)``. Returns int64 ``(Nq,)``.
    """
    ranks = []
    for start in range(0, targets.numel(), _ROW_CHUNK):
        rows = slice(start, start + _ROW_CHUNK)
        positives = targets[rows, None] == gallery_ids[None, :]
        ranks.append(best_positive_rank(similarity_rows(rows), positives))
    return torch.cat(ranks)


@torch.no_grad()
def retrieval_metrics(model, data: PairDataset, tokenizer: Tokenizer, ks: Sequence[int] = (1, 5, 10),
                      batch_size: int = 500, gallery: PairDataset | None = None) -> dict[str, float]:
    """Image->text and text->image Recall@K (percent) of the items of ``data`` against ``gallery``.

    ``gallery`` (default ``data``) must contain every item of ``data`` (by id). Image->text:
    each image of ``data`` against the distinct canonical captions of ``gallery``, a hit when
    its own caption is in the top K. Text->image: each distinct canonical caption of ``data``
    against all images of ``gallery``, a hit when an image with that caption is in the top K.
    Keys: ``i2t_r1, i2t_r5, i2t_r10, t2i_r1, t2i_r5, t2i_r10`` for the default ``ks``.
    """
    ks = _check_ks(ks)
    gallery = data if gallery is None else gallery
    positions = gallery_positions(data, gallery)  # (Nq,) gallery rows of the query images
    if len(data) == 0:
        return {f"{direction}_r{k}": float("nan") for direction in ("i2t", "t2i") for k in ks}
    captions = gallery.canonical_captions()
    image_caption = caption_ids(captions)  # (Ng,) index into the distinct captions, in order of first use
    distinct = list(dict.fromkeys(captions))
    input_emb = encode_inputs(model, gallery, batch_size)  # (Ng, D)
    text_emb = encode_texts(model, tokenizer, distinct, batch_size)  # (Nt, D)
    c = model.curvature()
    similarity = model.geometry.pairwise_similarity
    query_captions = image_caption[positions].unique()  # (Nt_q,) distinct captions of data
    i2t = _chunked_ranks(lambda rows: similarity(input_emb[positions[rows]], text_emb, c),
                         image_caption[positions], torch.arange(len(distinct)))
    t2i = _chunked_ranks(lambda rows: similarity(input_emb, text_emb[query_captions[rows]], c).T,
                         query_captions, image_caption)
    result = {f"i2t_{key}": value for key, value in recall_from_ranks(i2t, len(distinct), ks).items()}
    result.update({f"t2i_{key}": value for key, value in recall_from_ranks(t2i, len(gallery), ks).items()})
    return result
