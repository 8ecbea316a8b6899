"""Hyperbolic hierarchy diagnostics on fake Lorentz models whose embeddings are placed by hand:
distance to the origin per class, the entailment rate (images on their captions' cone axes,
or opposite), and MERU's image traversal from an image to the origin."""

from __future__ import annotations

import math

import pytest
import torch

from tests.fakes import FakeTokenizer, fake_model, random_clothing_pairs
from vlunlearn.data import PairDataset, Tokenizer
from vlunlearn.evaluation.hierarchy import (
    ROOT,
    distance_to_origin_by_concept,
    distance_to_origin_by_level,
    entailment_rate,
    input_traversal,
)
from vlunlearn.geometry import EUCLIDEAN, LORENTZ, lorentz
from vlunlearn.models import build_model

D = torch.float64


def _dataset(captions, labels, class_names=("a", "b", "c")) -> PairDataset:
    n = len(captions)
    return PairDataset(
        name="toy",
        inputs=torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous(),
        captions=[("generic.", caption) for caption in captions],
        concepts=[frozenset() for _ in range(n)],
        labels=torch.tensor(labels),
        ids=[f"toy/{i}" for i in range(n)],
        class_names=class_names,
    )


def _unit(angle: float) -> torch.Tensor:
    return torch.tensor([math.cos(angle), math.sin(angle)], dtype=D)


# --------------------------------------------------------------------------- distance to the origin


def test_distance_to_origin_by_concept_matches_a_hand_computation():
    c = 0.5
    # space components with |x| = sinh(sqrt(c) r) / sqrt(c) lie at distance r from the origin
    radii = torch.tensor([1.0, 2.0, 3.0, 10.0], dtype=D)
    norms = torch.sinh(math.sqrt(c) * radii) / math.sqrt(c)
    images = torch.stack([norms[0] * _unit(0.3), norms[1] * _unit(2.0), norms[2] * _unit(-1.0), norms[3] * _unit(1.0)])
    data = _dataset(["x.", "y.", "z.", "w."], labels=[0, 0, 1, -1])
    model = fake_model(LORENTZ, images, torch.zeros(1, 2, dtype=D), c)
    result = distance_to_origin_by_concept(model, data, FakeTokenizer([]))
    assert list(result) == ["a", "b"]  # class order; "c" has no image; the -1 item is ignored
    assert result["a"] == pytest.approx(1.5)
    assert result["b"] == pytest.approx(3.0)


def test_distance_to_origin_by_concept_can_group_multi_item_scenes_by_every_class_they_show():
    c = 1.0
    radii = torch.tensor([1.0, 2.0, 4.0], dtype=D)
    images = torch.stack([(torch.sinh(r) * _unit(0.5 * k)) for k, r in enumerate(radii)])  # d0 = radii
    data = _dataset(["x.", "y.", "z."], labels=[-1, 0, 2])
    data.concepts = [frozenset({"a", "b", "family"}), frozenset({"a", "family"}), frozenset({"c"})]
    model = fake_model(LORENTZ, images, torch.zeros(1, 2, dtype=D), c)
    by_labels = distance_to_origin_by_concept(model, data, FakeTokenizer([]))
    assert by_labels == pytest.approx({"a": 2.0, "c": 4.0})  # the -1 scene is ignored
    by_concepts = distance_to_origin_by_concept(model, data, FakeTokenizer([]), group_by="concepts")
    assert list(by_concepts) == ["a", "b", "c"]  # "family" is not a class
    assert by_concepts == pytest.approx({"a": 1.5, "b": 1.0, "c": 4.0})
    with pytest.raises(ValueError, match="group_by"):
        distance_to_origin_by_concept(model, data, FakeTokenizer([]), group_by="ids")


# --------------------------------------------------------------------------- entailment rate


def _entailment_setup(image_sign: list[float], c: float = 1.0):
    """Captions at tangent radius 1 in three directions; image i at tangent radius 3 along
    ``image_sign[i]`` times its caption's direction."""
    angles = [0.0, 2.0, 4.0]
    caption_points = torch.stack([lorentz.exp_map0(_unit(a), c) for a in angles])
    labels = [i % 3 for i in range(len(image_sign))]
    image_points = torch.stack([lorentz.exp_map0(3.0 * s * _unit(angles[k]), c) for s, k in zip(image_sign, labels)])
    texts = [f"caption {k}." for k in range(3)]
    data = _dataset([texts[k] for k in labels], labels)
    return fake_model(LORENTZ, image_points, caption_points, c), data, FakeTokenizer(texts)


