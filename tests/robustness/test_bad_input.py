"""Every bad input of issue 6 through the ``vlunlearn`` command: a non-zero exit, a message that
names the problem, no output folder, and no file outside it changed."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from tests.robustness.conftest import snapshot, write_user_data
from vlunlearn.cli import main

SMALL = ["--set", "steps=2", "--set", "retain_batch_size=8", "--set", "forget_batch_size=4", "--quiet"]


class Evil:
    """Pickled by reference: loading it would need to import and run code from this module."""


def _unlearn(checkpoint: Path, *extra: str) -> list[str]:
    return ["unlearn", "--checkpoint", str(checkpoint), "--method", "ac", *SMALL, *extra]


def _digits(ws: Path, *extra: str, checkpoint: Path | None = None) -> list[str]:
    return _unlearn(checkpoint or ws / "meru", "--data", "digits", *extra)


def _copy_model(ws: Path, tmp: Path) -> Path:
    return Path(shutil.copytree(ws / "meru", tmp / "model"))


def _corrupt_weights(ws, tmp):
    model = _copy_model(ws, tmp)
    (model / "model.safetensors").write_bytes(b"this is not a safetensors file")
    return _digits(ws, "--forget", "seven", checkpoint=model)


def _truncated_weights(ws, tmp):
    model = _copy_model(ws, tmp)
    data = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(data[: len(data) // 2])
    return _digits(ws, "--forget", "seven", checkpoint=model)


def _truncated_pth(ws, tmp):
    data = (ws / "meru.pth").read_bytes()
    (tmp / "cut.pth").write_bytes(data[: len(data) // 2])
    return _digits(ws, "--forget", "seven", checkpoint=tmp / "cut.pth")


def _wrong_architecture(ws, tmp):
    model = _copy_model(ws, tmp)
    header = json.loads((model / "config.json").read_text())
    header["config"]["vision_width"] *= 2
    (model / "config.json").write_text(json.dumps(header))
    return _digits(ws, "--forget", "seven", checkpoint=model)


def _missing_and_unexpected_keys(ws, tmp):
    state = torch.load(ws / "meru.pth", weights_only=True)
    weights = state["model"] if "model" in state else state
    del weights["visual_proj.weight"]
    weights["bogus_head.weight"] = torch.zeros(2)
    torch.save(state, tmp / "keys.pth")
    return _digits(ws, "--forget", "seven", checkpoint=tmp / "keys.pth")


def _pickled_code(ws, tmp):
    torch.save({"model": {"visual_proj.weight": torch.zeros(2)}, "trap": Evil()}, tmp / "evil.pth")
    return _digits(ws, "--forget", "seven", checkpoint=tmp / "evil.pth")


def _ids_file(tmp, ids):
    (tmp / "ids.txt").write_text("\n".join(ids) + "\n")
    return str(tmp / "ids.txt")


def _user_data(ws, tmp, *, missing=False, unreadable=False):
    folder = Path(shutil.copytree(ws / "user", tmp / "user"))
    lines = (folder / "train.csv").read_text().splitlines()
    if missing:
        lines.append("images/missing.png,a photo of a cat.,cat")
    if unreadable:
        (folder / "images" / "broken.png").write_bytes(b"\x89PNG but not really")
        lines.append("images/broken.png,a photo of a cat.,cat")
    (folder / "train.csv").write_text("\n".join(lines) + "\n")
    return _unlearn(ws / "meru", "--data", str(folder / "train.csv"), "--test-data", str(folder / "test.csv"),
                    "--forget", "cat")


CASES = {
    "unknown concept": (lambda ws, tmp: _digits(ws, "--forget", "dragon"), r"unknown concept 'dragon'; valid concepts: .*seven"),
    "no request": (lambda ws, tmp: _digits(ws), "neither concepts nor sample ids"),
    "empty ids file": (lambda ws, tmp: _digits(ws, "--forget-ids", _ids_file(tmp, [])), "neither concepts nor sample ids"),
    "concepts and ids": (lambda ws, tmp: _digits(ws, "--forget", "seven", "--forget-ids", _ids_file(tmp, ["digits/train/00001"])),
                         "both concepts and sample ids"),
    "everything": (lambda ws, tmp: _digits(ws, "--forget", "number"), "selects all 1437 training items"),
    "every class": (lambda ws, tmp: _digits(ws, "--forget", "even", "--forget", "odd"), "selects all|forgets every class"),
    "unknown ids": (lambda ws, tmp: _digits(ws, "--forget-ids", _ids_file(tmp, ["digits/train/99999", "nope"])),
                    r"2 sample ids not in the training data .*nope"),
    "test ids": (lambda ws, tmp: _digits(ws, "--forget-ids", _ids_file(tmp, ["digits/test/00001"])), "test ids"),
    "unreadable ids file": (lambda ws, tmp: _digits(ws, "--forget-ids", str(tmp / "absent.txt")), "cannot read --forget-ids"),
    "missing checkpoint": (lambda ws, tmp: _digits(ws, "--forget", "seven", checkpoint=tmp / "nothing-here"), "no model at"),
    "corrupt weights": (_corrupt_weights, "corrupt or truncated"),
    "truncated weights": (_truncated_weights, "corrupt or truncated"),
    "truncated pth": (_truncated_pth, "corrupt or truncated"),
    "wrong architecture": (_wrong_architecture, r"does not match the .tiny. \(lorentz\) architecture.*shape mismatches"),
    "missing and unexpected keys": (_missing_and_unexpected_keys, r"visual_proj\.weight.*bogus_head\.weight|bogus_head\.weight.*visual_proj\.weight"),
    "pickled code": (_pickled_code, r"refused to load .*unpickling of code"),
    "missing image": (lambda ws, tmp: _user_data(ws, tmp, missing=True), r"train\.csv, line 20: image file not found: .*missing\.png"),
    "unreadable image": (lambda ws, tmp: _user_data(ws, tmp, unreadable=True), r"train\.csv, line 20: cannot read image .*broken\.png"),
    "unknown dataset": (lambda ws, tmp: _unlearn(ws / "meru", "--data", "imagenet", "--forget", "cat"), "neither a built-in dataset"),
    "user data without a test split": (lambda ws, tmp: _unlearn(ws / "meru", "--data", str(ws / "user" / "train.csv"), "--forget", "cat"),
                                       "--test-data"),
    "unknown setting": (lambda ws, tmp: _digits(ws, "--forget", "seven", "--set", "gamma_ray=1"), r"unknown setting\(s\) \['gamma_ray'\] for ACConfig; valid settings: .*'beta'"),
    "wrong type": (lambda ws, tmp: _digits(ws, "--forget", "seven", "--set", "steps=many"), "not a valid int"),
    "unknown method": (lambda ws, tmp: _digits(ws, "--forget", "seven", "--method", "amnesia"), "unknown unlearning method 'amnesia'"),
    "hac on CLIP": (None, "hyperbolic"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_refused_before_any_work(case, workspace, tmp_path, capsys):
    build, expected = CASES[case]
    if build is None:  # hac needs a hyperbolic model
        clip = tmp_path / "clip"
        from vlunlearn.models import build_model, save_model

        save_model(build_model("tiny", "euclidean"), clip)
        arguments = _digits(workspace, "--forget", "seven", checkpoint=clip)
        arguments[arguments.index("ac")] = "hac"
    else:
        arguments = build(workspace, tmp_path)
    before, inputs_before = snapshot(workspace), snapshot(tmp_path)
    out = tmp_path / "run"
    code = main([*arguments, "--out", str(out)])
    error = capsys.readouterr().err
    assert code == 2, error
    assert error.startswith("vlunlearn: error: ")
    assert re.search(expected, error), error
    assert not out.exists()
    assert snapshot(workspace) == before and snapshot(tmp_path) == inputs_before


def test_an_existing_output_folder_is_refused_unless_resuming(workspace, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    assert main([*_digits(workspace, "--forget", "seven"), "--out", str(out)]) == 2
    assert "already exists; choose a new --out or pass --resume" in capsys.readouterr().err
    assert snapshot(tmp_path) == before
    # a finished run is never resumed over
    done = tmp_path / "done"
    assert main([*_digits(workspace, "--forget", "seven"), "--out", str(done)]) == 0
    finished = snapshot(done)
    assert main([*_digits(workspace, "--forget", "seven"), "--out", str(done), "--resume"]) == 2
    assert "already complete" in capsys.readouterr().err
    assert snapshot(done) == finished


def test_a_diverging_run_stops_and_keeps_its_last_good_state(workspace, tmp_path, capsys):
    out = tmp_path / "run"
    before = snapshot(workspace)
    with pytest.warns(UserWarning, match="restored the state of step 0 and halved the learning rate"):
        code = main([*_digits(workspace, "--forget", "seven", "--set", "lr=1e30"), "--out", str(out)])
    error = capsys.readouterr().err
    assert code == 2 and "not finite" in error and "lower the learning rate" in error, error
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert sorted(p.name for p in out.iterdir()) == ["train_state.pt"]  # no model, no results
    assert snapshot(workspace) == before


def test_a_user_dataset_with_overlong_captions_runs_with_a_warning(workspace, tmp_path, capsys):
    folder = Path(shutil.copytree(workspace / "user", tmp_path / "user"))
    long_caption = "a photo of a cat " + " ".join(["that sits on a very long sofa"] * 20) + "."
    lines = (folder / "train.csv").read_text().splitlines()
    lines[1] = lines[1].replace("a photo of a cat.", long_caption)
    (folder / "train.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="exceeded context_length=32 tokens and were truncated"):
        code = main([*_unlearn(workspace / "meru", "--data", str(folder / "train.csv"), "--test-data",
                               str(folder / "test.csv"), "--forget", "cat"), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / "results.json").read_text())
    assert record["split_sizes"] == {"forget": 6, "retain": 12}


def test_the_installed_command_exits_non_zero(workspace, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "vlunlearn", *_digits(workspace, "--forget", "dragon"), "--out", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "unknown concept 'dragon'" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()
