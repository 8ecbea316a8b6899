"""A workspace of inputs for the robustness suite: a small tiny-MERU checkpoint (native folder and
MERU ``.pth``), and a user's image-text data (CSV with images on disk, train and test)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlunlearn.models import build_model, export_meru_checkpoint, save_model

CONCEPTS = ("cat", "dog", "bird")


def snapshot(folder: Path, skip: Path | None = None) -> dict[str, tuple[int, bytes]]:
    """Every file under ``folder`` (except under ``skip``) with its modification time and bytes."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file() and (skip is None or skip not in p.parents)
    }


def write_user_data(folder: Path, name: str, per_concept: int, seed: int) -> Path:
    """``per_concept`` PNG images for each concept and ``folder/name.csv`` describing them."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = ["path,caption,concepts"]
    for concept in CONCEPTS:
        for i in range(per_concept):
            path = f"images/{name}-{concept}-{i}.png"
            Image.fromarray(rng.integers(0, 256, (32, 40), dtype=np.uint8)).save(folder / path)
            rows.append(f"{path},a photo of a {concept}.,{concept}")
    annotations = folder / f"{name}.csv"
    annotations.write_text("\n".join(rows) + "\n")
    return annotations


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("robustness")
    torch.manual_seed(0)
    model = build_model("tiny", "lorentz")
    save_model(model, root / "meru")
    export_meru_checkpoint(model, root / "meru.pth")
    write_user_data(root / "user", "train", per_concept=6, seed=0)
    write_user_data(root / "user", "test", per_concept=3, seed=1)
    return root
