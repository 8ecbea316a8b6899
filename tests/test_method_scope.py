"""Parameter scope of an unlearning run, per-family learning rates, epoch budgets, frozen
batch-norm statistics and the CLI's method list.

Closed-form checks on the tiny built-in model and hand-made modules: which parameters a tower
choice and a name filter select, the resolved steps and learning rate, the forget sampler's
epochs, and a two-step run that must leave the frozen tower bit-identical.
"""

from __future__ import annotations

import math
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import vlunlearn.unlearning
from vlunlearn import unlearn
from vlunlearn.cli import main
from vlunlearn.data import Tokenizer, UnlearningRequest, load_builtin, make_splits
from vlunlearn.errors import ConfigError
from vlunlearn.methods import available_methods, get_method, make_config
from vlunlearn.methods.ac import ACConfig
from vlunlearn.methods.base import RELEASED_LR_FACTOR, MethodConfig, family_lr
from vlunlearn.methods.finetune import FinetuneConfig
from vlunlearn.methods.hac import HACConfig
from vlunlearn.models import ContrastiveModel, OpenClipAdapter
from vlunlearn.models.configs import model_config
from vlunlearn.training.batches import PairSampler
from vlunlearn.training.loop import OptimConfig, StepOutput, train
from vlunlearn.training.scope import restrict_parameters

from tests.fakes import random_clothing_pairs

GEOMETRIES = ["euclidean", "lorentz"]


@pytest.fixture(scope="module")
def digits_splits():
    train_data, test_data = load_builtin("digits", "train"), load_builtin("digits", "test")
    request = UnlearningRequest(concepts=("seven",))
    return make_splits(train_data.subset(range(300)), test_data.subset(range(120)), request)


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer()


def _tiny(geometry: str) -> ContrastiveModel:
    torch.manual_seed(0)
    return ContrastiveModel(model_config("tiny", geometry))


def _names(model: nn.Module, prefix: str = "") -> list[str]:
    """Trainable parameters whose name starts with ``prefix`` (``visual.pos_embed`` is frozen by design)."""
    return [name for name, param in model.named_parameters() if param.requires_grad and name.startswith(prefix)]


def _trainable(model: nn.Module) -> list[str]:
    return [name for name, param in model.named_parameters() if param.requires_grad]


# --------------------------------------------------------------------------- scope


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize(("towers", "prefix"), [("image", "visual"), ("text", "textual")])
def test_a_tower_selects_exactly_its_own_parameters(geometry, towers, prefix):
    model = _tiny(geometry)
    expected = _names(model, prefix)  # visual_proj / visual_alpha belong to the image tower
    scope = restrict_parameters(model, towers, "")
    assert expected and scope["names"] == expected == _trainable(model)
    assert "visual.pos_embed" not in scope["names"]  # frozen before, frozen after
    assert not {"logit_scale", "curv"} & set(scope["names"])  # shared scalars only with "both"
    parameters = dict(model.named_parameters())
    assert scope["tensors"] == len(expected)
    assert scope["numel"] == sum(parameters[name].numel() for name in expected)
    assert (scope["towers"], scope["parameter_filter"]) == (towers, "")


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_both_towers_add_the_shared_scalars(geometry):
    model = _tiny(geometry)
    trainable, towers = _names(model), set(_names(model, "visual")) | set(_names(model, "textual"))
    scope = restrict_parameters(model, "both", "")
    assert scope["names"] == trainable == _trainable(model)
    assert set(scope["names"]) - towers == ({"logit_scale", "curv"} if geometry == "lorentz" else {"logit_scale"})
    assert scope["numel"] == model.num_parameters(trainable_only=True)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_a_filter_keeps_only_matching_names_of_the_chosen_tower(geometry):
    model = _tiny(geometry)
    expected = [name for name in _names(model, "textual.") if "attn" in name]
    text_tensors = len(_names(model, "textual"))
    scope = restrict_parameters(model, "text", "attn")
    assert expected and scope["names"] == expected == _trainable(model)
    assert scope["tensors"] == len(expected) < text_tensors
    assert scope["numel"] == sum(dict(model.named_parameters())[name].numel() for name in expected)
    # a regular expression, matched anywhere in the name
    assert restrict_parameters(_tiny(geometry), "both", r"^visual\.blocks\.0\.")["names"] == _names(
        _tiny(geometry), "visual.blocks.0."
    )


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_an_already_frozen_parameter_stays_frozen(geometry):
    model = _tiny(geometry)
    frozen = "curv" if geometry == "lorentz" else "logit_scale"
    getattr(model, frozen).requires_grad_(False)
    expected = _names(model)
    scope = restrict_parameters(model, "both", "")
    assert frozen not in scope["names"] and not getattr(model, frozen).requires_grad
    assert scope["names"] == expected == _trainable(model)


