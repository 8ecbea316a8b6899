"""A report for every data form: metrics the data gives nothing to measure (zero-shot accuracy
without classes, attacks without test-forget pairs, landing without a hierarchy) are left out
with their reason, figures without inputs are skipped with a note, and nothing crashes."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from vlunlearn.cli import main
from vlunlearn.data import PairDataset, Tokenizer, UnlearningRequest, make_splits
from vlunlearn.evaluation import suite
from vlunlearn.evaluation.suite import (
    MIA_KEYS,
    NOT_APPLICABLE,
    evaluate_unlearning,
    membership_shortfall,
    zero_shot_not_applicable,
)
from vlunlearn.models import ContrastiveModel, save_model
from vlunlearn.models.configs import model_config
from vlunlearn.report import write_report
from vlunlearn.evaluation.records import add_ratio_to_retrain, evaluate_group

COLOURS, SHAPES = ("red", "blue", "green"), ("circle", "square")
ZERO_SHOT = {f"zs_{part}{suffix}" for part in ("test_forget", "test_retain", "train_forget", "train_retain")
             for suffix in ("", "_macro", "_top5", "_top5_macro")}


def _model(geometry: str, seed: int) -> ContrastiveModel:
    """A random-init model far smaller than ``tiny``, reading 8x8 RGB images."""
    torch.manual_seed(seed)
    return ContrastiveModel(model_config("tiny", geometry).replace(
        image_size=8, patch_size=4, vision_width=16, vision_depth=1, vision_heads=2,
        text_width=16, text_depth=1, text_heads=2, embed_dim=8,
    ))


def _items(n: int) -> list[tuple[str, str]]:
    """(colour, shape) of each of ``n`` items: every colour appears with every shape."""
    return [(COLOURS[i % 3], SHAPES[(i // 3) % 2]) for i in range(n)]


def _pairs(n: int, split: str, form: str) -> PairDataset:
    """Users'-style pairs of random 8x8 RGB images with unique captions. ``form``: ``"several"``
    (each item lists a colour and a shape, so no item has a class: label -1), ``"none"`` (no
    concepts at all, no classes) or ``"classes"`` (one colour per item: labelled, like built-in data)."""
    items = _items(n)
    concepts = {"several": [frozenset(item) for item in items], "none": [frozenset()] * n,
                "classes": [frozenset({colour}) for colour, _ in items]}[form]
    class_names = tuple(sorted(set().union(*concepts)))
    labels = [class_names.index(next(iter(c))) if len(c) == 1 else -1 for c in concepts]
    return PairDataset(
        name=split,
        inputs=torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(len(split))),
        captions=[(f"a {colour} {shape}, {split} picture {i}.",) for i, (colour, shape) in enumerate(items)],
        concepts=concepts,
        labels=torch.tensor(labels),
        ids=[f"{split}/{i}" for i in range(n)],
        class_names=class_names,
    )


def _evaluate(train: PairDataset, test: PairDataset, request: UnlearningRequest, geometry: str, out: Path) -> dict:
    """What ``vlunlearn evaluate`` does once the data is loaded: original, retrain and one
    method evaluated on the request, then the report written to ``out``."""
    splits = make_splits(train, test, request)
    runs = [(method, lambda seed=seed: _model(geometry, seed), {"seconds": 1.0 + seed})
            for seed, method in enumerate(("original", "retrain", "ac"))]
    records = add_ratio_to_retrain(evaluate_group(runs, splits, train, test, Tokenizer(), seed=0))
    results = {"kind": "evaluate", "config": {"seed": 0}, "data": {"name": "mine", "train_hash": train.content_hash()},
               "records": records}
    write_report(results, out)
    return json.loads((out / "results.json").read_text())


def _no_nan(records: list[dict]) -> None:
    for record in records:
        bad = [k for k, v in record["metrics"].items() if isinstance(v, float) and not math.isfinite(v)]
        assert not bad, (record["method"], bad)


def _figures(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "figures").iterdir())


def test_items_with_several_concepts_get_a_report_without_zero_shot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "evaluation"
    results = _evaluate(_pairs(36, "train", "several"), _pairs(24, "test", "several"),
                        UnlearningRequest(concepts=("red",)), "lorentz", out)
    records = results["records"]
    assert [r["method"] for r in records] == ["original", "retrain", "ac"]
    _no_nan(records)
    for record in records:
        left_out = record["artifacts"][NOT_APPLICABLE]
        assert not ZERO_SHOT & set(record["metrics"]) and ZERO_SHOT <= set(left_out)
        assert left_out["zs_test_forget"] == "no item of the test forget split has a class"
        assert left_out["landing_same"] == "the data has no concept hierarchy"
        # the classes are the concepts, so detection and the attacks still measure something
        assert {"det_ap_forget", "det_ap_retain", "mia_auc", "mia_calibrated_auc"} <= set(record["metrics"])
        assert not set(left_out) & set(record["metrics"])
    assert _figures(out) == ["alignment_lorentz_red.png", "d0_lorentz_red.png", "disk_lorentz_red.png"]
    report = (out / "report.md").read_text()
    assert "Not measured on this data" in report
    assert "`zs_test_forget`, `zs_test_forget_macro`, `zs_test_forget_top5`, `zs_test_forget_top5_macro`: " \
           "no item of the test forget split has a class" in report
    assert "`tree_hr`: the data has no concept hierarchy" in report
    assert "- Not drawn: forget-vs-retain scatter: no record has both test-forget and test-retain zero-shot " \
           "accuracy (no item of the test forget split has a class; no item of the test retain split has a class)" in report
    assert "![d0_lorentz_red.png](figures/d0_lorentz_red.png)" in report

    merged = tmp_path / "merged"
    assert main(["report", str(out), "--out", str(merged)]) == 0, capsys.readouterr().err
    again = (merged / "report.md").read_text()
    assert "no item of the test forget split has a class" in again and "Not drawn: forget-vs-retain scatter" in again
    assert _figures(merged) == _figures(out)


def _write_folder(folder: Path, split: str, n: int) -> Path:
    """``n`` 8x8 PNGs and a JSONL annotation file without concepts; returns the file."""
    from PIL import Image

    folder.mkdir(exist_ok=True)
    data = _pairs(n, split, "none")
    rows = []
    for i in range(n):
        name = f"{split}_{i}.png"
        Image.fromarray(data.inputs[i].permute(1, 2, 0).numpy()).save(folder / name)
        rows.append(json.dumps({"path": name, "caption": data.captions[i][-1], "id": data.ids[i]}))
    annotations = folder / f"{split}.jsonl"
    annotations.write_text("\n".join(rows) + "\n")
    return annotations


def test_vlunlearn_evaluate_and_report_on_data_without_concepts(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    train, test = _write_folder(tmp_path / "data", "train", 30), _write_folder(tmp_path / "data", "test", 12)
    (tmp_path / "forget.txt").write_text("\n".join(f"train/{i}" for i in range(6)) + "\n")
    for seed, method in enumerate(("original", "ac")):
        save_model(_model("euclidean", seed), tmp_path / method / "model")
    out = tmp_path / "evaluation"
    code = main(["evaluate", "--checkpoint", str(tmp_path / "ac" / "model"), "--original", str(tmp_path / "original" / "model"),
                 "--data", str(train), "--test-data", str(test), "--forget-ids", str(tmp_path / "forget.txt"),
                 "--quiet", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    records = json.loads((out / "results.json").read_text())["records"]
    assert [r["method"] for r in records] == ["original", "ac"]
    _no_nan(records)
    left_out = records[0]["artifacts"][NOT_APPLICABLE]
    assert left_out["zs_test_retain"] == left_out["det_ap_forget"] == "the data has no classes (no item lists a concept)"
    # a sample request on data without classes: no test item shares a class with D_f
    assert set(MIA_KEYS) <= set(left_out) and "0 test forget pairs (needs 5)" in left_out["mia_auc"]
    assert {"retrieval_test_i2t_r1", "distinguishability", "alignment_gap"} <= set(records[1]["metrics"])
    assert _figures(out) == ["alignment_euclidean_6_samples.png"]
    report = (out / "report.md").read_text()
    assert "`det_ap_retain`: the data has no classes (no item lists a concept)" in report
    assert "`mia_calibrated_nonmembers`: too few pairs for the membership attacks: 0 test forget pairs" in report
    assert "Not drawn: forget-vs-retain scatter" in report and "No retrained oracle" in report

    merged = tmp_path / "merged"
    assert main(["report", str(out), "--out", str(merged)]) == 0, capsys.readouterr().err
    assert "`det_ap_retain`: the data has no classes" in (merged / "report.md").read_text()


def test_data_with_classes_keeps_its_zero_shot_metrics_and_scatter(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "evaluation"
    results = _evaluate(_pairs(36, "train", "classes"), _pairs(24, "test", "classes"),
                        UnlearningRequest(concepts=("red",)), "euclidean", out)
    for record in results["records"]:
        assert ZERO_SHOT <= set(record["metrics"]) and math.isfinite(record["metrics"]["zs_test_forget"])
        assert not ZERO_SHOT & set(record["artifacts"][NOT_APPLICABLE])  # only landing: no hierarchy
    assert _figures(out) == ["alignment_euclidean_red.png", "scatter.png"]
    report = (out / "report.md").read_text()
    assert "![scatter.png](figures/scatter.png)" in report and "Not drawn" not in report


def test_an_old_results_file_with_nan_accuracies_still_reports(tmp_path, capsys):
    """Results written before metrics were left out hold NaN accuracies (and no reasons)."""
    pytest.importorskip("matplotlib")
    record = {"model": "tiny", "geometry": "euclidean", "forget": ["red"], "seed": 0,
              "metrics": {"zs_test_forget": math.nan, "zs_test_retain": math.nan, "alignment_gap": 0.1}}
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"kind": "evaluate", "records": [{**record, "method": "original"},
                                                                {**record, "method": "ac"}]}))
    assert main(["report", str(old), "--out", str(tmp_path / "report")]) == 0, capsys.readouterr().err
    report = (tmp_path / "report" / "report.md").read_text()
    assert "- Not drawn: forget-vs-retain scatter: no record has both test-forget and test-retain zero-shot accuracy\n" in report
    assert "- Not drawn: alignment heatmaps of tiny · euclidean · forget red: no record has an alignment matrix" in report
    assert not (tmp_path / "report" / "figures").exists()


def test_zero_shot_parts_without_a_candidate_class_are_named():
    train, test = _pairs(36, "train", "classes"), _pairs(24, "test", "classes")
    splits = make_splits(train, test, UnlearningRequest(concepts=("red",)))
    assert zero_shot_not_applicable(splits) == {}
    # only the retained classes are candidates: the forget parts hold none of them
    retain_only = zero_shot_not_applicable(splits, candidates="retain")
    assert set(retain_only) == {k for k in ZERO_SHOT if "forget" in k}
    assert retain_only["zs_train_forget_top5"] == "no item of the training forget set D_f has a retained class " \
                                                  "(candidates='retain')"
    with pytest.raises(ValueError, match="candidates"):
        zero_shot_not_applicable(splits, candidates="some")


def test_a_small_sample_request_leaves_out_the_attacks_and_an_undefined_gap():
    train, test = _pairs(36, "train", "classes"), _pairs(24, "test", "classes")
    concept = make_splits(train, test, UnlearningRequest(concepts=("red",)))
    assert membership_shortfall(concept, concept.retain) is None
    # two red items with one caption: too few for the attacks, and no mismatched pair for the alignment gap
    train = replace(train, captions=[train.captions[0] if i == 3 else c for i, c in enumerate(train.captions)])
    few = make_splits(train, test, UnlearningRequest(sample_ids=("train/0", "train/3")))
    assert membership_shortfall(few, few.retain) == "too few pairs for the membership attacks: 2 D_f pairs (needs 5)"
    metrics, artifacts = evaluate_unlearning(_model("euclidean", 0), few, Tokenizer(), retain_sample=20)
    left_out = artifacts[NOT_APPLICABLE]
    assert not set(MIA_KEYS) & set(metrics) and set(MIA_KEYS) <= set(left_out)
    assert "alignment_gap" not in metrics and left_out["alignment_gap"] == "no two audited D_f pairs have different captions"
    assert {"zs_test_forget", "det_ap_retain", "distinguishability"} <= set(metrics)
    assert all(math.isfinite(value) for value in metrics.values())
    # a sample request forgets no class: nothing to detect in the forget group
    assert left_out["det_ap_forget"] == "the request forgets no class"


def test_an_undefined_alignment_gap_is_not_recomputed_for_the_heatmap(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from vlunlearn.report import figures

    titles = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: titles.extend(ax.get_title() for ax in fig.axes) or path)
    matrix = [[1.0, 0.0], [0.0, 1.0]]  # its plain gap, were it recomputed, would be 1.000
    records = [{"model": "tiny", "geometry": "euclidean", "forget": ["2 samples"], "method": method, "metrics": metrics,
                "artifacts": {"alignment_matrix": matrix, NOT_APPLICABLE: left_out}}
               for method, metrics, left_out in (("original", {"alignment_gap": 0.25}, {}),
                                                 ("ac", {}, {"alignment_gap": "one caption"}))]
    write_report({"records": records}, tmp_path / "report")
    assert titles[:2] == ["original\ngap = 0.250", "ac\ngap = –"]


def test_class_prompt_templates_reach_every_zero_shot_call(monkeypatch):
    calls = {}

    def recording(name):
        def stub(*args, **kwargs):
            calls[name] = kwargs
            return {}
        return stub

    for name in ("evaluate_splits", "detection_metrics"):
        monkeypatch.setattr(suite, name, recording(name))
    splits = make_splits(_pairs(36, "train", "classes"), _pairs(24, "test", "classes"), UnlearningRequest(concepts=("red",)))
    evaluate_unlearning(_model("euclidean", 0), splits, Tokenizer(), retain_sample=20, templates=["a {} thing."])
    assert calls["evaluate_splits"]["templates"] == calls["detection_metrics"]["templates"] == ["a {} thing."]
