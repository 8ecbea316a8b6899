"""Contrastive and entailment losses against hand-computed values."""

import math
from types import SimpleNamespace

import pytest
import torch

from vlunlearn.geometry import EUCLIDEAN, LORENTZ, blocks, lorentz
from vlunlearn.training.losses import (
    contrastive_logits,
    contrastive_loss,
    entailment_loss,
    entailment_violation,
    pairwise_contrastive_loss,
)


def fake_model(geometry, logit_scale=0.0, c=None):
    return SimpleNamespace(
        geometry=geometry,
        logit_scale=torch.tensor(logit_scale, dtype=torch.float64),
        curvature=lambda: None if c is None else torch.tensor(c, dtype=torch.float64),
    )


def test_pairwise_loss_matches_closed_form():
    logits = torch.tensor([[2.0, 0.0], [1.0, 3.0]], dtype=torch.float64)
    # row 0: -log(e^2 / (e^2 + 1)); column 0: -log(e^2 / (e^2 + e^1))
    row0 = -math.log(math.exp(2) / (math.exp(2) + 1))
    col0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(1)))
    row1 = -math.log(math.exp(3) / (math.exp(1) + math.exp(3)))
    col1 = -math.log(math.exp(3) / (math.exp(0) + math.exp(3)))
    expected = torch.tensor([(row0 + col0) / 2, (row1 + col1) / 2], dtype=torch.float64)
    torch.testing.assert_close(pairwise_contrastive_loss(logits), expected)


def test_pairwise_loss_with_custom_targets_uses_those_columns():
    logits = torch.tensor([[0.0, 5.0], [5.0, 0.0]], dtype=torch.float64)
    swapped = pairwise_contrastive_loss(logits, torch.tensor([1, 0]))
    diagonal = pairwise_contrastive_loss(logits)
    assert (swapped < 0.01).all() and (diagonal > 4.9).all()


def _cross_entropy_both_ways(logits, targets):
    """The loss as two ``F.cross_entropy`` calls, the definition the fused one must match."""
    input_to_text = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    return (input_to_text + torch.nn.functional.cross_entropy(logits.T, targets, reduction="none")) / 2


@pytest.mark.parametrize("block_elements", [5, blocks.BLOCK_ELEMENTS])
@pytest.mark.parametrize("n", [1, 2, 7, 40])
def test_pairwise_loss_matches_cross_entropy_both_ways_with_its_gradient(n, block_elements, monkeypatch):
    """Values and gradients (under random per-pair weights, so every row and column counts)
    against ``F.cross_entropy``, diagonal and permuted targets, in one block and in blocks of one row."""
    monkeypatch.setattr(blocks, "BLOCK_ELEMENTS", block_elements)
    generator = torch.Generator().manual_seed(n)
    logits = (torch.randn(n, n, generator=generator, dtype=torch.float64) * 6).requires_grad_()
    weights = torch.randn(n, generator=generator, dtype=torch.float64)
    for targets in (torch.arange(n), torch.randperm(n, generator=generator)):
        fused, expected = pairwise_contrastive_loss(logits, targets), _cross_entropy_both_ways(logits, targets)
        torch.testing.assert_close(fused, expected)
        torch.testing.assert_close(torch.autograd.grad((fused * weights).sum(), logits)[0],
                                   torch.autograd.grad((expected * weights).sum(), logits)[0])
    small = logits[:5, :5].detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: pairwise_contrastive_loss(x, targets[targets < 5]), (small,))


def test_pairwise_loss_with_masked_entries_matches_cross_entropy_in_blocks_of_one_row(monkeypatch):
    """AC masks logits with -inf; a column masked over a whole block of rows (here rows 0-2 of
    column 3, blocks of one row) must not turn its log-sum-exp into NaN."""
    monkeypatch.setattr(blocks, "BLOCK_ELEMENTS", 5)
    logits = torch.randn(5, 5, dtype=torch.float64)
    logits[:3, 3] = logits[4, 0] = float("-inf")
    logits.requires_grad_()
    fused, expected = pairwise_contrastive_loss(logits), _cross_entropy_both_ways(logits, torch.arange(5))
    torch.testing.assert_close(fused, expected)
    torch.testing.assert_close(torch.autograd.grad(fused.sum(), logits)[0], torch.autograd.grad(expected.sum(), logits)[0])


def test_pairwise_loss_takes_half_precision_in_float32_and_refuses_non_square_logits():
    logits = torch.randn(6, 6).bfloat16().requires_grad_()
    loss = pairwise_contrastive_loss(logits)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, _cross_entropy_both_ways(logits.float(), torch.arange(6)))
    assert torch.autograd.grad(loss.sum(), logits)[0].dtype == torch.bfloat16
    with pytest.raises(ValueError, match="square"):
        pairwise_contrastive_loss(torch.randn(3, 4))


def test_euclidean_logits_are_scaled_cosines():
    x = torch.randn(4, 6, dtype=torch.float64)
    y = torch.randn(5, 6, dtype=torch.float64)
    model = fake_model(EUCLIDEAN, logit_scale=math.log(10.0))
    expected = 10.0 * torch.nn.functional.normalize(x, dim=-1) @ torch.nn.functional.normalize(y, dim=-1).T
    torch.testing.assert_close(contrastive_logits(model, x, y), expected)


def test_lorentz_logits_are_scaled_negative_distances():
    x = lorentz.exp_map0(torch.randn(3, 4, dtype=torch.float64), 0.5)
    y = lorentz.exp_map0(torch.randn(3, 4, dtype=torch.float64), 0.5)
    model = fake_model(LORENTZ, logit_scale=math.log(2.0), c=0.5)
    torch.testing.assert_close(contrastive_logits(model, x, y), -2.0 * lorentz.pairwise_dist(x, y, 0.5))


def test_contrastive_loss_is_low_for_aligned_pairs_and_high_for_shuffled():
    x = torch.nn.functional.normalize(torch.randn(8, 16, dtype=torch.float64), dim=-1)
    model = fake_model(EUCLIDEAN, logit_scale=math.log(100.0))
    assert contrastive_loss(model, x, x) < 0.05
    assert contrastive_loss(model, x, x.roll(1, dims=0)) > 1.0


def test_entailment_violation_zero_inside_cone_positive_outside():
    c = 1.0
    parent = lorentz.exp_map0(torch.tensor([[1.0, 0.0]], dtype=torch.float64), c)
    child_on_axis = lorentz.exp_map0(torch.tensor([[3.0, 0.0]], dtype=torch.float64), c)
    child_opposite = lorentz.exp_map0(torch.tensor([[-3.0, 0.0]], dtype=torch.float64), c)
    model = fake_model(LORENTZ, c=c)
    assert entailment_violation(model, parent, child_on_axis).item() == pytest.approx(0.0, abs=1e-6)
    outside = entailment_violation(model, parent, child_opposite).item()
    expected = math.pi - lorentz.half_aperture(parent, c).item()
    assert outside == pytest.approx(expected, abs=1e-3)  # arccos is clamped at pi - 1.4e-4
    assert entailment_loss(model, parent.repeat(2, 1), torch.cat([child_on_axis, child_opposite])).item() == pytest.approx(
        expected / 2, abs=1e-3
    )


def test_entailment_on_euclidean_model_is_a_clear_error():
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="hyperbolic"):
        entailment_loss(fake_model(EUCLIDEAN), x, x)
