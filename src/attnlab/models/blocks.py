"""Transformer building blocks shared by attnlab's encoder models.

A post-LayerNorm encoder block, as in the original Transformer and BERT::

    x = LayerNorm(x + Attention(x))
    x = LayerNorm(x + FeedForward(x))          FeedForward(x) = down(gelu(up(x)))

and a pre-LayerNorm one, as in GPT-2 and the Vision Transformer (easier to train from scratch)::

    x = x + Attention(LayerNorm(x))
    x = x + FeedForward(LayerNorm(x))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnlab.attention import MultiHeadAttention


class FeedForward(nn.Module):
    """Position-wise ``down(gelu(up(x)))`` with the exact (erf) GELU that BERT uses.

    ``(..., embed_dim) -> (..., embed_dim)`` through a ``ffn_dim`` wide hidden layer.
    """

    def __init__(self, embed_dim: int, ffn_dim: int) -> None:
        super().__init__()
        self.up = nn.Linear(embed_dim, ffn_dim)
        self.down = nn.Linear(ffn_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class PostNormEncoderBlock(nn.Module):
    """Bidirectional self-attention and a feed-forward layer, each followed by add & LayerNorm.

    Args:
        embed_dim: model width.
        num_heads: attention heads; ``num_kv_heads`` key/value heads (default ``num_heads``).
        ffn_dim: hidden width of the feed-forward layer.
        eps: LayerNorm epsilon.
    """

    def __init__(self, embed_dim: int, num_heads: int, ffn_dim: int, *,
                 num_kv_heads: int | None = None, eps: float = 1e-5) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(embed_dim, num_heads, num_kv_heads=num_kv_heads)
        self.attn_norm = nn.LayerNorm(embed_dim, eps=eps)
        self.ffn = FeedForward(embed_dim, ffn_dim)
        self.ffn_norm = nn.LayerNorm(embed_dim, eps=eps)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(batch, seq, embed_dim)``; ``key_padding_mask`` ``(batch, seq)`` True at padding.

        Returns ``(batch, seq, embed_dim)``. Post-norm: the attention reads ``x`` itself.
        """
        x = self.attn_norm(x + self.attn(x, key_padding_mask=key_padding_mask))
        return self.ffn_norm(x + self.ffn(x))


class PreNormEncoderBlock(nn.Module):
    """Bidirectional self-attention and a feed-forward layer, each a pre-LayerNorm residual branch.

    Args:
        embed_dim: model width.
        num_heads: attention heads.
        ffn_dim: hidden width of the feed-forward layer.
        dropout: on the attention weights and on each residual branch, in training mode.
    """

    def __init__(self, embed_dim: int, num_heads: int, ffn_dim: int, *, dropout: float = 0.0) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(embed_dim)
        self.attn = MultiHeadAttention(embed_dim, num_heads, dropout=dropout)
        self.ffn_norm = nn.LayerNorm(embed_dim)
        self.ffn = FeedForward(embed_dim, ffn_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(batch, seq, embed_dim)``; ``key_padding_mask`` ``(batch, seq)`` True at padding.

        Returns ``(batch, seq, embed_dim)``. Pre-norm: the attention reads ``LayerNorm(x)``.
        """
        x = x + self.dropout(self.attn(self.attn_norm(x), key_padding_mask=key_padding_mask))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))
