"""Tests of vlunlearn.report: figures, markdown rendering and the report writer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from vlunlearn.errors import VlunlearnError
from vlunlearn.evaluation.oracle import oracle_gap
from vlunlearn.geometry.lorentz import exp_map0
from vlunlearn.report import render_report, write_report
from vlunlearn.report.disk import project_to_disk

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
        art["input_d0"] = (rng.random(40) + 1.0 + shift).tolist()
        art["text_d0"] = (rng.random(40) + 0.5).tolist()
        art["disk_points"] = rng.uniform(-0.6, 0.6, size=(30, 2)).tolist()
        art["disk_labels"] = ["sneaker" if i % 2 else "boot" for i in range(30)]
        art["disk_prompt_points"] = [[0.0, 0.0], [0.3, 0.1], [-0.4, 0.5]]
        art["disk_prompt_labels"] = ["clothing", "sneaker", "boot"]
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


def _main_rows(text: str) -> list[dict[str, str]]:
    """Rows of the main tables (those headed by "test forget %") as header -> cell dicts."""
    rows, header = [], None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None if not line.strip() or line.startswith("#") or line.startswith("_") else header
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "method":
            header = cells if "test forget %" in cells else None
        elif header is not None and not cells[0].startswith(":"):
            rows.append(dict(zip(header, cells)))
    return rows


def _row(text: str, method: str) -> dict[str, str]:
    return next(r for r in _main_rows(text) if r["method"].strip("*") == method)


def test_report_numbers_and_oracle_gap(tmp_path):
    pytest.importorskip("matplotlib")
    results = _results()
    out = tmp_path / "run"
    write_report(results, out)
    report = (out / "report.md").read_text()
    # hac row: accuracies 1 decimal, AUC/gap 3 decimals, seconds 1 decimal
    # the only unlearning method of its group is the closest to the oracle, so it is in bold
    hac = _row(report, "hac")
    # hand-computed oracle gap on the fraction scale: |12.34-10|, |80.06-81|, |10-8|, |85-86| percent
    # points as fractions, |0.55-0.5| as it is, over 5 keys
    expected_gap = (0.0234 + 0.0094 + 0.02 + 0.01 + 0.05) / 5
    assert hac["method"] == "**hac**"
    assert [hac[k] for k in ("test forget %", "test retain %", "MIA AUC (CV)", "alignment gap", "seconds")] == [
        "12.3", "80.1", "0.550", "0.050", "1.2"]
    assert hac["oracle gap"] == f"**{expected_gap:.3f}**" and f"{expected_gap:.3f}" == "0.023"
    details = report.split("More metrics", 1)[1].split("##", 1)[0]
    assert "| hac | 10.0 | 85.0 |" in details  # train forget / retain %, in the detail table
    assert math.isclose(oracle_gap(results["records"][1]["metrics"], results["records"][2]["metrics"])["mean"], expected_gap)
    # order: original, retrain, then methods; retrain's own gap is 0
    lorentz = report.split("lorentz", 1)[1].split("## ", 1)[0]
    rows = _main_rows(lorentz)
    assert [r["method"] for r in rows] == ["original", "retrain", "**hac**"]
    assert rows[1]["oracle gap"] == "0.000"
    # the euclidean group has no retrain: the sentence and n/a gaps
    euc_section = report.split("euclidean", 1)[1].split("## Figures")[0]
    assert "No retrained oracle in this group" in euc_section
    assert "relative to the original model" in euc_section and "there is no oracle" in euc_section
    euc_rows = _main_rows(euc_section)
    assert len(euc_rows) == 2 and all(r["oracle gap"] == "n/a" for r in euc_rows)
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
    hac = _row(text, "hac")
    assert hac["MIA AUC (CV)"] == "–" and hac["seconds"] == "–"
    # the oracle gap skips the missing AUC: mean of the 4 accuracy gaps, as fractions
    assert hac["oracle gap"] == f"**{(0.0234 + 0.0094 + 0.02 + 0.01) / 4:.3f}**"
    assert _row(text, "ac")["alignment gap"] == "–"
    assert "toyshop" in text and "## Figures" in text


def test_seed_spread_and_attack_intervals_are_shown():
    results = _results()
    hac = results["records"][1]
    hac["metrics"].update(mia_calibrated_auc=0.61, mia_calibrated_auc_low=0.55, mia_calibrated_auc_high=0.67)
    hac["spread"] = {"zs_test_forget": {"std": 1.25, "n": 3}}
    original = results["records"][0]["metrics"]
    original.update(mia_calibrated_auc=0.52, mia_calibrated_auc_low=0.47, mia_calibrated_auc_high=0.57)
    text = render_report(results)
    row = _row(text, "hac")
    assert row["test forget %"] == "12.3 ± 1.2" and row["MIA AUC (calibrated)"] == "0.610 [0.55, 0.67]"
    lorentz = text.split("lorentz", 1)[1].split("## ", 1)[0]
    assert "calibrated membership-attack interval [0.470, 0.570] contains 0.5" in lorentz
    original.update(mia_calibrated_auc_low=0.51)
    assert "contains 0.5" not in render_report(results).split("lorentz", 1)[1].split("## ", 1)[0]


def test_disk_projection_is_finite_at_the_origin_and_for_float32():
    x = torch.cat([torch.zeros(1, 4), torch.randn(5, 4)])
    basis = torch.eye(4, 2, dtype=torch.float64)
    disk = project_to_disk(x, basis, 1.0).numpy()
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
    # forget 10.5 vs retrain 10.0 and the rest equal to retrain: gap (0.005) / 5 = 0.001 < hac's 0.023
    results["records"].append({**lor, "method": "ac", "metrics": _metrics(10.5, 81.0, 8.0, 86.0, 0.5, 0.02, 2.0)})
    text = render_report(results)
    assert "| **ac** |" in text and "**0.001**" in text
    assert "| hac |" in text and "| **hac** |" not in text
    assert text.count("| **") == 2  # its name and its oracle gap


# --- comparable disk views and heatmap colour scales ---


def _pixel_data(n, labels=None, concepts=None, class_names=("boot", "bag")):
    """``n`` images, image ``i`` with every pixel equal to ``i`` (see ``fakes.fake_model``)."""
    from vlunlearn.data import PairDataset

    return PairDataset(
        name="pixels",
        inputs=torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, 1, 28, 28).clone(),
        captions=[("a thing.",)] * n,
        concepts=concepts or [frozenset()] * n,
        labels=torch.zeros(n, dtype=torch.long) if labels is None else torch.tensor(labels),
        ids=[f"p{i}" for i in range(n)],
        class_names=class_names,
    )


def _random_images(n=12, seed=0):
    from tests.fakes import random_clothing_pairs

    torch.manual_seed(seed)
    return random_clothing_pairs(["boot"] * n)


def _capture_figures(monkeypatch):
    """Keep every figure the report module saves (they are still written)."""
    from vlunlearn.report import figures

    captured, save = [], figures._save
    monkeypatch.setattr(figures, "_save", lambda fig, path: captured.append(fig) or save(fig, path))
    return captured


def test_principal_axes_closed_form():
    from vlunlearn.report.disk import principal_axes

    # centred spread 3 along e2, 1 along e0, none along e1: axes e2 then e0, signs made positive
    v = torch.tensor([[1.0, 5.0, 0.0], [-1.0, 5.0, 0.0], [0.0, 5.0, 3.0], [0.0, 5.0, -3.0]], dtype=torch.float64)
    np.testing.assert_allclose(principal_axes(v).numpy(), [[0, 1], [0, 0], [1, 0]], atol=1e-12)


@pytest.mark.parametrize("geometry", ["euclidean", "lorentz"])
def test_disk_basis_orthonormal_deterministic_and_shared(geometry):
    from vlunlearn.data import Tokenizer
    from vlunlearn.models import build_model
    from vlunlearn.report.disk import disk_basis, disk_view

    torch.manual_seed(0)
    original, other = build_model("tiny", geometry), build_model("tiny", geometry)
    images, tokenizer = _random_images(), Tokenizer()
    basis = disk_basis(original, images)
    assert basis.shape == (original.config.embed_dim, 2)
    np.testing.assert_allclose((basis.T @ basis).numpy(), np.eye(2), atol=1e-10)
    assert torch.equal(basis, disk_basis(original, images))
    before = disk_view(original, images, tokenizer, basis)
    after = disk_view(original, images, tokenizer, basis)
    assert before == after and set(before) == {"disk_points", "disk_labels"}
    points = np.asarray(before["disk_points"])
    assert points.shape == (12, 2) and (np.linalg.norm(points, axis=1) <= 1 + 1e-9).all()
    # a different model on the same basis lands elsewhere
    assert not np.allclose(points, disk_view(other, images, tokenizer, basis)["disk_points"])


def test_lorentz_disk_view_keeps_distance_to_origin():
    from tests.fakes import fake_model
    from vlunlearn.geometry import LORENTZ
    from vlunlearn.report.disk import disk_view

    c, d0 = 2.0, torch.tensor([3.0, 0.5, 2.0, 1.0, 0.0], dtype=torch.float64)
    directions = torch.nn.functional.normalize(torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), dim=1)
    model = fake_model(LORENTZ, exp_map0(directions * d0[:, None], c), torch.zeros(1, 6), c)
    basis = torch.eye(6, dtype=torch.float64)[:, :2]
    points = np.asarray(disk_view(model, _pixel_data(5), None, basis)["disk_points"])
    radius = np.linalg.norm(points, axis=1)
    np.testing.assert_allclose(radius, np.tanh(math.sqrt(c) * d0.numpy() / 2), atol=1e-9)
    assert (radius < 1).all() and list(np.argsort(radius)) == [4, 1, 3, 2, 0]
    # directions are the normalised projections on the basis
    np.testing.assert_allclose(points[0] / radius[0], directions[0, :2] / directions[0, :2].norm(), atol=1e-9)


def test_disk_view_labels_and_prompts():
    from tests.fakes import FakeTokenizer, fake_model
    from vlunlearn.geometry import EUCLIDEAN
    from vlunlearn.report.disk import NO_CLASS, disk_view

    images = torch.tensor([[0.6, 0.8, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]])
    texts = torch.tensor([[0.6, 0.8, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    model = fake_model(EUCLIDEAN, images, texts)
    data = _pixel_data(
        3, labels=[1, -1, -1],
        concepts=[{"bag"}, {"clothing", "bag", "boot"}, {"clothing"}],
    )
    basis = torch.eye(3, dtype=torch.float64)[:, :2]
    prompts = {"generic": ["t0"], "pair": ["t1", "t2"]}
    view = disk_view(model, data, FakeTokenizer(["t0", "t1", "t2"]), basis, prompts)
    # label -1: the first class of class_names ("boot", "bag") among the item's concepts
    assert view["disk_labels"] == ["bag", "boot", NO_CLASS]
    np.testing.assert_allclose(view["disk_points"], [[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]], atol=1e-7)
    assert view["disk_prompt_labels"] == ["generic", "pair"]
    # "generic" is projected like image 0; "pair" is the normalised mean of e0 and e1
    h = 1 / math.sqrt(2)
    np.testing.assert_allclose(view["disk_prompt_points"], [[0.6, 0.8], [h, h]], atol=1e-6)
    json.dumps(view)


def test_disk_view_with_hierarchy_prompts():
    from vlunlearn.data import Tokenizer
    from vlunlearn.data.hierarchy import FASHION_MNIST
    from vlunlearn.evaluation.landing import hierarchy_prompts
    from vlunlearn.models import build_model
    from vlunlearn.report.disk import disk_basis, disk_view

    torch.manual_seed(0)
    model, images, prompts = build_model("tiny", "lorentz"), _random_images(), hierarchy_prompts(FASHION_MNIST)
    view = disk_view(model, images, Tokenizer(), disk_basis(model, images), prompts)
    assert view["disk_prompt_labels"] == list(FASHION_MNIST.concepts)
    prompt_points = np.asarray(view["disk_prompt_points"])
    assert prompt_points.shape == (len(FASHION_MNIST.concepts), 2)
    assert (np.linalg.norm(prompt_points, axis=1) < 1).all()


def test_heatmap_scale_per_geometry():
    from vlunlearn.report.figures import heatmap_scale

    matrices = {"a": [[-0.5, -2.0], [-3.0, -0.1]], "b": [[-1.0, -7.5], [float("nan"), -0.2]]}
    assert heatmap_scale(matrices, "lorentz") == (-7.5, -0.1, "negative geodesic distance s(v_i, t_j)")
    assert heatmap_scale({"a": [[0.2, 0.3], [0.1, 0.9]]}, "euclidean") == (-1.0, 1.0, "cosine similarity s(v_i, t_j)")
    assert heatmap_scale({"a": [[-1.0]]}, "lorentz")[:2] == (-1.5, -0.5)


def test_heatmap_panels_share_one_scale(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from vlunlearn.report import figures

    captured = _capture_figures(monkeypatch)
    lorentz = {"original": [[-0.5, -2.0], [-3.0, -0.1]], "retrain": [[-1.0, -7.5], [-4.0, -0.2]]}
    figures.alignment_heatmaps(lorentz, tmp_path / "l.png", "l", geometry="lorentz")
    # one scale for both panels: the min/max over the figure (euclidean's fixed one: test_heatmap_scale_per_geometry)
    (fig,) = captured
    assert [ax.images[0].get_clim() for ax in fig.axes if ax.images] == [(-7.5, -0.1), (-7.5, -0.1)]
    assert "negative geodesic distance" in " ".join(ax.get_ylabel() for ax in fig.axes)


def test_poincare_disk_draws_prompts_with_shared_limits(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from vlunlearn.report import figures

    captured = _capture_figures(monkeypatch)
    points = {"before": [[0.1, 0.2], [0.5, -0.5]], "after": [[0.9, 0.0], [0.0, 0.1]]}
    prompts = {"before": [[0.0, 0.05], [0.4, 0.4]], "after": [[0.0, 0.1], [0.7, 0.1]]}
    names = {name: ["clothing", "boot"] for name in points}
    figures.poincare_disk(points, tmp_path / "d.png", "disk", labels=names, prompt_points=prompts, prompt_labels=names)
    panels = [ax for ax in captured[0].axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["before", "after"]
    for ax, name in zip(panels, points):
        assert ax.get_xlim() == ax.get_ylim() == (-figures.DISK_LIMIT, figures.DISK_LIMIT)
        assert [t.get_text() for t in ax.texts] == ["clothing", "boot"]
        np.testing.assert_allclose([t.xy for t in ax.texts], prompts[name])


def test_writer_passes_geometry_and_prompts(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from vlunlearn.report import figures

    calls = []

    def record(kind):
        return lambda *args, **kwargs: calls.append((kind, args, kwargs)) or args[1]

    for kind in ("alignment_heatmaps", "poincare_disk", "distance_histograms", "forget_retain_scatter"):
        monkeypatch.setattr(figures, kind, record(kind))
    write_report(_results(), tmp_path / "run")
    heatmaps = {kwargs["geometry"]: args[0] for kind, args, kwargs in calls if kind == "alignment_heatmaps"}
    assert sorted(heatmaps) == ["euclidean", "lorentz"] and list(heatmaps["lorentz"]) == ["original", "retrain", "hac"]
    (_, args, kwargs), = [call for call in calls if call[0] == "poincare_disk"]
    assert list(args[0]) == ["before (original)", "after (hac)"]
    assert kwargs["prompt_labels"] == {tag: ["clothing", "sneaker", "boot"] for tag in args[0]}
    assert {tag: p.shape for tag, p in kwargs["prompt_points"].items()} == {tag: (3, 2) for tag in args[0]}


def test_merge_seeds_gives_mean_std_and_t_interval():
    from scipy import stats

    from vlunlearn.report.merge import merge_seeds

    base = {"model": "tiny", "geometry": "lorentz", "forget": ["sneaker"], "method": "hac"}
    records = [{**base, "seed": seed, "metrics": {"auc": value, "only_first": 1.0} if seed == 0 else {"auc": value}}
               for seed, value in ((0, 0.6), (1, 0.7), (2, 0.8))]
    records.append({**base, "method": "original", "seed": 0, "metrics": {"auc": 0.9}})
    merged = merge_seeds(records)
    assert [r["method"] for r in merged] == ["hac", "original"]
    hac = merged[0]
    assert hac["seeds"] == [0, 1, 2] and hac["metrics"]["auc"] == pytest.approx(0.7)
    spread = hac["spread"]["auc"]
    assert spread["std"] == pytest.approx(0.1) and spread["n"] == 3
    half = stats.t.ppf(0.975, 2) * 0.1 / math.sqrt(3)
    assert (spread["low"], spread["high"]) == (pytest.approx(0.7 - half), pytest.approx(0.7 + half))
    assert hac["spread"]["only_first"]["n"] == 1 and hac["metrics"]["only_first"] == 1.0
    assert merged[1] == records[3]  # one seed: unchanged
    # the same seed twice: the record with more metrics wins, nothing is averaged
    twice = merge_seeds([records[1], {**records[1], "metrics": {"auc": 0.1, "extra": 2.0}}])
    assert twice[0]["metrics"] == {"auc": 0.1, "extra": 2.0} and "spread" not in twice[0]
