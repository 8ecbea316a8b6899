"""The study analysis on synthetic cell records: paired effects and summaries checked by hand,
claims that must come out supported, contradicted, inconclusive or not measured, and the report
files of a tiny synthetic study folder."""

from __future__ import annotations

import json
import math

import pytest

from vlunlearn.report.merge import seed_spread
from vlunlearn.study.aggregate import RETRIEVAL_TEST, load_records, paired_effect, summarise
from vlunlearn.study.claims import combined_score, evaluate_claims, verdict
from vlunlearn.study.report import write_study_report

T2 = 4.302652729749462  # Student t 0.975 quantile, 2 degrees of freedom
SEEDS = (0, 1, 2)
INF = math.inf


def _record(label, geometry, seed, size, metrics, kind="concepts", method=None, artifacts=None):
    return {"cell": f"{geometry}-s{seed}-{kind}{size}-{label}", "study": "synthetic", "label": label,
            "method": method or label.split("-")[0].replace("md", "multidelete"), "settings": {},
            "geometry": geometry, "model": "tiny", "data": "toy", "request": {"kind": kind, "size": size},
            "seed": seed, "metrics": metrics, "artifacts": artifacts or {}}


def _landing(same, structured, other):
    return {"landing_same": same, "landing_parent": structured / 2, "landing_sibling": structured / 2,
            "landing_child": 0.0, "landing_other": other}


def _hac_study():
    """Concept requests of 1, 2 and 4 classes, 3 seeds. By construction (hac - ac forget = -20 + size + 0.1 seed):
    hac forgets far more than ac with 3 points of retain lost (lower_forget supported), its advantage shrinks
    with the count (scaling contradicted), landing structure varies wildly by seed (hierarchy inconclusive),
    dropping entailment calibration costs 10 points (ablation_ec supported) and dropping the norm term
    gains 2 (ablation_norm contradicted)."""
    records = []
    structured = (0.6, 0.05, 0.3)  # hac's parent + sibling share by seed; ac's is 0.2 of 0.7 off-class
    for seed in SEEDS:
        for size in (1, 2, 4):
            for geometry in ("euclidean", "lorentz"):
                records.append(_record("original", geometry, seed, size, {
                    "zs_test_forget": 80.0, "zs_test_retain": 80.0, **_landing(0.9, 0.08, 0.02)},
                    artifacts={"input_d0": [2.0, 2.1]} if geometry == "lorentz" else None))
                records.append(_record("retrain", geometry, seed, size,
                                       {"zs_test_forget": 0.0, "zs_test_retain": 79.0}))
            ac = 30.0 + 2 * size
            hac = ac - 20 + size + 0.1 * seed
            records.append(_record("ac", "euclidean", seed, size, {
                "zs_test_forget": ac, "zs_test_retain": 78.0, **_landing(0.3, 0.2, 0.5)}))
            records.append(_record("hac", "lorentz", seed, size, {
                "zs_test_forget": hac, "zs_test_retain": 77.0 - 0.1 * seed,
                **_landing(0.3, structured[seed], 0.7 - structured[seed])}, artifacts={"input_d0": [1.0, 1.2]}))
            records.append(_record("hac-no-ec", "lorentz", seed, size, {
                "zs_test_forget": hac + 10 + 0.2 * seed, "zs_test_retain": 77.0}, method="hac"))
            records.append(_record("hac-no-norm", "lorentz", seed, size, {
                "zs_test_forget": hac, "zs_test_retain": 79.0 + 0.1 * seed}, method="hac"))
    return records


def _sample_metrics(distinguishability, zs, rmean, probe):
    return {"distinguishability": distinguishability, "zs_test_retain": zs, "probe_input_retain": probe,
            "probe_text_retain": probe, **dict.fromkeys(RETRIEVAL_TEST, rmean)}


def _md_study():
    """Sample requests of 1% and 2%, 3 seeds, Euclidean: multidelete beats the best baseline (neggrad) on
    distinguishability by 13-16 points, stays within 0.5 points of retraining, and its variant without
    modality decoupling loses 20 points of distinguishability."""
    records = []
    for seed in SEEDS:
        for size in (0.01, 0.02):
            rows = {
                "original": _sample_metrics(0.50, 80.0, 40.0, 90.0),
                "retrain": _sample_metrics(0.60, 79.0, 39.0, 89.0),
                "multidelete": _sample_metrics(0.75 + 0.01 * seed, 79.2 + 0.1 * seed, 39.1, 89.0),
                "finetune": _sample_metrics(0.55, 79.0, 39.0, 89.0),
                "neggrad": _sample_metrics(0.62 - 0.005 * seed, 70.0, 30.0, 80.0),
                "md-no-md": _sample_metrics(0.55 + 0.01 * seed, 79.2 + 0.1 * seed, 39.1, 89.0),
            }
            records += [_record(label, "euclidean", seed, size, metrics, kind="samples")
                        for label, metrics in rows.items()]
    return records


