#!/usr/bin/env python3
"""Write a built-in dataset as a users' folder of images, so that the README walk-through runs offline.

Layout (nothing else; no hierarchy file: the concept lists imply the tree)::

    OUT/images/train/<class>/<index>.png     the built-in 28x28 grey images, as PNG files
    OUT/images/test/<class>/<index>.png
    OUT/train.jsonl                          one row per image, image paths relative to OUT:
    OUT/test.jsonl                           {"id", "path", "caption", "concepts"}

A row's caption is the built-in class caption ("a handwritten seven."); its concepts are the
class and its ancestors in the built-in hierarchy, specific -> generic, as a user writes them
(``["seven", "odd", "number"]``), or with ``--paths`` one concept path, generic -> specific
(``["number/odd/seven"]``). Ids are the built-in ones (``digits/train/00042``), unique.

``--limit N`` keeps N items per split, drawn with ``--seed`` and spread evenly over the classes
(every class keeps ``N // 10`` items or one more, when it has them), in the built-in order.

Command
    python scripts/export_image_folder.py --out data/digits-folder --limit 300
    python scripts/export_image_folder.py --data fashion-mnist --out data/fashion --paths
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from vlunlearn.data import PairDataset, load_builtin

DATASETS = ("digits", "fashion-mnist")  # one class per image: a plain concept list per row
SPLITS = ("train", "test")


def balanced_subset(labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Sorted indices of ``limit`` items (all when None), as evenly spread over the labels as they allow.

    Each label's items are shuffled with ``seed``; the items are then taken round-robin over the
    labels (every label's first item, then every label's second, ...), so a class is never left out
    while ``limit`` is at least the number of classes.
    """
    if limit is None or limit >= labels.size:
        return np.arange(labels.size)
    order = np.random.default_rng(seed).permutation(labels.size)
    rank = np.empty(labels.size, dtype=np.int64)  # an item's place among its class's shuffled items
    for label in np.unique(labels):
        members = order[labels[order] == label]
        rank[members] = np.arange(members.size)
    position = np.empty(labels.size, dtype=np.int64)
    position[order] = np.arange(labels.size)
    chosen = np.lexsort((position, rank))[:limit]
    return np.sort(chosen)


def concepts_of(data: PairDataset, class_name: str, as_path: bool) -> list[str]:
    """The class and its ancestors, specific -> generic, or one path generic -> specific."""
    chain = list(data.hierarchy.ancestors(class_name))
    return ["/".join(reversed(chain))] if as_path else chain


def write_split(data: PairDataset, indices: np.ndarray, root: Path, split: str, as_path: bool) -> int:
    """PNG files under ``root/images/<split>/`` and ``root/<split>.jsonl``; returns the row count."""
    rows = []
    for index in indices.tolist():
        class_name = data.class_names[int(data.labels[index])]
        relative = Path("images", split, class_name.replace(" ", "_"), f"{data.ids[index].rsplit('/', 1)[-1]}.png")
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        pixels = data.inputs[index].numpy()  # uint8 (C, H, W), C = 1
        Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)).save(root / relative)
        rows.append({"id": data.ids[index], "path": relative.as_posix(), "caption": data.captions[index][-1],
                     "concepts": concepts_of(data, class_name, as_path)})
    (root / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return len(rows)


def export(name: str, out: Path, limit: int | None = None, as_path: bool = False, seed: int = 0) -> dict[str, int]:
    """Write the built-in ``name`` as a users' folder in the new folder ``out``; returns rows per split.

    The folder is written under a temporary name next to ``out`` and renamed at the end, so a
    failed export leaves nothing. Raises FileExistsError when ``out`` exists.
    """
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new folder (nothing is overwritten)")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    partial.mkdir()
    try:
        counts = {}
        for split in SPLITS:
            data = load_builtin(name, split)
            chosen = balanced_subset(data.labels.numpy(), limit, seed)
            counts[split] = write_split(data, chosen, partial, split, as_path)
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=DATASETS, default="digits", help="built-in dataset (default: digits)")
    parser.add_argument("--out", required=True, type=Path, help="new folder (refused if it exists)")
    parser.add_argument("--limit", type=int, metavar="N", help="items per split (default: all)")
    parser.add_argument("--paths", action="store_true", help='concepts as one path "number/odd/seven" per row')
    parser.add_argument("--seed", type=int, default=0, help="which items --limit keeps (default 0)")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be a positive number of items per split, not {args.limit}")
    if args.out.exists():
        parser.error(f"--out {args.out} exists; choose a new folder (nothing is overwritten)")
    counts = export(args.data, args.out, args.limit, args.paths, args.seed)
    print(f"{args.data}: {counts['train']} training and {counts['test']} test images with "
          f"{args.out / 'train.jsonl'} and {args.out / 'test.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
