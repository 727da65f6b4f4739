"""Transformer building blocks shared by attnlab's models.

The parts: :class:`TokenEmbedding` (ids -> vectors), the feed-forward layers
(:class:`FeedForward` ``down(gelu(up(x)))`` of BERT, GPT and the ViT; :class:`SwiGLU` of LLaMA)
and :class:`RMSNorm` (LLaMA's normalisation). The encoder blocks built from them: a
post-LayerNorm one, as in the original Transformer and BERT::

    x = LayerNorm(x + Attention(x))
    x = LayerNorm(x + FeedForward(x))

and a pre-LayerNorm one, as in GPT-2 and the Vision Transformer (easier to train from scratch)::

    x = x + Attention(LayerNorm(x))
    x = x + FeedForward(LayerNorm(x))

(The decoders' pre-norm blocks, :class:`attnlab.models.llama.LlamaBlock` and
:class:`attnlab.models.gpt.GPTBlock`, are these parts with causal, cached attention.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnlab.attention import MultiHeadAttention

#: GELU variants of :class:`FeedForward`: the exact (erf) one of BERT and the ViT, and the tanh
#: approximation of GPT-2 (Hugging Face's ``gelu_new``).
ACTIVATIONS = ("gelu", "gelu_tanh")


class TokenEmbedding(nn.Embedding):
    """``nn.Embedding`` that skips initialising a weight on the meta device.

    Loaders build a model on the meta device and then take every weight from a file.
    ``normal_`` on a meta tensor computes nothing but imports ``torch._dynamo`` (1-2 s, most of
    a cached load); the other layers' initialisers do not.
    """

    def reset_parameters(self) -> None:
        if not self.weight.is_meta:
            super().reset_parameters()


class FeedForward(nn.Module):
    """Position-wise ``down(gelu(up(x)))``.

    ``(..., embed_dim) -> (..., embed_dim)`` through a ``ffn_dim`` wide hidden layer.
    ``activation`` is one of :data:`ACTIVATIONS` (default the exact GELU); ``bias``: biases in
    both linear layers. ``ValueError`` for another activation.
    """

    def __init__(self, embed_dim: int, ffn_dim: int, *, bias: bool = True, activation: str = "gelu") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.up = nn.Linear(embed_dim, ffn_dim, bias=bias)
        self.down = nn.Linear(ffn_dim, embed_dim, bias=bias)
        self.approximate = "tanh" if activation == "gelu_tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x), approximate=self.approximate))


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))``: ``(..., embed_dim) -> (..., embed_dim)``, no biases."""

    def __init__(self, embed_dim: int, ffn_dim: int) -> None:
        super().__init__()
        self.gate = nn.Linear(embed_dim, ffn_dim, bias=False)
        self.up = nn.Linear(embed_dim, ffn_dim, bias=False)
        self.down = nn.Linear(ffn_dim, embed_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x²) + eps) * weight`` over the last dimension, as LLaMA normalises.

    Computed in float32 whatever the input dtype (squares of bf16 activations lose too much),
    then cast back, as in Hugging Face's ``LlamaRMSNorm``.
    """

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


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
