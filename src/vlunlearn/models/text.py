"""Causal text transformer with the parameter layout of MERU's text encoder.

Names (``token_embed``, ``posit_embed``, ``attn_mask``, ``resblocks.{i}.ln_1``, ``.attn``,
``.ln_2``, ``.mlp.c_fc``, ``.mlp.c_proj``, ``ln_final``) and computation (pre-LN blocks,
exact GELU, causal mask, pooling at the argmax token id) follow ``reference/meru.md`` §1.3.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["TextTransformer", "causal_mask"]


def causal_mask(length: int) -> Tensor:
    """Bool ``(length, length)`` mask, True above the diagonal (a position cannot see later ones)."""
    return torch.ones(length, length, dtype=torch.bool).triu(1)


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width, 4 * width)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class TextTransformer(nn.Module):
    """Token ids -> the feature at each sequence's end-of-text token.

    Args:
        vocab_size: number of token ids; the end-of-text id must be the largest id used.
        context_length: maximum sequence length ``L``.
        width, depth, heads: transformer shape.

    ``forward(tokens)``: ``(B, T)`` integer ids with ``T <= L``, right-padded with 0 ->
    ``(B, width)``, the ``ln_final`` output at each row's argmax id. The causal mask
    (persistent bool buffer ``attn_mask``) makes the result independent of the padding.
    """

    def __init__(self, vocab_size: int, context_length: int, width: int, depth: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.vocab_size = vocab_size
        self.context_length = context_length
        self.width = width
        self.token_embed = nn.Embedding(vocab_size, width)
        self.posit_embed = nn.Parameter(torch.zeros(context_length, width))
        self.register_buffer("attn_mask", causal_mask(context_length), persistent=True)
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(depth))
        self.grad_checkpointing = False  # recompute block activations in backward (see ContrastiveModel)
        self.ln_final = nn.LayerNorm(width)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """CLIP-style init: embeddings N(0, 0.02) / N(0, 0.01); attention and MLP weights scaled
        by width and depth so the residual stream keeps its variance; zero biases."""
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.posit_embed, std=0.01)
        depth = max(len(self.resblocks), 1)
        attn_std = self.width**-0.5
        proj_std = attn_std * (2 * depth) ** -0.5
        fc_std = (2 * self.width) ** -0.5
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.zeros_(block.attn.in_proj_bias)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.zeros_(block.attn.out_proj.bias)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.zeros_(block.mlp.c_fc.bias)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
            nn.init.zeros_(block.mlp.c_proj.bias)

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.ndim != 2:
            raise ValueError(f"expected token ids of shape (B, T), got {tuple(tokens.shape)}")
        if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise ValueError(f"token ids must be integers, got {tokens.dtype}")
        length = tokens.shape[1]
        if length > self.context_length:
            raise ValueError(f"sequence length {length} exceeds the context length {self.context_length}")
        tokens = tokens.long()
        x = self.token_embed(tokens) + self.posit_embed[:length]
        mask = self.attn_mask[:length, :length]
        for block in self.resblocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, mask, use_reentrant=False)
            else:
                x = block(x, mask)
        x = self.ln_final(x)
        eot = tokens.argmax(dim=-1)
        return x[torch.arange(x.shape[0], device=x.device), eot]

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, context_length={self.context_length}, width={self.width}"
