"""SalUn's saliency mask and SCRUB's teacher-student terms, against hand computations on the
trainable-table model of tests/test_method_terms.py, and one end-to-end run of each."""

import math

import pytest
import torch

from tests.test_method_terms import (
    FORGET, GEOMETRIES, IMAGES, LOGIT_SCALE, RETAIN, TEXTS, TableModel, build, con, encoded, pairs, per_pair, similarity,
)
from vlunlearn import unlearn
from vlunlearn.data import Tokenizer, UnlearningRequest, load_builtin, make_splits
from vlunlearn.errors import ConfigError
from vlunlearn.methods import get_method, make_config
from vlunlearn.methods.salun import SalUn, top_fraction_masks
from vlunlearn.models import build_model


class Fixed:
    """A sampler that returns the same batch at every step."""

    def __init__(self, batch):
        self.batch = lambda step: batch


def prepared(geometry: str, **settings) -> tuple[TableModel, SalUn]:
    model = TableModel(geometry)
    method = build("salun", model, **settings)
    method.prepare(model, Fixed(RETAIN), Fixed(FORGET))
    return model, method


def hand_saliency(geometry: str, retain_negatives: bool, batches: int = 1) -> dict[str, torch.Tensor]:
    """``batches * |grad|`` of the forget pairs' mean contrastive loss, with or without B_r as negatives."""
    model = TableModel(geometry)
    v, t = model(FORGET.inputs, FORGET.tokens)
    if retain_negatives:
        v_r, t_r = model(RETAIN.inputs, RETAIN.tokens)
        loss = per_pair(model, torch.cat([v, v_r]), torch.cat([t, t_r]))[:2].mean()
    else:
        loss = per_pair(model, v, t).mean()
    loss.backward()
    return {"images": batches * model.images.grad.abs(), "texts": batches * model.texts.grad.abs()}


def top_entries(saliency: dict[str, torch.Tensor], keep: int) -> dict[str, torch.Tensor]:
    """The ``keep`` largest entries over all tables, by a full sort."""
    flat = torch.cat([s.flatten() for s in saliency.values()])
    chosen = torch.zeros(len(flat), dtype=torch.bool)
    chosen[flat.argsort(descending=True)[:keep]] = True
    sizes = [s.numel() for s in saliency.values()]
    return {name: c.view_as(s) for (name, s), c in zip(saliency.items(), chosen.split(sizes))}


def gradients(model: TableModel, method, step: int = 0) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    method.loss(model, RETAIN, FORGET, step).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


# ---- SalUn ----

@pytest.mark.parametrize("retain_negatives", [True, False])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_salun_mask_keeps_the_top_fraction_of_forget_gradients(geometry, retain_negatives):
    model, method = prepared(geometry, saliency_fraction=0.25, saliency_batches=3, retain_negatives=retain_negatives)
    saliency = hand_saliency(geometry, retain_negatives, 3)
    reached = sum(int((s > 0).sum()) for s in saliency.values())  # the unused "pool" caption row is 0
    assert reached < 33
    expected = top_entries(saliency, round(0.25 * reached))
    assert set(method.masks) == {"images", "texts"}
    for name in expected:
        assert torch.equal(method.masks[name], expected[name]), name
    assert sum(int(m.sum()) for m in method.masks.values()) == round(0.25 * reached)
    assert all(p.grad is None for p in model.parameters())  # the saliency gradients are cleared
    method.finish(model)


def test_salun_saliency_depends_on_the_retain_negatives():
    with_negatives = prepared("euclidean", saliency_fraction=0.25)[1].masks
    without = prepared("euclidean", saliency_fraction=0.25, retain_negatives=False)[1].masks
    assert any(not torch.equal(with_negatives[n], without[n]) for n in with_negatives)


