"""Each unlearning method's distinctive terms against DESIGN §4, written out by hand.

A tiny model whose embeddings are trainable tables (see :class:`TableModel`) turns every term
into a closed-form value, so a term with a wrong sign, weight or target changes a number here.
Terms that vanish against the untouched original (MultiDelete's retention, HAC's norm anchor)
are checked against a perturbed original. ``retrain`` is no registered loss (it is pretraining
on D_r), tested in tests/test_training.py.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tests.fakes import FakeTokenizer
from vlunlearn.geometry import get_geometry
from vlunlearn.errors import ConfigError
from vlunlearn.methods import MethodContext, available_methods, get_method, make_config
from vlunlearn.training.batches import PairBatch, TokenCache

GEOMETRIES = ["euclidean", "lorentz"]
C = 0.5  # curvature of the Lorentz model
LOGIT_SCALE = 2.0  # exp(logit_scale)
K = 0.1  # the half-aperture constant
CAPTIONS = ["r0", "r1", "r2", "f0", "f1", "pool"]
POOL = 5  # token of the only D_r caption the methods may draw as a mismatched partner
# D_f's canonical captions by index: the forget pairs are indices 3 and 4 (captions f0, f1), so a
# forget-pool partner, drawn from D_f's other distinct captions, is the other forget pair's caption
FORGET_CAPTIONS = ["f0", "f1", "f1", "f0", "f1"]
TEXTS = torch.tensor(
    [[0.8, 0.4, -0.1], [-0.2, 0.9, 0.7], [0.1, -0.3, 1.0], [0.6, 0.6, 0.2], [-0.5, 0.9, 0.5], [0.3, -0.8, -0.4]],
    dtype=torch.float64,
)
# retain image 0 lies on its caption's axis beyond it (inside the cone), 1 opposite it and 2 on the
# axis nearer the origin (both outside by pi - aperture); forget image 0 lies beyond its caption
# (inside), forget image 1 nearly orthogonal to its caption (far outside)
IMAGES = torch.stack([1.4 * TEXTS[0], -0.8 * TEXTS[1], 0.6 * TEXTS[2], 1.5 * TEXTS[3],
                      torch.tensor([0.9, 0.3, 0.4], dtype=torch.float64)])


def perturb(table: Tensor) -> Tensor:
    """A fixed non-orthogonal change of every row, for an original that differs from the model. ``(N, 3) -> (N, 3)``."""
    return 1.2 * table + 0.3 * table.roll(1, dims=1)


class TableModel(nn.Module):
    """Image ``i`` (every pixel ``i / 255``) embeds to ``embed(images[i])``, token ``k`` to
    ``embed(texts[k])``, with the geometry's ``embed``: normalisation, or ``exp_map0`` (so in
    the Lorentz model a row's norm is its embedding's distance to the origin). Tables are trainable."""

    def __init__(self, geometry: str, images: Tensor = IMAGES, texts: Tensor = TEXTS) -> None:
        super().__init__()
        self.geometry = get_geometry(geometry)
        self.c = C if self.geometry.hyperbolic else None
        self.images = nn.Parameter(images.clone())
        self.texts = nn.Parameter(texts.clone())
        self.register_buffer("logit_scale", torch.tensor(math.log(LOGIT_SCALE), dtype=torch.float64))

    def curvature(self) -> Tensor | None:
        return None if self.c is None else torch.tensor(self.c, dtype=torch.float64)

    def embed(self, rows: Tensor) -> Tensor:
        return self.geometry.embed(rows, torch.tensor(1.0, dtype=torch.float64), self.curvature())

    def encode_input(self, images: Tensor) -> Tensor:
        return self.embed(self.images[(images[:, 0, 0, 0] * 255).round().long()])

    def encode_text(self, tokens: Tensor) -> Tensor:
        return self.embed(self.texts[tokens[:, 0]])

    def forward(self, images: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        return self.encode_input(images), self.encode_text(tokens)


def pairs(images: list[int], tokens: list[int]) -> PairBatch:
    """A batch of image indices and caption tokens."""
    pixels = torch.tensor(images, dtype=torch.float64).div(255).view(-1, 1, 1, 1).expand(-1, 1, 2, 2)
    return PairBatch(pixels, torch.tensor(tokens).view(-1, 1), torch.tensor(images))


RETAIN, FORGET = pairs([0, 1, 2], [0, 1, 2]), pairs([3, 4], [3, 4])


def build(name: str, model: TableModel, original: TableModel | None = None, request_kind: str = "concepts",
          retain_pool: tuple[str, ...] = ("pool",), **settings):
    """Method ``name`` through the public API; D_r's caption pool is the single caption ``pool`` by default."""
    method = get_method(name)
    tokens = TokenCache(FakeTokenizer(CAPTIONS), 77)
    context = MethodContext(
        copy.deepcopy(model) if original is None else original, list(retain_pool), FORGET_CAPTIONS, tokens, seed=0,
        request_kind=request_kind,
    )
    return method(make_config(method.config_class, settings), context)


