"""The ``vlunlearn`` command: a pretraining run folder with a complete results file and a
loadable model, refusal to overwrite a run, argument errors, and ``python -m vlunlearn``."""

from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from vlunlearn import cli
from vlunlearn.cli import main
from vlunlearn.data import Tokenizer, load_builtin
from vlunlearn.evaluation import evaluate_zero_shot
from vlunlearn.models import build_model, load_model, save_model
from vlunlearn.training.pretrain import PretrainConfig


PRETRAIN = ["pretrain", "--data", "digits", "--steps", "6", "--geometry", "lorentz", "--quiet"]


@pytest.fixture(scope="module")
def meru_run(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("cli") / "meru"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main([*PRETRAIN, "--out", str(out)])
    assert code == 0
    return out, stdout.getvalue()


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_pretrain_writes_a_complete_results_file(meru_run):
    out, stdout = meru_run
    assert sorted(p.name for p in out.iterdir()) == ["model", "results.json"]  # the training state is gone
    record = json.loads((out / "results.json").read_text())
    assert record["schema_version"] == 1
    assert record["kind"] == "pretrain"
    assert record["seed"] == 0
    expected_config = json.loads(json.dumps(PretrainConfig(geometry="lorentz", steps=6).to_dict()))
    assert record["config"] == expected_config
    assert record["model_config"]["geometry"] == "lorentz"
    assert record["data"]["name"] == "digits"
    assert record["data"]["train_size"] == 1437
    assert record["data"]["train_hash"] == load_builtin("digits", "train").content_hash()
    for key in ("vlunlearn", "torch", "python", "platform", "time_utc"):
        assert record["environment"][key]
    assert record["training"]["steps"] == 6 and record["training"]["resumed_from"] == 0

    zero_shot = record["metrics"]["zero_shot_test"]
    assert zero_shot["count"] == 360  # micro is a percentage of the 360 test images, not a fraction
    assert zero_shot["micro"] * 3.6 == pytest.approx(round(zero_shot["micro"] * 3.6), abs=1e-6)
    distances = record["metrics"]["distance_to_origin"]
    assert set(distances) == {"generic", "family", "class", "inputs"}
    assert all(math.isfinite(v) and v > 0 for v in distances.values())
    assert math.isfinite(record["metrics"]["curvature"]) and record["metrics"]["curvature"] > 0
    assert f"{zero_shot['micro']:.2f}%" in stdout and str(out) in stdout


def test_the_saved_model_reproduces_the_recorded_accuracy(meru_run):
    out, _ = meru_run
    record = json.loads((out / "results.json").read_text())
    model = load_model(out / "model")
    assert model.config.geometry == "lorentz" and model.config.name == "tiny"
    accuracy = evaluate_zero_shot(model, load_builtin("digits", "test"), Tokenizer())
    assert accuracy == record["metrics"]["zero_shot_test"]
    assert model.curvature().item() == pytest.approx(record["metrics"]["curvature"], rel=1e-6)


def test_a_second_run_into_the_same_folder_is_refused_and_changes_nothing(meru_run, capsys):
    out, _ = meru_run
    before = _snapshot(out)
    assert {"results.json", "model/model.safetensors", "model/config.json"} <= set(before)
    capsys.readouterr()
    code = main([*PRETRAIN, "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--resume" in err
    assert "Traceback" not in err
    assert _snapshot(out) == before


def test_an_unknown_dataset_is_a_clean_error(tmp_path, capsys):
    # --data also takes a user's files, so an unknown name is checked when the data is loaded
    assert main(["pretrain", "--data", "imagenet", "--out", str(tmp_path / "run")]) == 2
    assert "is neither a built-in dataset" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_missing_command_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as error:
        main([])
    assert error.value.code == 2


def test_python_dash_m_vlunlearn_help():
    done = subprocess.run([sys.executable, "-m", "vlunlearn", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "pretrain" in done.stdout and "demo" in done.stdout
    assert done.stdout.startswith("usage: vlunlearn")
    codes = done.stdout[done.stdout.index("exit codes:"):].split("\n")[1:]
    assert [line.split()[0] for line in codes if line.strip()] == ["0", "2", "3", "130"]


@pytest.mark.parametrize("extra", [["--steps", "0"], ["--model", "no-such-model"]])
def test_invalid_recipe_arguments_are_clean_errors(tmp_path, capsys, extra):
    code = main(["pretrain", "--data", "digits", "--quiet", "--out", str(tmp_path / "run"), *extra])
    assert code == 2
    assert "vlunlearn: error:" in capsys.readouterr().err


SMALL_BUDGET = ["--set", "steps=2", "--set", "retain_batch_size=16", "--set", "forget_batch_size=8", "--quiet"]


def test_unlearn_writes_a_new_model_and_never_touches_the_input(meru_run, tmp_path, capsys):
    checkpoint = meru_run[0] / "model"
    before = _snapshot(meru_run[0])
    out = tmp_path / "unlearned"
    code = main(["unlearn", "--checkpoint", str(checkpoint), "--data", "digits", "--forget", "seven",
                 "--forget", "three", "--method", "hac", "--set", "beta=0.25", *SMALL_BUDGET, "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert _snapshot(meru_run[0]) == before
    record = json.loads((out / "results.json").read_text())
    assert record["method"] == "hac" and record["config"]["beta"] == 0.25 and record["run"]["steps"] == 2
    assert record["request"]["concepts"] == ["seven", "three"]
    parts = ("test_forget", "test_retain", "train_forget", "train_retain")
    assert set(record["metrics"]["original"]) == {f"zs_{p}{s}" for p in parts for s in ("", "_macro", "_top5", "_top5_macro")}
    assert record["config"]["seed"] == 0 and record["data"]["train_hash"]
    unlearned = load_model(out / "model")
    assert not torch.equal(unlearned.visual_proj.weight, load_model(checkpoint).visual_proj.weight)
    # a second run into the same folder is refused
    assert main(["unlearn", "--checkpoint", str(checkpoint), "--data", "digits", "--forget", "seven",
                 *SMALL_BUDGET, "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_unlearn_epochs_budget(meru_run, tmp_path):
    out = tmp_path / "epochs"
    code = main(["unlearn", "--checkpoint", str(meru_run[0] / "model"), "--data", "digits", "--forget", "seven",
                 "--method", "ac", "--epochs", "0.5", "--set", "forget_batch_size=20", "--set", "retain_batch_size=16",
                 "--quiet", "--out", str(out)])
    assert code == 0
    record = json.loads((out / "results.json").read_text())
    assert record["run"]["steps"] == math.ceil(0.5 * record["split_sizes"]["forget"] / 20) == 4


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--forget", "dragon"], "dragon"),
        (["--forget", "seven", "--set", "bogus=1"], "unknown setting"),
        (["--forget", "seven", "--set", "steps=lots"], "not a valid int"),
        (["--forget", "seven", "--set", "partner_pool=anywhere"], "partner_pool must be one of"),
        (["--forget", "seven", "--method", "forgetful"], "unknown unlearning method"),
        (["--forget", "seven", "--set", "noequals"], "key=value"),
        ([], "neither"),
    ],
)
def test_unlearn_bad_input_is_a_clean_error_and_writes_nothing(meru_run, tmp_path, capsys, arguments, message):
    out = tmp_path / "never"
    code = main(["unlearn", "--checkpoint", str(meru_run[0] / "model"), "--data", "digits", *arguments,
                 "--quiet", "--out", str(out)])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_hac_on_a_euclidean_checkpoint_is_a_clear_error(tmp_path, temporary_dir, capsys):
    clip = tmp_path / "clip"
    save_model(build_model("tiny", "euclidean"), clip)
    code = main(["unlearn", "--checkpoint", str(clip), "--data", "digits", "--forget", "seven",
                 "--method", "hac", *SMALL_BUDGET, "--out", str(tmp_path / "x")])
    assert code == 2 and "hyperbolic" in capsys.readouterr().err
    assert list(temporary_dir.iterdir()) == []  # a user error saves no traceback


def test_evaluate_and_report_write_complete_run_folders(meru_run, tmp_path, capsys):
    checkpoint = meru_run[0] / "model"
    before = _snapshot(meru_run[0])
    runs = {}
    # the oracle takes the recipe recorded in the checkpoint, with a shorter budget
    retrain_budget = ["--set", "steps=2", "--set", "batch_size=64", "--quiet"]
    for method, budget in (("hac", SMALL_BUDGET), ("retrain", retrain_budget)):
        runs[method] = tmp_path / method
        code = main(["unlearn", "--checkpoint", str(checkpoint), "--data", "digits", "--forget", "seven",
                     "--method", method, *budget, "--out", str(runs[method])])
        assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    # the request and the original are read from the unlearned checkpoints' metadata
    out = tmp_path / "evaluation"
    code = main(["evaluate", "--checkpoint", str(runs["hac"] / "model"), "--checkpoint", str(runs["retrain"] / "model"),
                 "--data", "digits", "--quiet", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "forget concept seven" in printed and str(out / "report.md") in printed
    results = json.loads((out / "results.json").read_text())
    assert results["schema_version"] == 1 and results["kind"] == "evaluate"
    assert [r["method"] for r in results["records"]] == ["original", "hac", "retrain"]
    for record in results["records"]:
        assert record["model"] == "tiny" and record["geometry"] == "lorentz" and record["forget"] == ["seven"]
        for key in ("zs_test_forget", "zs_test_retain", "zs_train_forget", "zs_train_retain", "mia_auc",
                    "alignment_gap", "seconds"):
            assert math.isfinite(record["metrics"][key]), key
    hac, retrain = results["records"][1]["metrics"], results["records"][2]["metrics"]
    assert hac["ratio_to_retrain"] == pytest.approx(hac["seconds"] / retrain["seconds"])
    assert hac["steps"] == 2
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures == ["alignment_lorentz_seven.png", "d0_lorentz_seven.png", "disk_lorentz_seven.png", "scatter.png"]
    report = (out / "report.md").read_text()
    assert "| original |" in report and "| retrain |" in report and "No retrained oracle" not in report
    retrain_row = next(line for line in report.splitlines() if line.startswith("| retrain |"))
    assert retrain_row.endswith("| 0.000 |")  # the oracle's gap to itself; "n/a" without an oracle
    assert _snapshot(meru_run[0]) == before  # no input was touched

    # report: merge the evaluation with an unlearn run; the evaluation's fuller records win
    merged = tmp_path / "merged"
    assert main(["report", str(runs["hac"]), str(out / "results.json"), "--out", str(merged)]) == 0
    records = json.loads((merged / "results.json").read_text())["records"]
    assert [r["method"] for r in records] == ["original", "hac", "retrain"]
    assert all("mia_auc" in r["metrics"] for r in records)
    # refusals: an existing folder, a file that is not a results file, a missing run
    assert main(["report", str(out), "--out", str(merged)]) == 2
    assert "already exists" in capsys.readouterr().err
    (tmp_path / "junk.json").write_text("{not json")
    assert main(["report", str(tmp_path / "junk.json"), "--out", str(tmp_path / "r2")]) == 2
    assert "not a results.json" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r3")]) == 2
    assert "no results" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists() and not (tmp_path / "r3").exists()


def test_evaluate_without_a_request_or_an_oracle(meru_run, tmp_path, capsys):
    # a pretrained model records no request: one must be given
    checkpoint = meru_run[0] / "model"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", "digits", "--out", str(tmp_path / "a")]) == 2
    assert "no forget request" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", "digits", "--forget", "dragon",
                 "--out", str(tmp_path / "b")]) == 2
    assert "dragon" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    out = tmp_path / "c"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", "digits", "--forget", "seven",
                 "--quiet", "--out", str(out)]) == 0
    assert "No retrained oracle" in (out / "report.md").read_text()


@pytest.fixture
def temporary_dir(tmp_path, monkeypatch) -> Path:
    """An empty folder that ``tempfile`` uses, so that tracebacks saved there can be found."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_a_user_error_exits_2_without_a_traceback_file(meru_run, tmp_path, temporary_dir, capsys):
    out = tmp_path / "never"
    code = main(["unlearn", "--checkpoint", str(meru_run[0] / "model"), "--data", "digits", "--forget", "seven",
                 "--method", "forgetful", "--quiet", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("vlunlearn: error: unknown unlearning method 'forgetful'")
    assert "bug" not in err and "Traceback" not in err
    assert not out.exists() and list(temporary_dir.iterdir()) == []


def _failing(error: Exception, make_folder: bool):
    def command(args) -> int:
        if make_folder:
            Path(args.out).mkdir(exist_ok=True)
        raise error

    return command


def test_a_bug_exits_3_and_saves_the_traceback_in_the_run_folder(tmp_path, temporary_dir, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_report_command", _failing(ZeroDivisionError("division by zero"), make_folder=True))
    out = tmp_path / "report"
    assert main(["report", str(tmp_path), "--out", str(out)]) == 3
    err = capsys.readouterr().err
    assert err.startswith("vlunlearn: internal error (this is a bug, please report it): "
                          "ZeroDivisionError: division by zero")
    assert str(out / "error.txt") in err and "Traceback" not in err
    first = (out / "error.txt").read_text()
    assert first.startswith("Traceback") and first.rstrip().endswith("ZeroDivisionError: division by zero")
    assert "in command" in first  # the frame that raised
    # a second failure into the same folder never overwrites the first traceback
    assert main(["report", str(tmp_path), "--out", str(out)]) == 3
    assert str(out / "error-1.txt") in capsys.readouterr().err
    assert (out / "error.txt").read_text() == first and (out / "error-1.txt").exists()
    assert list(temporary_dir.iterdir()) == []


def test_a_plain_value_error_is_a_bug_saved_to_a_temporary_file(tmp_path, temporary_dir, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_report_command", _failing(ValueError("shapes do not match"), make_folder=False))
    out = tmp_path / "report"
    assert main(["report", str(tmp_path), "--out", str(out)]) == 3
    err = capsys.readouterr().err
    assert "this is a bug" in err and "ValueError: shapes do not match" in err and "vlunlearn: error:" not in err
    assert not out.exists()
    [saved] = temporary_dir.iterdir()
    assert saved.name.startswith("vlunlearn-error-") and saved.suffix == ".txt" and str(saved) in err
    assert saved.read_text().rstrip().endswith("ValueError: shapes do not match")