def test_top_fraction_ranks_only_reached_entries_breaks_ties_by_order_and_keeps_an_exact_count():
    """Zero saliency (weights the forget loss does not reach, like unused token rows) is never
    salient: ranked with them, a 50% mask of a mostly-unused embedding would keep every weight
    the forget loss moves, and SalUn would be random_pairs."""
    saliency = {"a": torch.tensor([0.0, 3.0, 0.0]), "b": torch.tensor([[1.0, 0.0], [2.0, 0.0]])}
    masks = top_fraction_masks(saliency, 0.6)  # 0.6 * 3 reached entries -> 2: 3 and 2
    assert masks["a"].tolist() == [False, True, False]
    assert masks["b"].tolist() == [[False, False], [True, False]]
    assert sum(int(m.sum()) for m in top_fraction_masks(saliency, 1e-6).values()) == 1
    full = top_fraction_masks(saliency, 1.0)
    assert all(torch.equal(full[name], saliency[name] > 0) for name in saliency)
    ties = top_fraction_masks({"a": torch.tensor([2.0, 2.0, 2.0, 1.0, 0.0])}, 0.5)  # 2 of 4: the first two 2s
    assert ties["a"].tolist() == [True, True, False, False, False]
    ties_below = top_fraction_masks({"a": torch.tensor([3.0, 2.0, 2.0, 2.0, 1.0])}, 0.5)  # 3, then one 2
    assert ties_below["a"].tolist() == [True, True, False, False, False]
    unreached = top_fraction_masks({"a": torch.zeros(3)}, 0.5)["a"]
    assert unreached.dtype == torch.bool and not unreached.any()


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_salun_hooks_zero_gradients_outside_the_mask_until_finish(geometry):
    model, method = prepared(geometry)
    plain = TableModel(geometry)  # no hooks
    free = gradients(plain, build("random_pairs", plain))
    masked = gradients(model, method)
    for name, mask in method.masks.items():
        assert torch.equal(masked[name][~mask], torch.zeros(int((~mask).sum()), dtype=torch.float64))
        assert torch.equal(masked[name][mask], free[name][mask])
        assert (free[name][~mask] != 0).any()  # the hooks have something to zero
    method.finish(model)
    assert method.handles == []
    after = gradients(model, method)
    for name in free:
        assert torch.equal(after[name], free[name])


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_salun_loss_is_random_pairs_loss(geometry):
    model, method = prepared(geometry)
    with torch.no_grad():
        out = method.loss(model, RETAIN, FORGET, 3)
        reference = build("random_pairs", model).loss(model, RETAIN, FORGET, 3)
    assert out.loss.item() == pytest.approx(reference.loss.item(), rel=1e-12)
    assert out.logs == reference.logs
    method.finish(model)


def test_salun_leaves_frozen_parameters_out_of_the_mask():
    model = TableModel("lorentz")
    model.texts.requires_grad_(False)
    method = build("salun", model, saliency_fraction=0.4)
    method.prepare(model, Fixed(RETAIN), Fixed(FORGET))
    assert set(method.masks) == {"images"}
    expected = top_entries({"images": hand_saliency("lorentz", True)["images"]}, round(0.4 * 15))
    assert torch.equal(method.masks["images"], expected["images"])
    assert not model.texts.requires_grad
    masked = gradients(model, method)
    assert set(masked) == {"images"} and model.texts.grad is None
    method.finish(model)


def test_salun_config_checks_its_settings():
    config_class = get_method("salun").config_class
    assert (config_class().saliency_fraction, config_class().saliency_batches, config_class.tiny_lr) == (0.5, 4, 5e-4)
    for bad in ({"saliency_fraction": 0.0}, {"saliency_fraction": 1.5}, {"saliency_batches": 0}):
        with pytest.raises(ConfigError):
            make_config(config_class, bad)


# ---- SCRUB ----

def hand_kl(model: TableModel, teacher: TableModel, batch) -> float:
    """KL(teacher || student) of in-batch row and column softmaxes, averaged over both directions."""
    p_logits = LOGIT_SCALE * similarity(model, *encoded(teacher, batch))
    q_logits = LOGIT_SCALE * similarity(model, *encoded(model, batch))

    def kl(p_rows, q_rows):
        p, q = p_rows.softmax(-1), q_rows.softmax(-1)
        return (p * (p.log() - q.log())).sum(-1).mean().item()

    return (kl(p_logits, q_logits) + kl(p_logits.T, q_logits.T)) / 2


def hand_forget_kl(model: TableModel, teacher: TableModel) -> float:
    """The forget KL with retain negatives: forget rows and columns of one matrix over B_f + B_r."""
    both = pairs([3, 4, 0, 1, 2], [3, 4, 0, 1, 2])
    p_logits = LOGIT_SCALE * similarity(model, *encoded(teacher, both))
    q_logits = LOGIT_SCALE * similarity(model, *encoded(model, both))

    def kl(p_rows, q_rows):
        p, q = p_rows.softmax(-1), q_rows.softmax(-1)
        return (p * (p.log() - q.log())).sum(-1).mean().item()

    return (kl(p_logits[:2], q_logits[:2]) + kl(p_logits[:, :2].T, q_logits[:, :2].T)) / 2