def perturbed(geometry: str) -> TableModel:
    return TableModel(geometry, perturb(IMAGES), perturb(TEXTS))


# ---- DESIGN §2 and §4 written out independently of the library ----

def similarity(model: TableModel, x: Tensor, y: Tensor) -> Tensor:
    """``s(x_i, y_j)``: cosine, or minus the geodesic distance. ``(B1, D), (B2, D) -> (B1, B2)``."""
    if model.c is None:
        return F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T
    x_t, y_t = (torch.sqrt(1 / model.c + (z * z).sum(-1)) for z in (x, y))
    inner = x @ y.T - x_t[:, None] * y_t[None, :]
    return -torch.acosh(torch.clamp(-model.c * inner, min=1.0)) / math.sqrt(model.c)


def paired(model: TableModel, x: Tensor, y: Tensor) -> Tensor:
    """``s(x_i, y_i)``. ``(B, D), (B, D) -> (B,)``."""
    return torch.diagonal(similarity(model, x, y))


def per_pair(model: TableModel, v: Tensor, t: Tensor) -> Tensor:
    """``l_i``: mean of the image->text and text->image cross-entropies of pair ``i``. ``-> (B,)``."""
    logits = LOGIT_SCALE * similarity(model, v, t)
    target = torch.arange(len(v))
    return (F.cross_entropy(logits, target, reduction="none") + F.cross_entropy(logits.T, target, reduction="none")) / 2


def tangent(model: TableModel, rows: Tensor) -> Tensor:
    """Embeddings of table ``rows`` in the tangent space at the origin (log_map0(exp_map0(v)) = v)."""
    return rows if model.c is not None else F.normalize(rows, dim=-1)


def aperture(row: Tensor) -> float:
    """Half-aperture of the cone at ``exp_map0(row)``, whose space part has norm sinh(sqrt(c)|row|)/sqrt(c)."""
    return math.asin(2 * K / math.sinh(math.sqrt(C) * row.norm().item()))


def encoded(model: TableModel, batch: PairBatch) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        return model(batch.inputs, batch.tokens)


def con(model: TableModel, batch: PairBatch) -> float:
    """``L_con`` of a batch under ``model``."""
    return per_pair(model, *encoded(model, batch)).mean().item()


def descend(model: TableModel, loss: Tensor, lr: float = 0.05) -> None:
    """One plain gradient-descent step on ``loss`` over the model's tables."""
    model.zero_grad()
    loss.backward()
    with torch.no_grad():
        for param in model.parameters():
            param -= lr * param.grad


def test_every_registered_method_has_its_terms_tested():
    """Here, or for SalUn and SCRUB in tests/test_salun_scrub.py."""
    assert available_methods() == [
        "ac", "finetune", "hac", "multidelete", "neggrad", "neggrad_plus", "random_pairs", "salun", "scrub",
    ]


