"""Where forgotten images land in the concept tree: closed-form tree relations and distances
on the digits hierarchy (number -> even/odd -> digits), and landing metrics / traversals of
fake models whose images embed exactly at chosen concepts, in both geometries."""

from __future__ import annotations

import math

import pytest
import torch

from tests.fakes import FakeTokenizer, fake_model
from vlunlearn.data import DIGITS, PairDataset
from vlunlearn.evaluation.hierarchy import ROOT
from vlunlearn.evaluation.landing import (
    hierarchy_prompts,
    landing_metrics,
    nearest_concepts,
    traversal_examples,
    tree_metrics,
    tree_relation,
)
from vlunlearn.geometry import EUCLIDEAN, LORENTZ, euclidean, lorentz

D = torch.float64
C = 0.7
NAMES = list(DIGITS.concepts)
PROMPTS = hierarchy_prompts(DIGITS)
TEXTS = [text for name in NAMES for text in PROMPTS[name]]


def _point(geometry, tangent: torch.Tensor) -> torch.Tensor:
    """A tangent vector at the origin (``(..., D)``) mapped onto the geometry's embedding space."""
    return euclidean.normalize(tangent) if geometry is EUCLIDEAN else lorentz.exp_map0(tangent, C)


def _model(geometry, concept_tangents: torch.Tensor, image_tangents: torch.Tensor):
    """Every prompt of concept ``k`` embeds at ``concept_tangents[k]``; image ``i`` at ``image_tangents[i]``."""
    rows = [k for k, name in enumerate(NAMES) for _ in PROMPTS[name]]
    texts = _point(geometry, concept_tangents)[rows]
    c = None if geometry is EUCLIDEAN else C
    return fake_model(geometry, _point(geometry, image_tangents), texts, c), FakeTokenizer(TEXTS)


def _axis(name: str, length: float = 2.0) -> torch.Tensor:
    return length * torch.eye(len(NAMES), dtype=D)[NAMES.index(name)]


def _axes_model(geometry, image_tangents: torch.Tensor):
    """Concepts on orthogonal axes (tangent radius 2)."""
    return _model(geometry, 2.0 * torch.eye(len(NAMES), dtype=D), image_tangents)


def _dataset(true_classes, hierarchy=DIGITS) -> PairDataset:
    n = len(true_classes)
    return PairDataset(
        name="digits-toy",
        inputs=torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous(),
        captions=[(f"the number {name}.",) for name in true_classes],
        concepts=[frozenset(DIGITS.ancestors(name)) for name in true_classes],
        labels=torch.tensor([DIGITS.classes.index(name) for name in true_classes]),
        ids=[f"toy/{i}" for i in range(n)],
        class_names=DIGITS.classes,
        hierarchy=hierarchy,
    )


# --------------------------------------------------------------------------- prompts and tree relations


def test_hierarchy_prompts_cover_every_concept_with_its_level_templates():
    assert list(PROMPTS) == NAMES and len(NAMES) == 13
    assert PROMPTS["zero"] == DIGITS.class_prompts("zero")
    assert PROMPTS["even"] == ["an even number.", "a handwritten even number.", "an even digit."]
    assert PROMPTS["number"] == DIGITS.level_prompts("generic")["number"]
    assert len(set(TEXTS)) == len(TEXTS)  # the fake tokenizer needs each text once


@pytest.mark.parametrize(
    "predicted, true, relation",
    [
        ("zero", "zero", "same"),
        ("two", "zero", "sibling"),
        ("odd", "even", "sibling"),
        ("even", "zero", "parent"),
        ("number", "zero", "parent"),
        ("zero", "even", "child"),
        ("zero", "number", "child"),
        ("one", "zero", "other"),
        ("odd", "zero", "other"),
        ("zero", "odd", "other"),
    ],
)
def test_tree_relation(predicted, true, relation):
    assert tree_relation(DIGITS, predicted, true) == relation


