"""Zero-shot evaluation: accuracy arithmetic, prompt ensembling and nearest-class predictions
with a fake model whose embeddings are known, an end-to-end check that a briefly pretrained
tiny CLIP beats chance by far, and the hyperbolic distance-to-origin diagnostic."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from vlunlearn.data import Tokenizer, load_builtin
from vlunlearn.evaluation import (
    class_embeddings,
    class_prompts,
    encode_texts,
    evaluate_zero_shot,
    zero_shot_accuracy,
    zero_shot_predictions,
)
from vlunlearn.evaluation.hierarchy import distance_to_origin_by_level
from vlunlearn.geometry import EUCLIDEAN, LORENTZ
from vlunlearn.models import build_model
from vlunlearn.training.pretrain import PretrainConfig, pretrain


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer()


# --------------------------------------------------------------------------- zero_shot_accuracy


def test_micro_and_macro_differ_on_unbalanced_classes():
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    predictions = torch.tensor([0, 0, 0, 0, 0, 1])
    result = zero_shot_accuracy(predictions, labels)
    assert result["micro"] == pytest.approx(100 * 5 / 6)
    assert result["macro"] == pytest.approx(100 * (1.0 + 0.5) / 2)  # 75
    assert result["count"] == 6


def test_macro_averages_only_the_classes_present_and_ignores_minus_one():
    # class 1 never appears as a label (only as a wrong prediction); the -1 items do not count
    labels = torch.tensor([2, 2, 0, -1, -1, 2, 0, 0])
    predictions = torch.tensor([2, 1, 0, 2, 0, 2, 1, 1])
    result = zero_shot_accuracy(predictions, labels)
    # class 2: 2 of 3 right, class 0: 1 of 3 right
    assert result["micro"] == pytest.approx(100 * 3 / 6)
    assert result["macro"] == pytest.approx(100 * (2 / 3 + 1 / 3) / 2)
    assert result["count"] == 6
    skewed = zero_shot_accuracy(torch.tensor([0, 0, 0, 0, 1, 0]), torch.tensor([0, 0, 0, 0, 0, 1]))
    assert skewed["micro"] == pytest.approx(100 * 4 / 6) and skewed["macro"] == pytest.approx(100 * 0.8 / 2)


def test_perfect_and_wrong_predictions():
    labels = torch.tensor([3, 1, 4, 1, 5])
    assert zero_shot_accuracy(labels.clone(), labels) == {"micro": 100.0, "macro": 100.0, "count": 5}
    wrong = zero_shot_accuracy((labels + 1) % 6, labels)
    assert wrong["micro"] == 0.0 and wrong["macro"] == 0.0


@pytest.mark.parametrize("labels", [torch.tensor([-1, -1, -1]), torch.zeros(0, dtype=torch.long)])
def test_no_labelled_items_gives_nan_and_zero_count(labels):
    result = zero_shot_accuracy(torch.zeros(labels.shape[0], dtype=torch.long), labels)
    assert math.isnan(result["micro"]) and math.isnan(result["macro"]) and result["count"] == 0


# --------------------------------------------------------------------------- fake-model ensembling


def _fake_model(geometry, table: dict[str, torch.Tensor], tokenizer: Tokenizer, c: float | None = None):
    """A model whose text embedding of each prompt is ``table[prompt]``, looked up by token ids."""
    by_ids = {tuple(tokenizer.encode(text)): emb for text, emb in table.items()}
    calls = []

    def encode_text(tokens: torch.Tensor) -> torch.Tensor:
        calls.append(tokens.shape)
        return torch.stack([by_ids[tuple(row[row != 0].tolist())] for row in tokens])

    return SimpleNamespace(
        geometry=geometry,
        curvature=lambda: None if c is None else torch.tensor(c, dtype=torch.float64),
        config=SimpleNamespace(context_length=77),
        eval=lambda: None,
        encode_text=encode_text,
        calls=calls,
    )


def _exp_map0(v: torch.Tensor, c: float) -> torch.Tensor:
    """Space components of exp_0(v) in the Lorentz model of curvature -c, written out."""
    r = math.sqrt(c) * v.norm(dim=-1, keepdim=True)
    return torch.sinh(r) * v / r


def _lorentz_distance(x: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    xt = torch.sqrt(1 / c + (x * x).sum(-1))
    yt = torch.sqrt(1 / c + (y * y).sum(-1))
    inner = x @ y.T - xt[:, None] * yt[None, :]
    return torch.acosh(torch.clamp(-c * inner, min=1.0)) / math.sqrt(c)


def test_euclidean_ensemble_is_the_normalised_mean_of_the_prompts(tokenizer):
    e = torch.eye(3, dtype=torch.float64)
    table = {
        "a photo of a cat.": e[0],
        "a drawing of a cat.": e[1],
        "a photo of a dog.": e[2],
        "a drawing of a dog.": e[2],
        "a sketch of a dog.": torch.tensor([0.6, 0.0, 0.8], dtype=torch.float64),
    }
    model = _fake_model(EUCLIDEAN, table, tokenizer)
    prompts = [["a photo of a cat.", "a drawing of a cat."], ["a photo of a dog.", "a drawing of a dog.",
                                                               "a sketch of a dog."]]
    classes = class_embeddings(model, tokenizer, prompts)
    dog = torch.tensor([0.6 / 3, 0.0, 2.8 / 3], dtype=torch.float64)  # mean of e2, e2, (0.6, 0, 0.8)
    expected = torch.stack([torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64) / math.sqrt(2), dog / dog.norm()])
    torch.testing.assert_close(classes, expected)
    assert len(model.calls) == 1  # all prompts of all classes in one batch

    images = torch.tensor([[10.0, 9.0, 0.0], [0.1, 0.0, 1.0], [1.0, 0.2, 0.1], [0.0, 1.0, 0.5], [0.0, 1.0, 0.9]],
                          dtype=torch.float64)
    # cosines with (cat, dog): (0.99, 0.16), (0.07, 0.99), (0.83, 0.30), (0.63, 0.44), (0.53, 0.65)
    assert zero_shot_predictions(model, images, classes).tolist() == [0, 1, 0, 0, 1]


def test_lorentz_ensemble_is_the_tangent_mean_mapped_back(tokenizer):
    c = 0.5
    v = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.5], [0.3, 0.3, 0.6]], dtype=torch.float64)
    points = _exp_map0(v, c)
    table = {"a photo of a cat.": points[0], "a picture of a cat.": points[1],
             "a photo of a dog.": points[2], "a picture of a dog.": points[3]}
    model = _fake_model(LORENTZ, table, tokenizer, c=c)
    classes = class_embeddings(model, tokenizer, [["a photo of a cat.", "a picture of a cat."],
                                                  ["a photo of a dog.", "a picture of a dog."]])
    expected = _exp_map0(torch.stack([(v[0] + v[1]) / 2, (v[2] + v[3]) / 2]), c)
    torch.testing.assert_close(classes, expected)
    # not the Euclidean mean of the points
    assert not torch.allclose(classes[0], (points[0] + points[1]) / 2, atol=1e-3)


def test_lorentz_predictions_pick_the_nearest_class_by_geodesic_distance(tokenizer):
    c = 1.0
    model = _fake_model(LORENTZ, {}, tokenizer, c=c)
    # two classes on the same ray at different depths, one on another ray
    classes = _exp_map0(torch.tensor([[0.5, 0.0], [3.0, 0.0], [0.0, 2.0]], dtype=torch.float64), c)
    images = _exp_map0(torch.tensor([[2.8, 0.0], [0.6, 0.05], [0.4, 2.2], [1.2, 1.0]], dtype=torch.float64), c)
    expected = _lorentz_distance(images, classes, c).argmin(dim=1)
    assert expected.tolist()[:3] == [1, 0, 2]
    assert torch.equal(zero_shot_predictions(model, images, classes), expected)

    generator = torch.Generator().manual_seed(0)
    classes = _exp_map0(torch.randn(7, 5, generator=generator, dtype=torch.float64), 0.7)
    images = _exp_map0(1.5 * torch.randn(200, 5, generator=generator, dtype=torch.float64), 0.7)
    model = _fake_model(LORENTZ, {}, tokenizer, c=0.7)
    expected = _lorentz_distance(images, classes, 0.7).argmin(dim=1)
    assert torch.equal(zero_shot_predictions(model, images, classes), expected)


def test_euclidean_predictions_ignore_the_norm():
    model = SimpleNamespace(geometry=EUCLIDEAN, curvature=lambda: None)
    classes = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    images = torch.tensor([[100.0, 1.0], [0.01, 0.02], [3.0, 2.5]])
    # cosines with class 1: 0.61, 0.98, 0.97 against 1.0, 0.45, 0.77 with class 0
    assert zero_shot_predictions(model, images, classes).tolist() == [0, 1, 1]


def test_class_prompts_use_the_hierarchy_templates():
    data = load_builtin("digits", "test")
    prompts = class_prompts(data)
    assert len(prompts) == len(data.class_names) == 10
    assert all(prompts_k == data.hierarchy.class_prompts(name) for prompts_k, name in zip(prompts, data.class_names))
    assert all(len(p) > 1 for p in prompts)


# --------------------------------------------------------------------------- end to end


def test_pretrained_tiny_clip_is_far_above_chance_on_digits(tokenizer):
    train_data = load_builtin("digits", "train")
    test_data = load_builtin("digits", "test")
    config = PretrainConfig(geometry="euclidean", steps=110, batch_size=64, lr=1e-3, caption_weights=None, seed=0)
    model, result = pretrain(config, train_data, tokenizer=tokenizer, progress=False)
    assert result.steps == 5 * (len(train_data) // 64)
    accuracy = evaluate_zero_shot(model, test_data, tokenizer)
    assert accuracy["count"] == len(test_data) == 360
    assert accuracy["micro"] > 40.0, accuracy  # chance is 10 %
    assert accuracy["macro"] > 35.0, accuracy
    # the evaluation is a pure function of the model
    assert evaluate_zero_shot(model, test_data, tokenizer) == accuracy


@pytest.fixture(scope="module")
def digits_test_small():
    data = load_builtin("digits", "test")
    return data.subset(range(60))


def test_distance_to_origin_by_level_on_a_tiny_meru(tokenizer, digits_test_small):
    torch.manual_seed(0)
    model = build_model("tiny", "lorentz").eval()
    distances = distance_to_origin_by_level(model, digits_test_small, tokenizer)
    assert list(distances) == ["generic", "family", "class", "images"]
    assert all(math.isfinite(d) and d > 0 for d in distances.values()), distances
    # each level is the mean over its distinct captions, computed here independently
    c = model.curvature().item()
    classes = sorted({captions[2] for captions in digits_test_small.captions})
    with torch.no_grad():
        x = encode_texts(model, tokenizer, classes)
    expected = (torch.asinh(math.sqrt(c) * x.norm(dim=-1)) / math.sqrt(c)).mean().item()
    assert distances["class"] == pytest.approx(expected, rel=1e-5)


def test_distance_to_origin_refuses_a_euclidean_model(tokenizer, digits_test_small):
    model = build_model("tiny", "euclidean").eval()
    with pytest.raises(ValueError, match="hyperbolic"):
        distance_to_origin_by_level(model, digits_test_small, tokenizer)
