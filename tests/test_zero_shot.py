"""Zero-shot evaluation: accuracy arithmetic (top-1 and top-5, micro and macro), prompt ensembling,
nearest-class predictions, the candidate-class conventions of evaluate_splits and per-concept
detection AP with fake models whose embeddings are known, an end-to-end check that a briefly
pretrained tiny CLIP beats chance by far, and the hyperbolic distance-to-origin diagnostic."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from tests.fakes import FakeTokenizer, fake_model
from vlunlearn.data import PairDataset, Tokenizer, UnlearningRequest, UnlearningSplits, load_builtin, make_splits
from vlunlearn.evaluation import (
    class_embeddings,
    class_prompts,
    concept_detection,
    detection_metrics,
    encode_inputs,
    encode_texts,
    evaluate_splits,
    evaluate_zero_shot,
    topk_accuracy,
    zero_shot_accuracy,
    zero_shot_predictions,
)
from vlunlearn.errors import ConfigError
from vlunlearn.evaluation.zero_shot import DEFAULT_PROMPTS, candidate_labels, label_ranks
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


# --------------------------------------------------------------------------- topk_accuracy


def test_top5_and_top1_micro_and_macro_on_a_hand_made_score_matrix():
    scores = torch.tensor([
        [9.0, 1.0, 2.0, 3.0, 4.0, 5.0],  # label 0 at rank 0
        [9.0, 6.0, 8.0, 7.0, 1.0, 0.0],  # label 1 at rank 3
        [5.0, 4.0, 0.0, 3.0, 2.0, 1.0],  # label 2 at rank 5 (last)
        [0.0, 0.0, 0.0, 0.0, 0.0, 9.0],  # label -1: ignored
        [0.0, 0.0, 7.0, 0.0, 0.0, 0.0],  # label 2 at rank 0
    ])
    labels = torch.tensor([0, 1, 2, -1, 2])
    assert label_ranks(scores[labels >= 0], labels[labels >= 0]).tolist() == [0, 3, 5, 0]
    result = topk_accuracy(scores, labels, ks=(1, 5, 10))
    # top-1: rows 0 and 4 right; per class 1, 0, 1/2.  top-5: row 2 still wrong; per class 1, 1, 1/2
    assert result == pytest.approx({"top1_micro": 50.0, "top1_macro": 50.0,
                                    "top5_micro": 75.0, "top5_macro": 100 * 2.5 / 3,
                                    "top10_micro": 100.0, "top10_macro": 100.0, "count": 4})  # k=10 capped at 6
    nothing = topk_accuracy(scores[:1], torch.tensor([-1]))
    assert nothing["count"] == 0 and math.isnan(nothing["top1_micro"]) and math.isnan(nothing["top5_macro"])
    with pytest.raises(ValueError, match="scores"):
        topk_accuracy(scores, labels[:3])


def test_top1_agrees_with_argmax_including_ties():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 3, (200, 7), generator=generator).float()  # many ties
    labels = torch.randint(-1, 7, (200,), generator=generator)
    top = topk_accuracy(scores, labels)
    reference = zero_shot_accuracy(scores.argmax(dim=1), labels)
    assert top["top1_micro"] == pytest.approx(reference["micro"])
    assert top["top1_macro"] == pytest.approx(reference["macro"])
    assert top["count"] == reference["count"] and top["top5_micro"] > top["top1_micro"]
    # a tie between the label and a lower class index is lost, with a higher one won
    assert label_ranks(torch.tensor([[1.0, 1.0, 1.0]]), torch.tensor([1])).tolist() == [1]


@pytest.mark.parametrize("ks", [(0,), (1, -1), (True,), (1.5,)])
def test_topk_accuracy_refuses_ks_that_are_not_positive_ints(ks):
    with pytest.raises(ValueError, match="ks must be positive ints"):
        topk_accuracy(torch.zeros(2, 3), torch.tensor([0, 1]), ks=ks)


# --------------------------------------------------------------------------- splits with a fake model

_CLASSES = ("cat", "dog", "bird")
_E = torch.eye(3)
# item: (label, image embedding); 0-1 training (cat, dog), 2-4 test (cat, dog, bird)
_ITEMS = [
    (0, _E[0]),
    (1, _E[1]),
    (0, torch.tensor([0.8, 0.0, 0.6])),  # cat, its bird score second
    (1, torch.tensor([0.9, 0.1, 0.0])),  # dog that looks most like a cat, then a dog
    (2, _E[2]),
]


def _fake_splits():
    n = len(_ITEMS)
    images = torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, 1, 2, 2).contiguous()
    data = PairDataset(name="toy", inputs=images, captions=[(f"a {_CLASSES[k]}",) for k, _ in _ITEMS],
                       concepts=[{_CLASSES[k]} for k, _ in _ITEMS], labels=[k for k, _ in _ITEMS],
                       ids=[f"toy/{i}" for i in range(n)], class_names=_CLASSES)
    prompts = [template.format(name) for name in _CLASSES for template in DEFAULT_PROMPTS]
    text_table = _E.repeat_interleave(len(DEFAULT_PROMPTS), dim=0)  # every prompt of class k embeds as e_k
    model = fake_model(EUCLIDEAN, torch.stack([emb for _, emb in _ITEMS]), text_table)
    splits = make_splits(data.subset([0, 1]), data.subset([2, 3, 4]), UnlearningRequest(concepts=("cat",)))
    return model, FakeTokenizer(prompts), data, splits


def test_evaluate_splits_with_all_and_with_retain_only_candidates():
    model, tokenizer, _, splits = _fake_splits()
    assert splits.forget_classes == ("cat",) and len(splits.test_forget) == 1 and len(splits.test_retain) == 2
    everything = evaluate_splits(model, splits, tokenizer)
    # test-retain: the dog item is taken for a cat (top-1 wrong, top-5 right), the bird is right
    assert everything == pytest.approx({
        "zs_test_forget": 100.0, "zs_test_forget_macro": 100.0, "zs_test_forget_top5": 100.0,
        "zs_test_forget_top5_macro": 100.0,
        "zs_test_retain": 50.0, "zs_test_retain_macro": 50.0, "zs_test_retain_top5": 100.0,
        "zs_test_retain_top5_macro": 100.0,
        "zs_train_forget": 100.0, "zs_train_forget_macro": 100.0, "zs_train_forget_top5": 100.0,
        "zs_train_forget_top5_macro": 100.0,
        "zs_train_retain": 100.0, "zs_train_retain_macro": 100.0, "zs_train_retain_top5": 100.0,
        "zs_train_retain_top5_macro": 100.0,
    })
    assert evaluate_splits(model, splits, tokenizer, candidates="all") == everything
    retain_only = evaluate_splits(model, splits, tokenizer, candidates="retain")
    # cat items cannot be right without the cat candidate; the dog item can only be a dog or a bird
    assert list(retain_only) == list(everything)
    assert all(math.isnan(v) for k, v in retain_only.items() if "forget" in k)
    assert all(v == pytest.approx(100.0) for k, v in retain_only.items() if "retain" in k)
    with pytest.raises(ValueError, match="candidates"):
        evaluate_splits(model, splits, tokenizer, candidates="forget")


def test_evaluate_zero_shot_reports_top5():
    model, tokenizer, data, _ = _fake_splits()
    result = evaluate_zero_shot(model, data, tokenizer)
    # only the dog item 3 is wrong at top-1; per class 1, 1/2, 1
    assert result == pytest.approx({"micro": 80.0, "macro": 100 * 2.5 / 3, "top5_micro": 100.0,
                                    "top5_macro": 100.0, "count": 5})


def test_evaluate_zero_shot_uses_the_given_templates():
    _, _, data, _ = _fake_splits()
    # the bare class names embed as the next class's direction: cat -> dog, dog -> bird, bird -> cat
    prompts = [template.format(name) for name in _CLASSES for template in DEFAULT_PROMPTS]
    text_table = torch.cat([_E.repeat_interleave(len(DEFAULT_PROMPTS), dim=0), _E.roll(-1, dims=0)])
    model = fake_model(EUCLIDEAN, torch.stack([emb for _, emb in _ITEMS]), text_table)
    tokenizer = FakeTokenizer(prompts + list(_CLASSES))
    assert evaluate_zero_shot(model, data, tokenizer)["micro"] == pytest.approx(80.0)
    # each image is now nearest the class before its own: every top-1 prediction is wrong
    shifted = evaluate_zero_shot(model, data, tokenizer, templates=("{}",))
    assert shifted["micro"] == 0.0 and shifted["macro"] == 0.0 and shifted["count"] == 5


def test_class_prompts_fill_the_templates_and_refuse_bad_ones():
    _, _, data, _ = _fake_splits()
    assert class_prompts(data, ["{}!", "see {}"]) == [["cat!", "see cat"], ["dog!", "see dog"], ["bird!", "see bird"]]
    for bad in ([], ["no slot"], ["{} and {}"], ["{}", "none"]):
        with pytest.raises(ConfigError, match="exactly one"):
            class_prompts(data, bad)


def test_candidate_labels_remap_labels_to_candidate_columns():
    columns, labels = candidate_labels(_CLASSES, ("bird", "cat"), torch.tensor([0, 1, 2, -1]))
    assert columns.tolist() == [2, 0] and labels.tolist() == [1, -1, 0, -1]
    columns, labels = candidate_labels(_CLASSES, (), torch.tensor([0, 2, -1]))
    assert columns.shape == (0,) and columns.dtype == labels.dtype == torch.int64 and labels.tolist() == [-1, -1, -1]


def test_splits_without_classes_or_test_items_give_nan():
    model, tokenizer, data, splits = _fake_splits()
    # no test items: the test parts and detection are NaN, the training parts are scored
    no_test = UnlearningSplits(splits.request, splits.forget, splits.retain, data.subset([]), data.subset([]),
                               splits.forget_classes, splits.retain_classes)
    result = evaluate_splits(model, no_test, tokenizer)
    assert all(math.isnan(v) == ("test" in k) for k, v in result.items()), result
    assert result["zs_train_retain"] == 100.0
    assert all(math.isnan(v) for v in detection_metrics(model, no_test, tokenizer).values())
    # no classes at all (a retrieval-only dataset): every accuracy and both detection APs are NaN
    plain = PairDataset(name="plain", inputs=data.inputs, captions=data.captions, concepts=data.concepts,
                        labels=torch.full((len(data),), -1), ids=data.ids, class_names=())
    no_classes = UnlearningSplits(splits.request, plain.subset([0]), plain.subset([1]), plain.subset([2]),
                                  plain.subset([3, 4]), (), ())
    assert all(math.isnan(v) for v in evaluate_splits(model, no_classes, tokenizer).values())
    assert all(math.isnan(v) for v in evaluate_splits(model, no_classes, tokenizer, candidates="retain").values())
    assert all(math.isnan(v) for v in detection_metrics(model, no_classes, tokenizer).values())


def test_encoders_work_in_batches_of_500_by_default():
    n = 501
    data = PairDataset(name="same", inputs=torch.zeros(n, 1, 2, 2, dtype=torch.uint8), captions=[("x",)] * n,
                       concepts=[set()] * n, labels=torch.full((n,), -1), ids=[f"same/{i}" for i in range(n)],
                       class_names=())
    model = fake_model(EUCLIDEAN, torch.eye(2), torch.eye(2))
    calls = []
    encode_input, encode_text = model.encode_input, model.encode_text
    model.encode_input = lambda images: calls.append(len(images)) or encode_input(images)
    model.encode_text = lambda tokens: calls.append(len(tokens)) or encode_text(tokens)
    assert torch.equal(encode_inputs(model, data), torch.tensor([[1.0, 0.0]]).expand(n, 2))
    texts = encode_texts(model, FakeTokenizer(["x", "y"]), ["y"] * n)
    assert torch.equal(texts, torch.tensor([[0.0, 1.0]]).expand(n, 2))
    assert calls == [500, 1, 500, 1]
    calls.clear()
    assert encode_inputs(model, data, batch_size=200).shape == (n, 2) and calls == [200, 200, 101]


def test_texts_are_tokenized_to_the_model_context_length(tokenizer):
    model = SimpleNamespace(config=SimpleNamespace(context_length=5), eval=lambda: None,
                            encode_text=lambda tokens: tokens.double())
    texts = ["a cat", "a photo of a small grey cat on a mat"]  # the second is cut to 5 tokens
    with pytest.warns(UserWarning, match="truncated"):
        encoded = encode_texts(model, tokenizer, texts)
    with pytest.warns(UserWarning, match="truncated"):
        expected = tokenizer(texts, 5)
    assert encoded.shape == (2, 5) and torch.equal(encoded, expected.double())


# --------------------------------------------------------------------------- concept detection


def _multi_concept(cat_negative: list[float]):
    """Items showing {cat}, {cat, dog}, {dog} (image ``cat_negative``) and nothing; classes cat, dog, bird."""
    s = 1 / math.sqrt(2)
    image_table = torch.tensor([[1.0, 0.0, 0.0], [s, s, 0.0], cat_negative, [-s, -s, 0.0]])
    concepts = [{"cat"}, {"cat", "dog"}, {"dog"}, set()]
    images = torch.arange(4, dtype=torch.uint8)[:, None, None, None].expand(4, 1, 2, 2).contiguous()
    data = PairDataset(name="multi", inputs=images, captions=[("x",)] * 4, concepts=concepts,
                       labels=[0, -1, 1, -1], ids=[f"m/{i}" for i in range(4)], class_names=_CLASSES)
    return fake_model(EUCLIDEAN, image_table, _E), FakeTokenizer(_CLASSES), data


def test_concept_detection_ap_is_one_when_the_prompt_is_nearest_to_its_images():
    model, tokenizer, data = _multi_concept([0.0, 1.0, 0.0])
    # cat scores 1, .71, 0, -.71 and dog scores 0, .71, 1, -.71: positives first; bird has no positive
    assert concept_detection(model, data, tokenizer, templates=("{}",)) == pytest.approx({"cat": 1.0, "dog": 1.0})


def test_concept_detection_ap_drops_when_a_negative_outscores_a_positive():
    model, tokenizer, data = _multi_concept([0.9, 0.436, 0.0])
    # cat: item 0 (positive), item 2 (negative, 0.9), item 1 (positive, 0.71): AP = (1 + 2/3) / 2
    result = concept_detection(model, data, tokenizer, templates=("{}",))
    assert result == pytest.approx({"cat": 5 / 6, "dog": 1.0}, abs=1e-6)


def test_detection_metrics_separate_forget_and_retain_classes():
    model, tokenizer, _, splits = _fake_splits()
    # on test items 2-4 the dog item (0.99) outscores the cat item (0.8) for "cat": AP 1/2;
    # dog and bird are found first: AP 1
    assert detection_metrics(model, splits, tokenizer) == pytest.approx({"det_ap_forget": 0.5, "det_ap_retain": 1.0})


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
    # a short run (about a pass over the data) at a low learning rate: about 33 % top-1, 85 % top-5
    config = PretrainConfig(geometry="euclidean", steps=50, batch_size=32, lr=5e-4, caption_weights=None, seed=0)
    model, result = pretrain(config, train_data, tokenizer=tokenizer, progress=False)
    assert result.steps == 50
    accuracy = evaluate_zero_shot(model, test_data, tokenizer)
    assert accuracy["count"] == len(test_data) == 360

    def far_above_chance(scores: dict) -> bool:  # chance is 10 % top-1 and 50 % top-5
        return scores["micro"] > 25.0 and scores["macro"] > 25.0 and scores["top5_micro"] > 75.0

    assert far_above_chance(accuracy), accuracy
    torch.manual_seed(0)
    untrained = evaluate_zero_shot(build_model("tiny", "euclidean"), test_data, tokenizer)
    assert not far_above_chance(untrained), untrained  # about 9 % top-1, 54 % top-5
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
    assert list(distances) == ["generic", "family", "class", "inputs"]
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