def other_teacher(geometry: str) -> TableModel:
    """A teacher whose caption tables are rotated, so that its similarities differ clearly from the student's."""
    return TableModel(geometry, IMAGES, TEXTS.roll(1, dims=1))


def scrub_out(model, teacher, step, **settings):
    with torch.no_grad():
        return build("scrub", model, teacher, steps=10, **settings).loss(model, RETAIN, FORGET, step)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_scrub_kl_vanishes_against_an_identical_teacher(geometry):
    model = TableModel(geometry)
    out = scrub_out(model, None, 0, gamma=0.5)
    assert out.logs["kl_retain"] == pytest.approx(0.0, abs=1e-12)
    assert out.logs["kl_forget"] == pytest.approx(0.0, abs=1e-12)
    assert out.loss.item() == pytest.approx(0.5 * con(model, RETAIN), rel=1e-9)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_scrub_terms_against_a_different_teacher(geometry):
    model, teacher = TableModel(geometry), other_teacher(geometry)
    kl_retain, kl_forget = hand_kl(model, teacher, RETAIN), hand_forget_kl(model, teacher)
    alone = hand_kl(model, teacher, FORGET)
    reverse = hand_kl(teacher, model, RETAIN)
    assert min(kl_retain, kl_forget) > 0.1 and abs(reverse - kl_retain) > 0.05  # the direction is visible
    assert abs(alone - kl_forget) > 0.05  # the retain negatives are visible
    out = scrub_out(model, teacher, 1, gamma=0.5)
    assert out.logs["kl_retain"] == pytest.approx(kl_retain, rel=1e-9)
    assert out.logs["kl_forget"] == pytest.approx(kl_forget, rel=1e-9)
    assert scrub_out(model, teacher, 1, retain_negatives=False).logs["kl_forget"] == pytest.approx(alone, rel=1e-9)
    assert out.logs["retain"] == pytest.approx(con(model, RETAIN), rel=1e-9)
    assert out.loss.item() == pytest.approx(kl_retain + 0.5 * con(model, RETAIN), rel=1e-9)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_scrub_max_steps_subtract_alpha_times_the_forget_kl(geometry):
    model, teacher = TableModel(geometry), other_teacher(geometry)
    method = build("scrub", model, teacher, steps=10)
    assert [step for step in range(10) if method.is_max_step(step)] == [0, 2, 4]
    kl_forget = hand_forget_kl(model, teacher)
    maximum, minimum = (scrub_out(model, teacher, step, alpha=2.0).loss.item() for step in (4, 5))
    assert maximum - minimum == pytest.approx(-2.0 * kl_forget, rel=1e-9)
    assert scrub_out(model, teacher, 6, alpha=2.0).loss.item() == pytest.approx(minimum, rel=1e-12)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_scrub_gamma_scales_the_retain_contrastive_loss(geometry):
    model, teacher = TableModel(geometry), other_teacher(geometry)
    once, twice = (scrub_out(model, teacher, 1, gamma=g).loss.item() for g in (1.0, 3.0))
    assert twice - once == pytest.approx(2.0 * con(model, RETAIN), rel=1e-9)


def test_scrub_max_step_moves_the_student_away_from_the_teacher_on_forget_pairs():
    model, teacher = TableModel("euclidean"), other_teacher("euclidean")
    method = build("scrub", model, teacher, steps=10, alpha=5.0)
    before = hand_forget_kl(model, teacher)
    model.zero_grad()
    method.loss(model, RETAIN, FORGET, 0).loss.backward()
    assert model.images.grad[3:].abs().sum() > 0  # forget images get a gradient only on max steps
    model.zero_grad()
    method.loss(model, RETAIN, FORGET, 1).loss.backward()
    assert model.images.grad[3:].abs().sum() == 0
    model.zero_grad()
    method.loss(model, RETAIN, FORGET, 0).loss.backward()
    with torch.no_grad():
        model.images -= 0.05 * model.images.grad
    assert hand_forget_kl(model, teacher) > before + 0.01


def test_scrub_needs_a_resolved_config():
    model = TableModel("euclidean")
    with pytest.raises(ValueError, match="resolved"):
        build("scrub", model).loss(model, RETAIN, FORGET, 0)
    with pytest.raises(ConfigError):
        make_config(get_method("scrub").config_class, {"max_fraction": 1.5})


# ---- end to end ----

