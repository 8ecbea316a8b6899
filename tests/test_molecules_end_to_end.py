"""Graph-language pairs end to end: a graph model pretrained on the built-in molecules forgets a
functional-group family, and the command line reads users' molecules."""

from __future__ import annotations

import pytest
import torch

from vlunlearn import unlearn
from vlunlearn.cli import main
from vlunlearn.data import Tokenizer, UnlearningRequest, load_builtin, make_splits
from vlunlearn.data.molecules import read_molecules, write_molecules
from vlunlearn.evaluation import evaluate_splits
from vlunlearn.evaluation.zero_shot import detection_metrics
from vlunlearn.training.pretrain import PretrainConfig, pretrain


@pytest.fixture(scope="module")
def molecules():
    return load_builtin("molecules", "train"), load_builtin("molecules", "test")


@pytest.fixture(scope="module")
def graph_clip(molecules):
    """tiny-graph (CLIP) after 150 steps of 64 molecules (~20 s)."""
    config = PretrainConfig(model="tiny-graph", geometry="euclidean", steps=150, batch_size=64, lr=2e-3)
    model, _ = pretrain(config, molecules[0], tokenizer=Tokenizer(), progress=False)
    return model


def test_a_graph_model_forgets_a_functional_group_family(molecules, graph_clip):
    tokenizer = Tokenizer()
    splits = make_splits(*molecules, UnlearningRequest(concepts=("nitro group",)))
    assert splits.forget_classes == ("aromatic nitro group", "aliphatic nitro group")
    before = {**evaluate_splits(graph_clip, splits, tokenizer), **detection_metrics(graph_clip, splits, tokenizer)}
    unlearned, _ = unlearn(graph_clip, splits, "multidelete", tokenizer=tokenizer, progress=False)
    after = {**evaluate_splits(unlearned, splits, tokenizer), **detection_metrics(unlearned, splits, tokenizer)}
    chance = 100 / len(splits.retain.class_names)
    assert before["zs_test_forget"] > 60 and before["zs_test_retain"] > 3 * chance, before
    assert before["det_ap_forget"] > 0.45  # chance: the share of test molecules with a nitro group, 8%
    assert after["zs_test_forget"] <= before["zs_test_forget"] - 40, after
    assert after["det_ap_forget"] <= before["det_ap_forget"] - 0.3, after
    assert after["zs_test_retain"] > 2 * chance, after


def test_the_command_line_pretrains_a_graph_model_on_a_users_molecule_file(molecules, tmp_path, capsys):
    train, test = molecules
    write_molecules(train.subset(range(64)), tmp_path / "train.npz")
    write_molecules(test.subset(range(32)), tmp_path / "test.npz")
    data = ["--data", str(tmp_path / "train.npz"), "--test-data", str(tmp_path / "test.npz")]
    assert main(["pretrain", *data, "--steps", "3", "--batch-size", "16", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert "tiny-graph/euclidean" in capsys.readouterr().out
    (tmp_path / "ids.txt").write_text(f"{train.ids[0]}\n{train.ids[5]}\n")
    # without --data, unlearn reads the data the checkpoint was trained on (the two files)
    assert main(["unlearn", "--checkpoint", str(tmp_path / "run" / "model"), "--forget-ids", str(tmp_path / "ids.txt"),
                 "--method", "finetune", "--set", "steps=1", "--out", str(tmp_path / "forgot"), "--quiet"]) == 0
    assert "forget 2 samples" in capsys.readouterr().out
    assert main(["pretrain", *data, "--model", "tiny", "--steps", "3", "--out", str(tmp_path / "wrong"), "--quiet"]) == 2
    assert "holds graphs but the model 'tiny' encodes images" in capsys.readouterr().err
    assert not (tmp_path / "wrong").exists()


def test_the_molecules_command_converts_smiles_and_names_a_bad_one(tmp_path, capsys):
    pytest.importorskip("rdkit")
    good = tmp_path / "good.csv"
    good.write_text("smiles,caption,id\nCC(=O)O,acetic acid.,a\nc1ccccc1[N+](=O)[O-],nitrobenzene.,b\n")
    assert main(["molecules", str(good), "--out", str(tmp_path / "good.npz")]) == 0
    assert "2 molecules" in capsys.readouterr().out
    converted = read_molecules(tmp_path / "good.npz")
    assert converted.ids == ["a", "b"] and converted.captions[1][-1] == "nitrobenzene."
    assert "nitro group" in converted.concepts[1] and "carboxylic acid" in converted.concepts[0]
    bad = tmp_path / "bad.csv"
    bad.write_text("smiles\nCC(=O)O\nC1CC\n")
    assert main(["molecules", str(bad), "--out", str(tmp_path / "bad.npz")]) == 2
    assert "row 2" in capsys.readouterr().err and not (tmp_path / "bad.npz").exists()


def test_graph_pairs_train_deterministically(molecules):
    config = PretrainConfig(model="tiny-graph", steps=2, batch_size=8, seed=3)
    first, _ = pretrain(config, molecules[0], tokenizer=Tokenizer(), progress=False)
    second, _ = pretrain(config, molecules[0], tokenizer=Tokenizer(), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
