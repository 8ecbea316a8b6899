"""The training loop, its schedule and parameter groups, the deterministic batch streams, and pretraining.

Closed-form checks of the schedule (also through AdamW's first steps), invariants of the
samplers and the derangement, and end-to-end properties of the loop on a tiny model:
bitwise determinism, bitwise-exact resumption, a clear error on a non-finite loss, and
a loss that really goes down on digits.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from vlunlearn.data import Tokenizer, load_builtin
from vlunlearn.errors import TrainingError
from vlunlearn.methods.base import derangement
from vlunlearn.models import build_model
from vlunlearn.training.batches import PairSampler, TokenCache, concat_tokens, step_generator
from vlunlearn.training.loop import OptimConfig, StepOutput, parameter_groups, train
from vlunlearn.training.losses import contrastive_loss
from vlunlearn.training.pretrain import ContrastiveObjective, PretrainConfig, pretrain

CONTEXT = 32  # the tiny model's context length


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer()


@pytest.fixture(scope="module")
def digits_train():
    return load_builtin("digits", "train")


@pytest.fixture(scope="module")
def digits64(digits_train):
    return digits_train.subset(range(64))


@pytest.fixture(scope="module")
def digits50(digits_train):
    return digits_train.subset(range(50))


def _state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- OptimConfig.lr_factor


def test_warmup_is_linear_from_one_over_warmup_to_one():
    config = OptimConfig(steps=100, lr=1e-3, warmup_steps=8)
    for step in range(8):
        assert config.lr_factor(step) == pytest.approx((step + 1) / 8)
    assert config.lr_factor(7) == pytest.approx(1.0)
    assert config.lr_factor(8) == pytest.approx(1.0)  # decay starts at the peak


def test_cosine_is_half_at_the_midpoint_and_about_zero_at_the_last_step():
    config = OptimConfig(steps=110, lr=1e-3, warmup_steps=10)
    assert config.lr_factor(60) == pytest.approx(0.5, abs=1e-12)  # 50 of the 100 decay steps
    # progress (109 - 10) / 100 = 0.99: 0.5 * (1 + cos(0.99 pi))
    assert config.lr_factor(109) == pytest.approx(0.5 * (1 + math.cos(0.99 * math.pi)), rel=1e-12)
    assert config.lr_factor(109) < 3e-4
    long_run = OptimConfig(steps=10_000, lr=1e-3)
    assert long_run.lr_factor(9_999) < 1e-7
    assert long_run.lr_factor(10_000) == pytest.approx(0.0, abs=1e-15)  # and stays there
    assert long_run.lr_factor(20_000) == pytest.approx(0.0, abs=1e-15)
    factors = [config.lr_factor(s) for s in range(10, 110)]
    assert all(a >= b for a, b in zip(factors, factors[1:]))  # monotone decay


def test_without_cosine_the_factor_is_constant_after_warmup():
    config = OptimConfig(steps=50, lr=1e-3, warmup_steps=5, cosine=False)
    assert [config.lr_factor(s) for s in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert all(config.lr_factor(s) == 1.0 for s in range(5, 50))
    assert OptimConfig(steps=3, lr=1e-3, cosine=False).lr_factor(0) == 1.0


@pytest.mark.parametrize(
    "kwargs",
    [dict(steps=0, lr=1e-3), dict(steps=-5, lr=1e-3), dict(steps=10, lr=0.0), dict(steps=10, lr=-1e-3),
     dict(steps=10, lr=float("nan"))],
)
def test_invalid_steps_or_lr_raise(kwargs):
    with pytest.raises(ValueError):
        OptimConfig(**kwargs)


class _Toy(nn.Module):
    """The smallest model the loop accepts: one 1-D parameter (undecayed) and ``clamp_scalars_``."""

    def __init__(self, size: int = 3) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(size, dtype=torch.float64))

    def clamp_scalars_(self) -> None:
        pass


def test_the_loop_applies_lr_factor_of_each_step():
    # With a constant gradient of 1, AdamW's bias-corrected update is lr * factor(step) * 1/(1 + eps),
    # so after n steps w = -lr * sum(factor(0..n-1)): an off-by-one in the scheduler shows.
    config = OptimConfig(steps=6, lr=0.01, weight_decay=0.0, warmup_steps=4, grad_clip=0.0)
    model = _Toy()
    result = train(model, lambda m, step: StepOutput(m.w.sum()), config, progress=False, log_every=1)
    expected = -0.01 * sum(config.lr_factor(s) for s in range(6))
    torch.testing.assert_close(model.w.detach(), torch.full((3,), expected, dtype=torch.float64), rtol=1e-6, atol=0)
    # the logged lr is the one the next step will use
    assert [h["lr"] for h in result.history] == pytest.approx([0.01 * config.lr_factor(s + 1) for s in range(6)])
    assert [h["step"] for h in result.history] == list(range(1, 7))
    assert result.steps == 6 and result.resumed_from == 0


def test_should_stop_ends_training_after_that_many_steps():
    config = OptimConfig(steps=10, lr=0.01, weight_decay=0.0, grad_clip=0.0, cosine=False)
    calls = []

    def objective(model, step):
        calls.append(step)
        return StepOutput(model.w.sum())

    result = train(_Toy(), objective, config, progress=False, should_stop=lambda done: done == 4)
    assert calls == [0, 1, 2, 3] and result.steps == 4


# --------------------------------------------------------------------------- parameter groups


def test_parameter_groups_split_decay_and_no_decay():
    model = build_model("tiny", "lorentz")
    decay_group, no_decay_group = parameter_groups(model, 0.2)
    assert decay_group["weight_decay"] == 0.2 and no_decay_group["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for p in decay_group["params"]}
    no_decay = {names[id(p)] for p in no_decay_group["params"]}

    assert not decay & no_decay
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert decay | no_decay == trainable
    assert "visual.pos_embed" not in decay | no_decay  # frozen sin-cos table: in neither group

    for name in ("logit_scale", "curv", "visual_alpha", "textual_alpha", "visual.cls_token",
                 "textual.posit_embed", "visual.blocks.0.norm1.weight", "visual.blocks.0.norm1.bias",
                 "visual.norm.weight", "textual.ln_final.weight", "textual.resblocks.0.ln_1.weight",
                 "visual.blocks.0.attn.qkv.bias", "visual.patch_embed.proj.bias",
                 "textual.resblocks.0.attn.in_proj_bias", "textual.resblocks.0.mlp.c_fc.bias"):
        assert name in no_decay, name
    for name in ("visual_proj.weight", "textual_proj.weight", "visual.patch_embed.proj.weight",
                 "visual.blocks.0.attn.qkv.weight", "visual.blocks.3.mlp.fc2.weight",
                 "textual.token_embed.weight", "textual.resblocks.0.attn.in_proj_weight",
                 "textual.resblocks.2.mlp.c_proj.weight"):
        assert name in decay, name
    # every decayed parameter is a matrix (or a conv kernel)
    assert all(p.ndim >= 2 for p in decay_group["params"])


def test_parameter_groups_of_a_euclidean_model_have_no_hyperbolic_scalars():
    model = build_model("tiny", "euclidean")
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for p in parameter_groups(model, 0.1)[1]["params"]}
    assert "logit_scale" in no_decay
    assert not {"curv", "visual_alpha", "textual_alpha"} & no_decay


# --------------------------------------------------------------------------- PairSampler


def _sampler(data, tokenizer, batch_size=16, seed=0, weights=None):
    return PairSampler(data, TokenCache(tokenizer, CONTEXT), batch_size, seed, weights)


def test_each_epoch_visits_every_index_at_most_once(digits50, tokenizer):
    sampler = _sampler(digits50, tokenizer)
    assert sampler.batch_size == 16 and sampler.steps_per_epoch == 3
    orders = []
    for epoch in range(3):
        seen = torch.cat([sampler.indices(epoch * 3 + k) for k in range(3)])
        assert seen.shape == (48,)
        assert len(set(seen.tolist())) == 48  # no repeats within the epoch
        assert seen.min() >= 0 and seen.max() < 50
        orders.append(seen.tolist())
    assert orders[0] != orders[1] != orders[2]  # reshuffled every epoch


def test_the_batch_at_a_step_depends_only_on_seed_and_step(digits50, tokenizer):
    sampler = _sampler(digits50, tokenizer, weights=(0.3, 0.3, 0.4))
    first = sampler.batch(4)
    sampler.batch(0), sampler.batch(7)  # move to other epochs in between
    again = sampler.batch(4)
    fresh = _sampler(digits50, tokenizer, weights=(0.3, 0.3, 0.4)).batch(4)
    for other in (again, fresh):
        assert torch.equal(first.indices, other.indices)
        assert torch.equal(first.tokens, other.tokens)
        assert torch.equal(first.inputs, other.inputs)
    torch.testing.assert_close(first.inputs, digits50.input_batch(first.indices))
    other_seed = _sampler(digits50, tokenizer, seed=1, weights=(0.3, 0.3, 0.4))
    assert not torch.equal(first.indices, other_seed.indices(4))
    assert [sampler.indices(k).tolist() for k in range(3)] != [other_seed.indices(k).tolist() for k in range(3)]


@pytest.mark.parametrize("weights, level", [(None, -1), ((0.0, 0.0, 1.0), -1), ((1.0, 0.0, 0.0), 0), ((0, 1, 0), 1)])
def test_caption_weights_choose_the_caption_level(digits50, tokenizer, weights, level):
    sampler = _sampler(digits50, tokenizer, weights=weights)
    cache = TokenCache(tokenizer, CONTEXT)
    for step in (0, 2, 5):
        batch = sampler.batch(step)
        expected = [digits50.captions[i][level] for i in batch.indices.tolist()]
        assert torch.equal(batch.tokens, cache(expected))
    if level == -1:
        assert expected == digits50.canonical_captions(batch.indices)


def test_mixed_caption_weights_draw_every_level(digits_train, tokenizer):
    sampler = _sampler(digits_train, tokenizer, batch_size=256, weights=(1 / 3, 1 / 3, 1 / 3))
    captions = sampler._captions(sampler.indices(0), 0)
    levels = [digits_train.captions[i].index(c) for i, c in zip(sampler.indices(0).tolist(), captions)]
    counts = [levels.count(k) for k in range(3)]
    assert all(c > 40 for c in counts), counts


def test_items_with_other_caption_counts_draw_every_caption_canonical_by_the_last_weight(digits_train, tokenizer):
    # users' level captions: e.g. three hierarchy captions plus the user's own, or only the user's own
    data = digits_train.subset(range(300))
    data.captions = [(f"generic {i}", f"family {i}", f"class {i}", f"own {i}") if i % 3 else (f"only {i}",)
                     for i in range(len(data))]
    sampler = _sampler(data, tokenizer, batch_size=300, weights=(0.1, 0.2, 0.7))
    drawn = [c for step in range(4) for c in sampler._captions(sampler.indices(step), step)]
    four = [c for c in drawn if not c.startswith("only")]
    assert all(c.startswith("only") for c in drawn if c.startswith("only"))
    assert len(drawn) - len(four) == 4 * 100  # an item with one caption always gets it
    share = {word: sum(c.startswith(word) for c in four) / len(four) for word in ("own", "generic", "family", "class")}
    assert abs(share["own"] - 0.7) < 0.06, share  # the canonical caption with the last weight's probability
    assert all(0.05 < share[word] < 0.15 for word in ("generic", "family", "class")), share  # the rest uniformly


def test_batch_size_is_capped_at_the_dataset_size(digits50, tokenizer):
    sampler = _sampler(digits50, tokenizer, batch_size=1000)
    assert sampler.batch_size == 50 and sampler.steps_per_epoch == 1
    batch = sampler.batch(3)
    assert len(batch) == 50 and sorted(batch.indices.tolist()) == list(range(50))
    assert batch.inputs.shape == (50, 1, 28, 28) and batch.tokens.shape[0] == 50


def test_an_empty_dataset_raises(digits50, tokenizer):
    empty = digits50.subset([])
    assert len(empty) == 0
    with pytest.raises(ValueError, match="empty"):
        _sampler(empty, tokenizer)


def test_step_generator_is_stable_and_mixes_every_part():
    draw = lambda *parts: torch.randint(1 << 30, (4,), generator=step_generator(*parts)).tolist()  # noqa: E731
    assert draw(0, 5) == draw(0, 5)
    assert len({tuple(draw(*p)) for p in [(0, 5), (0, 6), (1, 5), (0, 5, 7), (5, 0)]}) == 5


# --------------------------------------------------------------------------- TokenCache, concat_tokens


def test_token_cache_matches_the_tokenizer(tokenizer):
    cache = TokenCache(tokenizer, CONTEXT)
    first = ["a photo of the digit seven.", "a number.", "a photo of the digit seven.", "a handwritten three"]
    assert torch.equal(cache(first), tokenizer(first, CONTEXT))
    # a later, shorter batch made only of cached captions pads to its own longest caption
    second = ["a number.", "a handwritten three", "a number."]
    assert torch.equal(cache(second), tokenizer(second, CONTEXT))
    assert cache(second).shape[1] == max(len(tokenizer.encode(c)) for c in second)
    # mixed new and cached captions
    third = ["zero", "a photo of the digit seven.", "an image showing a small hand-drawn digit 8 on paper"]
    assert torch.equal(cache(third), tokenizer(third, CONTEXT))


def test_token_cache_truncates_like_the_tokenizer(tokenizer):
    long = "a very long caption " * 10
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = tokenizer([long, "short"], 8)
        got = TokenCache(tokenizer, 8)([long, "short"])
    assert torch.equal(got, expected)
    assert got[0, -1] == tokenizer.eot_id


def test_token_cache_keeps_token_id_zero(tokenizer):
    captions = ["a!??", "wow!?!."]
    assert 0 in tokenizer.encode("a!??")
    assert torch.equal(TokenCache(tokenizer, CONTEXT)(captions), tokenizer(captions, CONTEXT))


def test_concat_tokens_pads_to_the_widest():
    a = torch.tensor([[5, 6, 0], [7, 0, 0]])
    b = torch.tensor([[1, 2, 3, 4, 9]])
    c = torch.tensor([[8]])
    out = concat_tokens(a, b, c)
    expected = torch.tensor([[5, 6, 0, 0, 0], [7, 0, 0, 0, 0], [1, 2, 3, 4, 9], [8, 0, 0, 0, 0]])
    assert torch.equal(out, expected)
    assert torch.equal(concat_tokens(b), b)


# --------------------------------------------------------------------------- derangement


@pytest.mark.parametrize("n", range(2, 21))
def test_derangement_is_a_single_cycle_without_fixed_points(n):
    for seed in range(5):
        perm = derangement(n, torch.Generator().manual_seed(seed))
        assert perm.dtype == torch.long and perm.shape == (n,)
        assert sorted(perm.tolist()) == list(range(n))
        assert not (perm == torch.arange(n)).any()
        position, length = 0, 0  # one cycle through every element
        while True:
            position, length = int(perm[position]), length + 1
            if position == 0:
                break
        assert length == n


def test_derangement_depends_on_the_generator():
    draws = {tuple(derangement(12, torch.Generator().manual_seed(s)).tolist()) for s in range(10)}
    assert len(draws) > 1
    assert torch.equal(derangement(12, torch.Generator().manual_seed(3)), derangement(12, torch.Generator().manual_seed(3)))


@pytest.mark.parametrize("n", [-1, 0, 1])
def test_derangement_of_fewer_than_two_raises(n):
    with pytest.raises(ValueError):
        derangement(n, torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------- the loop on a tiny model


@pytest.mark.parametrize("geometry", ["euclidean", "lorentz"])
def test_pretraining_is_deterministic_given_the_seed(digits64, tokenizer, geometry):
    # two steps (learning-rate factors 1 and 0.5): the second also depends on the optimizer state
    config = PretrainConfig(geometry=geometry, steps=2, batch_size=16, seed=5)
    model_a, result_a = pretrain(config, digits64, tokenizer=tokenizer, progress=False)
    model_b, result_b = pretrain(config, digits64, tokenizer=tokenizer, progress=False)
    assert result_a.steps == result_b.steps == 2
    assert _state_equal(model_a.state_dict(), model_b.state_dict())
    assert result_a.final_logs == result_b.final_logs
    other, _ = pretrain(PretrainConfig(geometry=geometry, steps=2, batch_size=16, seed=6), digits64,
                        tokenizer=tokenizer, progress=False)
    assert not _state_equal(model_a.state_dict(), other.state_dict())
    # training moved the weights away from the seeded initialisation
    torch.manual_seed(5)
    assert not _state_equal(model_a.state_dict(), build_model("tiny", geometry).state_dict())


def _objective(data, tokenizer):
    sampler = PairSampler(data, TokenCache(tokenizer, CONTEXT), 16, seed=3, caption_weights=(0.2, 0.3, 0.5))
    return ContrastiveObjective(sampler, entail_weight=0.2)


@pytest.mark.parametrize("geometry, interrupt_at", [("euclidean", 3), ("lorentz", 3), ("lorentz", 5)])
def test_resuming_an_interrupted_run_ends_with_identical_weights(digits64, tokenizer, tmp_path, geometry, interrupt_at):
    config = OptimConfig(steps=8, lr=1e-3, warmup_steps=2, checkpoint_every=3)

    torch.manual_seed(0)
    reference = build_model("tiny", geometry)
    train(reference, _objective(digits64, tokenizer), config, progress=False)

    # an interrupted run: the state is saved at step 3; with interrupt_at=5, steps 4-5 are lost
    state = tmp_path / "state.pt"
    torch.manual_seed(0)
    interrupted = build_model("tiny", geometry)
    stopped = train(interrupted, _objective(digits64, tokenizer), config, state_path=state, progress=False,
                    should_stop=lambda done: done == interrupt_at)
    assert stopped.steps == interrupt_at and state.exists()
    assert not _state_equal(interrupted.state_dict(), reference.state_dict())

    torch.manual_seed(123)  # a different initialisation: the saved state must override it
    resumed = build_model("tiny", geometry)
    result = train(resumed, _objective(digits64, tokenizer), config, state_path=state, resume=True, progress=False)
    assert result.resumed_from == 3 and result.steps == 8
    assert _state_equal(resumed.state_dict(), reference.state_dict())


def test_resume_without_a_saved_state_starts_from_scratch(digits64, tokenizer, tmp_path):
    config = OptimConfig(steps=2, lr=1e-3)
    torch.manual_seed(0)
    a = build_model("tiny", "euclidean")
    train(a, _objective(digits64, tokenizer), config, progress=False)
    torch.manual_seed(0)
    b = build_model("tiny", "euclidean")
    result = train(b, _objective(digits64, tokenizer), config, state_path=tmp_path / "none.pt", resume=True,
                   progress=False)
    assert result.resumed_from == 0
    assert _state_equal(a.state_dict(), b.state_dict())


def _faulty_objective(bad_steps: set[int], bad: float = float("nan"), seen: list | None = None):
    """A smooth loss of the logit scale that is ``bad`` the first time each step of ``bad_steps`` runs."""
    remaining = set(bad_steps)

    def objective(m, step):
        loss = (m.logit_scale - 1.0) ** 2 + sum((p**2).sum() for p in m.visual_proj.parameters()) * 1e-3
        if seen is not None:
            seen.append(step)
        if step in remaining:
            remaining.discard(step)
            loss = loss * bad
        return StepOutput(loss)

    return objective


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_one_non_finite_loss_restores_the_last_good_state_and_halves_the_lr(bad):
    torch.manual_seed(0)
    model = build_model("tiny", "euclidean")
    steps: list[int] = []
    config = OptimConfig(steps=6, lr=1e-2, cosine=False, snapshot_every=2)
    with pytest.warns(UserWarning, match="non-finite loss or gradient at step 3; restored the state of step 2"):
        result = train(model, _faulty_objective({3}, bad, steps), config, progress=False, log_every=1)
    # steps 0-2 ran, step 3 faulted, the snapshot of step 2 was restored and steps 2-5 ran again
    assert steps == [0, 1, 2, 3, 2, 3, 4, 5]
    assert result.steps == 6 and len(result.faults) == 1
    assert result.faults[0]["step"] == 3 and result.faults[0]["restored_step"] == 2
    assert not math.isfinite(result.faults[0]["loss"])
    assert [h["lr"] for h in result.history] == pytest.approx([1e-2, 1e-2, 5e-3, 5e-3, 5e-3, 5e-3])
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


def test_a_second_fault_stops_the_run_and_saves_the_last_good_state(tmp_path):
    torch.manual_seed(0)
    model = build_model("tiny", "euclidean")
    state = tmp_path / "state.pt"
    config = OptimConfig(steps=8, lr=1e-2, snapshot_every=1)
    with pytest.warns(UserWarning), pytest.raises(TrainingError, match=r"step 2, 5\).*last good state \(step 5\)"):
        train(model, _faulty_objective({2, 5}), config, state_path=state, progress=False)
    saved = torch.load(state, weights_only=True)
    assert saved["step"] == 5 and saved["lr_scale"] == 0.5
    assert _state_equal(saved["model"], model.state_dict())  # the model is left in its last good state


def test_the_default_snapshot_interval_scales_with_the_model(monkeypatch):
    from vlunlearn.training import loop

    model = build_model("tiny", "euclidean")
    assert loop.snapshot_interval(OptimConfig(steps=1, lr=1e-2), model) == loop.SNAPSHOT_INTERVAL_SMALL == 10
    assert loop.snapshot_interval(OptimConfig(steps=1, lr=1e-2, snapshot_every=3), model) == 3
    monkeypatch.setattr(loop, "SMALL_MODEL_PARAMS", model.num_parameters() - 1)  # "large" from here
    assert loop.snapshot_interval(OptimConfig(steps=1, lr=1e-2), model) == loop.SNAPSHOT_INTERVAL_LARGE
    copies = []
    monkeypatch.setattr(loop, "_snapshot", lambda *args: copies.append(args[3]) or {"step": args[3]})
    train(model, _faulty_objective(set()), OptimConfig(steps=120, lr=1e-3), progress=False)
    assert copies == [0, 50, 100]


def test_snapshots_live_in_host_memory():
    from vlunlearn.training.loop import _snapshot

    model = build_model("tiny", "euclidean")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.logit_scale.grad = torch.ones(())
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    snapshot = _snapshot(model, optimizer, scheduler, 0, 1.0)
    tensors = list(snapshot["model"].values()) + [v for state in snapshot["optimizer"]["state"].values()
                                                  for v in state.values() if isinstance(v, torch.Tensor)]
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(snapshot["model"].values(), model.state_dict().values()))


def test_without_snapshots_the_first_fault_stops_before_touching_the_weights():
    torch.manual_seed(0)
    model = build_model("tiny", "euclidean")
    before: dict = {}

    def objective(m, step):
        if step == 2:
            before.update({k: v.clone() for k, v in m.state_dict().items()})
            return StepOutput(m.logit_scale * float("nan"))
        return StepOutput(m.logit_scale * 1.0)

    with pytest.raises(TrainingError, match="step 2"):
        train(model, objective, OptimConfig(steps=5, lr=1e-2, snapshot_every=0), progress=False)
    assert _state_equal(model.state_dict(), before)


def test_the_loss_decreases_on_digits(digits_train, tokenizer):
    data = digits_train.subset(range(32))
    cache = TokenCache(tokenizer, CONTEXT)

    def full_loss(model) -> float:
        model.eval()
        with torch.no_grad():
            image_emb, text_emb = model(data.input_batch(torch.arange(32)), cache(data.canonical_captions()))
            return contrastive_loss(model, image_emb, text_emb).item()

    torch.manual_seed(0)
    model = build_model("tiny", "euclidean")
    before = full_loss(model)
    objective = ContrastiveObjective(PairSampler(data, cache, 32, seed=0), entail_weight=0.0)
    result = train(model, objective, OptimConfig(steps=30, lr=3e-4, warmup_steps=3), progress=False, log_every=1)
    after = full_loss(model)
    chance = math.log(32)  # the loss of a collapsed model that cannot tell the pairs apart
    assert after < before - 0.8
    assert after < chance - 0.8, (before, after, chance)
    losses = [h["loss"] for h in result.history]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