# ---- baselines ----

@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_finetune_is_the_retain_contrastive_loss(geometry):
    model = TableModel(geometry)
    with torch.no_grad():
        out = build("finetune", model).loss(model, RETAIN, FORGET, 0)
    assert out.loss.item() == pytest.approx(con(model, RETAIN), rel=1e-9)
    assert out.logs == {"retain": pytest.approx(con(model, RETAIN), rel=1e-9)}


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_finetune_step_lowers_the_retain_loss_and_leaves_forget_images_alone(geometry):
    model = TableModel(geometry)
    before = con(model, RETAIN)
    descend(model, build("finetune", model).loss(model, RETAIN, FORGET, 0).loss)
    assert con(model, RETAIN) < before - 1e-3
    torch.testing.assert_close(model.images.data[3:], IMAGES[3:])  # B_f takes no part


def joint_losses(model: TableModel, first: PairBatch, second: PairBatch) -> tuple[float, float]:
    """Mean ``l_i`` of ``first``'s and of ``second``'s pairs in one similarity matrix over both."""
    v1, t1 = encoded(model, first)
    v2, t2 = encoded(model, second)
    losses = per_pair(model, torch.cat([v1, v2]), torch.cat([t1, t2]))
    return losses[: len(v1)].mean().item(), losses[len(v1) :].mean().item()


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_neggrad_is_minus_the_forget_contrastive_loss_with_retain_negatives(geometry):
    model = TableModel(geometry)
    with torch.no_grad():
        out = build("neggrad", model).loss(model, RETAIN, FORGET, 0)
        alone = build("neggrad", model, retain_negatives=False).loss(model, RETAIN, FORGET, 0)
    forget_loss = joint_losses(model, FORGET, RETAIN)[0]
    assert out.loss.item() == pytest.approx(-forget_loss, rel=1e-9)
    assert out.logs["forget"] == pytest.approx(forget_loss, rel=1e-9)
    assert alone.loss.item() == pytest.approx(-con(model, FORGET), rel=1e-9)
    assert abs(forget_loss - con(model, FORGET)) > 0.1


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_neggrad_step_raises_the_forget_loss(geometry):
    model = TableModel(geometry)
    before = con(model, FORGET)
    descend(model, build("neggrad", model, retain_negatives=False).loss(model, RETAIN, FORGET, 0).loss)
    assert con(model, FORGET) > before + 1e-3


CONCEPT_FORGET = pairs([3, 4], [3, 3])  # a concept request: both forget pairs have the same caption


