"""open_clip models behind :class:`~vlunlearn.models.ContrastiveModel`'s interface.

:class:`OpenClipAdapter` wraps any module shaped like open_clip's ``CLIP`` (``encode_image``,
``encode_text``, a ``logit_scale`` in log space) so that every Euclidean unlearning method and
every metric runs on it; it never imports open_clip. :func:`load_open_clip` builds a model
with open_clip, an optional dependency (``pip install 'vlunlearn[open_clip]'``) imported
only there. Text goes through vlunlearn's tokenizer, which is open_clip's CLIP BPE
tokenizer: models with another vocabulary are refused.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlunlearn.data.tokenizer import Tokenizer
from vlunlearn.errors import VlunlearnError
from vlunlearn.geometry import EUCLIDEAN, Geometry
from vlunlearn.models.contrastive import LOGIT_SCALE_MAX

__all__ = ["OpenClipAdapter", "OpenClipConfig", "load_open_clip"]

INSTALL_HINT = "pip install 'vlunlearn[open_clip]'"
# open_clip's defaults when a model carries no preprocessing configuration (OpenAI CLIP's).
DEFAULT_IMAGE_SIZE = 224
DEFAULT_CONTEXT_LENGTH = 77
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class OpenClipConfig:
    """What vlunlearn reads from a model's ``config``, for a wrapped open_clip model.

    Attributes:
        name: a label, ``open_clip:<architecture>`` from :func:`load_open_clip`.
        context_length: the fixed token sequence length of the text tower.
        image_size: the square input side of the image tower, in pixels.
        pixel_mean, pixel_std: per-channel normalisation; their length is the channel count.
    """

    name: str
    context_length: int
    image_size: int
    pixel_mean: tuple[float, ...]
    pixel_std: tuple[float, ...]

    # Constants, not fields: a wrapped open_clip model is always Euclidean.
    geometry = "euclidean"
    hyperbolic = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "pixel_mean", tuple(float(v) for v in self.pixel_mean))
        object.__setattr__(self, "pixel_std", tuple(float(v) for v in self.pixel_std))
        for key in ("context_length", "image_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        if not self.pixel_mean or len(self.pixel_mean) != len(self.pixel_std) or min(self.pixel_std) <= 0:
            raise ValueError(
                f"pixel_mean {self.pixel_mean} and pixel_std {self.pixel_std} must be non-empty, "
                "of equal length, with positive std"
            )

    @property
    def in_channels(self) -> int:
        return len(self.pixel_mean)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict, geometry included."""
        out = dataclasses.asdict(self)
        out.update(geometry=self.geometry, pixel_mean=list(self.pixel_mean), pixel_std=list(self.pixel_std))
        return out


