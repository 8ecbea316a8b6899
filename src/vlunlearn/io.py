"""Atomic file writing: a reader sees the old file or the complete new one, never a partial one.

Every file the library writes goes through :func:`atomic_path` (directly or via
:func:`atomic_write_bytes` / :func:`atomic_write_text`): the content is written to a
temporary file in the destination's directory, flushed to disk, and renamed onto the
destination; on any error the temporary file is removed and the destination is left as
it was.
"""

from __future__ import annotations

import contextlib
import io
import os
import zipfile
import secrets
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_npz", "atomic_write_text", "fsync_path", "temporary_sibling"]


def temporary_sibling(path: str | os.PathLike) -> Path:
    """A fresh, unused name in ``path``'s directory that ends with ``path``'s name.

    Keeping the name (and so the suffix) matters for writers that pick a format by
    extension or append one (``numpy.save`` adds ``.npy`` when it is missing).
    """
    path = Path(path)
    return path.with_name(f".tmp-{secrets.token_hex(6)}-{path.name}")


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file, or a directory entry list, to disk (best effort for directories)."""
    path = Path(path)
    is_dir = path.is_dir()
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if is_dir:  # some platforms cannot open directories
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not is_dir:
            raise
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``.

    The caller writes a regular file at the yielded path. If the ``with`` body raises,
    the temporary file is removed and ``path`` is untouched. Missing parent directories
    are created.

    Example::

        with atomic_path("out/state.pt") as tmp:
            torch.save(state, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"atomic write of {path}: nothing was written to the temporary file {tmp}")
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    fsync_path(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (no newline translation)."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray],
                     date_time: tuple[int, ...] = (1980, 1, 1, 0, 0, 0), compresslevel: int | None = None) -> None:
    """``numpy.savez_compressed`` with every member stamped ``date_time`` (numpy stamps the
    current time), so that the same arrays give the same bytes; written atomically."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=date_time)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue(), compresslevel=compresslevel)