# --------------------------------------------------------------------------- aggregate

def test_paired_effect_matches_a_hand_computation():
    def forget(value):
        return {} if value is None else {"zs_test_forget": value}

    records = [_record("hac", "lorentz", seed, size, forget(hac)) for seed, size, hac in
               ((0, 1, 10.0), (1, 1, 8.0), (0, 2, 12.0), (2, 1, 0.0), (1, 2, 1.0))]
    # seed 2 of size 1 has no control cell, the control of seed 1 of size 2 no value: both left out
    records += [_record("ac", "euclidean", seed, size, forget(ac)) for seed, size, ac in
                ((0, 1, 20.0), (1, 1, 20.0), (0, 2, 20.0), (1, 2, None))]
    effect = paired_effect(records, "zs_test_forget", {"geometry": "lorentz", "label": "hac"},
                           {"geometry": "euclidean", "label": "ac"})
    # differences -10, -12 (size 1, seeds 0 and 1) and -8 (size 2, seed 0): mean -10, std 2
    used = [(p["size"], p["seed"], p["difference"]) for p in effect["pairs"]]
    assert used == [(1, 0, -10.0), (1, 1, -12.0), (2, 0, -8.0)]
    assert effect["pairs"][0]["cells"] == ["lorentz-s0-concepts1-hac", "euclidean-s0-concepts1-ac"]
    half = T2 * 2 / math.sqrt(3)
    assert effect["n"] == 3 and effect["mean"] == pytest.approx(-10) and effect["std"] == pytest.approx(2)
    assert (effect["low"], effect["high"]) == pytest.approx((-10 - half, -10 + half))
    none = paired_effect(records, "zs_test_forget", {"label": "hac"}, {"label": "retrain"})
    assert none["n"] == 0 and none["pairs"] == [] and math.isnan(none["mean"])
    with pytest.raises(ValueError, match="several cells"):
        paired_effect(records + [_record("hac", "euclidean", 0, 1, {"zs_test_forget": 5.0})], "zs_test_forget",
                      {"label": "hac"}, {"label": "ac"})


def test_summarise_gives_one_row_per_label_and_request_with_seed_spread_intervals():
    records = _md_study()
    rows = summarise(records)
    assert len(rows) == 6 * 2
    assert [r["label"] for r in rows[:3]] == ["original", "original", "retrain"]  # original and retrain first
    row = next(r for r in rows if r["label"] == "multidelete" and r["size"] == 0.02)
    assert row["seeds"] == [0, 1, 2] and row["method"] == "multidelete" and len(row["cells"]) == 3
    assert row["metrics"]["distinguishability"] == pytest.approx(seed_spread([0.75, 0.76, 0.77]))
    retain = row["metrics"]["zs_test_retain"]
    assert retain["high"] - retain["low"] == pytest.approx(2 * T2 * 0.1 / math.sqrt(3))
    assert row["metrics"]["retrieval_test_rmean"]["mean"] == pytest.approx(39.1)


def test_load_records_prefers_a_record_over_an_old_failure_and_reports_unreadable_ones(tmp_path):
    for name, files in {"a": {"record.json": {"cell": "a"}, "failed.json": {"cell": "a", "error": "old"}},
                        "b": {"failed.json": {"cell": "b", "error": "boom"}}, "c": {"record.json": None}}.items():
        (tmp_path / "cells" / name).mkdir(parents=True)
        for file, payload in files.items():
            (tmp_path / "cells" / name / file).write_text("{not json" if payload is None else json.dumps(payload))
    records, failures = load_records(tmp_path)
    assert records == [{"cell": "a"}]
    assert failures[0] == {"cell": "b", "error": "boom"}
    assert failures[1]["cell"] == "c" and "unreadable record.json" in failures[1]["error"]


# --------------------------------------------------------------------------- claims