@pytest.mark.parametrize(("towers", "parameter_filter"), [("both", "no_such_layer"), ("image", "textual")])
def test_a_scope_that_selects_nothing_is_a_config_error(towers, parameter_filter):
    with pytest.raises(ConfigError, match="selects no trainable parameter") as error:
        restrict_parameters(_tiny("euclidean"), towers, parameter_filter)
    message = str(error.value)
    assert repr(towers) in message and repr(parameter_filter) in message
    assert "ContrastiveModel" in message and "'logit_scale'" in message  # what names look like


class _FakeOpenClipInner(nn.Module):
    """open_clip's CLIP attribute layout, without open_clip: an image tower, a text transformer,
    token and positional embeddings, a final norm, a text projection and the temperature."""

    def __init__(self) -> None:
        super().__init__()
        self.visual = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
        self.transformer = nn.Linear(3, 3)
        self.token_embedding = nn.Embedding(Tokenizer.vocab_size, 3)
        self.positional_embedding = nn.Parameter(torch.zeros(5, 3))
        self.ln_final = nn.LayerNorm(3)
        self.text_projection = nn.Parameter(torch.zeros(3, 2))
        self.logit_scale = nn.Parameter(torch.tensor(2.0))


def test_open_clip_adapter_assigns_every_parameter_to_its_tower():
    adapter = OpenClipAdapter(_FakeOpenClipInner(), name="open_clip:fake")
    towers = {name: adapter.parameter_tower(name) for name in _names(adapter)}
    assert {name for name, tower in towers.items() if tower == "image"} == set(_names(adapter, "inner.visual."))
    assert {name for name, tower in towers.items() if tower == "shared"} == {"inner.logit_scale"}
    text = {"inner.transformer.weight", "inner.transformer.bias", "inner.token_embedding.weight",
            "inner.positional_embedding", "inner.ln_final.weight", "inner.ln_final.bias", "inner.text_projection"}
    assert {name for name, tower in towers.items() if tower == "text"} == text
    assert OpenClipAdapter.parameter_tower("inner.logit_bias") == "shared"  # SigLIP's bias, like the scale
    scope = restrict_parameters(adapter, "text", "")
    assert set(scope["names"]) == text == set(_trainable(adapter))
    assert scope["numel"] == 12 + Tokenizer.vocab_size * 3 + 15 + 6 + 6


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_unlearning_one_tower_leaves_the_other_bit_identical(geometry, digits_splits, tokenizer, monkeypatch):
    seen = {}

    def recording_train(model, objective, config, **kwargs):
        seen.update(config=config, forget=objective.forget)
        return train(model, objective, config, **kwargs)

    monkeypatch.setattr(vlunlearn.unlearning, "train", recording_train)
    model = _tiny(geometry)
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    unlearned, record = unlearn(
        model, digits_splits, "finetune", tokenizer=tokenizer, progress=False,
        towers="image", steps=2, retain_batch_size=16, forget_batch_size=8,
    )
    after = dict(unlearned.named_parameters())
    image = _names(model, "visual")
    assert all(torch.equal(after[name], before[name]) for name in before if name not in image)
    assert any(not torch.equal(after[name], before[name]) for name in image)
    assert record.updated_parameters["names"] == image
    assert record.updated_parameters["towers"] == "image"
    assert record.updated_parameters["numel"] == sum(before[name].numel() for name in image)
    assert (record.config["steps"], record.config["lr"]) == (2, FinetuneConfig.tiny_lr)  # resolved
    assert seen["config"].freeze_norm_statistics and not seen["forget"].drop_last


# --------------------------------------------------------------------------- learning rate per family


def _released() -> SimpleNamespace:
    return SimpleNamespace(config=SimpleNamespace(name="clip-vit-b"))


@pytest.mark.parametrize("config_class", [FinetuneConfig, ACConfig, HACConfig])
def test_the_default_lr_depends_on_the_model_family(config_class):
    config = make_config(config_class, {})
    assert config.lr is None
    assert config.resolve(10, _tiny("euclidean")).lr == config_class.tiny_lr
    assert config.resolve(10, SimpleNamespace(config=SimpleNamespace(name="tiny-scenes"))).lr == config_class.tiny_lr
    assert config.resolve(10, _released()).lr == pytest.approx(config_class.tiny_lr * RELEASED_LR_FACTOR)
    assert family_lr(config_class, _released()) < config_class.tiny_lr
    assert family_lr(config_class, SimpleNamespace(config=SimpleNamespace())) == family_lr(config_class, _released())


