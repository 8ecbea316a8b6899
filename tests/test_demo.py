"""The demo end to end on a shortened budget: every method, every record, the report and the table."""

import json

from vlunlearn import demo
from vlunlearn.data import load_builtin
from vlunlearn.cli import main


EVERY_MODEL = (
    "zs_test_forget", "zs_test_retain", "zs_train_forget", "zs_train_retain", "zs_test_forget_top5",
    "zs_test_retain_macro", "zs_train_retain_top5_macro", "det_ap_forget", "det_ap_retain",
    "retrieval_test_i2t_r1", "retrieval_test_t2i_r10", "retrieval_forget_i2t_r5", "retrieval_retain_t2i_r1",
    "mia_auc", "mia_auc_low", "mia_auc_high", "mia_balanced_accuracy", "mia_tpr_at_1_fpr", "mia_members",
    "mia_calibrated_auc", "mia_calibrated_auc_low", "mia_calibrated_auc_high", "mia_calibrated_tpr_at_1_fpr",
    "distinguishability", "alignment_gap", "landing_same", "landing_sibling", "landing_parent", "landing_other",
    "tree_tie", "tree_lca", "tree_jaccard", "tree_hp", "tree_hr", "seconds", "steps",
)
HYPERBOLIC = (
    "entailment_rate_forget", "entailment_rate_test_forget", "entailment_rate_retain", "d0_text_generic",
    "d0_text_class", "d0_test_inputs", "d0_concept_seven", "d0_concept_one", "forget_input_d0",
)


def _small_digits(name, split):
    data = load_builtin(name, split)
    return data.subset(range(400 if split == "train" else 200))


def test_demo_writes_a_complete_report(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "DEMO_RECIPES", {"digits": {"steps": 20}})
    monkeypatch.setattr(demo, "METHOD_STEPS", 2)
    monkeypatch.setattr(demo, "load_builtin", _small_digits)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert main(["demo", "--data", "digits", "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["schema_version"] == 1
    methods = {(r["geometry"], r["method"]) for r in results["records"]}
    assert ("lorentz", "hac") in methods and ("euclidean", "hac") not in methods
    assert {("euclidean", "original"), ("euclidean", "retrain"), ("lorentz", "retrain"), ("lorentz", "multidelete")} <= methods
    for record in results["records"]:
        assert record["forget"] == ["seven"] and record["seed"] == 0
        expected = EVERY_MODEL + (HYPERBOLIC if record["geometry"] == "lorentz" else ())
        expected += ("ks_statistic", "ks_pvalue") if record["method"] != "retrain" else ()
        expected += ("peak_memory_bytes",) if record["method"] != "original" else ()
        missing = [key for key in expected if key not in record["metrics"]]
        assert not missing, (record["geometry"], record["method"], missing)
    report = (out / "report.md").read_text()
    rows = report.splitlines()
    # one oracle row per geometry's table, with its gap to itself ("n/a" when a table has no oracle)
    assert sum(row.startswith("| retrain |") and row.endswith("| 0.000 |") for row in rows) == 2
    assert any(row.startswith(("| hac |", "| **hac** |")) for row in rows)
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert "scatter.png" in figures and any(name.startswith("disk_lorentz") for name in figures)
    stdout = capsys.readouterr().out
    assert "Report:" in stdout and "hac" in stdout
    # the pretrained originals are cached: a second demo reuses them
    cached = sorted(p.name for p in (tmp_path / "cache" / "vlunlearn").iterdir())
    assert cached == ["digits-tiny-euclidean-20x256-seed0", "digits-tiny-lorentz-20x256-seed0"]
