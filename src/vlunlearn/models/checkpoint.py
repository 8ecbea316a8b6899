"""Reading and writing models: the native directory format and MERU's ``.pth`` layout.

Native format: a directory holding

* ``model.safetensors``: the model's ``state_dict`` (the same keys as MERU's);
* ``config.json``: ``{"format": "vlunlearn-model", "version": 1, "config": {...}, "metadata": {...}}``;
* ``extras.safetensors`` (only when the model has a ``root_embedding``): ``{"root": tensor}``.

MERU format: a ``torch.save`` file of ``{"model": state_dict, ...}`` (other top-level keys,
such as ``iteration`` or ``optimizer``, are ignored; CLIP checkpoints carry ``root``, which
becomes :attr:`ContrastiveModel.root_embedding`) or of a bare state dict, read with
``weights_only=True``. :func:`export_meru_checkpoint` writes ``{"model": state_dict}`` plus
``root`` when the model has one and ``vlunlearn_config`` (the :class:`ModelConfig` as a
plain dict, which MERU's loader ignores), so any model round-trips exactly.

Loading never trusts a file: keys and shapes are checked strictly and every failure is a
:class:`~vlunlearn.errors.CheckpointError` that names the file and what is wrong.
``pixel_mean`` and ``pixel_std`` come from the checkpoint's buffers.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vlunlearn.errors import CheckpointError
from vlunlearn.io import atomic_path, fsync_path, temporary_sibling
from vlunlearn.models.configs import MODEL_NAMES, TINY_NAMES, ModelConfig, model_config
from vlunlearn.models.contrastive import ContrastiveModel

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "save_model",
    "load_model",
    "load_any",
    "import_meru_checkpoint",
    "export_meru_checkpoint",
    "infer_config",
    "read_metadata",
]

FORMAT = "vlunlearn-model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
EXTRAS_FILE = "extras.safetensors"
CONFIG_KEY = "vlunlearn_config"  # top-level key of exported MERU-layout files
_LIST_LIMIT = 10
_PREFIXES = ("module.", "model.")


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


def _strip_prefixes(state: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in state.items():
        key = str(key)
        while key.startswith(_PREFIXES):
            key = key.split(".", 1)[1]
        if key in out:
            raise CheckpointError(f"key {key!r} occurs more than once once 'module.'/'model.' prefixes are removed")
        out[key] = value
    return out


def _count_indices(state: Mapping[str, Any], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 0


_KNOWN_VISION_HEADS = {384: 12, 768: 12, 1024: 16}
_KNOWN_TEXT_HEADS = {512: 8}


def _heads(width: int, depth: int, tower: str) -> int:
    known = _KNOWN_VISION_HEADS if tower == "vision" else _KNOWN_TEXT_HEADS
    if width in known:
        return known[width]
    for name in MODEL_NAMES:  # a named configuration with this shape (e.g. tiny)
        cfg = model_config(name)
        if (getattr(cfg, f"{tower}_width"), getattr(cfg, f"{tower}_depth")) == (width, depth):
            return getattr(cfg, f"{tower}_heads")
    return width // 64 if width % 64 == 0 else 1


def infer_config(state: Mapping[str, Any]) -> ModelConfig:
    """Infer the architecture from a MERU-layout state dict (prefixes already removed).

    Lorentz iff ``curv`` is present; widths, depths, patch and image size, vocabulary
    and context length from the tensor shapes; heads (which no shape reveals) 12 for
    vision widths 384/768, 16 for 1024, 8 for text width 512, else those of a named
    configuration of the same width and depth, else ``width // 64``.
    """

    def shape(key: str, ndim: int) -> tuple[int, ...]:
        value = state.get(key)
        if not isinstance(value, Tensor) or value.ndim != ndim:
            raise CheckpointError(
                f"cannot infer the architecture: {key!r} is missing or not a {ndim}-d tensor "
                "(is this a MERU/CLIP model state dict? pass config= to name the architecture)"
            )
        return tuple(value.shape)

    embed_dim, vision_width = shape("visual_proj.weight", 2)
    _, text_width = shape("textual_proj.weight", 2)
    _, in_channels, patch, patch_w = shape("visual.patch_embed.proj.weight", 4)
    _, tokens, _ = shape("visual.pos_embed", 3)
    vocab_size, _ = shape("textual.token_embed.weight", 2)
    context_length, _ = shape("textual.posit_embed", 2)
    grid = round((tokens - 1) ** 0.5)
    if patch != patch_w or grid * grid != tokens - 1:
        raise CheckpointError(f"cannot infer the architecture: non-square patches {patch}x{patch_w} "
                              f"or patch count {tokens - 1} is not a square")
    vision_depth = _count_indices(state, "visual.blocks.")
    text_depth = _count_indices(state, "textual.resblocks.")
    geometry = "lorentz" if "curv" in state else "euclidean"
    fields = dict(
        geometry=geometry,
        image_size=grid * patch,
        patch_size=patch,
        vision_width=vision_width,
        vision_depth=vision_depth,
        vision_heads=_heads(vision_width, vision_depth, "vision"),
        text_width=text_width,
        text_depth=text_depth,
        text_heads=_heads(text_width, text_depth, "text"),
        vocab_size=vocab_size,
        context_length=context_length,
        embed_dim=embed_dim,
    )
    name = "custom"
    for candidate in MODEL_NAMES:
        cfg = model_config(candidate, geometry if candidate in TINY_NAMES else None)
        if all(getattr(cfg, k) == v for k, v in fields.items()):
            name = cfg.name
            break
    try:
        config = ModelConfig(name=name, **fields)
    except ValueError as error:
        raise CheckpointError(f"cannot infer a valid architecture: {error}") from None
    if config.in_channels != in_channels:
        config = config.replace(pixel_mean=(0.5,) * in_channels, pixel_std=(0.5,) * in_channels)
    return _with_pixel_stats(config, state)


def _resolve_config(config: ModelConfig | str | None) -> ModelConfig | None:
    if config is None or isinstance(config, ModelConfig):
        return config
    if isinstance(config, str):
        return model_config(config)
    raise TypeError(f"config must be a ModelConfig, a model name or None, got {type(config).__name__}")


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


# --------------------------------------------------------------------------- MERU format

_GLOBAL_RE = re.compile(r"Unsupported global: GLOBAL (\S+)")


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {path} does not exist") from None
    except IsADirectoryError:
        raise CheckpointError(f"checkpoint {path} is a directory, not a torch.save file") from None
    except pickle.UnpicklingError as error:
        message = str(error)
        found = _GLOBAL_RE.search(message)
        if "Weights only load failed" in message and (found or "global" in message):
            what = f" ({found.group(1)})" if found else ""
            raise CheckpointError(
                f"refused to load {path}: it needs unpickling of code{what}, which could run arbitrary "
                "code; only tensors and plain containers are accepted (re-save the state dict alone "
                "from a trusted environment)"
            ) from None
        raise CheckpointError(f"cannot read checkpoint {path}: the file is corrupt or truncated ({error})") from None
    except Exception as error:  # torch raises RuntimeError, EOFError, KeyError, ... for damaged files
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise CheckpointError(f"cannot read checkpoint {path}: the file is corrupt or truncated "
                              f"({type(error).__name__}: {first_line})") from None


def import_meru_checkpoint(path: str | os.PathLike, config: ModelConfig | str | None = None) -> ContrastiveModel:
    """Load a checkpoint in MERU's layout (``.pth``) into a :class:`ContrastiveModel` (eval mode).

    Accepts ``{"model": state_dict, ...}`` (other top-level keys are ignored, except
    ``root``, stored as ``model.root_embedding``, and ``vlunlearn_config``, used as the
    configuration when ``config`` is not given) or a bare state dict; ``module.`` and
    ``model.`` key prefixes are removed. Without a configuration the architecture is
    inferred from the tensor shapes (see :func:`infer_config`). The file is read with
    ``weights_only=True``: files that need code to unpickle are refused.
    """
    path = Path(path)
    config = _resolve_config(config)
    payload = _torch_load(path)
    if not isinstance(payload, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(payload).__name__}, not a dict")
    root = None
    stored_config = None
    if isinstance(payload.get("model"), Mapping):
        state = payload["model"]
        root = payload.get("root")
        stored_config = payload.get(CONFIG_KEY)
    else:
        state = payload
    state = _strip_prefixes(state)
    if config is None and isinstance(stored_config, Mapping):
        try:
            config = ModelConfig.from_dict(dict(stored_config))
        except ValueError as error:
            raise CheckpointError(f"invalid {CONFIG_KEY!r} in {path}: {error}") from None
    config = infer_config(state) if config is None else _with_pixel_stats(config, state)
    model = _fill(_build_on_meta(config), state, str(path))
    if isinstance(root, Tensor):
        model.root_embedding = root.detach().float().clone()
    return model


def export_meru_checkpoint(model: ContrastiveModel, path: str | os.PathLike) -> Path:
    """Write ``model`` in MERU's layout with ``torch.save``, atomically, and return the path.

    The file holds ``{"model": state_dict}`` (loadable by MERU's code), plus ``root`` when
    ``model.root_embedding`` is set and ``vlunlearn_config`` (the configuration as a plain
    dict), which MERU's loader ignores.
    """
    if model.config.modality != "image":
        raise CheckpointError(f"MERU's layout holds image models; {model.config.name!r} encodes {model.config.modality}s "
                              "(save it with save_model instead)")
    path = Path(path)
    payload: dict[str, Any] = {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    if model.root_embedding is not None:
        payload["root"] = model.root_embedding.detach().cpu()
    payload[CONFIG_KEY] = model.config.to_dict()
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


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
        return import_meru_checkpoint(path)
    if suffix == ".safetensors" and (path.parent / CONFIG_FILE).is_file():
        return _load_native(path.parent, path)
    if path.name == CONFIG_FILE:
        return load_model(path.parent)
    raise CheckpointError(f"do not know how to load {path}: expected a model directory, a .pth/.pt file "
                          f"or a .safetensors file beside a {CONFIG_FILE}")
