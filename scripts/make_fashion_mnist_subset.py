#!/usr/bin/env python3
"""Build ``src/vlunlearn/data/assets/fashion_mnist_subset.npz``, the vendored Fashion-MNIST subset.

Source
    Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017, https://github.com/zalandoresearch/fashion-mnist),
    read from the gzipped IDX files that Debian's ``dataset-fashion-mnist`` package installs in
    ``/usr/share/datasets/fashion-mnist/`` (``apt-get install dataset-fashion-mnist``; package
    version 0.0~git20200523.55506a9-1, Debian bookworm).

Licence
    MIT, Copyright (c) 2017 Zalando SE, https://tech.zalando.com. The full text is vendored next
    to the subset as ``src/vlunlearn/data/assets/FASHION_MNIST_LICENSE``.

Selection (deterministic, no randomness)
    The first 1000 images of each class, in file order, of the official training file, and the
    first 200 images of each class, in file order, of the official test file. The kept images
    stay in file order. Result: ``train_images`` (10000, 28, 28) uint8, ``train_labels``
    (10000,) uint8, ``test_images`` (2000, 28, 28) uint8, ``test_labels`` (2000,) uint8.

Reproducibility
    The archive is written like ``np.savez_compressed`` but with a fixed timestamp on every
    member, so that the same input gives byte-identical output (with the same zlib). The script
    prints the SHA-256 of the file it wrote; ``tests/test_data.py`` records the expected one.

Command
    python scripts/make_fashion_mnist_subset.py
    python scripts/make_fashion_mnist_subset.py --source DIR --out FILE --train-per-class 1000 --test-per-class 200
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
from pathlib import Path

import numpy as np

from vlunlearn.io import atomic_write_npz

DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "vlunlearn" / "data" / "assets" / "fashion_mnist_subset.npz"
FIXED_DATE = (2017, 8, 25, 0, 0, 0)  # Fashion-MNIST release date; any fixed value would do


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (unsigned byte data) into a numpy array."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    magic = int.from_bytes(data[0:4], "big")
    if magic >> 8 != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {magic:#010x})")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    array = np.frombuffer(data, dtype=np.uint8, offset=offset)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {shape} values, found {array.size}")
    return array.reshape(shape)


def first_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first ``per_class`` items of every class, in file order."""
    keep = []
    for label in np.unique(labels):
        where = np.flatnonzero(labels == label)
        if where.size < per_class:
            raise ValueError(f"class {label} has only {where.size} items, {per_class} requested")
        keep.append(where[:per_class])
    return np.sort(np.concatenate(keep))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="folder with the IDX .gz files")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--train-per-class", type=int, default=1000)
    parser.add_argument("--test-per-class", type=int, default=200)
    args = parser.parse_args()

    arrays = {}
    for split, prefix, per_class in (("train", "train", args.train_per_class), ("test", "t10k", args.test_per_class)):
        images = read_idx(args.source / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(args.source / f"{prefix}-labels-idx1-ubyte.gz")
        keep = first_per_class(labels, per_class)
        arrays[f"{split}_images"] = images[keep]
        arrays[f"{split}_labels"] = labels[keep]
        print(f"{split}: {keep.size} of {labels.size} images ({per_class} per class)")
    atomic_write_npz(args.out, arrays, date_time=FIXED_DATE, compresslevel=9)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    print(f"sha256 {digest}")


if __name__ == "__main__":
    main()
