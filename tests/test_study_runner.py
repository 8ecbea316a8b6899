"""Studies: spec files, the grid and its draws, the runner (records, resume, failures, executors)."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from vlunlearn.cli import main
from vlunlearn.data import load_builtin
from vlunlearn.errors import ConfigError
from vlunlearn.study import Geometry, RequestSpec, StudySpec, Variant, cells, load_spec, preset, run_study
from vlunlearn.study import grid as grid_module
from vlunlearn.study import runner
from vlunlearn.study.grid import draw_concepts, draw_samples, waves

TOML = """
name = "mine"
data = "digits"
seeds = [0, 1]
claims = ["hac.lower_forget"]
geometries = ["euclidean", {name = "lorentz", checkpoint = "models/meru"}]
recipe = {steps = 20}
method_overrides = {steps = 2}
labels = ["ac", {label = "hac-no-ec", method = "hac", settings = {lambda_ec = 0}, geometries = ["lorentz"]}]

[[requests]]
kind = "concepts"
sizes = [1, 2]
"""

YAML = """
name: mine
data: digits
seeds: [0, 1]
claims: [hac.lower_forget]
geometries: [euclidean, {name: lorentz, checkpoint: models/meru}]
recipe: {steps: 20}
method_overrides: {steps: 2}
labels:
  - ac
  - {label: hac-no-ec, method: hac, settings: {lambda_ec: 0}, geometries: [lorentz]}
requests:
  - {kind: concepts, sizes: [1, 2]}