def test_an_explicit_lr_is_kept_on_every_family():
    config = make_config(ACConfig, {"lr": 1e-3})
    assert config.resolve(10, _tiny("euclidean")).lr == 1e-3
    assert config.resolve(10, _released()).lr == 1e-3


# --------------------------------------------------------------------------- epoch budget


@pytest.mark.parametrize(
    ("epochs", "forget_size", "batch", "steps"),
    [(2.0, 10, 4, 6), (0.5, 10, 4, 2), (1.0, 10, 64, 1), (2.0, 8, 8, 2), (2.0, 80, 8, 20), (3.0, 20, 8, 9)],
)
def test_resolve_turns_epochs_into_steps(epochs, forget_size, batch, steps):
    """``ceil(epochs * batches per epoch)``, an epoch's last batch being filled up (see PairSampler)."""
    config = MethodConfig(epochs=epochs, forget_batch_size=batch)
    resolved = config.resolve(forget_size, _released())
    assert resolved.steps == steps == math.ceil(epochs * math.ceil(forget_size / min(batch, forget_size)))
    assert (resolved.epochs, resolved.forget_batch_size) == (epochs, batch)


def test_a_ten_times_larger_forget_set_gets_ten_times_the_steps_and_explicit_steps_win():
    config = MethodConfig(forget_batch_size=8)
    assert config.resolve(160, _released()).steps == 10 * config.resolve(16, _released()).steps == 40
    assert MethodConfig(steps=3, forget_batch_size=8).resolve(160, _released()).steps == 3


def _sampler(n: int, batch: int, drop_last: bool) -> PairSampler:
    return PairSampler(random_clothing_pairs([f"item{i}" for i in range(n)]), None, batch, seed=0, drop_last=drop_last)


def test_without_drop_last_every_item_is_seen_once_per_epoch():
    sampler = _sampler(10, 4, drop_last=False)
    assert sampler.steps_per_epoch == 3
    for epoch in range(2):
        batches = [sampler.indices(3 * epoch + position).tolist() for position in range(3)]
        assert [len(b) for b in batches] == [4, 4, 4]
        assert sorted(batches[0] + batches[1] + batches[2][:2]) == list(range(10))  # each item once ...
        assert batches[2][2:] == batches[0][:2]  # ... the last batch filled with the epoch's first items
        assert all(len(set(b)) == 4 for b in batches)
    assert sampler.indices(0).tolist() != sampler.indices(3).tolist()  # a fresh order each epoch


def test_drop_last_keeps_the_old_two_batches_per_epoch():
    sampler = _sampler(10, 4, drop_last=True)
    assert sampler.steps_per_epoch == 2
    first = sampler.indices(0).tolist() + sampler.indices(1).tolist()
    assert len(set(first)) == 8
    assert sampler.indices(2).tolist() == _sampler(10, 4, drop_last=False).indices(3).tolist()[:4]  # epoch 1
    assert _sampler(8, 4, drop_last=False).steps_per_epoch == _sampler(8, 4, drop_last=True).steps_per_epoch == 2


def test_the_resolved_budget_shows_every_forget_pair_in_every_epoch():
    """Two epochs over 10 pairs in batches of 4: the padded sampler needs 6 steps (5 would show
    two of the pairs only once)."""
    steps = MethodConfig(epochs=2.0, forget_batch_size=4).resolve(10, _released()).steps
    sampler = _sampler(10, 4, drop_last=False)
    seen = Counter(i for step in range(steps) for i in sampler.indices(step).tolist())
    assert min(seen[i] for i in range(10)) >= 2


# --------------------------------------------------------------------------- frozen batch norm


