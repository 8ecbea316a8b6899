"""Released MERU/CLIP checkpoints: digests, ``--sha256``, class-folder zero-shot, and a random
``meru-vit-b`` written in MERU's layout that goes through ``unlearn`` and ``evaluate`` on CPU.

Set ``VLUNLEARN_RELEASED_CHECKPOINT=/path/to/meru_vit_s.pth`` (any of MERU's six files) to run
the same path on a real released checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlunlearn.cli import main
from vlunlearn.errors import CheckpointError
from vlunlearn.models import build_model, export_meru_checkpoint, save_model
from vlunlearn.models import releases
from vlunlearn.models.releases import RELEASES, Release, check_checkpoint_file, identify_release, sha256_of


def _images(folder: Path, names: list[str], seed: int, size=(48, 64), mode="RGB") -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shape = (*size, 3) if mode == "RGB" else size
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / name)


def _user_data(root: Path, counts: dict[str, dict[str, int]]) -> dict[str, Path]:
    """``counts[split][concept]`` RGB images and one CSV per split; returns the CSV paths."""
    files = {}
    for seed, (split, per_concept) in enumerate(counts.items()):
        rows = ["path,caption,concepts"]
        for concept, count in per_concept.items():
            names = [f"{split}-{concept}-{i}.png" for i in range(count)]
            _images(root / "images", names, seed=seed * 10 + len(concept))
            rows += [f"images/{name},a photo of a {concept}.,{concept}" for name in names]
        files[split] = root / f"{split}.csv"
        files[split].write_text("\n".join(rows) + "\n")
    return files


def test_the_six_releases_are_known_by_digest(tmp_path):
    assert [r.config for r in RELEASES] == ["meru-vit-s", "meru-vit-b", "meru-vit-l", "clip-vit-s", "clip-vit-b", "clip-vit-l"]
    assert all(len(r.sha256) == 64 and int(r.sha256, 16) >= 0 for r in RELEASES)
    assert identify_release(RELEASES[2].sha256.upper()) is RELEASES[2]
    file = tmp_path / "meru_vit_l.pth"  # the right name does not make it the release
    file.write_bytes(b"not the real file")
    digest = sha256_of(file)
    assert digest == "66719ed2ea2402a891e0109fef17695a6f3c3f49ea30f0499e355591fd56b355"  # hashlib.sha256(b"not the real file")
    assert check_checkpoint_file(file) == {"sha256": digest, "release": None}
    assert check_checkpoint_file(file, digest.upper())["sha256"] == digest
    with pytest.raises(CheckpointError, match=f"has SHA-256 {digest}, not the expected {'0' * 64}"):
        check_checkpoint_file(file, "0" * 64)
    with pytest.raises(CheckpointError, match="no model at"):
        check_checkpoint_file(tmp_path / "absent.pth")


def test_a_file_with_a_release_digest_is_named_in_the_record(tmp_path, monkeypatch):
    file = tmp_path / "model.pth"
    file.write_bytes(b"pretend release")
    monkeypatch.setattr(releases, "RELEASES", (Release("meru_vit_s.pth", "meru-vit-s", sha256_of(file)),))
    assert check_checkpoint_file(file)["release"].startswith("meru_vit_s.pth (MERU")


def test_zeroshot_on_a_class_folder_with_user_prompts(tmp_path, capsys):
    torch.manual_seed(0)
    save_model(build_model("tiny", "lorentz"), tmp_path / "model")
    _images(tmp_path / "classes" / "cat", ["a.png", "b.jpg"], seed=0, size=(30, 20), mode="L")
    _images(tmp_path / "classes" / "dog" / "more", ["c.png"], seed=1, size=(40, 40), mode="L")
    (tmp_path / "classes" / "dog" / "notes.txt").write_text("not an image")
    out = tmp_path / "zs"
    code = main(["zeroshot", "--checkpoint", str(tmp_path / "model"), "--images", str(tmp_path / "classes"),
                 "--prompt", "pics : a photo of a {}.", "--prompt", "itap of a {}.", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "results.json").read_text())
    assert result["data"]["classes"] == ["cat", "dog"] and result["data"]["size"] == 3
    assert result["prompts"] == ["pics : a photo of a cat.", "itap of a cat."]
    assert result["metrics"]["zero_shot"]["count"] == 3 and len(result["checkpoint_file"]["sha256"]) == 64
    assert "zero-shot top-1 macro" in capsys.readouterr().out
    # bad templates and folders are clear errors that write nothing
    for arguments, message in ((["--prompt", "a photo"], "exactly one '{}'"), (["--images", str(tmp_path / "model")], "no class sub-folders")):
        base = ["zeroshot", "--checkpoint", str(tmp_path / "model"), "--images", str(tmp_path / "classes")]
        assert main([*base, *arguments, "--out", str(tmp_path / "bad")]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "bad").exists()


def _unlearn_and_evaluate(checkpoint: Path, data: dict[str, Path], tmp_path: Path, method: str, capsys, sha256=None) -> dict:
    common = ["--data", str(data["train"]), "--test-data", str(data["test"])]
    digest = ["--sha256", sha256] if sha256 else []
    code = main(["unlearn", "--checkpoint", str(checkpoint), *common, "--forget", "cat", "--method", method,
                 "--set", "steps=1", "--set", "retain_batch_size=4", "--set", "forget_batch_size=4", *digest,
                 "--quiet", "--out", str(tmp_path / "unlearned")])
    assert code == 0, capsys.readouterr().err
    code = main(["evaluate", "--checkpoint", str(tmp_path / "unlearned" / "model"), "--original", str(checkpoint),
                 *common, "--quiet", "--out", str(tmp_path / "evaluation")])
    assert code == 0, capsys.readouterr().err
    return json.loads((tmp_path / "evaluation" / "results.json").read_text())


@pytest.mark.slow  # an 85M-parameter ViT-B through unlearn and evaluate on CPU: `make test-slow`
def test_a_random_meru_vit_b_in_meru_layout_through_unlearn_and_evaluate(tmp_path, capsys):
    torch.manual_seed(0)
    checkpoint = export_meru_checkpoint(build_model("meru-vit-b", "lorentz"), tmp_path / "meru_vit_b.pth")
    digest = sha256_of(checkpoint)
    data = _user_data(tmp_path / "data", {"train": {"cat": 6, "dog": 4}, "test": {"cat": 5, "dog": 2}})
    # a wrong digest is refused before anything is loaded
    assert main(["unlearn", "--checkpoint", str(checkpoint), "--data", str(data["train"]), "--test-data",
                 str(data["test"]), "--forget", "cat", "--sha256", "f" * 64, "--out", str(tmp_path / "never")]) == 2
    assert "not the expected" in capsys.readouterr().err and not (tmp_path / "never").exists()

    results = _unlearn_and_evaluate(checkpoint, data, tmp_path, "hac", capsys, sha256=digest)
    unlearn_record = json.loads((tmp_path / "unlearned" / "results.json").read_text())
    assert unlearn_record["checkpoint_file"]["sha256"] == digest and unlearn_record["model"] == "meru-vit-b"
    assert unlearn_record["split_sizes"] == {"forget": 6, "retain": 4}
    assert [r["method"] for r in results["records"]] == ["original", "hac"]
    for record in results["records"]:
        assert record["model"] == "meru-vit-b" and record["forget"] == ["cat"]
        for key in ("zs_test_forget", "zs_test_retain", "mia_auc", "alignment_gap", "entailment_rate_forget"):
            assert np.isfinite(record["metrics"][key]), key
    assert (tmp_path / "evaluation" / "report.md").exists()
    assert checkpoint.exists() and sha256_of(checkpoint) == digest  # the input is never modified


@pytest.mark.skipif(not os.environ.get("VLUNLEARN_RELEASED_CHECKPOINT"),
                    reason="set VLUNLEARN_RELEASED_CHECKPOINT to a released MERU/CLIP .pth to run this test")
def test_a_user_supplied_released_checkpoint(tmp_path, capsys):
    checkpoint = Path(os.environ["VLUNLEARN_RELEASED_CHECKPOINT"])
    digest = sha256_of(checkpoint)
    release = identify_release(digest)
    data = _user_data(tmp_path / "data", {"train": {"cat": 6, "dog": 4}, "test": {"cat": 5, "dog": 2}})
    method = "hac" if release is None or release.config.startswith("meru") else "ac"
    results = _unlearn_and_evaluate(checkpoint, data, tmp_path, method, capsys, sha256=digest)
    original = results["records"][0]
    if release is not None:
        assert original["model"] == release.config
        assert original["geometry"] == ("lorentz" if release.config.startswith("meru") else "euclidean")
    assert all(np.isfinite(r["metrics"]["zs_test_forget"]) for r in results["records"])
