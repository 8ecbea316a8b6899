"""Reading and writing models in the native directory format (see :mod:`vlunlearn.models.meru_format`
for MERU's ``.pth`` layout, which :func:`load_any` also reads).

Native format: a directory holding

* ``model.safetensors``: the model's ``state_dict`` (the same keys as MERU's);
* ``config.json``: ``{"format": "vlunlearn-model", "version": 1, "config": {...}, "metadata": {...}}``;
* ``extras.safetensors`` (only when the model has a ``root_embedding``): ``{"root": tensor}``.

Loading never trusts a file: keys and shapes are checked strictly and every failure is a
:class:`~vlunlearn.errors.CheckpointError` that names the file and what is wrong.
``pixel_mean`` and ``pixel_std`` come from the checkpoint's buffers.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vlunlearn.errors import CheckpointError
from vlunlearn.io import fsync_path, temporary_sibling
from vlunlearn.models.configs import ModelConfig
from vlunlearn.models.contrastive import ContrastiveModel

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "save_model",
    "load_model",
    "load_any",
    "read_metadata",
]

FORMAT = "vlunlearn-model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
EXTRAS_FILE = "extras.safetensors"
_LIST_LIMIT = 10


# --------------------------------------------------------------------------- helpers


def _build_on_meta(config: ModelConfig) -> ContrastiveModel:
    """The model's structure without allocating or initialising weights."""
    with torch.device("meta"):
        return ContrastiveModel(config)


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LIST_LIMIT])
    more = f", ... ({len(keys) - _LIST_LIMIT} more)" if len(keys) > _LIST_LIMIT else ""
    return f"{len(keys)}: {shown}{more}"


def _fill(model: ContrastiveModel, state: Mapping[str, Tensor], source: str) -> ContrastiveModel:
    """Strictly check ``state`` against ``model`` (built on the meta device) and adopt its tensors."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    not_tensors = [k for k in state if k in expected and not isinstance(state[k], Tensor)]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and isinstance(state[k], Tensor) and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched or not_tensors:
        parts = [f"checkpoint {source} does not match the {model.config.name!r} "
                 f"({model.config.geometry}) architecture"]
        if missing:
            parts.append(f"missing keys {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_listing(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches {_listing(mismatched)}")
        if not_tensors:
            parts.append(f"entries that are not tensors {_listing(not_tensors)}")
        raise CheckpointError("; ".join(parts))
    converted = {k: state[k].detach().to(device="cpu", dtype=expected[k].dtype) for k in expected}
    model.load_state_dict(converted, strict=True, assign=True)
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:  # a tensor outside the state_dict; cannot happen with the current model
        raise CheckpointError(f"checkpoint {source} left tensors uninitialised: {_listing(leftover)}")
    return model.eval()


def _with_pixel_stats(config: ModelConfig, state: Mapping[str, Any]) -> ModelConfig:
    """``config`` with ``pixel_mean``/``pixel_std`` taken from the checkpoint's buffers."""
    mean, std = state.get("pixel_mean"), state.get("pixel_std")
    if isinstance(mean, Tensor) and isinstance(std, Tensor) and mean.numel() == std.numel() and mean.numel() > 0:
        try:
            return config.replace(pixel_mean=_short_floats(mean), pixel_std=_short_floats(std))
        except ValueError as error:
            raise CheckpointError(f"invalid pixel statistics in the checkpoint: {error}") from None
    return config


def _short_floats(values: Tensor) -> tuple[float, ...]:
    """The shortest decimals that give the same float32 values (0.229, not 0.2290000021457672)."""
    return tuple(float(str(np.float32(v))) for v in values.detach().float().flatten().tolist())