def nearest_caption(model: TableModel, image: int, captions: list[int]) -> int:
    """The caption token, among ``captions``, most similar to image ``image`` (zero-shot prediction)."""
    with torch.no_grad():
        v = model.encode_input(pairs([image], [0]).inputs)
        t = model.encode_text(torch.tensor(captions).view(-1, 1))
    return captions[int(similarity(model, v, t).argmax())]


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_neggrad_forgets_a_concept_only_with_retain_negatives(geometry):
    """All forget captions name one concept: alone, each image's row repeats that caption (a
    constant cross-entropy) and the column terms push one image toward it as much as the other
    away, so an image keeps predicting the concept; with retain captions as negatives, ascent
    makes both forget images stop predicting it among the retain captions."""
    predictions = {}
    for retain_negatives in (True, False):
        model = TableModel(geometry)
        assert [nearest_caption(model, i, [0, 1, 2, 3]) for i in (3, 4)] == [3, 3]
        method = build("neggrad", model, retain_negatives=retain_negatives)
        for step in range(10):
            descend(model, method.loss(model, RETAIN, CONCEPT_FORGET, step).loss, lr=0.1)
        predictions[retain_negatives] = [nearest_caption(model, i, [0, 1, 2, 3]) for i in (3, 4)]
    assert 3 not in predictions[True]
    assert 3 in predictions[False]


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_neggrad_plus_descends_retain_and_ascends_gamma_times_forget(geometry):
    model = TableModel(geometry)
    with torch.no_grad():
        out = build("neggrad_plus", model, gamma=0.5).loss(model, RETAIN, FORGET, 0).loss
        twice = build("neggrad_plus", model, gamma=2.0).loss(model, RETAIN, FORGET, 0).loss
        once = build("neggrad_plus", model, gamma=1.0).loss(model, RETAIN, FORGET, 0).loss
        apart = build("neggrad_plus", model, gamma=0.5, retain_negatives=False).loss(model, RETAIN, FORGET, 0).loss
    forget_loss, retain_loss = joint_losses(model, FORGET, RETAIN)
    assert out.item() == pytest.approx(retain_loss - 0.5 * forget_loss, rel=1e-9)
    with torch.no_grad():
        logs = build("neggrad_plus", model).loss(model, RETAIN, FORGET, 0).logs
    assert logs == {"retain": pytest.approx(retain_loss, rel=1e-9), "forget": pytest.approx(forget_loss, rel=1e-9)}
    assert (twice - once).item() == pytest.approx(-forget_loss, rel=1e-9)
    assert apart.item() == pytest.approx(con(model, RETAIN) - 0.5 * con(model, FORGET), rel=1e-9)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_random_pairs_trains_forget_images_on_retain_captions(geometry):
    model = TableModel(geometry)
    with torch.no_grad():
        out = build("random_pairs", model).loss(model, RETAIN, FORGET, 0)
    relabelled = con(model, pairs([0, 1, 2, 3, 4], [0, 1, 2, POOL, POOL]))
    true_captions = con(model, pairs([0, 1, 2, 3, 4], [0, 1, 2, 3, 4]))
    assert out.loss.item() == pytest.approx(relabelled, rel=1e-9)
    assert out.logs == {"contrastive": pytest.approx(relabelled, rel=1e-9)}
    assert abs(relabelled - true_captions) > 0.1  # the check tells the two targets apart


# ---- AC ----

def partner_tokens(pool: str) -> list[int]:
    """Tokens of the forget pairs' mismatched captions: each other's (the only other distinct
    caption of D_f) or D_r's single caption."""
    return [4, 3] if pool == "forget" else [POOL, POOL]


def ac_per_pair(model: TableModel, pool: str) -> Tensor:
    """``l_i`` of the 3 retain rows and the 2 negative-calibration rows, with each forget image's
    own caption (here the other pair's partner column) masked out of its softmax. ``-> (5,)``."""
    v_r, t_r = encoded(model, RETAIN)
    v_f, _ = encoded(model, FORGET)
    with torch.no_grad():
        t_p = model.encode_text(torch.tensor(partner_tokens(pool)).view(-1, 1))
    logits = LOGIT_SCALE * similarity(model, torch.cat([v_r, v_f]), torch.cat([t_r, t_p]))
    if pool == "forget":  # columns 3, 4 hold captions f1, f0: row 3 (f0) meets column 4, row 4 (f1) column 3
        logits[3, 4] = logits[4, 3] = -math.inf
    target = torch.arange(5)
    return (F.cross_entropy(logits, target, reduction="none") + F.cross_entropy(logits.T, target, reduction="none")) / 2


