"""MemoEncoder: exact outputs, per-row caching (padding-insensitive for captions, exact for
pixels), batches mixing cached and new rows, pass-through attributes, metric values unchanged,
and refusal of a model in training mode."""

from __future__ import annotations

import copy

import pytest
import torch

from vlunlearn.data import Tokenizer, load_builtin
from tests.fakes import fake_model
from vlunlearn.evaluation.memo import MemoEncoder, input_keys, token_keys
from vlunlearn.evaluation.retrieval import retrieval_metrics
from vlunlearn.evaluation.zero_shot import evaluate_zero_shot
from vlunlearn.geometry import EUCLIDEAN
from vlunlearn.models import build_model

GEOMETRIES = ("euclidean", "lorentz")


@pytest.fixture(scope="module", params=GEOMETRIES)
def model(request):
    torch.manual_seed(0)
    return build_model("tiny", request.param).eval()


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 28, 28, generator=torch.Generator().manual_seed(seed))


def tokens(n: int, length: int = 10, seed: int = 0) -> torch.Tensor:
    """``n`` random captions: SOT, random ids, EOT (the largest id, where the model pools), padding."""
    rows = torch.zeros(n, length, dtype=torch.long)
    rows[:, 0] = 49406
    rows[:, 1:5] = torch.randint(1, 49000, (n, 4), generator=torch.Generator().manual_seed(seed))
    rows[:, 5] = 49407
    return rows


def spy(model, name: str, monkeypatch) -> list[int]:
    """Record the batch size of every call of ``model.<name>``."""
    sizes, original = [], getattr(model, name)
    monkeypatch.setattr(model, name, lambda batch: sizes.append(len(batch)) or original(batch))
    return sizes


def test_token_keys_strip_only_trailing_padding():
    assert token_keys(torch.tensor([[5, 7, 1]])) == [(5, 7, 1)]
    assert token_keys(torch.tensor([[3, 4, 0]])) == [(3, 4)]
    rows = torch.tensor([[5, 0, 7, 0, 0], [5, 0, 7, 0, 0], [0, 0, 0, 0, 0]])
    assert token_keys(rows) == [(5, 0, 7), (5, 0, 7), ()]
    assert token_keys(rows[:, :3]) == token_keys(rows)[:2] + [()]


def test_image_keys_depend_on_every_byte_shape_and_dtype():
    x = torch.zeros(2, 1, 2, 2)
    keys = input_keys(x)
    assert keys[0] == keys[1] and keys[0][:2] == ("torch.float32", (1, 2, 2)) and len(keys[0][2]) == 16
    x[1, 0, 1, 1] = 1e-7
    assert input_keys(x)[1] != keys[0]
    assert input_keys(x[:1].double())[0] != keys[0] and input_keys(x[:1].reshape(1, 2, 2, 1))[0] != keys[0]
    assert input_keys(torch.zeros(1, 1, 2, 2, dtype=torch.bfloat16))[0][0] == "torch.bfloat16"


def test_outputs_equal_the_model_and_a_repeated_call_encodes_nothing(model):
    memo = MemoEncoder(model)
    x, t = images(6), tokens(5)
    with torch.no_grad():
        expected_images, expected_texts = model.encode_input(x), model.encode_text(t)
    got_images, got_texts = memo.encode_input(x), memo.encode_text(t)
    assert torch.equal(got_images, expected_images) and torch.equal(got_texts, expected_texts)
    assert got_images.dtype == expected_images.dtype and got_images.device == expected_images.device
    assert (memo.misses, memo.hits) == (11, 0)
    assert torch.equal(memo.encode_input(x), expected_images) and torch.equal(memo.encode_text(t), expected_texts)
    assert (memo.misses, memo.hits) == (11, 11)


def test_mixed_batch_encodes_only_the_new_rows_in_input_order(model, monkeypatch):
    memo = MemoEncoder(model)
    old, new = images(4, seed=1), images(3, seed=2)
    cached = memo.encode_input(old)
    sizes = spy(model, "encode_input", monkeypatch)
    mixed = torch.cat([new[:1], old[2:3], new[1:], old[:1]])  # new0, old2, new1, new2, old0
    out = memo.encode_input(mixed)
    assert sizes == [3] and (memo.misses, memo.hits) == (7, 2)
    with torch.no_grad():
        fresh = model.encode_input(new)
    assert torch.equal(out, torch.stack([fresh[0], cached[2], fresh[1], fresh[2], cached[0]]))


