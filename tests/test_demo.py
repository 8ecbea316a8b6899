"""The demo end to end on a shortened budget: every method, every record, the report and the table."""

import json

from vlunlearn import demo
from vlunlearn.cli import main


def test_demo_writes_a_complete_report(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "DEMO_RECIPES", {"digits": {"steps": 20}})
    monkeypatch.setattr(demo, "DEMO_REQUESTS", {"digits": (("seven",),)})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert main(["demo", "--data", "digits", "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["schema_version"] == 1
    methods = {(r["geometry"], r["method"]) for r in results["records"]}
    assert ("lorentz", "hac") in methods and ("euclidean", "hac") not in methods
    assert {("euclidean", "original"), ("euclidean", "retrain"), ("lorentz", "retrain"), ("lorentz", "multidelete")} <= methods
    for record in results["records"]:
        assert record["forget"] == ["seven"]
        for key in ("zs_test_forget", "zs_test_retain", "zs_train_forget", "zs_train_retain", "mia_auc",
                    "alignment_gap", "seconds"):
            assert key in record["metrics"]
    report = (out / "report.md").read_text()
    assert "retrain" in report and "hac" in report
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert "scatter.png" in figures and any(name.startswith("disk_lorentz") for name in figures)
    stdout = capsys.readouterr().out
    assert "Report:" in stdout and "hac" in stdout
    # the pretrained originals are cached: a second demo reuses them
    cached = sorted(p.name for p in (tmp_path / "cache" / "vlunlearn").iterdir())
    assert cached == ["digits-euclidean-20x256-seed0", "digits-lorentz-20x256-seed0"]
