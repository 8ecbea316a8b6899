"""Contrastive vision-language models (CLIP and MERU) with MERU's parameter layout, their checkpoints,
and an adapter for open_clip models (open_clip itself is imported only by :func:`load_open_clip`)."""

from __future__ import annotations

from vlunlearn.models.checkpoint import load_any, load_model, read_metadata, save_model
from vlunlearn.models.configs import MODEL_NAMES, ModelConfig, model_config
from vlunlearn.models.contrastive import ContrastiveModel
from vlunlearn.models.meru_format import export_meru_checkpoint, import_meru_checkpoint
from vlunlearn.models.open_clip_adapter import OpenClipAdapter, load_open_clip
from vlunlearn.models.text import TextTransformer
from vlunlearn.models.vit import VisionTransformer

__all__ = [
    "ContrastiveModel",
    "OpenClipAdapter",
    "load_open_clip",
    "ModelConfig",
    "MODEL_NAMES",
    "model_config",
    "build_model",
    "save_model",
    "load_model",
    "load_any",
    "read_metadata",
    "import_meru_checkpoint",
    "export_meru_checkpoint",
    "VisionTransformer",
    "TextTransformer",
]


def build_model(name: str, geometry: str | None = None) -> ContrastiveModel:
    """A randomly initialised model of the named configuration (see :func:`model_config`)."""
    return ContrastiveModel(model_config(name, geometry))
