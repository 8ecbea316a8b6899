"""Unlearning methods: registry, configs, every method's loss on both geometries, the public API."""

import math
from pathlib import Path

import pytest
import torch

from vlunlearn import unlearn
from vlunlearn.data import Tokenizer, UnlearningRequest, load_builtin, make_splits
from vlunlearn.errors import ConfigError
from vlunlearn.geometry import lorentz
from vlunlearn.methods import MethodContext, available_methods, get_method, make_config
from vlunlearn.methods.ac import ACConfig, AlignmentCalibration
from vlunlearn.methods.hac import HACConfig
from vlunlearn.models import build_model
from vlunlearn.training.batches import PairSampler, TokenCache

ALL_METHODS = ["ac", "finetune", "hac", "multidelete", "neggrad", "neggrad_plus", "random_pairs", "salun", "scrub"]


@pytest.fixture(scope="module")
def digits_splits():
    train, test = load_builtin("digits", "train"), load_builtin("digits", "test")
    return make_splits(train.subset(range(300)), test.subset(range(120)), UnlearningRequest(concepts=("seven",)))


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer()


def test_registry_lists_every_method_and_rejects_unknown_names():
    assert available_methods() == ALL_METHODS
    assert all(get_method(name).name == name for name in ALL_METHODS)
    with pytest.raises(ConfigError, match="choose one of"):
        get_method("forgetful")


def test_register_names_a_method_and_refuses_a_second_one_under_the_same_name(monkeypatch):
    from vlunlearn.methods import base

    monkeypatch.setattr(base, "_REGISTRY", {})

    @base.register("mine")
    class Mine(base.UnlearningMethod):
        pass

    assert Mine.name == "mine" and base.get_method("mine") is Mine
    with pytest.raises(ValueError, match="already registered"):
        base.register("mine")(type("Other", (base.UnlearningMethod,), {}))
    assert base.get_method("mine") is Mine


def test_make_config_parses_strings_and_rejects_bad_settings():
    config = make_config(HACConfig, {"alpha": "2", "steps": "7", "partner_pool": "forget", "learn_curvature": "true"})
    assert (config.alpha, config.steps, config.partner_pool, config.learn_curvature) == (2.0, 7, "forget", True)
    assert make_config(ACConfig, {"beta": 3}).beta == 3.0  # an int is a valid float
    with pytest.raises(ConfigError, match="unknown setting.*lambda_ec"):
        make_config(ACConfig, {"lambda_ec": 1.0})
    with pytest.raises(ConfigError, match="steps='many' is not a valid int"):
        make_config(ACConfig, {"steps": "many"})
    with pytest.raises(ConfigError, match="partner_pool"):
        make_config(ACConfig, {"partner_pool": "anywhere"})


