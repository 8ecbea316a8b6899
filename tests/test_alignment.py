"""Alignment audit: the gap's arithmetic on hand-made matrices, the matrix of a fake model whose
embeddings are known (cosine for Euclidean, negative geodesic distance for Lorentz), the seeded
selection of pairs, and a smoke run on an untrained tiny MERU."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.fakes import FakeTokenizer, fake_model, random_clothing_pairs
from vlunlearn.data import PairDataset, Tokenizer
from vlunlearn.evaluation.alignment import (
    alignment_audit,
    alignment_gap,
    alignment_gap_matrix,
    alignment_matrix,
    alignment_selection,
)
from vlunlearn.geometry import EUCLIDEAN, LORENTZ, lorentz
from vlunlearn.models import build_model


def _dataset(n: int) -> PairDataset:
    return PairDataset(
        name="toy",
        inputs=torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous(),
        captions=[("a thing.", f"thing number {i}.") for i in range(n)],
        concepts=[frozenset() for _ in range(n)],
        labels=torch.full((n,), -1),
        ids=[f"toy/{i:02d}" for i in range(n)],
        class_names=(),
    )


def _setup(n: int, geometry=EUCLIDEAN, c=None, seed=0):
    data = _dataset(n)
    texts = ["a thing."] + [f"thing number {i}." for i in range(n)]
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    captions = torch.randn(n + 1, 4, generator=generator, dtype=torch.float64)
    return data, FakeTokenizer(texts), fake_model(geometry, images, captions, c), images, captions[1:]


def _cosine(x, y):
    return (x / x.norm(dim=1, keepdim=True)) @ (y / y.norm(dim=1, keepdim=True)).T


# --------------------------------------------------------------------------- gap arithmetic


def test_gap_of_constant_diagonal_and_off_diagonal():
    matrix = torch.full((4, 4), 0.25)
    matrix.fill_diagonal_(1.0)
    assert alignment_gap(matrix) == pytest.approx(0.75)
    assert alignment_gap(-matrix) == pytest.approx(-0.75)


def test_gap_of_a_three_by_three_hand_case():
    matrix = torch.tensor([[0.9, 0.1, 0.2], [0.3, 0.8, -0.1], [0.0, 0.4, 0.7]])
    # diagonal mean 0.8; off-diagonal (0.1 + 0.2 + 0.3 - 0.1 + 0.0 + 0.4) / 6 = 0.15
    assert alignment_gap(matrix) == pytest.approx(0.65)
    assert alignment_gap(matrix.tolist()) == pytest.approx(0.65)


def test_gap_with_captions_ignores_entries_of_the_same_caption():
    matrix = torch.tensor([[0.9, 0.8, 0.1], [0.7, 0.6, 0.3], [0.2, 0.0, 0.5]])
    captions = ["sneaker", "sneaker", "bag"]
    # matched: diagonal 0.9, 0.6, 0.5 -> 2/3; mismatched: (0,2) 0.1, (1,2) 0.3, (2,0) 0.2, (2,1) 0.0 -> 0.15
    assert alignment_gap(matrix, captions) == pytest.approx(2 / 3 - 0.15)
    # over the first two rows only: matched (0.9 + 0.6) / 2, mismatched (0.1 + 0.3) / 2
    assert alignment_gap(matrix, captions, rows=2) == pytest.approx(0.75 - 0.2)
    # distinct captions: the same as AC's plain gap
    assert alignment_gap(matrix, ["a", "b", "c"]) == pytest.approx(alignment_gap(matrix))
    with pytest.raises(ValueError, match="mismatched"):
        alignment_gap(matrix, ["same"] * 3)
    with pytest.raises(ValueError, match="captions"):
        alignment_gap(matrix, ["a", "b"])


def _concept_dataset(name: str, first_image: int, captions: list[str]) -> PairDataset:
    n = len(captions)
    images = torch.arange(first_image, first_image + n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2)
    return PairDataset(
        name=name,
        inputs=images.contiguous(),
        captions=[("a thing.", caption) for caption in captions],
        concepts=[frozenset() for _ in range(n)],
        labels=torch.full((n,), -1),
        ids=[f"{name}/{i}" for i in range(n)],
        class_names=(),
    )


def test_concept_audit_contrasts_forget_rows_with_retain_captions():
    # forget: 3 sneaker images whose caption is the same; contrast: 3 retain pairs of other concepts
    forget = _concept_dataset("forget", 0, ["a sneaker."] * 3)
    retain = _concept_dataset("retain", 3, ["a bag.", "a coat.", "a shirt."])
    texts = ["a sneaker.", "a bag.", "a coat.", "a shirt."]
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    captions = torch.randn(4, 4, generator=generator, dtype=torch.float64)
    model = fake_model(EUCLIDEAN, images, captions)
    tokenizer = FakeTokenizer(texts)
    # forget-only: every off-diagonal entry repeats the diagonal's caption, so there is no gap to measure
    assert math.isnan(alignment_audit(model, forget, tokenizer)["gap"])
    audit = alignment_audit(model, forget, tokenizer, max_pairs=6, contrast=retain)
    assert audit["n"] == 6 and audit["n_forget"] == 3
    assert audit["ids"] == ["forget/0", "forget/1", "forget/2", "retain/0", "retain/1", "retain/2"]
    assert audit["captions"] == ["a sneaker."] * 3 + ["a bag.", "a coat.", "a shirt."]
    expected = _cosine(images, captions[[0, 0, 0, 1, 2, 3]])
    torch.testing.assert_close(torch.tensor(audit["matrix"], dtype=torch.float64), expected)
    # gap over forget rows: own caption (sneaker) against the three retain captions
    hand = expected[:3, 0].mean() - expected[:3, 3:].mean()
    assert audit["gap"] == pytest.approx(hand.item())


@pytest.mark.parametrize("matrix", [torch.ones(1, 1), torch.zeros(0, 0), torch.ones(2, 3), torch.ones(4)])
def test_gap_needs_a_square_matrix_of_at_least_two(matrix):
    with pytest.raises(ValueError):
        alignment_gap(matrix)


def test_gap_matrix_is_the_difference_and_checks_shapes():
    a, b = torch.tensor([[1.0, 0.5], [0.2, 0.9]]), torch.tensor([[0.5, 0.5], [0.1, 0.2]])
    torch.testing.assert_close(alignment_gap_matrix(a, b), torch.tensor([[0.5, 0.0], [0.1, 0.7]]))
    with pytest.raises(ValueError):
        alignment_gap_matrix(a, torch.ones(3, 3))


# --------------------------------------------------------------------------- selection and matrix


def test_selection_is_seeded_sorted_and_bounded():
    first = alignment_selection(12, max_pairs=5, seed=3)
    assert first.tolist() == sorted(first.tolist()) and len(set(first.tolist())) == 5
    assert torch.equal(first, alignment_selection(12, max_pairs=5, seed=3))
    expected = torch.randperm(12, generator=torch.Generator().manual_seed(3))[:5].sort().values
    assert torch.equal(first, expected)
    assert not torch.equal(first, alignment_selection(12, max_pairs=5, seed=4))
    assert alignment_selection(7, max_pairs=64, seed=9).tolist() == list(range(7))
    assert alignment_selection(0, max_pairs=64).numel() == 0
    with pytest.raises(ValueError):
        alignment_selection(5, max_pairs=0)


def test_euclidean_matrix_is_the_cosine_of_images_and_canonical_captions():
    data, tokenizer, model, images, captions = _setup(12)
    matrix = alignment_matrix(model, data, tokenizer, max_pairs=5, seed=3)
    assert matrix.shape == (5, 5)
    rows = alignment_selection(12, 5, 3)
    torch.testing.assert_close(matrix, _cosine(images[rows], captions[rows]))
    # reproducible, and another seed looks at other pairs
    assert torch.equal(matrix, alignment_matrix(model, data, tokenizer, max_pairs=5, seed=3))
    assert not torch.equal(matrix, alignment_matrix(model, data, tokenizer, max_pairs=5, seed=4))
    # all pairs in dataset order when max_pairs exceeds the data
    full = alignment_matrix(model, data, tokenizer, max_pairs=64)
    torch.testing.assert_close(full, _cosine(images, captions))


def test_lorentz_matrix_is_the_negative_geodesic_distance():
    c = 0.5
    data, tokenizer, _, tangent_images, tangent_captions = _setup(6)
    images, captions = lorentz.exp_map0(tangent_images, c), lorentz.exp_map0(tangent_captions, c)
    model = fake_model(LORENTZ, images, torch.cat([torch.zeros(1, 4, dtype=torch.float64), captions]), c)
    matrix = alignment_matrix(model, data, tokenizer, max_pairs=6)
    # written out: arcosh(-c <x, y>_L) / sqrt(c)
    xt = torch.sqrt(1 / c + (images**2).sum(1))
    yt = torch.sqrt(1 / c + (captions**2).sum(1))
    inner = images @ captions.T - xt[:, None] * yt[None, :]
    torch.testing.assert_close(matrix, -torch.acosh(-c * inner) / math.sqrt(c))


def test_audit_is_json_ready_and_consistent():
    data, tokenizer, model, images, captions = _setup(10)
    # make the pairs aligned: caption i equals image i plus a little noise
    model = fake_model(EUCLIDEAN, images, torch.cat([torch.zeros(1, 4, dtype=torch.float64), images + 0.01]))
    audit = alignment_audit(model, data, tokenizer, max_pairs=4, seed=1)
    json.dumps(audit)
    rows = alignment_selection(10, 4, 1).tolist()
    assert audit["n"] == 4 and audit["ids"] == [f"toy/{i:02d}" for i in rows]
    matrix = torch.tensor(audit["matrix"])
    assert matrix.shape == (4, 4)
    assert audit["gap"] == pytest.approx(alignment_gap(matrix))
    assert matrix.diagonal().min() > 0.99 and audit["gap"] > 0
    single = alignment_audit(model, data, tokenizer, max_pairs=1)
    assert single["n"] == 1 and math.isnan(single["gap"])


def test_audit_of_an_untrained_tiny_meru():
    torch.manual_seed(0)
    model = build_model("tiny", "lorentz")
    data = random_clothing_pairs(("bag", "coat", "shirt"))
    audit = alignment_audit(model, data, Tokenizer(), max_pairs=8)
    matrix = torch.tensor(audit["matrix"])
    assert matrix.shape == (3, 3) and bool((matrix <= 0).all())  # negative distances
    assert math.isfinite(audit["gap"])


# --------------------------------------------------------------------------- defaults, edge cases, grouping


def test_defaults_are_64_pairs_and_seed_0():
    assert alignment_selection(100).numel() == 64
    assert alignment_selection(12, 5).tolist() == alignment_selection(12, 5, seed=0).tolist()
    data, tokenizer, model, images, captions = _setup(70)
    assert alignment_matrix(model, data, tokenizer).shape == (64, 64)
    rows = alignment_selection(70, 5, 0)
    expected = _cosine(images[rows], captions[rows])
    torch.testing.assert_close(alignment_matrix(model, data, tokenizer, max_pairs=5), expected)
    assert alignment_audit(model, data, tokenizer, max_pairs=5)["ids"] == [f"toy/{i:02d}" for i in rows.tolist()]


def test_empty_data_gives_an_empty_square_matrix_and_no_gap():
    data, tokenizer, model, _, _ = _setup(3)
    empty = data.subset([])
    assert alignment_matrix(model, empty, tokenizer).shape == (0, 0)
    audit = alignment_audit(model, empty, tokenizer)
    assert audit["matrix"] == [] and audit["n"] == 0 and audit["n_forget"] == 0 and math.isnan(audit["gap"])


def test_gap_over_a_single_row_and_in_float64():
    matrix = torch.tensor([[0.9, 0.1], [0.3, 0.8]])
    assert alignment_gap(matrix, rows=1) == pytest.approx(0.8)  # 0.9 - 0.1
    # float16 would round 1 + 2**-11 to 1 and give 0.5; the gap is taken in float64
    half = torch.tensor([[1.0, 0.0], [0.0, 2**-11]], dtype=torch.float16)
    assert alignment_gap(half) == 0.5 + 2**-12


def test_contrast_audit_keeps_the_seeded_pairs_grouped_by_caption():
    # seed 1 picks forget items [1, 2, 5] of 6 and contrast items [0, 2, 4] of 5 (seed 0: [2, 3, 5], [0, 1, 4])
    forget = _concept_dataset("forget", 0, ["a bag.", "a shirt.", "a coat.", "a bag.", "a bag.", "a bag."])
    retain = _concept_dataset("retain", 6, ["a sock.", "a hat.", "a dress.", "a hat.", "a belt."])
    texts = ["a bag.", "a shirt.", "a coat.", "a sock.", "a hat.", "a dress.", "a belt."]
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(11, 4, generator=generator, dtype=torch.float64)
    captions = torch.randn(7, 4, generator=generator, dtype=torch.float64)
    model, tokenizer = fake_model(EUCLIDEAN, images, captions), FakeTokenizer(texts)
    audit = alignment_audit(model, forget, tokenizer, max_pairs=6, seed=1, contrast=retain)
    assert audit["ids"] == ["forget/5", "forget/2", "forget/1", "retain/4", "retain/2", "retain/0"]
    assert audit["captions"] == ["a bag.", "a coat.", "a shirt.", "a belt.", "a dress.", "a sock."]
    expected = _cosine(images[[5, 2, 1, 10, 8, 6]], captions[[0, 2, 1, 6, 5, 3]])
    torch.testing.assert_close(torch.tensor(audit["matrix"], dtype=torch.float64), expected)
    # max_pairs = 2: one forget pair and one contrast pair
    small = alignment_audit(model, forget, tokenizer, max_pairs=2, seed=1, contrast=retain)
    assert small["n"] == 2 and small["n_forget"] == 1