@pytest.mark.parametrize("c", [1.0, 0.3])
def test_entailment_rate_is_one_on_the_cone_axes_and_zero_opposite(c):
    model, data, tokenizer = _entailment_setup([1.0] * 6, c)
    assert entailment_rate(model, data, tokenizer) == 1.0
    model, data, tokenizer = _entailment_setup([-1.0] * 6, c)
    assert entailment_rate(model, data, tokenizer) == 0.0
    model, data, tokenizer = _entailment_setup([1.0, -1.0, 1.0, 1.0], c)
    assert entailment_rate(model, data, tokenizer) == pytest.approx(0.75)


def test_entailment_rate_respects_the_aperture():
    c = 1.0
    caption = lorentz.exp_map0(torch.tensor([[2.0, 0.0]], dtype=D), c)
    aperture = lorentz.half_aperture(caption, c).item()  # asin(0.2 / |x|), small
    # images far out, at angles off the axis below and above the aperture, measured by ext itself
    candidates = [lorentz.exp_map0(4.0 * _unit(a), c) for a in (0.0, 0.01, 0.05, 0.3, 1.0)]
    angles = [lorentz.exterior_angle(caption, p[None], c).item() for p in candidates]
    expected = sum(a <= aperture for a in angles) / len(angles)
    assert 0 < expected < 1
    data = _dataset(["caption 0."] * len(candidates), [0] * len(candidates))
    model = fake_model(LORENTZ, torch.stack(candidates), caption, c)
    assert entailment_rate(model, data, FakeTokenizer(["caption 0."])) == pytest.approx(expected)


def test_euclidean_models_are_refused():
    model = fake_model(EUCLIDEAN, torch.zeros(1, 2, dtype=D), torch.zeros(1, 2, dtype=D), 1.0)
    data = _dataset(["caption 0."], [0])
    tokenizer = FakeTokenizer(["caption 0."])
    for fn in (distance_to_origin_by_concept, entailment_rate, distance_to_origin_by_level):
        with pytest.raises(ValueError, match="hyperbolic"):
            fn(model, data, tokenizer)
    with pytest.raises(ValueError, match="hyperbolic"):
        input_traversal(model, torch.zeros(1, 2, 2), {"x": "caption 0."}, tokenizer)


# --------------------------------------------------------------------------- image traversal


def _traversal_model(c: float = 1.0):
    """Image 0 far out on the x axis, image 1 far out on the y axis. Concepts: "sneaker" on the
    x axis at tangent radius 2.5, "footwear" on the x axis at radius 1 (as the tangent mean of two
    prompts at (1, +-0.3)), "bag" on the y axis at radius 2.5, and "dress" the nearest concept
    to image 0 (tangent radius 3.9, 0.02 rad off the x axis) but with image 0 outside its cone."""
    tangent_texts = torch.tensor(
        [[2.5, 0.0], [1.0, 0.3], [1.0, -0.3], [0.0, 2.5], [3.9 * math.cos(0.02), 3.9 * math.sin(0.02)]], dtype=D
    )
    texts = ["sneaker", "footwear a", "footwear b", "bag", "dress"]
    images = lorentz.exp_map0(torch.tensor([[4.0, 0.0], [0.0, 4.0]], dtype=D), c)
    return fake_model(LORENTZ, images, lorentz.exp_map0(tangent_texts, c), c), FakeTokenizer(texts)


PROMPTS = {"sneaker": ["sneaker"], "footwear": ["footwear a", "footwear b"], "bag": "bag", "dress": ["dress"]}


@pytest.mark.parametrize("c", [1.0, 0.5])
def test_traversal_walks_from_the_specific_concept_to_the_root(c):
    model, tokenizer = _traversal_model(c)
    # without the cone mask "dress" would label the image end: it is nearer than "sneaker"
    image_0 = model.encode_input(torch.zeros(1, 1, 2, 2))
    dress, sneaker = model.encode_text(torch.tensor([[4], [0]]))
    assert lorentz.pairwise_dist(image_0, dress[None], c) < lorentz.pairwise_dist(image_0, sneaker[None], c)
    image = torch.zeros(1, 2, 2)  # pixel value 0 -> image 0, on the x axis
    assert input_traversal(model, image, PROMPTS, tokenizer) == ["sneaker", "footwear", ROOT]
    # image 1 lies on the y axis: only "bag" contains it; "footwear" is never a candidate
    image = torch.full((1, 2, 2), 1 / 255)
    assert input_traversal(model, image, PROMPTS, tokenizer) == ["bag", ROOT]
    # uint8 images are scaled; a handful of steps still sees every stage here
    assert input_traversal(model, torch.zeros(1, 2, 2, dtype=torch.uint8), PROMPTS, tokenizer, steps=9) == [
        "sneaker", "footwear", ROOT]


