"""The README walk-through, end to end through the ``vlunlearn`` command, on a small users' folder
written by ``scripts/export_image_folder.py``: pretrain on the folder (its hierarchy implied by the
concept lists), forget a concept with HAC, retrain the oracle, evaluate, and read the report."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from vlunlearn.cli import main
from vlunlearn.data.sources import load_data
from vlunlearn.models.configs import model_config

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "export_image_folder.py"
LIMIT = 60  # images per split: 6 of each digit
RECIPE = ["--model", "tiny", "--geometry", "lorentz", "--steps", "4", "--batch-size", "16"]
HAC_BUDGET = ["--set", "steps=2", "--set", "retain_batch_size=16", "--set", "forget_batch_size=8"]


def _exporter():
    spec = importlib.util.spec_from_file_location("export_image_folder", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(arguments: list[str]) -> str:
    """``vlunlearn ARGUMENTS`` in this process; its stdout. Fails the test on a non-zero exit."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main([*arguments, "--quiet"])
    assert code == 0, f"vlunlearn {' '.join(arguments)} exited {code}"
    return stdout.getvalue()


def _results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory) -> dict[str, Path]:
    """Every step of the README walk-through, run once: the run folders by step."""
    root = tmp_path_factory.mktemp("walkthrough")
    images, runs = root / "my-images", root / "runs"
    with contextlib.redirect_stdout(io.StringIO()):
        assert _exporter().main(["--out", str(images), "--limit", str(LIMIT)]) == 0
    data = ["--data", str(images / "train.jsonl"), "--test-data", str(images / "test.jsonl")]
    _run(["pretrain", *data, *RECIPE, "--out", str(runs / "mine")])
    request = ["--checkpoint", str(runs / "mine" / "model"), *data, "--forget", "seven"]
    _run(["unlearn", *request, "--method", "hac", *HAC_BUDGET, "--out", str(runs / "mine-hac")])
    _run(["unlearn", *request, "--method", "retrain", "--out", str(runs / "mine-retrain")])
    _run(["evaluate", "--checkpoint", str(runs / "mine-hac" / "model"),
          "--retrain", str(runs / "mine-retrain" / "model"), *data, "--out", str(runs / "mine-audit")])
    return {"images": images, "pretrain": runs / "mine", "hac": runs / "mine-hac", "retrain": runs / "mine-retrain",
            "audit": runs / "mine-audit"}


def test_the_exported_folder_is_a_users_folder_without_a_hierarchy_file(walkthrough):
    images = walkthrough["images"]
    assert sorted(p.name for p in images.iterdir()) == ["images", "test.jsonl", "train.jsonl"]
    rows = [json.loads(line) for line in (images / "train.jsonl").read_text().splitlines()]
    assert len(rows) == LIMIT and len({row["id"] for row in rows}) == LIMIT
    sevens = [row for row in rows if row["concepts"][0] == "seven"]
    assert len(sevens) == LIMIT // 10
    assert all(row["concepts"] == ["seven", "odd", "number"] and "seven" in row["caption"] for row in sevens)
    assert all((images / row["path"]).is_file() and row["path"].endswith(".png") for row in rows)


def test_every_run_folder_has_its_results(walkthrough):
    for step in ("pretrain", "hac", "retrain", "audit"):
        assert (walkthrough[step] / "results.json").is_file(), step
    assert (walkthrough["audit"] / "report.md").is_file()


def test_pretrain_found_the_implied_hierarchy_and_labelled_every_test_image(walkthrough):
    record = _results(walkthrough["pretrain"])
    description = "\n".join(record["data"]["description"])
    assert "implied by the concept lists" in description
    assert "number > 'even', 'odd'" in description
    assert "odd > 'five', 'nine', 'one', 'seven', 'three'" in description
    assert f"{LIMIT} items: {LIMIT} with a class" in description
    assert record["metrics"]["zero_shot_test"]["count"] == LIMIT  # no test image labelled -1


def test_unlearn_records_the_forget_accuracy_and_the_oracle_its_recipe(walkthrough):
    hac = _results(walkthrough["hac"])
    assert hac["split_sizes"] == {"forget": LIMIT // 10, "retain": LIMIT - LIMIT // 10}
    for model in ("original", "unlearned"):
        assert 0.0 <= hac["metrics"][model]["zs_test_forget"] <= 100.0
    assert hac["run"]["steps"] == 2
    oracle = _results(walkthrough["retrain"])
    assert oracle["config"]["recipe_source"] == "recorded"
    assert oracle["config"]["steps"] == 4 and oracle["config"]["batch_size"] == 16


def test_evaluate_finds_the_original_and_writes_the_zero_shot_rows_of_the_forgotten_concept(walkthrough):
    results = _results(walkthrough["audit"])
    assert results["config"]["request"] == "forget concept seven"  # read from the unlearned model
    records = results["records"]
    assert [r["method"] for r in records] == ["original", "retrain", "hac"]  # the original: where hac started
    assert records[0]["checkpoint"] == str((walkthrough["pretrain"] / "model").resolve())
    report = (walkthrough["audit"] / "report.md").read_text()
    assert "forget: seven" in report
    for record in records:
        forget, retain = record["metrics"]["zs_test_forget"], record["metrics"]["zs_test_retain"]
        assert math.isfinite(forget) and math.isfinite(retain)
        row = rf"\| \**{record['method']}\** \| {forget:.1f} \| {retain:.1f} \|"
        assert re.search(row, report), f"no row {row} in report.md"


def test_concept_paths_give_the_same_classes_and_labels_as_concept_lists(tmp_path):
    exporter = _exporter()
    with contextlib.redirect_stdout(io.StringIO()):
        for folder, extra in (("lists", []), ("paths", ["--paths"])):
            assert exporter.main(["--out", str(tmp_path / folder), "--limit", "20", *extra]) == 0
    first = json.loads((tmp_path / "paths" / "test.jsonl").read_text().splitlines()[0])
    assert len(first["concepts"]) == 1 and first["concepts"][0].startswith("number/")
    config = model_config("tiny", "lorentz")
    lists, paths = (load_data(str(tmp_path / f / "train.jsonl"), str(tmp_path / f / "test.jsonl"), config)
                    for f in ("lists", "paths"))
    for listed, pathed in zip(lists, paths):
        assert listed.class_names == pathed.class_names and listed.labels.tolist() == pathed.labels.tolist()
        assert listed.concepts == pathed.concepts and bool((listed.labels >= 0).all())


def test_the_export_keeps_every_class_and_never_overwrites(tmp_path, capsys):
    exporter = _exporter()
    labels = np.repeat(np.arange(10), [50, 3, 40, 40, 40, 40, 40, 40, 40, 40])
    chosen = exporter.balanced_subset(labels, 25, seed=0)
    assert len(chosen) == 25 and set(labels[chosen]) == set(range(10))
    assert max(np.bincount(labels[chosen])) == 3
    out = tmp_path / "taken"
    out.mkdir()
    with pytest.raises(SystemExit) as error:
        exporter.main(["--out", str(out), "--limit", "5"])
    assert error.value.code == 2 and "exists" in capsys.readouterr().err
    assert list(out.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