@pytest.mark.parametrize("effect, region, expected", [
    ({"n": 3, "low": -3.0, "high": -1.0}, (-INF, 0.0), "supported"),
    ({"n": 3, "low": 1.0, "high": 3.0}, (-INF, 0.0), "contradicted"),
    ({"n": 3, "low": 0.0, "high": 0.0}, (-INF, 0.0), "contradicted"),  # no difference at all
    ({"n": 3, "low": -1.0, "high": 1.0}, (-INF, 0.0), "inconclusive"),
    ({"n": 1, "low": -9.0, "high": -9.0}, (-INF, 0.0), "inconclusive"),
    ({"n": 3, "low": -1.0, "high": 1.5}, (-2.0, 2.0), "supported"),
    ({"n": 3, "low": 2.5, "high": 4.0}, (-2.0, 2.0), "contradicted"),
    ({"n": 3, "low": 1.0, "high": 3.0}, (-2.0, 2.0), "inconclusive"),
])
def test_verdict_rule(effect, region, expected):
    decision, reason = verdict(effect, region)
    assert decision == expected
    assert ("every pair differs by exactly" in reason) == (effect["low"] == effect["high"] and effect["n"] > 1)


def test_hac_claims_come_out_as_constructed():
    results, not_measured = evaluate_claims(_hac_study())
    by_id = {r["id"]: r for r in results}
    assert by_id["hac.lower_forget"]["verdict"] == "supported"
    # pooled differences -20 + size + 0.1 seed over sizes 1, 2, 4
    assert by_id["hac.lower_forget"]["effect"] == pytest.approx(-20 + 7 / 3 + 0.1)
    assert by_id["hac.lower_forget"]["n"] == 9 and len(by_id["hac.lower_forget"]["details"]) == 3
    assert by_id["hac.scaling"]["verdict"] == "contradicted" and by_id["hac.scaling"]["effect"] == pytest.approx(3.0)
    assert by_id["hac.hierarchy"]["verdict"] == "inconclusive"
    assert by_id["hac.hierarchy"]["effect"] == pytest.approx(100 * (0.95 / 3 - 0.2) / 0.7)
    ec, norm = by_id["hac.ablation_ec"], by_id["hac.ablation_norm"]
    assert ec["verdict"] == "supported" and ec["effect"] == pytest.approx(10.1)
    assert norm["verdict"] == "contradicted" and norm["effect"] == pytest.approx(-2.2)
    assert all(r["statement"] and r["source"] and r["measure"] for r in results)
    assert {m["id"] for m in not_measured} >= {"md.distinguishability", "md.retained", "md.ablation_md",
                                               "hac.ablation_learn_curv"}
    assert not {m["id"] for m in not_measured} & set(by_id)
    chosen, skipped = evaluate_claims(_hac_study(), ["hac.lower_forget", "md.retained", "hac.nonsense"])
    assert [r["id"] for r in chosen] == ["hac.lower_forget"]
    assert [(m["id"], m["missing"]) for m in skipped] == [("hac.nonsense", []),
                                                           ("md.retained", ["multidelete", "retrain"])]


def test_hac_that_lost_retain_accuracy_or_a_single_seed_is_not_supported():
    lossy = [{**r, "metrics": {**r["metrics"], "zs_test_retain": 60.0}} if r["label"] == "hac" else r
             for r in _hac_study()]
    result = {r["id"]: r for r in evaluate_claims(lossy)[0]}["hac.lower_forget"]
    assert result["verdict"] == "contradicted" and "retain" in result["reason"]
    one_draw = [r for r in _hac_study() if r["seed"] == 0 and r["request"]["size"] == 1]
    single = {r["id"]: r for r in evaluate_claims(one_draw)[0]}
    lower, scaling = single["hac.lower_forget"], single["hac.scaling"]
    assert lower["verdict"] == "inconclusive" and "at least 2" in lower["reason"]
    assert scaling["verdict"] == "inconclusive" and "two concept counts" in scaling["reason"]