def test_hac_refuses_a_euclidean_model(digits_splits, tokenizer):
    with pytest.raises(ValueError, match="hyperbolic"):
        unlearn(build_model("tiny", "euclidean"), digits_splits, "hac", tokenizer=tokenizer, progress=False, steps=2)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_every_method_runs_with_finite_losses(method, digits_splits, tokenizer):
    """Every method on the Lorentz model (the geometry with the frozen curvature to check); the
    Euclidean path of each loss is pinned by tests/test_method_terms.py."""
    model = build_model("tiny", "lorentz")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    unlearned, record = unlearn(
        model, digits_splits, method, tokenizer=tokenizer, progress=False,
        steps=2, retain_batch_size=16, forget_batch_size=8,
    )
    assert record.steps == 2 and record.method == method
    assert all(math.isfinite(value) for entry in record.history for value in entry.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the input model was modified"
    changed = [k for k, v in unlearned.state_dict().items() if not torch.equal(before[k], v)]
    assert changed, "unlearning changed no weight"
    assert "curv" not in changed  # curvature is frozen by default


def test_learn_curvature_lets_the_curvature_move(digits_splits, tokenizer):
    model = build_model("tiny", "lorentz")
    unlearned, _ = unlearn(model, digits_splits, "hac", tokenizer=tokenizer, progress=False, steps=1,
                           retain_batch_size=16, forget_batch_size=8, learn_curvature=True, lr=1e-2)
    assert unlearned.curv.item() != model.curv.item()


def test_ac_loss_matches_its_formula(digits_splits, tokenizer):
    """AC's loss recomputed by hand from embeddings, with the forget partner pool."""
    torch.manual_seed(0)
    model = build_model("tiny", "euclidean").eval()
    tokens = TokenCache(tokenizer, model.config.context_length)
    config = ACConfig(alpha=2.0, beta=0.5, partner_pool="forget", seed=3)
    retain_captions, forget_captions = (split.canonical_captions() for split in (digits_splits.retain, digits_splits.forget))
    method = AlignmentCalibration(config, MethodContext(model, retain_captions, forget_captions, tokens, 3))
    retain = PairSampler(digits_splits.retain, tokens, 6, seed=0).batch(0)
    forget = PairSampler(digits_splits.forget, tokens, 4, seed=0).batch(0)
    own = [forget_captions[i] for i in forget.indices.tolist()]
    partners = method.partner_captions(forget, 0)
    # the partner of each forget pair is another caption of D_f, never its own
    assert all(p in forget_captions and p != o for p, o in zip(partners, own))
    with torch.no_grad():
        loss = method.loss(model, retain, forget, step=0).loss
        v_r, t_r = model(retain.inputs, retain.tokens)
        v_f, t_f = model(forget.inputs, forget.tokens)
        images, texts = torch.cat([v_r, v_f]), torch.cat([t_r, model.encode_text(tokens(partners))])
        logits = model.logit_scale.exp() * images @ texts.T
        columns = [retain_captions[i] for i in retain.indices.tolist()] + partners
        for i, caption in enumerate(own):  # a forget image's own caption leaves its softmax
            for j, column in enumerate(columns):
                if column == caption and j != 6 + i:
                    logits[6 + i, j] = -math.inf
        labels = torch.arange(10)
        per_pair = (torch.nn.functional.cross_entropy(logits, labels, reduction="none")
                    + torch.nn.functional.cross_entropy(logits.T, labels, reduction="none")) / 2
        expected = (per_pair[:6].sum() + 2.0 * per_pair[6:].sum()) / (6 + 2.0 * 4) + 0.5 * (v_f * t_f).sum(-1).mean()
    torch.testing.assert_close(loss, expected)


def test_hac_terms_switch_off_to_plain_ac(digits_splits, tokenizer):
    model = build_model("tiny", "lorentz").eval()
    tokens = TokenCache(tokenizer, model.config.context_length)
    context = MethodContext(
        model, digits_splits.retain.canonical_captions(), digits_splits.forget.canonical_captions(), tokens, 0
    )
    retain = PairSampler(digits_splits.retain, tokens, 6, seed=0).batch(0)
    forget = PairSampler(digits_splits.forget, tokens, 4, seed=0).batch(0)
    off = HACConfig(lambda_ec=0, lambda_ent=0, lambda_norm=0, lambda_gen=0, bound_positive=False)
    hac = get_method("hac")(off, context)
    ac = get_method("ac")(ACConfig(), context)
    with torch.no_grad():
        torch.testing.assert_close(hac.loss(model, retain, forget, 0).loss, ac.loss(model, retain, forget, 0).loss)
        on = get_method("hac")(HACConfig(lambda_gen=1.0), context).loss(model, retain, forget, 0)
    # the norm term is zero against an identical original; the others are logged
    assert on.logs["norm"] == pytest.approx(0.0, abs=1e-10)
    assert {"entailment_calibration", "retain_entailment", "forget_depth"} <= set(on.logs)
    v_f = model.encode_input(forget.inputs)
    assert on.logs["forget_depth"] == pytest.approx(lorentz.dist_to_origin(v_f, model.curvature()).mean().item(), rel=1e-5)


def test_multidelete_is_zero_retention_loss_for_the_original(digits_splits, tokenizer):
    """Against itself, MultiDelete's retention terms vanish; decoupling compares with mismatched pairs."""
    model = build_model("tiny", "euclidean").eval()
    tokens = TokenCache(tokenizer, model.config.context_length)
    context = MethodContext(
        model, digits_splits.retain.canonical_captions(), digits_splits.forget.canonical_captions(), tokens, 0
    )
    method = get_method("multidelete")(make_config(get_method("multidelete").config_class, {}), context)
    retain = PairSampler(digits_splits.retain, tokens, 6, seed=0).batch(0)
    forget = PairSampler(digits_splits.forget, tokens, 4, seed=0).batch(0)
    with torch.no_grad():
        logs = method.loss(model, retain, forget, 0).logs
    assert logs["multimodal"] == pytest.approx(0.0, abs=1e-12) and logs["unimodal"] == pytest.approx(0.0, abs=1e-12)
    assert logs["decoupling"] > 0


def test_epochs_budget_and_sample_requests(tokenizer):
    train, test = load_builtin("digits", "train").subset(range(200)), load_builtin("digits", "test").subset(range(60))
    ids = tuple(train.ids[:20])
    model = build_model("tiny", "euclidean")
    _, record = unlearn(model, UnlearningRequest(sample_ids=ids), "ac", data=(train, test), tokenizer=tokenizer,
                        progress=False, epochs=2, min_steps=1, forget_batch_size=8, retain_batch_size=16, partner_pool="forget")
    assert record.steps == 2 * math.ceil(20 / 8)  # every forget pair seen in each of the 2 passes
    assert record.request["sample_ids"] == list(ids) or tuple(record.request["sample_ids"]) == ids


def _scripted_forget_accuracy(monkeypatch, accuracies: list[float]) -> list[int]:
    """Make the early-stop checks read ``accuracies`` (percent) in turn; returns the list of the
    slice sizes each check was computed on, filled as the checks run."""
    from vlunlearn import unlearning

    script, checked = iter(accuracies), []

    def accuracy(predictions, labels):
        checked.append(len(labels))
        return {"micro": next(script)}

    monkeypatch.setattr(unlearning, "zero_shot_accuracy", accuracy)
    return checked


@pytest.mark.parametrize(
    ("accuracies", "target", "steps", "checks"),
    [
        ([40.0, 25.0, 10.0], 25.0, 4, 2),  # met at the second check (step 4): stop there
        ([40.0, 25.0, 10.0], 5.0, 6, 3),  # never met: every step runs, checked at 2, 4 and 6
    ],
)
def test_early_stop_ends_the_run_at_the_check_that_meets_the_target(
    digits_splits, tokenizer, monkeypatch, accuracies, target, steps, checks
):
    from vlunlearn import EarlyStop

    checked = _scripted_forget_accuracy(monkeypatch, accuracies)
    model = build_model("tiny", "euclidean")
    _, record = unlearn(model, digits_splits, "ac", early_stop=EarlyStop(target=target, every=2, slice_size=16),
                        tokenizer=tokenizer, progress=False, steps=6, retain_batch_size=16, forget_batch_size=8)
    assert (record.steps, record.stopped_early) == (steps, steps < 6)
    held_out = min(16, len(digits_splits.forget) // 5)  # a fifth of this small D_f
    assert record.held_out == held_out
    assert checked == [held_out] * checks  # one check every 2 steps, each on the held-out slice


def test_early_stop_holds_its_slice_out_of_training(digits_splits, tokenizer):
    from vlunlearn import EarlyStop
    from vlunlearn.unlearning import split_forget

    forget = digits_splits.forget
    trained, held_out = split_forget(forget, EarlyStop(target=0.0, slice_size=4))
    assert len(held_out) == 4 and len(trained) == len(forget) - 4
    assert sorted(trained.ids + held_out.ids) == sorted(forget.ids) and not set(trained.ids) & set(held_out.ids)
    assert split_forget(forget, EarlyStop(target=0.0, slice_size=10_000))[1].ids == split_forget(
        forget, EarlyStop(target=0.0, slice_size=len(forget) // 5))[1].ids  # capped at a fifth, same draw
    assert split_forget(forget, None) == (forget, None)
    _, record = unlearn(build_model("tiny", "euclidean"), digits_splits, "finetune", tokenizer=tokenizer, progress=False,
                        early_stop=EarlyStop(target=-1.0, slice_size=4), epochs=1, forget_batch_size=5, retain_batch_size=8)
    assert record.steps == math.ceil((len(forget) - 4) / 5)  # the budget counts only the pairs trained on


def test_retrain_pretrains_on_the_retain_set_with_the_recipe_and_overrides(digits_splits, tokenizer, monkeypatch):
    """The oracle is pretraining on D_r: the recipe (default: the model's built-in one) with the
    overrides applied, and every run setting passed through (pretraining itself is tested in
    tests/test_training.py)."""
    from vlunlearn.methods import retrain as oracle
    from vlunlearn.training.pretrain import PretrainConfig

    calls = []

    def fake_pretrain(recipe, data, **kwargs):
        calls.append((recipe, data, kwargs))
        return "model", "result"

    monkeypatch.setattr(oracle, "pretrain", fake_pretrain)
    model = build_model("tiny-scenes", "lorentz")
    out = oracle.retrain(model, digits_splits.retain, None, {"seed": "3", "steps": 40}, tokenizer=tokenizer,
                         progress=False)
    recipe, data, kwargs = calls[0]
    assert out == ("model", "result", recipe)
    assert recipe == PretrainConfig(model="tiny-scenes", geometry="lorentz", seed=3, steps=40)
    assert data is digits_splits.retain
    assert kwargs == {"tokenizer": tokenizer, "progress": False, "state_path": None, "resume": False,
                      "checkpoint_every": 4, "precision": "fp32", "grad_checkpointing": False}
    given = PretrainConfig(model="tiny", geometry="lorentz", steps=30, lr=1e-3)
    oracle.retrain(model, digits_splits.retain, given, {}, tokenizer=tokenizer, progress=True, state_path=Path("s"),
                   resume=True, checkpoint_every=7, precision="bf16", grad_checkpointing=True)
    recipe, _, kwargs = calls[1]
    assert recipe == given
    assert kwargs == {"tokenizer": tokenizer, "progress": True, "state_path": Path("s"), "resume": True,
                      "checkpoint_every": 7, "precision": "bf16", "grad_checkpointing": True}
