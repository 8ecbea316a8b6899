"""Tests of vlunlearn.report: figures, markdown rendering and the report writer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from vlunlearn.errors import VlunlearnError
from vlunlearn.evaluation.oracle import oracle_gap
from vlunlearn.geometry.lorentz import dist_to_origin, exp_map0
from vlunlearn.report import render_report, write_report
from vlunlearn.report.figures import to_disk_2d

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _metrics(tf, tr, trf, trr, auc, gap, sec):
    return {
        "zs_test_forget": tf, "zs_test_retain": tr, "zs_train_forget": trf, "zs_train_retain": trr,
        "mia_auc": auc, "alignment_gap": gap, "seconds": sec,
    }


def _artifacts(rng, n=6, shift=0.0, lorentz=False):
    a = rng.normal(size=(n, n)) * 0.1 + np.eye(n) * (0.5 - shift)
    art = {"alignment_matrix": a.tolist()}
    if lorentz:
        art["image_d0"] = (rng.random(40) + 1.0 + shift).tolist()
        art["text_d0"] = (rng.random(40) + 0.5).tolist()
        pts = to_disk_2d(exp_map0(torch.randn(30, 8, dtype=torch.float64) * 0.5, 1.0), 1.0)
        art["disk_points"] = pts.tolist()
        art["disk_labels"] = ["sneaker" if i % 2 else "boot" for i in range(30)]
    return art


def _results():
    rng = np.random.default_rng(0)
    lor = {"model": "tiny", "geometry": "lorentz", "forget": ["sneaker"]}
    euc = {"model": "tiny", "geometry": "euclidean", "forget": ["sneaker", "bag"]}
    records = [
        # lorentz group, with retrain; hac listed before retrain to check ordering
        {**lor, "method": "original", "metrics": _metrics(91.0, 82.2, 95.5, 88.0, 0.62, 0.31, 5.7),
         "artifacts": _artifacts(rng, lorentz=True)},
        {**lor, "method": "hac", "metrics": _metrics(12.34, 80.06, 10.0, 85.0, 0.55, 0.05, 1.25),
         "artifacts": _artifacts(rng, shift=0.4, lorentz=True)},
        {**lor, "method": "retrain", "metrics": _metrics(10.0, 81.0, 8.0, 86.0, 0.5, 0.02, 30.0),
         "artifacts": _artifacts(rng, shift=0.45, lorentz=True)},
        # euclidean group, no retrain
        {**euc, "method": "original", "metrics": _metrics(90.0, 80.0, 94.0, 87.0, 0.6, 0.3, 4.0),
         "artifacts": {"alignment_matrix": rng.normal(size=(5, 5)).tolist()}},
        {**euc, "method": "ac", "metrics": _metrics(20.0, 79.0, 15.0, 84.0, 0.52, 0.1, 2.0),
         "artifacts": {"alignment_matrix": rng.normal(size=(5, 5)).tolist()}},
    ]
    return {
        "schema_version": 1,
        "config": {"seed": 0, "epochs": 2},
        "environment": {"torch": torch.__version__},
        "data": {"name": "toyshop", "train_hash": "abcdef0123456789"},
        "records": records,
    }


def test_write_report_creates_every_file(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "run"
    written = write_report(_results(), out)
    expected = {
        "results.json", "report.md", "figures/scatter.png",
        "figures/alignment_lorentz_sneaker.png", "figures/d0_lorentz_sneaker.png",
        "figures/disk_lorentz_sneaker.png", "figures/alignment_euclidean_sneaker+bag.png",
    }
    assert {p.relative_to(out).as_posix() for p in written} == expected
    for path in written:
        assert path.is_file()
        if path.suffix == ".png":
            data = path.read_bytes()
            assert data.startswith(PNG_SIGNATURE)
            assert len(data) > 1024
    # no d0/disk figure for the euclidean group, no temporary files left behind
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(
        p.name for p in written if p.suffix == ".png"
    )
    saved = json.loads((out / "results.json").read_text())
    assert list(saved)[0] == "schema_version" and saved["schema_version"] == 1
    assert len(saved["records"]) == 5
    report = (out / "report.md").read_text()
    for name in expected - {"results.json", "report.md"}:
        assert f"({name})" in report  # relative links


def test_report_numbers_and_oracle_gap(tmp_path):
    pytest.importorskip("matplotlib")
    results = _results()
    out = tmp_path / "run"
    write_report(results, out)
    report = (out / "report.md").read_text()
    # hac row: accuracies 1 decimal, AUC/gap 3 decimals, seconds 1 decimal
    # the only unlearning method of its group is the closest to the oracle, so it is in bold
    hac_row = next(line for line in report.splitlines() if line.startswith("| **hac** "))
    cells = [c.strip() for c in hac_row.strip("|").split("|")]
    # hand-computed oracle gap: |12.34-10|, |80.06-81|, |10-8|, |85-86|, |0.55-0.5| over 5 keys
    expected_gap = (2.34 + 0.94 + 2.0 + 1.0 + 0.05) / 5
    assert cells == ["**hac**", "12.3", "80.1", "10.0", "85.0", "0.550", "0.050", "1.2", f"**{expected_gap:.3f}**"]
    assert f"{expected_gap:.3f}" == "1.266"
    hac = results["records"][1]["metrics"]
    assert math.isclose(oracle_gap(hac, results["records"][2]["metrics"])["mean"], expected_gap)
    # order: original, retrain, then methods; retrain's own gap is 0
    lines = report.splitlines()
    lorentz_rows = [l for l in lines[lines.index(next(l for l in lines if "lorentz" in l and l.startswith("##"))):]
                    if l.startswith("| ") and not l.startswith("| method")][:3]
    assert [r.split("|")[1].strip() for r in lorentz_rows] == ["original", "retrain", "**hac**"]
    assert lorentz_rows[1].rstrip(" |").endswith("0.000")
    # the euclidean group has no retrain: the sentence and n/a gaps
    euc_section = report.split("euclidean", 1)[1].split("## Figures")[0]
    assert "No retrained oracle in this group" in euc_section
    assert "relative to the original model" in euc_section and "there is no oracle" in euc_section
    euc_rows = [l for l in euc_section.splitlines() if l.startswith("| ") and not l.startswith("| method")]
    assert len(euc_rows) == 2 and all(r.rstrip(" |").endswith("n/a") for r in euc_rows)
    assert "No retrained oracle" not in report.split("euclidean", 1)[0]


def test_second_write_refused(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "run"
    write_report(_results(), out)
    before = (out / "results.json").read_bytes()
    with pytest.raises(VlunlearnError):
        write_report(_results(), out)
    assert (out / "results.json").read_bytes() == before


def test_render_report_missing_metric():
    results = _results()
    del results["records"][1]["metrics"]["mia_auc"]
    results["records"][1]["metrics"]["seconds"] = None
    results["records"][4]["metrics"]["alignment_gap"] = float("nan")
    text = render_report(results)
    hac_row = next(line for line in text.splitlines() if line.startswith("| **hac** "))
    cells = [c.strip() for c in hac_row.strip("|").split("|")]
    assert cells[5] == "–" and cells[7] == "–"
    # the oracle gap skips the missing AUC: mean of the 4 accuracy gaps
    assert cells[8] == f"**{(2.34 + 0.94 + 2.0 + 1.0) / 4:.3f}**"
    ac_row = next(line for line in text.splitlines() if line.startswith("| ac "))
    assert ac_row.split("|")[7].strip() == "–"
    assert "toyshop" in text and "## Figures" in text


def test_to_disk_2d_keeps_radius():
    torch.manual_seed(0)
    for c in (0.5, 1.0, 2.0):
        x = exp_map0(torch.randn(50, 16, dtype=torch.float64) * 1.5, c)
        disk = to_disk_2d(x, c)
        assert disk.shape == (50, 2)
        d0 = dist_to_origin(x, c).numpy()
        radius = np.linalg.norm(disk, axis=1)
        np.testing.assert_allclose(radius, np.tanh(math.sqrt(c) * d0 / 2), rtol=1e-6, atol=1e-9)
        assert (radius < 1).all()
    # float32 input and a point at the origin
    x = torch.cat([torch.zeros(1, 4), torch.randn(5, 4)])
    disk = to_disk_2d(x, 1.0)
    assert np.isfinite(disk).all() and np.linalg.norm(disk[0]) == pytest.approx(0.0, abs=1e-6)


def test_figures_individually(tmp_path):
    pytest.importorskip("matplotlib")
    from vlunlearn.report import figures

    p = figures.distance_histograms({"a": [1, 2, 3], "b": [2, 2, 2]}, tmp_path / "h.png", "hist")
    q = figures.poincare_disk({"only": np.zeros((3, 2))}, tmp_path / "d.png", "disk")
    r = figures.forget_retain_scatter(_results()["records"], tmp_path / "s.png", "scatter")
    for path in (p, q, r):
        assert path.read_bytes().startswith(PNG_SIGNATURE)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["d.png", "h.png", "s.png"]


def test_only_the_method_closest_to_the_oracle_is_bold():
    results = _results()
    lor = {"model": "tiny", "geometry": "lorentz", "forget": ["sneaker"]}
    # forget 10.5 vs retrain 10.0 and the rest equal to retrain: gap (0.5) / 5 = 0.1 < hac's 1.266
    results["records"].append({**lor, "method": "ac", "metrics": _metrics(10.5, 81.0, 8.0, 86.0, 0.5, 0.02, 2.0)})
    text = render_report(results)
    assert "| **ac** |" in text and "**0.100**" in text
    assert "| hac |" in text and "| **hac** |" not in text
    assert text.count("| **") == 2  # its name and its oracle gap
