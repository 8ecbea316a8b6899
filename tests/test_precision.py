"""Mixed precision (bf16/fp16 autocast, Lorentz maths kept in float32) and gradient checkpointing."""

from __future__ import annotations

import json
import math

import pytest
import torch

from vlunlearn import unlearn
from vlunlearn.cli import main
from vlunlearn.data import Tokenizer, UnlearningRequest, load_builtin, make_splits
from vlunlearn.geometry import lorentz
from vlunlearn.models import build_model, save_model
from vlunlearn.training.batches import PairSampler, TokenCache
from vlunlearn.training.loop import OptimConfig
from vlunlearn.training.losses import contrastive_loss, entailment_loss

SETTINGS = {"steps": 3, "retain_batch_size": 16, "forget_batch_size": 8}


@pytest.fixture(scope="module")
def splits():
    train, test = load_builtin("digits", "train").subset(range(300)), load_builtin("digits", "test").subset(range(100))
    return make_splits(train, test, UnlearningRequest(concepts=("seven",)))


def _gradients(model, batch) -> dict[str, torch.Tensor]:
    model.zero_grad()
    image_emb, text_emb = model(batch.inputs, batch.tokens)
    (contrastive_loss(model, image_emb, text_emb) + entailment_loss(model, text_emb, image_emb)).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_same_gradients(splits):
    torch.manual_seed(0)
    model = build_model("tiny", "lorentz").train()
    batch = PairSampler(splits.retain, TokenCache(Tokenizer(), 32), 16, seed=0).batch(0)
    plain = _gradients(model, batch)
    checkpointed = _gradients(model.set_grad_checkpointing(True), batch)
    assert model.visual.grad_checkpointing and model.textual.grad_checkpointing
    assert plain.keys() == checkpointed.keys() and len(plain) > 20
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_lorentz_operations_stay_float32_under_autocast():
    x, y = lorentz.exp_map0(torch.randn(4, 8), 1.0), lorentz.exp_map0(torch.randn(5, 8), 1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (x @ y.T).dtype == torch.bfloat16  # autocast is really on
        distance = lorentz.pairwise_dist(x.bfloat16(), y.bfloat16(), 1.0)
    assert distance.dtype == torch.float32
    torch.testing.assert_close(distance, lorentz.pairwise_dist(x.bfloat16().float(), y.bfloat16().float(), 1.0))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_unlearning_runs_and_tracks_fp32(precision, splits):
    torch.manual_seed(0)
    model = build_model("tiny", "lorentz")
    reference, reference_record = unlearn(model, splits, "hac", progress=False, **SETTINGS)
    mixed, record = unlearn(model, splits, "hac", progress=False, precision=precision, **SETTINGS)
    assert all(p.dtype == torch.float32 for p in mixed.parameters())  # master weights stay float32
    assert all(torch.isfinite(p).all() for p in mixed.parameters())
    assert not torch.equal(mixed.visual_proj.weight, model.visual_proj.weight)
    loss, reference_loss = record.history[-1]["loss"], reference_record.history[-1]["loss"]
    assert math.isfinite(loss) and loss == pytest.approx(reference_loss, rel=0.05)
    assert not torch.equal(mixed.visual_proj.weight, reference.visual_proj.weight)  # it really ran in half


def test_precision_is_validated_and_recorded(tmp_path, capsys):
    with pytest.raises(ValueError, match="precision"):
        OptimConfig(steps=1, lr=1e-3, precision="fp8")
    torch.manual_seed(0)
    save_model(build_model("tiny", "euclidean"), tmp_path / "model")
    out = tmp_path / "run"
    code = main(["unlearn", "--checkpoint", str(tmp_path / "model"), "--data", "digits", "--forget", "seven",
                 "--method", "ac", "--set", "steps=2", "--set", "retain_batch_size=16", "--set", "forget_batch_size=8",
                 "--precision", "bf16", "--grad-checkpointing", "--quiet", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    run = json.loads((out / "results.json").read_text())["run"]
    assert run["precision"] == "bf16" and run["grad_checkpointing"] is True and run["peak_memory_bytes"] >= 0
