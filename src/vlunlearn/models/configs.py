"""Model configurations: a frozen dataclass and the named architectures.

The ``vit-s``/``vit-b``/``vit-l`` shapes are those of the released MERU and CLIP
checkpoints (``reference/meru.md`` §1.2-1.3, §2.2); ``tiny`` is a small model that
trains on CPU in minutes, and ``tiny-scenes`` a cheaper one shaped for the built-in 2x2 scenes.
``tiny-graph`` pairs a message-passing graph tower (molecules) with a small text tower.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from vlunlearn.errors import ConfigError

__all__ = ["ModelConfig", "MODEL_NAMES", "GEOMETRIES", "model_config"]

GEOMETRIES = ("euclidean", "lorentz")
MODALITIES = ("image", "graph")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build a :class:`~vlunlearn.models.ContrastiveModel`.

    Attributes:
        name: label of the architecture (``tiny``, ``meru-vit-s``, ...; ``custom`` otherwise).
        geometry: ``euclidean`` (CLIP) or ``lorentz`` (MERU).
        image_size, patch_size: square input side and patch side, in pixels (image models;
            0 in graph models, as are the ``vision_*`` fields).
        vision_width, vision_depth, vision_heads: the ViT's shape.
        text_width, text_depth, text_heads: the text transformer's shape.
        vocab_size, context_length: token vocabulary and maximum sequence length.
        embed_dim: size of the joint embedding space (output of the projections).
        pixel_mean, pixel_std: per-channel normalisation; their length is the number of
            input channels of the ViT (the model's buffers, loaded from checkpoints, win).
        curv_init: initial curvature magnitude c (Lorentz only); also centres the clamp range.
        learn_curv: whether the curvature is trained (Lorentz only).
        logit_scale_init: initial log inverse temperature.
        modality: what the non-text tower encodes: ``image`` (a ViT) or ``graph`` (a
            message-passing :class:`~vlunlearn.models.graph.GraphEncoder`).
        graph_width, graph_depth: the graph tower's width and number of message-passing layers.
        node_vocab, edge_vocab: the graph tower's vocabulary size per categorical node and edge
            feature (for molecules, those of :mod:`vlunlearn.data.chem`).
    """

    name: str
    geometry: str
    image_size: int
    patch_size: int
    vision_width: int
    vision_depth: int
    vision_heads: int
    text_width: int
    text_depth: int
    text_heads: int
    vocab_size: int = 49408
    context_length: int = 77
    embed_dim: int = 512
    pixel_mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    pixel_std: tuple[float, ...] = (0.229, 0.224, 0.225)
    curv_init: float = 1.0
    learn_curv: bool = True
    logit_scale_init: float = field(default=math.log(1 / 0.07))
    modality: str = "image"
    graph_width: int = 0
    graph_depth: int = 0
    node_vocab: tuple[int, ...] = ()
    edge_vocab: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for key in ("pixel_mean", "pixel_std"):
            object.__setattr__(self, key, tuple(float(v) for v in getattr(self, key)))
        for key in ("node_vocab", "edge_vocab"):
            object.__setattr__(self, key, tuple(int(v) for v in getattr(self, key)))
        problems = []
        if self.geometry not in GEOMETRIES:
            problems.append(f"geometry {self.geometry!r} is not one of {list(GEOMETRIES)}")
        if self.modality not in MODALITIES:
            problems.append(f"modality {self.modality!r} is not one of {list(MODALITIES)}")
        tower = ("graph_width", "graph_depth") if self.modality == "graph" else (
            "image_size", "patch_size", "vision_width", "vision_depth", "vision_heads")
        for key in tower + ("text_width", "text_depth", "text_heads", "vocab_size", "context_length", "embed_dim"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                problems.append(f"{key} must be a positive integer, got {value!r}")
        if self.modality == "graph" and (not self.node_vocab or not self.edge_vocab or min(self.node_vocab + self.edge_vocab) <= 0):
            problems.append("a graph model needs non-empty node_vocab and edge_vocab of positive sizes")
        if not problems and self.modality == "image":
            if self.image_size % self.patch_size:
                problems.append(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
            if self.vision_width % self.vision_heads:
                problems.append(f"vision_width {self.vision_width} is not divisible by vision_heads {self.vision_heads}")
            if self.vision_width % 4:
                problems.append(f"vision_width {self.vision_width} must be a multiple of 4 (2-D sin-cos positions)")
        if not problems:
            if self.text_width % self.text_heads:
                problems.append(f"text_width {self.text_width} is not divisible by text_heads {self.text_heads}")
        if not self.pixel_mean or len(self.pixel_mean) != len(self.pixel_std):
            problems.append("pixel_mean and pixel_std must be non-empty and of equal length")
        if any(s <= 0 for s in self.pixel_std):
            problems.append("pixel_std must be positive")
        if not self.curv_init > 0:
            problems.append(f"curv_init must be positive, got {self.curv_init!r}")
        if problems:
            raise ConfigError("invalid model configuration: " + "; ".join(problems))

    @property
    def in_channels(self) -> int:
        """Number of image channels the ViT takes (``len(pixel_mean)``)."""
        return len(self.pixel_mean)

    @property
    def hyperbolic(self) -> bool:
        return self.geometry == "lorentz"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples become lists); inverse of :meth:`from_dict`."""
        out = dataclasses.asdict(self)
        for key in ("pixel_mean", "pixel_std", "node_vocab", "edge_vocab"):
            out[key] = list(getattr(self, key))
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Build from :meth:`to_dict` output; unknown or missing keys raise
        :class:`~vlunlearn.errors.ConfigError` (a ``ValueError``)."""
        if not isinstance(data, dict):
            raise ConfigError(f"a model configuration must be a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown model configuration keys: {unknown}")
        try:
            return cls(**data)
        except TypeError as error:
            raise ConfigError(f"incomplete model configuration: {error}") from None

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


_TEXT_CLIP = dict(text_width=512, text_depth=12, text_heads=8, vocab_size=49408, context_length=77, embed_dim=512)
_VITS = {
    "s": dict(vision_width=384, vision_depth=12, vision_heads=12),
    "b": dict(vision_width=768, vision_depth=12, vision_heads=12),
    "l": dict(vision_width=1024, vision_depth=24, vision_heads=16),
}

_TINY_VARIANTS: dict[str, dict[str, int]] = {
    "tiny": {},
    # one 14-pixel patch per cell of the built-in 2x2 scenes, narrower towers, 2 text layers
    "tiny-scenes": dict(patch_size=14, vision_width=96, text_width=96, text_depth=2),
}
TINY_NAMES = tuple(_TINY_VARIANTS) + ("tiny-graph",)
MODEL_NAMES: tuple[str, ...] = TINY_NAMES + tuple(
    f"{family}-vit-{size}" for family in ("meru", "clip") for size in ("s", "b", "l")
)


def _tiny(name: str, geometry: str) -> ModelConfig:
    """``tiny``: 7-pixel patches, width 128, 4 + 3 layers (7.8M parameters, 6.3M of them the
    token embedding). ``tiny-scenes``: one 14-pixel patch per scene cell, width 96 and 2 text
    layers, ~2.5x cheaper per step and as accurate on ``fashion-scenes`` (its demo recipe)."""
    return ModelConfig(
        name=name,
        geometry=geometry,
        image_size=28,
        patch_size=7,
        vision_width=128,
        vision_depth=4,
        vision_heads=4,
        text_width=128,
        text_depth=3,
        text_heads=4,
        context_length=32,
        embed_dim=128,
    ).replace(**_TINY_VARIANTS[name])


def _tiny_graph(geometry: str) -> ModelConfig:
    """``tiny-graph``: a 4-layer message-passing tower of width 96 over the molecule features of
    :mod:`vlunlearn.data.chem` and a 2-layer text tower of width 96 with 64 tokens of context
    (molecule captions run to 60 tokens). The text tower costs most of a step (a batch of 128
    captions is ~7,000 token positions against ~2,000 atoms), hence its narrow shape, that of
    ``tiny-scenes``."""
    from vlunlearn.data.chem import ATOM_VOCAB, BOND_VOCAB

    return ModelConfig(
        name="tiny-graph", geometry=geometry, modality="graph", image_size=0, patch_size=0, vision_width=0,
        vision_depth=0, vision_heads=0, graph_width=96, graph_depth=4, node_vocab=ATOM_VOCAB, edge_vocab=BOND_VOCAB,
        text_width=96, text_depth=2, text_heads=4, context_length=64, embed_dim=128,
    )


def _vit(size: str, geometry: str) -> ModelConfig:
    family = "meru" if geometry == "lorentz" else "clip"
    return ModelConfig(name=f"{family}-vit-{size}", geometry=geometry, image_size=224, patch_size=16,
                       **_VITS[size], **_TEXT_CLIP)


def model_config(name: str, geometry: str | None = None) -> ModelConfig:
    """The named configuration.

    ``tiny``, ``tiny-scenes`` and ``tiny-graph`` take their geometry from ``geometry`` (default ``euclidean``);
    ``meru-vit-{s,b,l}`` are Lorentz and ``clip-vit-{s,b,l}`` Euclidean (a conflicting
    ``geometry`` raises); ``vit-{s,b,l}`` need ``geometry``. Underscores and case are
    ignored (``meru_vit_s`` works).
    """
    if geometry is not None and geometry not in GEOMETRIES:
        raise ConfigError(f"unknown geometry {geometry!r}; choose one of {list(GEOMETRIES)}")
    key = str(name).strip().lower().replace("_", "-")
    if key == "tiny-graph":
        return _tiny_graph(geometry or "euclidean")
    if key in TINY_NAMES:
        return _tiny(key, geometry or "euclidean")
    parts = key.split("-")
    if len(parts) == 3 and parts[0] in ("meru", "clip") and parts[1] == "vit" and parts[2] in _VITS:
        implied = "lorentz" if parts[0] == "meru" else "euclidean"
        if geometry is not None and geometry != implied:
            raise ConfigError(f"model {name!r} is {implied}; it cannot be built with geometry {geometry!r}")
        return _vit(parts[2], implied)
    if len(parts) == 2 and parts[0] == "vit" and parts[1] in _VITS:
        if geometry is None:
            raise ConfigError(f"model {name!r} needs a geometry ('euclidean' or 'lorentz'), "
                             f"or use the name meru-{key} / clip-{key}")
        return _vit(parts[1], geometry)
    valid = ", ".join(MODEL_NAMES + ("vit-s", "vit-b", "vit-l"))
    raise ConfigError(f"unknown model {name!r}; valid names: {valid}")