@pytest.mark.parametrize("pool", ["retain", "forget"])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_ac_loss_and_logs_match_the_formula(geometry, pool):
    model = TableModel(geometry)
    with torch.no_grad():
        out = build("ac", model, alpha=2.0, beta=0.7, partner_pool=pool).loss(model, RETAIN, FORGET, 0)
    losses = ac_per_pair(model, pool)
    positive = paired(model, *encoded(model, FORGET)).mean().item()
    expected = (losses[:3].sum() + 2.0 * losses[3:].sum()).item() / (3 + 2.0 * 2) + 0.7 * positive
    assert out.loss.item() == pytest.approx(expected, rel=1e-9)
    assert out.logs["retain"] == pytest.approx(losses[:3].mean().item(), rel=1e-9)
    assert out.logs["negative_calibration"] == pytest.approx(losses[3:].mean().item(), rel=1e-9)
    assert out.logs["forget_similarity"] == pytest.approx(positive, rel=1e-9)
    assert out.logs["positive_calibration"] == pytest.approx(positive, rel=1e-9)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_ac_own_caption_mask_changes_the_loss(geometry):
    """Without the mask each forget image would meet its own caption as a negative."""
    model = TableModel(geometry)
    v_f, _ = encoded(model, FORGET)
    masked = ac_per_pair(model, "forget")[3:]
    v_r, t_r = encoded(model, RETAIN)
    with torch.no_grad():
        t_p = model.encode_text(torch.tensor([[4], [3]]))
    unmasked = per_pair(model, torch.cat([v_r, v_f]), torch.cat([t_r, t_p]))[3:]
    assert (unmasked - masked).abs().min() > 1e-3


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_ac_beta_adds_the_similarity_of_true_forget_pairs(geometry):
    model = TableModel(geometry)
    with torch.no_grad():
        once, twice = (build("ac", model, beta=b).loss(model, RETAIN, FORGET, 0).loss for b in (1.0, 2.0))
    positive = paired(model, *encoded(model, FORGET)).mean().item()
    assert abs(positive) > 0.1
    assert (twice - once).item() == pytest.approx(positive, rel=1e-9)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_ac_with_retain_partners_and_no_beta_is_random_pairs(geometry):
    """The same loss and the same partner draws, step by step (a pool of four D_r captions)."""
    model, pool = TableModel(geometry), ("r0", "r1", "r2", "pool")
    losses = []
    for step in range(4):
        with torch.no_grad():
            ac = build("ac", model, alpha=1.0, beta=0.0, partner_pool="retain", retain_pool=pool)
            relabel = build("random_pairs", model, retain_pool=pool)
            losses.append((ac.loss(model, RETAIN, FORGET, step).loss.item(),
                           relabel.loss(model, RETAIN, FORGET, step).loss.item()))
    assert all(a == pytest.approx(r, rel=1e-12) for a, r in losses)
    assert len({round(a, 9) for a, _ in losses}) > 1  # the draws differ between steps


@pytest.mark.parametrize("kind, pool", [("concepts", "retain"), ("samples", "forget")])
@pytest.mark.parametrize("method", ["ac", "multidelete"])
def test_auto_partner_pool_follows_the_request(method, kind, pool):
    model = TableModel("euclidean")
    with torch.no_grad():
        auto = build(method, model, request_kind=kind).loss(model, RETAIN, FORGET, 0).loss
        chosen = build(method, model, request_kind=kind, partner_pool=pool).loss(model, RETAIN, FORGET, 0).loss
        other = build(method, model, request_kind=kind, partner_pool={"retain": "forget", "forget": "retain"}[pool])
        other = other.loss(model, RETAIN, FORGET, 0).loss
    assert auto.item() == chosen.item() != other.item()


def test_ac_forget_pool_never_draws_a_pairs_own_caption_and_covers_all_of_d_f():
    """Partners come from every distinct caption of D_f except the pair's own, redrawn per step
    and per seed, the same for the same (seed, step)."""
    captions = [f"c{i % 7}" for i in range(40)]  # 7 distinct captions, repeated
    tokens = TokenCache(FakeTokenizer(captions[:7]), 77)

    def draws(seed: int, step: int) -> list[str]:
        context = MethodContext(None, ["pool"], captions, tokens, seed=seed)
        return context.forget_partner_captions(torch.arange(40), step, salt=13)

    seed0 = [draws(0, step) for step in range(6)]
    assert all(p[i] != captions[i] for p in seed0 for i in range(40))
    assert {c for p in seed0 for c in p} == set(captions[:7])
    assert len({tuple(p) for p in seed0}) == 6  # the step matters
    assert all(draws(1, step) != seed0[step] for step in range(6))  # the seed matters
    assert [draws(0, step) for step in range(6)] == seed0


