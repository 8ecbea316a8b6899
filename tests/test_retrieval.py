"""Recall@K on hand-built similarity matrices (ranks, custom positives, capped k, ties) and
retrieval_metrics on a fake model whose embeddings are fixed: deduplicated caption galleries,
positives by the item's own caption, and queries against a larger gallery."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from vlunlearn.data import PairDataset
from vlunlearn.evaluation.retrieval import (
    best_positive_rank,
    caption_ids,
    caption_positives,
    gallery_positions,
    recall_at_k,
    retrieval_metrics,
)
from vlunlearn.geometry import EUCLIDEAN

# --------------------------------------------------------------------------- recall_at_k


def test_identity_similarity_gives_full_recall():
    result = recall_at_k(torch.eye(7))
    assert result == {"r1": 100.0, "r5": 100.0, "r10": 100.0}


def test_hand_built_matrix_with_known_ranks():
    # the diagonal (true match) sits at rank 0, 1, 2, 3 in rows 0..3
    similarity = torch.tensor([
        [0.9, 0.1, 0.3, 0.2],
        [0.8, 0.5, 0.1, 0.0],
        [0.7, 0.6, 0.2, 0.1],
        [0.4, 0.3, 0.2, 0.1],
    ])
    assert best_positive_rank(similarity).tolist() == [0, 1, 2, 3]
    assert recall_at_k(similarity, ks=(1, 2, 3, 4)) == {"r1": 25.0, "r2": 50.0, "r3": 75.0, "r4": 100.0}
    # k larger than the gallery is capped: everything is found
    assert recall_at_k(similarity, ks=(10,)) == {"r10": 100.0}
    # transposed (the other retrieval direction), with ties: row 2 is [0.3, 0.1, 0.2, 0.2], so the
    # diagonal has 0.3 ahead and its tie at index 3 behind (rank 1); row 3 is [0.2, 0.0, 0.1, 0.1],
    # with 0.2 and the tie at index 2 ahead (rank 2)
    assert best_positive_rank(similarity.T).tolist() == [0, 1, 1, 2]
    assert recall_at_k(similarity.T, ks=(1, 2, 3)) == {"r1": 25.0, "r2": 75.0, "r3": 100.0}


def test_custom_positives_any_positive_counts_and_none_is_a_miss():
    similarity = torch.tensor([
        [0.1, 0.9, 0.5],  # order 1, 2, 0
        [0.3, 0.2, 0.1],  # order 0, 1, 2
        [0.5, 0.4, 0.6],  # order 2, 0, 1
        [0.0, 0.0, 1.0],
    ])
    positives = torch.tensor([
        [True, False, True],   # best positive is item 2 at rank 1
        [False, False, True],  # rank 2
        [False, True, True],   # item 2 at rank 0
        [False, False, False],  # no positive: never a hit
    ])
    assert best_positive_rank(similarity, positives).tolist() == [1, 2, 0, 3]
    assert recall_at_k(similarity, positives, ks=(1, 2, 3, 5)) == {"r1": 25.0, "r2": 50.0, "r3": 75.0, "r5": 75.0}


def test_ties_are_broken_by_gallery_index():
    # all similarities equal: gallery order is the index order, so row i finds item i at rank i
    assert best_positive_rank(torch.zeros(4, 4)).tolist() == [0, 1, 2, 3]
    assert recall_at_k(torch.zeros(4, 4), ks=(1, 2)) == {"r1": 25.0, "r2": 50.0}
    # a positive tied with a lower-index item ranks behind it, with a higher-index item ahead of it
    similarity = torch.tensor([[0.5, 0.5, 0.1], [0.2, 0.7, 0.7]])
    positives = torch.tensor([[False, True, False], [False, True, False]])
    assert best_positive_rank(similarity, positives).tolist() == [1, 0]
    # also in a gallery of 200, where an unstable sort would reorder the ties
    positives = torch.zeros(4, 200, dtype=torch.bool)
    positives[torch.arange(4), torch.arange(4) * 50] = True
    assert best_positive_rank(torch.zeros(4, 200), positives).tolist() == [0, 50, 100, 150]


def test_any_non_zero_entry_of_a_non_boolean_mask_is_a_positive():
    # counts of shared concepts: the best-ranked gallery item sharing any concept is the hit
    similarity = torch.tensor([[0.9, 0.8, 0.7], [0.1, 0.2, 0.3]])
    shared = torch.tensor([[0, 1, 2], [3, 0, 0]])
    assert best_positive_rank(similarity, shared).tolist() == [1, 2]
    assert best_positive_rank(similarity, shared.to(torch.uint8) * 255).tolist() == [1, 2]


def test_no_queries_give_no_ranks():
    ranks = best_positive_rank(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.bool))
    assert ranks.shape == (0,) and ranks.dtype == torch.int64


def test_rectangular_input_and_errors():
    similarity = torch.tensor([[0.1, 0.2, 0.9, 0.0, 0.3]])
    assert recall_at_k(similarity, torch.tensor([[True, False, False, False, False]]), ks=(1, 3, 4)) == {
        "r1": 0.0, "r3": 0.0, "r4": 100.0}  # the positive (0.1) is 4th of 5
    with pytest.raises(ValueError, match="square"):
        recall_at_k(similarity)
    with pytest.raises(ValueError, match="shape"):
        recall_at_k(similarity, torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="NaN"):
        recall_at_k(torch.tensor([[float("nan"), 0.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="ks"):
        recall_at_k(torch.eye(2), ks=(0,))
    assert all(math.isnan(v) for v in recall_at_k(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.bool)).values())


@pytest.mark.parametrize("ks", [(), (0,), (1, -5), (True,), (1.5,)])
def test_ks_must_be_positive_ints(ks):
    with pytest.raises(ValueError, match="ks must be a non-empty sequence of positive ints"):
        recall_at_k(torch.eye(2), ks=ks)


def test_more_queries_than_one_chunk_of_rows():
    # 1100 queries are ranked in chunks of 1024 rows; query i finds its positive at rank i % 3
    positives = torch.arange(3)[None, :] == (torch.arange(1100) % 3)[:, None]
    ranks = best_positive_rank(torch.zeros(1100, 3), positives)
    assert ranks.tolist() == [i % 3 for i in range(1100)]
    assert recall_at_k(torch.zeros(1100, 3), positives, ks=(1,)) == {"r1": pytest.approx(100 * 367 / 1100)}


def test_caption_positives_is_string_equality():
    mask = caption_positives(["a cat", "a dog", "a cat"])
    assert mask.tolist() == [[True, False, True], [False, True, False], [True, False, True]]
    assert caption_ids(["b", "a", "b", "c"]).tolist() == [0, 1, 0, 2]
    empty = caption_ids([])
    assert empty.shape == (0,) and empty.dtype == torch.int64


# --------------------------------------------------------------------------- retrieval_metrics (fake model)

_TEXT = {"a cat": [1.0, 0.0, 0.0], "a dog": [0.0, 1.0, 0.0], "a bird": [0.0, 0.0, 1.0]}


def _dataset(captions: list[str], image_index: list[int] | None = None) -> PairDataset:
    """Item i shows image ``image_index[i]`` (default i), the row of the fake encoder's image table."""
    n = len(captions)
    images = torch.zeros(n, 1, 2, 2, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.tensor(range(n) if image_index is None else image_index, dtype=torch.uint8)
    return PairDataset(name="toy", inputs=images, captions=[("thing", c) for c in captions],
                       concepts=[{c} for c in captions], labels=torch.full((n,), -1),
                       ids=[f"toy/{i}" for i in range(n)],
                       class_names=())


def _fake_model(image_table: torch.Tensor, text_table: dict[str, list[float]]):
    """Image i embeds as ``image_table[i]``; a caption as ``text_table[caption]`` (via the fake tokenizer)."""
    vocab = list(text_table)
    texts = torch.tensor([text_table[t] for t in vocab])
    calls = []

    def encode_input(batch: torch.Tensor) -> torch.Tensor:
        calls.append(("image", batch.shape[0]))
        return image_table[(batch[:, 0, 0, 0] * 255).round().long()]

    def encode_text(tokens: torch.Tensor) -> torch.Tensor:
        calls.append(("text", tokens.shape[0]))
        return texts[tokens[:, 0]]

    model = SimpleNamespace(geometry=EUCLIDEAN, curvature=lambda: None, config=SimpleNamespace(context_length=8),
                            eval=lambda: None, encode_input=encode_input, encode_text=encode_text,
                            logit_scale=torch.tensor(0.0), calls=calls)

    def tokenizer(batch, context_length):
        assert context_length == 8
        return torch.tensor([[vocab.index(t)] + [0] * (context_length - 1) for t in batch])

    return model, tokenizer


def test_retrieval_metrics_rank_against_distinct_captions():
    captions = ["a cat", "a dog", "a cat", "a bird"]
    images = torch.tensor([
        [1.0, 0.0, 0.0],     # -> cat: hit
        [0.6, 0.8, 0.0],     # -> dog (0.8) before cat (0.6): hit
        [0.9, 0.0, 0.436],   # -> cat: hit (its caption is the one "a cat" entry of the gallery)
        [0.8, 0.0, 0.6],     # -> cat, then bird at rank 1: miss at 1, hit at 5
    ])
    model, tokenizer = _fake_model(images, _TEXT)
    result = retrieval_metrics(model, _dataset(captions), tokenizer, batch_size=3)
    # t2i: the 3 distinct captions; cat finds image 0, dog image 1, bird image 3 (0.6 > 0.436) first
    assert result == pytest.approx({"i2t_r1": 75.0, "i2t_r5": 100.0, "i2t_r10": 100.0,
                                    "t2i_r1": 100.0, "t2i_r5": 100.0, "t2i_r10": 100.0})
    # images encoded in batches of at most 3, each distinct caption once
    assert sorted(model.calls) == [("image", 1), ("image", 3), ("text", 3)]
    model.calls.clear()
    assert retrieval_metrics(model, _dataset(captions), tokenizer, batch_size=2) == result
    assert sorted(model.calls) == [("image", 2), ("image", 2), ("text", 1), ("text", 2)]


def test_retrieval_metrics_with_more_queries_than_one_chunk_of_rows():
    # 1024 cat images captioned "a cat" (hits), 80 dog images captioned "a cat" (misses at 1), one "a dog" item
    captions = ["a cat"] * 1104 + ["a dog"]
    model, tokenizer = _fake_model(torch.tensor([_TEXT["a cat"], _TEXT["a dog"]]), _TEXT)
    result = retrieval_metrics(model, _dataset(captions, [0] * 1024 + [1] * 81), tokenizer, ks=(1, 2))
    # t2i: "a cat" finds a cat image first; "a dog" finds the 80 dog images captioned "a cat" before its own
    assert result == pytest.approx({"i2t_r1": 100 * 1025 / 1105, "i2t_r2": 100.0, "t2i_r1": 50.0, "t2i_r2": 50.0})
    # the default batch size is 500 images
    assert sorted(model.calls) == [("image", 105), ("image", 500), ("image", 500), ("text", 2)]


def test_repeated_captions_no_longer_push_the_own_caption_out_of_the_top_k():
    # five dog pictures and one cat picture that looks more like a dog
    captions = ["a dog"] * 5 + ["a cat"]
    images = torch.tensor([[0.0, 1.0, 0.0]] * 5 + [[0.6, 0.8, 0.0]])
    model, tokenizer = _fake_model(images, _TEXT)
    result = retrieval_metrics(model, _dataset(captions), tokenizer, ks=(1, 5, 10))
    # the cat image ranks "a dog" first and "a cat" second among the 2 distinct captions
    assert result["i2t_r1"] == pytest.approx(100 * 5 / 6) and result["i2t_r5"] == 100.0
    # the caption "a cat" finds the five dog images (cos 0) after the cat image (cos 0.6): hit
    assert result["t2i_r1"] == 100.0
    # the old gallery (one caption per item) had the five "a dog" copies ahead: R@1 = R@5
    similarity = EUCLIDEAN.pairwise_similarity(images, torch.tensor([_TEXT[c] for c in captions]), None)
    old = recall_at_k(similarity, caption_positives(captions), ks=(1, 5, 10))
    assert old["r1"] == old["r5"] == pytest.approx(100 * 5 / 6) and old["r10"] == 100.0


def _distractor_case():
    """Cat, dog and bird items, where the bird image and caption outscore the cat's own."""
    images = torch.tensor([
        [0.6, 0.0, 0.8],  # cat image: bird caption (0.8) before cat caption (0.6)
        [0.0, 1.0, 0.0],  # dog image
        [0.8, 0.0, 0.6],  # bird image: closer to the cat caption (0.8) than the cat image (0.6)
    ])
    return _fake_model(images, _TEXT), _dataset(["a cat", "a dog", "a bird"])


def test_queries_against_a_larger_gallery_find_distractors():
    (model, tokenizer), gallery = _distractor_case()
    forget = gallery.subset([0, 1])
    alone = retrieval_metrics(model, forget, tokenizer, ks=(1, 2))
    assert alone == {"i2t_r1": 100.0, "i2t_r2": 100.0, "t2i_r1": 100.0, "t2i_r2": 100.0}
    # against the whole gallery the bird caption and image get ahead of the cat's own
    against_all = retrieval_metrics(model, forget, tokenizer, ks=(1, 2), gallery=gallery)
    assert against_all == pytest.approx({"i2t_r1": 50.0, "i2t_r2": 100.0, "t2i_r1": 50.0, "t2i_r2": 100.0})
    # queries given in another order than the gallery: same result
    reordered = retrieval_metrics(model, gallery.subset([1, 0]), tokenizer, ks=(1, 2), gallery=gallery)
    assert reordered == pytest.approx(against_all)
    assert gallery_positions(gallery.subset([2, 0]), gallery).tolist() == [2, 0]
    none = gallery_positions(gallery.subset([]), gallery)
    assert none.shape == (0,) and none.dtype == torch.int64


def test_queries_outside_the_gallery_are_refused():
    (model, tokenizer), gallery = _distractor_case()
    with pytest.raises(ValueError, match="subset of the gallery"):
        retrieval_metrics(model, gallery, tokenizer, gallery=gallery.subset([0, 1]))
    empty = retrieval_metrics(model, gallery.subset([]), tokenizer, ks=(1,), gallery=gallery)
    assert all(math.isnan(v) for v in empty.values()) and set(empty) == {"i2t_r1", "t2i_r1"}


def test_retrieval_metrics_custom_ks_and_perfect_model():
    captions = ["a cat", "a dog", "a bird"]
    model, tokenizer = _fake_model(torch.tensor([_TEXT[c] for c in captions]) * 3.0, _TEXT)
    assert retrieval_metrics(model, _dataset(captions), tokenizer, ks=(1, 2)) == {
        "i2t_r1": 100.0, "i2t_r2": 100.0, "t2i_r1": 100.0, "t2i_r2": 100.0}
    # image i = 0.8 caption(i-1) + 0.5 caption(i): its own caption comes second, and so does it for its caption
    table = torch.tensor([_TEXT[c] for c in captions])
    model, tokenizer = _fake_model(0.8 * table.roll(1, dims=0) + 0.5 * table, _TEXT)
    assert retrieval_metrics(model, _dataset(captions), tokenizer, ks=(1, 2)) == pytest.approx({
        "i2t_r1": 0.0, "i2t_r2": 100.0, "t2i_r1": 0.0, "t2i_r2": 100.0})