def test_multidelete_claims_and_the_combined_score():
    records = _md_study()
    results, not_measured = evaluate_claims(records)
    by_id = {r["id"]: r for r in results}
    distinct = by_id["md.distinguishability"]
    assert distinct["verdict"] == "supported" and distinct["effect"] == pytest.approx(14.5)  # 13, 14.5, 16 per seed
    assert {d["best_baseline"] for d in distinct["details"]} == {"neggrad"} and "+17.6" in distinct["measure"]
    assert by_id["md.retained"]["verdict"] == "supported" and by_id["md.retained"]["effect"] == pytest.approx(0.3)
    ablation = by_id["md.ablation_md"]
    assert ablation["verdict"] == "supported" and ablation["effect"] == pytest.approx(20.0)
    assert {"md.ablation_mkr", "md.ablation_ukr", "hac.lower_forget"} <= {m["id"] for m in not_measured}
    # sample score: 100 (1 - distinguishability) + losses in zero-shot, mean recall and mean probe against the original
    neggrad = next(r for r in records if r["label"] == "neggrad" and r["seed"] == 0)
    assert combined_score(records, "samples")(neggrad) == pytest.approx(38 + 10 + 10 + 10)
    hac = _hac_study()
    ablated = next(r for r in hac if r["label"] == "hac-no-ec" and r["seed"] == 1 and r["request"]["size"] == 2)
    # |forget - retrain's 0| + (original's 80 - 77)
    assert combined_score(hac, "concepts")(ablated) == pytest.approx(34 - 20 + 2 + 0.1 + 10 + 0.2 + 3)


def test_an_unknown_variant_label_gets_its_own_ablation_claim():
    records = _hac_study() + [
        {**r, "label": "hac-wide", "cell": r["cell"] + "-wide"} for r in _hac_study() if r["label"] == "hac"]
    by_id = {r["id"]: r for r in evaluate_claims(records)[0]}
    assert by_id["hac.ablation_hac_wide"]["verdict"] == "contradicted"  # identical to hac: a zero difference
    assert by_id["hac.ablation_hac_wide"]["effect"] == pytest.approx(0.0)


# --------------------------------------------------------------------------- report

def _study_folder(path, records, failed=()):
    for record in records:
        (path / "cells" / record["cell"]).mkdir(parents=True)
        (path / "cells" / record["cell"] / "record.json").write_text(json.dumps(record))
    for cell, error in failed:
        (path / "cells" / cell).mkdir()
        (path / "cells" / cell / "failed.json").write_text(json.dumps({"cell": cell, "error": error}))
    (path / "study.json").write_text(json.dumps({"spec": {"name": "hac-quick", "seeds": [0, 1, 2]}}))


def test_write_study_report_writes_the_summary_and_the_report(tmp_path, monkeypatch):
    monkeypatch.setattr("vlunlearn.study.report._matplotlib_available", lambda: False)
    records = _hac_study() + _md_study()
    _study_folder(tmp_path, records, failed=[("broken", "out of memory")])
    path = write_study_report(tmp_path)
    assert path == tmp_path / "report.md"
    text = path.read_text()
    assert text.startswith("# Study: hac-quick")
    assert f"cells: {len(records)} done, 1 failed" in text and "`broken`: out of memory" in text
    assert text.index("## Claims") < text.index("## Concepts requests") < text.index("## Samples requests")
    assert "| **hac.lower_forget**" in text and "**supported**" in text and "**contradicted**" in text
    assert "Not measured in this study: " in text and "hac.ablation_learn_curv" in text
    assert "| lorentz | hac | 4 | 3 | " in text and "No figures were produced" in text
    summary = json.loads((tmp_path / "summary.json").read_text(), parse_constant=lambda name: pytest.fail(name))
    assert summary["study"] == "hac-quick" and summary["cells"] == {"done": len(records), "failed": 1}
    assert summary["failures"] == [{"cell": "broken", "error": "out of memory"}]
    assert {c["id"] for c in summary["claims"]} >= {"hac.lower_forget", "md.distinguishability"}
    assert not (tmp_path / "figures").exists()


def test_write_study_report_draws_the_figures(tmp_path):
    pytest.importorskip("matplotlib")
    _study_folder(tmp_path, [r for r in _hac_study() if r["request"]["size"] < 4])
    text = write_study_report(tmp_path).read_text()
    for name in ("headline", "curves_concepts", "ablations", "hierarchy"):
        figure = tmp_path / "figures" / f"{name}.png"
        assert figure.read_bytes()[:4] == b"\x89PNG" and f"figures/{name}.png" in text
    assert not (tmp_path / "figures" / "curves_samples.png").exists()


def test_percentage_bands_are_clipped_to_their_range():
    from vlunlearn.study.report import _band

    points = [(1, {"low": -12.0, "high": 40.0}), (2, {"low": 80.0, "high": 130.0})]
    assert _band("zs_test_forget", points) == ([0.0, 80.0], [40.0, 100.0])
    assert _band("mia_auc", points) == ([-12.0, 80.0], [40.0, 130.0])  # not a percentage: as computed