@pytest.mark.parametrize(
    "predicted, true, expected",
    [
        # ancestor sets include the node itself and the root: A(zero) = {zero, even, number}
        ("zero", "zero", (0, 1, 1, 1, 1)),
        ("two", "zero", (2, 2, 1 / 2, 2 / 3, 2 / 3)),
        ("even", "zero", (1, 1, 2 / 3, 1, 2 / 3)),
        ("number", "zero", (2, 1, 1 / 3, 1, 1 / 3)),
        ("zero", "even", (1, 2, 2 / 3, 2 / 3, 1)),
        ("one", "zero", (4, 3, 1 / 5, 1 / 3, 1 / 3)),
        ("odd", "zero", (3, 2, 1 / 4, 1 / 2, 1 / 3)),
    ],
)
def test_tree_metrics_closed_form(predicted, true, expected):
    result = tree_metrics(DIGITS, predicted, true)
    assert list(result) == ["tie", "lca", "jaccard", "hp", "hr"]
    assert tuple(result.values()) == pytest.approx(expected)


# --------------------------------------------------------------------------- landing metrics


@pytest.mark.parametrize("geometry", [EUCLIDEAN, LORENTZ])
def test_images_at_their_own_class_land_same_and_forgotten_ones_at_a_sibling(geometry):
    true = ["zero", "four", "seven"]
    data = _dataset(true)
    kept, tokenizer = _axes_model(geometry, torch.stack([_axis(name) for name in true]))
    result = landing_metrics(kept, data, tokenizer, true)
    assert result == pytest.approx({
        "landing_same": 1.0, "landing_sibling": 0.0, "landing_parent": 0.0, "landing_child": 0.0, "landing_other": 0.0,
        "tree_tie": 0.0, "tree_lca": 1.0, "tree_jaccard": 1.0, "tree_hp": 1.0, "tree_hr": 1.0,
    })
    forgot, tokenizer = _axes_model(geometry, torch.stack([_axis(name) for name in ("two", "six", "nine")]))
    result = landing_metrics(forgot, data, tokenizer, true)
    assert result["landing_sibling"] == 1.0 and result["landing_same"] == 0.0
    assert (result["tree_tie"], result["tree_lca"], result["tree_jaccard"]) == pytest.approx((2.0, 2.0, 0.5))
    assert (result["tree_hp"], result["tree_hr"]) == pytest.approx((2 / 3, 2 / 3))


@pytest.mark.parametrize("geometry", [EUCLIDEAN, LORENTZ])
def test_landing_fractions_and_means_over_a_mix(geometry):
    true = ["zero", "zero", "zero", "zero", "even"]
    landed = ["zero", "two", "even", "one", "four"]  # same, sibling, parent, other, child
    model, tokenizer = _axes_model(geometry, torch.stack([_axis(name) for name in landed]))
    data = _dataset(["zero"] * 5)
    assert nearest_concepts(model, data, tokenizer) == landed
    result = landing_metrics(model, data, tokenizer, true)
    fractions = [result[f"landing_{r}"] for r in ("same", "sibling", "parent", "child", "other")]
    assert fractions == pytest.approx([0.2] * 5) and sum(fractions) == pytest.approx(1.0)
    assert result["tree_tie"] == pytest.approx((0 + 2 + 1 + 4 + 1) / 5)
    assert result["tree_lca"] == pytest.approx((1 + 2 + 1 + 3 + 2) / 5)
    assert result["tree_hr"] == pytest.approx((1 + 2 / 3 + 2 / 3 + 1 / 3 + 1) / 5)


@pytest.mark.parametrize("geometry", [EUCLIDEAN, LORENTZ])
def test_candidates_restrict_the_concepts_an_image_can_land_on(geometry):
    # the image lies between "even" (nearer) and "two"
    model, tokenizer = _axes_model(geometry, (_axis("even") + _axis("two", 0.8))[None])
    data = _dataset(["zero"])
    assert nearest_concepts(model, data, tokenizer) == ["even"]
    assert nearest_concepts(model, data, tokenizer, candidates="classes") == ["two"]
    assert nearest_concepts(model, data, tokenizer, candidates=["odd", "two"]) == ["two"]
    assert landing_metrics(model, data, tokenizer, ["zero"])["landing_parent"] == 1.0
    assert landing_metrics(model, data, tokenizer, ["zero"], candidates="classes")["landing_sibling"] == 1.0


