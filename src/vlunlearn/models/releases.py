"""MERU's released checkpoints (``reference/meru.md`` §2.3), recognised by SHA-256, never by name.

HyCoCLIP's repository hosts GRIT-trained files with the same names, so a file is identified
only by its digest. ``--sha256`` lets a user pin the exact file they meant to load.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from vlunlearn.errors import CheckpointError


@dataclass(frozen=True)
class Release:
    """One released checkpoint: its file name, our model configuration name and its digest."""

    file: str
    config: str
    sha256: str
    source: str = "MERU (Desai et al., 2023), RedCaps, 120k iterations"


RELEASES = (
    Release("meru_vit_s.pth", "meru-vit-s", "4466c04a790d9b5974928e7e9e528cbff2d82348f596e60443a88934b9a61de6"),
    Release("meru_vit_b.pth", "meru-vit-b", "b37dfc515eb3753a8da59ff16231c7c3d89b494bca0345ab48d296235c939651"),
    Release("meru_vit_l.pth", "meru-vit-l", "5abc7254e2a6e81c13367a4912a32e08f09b05184a1fc31e178b8948f7e598b9"),
    Release("clip_vit_s.pth", "clip-vit-s", "f3daebf0fddf1c4159d062888faf9e840be0c5646875f85c7056cf8f2c76dbe7"),
    Release("clip_vit_b.pth", "clip-vit-b", "87e4566219cbedc2c95a31940a16a9c76370cdd9d71d0bad8945fa11990b41b4"),
    Release("clip_vit_l.pth", "clip-vit-l", "6a691b352ab8c4db85ea0722108a445ff57cb6b3db84842fb3dca1faefbf75f1"),
)


def sha256_of(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 digest of a file, read in chunks."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(chunk_bytes):
                digest.update(chunk)
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error.strerror}") from None
    return digest.hexdigest()


def identify_release(digest: str) -> Release | None:
    """The released checkpoint with this digest, if any."""
    return next((release for release in RELEASES if release.sha256 == digest.lower()), None)


def check_checkpoint_file(path: str | Path, expected_sha256: str | None = None) -> dict:
    """Digest of the checkpoint file at ``path`` (a directory's ``model.safetensors``), checked
    against ``expected_sha256`` when given. Returns ``{"sha256", "release"}`` for the results
    file; ``release`` names the MERU release the digest belongs to, or is ``None``.

    Raises:
        CheckpointError: the digests differ (both are named).
    """
    path = Path(path)
    file = path / "model.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise CheckpointError(f"no model at {path}")
    digest = sha256_of(file)
    if expected_sha256 is not None and digest != expected_sha256.strip().lower():
        raise CheckpointError(f"{file} has SHA-256 {digest}, not the expected {expected_sha256.strip().lower()}")
    release = identify_release(digest)
    return {"sha256": digest, "release": None if release is None else f"{release.file} ({release.source})"}