def test_traversal_skips_concepts_whose_cone_misses_the_path():
    model, tokenizer = _traversal_model()
    prompts = {"bag": ["bag"], "dress": ["dress"]}
    assert input_traversal(model, torch.zeros(1, 2, 2), prompts, tokenizer) == [ROOT]
    assert input_traversal(model, torch.zeros(1, 2, 2), {}, tokenizer) == [ROOT]


def test_traversal_rejects_bad_arguments():
    model, tokenizer = _traversal_model()
    with pytest.raises(ValueError):
        input_traversal(model, torch.zeros(1, 2, 2), PROMPTS, tokenizer, steps=1)
    with pytest.raises(ValueError):
        input_traversal(model, torch.zeros(1, 2, 2), {ROOT: "bag"}, tokenizer)
    with pytest.raises(ValueError):
        input_traversal(model, torch.zeros(1, 2, 2), {"bag": []}, tokenizer)
    with pytest.raises(ValueError):
        input_traversal(model, torch.zeros(2, 1, 2, 2), PROMPTS, tokenizer)


# --------------------------------------------------------------------------- untrained tiny MERU


def test_diagnostics_run_on_an_untrained_tiny_meru():
    torch.manual_seed(0)
    model = build_model("tiny", "lorentz")
    data = random_clothing_pairs(("bag", "coat", "bag", "shirt"), labels=[0, 1, 0, -1], class_names=("bag", "coat", "shirt"))
    tokenizer = Tokenizer()
    rate = entailment_rate(model, data, tokenizer)
    with torch.no_grad():  # pair by pair: is each image in the cone of its own canonical caption?
        c = model.curvature()
        inside = [
            bool(lorentz.exterior_angle(text, image, c) <= lorentz.half_aperture(text, c))
            for image, text in zip(model.encode_input(data.input_batch(range(4))),
                                   model.encode_text(tokenizer(data.canonical_captions(), model.config.context_length)))
        ]
    assert rate == pytest.approx(sum(inside) / 4)
    by_concept = distance_to_origin_by_concept(model, data, tokenizer)
    assert list(by_concept) == ["bag", "coat"] and all(v > 0 for v in by_concept.values())
    path = input_traversal(model, data.input_batch([0])[0], {"bag": ["a photo of a bag."], "top": "a top."},
                           tokenizer, steps=5)
    assert path[-1] == ROOT and set(path) <= {"bag", "top", ROOT}


# --------------------------------------------------------------------------- edge cases and conventions


def test_distance_to_origin_by_level_averages_the_distinct_captions_of_each_level():
    c = 1.0
    # tangent radius r on the x axis lies at distance r from the origin (c = 1)
    texts = lorentz.exp_map0(torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]], dtype=D), c)
    images = lorentz.exp_map0(torch.tensor([[4.0, 0.0], [0.0, 5.0], [6.0, 0.0]], dtype=D), c)
    data = _dataset(["x.", "x.", "y."], [0, 0, 1])  # no hierarchy: levels are named level0, level1
    model = fake_model(LORENTZ, images, texts, c)
    result = distance_to_origin_by_level(model, data, FakeTokenizer(["generic.", "x.", "y."]))
    # level1 holds "x." (2) and "y." (3) once each, however often they occur
    assert result == pytest.approx({"level0": 1.0, "level1": 2.5, "inputs": 5.0})
    assert list(result) == ["level0", "level1", "inputs"]


def test_a_single_pair_is_measured():
    model, data, tokenizer = _entailment_setup([1.0])
    assert entailment_rate(model, data, tokenizer) == 1.0
    assert distance_to_origin_by_concept(model, data, tokenizer) == pytest.approx({"a": 3.0})
    model, data, tokenizer = _entailment_setup([-1.0])
    assert entailment_rate(model, data, tokenizer) == 0.0
    assert math.isnan(entailment_rate(model, data.subset([]), tokenizer))
    assert distance_to_origin_by_concept(model, data.subset([]), tokenizer) == {}


def _boundary_caption(c: float) -> torch.Tensor:
    """A caption (1, 2) on the x axis whose half-aperture equals, to the last bit, the exterior angle
    of any point further out on the axis (``acos(1 - EPS)``, where the cosine clamps): such points
    lie exactly on the cone boundary. Found by bisection: the aperture decreases with the radius."""
    target = torch.acos(torch.tensor(1 - lorentz.EPS, dtype=D)).item()
    lo, hi = 1000.0, 2000.0
    while (mid := (lo + hi) / 2) not in (lo, hi):
        aperture = lorentz.half_aperture(torch.tensor([[mid, 0.0]], dtype=D), c).item()
        lo, hi = (mid, hi) if aperture >= target else (lo, mid)
    caption = torch.tensor([[lo, 0.0]], dtype=D)
    assert lorentz.half_aperture(caption, c).item() == target
    return caption