def test_landing_rejects_bad_arguments_and_is_nan_on_empty_data():
    model, tokenizer = _axes_model(EUCLIDEAN, _axis("zero")[None])
    data = _dataset(["zero"])
    with pytest.raises(ValueError, match="true_classes"):
        landing_metrics(model, data, tokenizer, ["zero", "one"])
    with pytest.raises(ValueError, match="hierarchy"):
        landing_metrics(model, _dataset(["zero"], hierarchy=None), tokenizer, ["zero"])
    for bad in ("leaves", ["zero", "ten"], []):
        with pytest.raises(ValueError, match="candidates"):
            landing_metrics(model, data, tokenizer, ["zero"], candidates=bad)
    empty = landing_metrics(model, data.subset([]), tokenizer, [])
    assert len(empty) == 10 and all(math.isnan(v) for v in empty.values())


# --------------------------------------------------------------------------- traversal


def test_traversal_examples_walk_the_first_images_up_their_branch():
    """Concepts of the "zero" branch on the +x ray (zero at 2.5, even at 1, number at 0.3),
    "odd" on the -x ray, the other classes on the y axis. Image 0 lies at 4 on +x, image 1
    at 4 on -x, image 2 is never walked (count=2)."""
    tangents = torch.zeros(len(NAMES), 2, dtype=D)
    tangents[:, 1] = 2.5  # every other class on the y axis
    for name, x in (("zero", 2.5), ("even", 1.0), ("number", 0.3), ("odd", -1.0)):
        tangents[NAMES.index(name)] = torch.tensor([x, 0.0], dtype=D)
    images = torch.tensor([[4.0, 0.0], [-4.0, 0.0], [0.0, 4.0]], dtype=D)
    model, tokenizer = _model(LORENTZ, tangents, images)
    result = traversal_examples(model, _dataset(["zero", "one", "two"]), tokenizer, count=2)
    assert result == [
        {"id": "toy/0", "path": ["zero", "even", "number", ROOT]},
        {"id": "toy/1", "path": ["odd", ROOT]},
    ]
    euclid, tokenizer = _model(EUCLIDEAN, tangents, images)
    with pytest.raises(ValueError, match="hyperbolic"):
        traversal_examples(euclid, _dataset(["zero"]), tokenizer)


@pytest.mark.parametrize("geometry", [EUCLIDEAN, LORENTZ])
def test_nearest_concepts_accepts_text_embeddings_of_another_dtype(geometry):
    landed = ["zero", "even", "one"]
    model, tokenizer = _axes_model(geometry, torch.stack([_axis(name) for name in landed]))
    texts = model.encode_text(torch.arange(len(TEXTS))[:, None]).to(torch.float32)
    images = model.encode_input(torch.arange(3).view(3, 1, 1, 1) / 255)
    mixed = fake_model(geometry, images, texts, None if geometry is EUCLIDEAN else C)
    assert nearest_concepts(mixed, _dataset(["zero"] * 3), tokenizer) == landed


def test_traversal_examples_default_to_three_images_and_50_steps():
    """"zero" and "even" sit 0.3 rad off the +x axis near the origin (tangent radius 0.152 and 0.15,
    c = 1): their wide cones take in the +x axis beyond about 0.159 ("zero", nearer) and 0.157
    ("even"). Every image lies at 0.3163 on +x, so the path meets "even" only in the band
    (0.1571, 0.1592): at s = 1/2 with 51 steps, but at no s = k/49. The other concepts sit at -2.5
    on the x axis, where no cone reaches the path."""
    unit = torch.tensor([math.cos(0.3), math.sin(0.3)], dtype=D)
    tangents = torch.tensor([-2.5, 0.0], dtype=D).repeat(len(NAMES), 1)
    tangents[NAMES.index("zero")], tangents[NAMES.index("even")] = 0.152 * unit, 0.15 * unit
    rows = [k for k, name in enumerate(NAMES) for _ in PROMPTS[name]]
    images = lorentz.exp_map0(torch.tensor([[0.3163, 0.0]], dtype=D), 1.0).expand(4, 2)
    model = fake_model(LORENTZ, images, lorentz.exp_map0(tangents, 1.0)[rows], 1.0)
    data, tokenizer = _dataset(["zero", "two", "four", "six"]), FakeTokenizer(TEXTS)
    result = traversal_examples(model, data, tokenizer)
    assert result == [{"id": f"toy/{i}", "path": ["zero", ROOT]} for i in range(3)]
    assert traversal_examples(model, data, tokenizer, count=1, steps=51) == [
        {"id": "toy/0", "path": ["zero", "even", ROOT]}]