def test_ac_forget_pool_needs_two_distinct_captions():
    context = MethodContext(None, ["pool"], ["same"] * 5, TokenCache(FakeTokenizer(["same"]), 77), seed=0)
    with pytest.raises(ConfigError, match="partner_pool=retain"):
        context.forget_partner_captions(torch.arange(5), 0, salt=13)


def original_partner_similarity(model: TableModel, original: TableModel) -> Tensor:
    """``s_0(v, t')``: the original's similarity of each forget image to its D_r partner. ``-> (2,)``."""
    v0 = encoded(original, FORGET)[0]
    with torch.no_grad():
        return paired(model, v0, original.encode_text(torch.full((2, 1), POOL)))


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_bounded_positive_calibration_is_a_hinge_at_the_originals_mismatched_similarity(geometry):
    model, original = TableModel(geometry), perturbed(geometry)
    with torch.no_grad():
        once, twice = (build("ac", model, original, beta=b, bound_positive=True, partner_pool="retain")
                       .loss(model, RETAIN, FORGET, 0) for b in (1.0, 2.0))
    hinge = torch.clamp(paired(model, *encoded(model, FORGET)) - original_partner_similarity(model, original), min=0)
    assert hinge.min() > 0.05  # both pairs are still more similar than a mismatched pair
    assert once.logs["positive_calibration"] == pytest.approx(hinge.mean().item(), rel=1e-9)
    assert (twice.loss - once.loss).item() == pytest.approx(hinge.mean().item(), rel=1e-9)


def test_hac_forget_distances_stay_bounded_over_a_long_run():
    """Unbounded, s = -d rewards distance forever; bounded, a forget pair stops at about the
    original's distance between the image and a mismatched caption."""
    distances = {}
    for bound in (True, False):
        model = TableModel("lorentz")
        method = build("hac", model, bound_positive=bound, alpha=0.0, beta=1.0, partner_pool="retain", **HAC_OFF)
        for step in range(200):
            out = method.loss(model, RETAIN, FORGET, step)
            descend(model, out.loss, lr=0.05)
        distances[bound] = -paired(model, *encoded(model, FORGET))
    ceiling = -original_partner_similarity(TableModel("lorentz"), TableModel("lorentz"))
    assert out.logs["positive_calibration"] < -5  # the unbounded reward is still growing
    assert (distances[True] <= ceiling + 0.5).all()  # only the retain term nudges them past the hinge
    assert (distances[False] > ceiling + 5.0).all()


# ---- HAC (Lorentz only) ----

HAC_OFF = dict(lambda_ec=0.0, lambda_ent=0.0, lambda_norm=0.0, lambda_gen=0.0)


def hac_term(model: TableModel, original: TableModel, term: str, log: str, **settings) -> tuple[float, float]:
    """HAC's logged ``term`` with weight 1, and loss(weight 2) - loss(weight 1)."""
    outs = []
    for weight in (1.0, 2.0):
        method = build("hac", model, original, **{**HAC_OFF, **settings, term: weight})
        with torch.no_grad():
            outs.append(method.loss(model, RETAIN, FORGET, 0))
    return outs[0].logs[log], (outs[1].loss - outs[0].loss).item()


def test_hac_logs_only_the_terms_that_are_on():
    model = TableModel("lorentz")
    with torch.no_grad():
        logs = build("hac", model, **HAC_OFF).loss(model, RETAIN, FORGET, 0).logs
    assert set(logs) == {"retain", "negative_calibration", "forget_similarity", "positive_calibration"}


