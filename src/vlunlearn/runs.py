"""Run folders: one per command, never overwritten, with a results file that records everything."""

from __future__ import annotations

import itertools
import json
import os
import tempfile
import traceback
from pathlib import Path
from typing import Any

from vlunlearn.errors import VlunlearnError
from vlunlearn.io import atomic_write_text

SCHEMA_VERSION = 1


def check_new_run_folder(out: Path, resume: bool = False) -> Path:
    """Refuse an existing, non-empty ``out`` unless ``resume``; call before any work starts."""
    out = Path(out)
    if out.exists() and not resume and any(out.iterdir()):
        raise VlunlearnError(f"the output folder {out} already exists; choose a new --out or pass --resume")
    return out


def create_run_folder(out: Path, resume: bool = False) -> Path:
    """Create ``out`` for a new run. An existing folder is refused unless ``resume``."""
    out = check_new_run_folder(out, resume)
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON, atomically, with the results schema version first."""
    atomic_write_text(path, json.dumps({"schema_version": SCHEMA_VERSION, **payload}, indent=2, sort_keys=False) + "\n")


def save_traceback(out: str | None) -> Path:
    """Write the traceback of the exception being handled to a new file and return its path:
    ``<out>/error.txt`` (``error-1.txt``, ... when taken; never overwritten) when the run folder
    ``out`` exists, else a new ``vlunlearn-error-*.txt`` in the temporary directory."""
    text = traceback.format_exc()
    if out and Path(out).is_dir():
        for index in itertools.count():
            path = Path(out) / ("error.txt" if index == 0 else f"error-{index}.txt")
            try:
                with path.open("x", encoding="utf-8") as file:
                    file.write(text)
                return path
            except FileExistsError:
                continue
            except OSError:  # an unwritable run folder: fall back to the temporary directory
                break
    handle, name = tempfile.mkstemp(prefix="vlunlearn-error-", suffix=".txt")
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        file.write(text)
    return Path(name)