def _storage_safe(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """CPU, contiguous tensors that share no storage (as safetensors requires)."""
    out, seen = {}, set()
    for key, tensor in tensors.items():
        t = tensor.detach().cpu()
        storage = t.untyped_storage()
        whole = t.is_contiguous() and t.storage_offset() == 0 and storage.nbytes() == t.numel() * t.element_size()
        if not whole or storage.data_ptr() in seen:
            t = t.contiguous().clone()
        seen.add(t.untyped_storage().data_ptr())
        out[key] = t
    return out


# --------------------------------------------------------------------------- native format


def save_model(
    model: ContrastiveModel,
    directory: str | os.PathLike,
    metadata: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` as a native model directory and return its path.

    ``metadata`` (JSON-serialisable) is stored in ``config.json``. An existing non-empty
    ``directory`` is refused unless ``overwrite``. The directory is assembled under a
    temporary sibling name and renamed into place, so readers never see a partial model.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    if directory.exists() or directory.is_symlink():
        if not directory.is_dir():
            raise CheckpointError(f"cannot save the model to {directory}: it exists and is not a directory")
        if any(directory.iterdir()) and not overwrite:
            raise CheckpointError(f"refusing to save the model into {directory}: the directory is not empty "
                                  "(pass overwrite=True to replace it)")
    header = {"format": FORMAT, "version": FORMAT_VERSION, "config": model.config.to_dict(),
              "metadata": dict(metadata or {})}
    try:
        text = json.dumps(header, indent=2) + "\n"
    except (TypeError, ValueError) as error:
        raise ValueError(f"model metadata must be JSON-serialisable: {error}") from None

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(directory)
    tmp.mkdir()
    try:
        save_file(_storage_safe(model.state_dict()), tmp / WEIGHTS_FILE, metadata={"format": "pt"})
        if model.root_embedding is not None:
            save_file(_storage_safe({"root": model.root_embedding}), tmp / EXTRAS_FILE, metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_bytes(text.encode("utf-8"))
        for file in tmp.iterdir():
            fsync_path(file)
        fsync_path(tmp)
        if directory.exists():
            old = temporary_sibling(directory)
            os.rename(directory, old)
            try:
                os.rename(tmp, directory)
            except BaseException:
                os.rename(old, directory)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_path(directory.parent)
    return directory


def _read_header(directory: Path) -> dict:
    config_path = directory / CONFIG_FILE
    try:
        header = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{directory} is not a vlunlearn model directory: {CONFIG_FILE} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"cannot read {config_path}: {error}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{config_path} is not a {FORMAT!r} configuration")
    if header.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{config_path} has format version {header.get('version')!r}; "
                              f"this vlunlearn reads version {FORMAT_VERSION}")
    return header


def read_metadata(path: str | os.PathLike) -> dict:
    """The ``metadata`` dict stored with a native model (directory or its ``config.json``)."""
    path = Path(path)
    return dict(_read_header(path if path.is_dir() else path.parent).get("metadata") or {})


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except FileNotFoundError:
        raise CheckpointError(f"model weights file {path} is missing") from None
    except Exception as error:  # safetensors raises its own error types for corrupt headers/data
        raise CheckpointError(f"cannot read model weights {path}: the file is corrupt or truncated "
                              f"({type(error).__name__}: {error})") from None


def _load_native(directory: Path, weights: Path) -> ContrastiveModel:
    header = _read_header(directory)
    try:
        config = ModelConfig.from_dict(header.get("config"))
    except ValueError as error:
        raise CheckpointError(f"invalid model configuration in {directory / CONFIG_FILE}: {error}") from None
    state = _read_safetensors(weights)
    model = _fill(_build_on_meta(_with_pixel_stats(config, state)), state, str(weights))
    extras_path = directory / EXTRAS_FILE
    if extras_path.exists():
        model.root_embedding = _read_safetensors(extras_path).get("root")
    return model


def load_model(path: str | os.PathLike) -> ContrastiveModel:
    """Load a native model directory written by :func:`save_model` (in eval mode)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a model directory")
    return _load_native(path, path / WEIGHTS_FILE)


# --------------------------------------------------------------------------- dispatch


def load_any(path: str | os.PathLike) -> ContrastiveModel:
    """Load a model from a native directory (or its ``.safetensors``/``config.json`` file) or a
    MERU-layout ``.pth``/``.pt`` file."""
    path = Path(path)
    if path.is_dir():
        return load_model(path)
    if not path.exists():
        raise CheckpointError(f"no model at {path}")
    suffix = path.suffix.lower()
    if suffix in (".pth", ".pt"):
        from vlunlearn.models.meru_format import import_meru_checkpoint  # meru_format imports this module

        return import_meru_checkpoint(path)
    if suffix == ".safetensors" and (path.parent / CONFIG_FILE).is_file():
        return _load_native(path.parent, path)
    if path.name == CONFIG_FILE:
        return load_model(path.parent)
    raise CheckpointError(f"do not know how to load {path}: expected a model directory, a .pth/.pt file "
                          f"or a .safetensors file beside a {CONFIG_FILE}")