def test_hac_entailment_calibration_pushes_forget_images_out_of_their_cones():
    model = TableModel("lorentz")
    term, added = hac_term(model, model, "lambda_ec", "entailment_calibration", ec_margin=0.05)
    # forget image 0 lies inside its caption's cone by the aperture (exterior angle 0) and must
    # leave it by the margin; forget image 1 is already far outside and adds nothing
    expected = (aperture(TEXTS[3]) + 0.05 + 0.0) / 2
    assert term == pytest.approx(expected, abs=1e-3)
    assert added == pytest.approx(term, rel=1e-9)


def test_hac_retain_entailment_keeps_retain_images_in_their_cones():
    model = TableModel("lorentz")
    term, added = hac_term(model, model, "lambda_ent", "retain_entailment")
    # retain image 0 is inside its cone; images 1 and 2 lie at an exterior angle pi from theirs
    expected = (0.0 + (math.pi - aperture(TEXTS[1])) + (math.pi - aperture(TEXTS[2]))) / 3
    assert term == pytest.approx(expected, abs=1e-3)
    assert added == pytest.approx(term, rel=1e-9)


def test_hac_norm_term_anchors_retain_depths_to_a_perturbed_original():
    model = TableModel("lorentz")
    term, added = hac_term(model, perturbed("lorentz"), "lambda_norm", "norm")
    rows = torch.cat([IMAGES[:3], TEXTS[:3]])
    expected = ((rows.norm(dim=-1) - perturb(rows).norm(dim=-1)) ** 2).mean().item()  # d0(exp_map0(v)) = |v|
    assert expected > 0.01
    assert term == pytest.approx(expected, rel=1e-6)
    assert added == pytest.approx(term, rel=1e-9)


def test_hac_norm_term_is_blind_to_forget_depths():
    model, original = TableModel("lorentz"), perturbed("lorentz")
    before = hac_term(model, original, "lambda_norm", "norm")[0]
    with torch.no_grad():
        model.images[3:] *= 3.0
    assert hac_term(model, original, "lambda_norm", "norm")[0] == pytest.approx(before, rel=1e-9)


def test_hac_generic_term_pulls_forget_images_toward_the_root():
    model = TableModel("lorentz")
    term, added = hac_term(model, model, "lambda_gen", "forget_depth")
    assert term == pytest.approx(IMAGES[3:].norm(dim=-1).mean().item(), rel=1e-6)
    assert added == pytest.approx(term, rel=1e-9)


# ---- MultiDelete ----

@pytest.mark.parametrize("pool", ["retain", "forget"])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_multidelete_terms_against_a_perturbed_original(geometry, pool):
    model, original = TableModel(geometry), perturbed(geometry)
    weights = dict(lambda_md=0.5, lambda_mkr=2.0, lambda_ukr=3.0)
    with torch.no_grad():
        out = build("multidelete", model, original, partner_pool=pool, **weights).loss(model, RETAIN, FORGET, 0)
    v_f, t_f = encoded(model, FORGET)
    v0_f, t0_f = encoded(original, FORGET)
    with torch.no_grad():
        t0_p = t0_f[[1, 0]] if pool == "forget" else original.encode_text(torch.full((2, 1), POOL))
    target = paired(model, v0_f, t0_p)  # s_f0(v_i, t_pi(i))
    decoupling = ((paired(model, v_f, t_f) - target) ** 2).mean().item()
    retain_similarity, original_similarity = (similarity(model, *encoded(m, RETAIN)) for m in (model, original))
    multimodal = ((retain_similarity - original_similarity) ** 2).mean().item()
    rows = torch.cat([IMAGES[:3], TEXTS[:3]])
    unimodal = ((tangent(model, rows) - tangent(model, perturb(rows))) ** 2).mean().item()  # MSE over pairs and dims
    assert min(decoupling, multimodal, unimodal) > 1e-3
    assert out.logs["decoupling"] == pytest.approx(decoupling, rel=1e-6)
    assert out.logs["multimodal"] == pytest.approx(multimodal, rel=1e-6)
    assert out.logs["unimodal"] == pytest.approx(unimodal, rel=1e-6)
    assert out.loss.item() == pytest.approx(0.5 * decoupling + 2.0 * multimodal + 3.0 * unimodal, rel=1e-6)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_multidelete_matrix_decoupling_regresses_the_whole_forget_similarity_matrix(geometry):
    model, original = TableModel(geometry), perturbed(geometry)
    with torch.no_grad():
        out = build("multidelete", model, original, partner_pool="forget", decoupling="matrix").loss(
            model, RETAIN, FORGET, 0)
    v_f, t_f = encoded(model, FORGET)
    v0_f, t0_f = encoded(original, FORGET)
    expected = ((similarity(model, v_f, t_f) - similarity(model, v0_f, t0_f[[1, 0]])) ** 2).mean().item()
    diagonal = ((paired(model, v_f, t_f) - paired(model, v0_f, t0_f[[1, 0]])) ** 2).mean().item()
    assert abs(expected - diagonal) > 1e-3
    assert out.logs["decoupling"] == pytest.approx(expected, rel=1e-6)