class _Normed(nn.Module):
    """A linear layer followed by batch norm: the loop needs only ``clamp_scalars_`` besides."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 4)
        self.norm = nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.linear(x))

    def clamp_scalars_(self) -> None:
        pass


@pytest.mark.parametrize("freeze", [True, False])
def test_frozen_norm_statistics_stay_put_while_the_weights_train(freeze):
    torch.manual_seed(0)
    model, x = _Normed(), torch.randn(8, 3) + 5.0
    before = {name: value.clone() for name, value in model.state_dict().items()}
    config = OptimConfig(steps=2, lr=1e-2, weight_decay=0.0, cosine=False, freeze_norm_statistics=freeze)
    train(model, lambda m, step: StepOutput((m(x) - 1.0).pow(2).mean()), config, progress=False)
    after = model.state_dict()
    statistics = ["norm.running_mean", "norm.running_var"]
    assert all(torch.equal(after[name], before[name]) for name in statistics) is freeze
    assert (after["norm.num_batches_tracked"].item() == 0) is freeze
    assert not torch.equal(after["linear.weight"], before["linear.weight"])
    assert not torch.equal(after["norm.weight"], before["norm.weight"])  # the affine part still trains


# --------------------------------------------------------------------------- settings and CLI


def test_optional_settings_parse_none_and_numbers():
    config = make_config(ACConfig, {"steps": "none", "lr": "1e-3"})
    assert (config.steps, config.lr) == (None, 1e-3)
    assert make_config(ACConfig, {"steps": "7", "lr": "None"}).steps == 7
    assert make_config(ACConfig, {"lr": 1}).lr == 1.0  # an int is a valid float
    assert make_config(ACConfig, {"towers": "text", "parameter_filter": "attn"}).parameter_filter == "attn"


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"lr": "fast"}, "lr='fast' is not a valid float"),
        ({"steps": "2.5"}, "steps='2.5' is not a valid int"),
        ({"epochs": "none"}, "epochs='none' is not a valid float"),  # epochs is not optional
        ({"lr": "-1e-3"}, "lr must be positive"),
        ({"steps": "0"}, "steps must be at least 1"),
        ({"towers": "vision"}, "towers must be one of"),
        ({"parameter_filter": "("}, "not a regular expression"),
    ],
)
def test_bad_settings_are_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        make_config(ACConfig, overrides)


def test_unlearn_help_lists_every_method_with_its_default_budget(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["unlearn", "--help"])
    assert exit_.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    for name in available_methods():
        [row] = [i for i, line in enumerate(lines) if line.split()[:1] == [name]]
        assert len(lines[row].split()) > 1  # a one-line description
        assert lines[row + 1].strip() == f"default budget: {get_method(name).config_class.budget()}"
    assert "1 epoch over D_f" in get_method("neggrad").config_class.budget()
    assert sum("default budget" in line for line in lines) == len(available_methods())


def test_min_steps_floors_a_budget_from_epochs_but_not_explicit_steps():
    model = SimpleNamespace(config=SimpleNamespace(name="tiny"))
    config = make_config(ACConfig, {"epochs": 1, "min_steps": 20, "forget_batch_size": 64})
    assert config.resolve(625, model).steps == 20  # 10 batches per pass: the floor
    assert config.resolve(1564, model).steps == 25  # 25 batches per pass: above the floor
    assert make_config(ACConfig, {"min_steps": 20, "steps": 3}).resolve(625, model).steps == 3
    assert make_config(ACConfig, {"min_steps": 1, "epochs": 0.01}).resolve(625, model).steps == 1
    with pytest.raises(ConfigError, match="min_steps"):
        make_config(ACConfig, {"min_steps": 0})


def test_budget_wording_and_zero_epochs_or_lr_are_refused():
    from vlunlearn.methods.neggrad import NegGradConfig

    assert NegGradConfig.budget() == "1 epoch over D_f; lr 5.0e-05 on tiny models, 2.5e-06 on released ones"
    assert ACConfig.budget() == "1 epoch over D_f (at least 30 steps); lr 4.0e-04 on tiny models, 2.0e-05 on released ones"
    for bad in ({"epochs": 0.0}, {"lr": 0.0}):
        with pytest.raises(ConfigError):
            make_config(ACConfig, bad)
    assert make_config(ACConfig, {"steps": ""}).steps is None


def test_method_summaries_drop_rst_backticks_and_tolerate_a_missing_docstring(monkeypatch):
    from vlunlearn.methods import base

    summaries = {name: summary for name, summary, _ in base.method_summaries()}
    assert summaries["finetune"] == "Fine-tuning on the retain set only: L = L_con(B_r)."
    long_doc = type("Long", (base.UnlearningMethod,), {"__doc__": "\n    First line.\n\n    More text.\n    "})
    monkeypatch.setattr(base, "_REGISTRY", {"bare": type("Bare", (base.UnlearningMethod,), {}), "long": long_doc})
    budget = base.MethodConfig.budget()
    assert base.method_summaries() == [("bare", "", budget), ("long", "First line.", budget)]
