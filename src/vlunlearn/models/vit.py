"""Vision Transformer with the parameter layout of the ViTs in MERU's checkpoints.

The module tree (``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.{i}.norm1``,
``.attn.qkv``, ``.attn.proj``, ``.norm2``, ``.mlp.fc1``, ``.mlp.fc2``, ``norm``) and the
computation (pre-norm blocks, exact GELU, CLS pooling after the final LayerNorm, no
head) follow ``reference/meru.md`` §1.2, so released weights load by name.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["VisionTransformer", "init_linear_or_norm_", "sincos_pos_embed_2d"]


def sincos_pos_embed_2d(grid_size: int, width: int, temperature: float = 10000.0) -> Tensor:
    """Fixed 2-D sin-cos position table with a zero row for the CLS token. ``-> (1, 1 + grid_size**2, width)``.

    With ``n = width // 4`` frequencies ``w_k = temperature ** (-k / n)``, patch ``(r, q)``
    (row ``r``, column ``q``, patches in row-major order) gets
    ``[sin(r w), cos(r w), sin(q w), cos(q w)]`` (MoCo-v3 style, computed in float32).
    """
    if width % 4:
        raise ValueError(f"width {width} must be a multiple of 4 for 2-D sin-cos positions")
    n = width // 4
    omega = 1.0 / (temperature ** (torch.arange(n, dtype=torch.float32) / n))
    coords = torch.arange(grid_size, dtype=torch.float32)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    r = rows.flatten()[:, None] * omega[None, :]
    q = cols.flatten()[:, None] * omega[None, :]
    table = torch.cat([torch.sin(r), torch.cos(r), torch.sin(q), torch.cos(q)], dim=1)
    return torch.cat([torch.zeros(1, width), table], dim=0)[None]


def _truncated_normal_(tensor: Tensor, std: float, bound: float = 2.0) -> Tensor:
    """Fill with N(0, std^2) truncated to +-bound*std, by inverse-CDF sampling (fast, in place)."""
    p = 0.5 * (1 + math.erf(bound / math.sqrt(2)))  # CDF at +bound
    with torch.no_grad():
        tensor.uniform_(1 - 2 * p, 2 * p - 1).erfinv_().mul_(std * math.sqrt(2.0))
    return tensor


@torch.no_grad()
def init_linear_or_norm_(module: nn.Module) -> None:
    """A linear layer: truncated normal weight (std 0.02) and zero bias; a LayerNorm: identity;
    any other module: left as is (its children are not visited)."""
    if isinstance(module, nn.Linear):
        _truncated_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens via a strided convolution (with bias)."""

    def __init__(self, patch_size: int, in_channels: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, width, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, W)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=True)
        self.proj = nn.Linear(width, width, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        b, n, w = x.shape
        # unbind, not qkv[0], qkv[1], qkv[2]: one backward (a stack) instead of three zero-filled (3, B, H, N, Dh) buffers
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, Dh)
        return self.proj(out.transpose(1, 2).reshape(b, n, w))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, ln_eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=ln_eps)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=ln_eps)
        self.mlp = Mlp(width, int(width * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT returning the CLS feature after the final LayerNorm.

    Args:
        image_size: side of the (square) input, a multiple of ``patch_size``.
        patch_size: side of a patch.
        width, depth, heads: embedding width, number of blocks, attention heads.
        in_channels: image channels.
        mlp_ratio: MLP hidden width / ``width``.
        ln_eps: LayerNorm epsilon (1e-5, as in MERU's ViTs).

    ``forward(x)``: ``(B, in_channels, image_size, image_size)`` normalised images ->
    ``(B, width)``. ``pos_embed`` is a frozen parameter (``requires_grad=False``) holding
    the sin-cos table of :func:`sincos_pos_embed_2d`; being a parameter, it is saved.
    """

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        width: int,
        depth: int,
        heads: int,
        in_channels: int = 3,
        mlp_ratio: float = 4.0,
        ln_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.image_size = image_size
        self.patch_size = patch_size
        self.width = width
        self.in_channels = in_channels
        grid = image_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_channels, width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(sincos_pos_embed_2d(grid, width), requires_grad=False)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, ln_eps) for _ in range(depth))
        self.grad_checkpointing = False  # recompute block activations in backward (see ContrastiveModel)
        self.norm = nn.LayerNorm(width, eps=ln_eps)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Random init: truncated normal (std 0.02) linears with zero bias, Xavier-uniform patch
        projection, tiny CLS token; the sin-cos table is left as is."""
        nn.init.normal_(self.cls_token, std=1e-6)
        weight = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        for module in self.blocks.modules():
            init_linear_or_norm_(module)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"expected images of shape (B, {self.in_channels}, {self.image_size}, {self.image_size}), "
                f"got {tuple(x.shape)}"
            )
        tokens = self.patch_embed(x)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1) + self.pos_embed
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if self.grad_checkpointing and torch.is_grad_enabled() else block(x)
        return self.norm(x)[:, 0]

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}, patch_size={self.patch_size}, width={self.width}"