def test_an_image_exactly_on_the_cone_boundary_is_entailed():
    c = 1.0
    caption = _boundary_caption(c)
    images = caption * torch.tensor([[1.5], [3.0]], dtype=D)
    angles = lorentz.exterior_angle(caption.expand(2, 2), images, c)
    assert torch.equal(angles, lorentz.half_aperture(caption, c).expand(2))
    data = _dataset(["caption 0."] * 2, [0, 0])
    model = fake_model(LORENTZ, images, caption, c)
    assert entailment_rate(model, data, FakeTokenizer(["caption 0."])) == 1.0  # ext <= aper, not <


def test_traversal_image_formats_and_path_ends():
    model, tokenizer = _traversal_model()
    # two steps are enough: the image itself and the origin
    assert input_traversal(model, torch.zeros(1, 2, 2), PROMPTS, tokenizer, steps=2) == ["sneaker", ROOT]
    # (C, H, W) with three channels; pixel value 1 / 255 is image 1, on the y axis
    assert input_traversal(model, torch.full((3, 2, 2), 1 / 255), PROMPTS, tokenizer) == ["bag", ROOT]
    # uint8 255 is scaled to 1.0: image 255 (on the x axis), not 254 (at the origin)
    images = torch.zeros(256, 2, dtype=D)
    images[255] = lorentz.exp_map0(torch.tensor([4.0, 0.0], dtype=D), 1.0)
    far = fake_model(LORENTZ, images, model.encode_text(torch.arange(5)[:, None]), 1.0)
    assert input_traversal(far, torch.full((1, 2, 2), 255, dtype=torch.uint8), PROMPTS, tokenizer) == [
        "sneaker", "footwear", ROOT]


def test_traversal_starts_at_the_image_not_beyond_it():
    # "beyond" sits on the x axis further out (tangent radius 6) than image 0 (radius 4)
    model, tokenizer = _traversal_model()
    beyond = lorentz.exp_map0(torch.tensor([[6.0, 0.0]], dtype=D), 1.0)
    model = fake_model(LORENTZ, model.encode_input(torch.zeros(1, 1, 2, 2)), beyond, 1.0)
    assert input_traversal(model, torch.zeros(1, 2, 2), {"beyond": "beyond"}, FakeTokenizer(["beyond"])) == [ROOT]


def test_traversal_accepts_text_embeddings_of_another_dtype():
    model, tokenizer = _traversal_model()
    texts = model.encode_text(torch.arange(5)[:, None]).to(torch.float32)
    mixed = fake_model(LORENTZ, model.encode_input(torch.zeros(2, 1, 2, 2)), texts, 1.0)
    assert input_traversal(mixed, torch.zeros(1, 2, 2), PROMPTS, tokenizer) == ["sneaker", "footwear", ROOT]


def _band_model(radius: float):
    """Image 0 on the x axis at tangent radius ``radius``; two captions near the origin, 0.3 rad off
    the axis, whose wide cones take in the axis beyond about 0.157 ("band") and 0.159 ("outer").
    Walking in from far out, a point is "outer" beyond about 0.1592, "band" down to about 0.1571,
    then the origin's."""
    texts = lorentz.exp_map0(torch.stack([r * _unit(0.3) for r in (0.152, 0.15)]), 1.0)
    image = lorentz.exp_map0(torch.tensor([[radius, 0.0]], dtype=D), 1.0)
    return fake_model(LORENTZ, image, texts, 1.0)


BAND = {"outer": "outer", "band": "band"}


def _band_walk(radius: float, steps: int | None = None) -> list[str]:
    kwargs = {} if steps is None else {"steps": steps}
    return input_traversal(_band_model(radius), torch.zeros(1, 2, 2), BAND, FakeTokenizer(list(BAND)), **kwargs)


def test_traversal_takes_50_steps_by_default():
    # the band (0.1571, 0.1592) holds the 51-step point 0.5 * 0.3163 but no 50-step point (24/49, 25/49 of it)
    assert _band_walk(0.3163, steps=51) == ["outer", "band", ROOT]
    assert _band_walk(0.3163) == _band_walk(0.3163, steps=50) == ["outer", ROOT]


def test_traversal_path_is_sampled_in_the_embeddings_dtype():
    # the band's outer edge, to 1e-11, from walks of two steps (the image itself, then the origin)
    lo, hi = 0.158, 0.16
    while hi - lo > 1e-11:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if _band_walk(mid, steps=2)[0] == "outer" else (mid, hi)
    # with 4 steps the third point is at s = 1/3; float32 weights would put it 1e-8 further out, beyond the band
    s64, s32 = 1 / 3, torch.linspace(1.0, 0.0, 4, dtype=torch.float32)[2].item()
    assert s32 - s64 > 5e-9
    assert _band_walk(lo / ((s64 + s32) / 2), steps=4) == ["outer", "band", ROOT]