class OpenClipAdapter(nn.Module):
    """An open_clip-style model with :class:`~vlunlearn.models.ContrastiveModel`'s interface.

    ``inner`` is a submodule, so ``parameters()``, ``state_dict()`` (keys ``inner.*``) and the
    optimizer see its weights; ``logit_scale`` is ``inner.logit_scale``. The input size,
    context length and normalisation come from the keyword arguments, else from ``inner``
    (``visual.preprocess_cfg``, ``visual.image_size``/``image_mean``/``image_std``,
    ``context_length`` or ``text.context_length``), else open_clip's defaults (224 pixels,
    77 tokens, OpenAI's mean and std).

    Raises:
        VlunlearnError: ``inner`` declares a ``vocab_size`` other than the CLIP tokenizer's.
        ValueError: a non-square input size.
    """

    def __init__(
        self,
        inner: nn.Module,
        name: str = "open_clip",
        *,
        context_length: int | None = None,
        image_size: int | tuple[int, int] | None = None,
        pixel_mean: Sequence[float] | None = None,
        pixel_std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        vocab_size = getattr(inner, "vocab_size", None)
        if vocab_size is not None and vocab_size != Tokenizer.vocab_size:
            raise VlunlearnError(
                f"{name} has a text vocabulary of {vocab_size} tokens; vlunlearn tokenizes with the CLIP BPE "
                f"tokenizer ({Tokenizer.vocab_size} tokens), so only models trained with it can be wrapped"
            )
        self.inner = inner
        visual = getattr(inner, "visual", None)
        preprocess = getattr(visual, "preprocess_cfg", None) or {}
        text = getattr(inner, "text", None)
        self.config = OpenClipConfig(
            name=name,
            context_length=_first(
                context_length, getattr(inner, "context_length", None), getattr(text, "context_length", None),
                DEFAULT_CONTEXT_LENGTH,
            ),
            image_size=_square(
                _first(image_size, preprocess.get("size"), getattr(visual, "image_size", None), DEFAULT_IMAGE_SIZE)
            ),
            pixel_mean=_first(pixel_mean, preprocess.get("mean"), getattr(visual, "image_mean", None), OPENAI_MEAN),
            pixel_std=_first(pixel_std, preprocess.get("std"), getattr(visual, "image_std", None), OPENAI_STD),
        )
        self.register_buffer("pixel_mean", torch.tensor(self.config.pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(self.config.pixel_std).view(-1, 1, 1), persistent=False)

    @property
    def geometry(self) -> Geometry:
        return EUCLIDEAN

    @property
    def logit_scale(self) -> Tensor:
        """The inner model's log inverse temperature (a parameter of ``inner``)."""
        return self.inner.logit_scale

    def curvature(self) -> None:
        """``None``: the space is Euclidean."""
        return None

    def encode_input(self, images: Tensor, project: bool = True) -> Tensor:
        """Images in [0, 1] ``(B, C, H, W)`` -> ``(B, D)``.

        A single-channel batch is repeated to ``config.in_channels``; images of another size
        are resized (bilinear, antialiased) to ``config.image_size``; then they are
        normalised with ``pixel_mean``/``pixel_std`` and encoded by ``inner.encode_image``.
        With ``project`` the features are L2-normalised by ``geometry.embed``.
        """
        if images.ndim != 4:
            raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
        if not images.dtype.is_floating_point:
            raise ValueError(f"images must be floating point in [0, 1], got {images.dtype}")
        channels, size = self.config.in_channels, self.config.image_size
        if images.shape[1] == 1 and channels != 1:
            images = images.expand(-1, channels, -1, -1)
        if images.shape[1] != channels:
            raise ValueError(f"{self.config.name} takes {channels}-channel images, got {images.shape[1]} channels")
        images = images.to(device=self.pixel_mean.device, dtype=self.pixel_mean.dtype)
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        features = self.inner.encode_image((images - self.pixel_mean) / self.pixel_std)
        return self.geometry.embed(features, scale=None, c=None) if project else features

    def encode_text(self, tokens: Tensor, project: bool = True) -> Tensor:
        """Token ids ``(B, T)``, ``T <= context_length``, right-padded with 0 -> ``(B, D)``.

        The ids are padded with 0 to exactly ``context_length`` (open_clip's text tower adds a
        fixed-length positional embedding); longer sequences raise ``ValueError``. ``project``
        as in :meth:`encode_input`.
        """
        context = self.config.context_length
        if tokens.ndim != 2:
            raise ValueError(f"expected token ids of shape (B, T), got {tuple(tokens.shape)}")
        if tokens.shape[1] > context:
            raise ValueError(
                f"token sequences of length {tokens.shape[1]} exceed the context length {context} "
                f"of {self.config.name}; truncate them first"
            )
        tokens = F.pad(tokens, (0, context - tokens.shape[1]), value=0).to(self.pixel_mean.device)
        features = self.inner.encode_text(tokens)
        return self.geometry.embed(features, scale=None, c=None) if project else features

    def forward(self, images: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """``(input_emb, text_emb)``, both projected: ``(B, D), (B, D)``. Never clamps ``logit_scale``."""
        return self.encode_input(images), self.encode_text(tokens)

    @torch.no_grad()
    def clamp_scalars_(self) -> None:
        """``logit_scale <= ln 100`` in place, as CLIP and :class:`ContrastiveModel` do at each training step."""
        self.logit_scale.clamp_(max=LOGIT_SCALE_MAX)

    @staticmethod
    def parameter_tower(name: str) -> str:
        """``image`` (``inner.visual.*``), ``shared`` (``inner.logit_scale``/``logit_bias``) or
        ``text`` (every other weight of an open_clip model: its text transformer, token and
        positional embeddings, final norm and text projection)."""
        part = name.removeprefix("inner.").split(".")[0]
        if part == "visual":
            return "image"
        return "shared" if part in ("logit_scale", "logit_bias") else "text"

    def set_grad_checkpointing(self, enabled: bool = True) -> "OpenClipAdapter":
        """Gradient checkpointing through open_clip's own switch. Returns ``self``."""
        if not hasattr(self.inner, "set_grad_checkpointing"):
            raise VlunlearnError(f"{type(self.inner).__name__} has no set_grad_checkpointing; run without it")
        self.inner.set_grad_checkpointing(enabled)
        return self

    def extra_repr(self) -> str:
        return f"name={self.config.name!r}, geometry={self.config.geometry!r}"


def load_open_clip(
    model_name: str,
    pretrained: str | os.PathLike | None = None,
    *,
    allow_download: bool = False,
    **kwargs: Any,
) -> OpenClipAdapter:
    """open_clip's ``model_name`` (e.g. ``"ViT-B-32"``) in an :class:`OpenClipAdapter`.

    ``pretrained`` is a local weights file, or ``None`` for a random initialisation. An
    open_clip pretrained tag (``"openai"``, ``"laion2b_s34b_b79k"``) or an ``hf-hub:`` model
    downloads weights and is refused unless ``allow_download=True``. ``kwargs`` go to
    ``open_clip.create_model`` (``device``, ``precision``, ...).

    Raises:
        VlunlearnError: open_clip is not installed, a download was not allowed, or the model
            does not use the CLIP BPE tokenizer.
    """
    open_clip = _import_open_clip()
    local = pretrained is not None and Path(pretrained).expanduser().is_file()
    if not allow_download and model_name.startswith("hf-hub:"):
        raise VlunlearnError(f"{model_name} would be downloaded from the Hugging Face Hub; pass allow_download=True")
    if not allow_download and pretrained is not None and not local:
        raise VlunlearnError(
            f"pretrained={str(pretrained)!r} is not an existing file, and an open_clip tag would download "
            "weights; pass a local weights file, or allow_download=True"
        )
    text_config = (open_clip.get_model_config(model_name) or {}).get("text_cfg", {})
    tokenizer = text_config.get("hf_tokenizer_name") or text_config.get("hf_model_name")
    if tokenizer:
        raise VlunlearnError(
            f"open_clip model {model_name} uses the {tokenizer!r} tokenizer; vlunlearn tokenizes with the "
            "CLIP BPE tokenizer, so only models trained with it can be wrapped"
        )
    if local:
        pretrained = str(Path(pretrained).expanduser())
    inner = open_clip.create_model(model_name, pretrained=pretrained, **kwargs)
    return OpenClipAdapter(inner, name=f"open_clip:{model_name}")


def _import_open_clip() -> ModuleType:
    try:
        return importlib.import_module("open_clip")
    except ImportError as error:
        raise VlunlearnError(f"open_clip models need the optional open_clip extra: {INSTALL_HINT} ({error})") from error


def _first(*values: Any) -> Any:
    """The first value that is not ``None``."""
    return next(value for value in values if value is not None)


def _square(size: int | Sequence[int]) -> int:
    """An input side from an int or an ``(H, W)`` pair with ``H == W``."""
    if isinstance(size, int):
        return size
    height, width = size
    if height != width:
        raise ValueError(f"only square image inputs are supported, got {height}x{width}")
    return int(height)