def test_repeats_within_a_call_are_encoded_once(model, monkeypatch):
    memo = MemoEncoder(model)
    t = tokens(2, seed=3)
    sizes = spy(model, "encode_text", monkeypatch)
    out = memo.encode_text(t[[0, 1, 0, 0]])
    assert sizes == [2] and (memo.misses, memo.hits) == (2, 2)
    assert torch.equal(out[0], out[2]) and torch.equal(out[0], out[3]) and not torch.equal(out[0], out[1])


def test_differently_padded_captions_hit(model, monkeypatch):
    memo = MemoEncoder(model)
    t = tokens(3, length=8, seed=4)
    first = memo.encode_text(t)
    sizes = spy(model, "encode_text", monkeypatch)
    longer = torch.nn.functional.pad(t, (0, 12))  # (3, 20): same captions, more padding
    assert torch.equal(memo.encode_text(longer), first) and torch.equal(memo.encode_text(t[:, :6]), first)
    assert sizes == [] and (memo.misses, memo.hits) == (3, 6)


def test_one_pixel_change_misses(model):
    memo = MemoEncoder(model)
    x = images(2, seed=5)
    before = memo.encode_input(x)
    x[1, 0, 3, 3] += 1 / 255
    after = memo.encode_input(x)
    assert (memo.misses, memo.hits) == (3, 1)
    assert torch.equal(after[0], before[0]) and not torch.equal(after[1], before[1])


def test_changed_weights_need_a_new_memo(model):
    """A model that changed (e.g. forgot) gets its own embeddings from a fresh wrapper, while the
    old wrapper keeps the frozen model's: one memo per frozen model."""
    x = images(3, seed=6)
    memo = MemoEncoder(model)
    before = memo.encode_input(x)
    edited = copy.deepcopy(model)
    with torch.no_grad():
        edited.visual_proj.weight.mul_(-1)
        expected = edited.encode_input(x)
    after = MemoEncoder(edited).encode_input(x)
    assert torch.equal(after, expected) and not torch.allclose(after, before)
    assert torch.equal(memo.encode_input(x), before)


def test_attributes_pass_through(model):
    memo = MemoEncoder(model)
    assert memo.geometry is model.geometry and memo.config is model.config and memo.logit_scale is model.logit_scale
    c = memo.curvature()
    assert (c is None) == (model.curvature() is None) and (c is None or torch.equal(c, model.curvature()))
    assert memo.eval() is memo and not model.training
    with pytest.raises(AttributeError):
        memo.no_such_attribute


def test_training_mode_is_refused():
    model = build_model("tiny", "euclidean")
    with pytest.raises(RuntimeError, match="eval mode"):
        MemoEncoder(model.train())
    memo = MemoEncoder(model.eval())
    memo.train()  # passes through to the model, whose weights may now change
    with pytest.raises(RuntimeError, match="eval mode"):
        memo.encode_text(tokens(1))
    assert memo.misses == 0


def test_metrics_through_the_memo_are_unchanged(model, monkeypatch):
    data = load_builtin("digits", "test").subset(range(60))
    tokenizer = Tokenizer()
    expected = (retrieval_metrics(model, data, tokenizer), evaluate_zero_shot(model, data, tokenizer))
    memo = MemoEncoder(model)
    assert retrieval_metrics(memo, data, tokenizer) == expected[0]
    sizes = spy(model, "encode_input", monkeypatch)
    assert evaluate_zero_shot(memo, data, tokenizer) == expected[1]
    assert sizes == [] and memo.hits >= 60  # the 60 images were encoded once, by retrieval


def test_a_model_without_a_training_flag_is_accepted_and_empty_batches_pass_through():
    table = torch.arange(6, dtype=torch.float64).view(3, 2)
    memo = MemoEncoder(fake_model(EUCLIDEAN, table, table))  # a plain namespace: no .training
    assert torch.equal(memo.encode_text(torch.tensor([[2], [0]])), table[[2, 0]])
    empty = memo.encode_text(torch.zeros(0, 4, dtype=torch.long))
    assert empty.shape == (0, 2) and empty.dtype == torch.float64
    assert (memo.misses, memo.hits) == (2, 0)
