"""Reading and writing models in MERU's ``.pth`` layout (the native format is in
:mod:`vlunlearn.models.checkpoint`).

MERU format: a ``torch.save`` file of ``{"model": state_dict, ...}`` (other top-level keys,
such as ``iteration`` or ``optimizer``, are ignored; CLIP checkpoints carry ``root``, which
becomes :attr:`ContrastiveModel.root_embedding`) or of a bare state dict, read with
``weights_only=True``. :func:`export_meru_checkpoint` writes ``{"model": state_dict}`` plus
``root`` when the model has one and ``vlunlearn_config`` (the :class:`ModelConfig` as a
plain dict, which MERU's loader ignores), so any model round-trips exactly. Files are checked
as strictly as native ones (every failure a :class:`~vlunlearn.errors.CheckpointError`).
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vlunlearn.errors import CheckpointError
from vlunlearn.io import atomic_path
from vlunlearn.models.checkpoint import _build_on_meta, _fill, _with_pixel_stats
from vlunlearn.models.configs import MODEL_NAMES, TINY_NAMES, ModelConfig, model_config
from vlunlearn.models.contrastive import ContrastiveModel

__all__ = [
    "import_meru_checkpoint",
    "export_meru_checkpoint",
    "infer_config",
]

CONFIG_KEY = "vlunlearn_config"  # top-level key of exported MERU-layout files
_PREFIXES = ("module.", "model.")


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
