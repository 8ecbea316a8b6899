"""Images that stay on disk until a batch needs them, decoded by worker processes.

:class:`ImageFiles` stands in for a :class:`~vlunlearn.data.PairDataset`'s uint8 image
tensor: indexing it selects files without reading them, and :meth:`ImageFiles.decode` reads,
resizes and centre-crops a batch (MERU's protocol: shorter side to ``size``, bicubic) in a
pool of ``workers`` processes (none: in this process). Sources are image files or members of
WebDataset-style tar shards (``<key>.jpg`` beside ``<key>.txt`` / ``<key>.json``), read with
the standard library's ``tarfile``, so no extra package is needed.
"""

from __future__ import annotations

import atexit
import hashlib
import multiprocessing
import tarfile
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from vlunlearn.errors import DataError

_POOLS: dict[int, Executor] = {}
_OPEN_SHARDS: dict[str, tarfile.TarFile] = {}


@dataclass(frozen=True)
class ImageSource:
    """One image: a file, or the member ``member`` of the tar shard ``file``. ``where`` names
    it in error messages (annotation file and line, or shard and key)."""

    file: str
    member: str | None = None
    where: str = ""

    def read(self) -> bytes | str:
        """The encoded bytes (tar member) or the path to open (file)."""
        if self.member is None:
            return self.file
        shard = _OPEN_SHARDS.get(self.file)
        if shard is None:
            shard = _OPEN_SHARDS[self.file] = tarfile.open(self.file)
        handle = shard.extractfile(self.member)
        if handle is None:
            raise DataError(f"{self.where}: {self.member} in {self.file} is not a file")
        return handle.read()


def decode_image(source: ImageSource, size: int, mode: str) -> np.ndarray:
    """``source`` converted to ``mode`` (``RGB`` or ``L``), shorter side resized to ``size``
    (bicubic), centre-cropped: uint8 ``(C, size, size)``. Raises :class:`DataError` naming it."""
    try:
        data = source.read()
        with Image.open(BytesIO(data) if isinstance(data, bytes) else data) as image:
            image = image.convert(mode)
            width, height = image.size
            scale = size / min(width, height)
            new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
            image = image.resize(new_size, Image.Resampling.BICUBIC)
            left, top = (new_size[0] - size) // 2, (new_size[1] - size) // 2
            array = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, tarfile.TarError, Image.DecompressionBombError) as error:
        shown = source.file if source.member is None else f"{source.member} in {source.file}"
        raise DataError(f"{source.where}: cannot read image {shown}: {error}") from error
    return (array[:, :, None] if array.ndim == 2 else array).transpose(2, 0, 1).copy()


def _pool(workers: int) -> Executor:
    """A process pool of ``workers`` shared by every dataset; spawned, so that no torch thread
    state is forked, and shut down at exit."""
    if workers not in _POOLS:
        _POOLS[workers] = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    return _POOLS[workers]


@atexit.register
def _release_at_exit() -> None:
    """Shut the worker pools down and close the tar shards this process opened."""
    for pool in _POOLS.values():
        pool.shutdown(cancel_futures=True)
    for shard in _OPEN_SHARDS.values():
        shard.close()


class ImageFiles:
    """A lazy uint8 ``(N, C, size, size)`` image store (see the module docstring).

    It offers what :class:`~vlunlearn.data.PairDataset` uses of an image tensor: ``shape``,
    ``ndim``, ``dtype``, ``len`` and indexing by an index tensor (which returns another
    :class:`ImageFiles`), plus :meth:`decode` and :meth:`fingerprint`.
    """

    dtype = torch.uint8
    ndim = 4

    def __init__(self, sources: list[ImageSource], size: int, channels: int = 3, workers: int = 0) -> None:
        if channels not in (1, 3):
            raise DataError(f"images have 1 or 3 channels, not {channels!r}")
        self.sources = list(sources)
        self.size = int(size)
        self.channels = channels
        self.workers = int(workers)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.sources), self.channels, self.size, self.size)

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: Tensor) -> "ImageFiles":
        return ImageFiles([self.sources[i] for i in torch.as_tensor(index).tolist()], self.size, self.channels, self.workers)

    def decode(self) -> Tensor:
        """Every image of this store, decoded: uint8 ``(N, C, size, size)``."""
        mode = "RGB" if self.channels == 3 else "L"
        count = len(self.sources)
        if self.workers and count > 1:
            chunk = max(1, count // (4 * self.workers))
            arrays = list(_pool(self.workers).map(decode_image, self.sources, [self.size] * count, [mode] * count, chunksize=chunk))
        else:
            arrays = [decode_image(source, self.size, mode) for source in self.sources]
        if not arrays:
            return torch.zeros(self.shape, dtype=torch.uint8)
        return torch.from_numpy(np.stack(arrays))

    def fingerprint(self) -> bytes:
        """A digest of the sources' names, sizes and modification times (not of the pixels,
        which would mean reading every image), with the decoding size and channels."""
        digest = hashlib.sha256(f"{self.size}/{self.channels}".encode())
        for source in self.sources:
            stat = Path(source.file).stat()
            digest.update(f"{source.file}|{source.member}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        return digest.digest()
