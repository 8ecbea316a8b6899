"""Users' images streamed from disk: lazy image files (decoded per batch, optionally by worker
processes), WebDataset-style tar shards read with the standard library, and the CLI on them."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlunlearn.cli import main
from vlunlearn.data import load_image_text_folder, load_tar_shards
from vlunlearn.data.streaming import ImageFiles, ImageSource
from vlunlearn.errors import DataError
from vlunlearn.models import build_model, save_model


def _png(seed: int, size=(20, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _folder(root: Path, count: int = 6) -> Path:
    (root / "images").mkdir(parents=True)
    rows = ["path,caption,concepts"]
    for i in range(count):
        concept = "cat" if i % 2 else "dog"
        (root / "images" / f"{i}.png").write_bytes(_png(i))
        rows.append(f"images/{i}.png,a photo of a {concept}.,{concept}")
    (root / "pairs.csv").write_text("\n".join(rows) + "\n")
    return root / "pairs.csv"


def _shard(path: Path, items: dict[str, dict[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as archive:
        for key, members in items.items():
            for suffix, data in members.items():
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


def _items(first: int, count: int) -> dict[str, dict[str, bytes]]:
    items = {}
    for i in range(first, first + count):
        concept = "cat" if i % 2 else "dog"
        meta = {"concepts": [concept]} if i % 3 else {"caption": f"a photo of a {concept}.", "concepts": [concept]}
        members = {"png": _png(i), "json": json.dumps(meta).encode()}
        if i % 3:
            members["txt"] = f"a photo of a {concept}.".encode()
        items[f"sample{i:03d}"] = members
    return items


def test_streamed_images_equal_the_images_read_at_once(tmp_path):
    annotations = _folder(tmp_path)
    eager = load_image_text_folder(tmp_path, annotations, 16)
    lazy = load_image_text_folder(tmp_path, annotations, 16, stream=True)
    assert isinstance(lazy.inputs, ImageFiles) and lazy.inputs.shape == eager.inputs.shape == (6, 3, 16, 16)
    index = torch.tensor([4, 1, 1, 0])
    assert torch.equal(lazy.input_batch(index), eager.input_batch(index))
    subset = lazy.subset(torch.tensor([5, 2]))
    assert torch.equal(subset.input_batch([0, 1]), eager.input_batch([5, 2])) and subset.ids == ["images/5.png", "images/2.png"]
    # the fingerprint is stable and follows the files
    before = lazy.content_hash()
    assert before == load_image_text_folder(tmp_path, annotations, 16, stream=True).content_hash()
    (tmp_path / "images" / "3.png").write_bytes(_png(99))
    assert before != load_image_text_folder(tmp_path, annotations, 16, stream=True).content_hash()


def test_worker_processes_decode_the_same_pixels(tmp_path):
    annotations = _folder(tmp_path, count=8)
    inline = load_image_text_folder(tmp_path, annotations, 12, stream=True)
    pooled = load_image_text_folder(tmp_path, annotations, 12, stream=True, workers=2)
    assert torch.equal(pooled.input_batch(range(8)), inline.input_batch(range(8)))


def test_streaming_checks_every_file_before_work_and_names_it(tmp_path):
    annotations = _folder(tmp_path)
    (tmp_path / "images" / "2.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"pairs\.csv, line 4: cannot read image .*2\.png"):
        load_image_text_folder(tmp_path, annotations, 16, stream=True)
    (tmp_path / "images" / "2.png").unlink()
    with pytest.raises(DataError, match=r"line 4: image file not found"):
        load_image_text_folder(tmp_path, annotations, 16, stream=True)


def test_tar_shards_are_read_by_key(tmp_path):
    shards = [_shard(tmp_path / "a.tar", _items(0, 4)), _shard(tmp_path / "b.tar", _items(4, 3))]
    data = load_tar_shards(shards, 16)
    assert len(data) == 7 and data.ids[0] == "sample000" and data.ids[-1] == "sample006"
    assert data.class_names == ("cat", "dog") and data.labels.tolist() == [1, 0, 1, 0, 1, 0, 1]
    assert data.canonical_captions()[:2] == ["a photo of a dog.", "a photo of a cat."]  # from .json, then .txt
    expected = ImageFiles([ImageSource(str(tmp_path / "x.png"))], 16)
    (tmp_path / "x.png").write_bytes(_png(5))
    assert torch.equal(data.input_batch([5]), expected.decode().float() / 255)
    (tmp_path / "y.png").write_bytes(_png(6))
    last = ImageFiles([ImageSource(str(tmp_path / "y.png"))], 16).decode().float() / 255
    assert torch.equal(data.subset([6]).input_batch([0]), last)  # a member of the second shard
    assert not torch.equal(last, data.input_batch([5]))


def test_bad_shards_are_clear_errors(tmp_path):
    no_caption = _items(0, 2)
    del no_caption["sample000"]["json"]
    with pytest.raises(DataError, match=r"bad\.tar, item 'sample000': every item needs an image and a caption"):
        load_tar_shards([_shard(tmp_path / "bad.tar", no_caption)], 16)
    (tmp_path / "fake.tar").write_bytes(b"not a tar file at all" * 30)
    with pytest.raises(DataError, match="not a readable tar shard"):
        load_tar_shards([tmp_path / "fake.tar"], 16)
    with pytest.raises(DataError, match="tar shard not found"):
        load_tar_shards([tmp_path / "absent.tar"], 16)
    broken = _items(0, 2)
    broken["sample001"]["png"] = b"\x89PNG broken"
    data = load_tar_shards([_shard(tmp_path / "broken.tar", broken)], 16)
    with pytest.raises(DataError, match=r"item 'sample001': cannot read image sample001\.png in .*broken\.tar"):
        data.input_batch([1])


def test_unlearn_on_a_folder_of_shards_through_the_cli(tmp_path, capsys):
    torch.manual_seed(0)
    save_model(build_model("tiny", "lorentz"), tmp_path / "model")
    (tmp_path / "train").mkdir()
    _shard(tmp_path / "train" / "000.tar", _items(0, 8))
    _shard(tmp_path / "train" / "001.tar", _items(8, 8))
    _shard(tmp_path / "test.tar", _items(100, 8))
    out = tmp_path / "run"
    code = main(["unlearn", "--checkpoint", str(tmp_path / "model"), "--data", str(tmp_path / "train"),
                 "--test-data", str(tmp_path / "test.tar"), "--forget", "cat", "--method", "hac", "--set", "steps=2",
                 "--set", "retain_batch_size=4", "--set", "forget_batch_size=4", "--quiet", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / "results.json").read_text())
    assert record["split_sizes"] == {"forget": 8, "retain": 8} and record["run"]["steps"] == 2
