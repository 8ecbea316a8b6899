"""Pretraining and fine-tuning on users' data (every form ``unlearn`` reads), the recipe recorded
in the model and reproduced by the retrain oracle (from its ``init`` when it has one), a stated
recipe for checkpoints without one, and users' prompts and class lists wherever zero-shot
evaluation runs (``unlearn``, ``evaluate``, studies)."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlunlearn.cli import main
from vlunlearn.data import PairDataset, UnlearningRequest, load_builtin, make_splits
from vlunlearn.data.sources import DataSource, load_data, restrict_classes
from vlunlearn.errors import ConfigError, DataError
from vlunlearn.evaluation import zero_shot
from vlunlearn.models import build_model, export_meru_checkpoint, load_any, load_model, read_metadata, save_model
from vlunlearn.models.releases import sha256_of
from vlunlearn.study import load_spec
from vlunlearn.study.grid import study_data
from vlunlearn.training.pretrain import FINETUNE_LR, PretrainConfig
from vlunlearn.unlearning import unlearn

CONCEPTS = ("cat", "dog", "bird")
TINY = ["--steps", "2", "--batch-size", "4", "--quiet"]


def _png(rng: np.random.Generator) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _rows(split: str, per_concept: int, concepts: bool = True) -> list[dict]:
    return [{"key": f"{split}-{c}-{i}", "caption": f"a photo of {c} number {i} ({split})",
             "concepts": [c] if concepts else []} for c in CONCEPTS for i in range(per_concept)]


def _write_files(root: Path, split: str, rows: list[dict], seed: int) -> dict[str, Path]:
    """The rows as PNG files with a CSV and a JSONL annotation file, and as one tar shard."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    with tarfile.open(root / f"{split}.tar", "w") as shard:
        for row in rows:
            image = _png(rng)
            (root / "images" / f"{row['key']}.png").write_bytes(image)
            members = {"png": image, "json": json.dumps({"caption": row["caption"], "concepts": row["concepts"]}).encode()}
            for suffix, data in members.items():
                info = tarfile.TarInfo(f"{row['key']}.{suffix}")
                info.size = len(data)
                shard.addfile(info, io.BytesIO(data))
    (root / f"{split}.csv").write_text("path,caption,concepts\n" + "".join(
        f"images/{r['key']}.png,{r['caption']},{';'.join(r['concepts'])}\n" for r in rows))
    (root / f"{split}.jsonl").write_text("".join(
        json.dumps({"path": f"images/{r['key']}.png", "caption": r["caption"], "concepts": r["concepts"]}) + "\n"
        for r in rows))
    return {form: root / f"{split}.{form}" for form in ("csv", "jsonl", "tar")}