@pytest.fixture(scope="module")
def digits_splits():
    train, test = load_builtin("digits", "train"), load_builtin("digits", "test")
    return make_splits(train.subset(range(300)), test.subset(range(120)), UnlearningRequest(concepts=("seven",)))


def test_salun_run_changes_only_masked_weights(digits_splits, monkeypatch):
    methods = []
    prepare = SalUn.prepare
    monkeypatch.setattr(SalUn, "prepare", lambda self, *args: (methods.append(self), prepare(self, *args))[1])
    model = build_model("tiny", "lorentz")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    unlearned, record = unlearn(model, digits_splits, "salun", tokenizer=Tokenizer(), progress=False, steps=2,
                                retain_batch_size=16, forget_batch_size=8, saliency_fraction=0.1, saliency_batches=1)
    masks = methods[0].masks
    assert record.steps == 2 and all(math.isfinite(v) for entry in record.history for v in entry.values())
    assert "curv" not in masks  # frozen by default, so never ranked
    assert methods[0].handles == []
    changed = 0
    for name, param in unlearned.named_parameters():
        moved = param.detach() != before[name]
        assert not (moved & ~masks[name]).any() if name in masks else not moved.any(), name
        changed += int(moved.sum())
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept < 0.1 * sum(m.numel() for m in masks.values())  # a tenth of the *reached* weights
    assert 0 < changed <= kept
    relabelled, _ = unlearn(model, digits_splits, "random_pairs", tokenizer=Tokenizer(), progress=False, steps=2,
                            retain_batch_size=16, forget_batch_size=8)
    unmasked = sum(int((p.detach() != before[name]).sum()) for name, p in relabelled.named_parameters())
    assert changed < unmasked / 5  # the mask binds: SalUn is not random_pairs


def test_scrub_run_has_finite_terms_and_changes_weights(digits_splits):
    model = build_model("tiny", "euclidean")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    unlearned, record = unlearn(model, digits_splits, "scrub", tokenizer=Tokenizer(), progress=False, steps=2,
                                retain_batch_size=16, forget_batch_size=8)
    assert record.steps == 2
    assert {"kl_retain", "kl_forget", "retain"} <= set(record.history[-1])
    assert all(math.isfinite(v) for entry in record.history for v in entry.values())
    assert any(not torch.equal(p.detach(), before[name]) for name, p in unlearned.named_parameters())


class Recording:
    """A sampler that returns the same batch and records the steps it was asked for."""

    def __init__(self, batch):
        self.steps: list[int] = []
        self.fixed = batch

    def batch(self, step: int):
        self.steps.append(step)
        return self.fixed


@pytest.mark.parametrize("retain_negatives", [True, False])
def test_salun_saliency_reads_forget_batches_of_steps_zero_to_n(retain_negatives):
    model = TableModel("euclidean")
    forget = Recording(FORGET)
    build("salun", model, saliency_batches=3, retain_negatives=retain_negatives).saliency(model, Fixed(RETAIN), forget)
    assert forget.steps == [0, 1, 2]


def test_salun_saliency_of_a_parameter_without_gradient_is_zero():
    model = TableModel("euclidean")
    model.unused = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    saliency = build("salun", model).saliency(model, Fixed(RETAIN), Fixed(FORGET))
    torch.testing.assert_close(saliency["unused"], torch.zeros(3, dtype=torch.float64))
    assert saliency["images"].abs().sum() > 0


def test_salun_finish_before_prepare_and_a_full_mask_are_allowed():
    model = TableModel("euclidean")
    method = build("salun", model, saliency_fraction=1.0)
    assert method.masks == {} and method.handles == []
    method.finish(model)
    method.prepare(model, Fixed(RETAIN), Fixed(FORGET))
    saliency = method.saliency(model, Fixed(RETAIN), Fixed(FORGET))
    assert all(torch.equal(mask, saliency[name] > 0) for name, mask in method.masks.items())


def test_scrub_accepts_zero_weights_and_the_ends_of_max_fraction():
    for settings in ({"alpha": 0.0}, {"gamma": 0.0}, {"max_fraction": 0.0}, {"max_fraction": 1.0}):
        build("scrub", TableModel("euclidean"), steps=4, **settings)


def test_scrub_max_steps_stop_before_the_fraction_of_the_run():
    method = build("scrub", TableModel("euclidean"), steps=8, max_fraction=0.5)
    assert [step for step in range(8) if method.is_max_step(step)] == [0, 2]