FIVE = pairs([0, 1, 2, 3, 4], [0, 1, 2, 3, 4])  # five forget pairs: 44 derangements


def test_multidelete_forget_partners_are_redrawn_per_step_and_seed_and_reproducible():
    model, original = TableModel("euclidean"), perturbed("euclidean")

    def decoupling(seed: int, step: int) -> float:
        method = build("multidelete", model, original, partner_pool="forget", seed=seed)
        with torch.no_grad():
            return method.loss(model, RETAIN, FIVE, step).logs["decoupling"]

    seed0 = [decoupling(0, step) for step in range(6)]
    assert len(set(seed0)) > 1  # the step matters
    assert any(decoupling(1, step) != seed0[step] for step in range(6))  # the seed matters
    assert [decoupling(0, step) for step in range(6)] == seed0


def test_random_retain_captions_depend_on_seed_step_and_salt():
    retain = [f"r{i}" for i in range(50)]
    context = MethodContext(None, retain, ["f"], TokenCache(FakeTokenizer(retain), 77), seed=0)
    draw = context.random_retain_captions(20, 3, salt=13)
    assert set(draw) <= set(retain) and len(set(draw)) > 5
    assert draw == context.random_retain_captions(20, 3, salt=13)
    assert draw != context.random_retain_captions(20, 4, salt=13)
    assert draw != context.random_retain_captions(20, 3, salt=17)
    other_seed = MethodContext(None, retain, ["f"], context.tokens, seed=1)
    assert draw != other_seed.random_retain_captions(20, 3, salt=13)
    torch.testing.assert_close(context.random_retain_tokens(20, 3, salt=13), context.tokens(draw))


def test_auto_pool_names():
    from vlunlearn.methods.ac import partner_pool

    assert partner_pool("auto", "concepts") == "retain" and partner_pool("auto", "samples") == "forget"
    assert partner_pool("retain", "samples") == "retain" and partner_pool("forget", "concepts") == "forget"


def test_own_caption_mask_compares_whole_captions_of_any_padded_width_and_spares_the_partner():
    from vlunlearn.methods.ac import mask_own_captions

    own = torch.tensor([[7, 8, 0], [9, 0, 0]])  # forget captions of 2 and 1 tokens, padded to 3
    columns = torch.tensor([[7, 8], [9, 0], [7, 0], [9, 0], [7, 8]])  # 3 retain captions, then the 2 partners
    masked = mask_own_captions(torch.zeros(5, 5), 3, own, columns)
    expected = torch.zeros(5, 5)
    expected[3, 0] = expected[3, 4] = expected[4, 1] = expected[4, 3] = -math.inf
    torch.testing.assert_close(masked, expected)
    own_partner = mask_own_captions(torch.zeros(5, 5), 3, torch.tensor([[7], [9]]), torch.tensor([[1], [2], [3], [7], [9]]))
    torch.testing.assert_close(own_partner, torch.zeros(5, 5))  # a partner (diagonal) equal to its own caption stays