"""

TINY_RECIPE = {"model": "tiny-scenes", "steps": 5, "batch_size": 32}
TINY_METHODS = {"steps": 2, "retain_batch_size": 16, "forget_batch_size": 8}


def tiny_spec(labels=(Variant("finetune", "finetune"),), seeds=(0,), sizes=(1,)) -> StudySpec:
    return StudySpec("tiny", "digits", dict(TINY_RECIPE), (Geometry("euclidean"),), labels,
                     (RequestSpec("concepts", sizes),), seeds, method_overrides=dict(TINY_METHODS))


def small_digits(name, split):
    return load_builtin(name, split).subset(range(400 if split == "train" else 200))


@pytest.fixture
def small_data(monkeypatch):
    """Digits cut to 400 training and 200 test items, in this process (not in spawned workers)."""
    monkeypatch.setattr("vlunlearn.data.sources.load_builtin", small_digits)
    monkeypatch.setattr(grid_module, "_DATA", {})


# ----------------------------------------------------------------------------------------- specs


@pytest.mark.parametrize("name, text", [("study.toml", TOML), ("study.yaml", YAML)])
def test_a_study_file_reads_the_same_in_toml_and_yaml(tmp_path, name, text):
    if name.endswith(".yaml"):
        pytest.importorskip("yaml")  # PyYAML: optional, for YAML study files
    path = tmp_path / name
    path.write_text(text)
    spec = load_spec(path)
    assert spec.name == "mine" and spec.data == "digits" and spec.seeds == (0, 1) and spec.claims == ("hac.lower_forget",)
    assert spec.geometries == (Geometry("euclidean"), Geometry("lorentz", str(tmp_path / "models" / "meru")))
    assert spec.recipe == {"steps": 20}  # the demo's digits recipe, with the file's steps
    assert [v.label for v in spec.labels] == ["original", "retrain", "ac", "hac-no-ec"]  # original, retrain added
    assert spec.labels[3] == Variant("hac-no-ec", "hac", {"lambda_ec": 0}, ("lorentz",))
    assert spec.method_settings(spec.labels[3]) == {"steps": 2, "lambda_ec": 0}
    assert spec.method_settings(spec.labels[1]) == {}  # method_overrides are for methods, not the oracle
    assert spec.requests == (RequestSpec("concepts", (1, 2)),)
    assert spec.to_dict() == load_spec(path).to_dict()
    assert spec.with_seeds(3).seeds == (0, 1, 2)


def test_the_default_recipe_is_the_demos_with_the_files_changes(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('data = "fashion-scenes"\nlabels = ["ac"]\nrequests = [{kind = "concepts", sizes = [1]}]\n'
                    'recipe = {steps = 7}\n')
    spec = load_spec(path)
    assert spec.recipe == {"model": "tiny-scenes", "steps": 7, "batch_size": 128, "lr": 1e-3}
    assert spec.name == "s" and spec.seeds == (0,) and [g.name for g in spec.geometries] == ["euclidean", "lorentz"]


@pytest.mark.parametrize("replace, expected", [
    (('name = "mine"', 'name = "mine"\nseed = [1]'), "unknown key(s) ['seed'] in the study"),
    (("kind = ", "kinds = "), "unknown key(s) ['kinds'] in requests[0]"),
    (("lambda_ec = 0", "lambda_ec = 'x'"), "label 'hac-no-ec': setting lambda_ec='x' is not a valid float"),
    (("lambda_ec = 0", "lambda_xx = 0"), "label 'hac-no-ec': unknown setting(s) ['lambda_xx']"),
    (('"ac"', '"no-such"'), "label 'no-such': unknown method 'no-such'"),
    (("sizes = [1, 2]", "sizes = [0.5]"), "requests[0]: concepts request size 0.5"),
    (("recipe = {steps = 20}", "recipe = {stpes = 20}"), "recipe: unknown key(s) ['stpes']"),
    (("recipe = {steps = 20}", "recipe = {geometry = 'lorentz'}"), "recipe: unknown key(s) ['geometry']"),
    (("method_overrides = {steps = 2}", "method_overrides = {lambda_ec = 2}"), "method_overrides: unknown setting"),
    (('"euclidean", {', '"hyperbolic", {'), "geometries[0]: unknown geometry 'hyperbolic'"),
    (("seeds = [0, 1]", "seeds = [0, 0]"), "seeds repeat ['0']"),
    (("[[requests]]", "[[requests]\n"), "study.toml"),  # not TOML
])
def test_a_bad_study_file_names_the_file_and_the_key(tmp_path, replace, expected):
    path = tmp_path / "study.toml"
    path.write_text(TOML.replace(*replace))
    with pytest.raises(ConfigError) as error:
        load_spec(path)
    assert str(error.value).startswith(f"{path}:") and expected in str(error.value)


def test_other_study_file_errors(tmp_path):
    (tmp_path / "s.json").write_text("{}")
    with pytest.raises(ConfigError, match="ends in .toml, .yaml or .yml"):
        load_spec(tmp_path / "s.json")
    with pytest.raises(ConfigError, match="cannot read"):
        load_spec(tmp_path / "missing.toml")
    pytest.importorskip("yaml")
    (tmp_path / "s.yaml").write_text("labels: [ac\n")
    with pytest.raises(ConfigError, match="s.yaml"):
        load_spec(tmp_path / "s.yaml")
    (tmp_path / "t.yaml").write_text("data: digits\n")
    with pytest.raises(ConfigError, match="needs the keys 'data', 'labels' and 'requests'"):
        load_spec(tmp_path / "t.yaml")


def test_reserved_labels_and_request_sizes_are_checked():
    with pytest.raises(ConfigError, match="has the label 'retrain'"):
        Variant("oracle", "retrain")
    with pytest.raises(ConfigError, match="takes no settings"):
        Variant("original", "original", {"steps": 1})
    with pytest.raises(ConfigError, match="a fraction in"):
        RequestSpec("samples", (1.5,))
    with pytest.raises(ConfigError, match="repeat"):
        RequestSpec("samples", (0.1, 0.1))
    assert RequestSpec("samples", (0.01, 30)).sizes == (0.01, 30)


# ------------------------------------------------------------------------------------------ grid


def test_draws_are_fixed_by_seed_and_size():
    names = tuple(f"c{i}" for i in range(10))
    assert draw_concepts(names, 0, 3) == draw_concepts(names, 0, 3)
    assert len(draw_concepts(names, 0, 3)) == 3 and set(draw_concepts(names, 0, 3)) <= set(names)
    assert [draw_concepts(names, seed, 3) for seed in range(5)] != [draw_concepts(names, 0, 3)] * 5
    assert draw_concepts(names, 1, 2) == [n for n in names if n in draw_concepts(names, 1, 2)]  # class order
    with pytest.raises(ConfigError, match="at least one must be retained"):
        draw_concepts(names, 0, 10)
    ids = tuple(str(i) for i in range(200))
    assert len(draw_samples(ids, 0, 0.05)) == 10 and len(draw_samples(ids, 0, 7)) == 7
    assert draw_samples(ids, 2, 0.05) == draw_samples(ids, 2, 0.05) != draw_samples(ids, 3, 0.05)


def test_the_grid_shares_draws_across_labels_and_orders_dependencies():
    train = load_builtin("digits", "train")
    spec = tiny_spec(labels=(Variant("ac", "ac"), Variant("hac", "hac", geometries=("lorentz",))), seeds=(0, 1), sizes=(1, 3))
    spec = replace(spec, geometries=(Geometry("euclidean"), Geometry("lorentz")))
    grid = cells(spec, train, models={"euclidean": "tiny-scenes", "lorentz": "tiny-scenes"})
    ids = [c.id for c in grid]
    assert len(ids) == len(set(ids)) == 2 * 2 * 3 + 2 * 2 * 4  # hac only in lorentz
    assert "lorentz-s1-c3-hac" in ids and "euclidean-s0-c1-hac" not in ids
    draws = {}
    for cell in grid:
        draws.setdefault((cell.seed, cell.request["size"]), set()).add(tuple(cell.request["concepts"]))
    assert len(draws) == 4 and all(len(drawn) == 1 for drawn in draws.values())  # one per (seed, size)
    assert draws[(0, 3)] != draws[(1, 3)]
    by_id = {c.id: c for c in grid}
    assert by_id["lorentz-s1-c1-original"].pretrains and by_id["lorentz-s1-c1-original"].depends_on == ()
    assert by_id["lorentz-s1-c3-original"].depends_on == ("lorentz-s1-c1-original",)
    assert by_id["lorentz-s1-c3-retrain"].depends_on == ("lorentz-s1-c1-original",)
    assert by_id["lorentz-s1-c3-hac"].depends_on == ("lorentz-s1-c3-original", "lorentz-s1-c3-retrain")
    assert by_id["lorentz-s1-c3-hac"].original == "lorentz-s1-c1-original"
    assert by_id["lorentz-s1-c3-hac"].oracle == "lorentz-s1-c3-retrain"
    assert by_id["lorentz-s1-c3-hac"].settings == TINY_METHODS
    assert [sorted({c.label for c in wave}) for wave in waves(grid)] == [
        ["original"], ["original", "retrain"], ["ac", "hac"]]
    assert [len(w) for w in waves(grid)] == [4, 4 + 8, 12]


def test_a_checkpoint_geometry_has_no_pretraining_cell():
    train = load_builtin("digits", "train")
    spec = replace(tiny_spec(), geometries=(Geometry("lorentz", "/models/meru"),))
    grid = cells(spec, train, models={"lorentz": "meru-vit-s"})
    assert not any(c.pretrains for c in grid) and {c.checkpoint for c in grid} == {"/models/meru"}
    assert [sorted(c.label for c in wave) for wave in waves(grid)] == [["original", "retrain"], ["finetune"]]
    assert {c.model for c in grid} == {"meru-vit-s"}


def test_sample_requests_in_the_grid():
    train = load_builtin("digits", "train")
    spec = replace(tiny_spec(), requests=(RequestSpec("samples", (0.05, 12)),))
    grid = cells(spec, train, models={"euclidean": "tiny-scenes"})
    first = next(c for c in grid if c.id == "euclidean-s0-f0.05-finetune")
    assert first.request["count"] == round(0.05 * len(train)) == len(first.request["sample_ids"])
    assert first.record_request() == {"kind": "samples", "size": 0.05, "count": round(0.05 * len(train))}
    assert next(c for c in grid if c.id == "euclidean-s0-n12-original").request["count"] == 12


def test_the_presets_are_the_papers_grids():
    hac = preset("hac")
    assert [g.name for g in hac.geometries] == ["euclidean", "lorentz"] and hac.seeds == (0, 1, 2)
    assert hac.requests == (RequestSpec("concepts", (1, 2, 4, 6)),) and hac.recipe["model"] == "tiny-scenes"
    labels = {v.label: v for v in hac.labels}
    assert {"finetune", "neggrad_plus", "random_pairs", "salun", "scrub", "ac", "hac", "multidelete"} <= set(labels)
    assert labels["hac-no-ec"].settings == {"lambda_ec": 0.0} and labels["hac-learn-curv"].settings == {"learn_curvature": True}
    assert all(v.geometries == ("lorentz",) for v in hac.labels if v.method == "hac")
    md = preset("multidelete")
    assert md.requests == (RequestSpec("samples", (0.01, 0.02, 0.05)),)
    assert {v.label: v.settings for v in md.labels if v.method == "multidelete"} == {
        "multidelete": {}, "md-no-md": {"lambda_md": 0.0}, "md-no-mkr": {"lambda_mkr": 0.0}, "md-no-ukr": {"lambda_ukr": 0.0}}
    quick = preset("hac", quick=True)
    assert quick.seeds == (0, 1) and quick.recipe["steps"] < hac.recipe["steps"]
    with pytest.raises(ConfigError, match="unknown study preset"):
        preset("nope")


# ---------------------------------------------------------------------------------------- runner


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_study_runs_records_resumes_and_survives_a_failed_cell(tmp_path, small_data, capsys):
    """End to end through the CLI on tiny digits: original, oracle, finetune, and hac, which fails
    on a Euclidean model without stopping the others; a rerun skips what is done."""
    spec_file = tmp_path / "tiny.toml"
    spec_file.write_text(
        'name = "tiny"\ndata = "digits"\ngeometries = ["euclidean"]\nseeds = [5, 6]\nlabels = ["finetune", "hac"]\n'
        'recipe = {model = "tiny-scenes", steps = 5, batch_size = 32}\n'
        'method_overrides = {steps = 2, retain_batch_size = 16, forget_batch_size = 8}\n'
        'requests = [{kind = "concepts", sizes = [2]}]\n')
    out = tmp_path / "study"
    assert main(["study", str(spec_file), "--out", str(out), "--seeds", "1"]) == 0
    printed = capsys.readouterr()
    assert "euclidean-s0-c2-hac: FAILED: ConfigError: hac needs a hyperbolic" in printed.out
    assert "1 cell(s) failed" in printed.err
    cell = out / "cells"
    failed = json.loads((cell / "euclidean-s0-c2-hac" / "failed.json").read_text())
    assert failed["cell"] == "euclidean-s0-c2-hac" and "Traceback" in failed["traceback"]
    records = {name: json.loads((cell / f"euclidean-s0-c2-{name}" / "record.json").read_text())
               for name in ("original", "retrain", "finetune")}
    finetune, retrain, original = records["finetune"], records["retrain"], records["original"]
    assert {k: finetune[k] for k in ("cell", "study", "label", "method", "settings", "geometry", "model", "data", "seed")} == {
        "cell": "euclidean-s0-c2-finetune", "study": "tiny", "label": "finetune", "method": "finetune",
        "settings": TINY_METHODS, "geometry": "euclidean", "model": "tiny-scenes", "data": "digits", "seed": 0}
    assert finetune["request"] == original["request"] == retrain["request"]
    assert finetune["request"]["size"] == 2 and len(finetune["request"]["concepts"]) == 2
    assert finetune["metrics"]["steps"] == 2 and retrain["metrics"]["steps"] == original["metrics"]["steps"] == 5
    assert finetune["metrics"]["ratio_to_retrain"] == pytest.approx(finetune["metrics"]["seconds"] / retrain["metrics"]["seconds"])
    assert original["metrics"]["ratio_to_retrain"] is None and retrain["metrics"]["ratio_to_retrain"] is None
    assert "ks_pvalue" in finetune["metrics"] and "ks_pvalue" not in original["metrics"]  # the oracle's scores were used
    assert "forget_pair_scores" in retrain["artifacts"] and "forget_pair_scores" not in finetune["artifacts"]
    assert {"zs_test_forget", "zs_test_retain", "distinguishability", "mia_auc"} <= set(finetune["metrics"])
    assert (cell / "euclidean-s0-c2-original" / "model").is_dir() and (cell / "euclidean-s0-c2-retrain" / "model").is_dir()
    assert not (cell / "euclidean-s0-c2-finetune" / "model").exists()
    study = json.loads((out / "study.json").read_text())
    assert study["spec"]["seeds"] == [0] and len(study["grid"]) == 4 and study["data"]["train_hash"]

    before = _files(cell)
    counts = run_study(load_spec(spec_file).with_seeds(1), out, progress=False)
    assert {k: counts[k] for k in ("done", "skipped", "failed")} == {"done": 0, "skipped": 3, "failed": 1}
    after = _files(cell)
    assert {k: v for k, v in after.items() if "hac" not in k} == {k: v for k, v in before.items() if "hac" not in k}
    with pytest.raises(ConfigError, match="different seeds"):
        run_study(load_spec(spec_file), out, progress=False)


def _fake_record(spec, cell, out):
    if cell.label == "retrain" and cell.seed == 1:
        raise RuntimeError("the oracle broke\non two lines")
    return {"cell": cell.id, "label": cell.label, "metrics": {"seconds": 1.0}}


def test_cells_that_need_a_failed_cell_fail_and_a_rerun_retries_them(tmp_path, small_data, monkeypatch):
    monkeypatch.setattr(runner, "cell_record", _fake_record)
    monkeypatch.setattr(runner, "write_study_report", lambda out: out / "report.md")  # fake records: nothing to report
    spec = tiny_spec(seeds=(0, 1))
    counts = run_study(spec, tmp_path / "s", progress=False)
    assert {k: counts[k] for k in ("done", "skipped", "failed")} == {"done": 4, "skipped": 0, "failed": 2}
    cell = tmp_path / "s" / "cells"
    assert json.loads((cell / "euclidean-s1-c1-retrain" / "failed.json").read_text())["error"] == \
        "RuntimeError: the oracle broke on two lines"
    assert json.loads((cell / "euclidean-s1-c1-finetune" / "failed.json").read_text())["error"] == \
        "dependency euclidean-s1-c1-retrain failed"
    assert (cell / "euclidean-s0-c1-finetune" / "record.json").is_file()

    monkeypatch.setattr(runner, "cell_record", lambda spec, cell, out: {"cell": cell.id})
    counts = run_study(spec, tmp_path / "s", progress=False)
    assert {k: counts[k] for k in ("done", "skipped", "failed")} == {"done": 2, "skipped": 4, "failed": 0}
    assert not (cell / "euclidean-s1-c1-finetune" / "failed.json").exists()


def test_a_folder_that_is_not_this_study_is_refused(tmp_path, small_data, monkeypatch):
    monkeypatch.setattr(runner, "cell_record", lambda spec, cell, out: {"cell": cell.id})
    monkeypatch.setattr(runner, "write_study_report", lambda out: out / "report.md")  # fake records: nothing to report
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a study folder"):
        run_study(tiny_spec(), tmp_path / "other", progress=False)
    run_study(tiny_spec(), tmp_path / "s", progress=False)
    with pytest.raises(ConfigError, match="different labels, method_overrides"):
        run_study(replace(tiny_spec(), labels=(), method_overrides={}), tmp_path / "s", progress=False)
    with pytest.raises(ConfigError, match="unknown executor"):
        run_study(tiny_spec(), tmp_path / "s", executor="pbs")
    pytest.importorskip("submitit")
    monkeypatch.setattr(runner.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="sbatch, which is not on this machine"):
        run_study(tiny_spec(), tmp_path / "new", executor="slurm")
    assert not (tmp_path / "new").exists()


def test_the_cli_refuses_quick_for_a_file_and_unknown_studies(tmp_path, capsys):
    (tmp_path / "s.toml").write_text("")
    assert main(["study", str(tmp_path / "s.toml"), "--quick", "--out", str(tmp_path / "o")]) == 2
    assert main(["study", "nope", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--quick reduces the presets" in err and "neither a preset (hac, multidelete) nor a study file" in err


def _check_two_seed_study(out: Path, counts: dict) -> None:
    assert {k: counts[k] for k in ("done", "skipped", "failed")} == {"done": 6, "skipped": 0, "failed": 0}
    records = [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*/record.json"))]
    assert sorted(r["cell"] for r in records) == [f"euclidean-s{s}-c1-{label}" for s in (0, 1)
                                                  for label in ("finetune", "original", "retrain")]
    for record in records:
        assert record["metrics"]["seconds"] > 0


@pytest.mark.slow
def test_local_worker_processes(tmp_path):
    out = tmp_path / "s"
    _check_two_seed_study(out, run_study(tiny_spec(seeds=(0, 1)), out, jobs=2, progress=False))


@pytest.mark.slow
def test_the_submitit_executor_on_this_machine(tmp_path):
    pytest.importorskip("submitit")
    out = tmp_path / "s"
    counts = run_study(tiny_spec(seeds=(0, 1)), out, executor="slurm", cluster="local", progress=False,
                       executor_parameters={"timeout_min": 10})
    _check_two_seed_study(out, counts)
    assert any((out / "slurm").iterdir())  # submitit's job folder


@pytest.mark.slow
def test_the_quick_hac_preset_runs_without_failures(tmp_path):
    """The smoke run of issue 13 (about 10 minutes on 2 cores)."""
    counts = run_study(preset("hac", quick=True), tmp_path / "q", jobs=2, progress=False)
    assert counts["failed"] == 0 and counts["done"] == len(cells(preset("hac", quick=True)))
    assert (tmp_path / "q" / "report.md").is_file()
