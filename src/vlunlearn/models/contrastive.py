"""The two-tower contrastive model: CLIP (Euclidean) or MERU (Lorentz), one class.

An image model's ``state_dict`` has exactly the keys of MERU's ``CLIPBaseline``/``MERU``
modules (``reference/meru.md`` §2.2), so released checkpoints load strictly and models
written in MERU's layout load back in MERU's code. A graph model (molecules) has a
message-passing tower ``graph``/``graph_proj``/``graph_alpha`` in place of the ViT.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vlunlearn.data.graphs import GraphSet
from vlunlearn.geometry import Geometry, get_geometry
from vlunlearn.models.configs import ModelConfig
from vlunlearn.models.graph import GraphEncoder
from vlunlearn.models.text import TextTransformer
from vlunlearn.models.vit import VisionTransformer

__all__ = ["ContrastiveModel"]

LOGIT_SCALE_MAX = math.log(100.0)


class ContrastiveModel(nn.Module):
    """An input tower (images or graphs) and a text tower projected into a joint space with a given geometry.

    Image models: submodules ``visual`` (:class:`VisionTransformer`), ``visual_proj``, buffers
    ``pixel_mean`` and ``pixel_std`` ``(C, 1, 1)``; graph models (``config.modality ==
    "graph"``): ``graph`` (:class:`GraphEncoder`) and ``graph_proj``. Both: ``textual``
    (:class:`TextTransformer`), ``textual_proj``, ``logit_scale`` and, for Lorentz, ``curv``
    (log c) and the log scales applied before the exponential map, ``textual_alpha`` and
    ``visual_alpha`` or ``graph_alpha``.

    Attributes:
        config: the :class:`ModelConfig` it was built from.
        root_embedding: the ``root`` tensor found in CLIP checkpoints imported from MERU's
            format (a [ROOT] embedding used by image traversals), else ``None``. It is not
            part of the ``state_dict``; the checkpoint functions carry it along.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.root_embedding: Tensor | None = None
        if config.modality == "graph":
            self.graph = GraphEncoder(config.node_vocab, config.edge_vocab, config.graph_width, config.graph_depth)
            input_width = config.graph_width
        else:
            self.visual = VisionTransformer(
                image_size=config.image_size,
                patch_size=config.patch_size,
                width=config.vision_width,
                depth=config.vision_depth,
                heads=config.vision_heads,
                in_channels=config.in_channels,
            )
            input_width = config.vision_width
        setattr(self, f"{self.input_name}_proj", nn.Linear(input_width, config.embed_dim, bias=False))
        self.textual = TextTransformer(
            vocab_size=config.vocab_size,
            context_length=config.context_length,
            width=config.text_width,
            depth=config.text_depth,
            heads=config.text_heads,
        )
        self.textual_proj = nn.Linear(config.text_width, config.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))
        if config.hyperbolic:
            self.curv = nn.Parameter(torch.tensor(math.log(config.curv_init)), requires_grad=config.learn_curv)
            alpha = math.log(config.embed_dim**-0.5)
            setattr(self, f"{self.input_name}_alpha", nn.Parameter(torch.tensor(alpha)))
            self.textual_alpha = nn.Parameter(torch.tensor(alpha))
        if config.modality == "image":
            self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(-1, 1, 1))
            self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(-1, 1, 1))
        with torch.no_grad():
            nn.init.normal_(self.input_tower_proj.weight, std=input_width**-0.5)
            nn.init.normal_(self.textual_proj.weight, std=config.text_width**-0.5)

    @property
    def geometry(self) -> Geometry:
        return get_geometry(self.config.geometry)

    def curvature(self) -> Tensor | None:
        """Curvature magnitude ``c = exp(curv)`` (the space has curvature ``-c``); ``None`` for Euclidean."""
        return self.curv.exp() if self.config.hyperbolic else None

    @property
    def modality(self) -> str:
        """``image`` or ``graph``: what the input tower encodes."""
        return self.config.modality

    @property
    def input_name(self) -> str:
        """The prefix of the input tower's parameter names: ``visual`` or ``graph``."""
        return "graph" if self.modality == "graph" else "visual"

    @property
    def input_tower(self) -> nn.Module:
        """The tower of the non-text side: the ViT, or the graph encoder."""
        return getattr(self, self.input_name)

    @property
    def input_tower_proj(self) -> nn.Linear:
        return getattr(self, f"{self.input_name}_proj")

    @staticmethod
    def parameter_tower(name: str) -> str:
        """``image``, ``graph``, ``text`` or ``shared`` (temperature, curvature) for a parameter name."""
        return {"visual": "image", "graph": "graph", "textual": "text"}.get(name.split(".")[0].split("_")[0], "shared")

    def _scale(self, alpha: str) -> Tensor | None:
        return getattr(self, alpha).exp() if self.config.hyperbolic else None

    def encode_input(self, inputs: Tensor | GraphSet, project: bool = True) -> Tensor:
        """The non-text side of a batch -> ``(B, embed_dim)``: images ``(B, C, H, W)`` through
        :meth:`encode_image`, a :class:`GraphSet` through :meth:`encode_graph`."""
        is_graph = isinstance(inputs, GraphSet)
        if is_graph != (self.modality == "graph"):
            given = "graphs" if is_graph else "images"
            raise ValueError(f"the {self.config.name!r} model encodes {self.modality}s, not {given}: "
                             f"use a {'graph' if is_graph else 'image'} model with this data")
        return self.encode_graph(inputs, project) if is_graph else self.encode_image(inputs, project)

    def encode_graph(self, graphs: GraphSet, project: bool = True) -> Tensor:
        """A batch of ``B`` graphs -> ``(B, embed_dim)``: message passing, mean pooling and
        ``graph_proj``; ``project`` as in :meth:`encode_image`, with ``graph_alpha``.

        A GraphSet was checked when it was made, so only its vocabularies are compared with the
        tower's here, not every feature of every batch."""
        if (graphs.node_vocab, graphs.edge_vocab) != (self.graph.node_vocab, self.graph.edge_vocab):
            raise ValueError(f"the graphs have feature vocabularies {graphs.node_vocab} / {graphs.edge_vocab}, the "
                             f"{self.config.name!r} model {self.graph.node_vocab} / {self.graph.edge_vocab}")
        flat = graphs.to(self.graph_proj.weight.device).flat()
        features = self.graph_proj(self.graph(flat.nodes, flat.edges, flat.edge_features, flat.graph_index,
                                              flat.num_graphs, check=False))
        if not project:
            return features
        return self.geometry.embed(features, scale=self._scale("graph_alpha"), c=self.curvature())

    def encode_image(self, images: Tensor, project: bool = True) -> Tensor:
        """Images in [0, 1] ``(B, C, H, W)`` -> ``(B, embed_dim)``.

        Normalises with the ``pixel_mean``/``pixel_std`` buffers (a single-channel batch is
        repeated to the model's channel count), runs the ViT and ``visual_proj``. With
        ``project`` the features are mapped into the space by ``geometry.embed`` (L2
        normalisation for Euclidean; ``exp_map0(exp(visual_alpha) * f, c)`` for Lorentz).
        """
        if images.ndim != 4:
            raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
        if not images.dtype.is_floating_point:
            raise ValueError(f"images must be floating point in [0, 1], got {images.dtype}")
        channels = self.pixel_mean.shape[0]
        if images.shape[1] == 1 and channels != 1:
            images = images.expand(-1, channels, -1, -1)
        images = images.to(device=self.pixel_mean.device, dtype=self.pixel_mean.dtype)
        features = self.visual_proj(self.visual((images - self.pixel_mean) / self.pixel_std))
        if not project:
            return features
        return self.geometry.embed(features, scale=self._scale("visual_alpha"), c=self.curvature())

    def encode_text(self, tokens: Tensor, project: bool = True) -> Tensor:
        """Token ids ``(B, T)``, ``T <= context_length``, right-padded with 0 -> ``(B, embed_dim)``.

        Longer sequences raise ``ValueError`` (truncate in the tokenizer, keeping the
        end-of-text id last). ``project`` as in :meth:`encode_image`, with ``textual_alpha``.
        """
        if tokens.ndim == 2 and tokens.shape[1] > self.config.context_length:
            raise ValueError(
                f"token sequences of length {tokens.shape[1]} exceed the context length "
                f"{self.config.context_length}; truncate them first"
            )
        features = self.textual_proj(self.textual(tokens.to(self.textual.attn_mask.device)))
        if not project:
            return features
        return self.geometry.embed(features, scale=self._scale("textual_alpha"), c=self.curvature())

    def forward(self, inputs: Tensor | GraphSet, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """``(input_emb, text_emb)``, both projected. Never clamps the scalars."""
        return self.encode_input(inputs), self.encode_text(tokens)

    @torch.no_grad()
    def clamp_scalars_(self) -> None:
        """Clamp the learnable scalars in place, as MERU does at the start of each training step:
        ``logit_scale <= ln 100``; ``curv`` in ``[ln(curv_init/10), ln(curv_init*10)]``;
        the input and text alphas ``<= 0``. Inference does not call this."""
        self.logit_scale.clamp_(max=LOGIT_SCALE_MAX)
        if self.config.hyperbolic:
            c0 = self.config.curv_init
            self.curv.clamp_(min=math.log(c0 / 10), max=math.log(c0 * 10))
            getattr(self, f"{self.input_name}_alpha").clamp_(max=0.0)
            self.textual_alpha.clamp_(max=0.0)

    def set_grad_checkpointing(self, enabled: bool = True) -> "ContrastiveModel":
        """Recompute each transformer block's activations during backward instead of keeping
        them: much less memory for large models (ViT-L) at about a third more compute. The
        gradients are the same. Returns ``self``."""
        self.input_tower.grad_checkpointing = enabled
        self.textual.grad_checkpointing = enabled
        return self

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of parameter elements (an image model's frozen ``visual.pos_embed`` included unless ``trainable_only``)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def extra_repr(self) -> str:
        return f"name={self.config.name!r}, geometry={self.config.geometry!r}, modality={self.modality!r}"