@pytest.fixture(scope="module")
def user_data(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """``(train, test)`` per data form: CSV, JSONL, one tar shard, and a folder of shards whose
    items name no concept."""
    root = tmp_path_factory.mktemp("user")
    train = _write_files(root, "train", _rows("train", 4), seed=0)
    test = _write_files(root, "test", _rows("test", 2), seed=1)
    forms = {form: (train[form], test[form]) for form in train}
    for split, seed in (("train", 2), ("test", 3)):
        _write_files(root / f"{split}-shards", split, _rows(split, 4 if split == "train" else 2, concepts=False), seed)
    forms["shards"] = (root / "train-shards", root / "test-shards")
    return forms


def _run(arguments: list[str], capsys) -> tuple[int, str]:
    code = main(arguments)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


@pytest.fixture(scope="module")
def scratch_run(user_data, tmp_path_factory) -> Path:
    """A tiny CLIP pretrained from scratch on the CSV data."""
    out = tmp_path_factory.mktemp("runs") / "scratch"
    train, test = user_data["csv"]
    assert main(["pretrain", "--data", str(train), "--test-data", str(test), *TINY, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def finetuned_run(user_data, tmp_path_factory) -> tuple[Path, Path]:
    """``(run, init)``: a random tiny MERU saved as ``init``, fine-tuned on the JSONL data."""
    folder = tmp_path_factory.mktemp("finetune")
    torch.manual_seed(123)  # not the seed-0 initialisation a from-scratch run would start from
    init = save_model(build_model("tiny", "lorentz"), folder / "init")
    train, test = user_data["jsonl"]
    assert main(["pretrain", "--init", str(init), "--data", str(train), "--test-data", str(test), *TINY,
                 "--out", str(folder / "run")]) == 0
    return folder / "run", init


def _largest_change(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> float:
    return max((before[name].double() - after[name].double()).abs().max().item() for name in before)


# ---------------------------------------------------------------------------------------- pretrain


@pytest.mark.parametrize("form", ["csv", "jsonl", "tar", "shards"])
def test_pretrain_on_every_user_data_form_records_its_recipe(user_data, form, tmp_path, capsys):
    train, test = user_data[form]
    out = tmp_path / "run"
    code, printed = _run(["pretrain", "--data", str(train), "--test-data", str(test), *TINY, "--out", str(out)], capsys)
    assert code == 0, printed
    record = _results(out)
    recipe = {**PretrainConfig().to_dict(), "steps": 2, "batch_size": 4, "caption_weights": [0.1, 0.2, 0.7]}
    assert record["config"] == recipe  # the stated fields on the from-scratch defaults
    assert read_metadata(out / "model")["pretrain"] == recipe
    expected_train, _ = load_data(str(train), str(test), load_model(out / "model").config)
    assert record["data"]["name"] == str(train) and record["data"]["train_hash"] == expected_train.content_hash()
    assert record["data"]["train_size"] == 12 and record["training"]["steps"] == 2
    assert set(record["metrics"]["retrieval_test"]) >= {"i2t_r1", "t2i_r1"}
    if form == "shards":  # no item names a concept: no zero-shot accuracy, retrieval instead
        assert "zero_shot_test" not in record["metrics"] and "test image->text R@1" in printed
    else:
        assert record["metrics"]["zero_shot_test"]["count"] == 6 and "zero-shot test top-1" in printed


def test_pretrain_help_describes_users_data_init_and_the_default_recipes(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "from scratch on built-in data" not in text
    assert "--init CHECKPOINT" in text and "--test-data" in text and "--hierarchy" in text and "--classes" in text
    assert "468 steps of 256 pairs, AdamW lr 2e-3" in text and "with --init the same, with lr 1e-5" in text


def test_init_fine_tunes_the_checkpoint_and_records_it(finetuned_run):
    run, init = finetuned_run
    record = _results(run)
    assert record["config"]["init"] == str(init.resolve())
    assert record["config"]["init_sha256"] == sha256_of(init / "model.safetensors")
    assert record["config"]["lr"] == FINETUNE_LR and record["config"]["steps"] == 2
    assert (record["config"]["model"], record["config"]["geometry"]) == ("tiny", "lorentz")  # the checkpoint's
    assert read_metadata(run / "model")["pretrain"] == record["config"]
    before, after = load_any(init).state_dict(), load_model(run / "model").state_dict()
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert changed and _largest_change(before, after) < 1e-3  # a small step away


def test_init_conflicts_and_recipe_errors_write_nothing(finetuned_run, user_data, tmp_path, capsys):
    _, init = finetuned_run
    train, test = user_data["csv"]
    data = ["--data", str(train), "--test-data", str(test), "--quiet"]
    for extra, message in ((["--init", str(init), "--geometry", "euclidean"], "leave out --geometry"),
                           (["--init", str(tmp_path / "absent")], "no model at"),
                           (["--set", "init=/elsewhere"], "given as init (--init)"),
                           (["--lr", "0"], "lr must be positive"),
                           (["--prompt", "a photo"], "exactly one '{}'"),
                           (["--hierarchy", str(tmp_path / "none.csv")], "hierarchy file not found")):
        code, printed = _run(["pretrain", *data, *extra, "--out", str(tmp_path / "run")], capsys)
        assert code == 2 and message in printed, (extra, printed)
        assert not (tmp_path / "run").exists()


def test_built_in_data_takes_no_user_data_options():
    with pytest.raises(DataError, match="--hierarchy, --level-captions are for a user's data"):
        load_data("digits", None, None, hierarchy="tree.csv", level_captions=True)


def test_old_recipes_without_init_still_load():
    recorded = {k: v for k, v in PretrainConfig(steps=7).to_dict().items() if k not in ("init", "init_sha256")}
    recorded["caption_weights"] = [0.1, 0.2, 0.7]  # as read back from JSON
    assert PretrainConfig.from_dict(recorded) == PretrainConfig(steps=7)
    with pytest.raises(ConfigError, match="unknown field"):
        PretrainConfig.from_dict({**recorded, "recipe_source": "recorded"})


# ----------------------------------------------------------------------------------------- retrain


def test_retrain_repeats_the_recorded_recipe_on_the_retain_set(scratch_run, user_data, tmp_path, capsys):
    train, test = user_data["csv"]
    out = tmp_path / "oracle"
    code, printed = _run(["unlearn", "--checkpoint", str(scratch_run / "model"), "--data", str(train), "--test-data",
                          str(test), "--forget", "cat", "--method", "retrain", "--quiet", "--out", str(out)], capsys)
    assert code == 0, printed
    record, recipe = _results(out), _results(scratch_run)["config"]
    assert record["config"] == {**recipe, "recipe_source": "recorded"}
    assert record["run"]["steps"] == recipe["steps"] and record["split_sizes"] == {"forget": 4, "retain": 8}


def test_retrain_of_a_fine_tuned_model_starts_from_its_init(finetuned_run, user_data, tmp_path, capsys):
    run, init = finetuned_run
    train, test = user_data["jsonl"]
    arguments = ["unlearn", "--checkpoint", str(run / "model"), "--data", str(train), "--test-data", str(test),
                 "--forget", "dog", "--method", "retrain", "--quiet"]
    code, printed = _run([*arguments, "--out", str(tmp_path / "oracle")], capsys)
    assert code == 0, printed
    record = _results(tmp_path / "oracle")
    recorded = _results(run)["config"]
    assert record["config"] == {**recorded, "recipe_source": "recorded"}
    start, retrained = load_any(init).state_dict(), load_model(tmp_path / "oracle" / "model").state_dict()
    assert _largest_change(start, retrained) < 1e-3  # two 1e-5 steps from init, not a new initialisation

    moved = tmp_path / "moved"
    init.rename(moved)  # the recipe's starting checkpoint is gone ...
    code, printed = _run([*arguments, "--out", str(tmp_path / "gone")], capsys)
    assert code == 2 and "must be the checkpoint it recorded" in printed and "no model at" in printed
    save_model(build_model("tiny", "lorentz"), init)  # ... or another model took its place
    code, printed = _run([*arguments, "--out", str(tmp_path / "changed")], capsys)
    assert code == 2 and "not the expected" in printed
    assert not (tmp_path / "gone").exists() and not (tmp_path / "changed").exists()
    shutil.rmtree(init)
    moved.rename(init)


def test_retrain_without_a_recorded_recipe_needs_one_stated(user_data, tmp_path, capsys):
    checkpoint = export_meru_checkpoint(build_model("tiny", "lorentz"), tmp_path / "meru.pth")
    train, test = user_data["tar"]
    arguments = ["unlearn", "--checkpoint", str(checkpoint), "--data", str(train), "--test-data", str(test),
                 "--forget", "bird", "--method", "retrain", "--quiet"]
    for extra in ([], ["--set", "seed=3"]):  # a seed alone is no recipe
        code, printed = _run([*arguments, *extra, "--out", str(tmp_path / "refused")], capsys)
        assert code == 2 and "records none" in printed and "--set steps=" in printed
        assert not (tmp_path / "refused").exists()
    code, printed = _run([*arguments, "--set", "steps=2", "--set", "batch_size=4", "--out", str(tmp_path / "ok")], capsys)
    assert code == 0, printed
    config = _results(tmp_path / "ok")["config"]
    expected = PretrainConfig(model="tiny", geometry="lorentz", steps=2, batch_size=4).to_dict()
    assert config == {**json.loads(json.dumps(expected)), "recipe_source": "stated"}


def test_the_python_api_refuses_an_oracle_without_a_recipe():
    data = load_builtin("digits", "train").subset(range(40))
    splits = make_splits(data, data, UnlearningRequest(concepts=("seven",)))
    with pytest.raises(ConfigError, match="records none"):
        unlearn(build_model("tiny", "lorentz"), splits, "retrain", progress=False, seed=1)


# ------------------------------------------------------------------------------ prompts and classes


def test_prompts_reach_every_zero_shot_evaluation_and_are_recorded(scratch_run, user_data, tmp_path, capsys,
                                                                   monkeypatch):
    seen: list[list[list[str]]] = []
    original = zero_shot.class_embeddings
    spy = lambda model, tokenizer, prompts: seen.append(prompts) or original(model, tokenizer, prompts)  # noqa: E731
    monkeypatch.setattr(zero_shot, "class_embeddings", spy)
    monkeypatch.setattr("vlunlearn.unlearning.class_embeddings", spy)  # the early-stop check
    train, test = user_data["csv"]
    data = ["--data", str(train), "--test-data", str(test), "--prompt", "a snap of a {}.", "--prompt", "{}, seen"]
    code, printed = _run(["unlearn", "--checkpoint", str(scratch_run / "model"), *data, "--forget", "cat",
                          "--method", "ac", "--set", "steps=1", "--early-stop", "0", "--quiet",
                          "--out", str(tmp_path / "u")], capsys)
    assert code == 0, printed
    code, printed = _run(["evaluate", "--checkpoint", str(tmp_path / "u" / "model"), *data, "--quiet",
                          "--out", str(tmp_path / "e")], capsys)
    assert code == 0, printed
    assert _results(tmp_path / "u")["prompt_templates"] == _results(tmp_path / "e")["prompt_templates"] == \
        ["a snap of a {}.", "{}, seen"]
    assert len(seen) >= 4 and all(p[0] == ["a snap of a bird.", "bird, seen"] for p in seen)  # classes: bird, cat, dog

    for command in (["unlearn", "--checkpoint", str(scratch_run / "model"), "--forget", "cat"],
                    ["evaluate", "--checkpoint", str(tmp_path / "u" / "model")]):
        code, printed = _run([*command, *data[:4], "--prompt", "a {} or {}", "--quiet", "--out", str(tmp_path / "bad")],
                             capsys)
        assert code == 2 and "exactly one '{}'" in printed and not (tmp_path / "bad").exists()


def _multi_concept_data() -> PairDataset:
    concepts = [{"cat", "pet"}, {"dog", "pet"}, {"cat"}, {"bird"}, {"cat", "dog"}]
    return PairDataset("tags", torch.zeros(5, 3, 2, 2, dtype=torch.uint8), [("x",)] * 5, concepts,
                       [-1, -1, 1, 0, -1], [f"i{i}" for i in range(5)], ("bird", "cat", "dog", "pet"))


def test_classes_relabel_items_by_the_one_listed_concept_they_show():
    relabelled = restrict_classes(_multi_concept_data(), ["cat", "dog"])
    assert relabelled.class_names == ("cat", "dog") and relabelled.labels.tolist() == [0, 1, 0, -1, -1]
    assert relabelled.concepts == _multi_concept_data().concepts  # only the labels change
    for names, message in ((["cat", "lion"], "has no item of \\['lion'\\]"), ([], "one or more"),
                           (["cat", "cat"], "repeats")):
        with pytest.raises(DataError, match=message):
            restrict_classes(_multi_concept_data(), names)
    digits = load_builtin("digits", "test")
    assert restrict_classes(digits, ["seven", "one"]).labels.eq(0).sum() == (digits.labels == 7).sum()
    with pytest.raises(DataError, match="most specific concepts"):
        restrict_classes(digits, ["odd"])  # a family of the digits hierarchy, not a class


def test_classes_apply_to_both_splits_and_are_recorded(scratch_run, user_data, tmp_path, capsys):
    train, test = user_data["jsonl"]
    source = DataSource(str(train), str(test), classes=("dog", "cat"))
    train_data, test_data = source.load(load_model(scratch_run / "model").config)
    assert train_data.class_names == test_data.class_names == ("dog", "cat")
    assert (train_data.labels >= 0).sum() == 8 and (test_data.labels >= 0).sum() == 4  # birds have no class now
    code, printed = _run(["unlearn", "--checkpoint", str(scratch_run / "model"), "--data", str(train), "--test-data",
                          str(test), "--classes", "dog,cat", "--forget", "cat", "--method", "ac", "--set", "steps=1",
                          "--quiet", "--out", str(tmp_path / "u")], capsys)
    assert code == 0, printed
    record = _results(tmp_path / "u")
    assert record["data"]["classes"] == ["dog", "cat"]
    assert record["data"]["train_hash"] == train_data.content_hash()


def test_the_test_split_is_labelled_on_the_training_classes(user_data, tmp_path):
    train, _ = user_data["csv"]
    fewer = tmp_path / "test.csv"  # a test split without birds
    fewer.write_text("".join(line for line in Path(user_data["csv"][1]).read_text().splitlines(keepends=True)
                             if "bird" not in line).replace("images/", f"{Path(train).parent}/images/"))
    train_data, test_data = load_data(str(train), str(fewer), build_model("tiny").config)
    assert test_data.class_names == train_data.class_names == ("bird", "cat", "dog")
    assert sorted(test_data.labels.tolist()) == [1, 1, 2, 2]
    unknown = tmp_path / "unknown.csv"
    unknown.write_text(fewer.read_text().replace(",cat\n", ",lion\n"))
    with pytest.raises(DataError, match="lion"):
        load_data(str(train), str(unknown), build_model("tiny").config)


# ------------------------------------------------------------------------------------------- study


def test_a_study_file_with_prompts_and_classes_parses(tmp_path):
    text = ('name = "s"\ndata = "digits"\nlabels = ["ac"]\nprompts = ["a drawing of a {}."]\n'
            'classes = ["seven", "one"]\n[[requests]]\nkind = "concepts"\nsizes = [1]\n')
    (tmp_path / "study.toml").write_text(text)
    spec = load_spec(tmp_path / "study.toml")
    assert spec.prompts == ("a drawing of a {}.",) and spec.classes == ("seven", "one")
    assert spec.to_dict()["prompts"] == ["a drawing of a {}."] and spec.to_dict()["classes"] == ["seven", "one"]
    train, test = study_data(spec)
    assert train.class_names == test.class_names == ("seven", "one")
    for old, new, message in (('["a drawing of a {}."]', '["a drawing"]', "prompts: prompt templates"),
                              ('["seven", "one"]', '"seven"', "classes must be a list")):
        (tmp_path / "bad.toml").write_text(text.replace(old, new))
        with pytest.raises(ConfigError, match=message):
            load_spec(tmp_path / "bad.toml")


def test_a_model_near_chance_and_an_oracle_that_did_not_learn_are_warned_about():
    from vlunlearn.workflows import _near_chance, _oracle_check

    ten = PairDataset("ten", torch.zeros(10, 3, 4, 4, dtype=torch.uint8), [("c",)] * 10, [frozenset()] * 10,
                      torch.arange(10), [str(i) for i in range(10)], tuple("abcdefghij"))
    assert _near_chance({"zero_shot_test": {"micro": 14.0}}, ten)  # chance is 10%: 14% has not learned
    assert not _near_chance({"zero_shot_test": {"micro": 21.0}}, ten)
    assert not _near_chance({"retrieval_test": {}}, ten)  # no classes: nothing to compare
    assert _oracle_check({"zs_test_retain": 70.0}, {"zs_test_retain": 0.0})
    assert not _oracle_check({"zs_test_retain": 70.0}, {"zs_test_retain": 36.0})
    assert not _oracle_check({"zs_test_retain": 70.0}, {"zs_test_retain": float("nan")})
