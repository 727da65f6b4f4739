"""The Vision Transformer (Dosovitskiy et al., 2020): an image as a sequence of patches.

Plainly, for ``images`` shaped ``(batch, channels, H, W)`` and patches of ``P x P`` pixels::

    patches = cut into (H/P) * (W/P) squares, each flattened   (batch, N, channels * P * P)
    x = patch_embed(patches)                                   (batch, N, D)   a linear map
    x = [cls; x] + positions                                   (batch, 1 + N, D)
    for block in blocks:                                       pre-LN encoder blocks
        x = x + Attention(LN(x)); x = x + FFN(LN(x))           every token sees every token
    logits = head(LN(x[:, 0]))                                 (batch, classes)  from the class token

With ``patch_overlap = o``, token (r, c) reads the ``(P + 2o) x (P + 2o)`` window around its
square (zeros past the border) instead of the square alone, so it also sees the edges of its
neighbours: a cheap dose of locality, which a ViT otherwise has to learn from data. With
``stem_channels = s``, a 3 x 3 convolution and a GELU first turn each pixel into ``s`` features of
its 3 x 3 neighbourhood, and the windows are cut from those features instead of the raw pixels
(a small convolutional stem, as in Xiao et al., 2021, "Early convolutions help transformers see
better"; the grid of tokens stays the same).

The class token starts as one learned vector and gathers, layer by layer, what the patches say;
its attention over the patches is what :mod:`attnlab.explain.vision` draws. Positions are learned
vectors or the fixed 2-D sinusoidal table (:func:`attnlab.attention.sinusoidal_positions_2d`; the
class token's is zero). :data:`VIT_PRESETS` names model sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attnlab.attention import record, sinusoidal_positions_2d
from attnlab.models.blocks import PreNormEncoderBlock
from attnlab.models.checkpoint import SafetensorsModel
from attnlab.models.config_check import check_config_fields

POSITION_KINDS = ("learned", "sinusoidal")

#: Model sizes for 28 x 28 grey images. ``tiny`` learns MNIST-5k in about a minute on 2 CPU cores
#: (for tests); ``fashion-mnist`` is sized for 20 minutes of training on this machine.
VIT_PRESETS: dict[str, dict] = {
    "tiny": {"image_size": 28, "patch_size": 7, "embed_dim": 64, "num_layers": 2, "num_heads": 4,
             "ffn_dim": 128},
    "fashion-mnist": {"image_size": 28, "patch_size": 4, "embed_dim": 96, "num_layers": 4,
                      "num_heads": 4, "ffn_dim": 192, "patch_overlap": 1},
}


@dataclass
class ViTConfig:
    """Sizes of a :class:`ViT`. ``image_size`` must be a multiple of ``patch_size`` and
    ``embed_dim`` of ``num_heads``; ``positions`` is ``"learned"`` or ``"sinusoidal"``;
    ``patch_overlap`` widens each token's window by that many pixels on every side (see
    :func:`patchify`; the grid of tokens, and so the attention maps, stay the same);
    ``stem_channels`` > 0 puts a 3 x 3 convolution with that many output channels and a GELU
    before the patches are cut (0: patches of raw pixels)."""

    image_size: int = 28
    patch_size: int = 4
    in_channels: int = 1
    num_classes: int = 10
    embed_dim: int = 96
    num_layers: int = 4
    num_heads: int = 4
    ffn_dim: int = 192
    dropout: float = 0.0
    positions: str = "learned"
    patch_overlap: int = 0
    stem_channels: int = 0

    def __post_init__(self) -> None:
        check_config_fields(self)
        for name in ("image_size", "patch_size", "in_channels", "num_classes", "embed_dim",
                     "num_layers", "num_heads", "ffn_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"ViTConfig.{name} must be a whole number > 0, got {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} is not a multiple of "
                             f"patch_size={self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        if self.positions not in POSITION_KINDS:
            raise ValueError(f"positions must be one of {POSITION_KINDS}, got {self.positions!r}")
        if self.positions == "sinusoidal" and self.embed_dim % 2:
            raise ValueError(f"sinusoidal positions need an even embed_dim, got {self.embed_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        for name in ("patch_overlap", "stem_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"ViTConfig.{name} must be a whole number >= 0, got {value!r}")

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> ViTConfig:
        """The preset ``name`` (see :data:`VIT_PRESETS`) with ``kwargs`` overriding its fields."""
        if name not in VIT_PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(VIT_PRESETS)}")
        return cls(**{**VIT_PRESETS[name], **kwargs})

    @property
    def grid_size(self) -> int:
        """Patches along each side of the image."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size ** 2


def patchify(images: torch.Tensor, patch_size: int, overlap: int = 0) -> torch.Tensor:
    """``(batch, C, H, W)`` -> ``(batch, (H/P) * (W/P), C * K * K)`` with ``K = P + 2 * overlap``:
    one window per ``P x P`` square of the picture, in row-major order, each flattened channel by
    channel (as a ``P``-strided ``K x K`` convolution with ``overlap`` zero padding reads).

    ``overlap=0`` cuts the picture into non-overlapping squares (the original ViT); ``overlap=o``
    widens each token's window by ``o`` pixels on every side, so neighbouring tokens share pixels
    while the token grid stays ``(H/P) x (W/P)``."""
    batch, channels, height, width = images.shape
    p = patch_size
    if overlap:
        window = p + 2 * overlap
        padded = F.pad(images, (overlap, overlap, overlap, overlap))
        return F.unfold(padded, kernel_size=window, stride=p).transpose(1, 2)  # (batch, N, C*K*K)
    grid = images.reshape(batch, channels, height // p, p, width // p, p)
    # (batch, rows, cols, C, p, p): one patch per (row, col), then flatten each patch
    return grid.permute(0, 2, 4, 1, 3, 5).reshape(batch, (height // p) * (width // p), channels * p * p)


class ViT(SafetensorsModel, nn.Module):
    """Vision Transformer classifier: ``images (batch, C, H, W)`` -> ``logits (batch, classes)``.

    Inputs are normalised pixels (see :class:`attnlab.data.images.Normalization`).
    """

    config_class = ViTConfig

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        window = c.patch_size + 2 * c.patch_overlap
        # The optional stem keeps the picture's size (3 x 3, padding 1), so the grid is unchanged.
        self.stem = (nn.Sequential(nn.Conv2d(c.in_channels, c.stem_channels, 3, padding=1), nn.GELU())
                     if c.stem_channels else None)
        features = c.stem_channels or c.in_channels
        self.patch_embed = nn.Linear(features * window ** 2, c.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        # Learned: one trained vector per token. Sinusoidal: a fixed table, computed when used
        # (it is tiny, and so it never needs saving or moving between devices).
        self.pos_embed = (nn.Parameter(torch.zeros(1, 1 + c.num_patches, c.embed_dim))
                          if c.positions == "learned" else None)
        self.dropout = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            PreNormEncoderBlock(c.embed_dim, c.num_heads, c.ffn_dim, dropout=c.dropout)
            for _ in range(c.num_layers))
        self.norm = nn.LayerNorm(c.embed_dim)
        self.head = nn.Linear(c.embed_dim, c.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # Small random class token and positions (as in the reference ViT), zero head: the first
        # predictions are uniform, so the initial loss is ln(classes).
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def _check_images(self, images: torch.Tensor) -> None:
        c = self.config
        expected = (c.in_channels, c.image_size, c.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"images must be (batch, {c.in_channels}, {c.image_size}, {c.image_size}), "
                             f"got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"images must be floating point (normalised pixels), got {images.dtype}")

    def position_table(self, *, device=None, dtype=None) -> torch.Tensor:
        """The positions added to the tokens, ``(1, 1 + N, D)``: the learned ones, or the 2-D
        sinusoidal table with a zero row for the class token (which has no place in the picture)."""
        if self.pos_embed is not None:
            return self.pos_embed
        c = self.config
        table = sinusoidal_positions_2d(c.grid_size, c.grid_size, c.embed_dim, device=device, dtype=dtype)
        return torch.cat([table.new_zeros(1, c.embed_dim), table])[None]

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``(batch, C, H, W)`` -> the first block's input ``(batch, 1 + N, D)``: class token first."""
        self._check_images(images)
        c = self.config
        pixels = images if self.stem is None else self.stem(images)  # (batch, C or stem, H, W)
        x = self.patch_embed(patchify(pixels, c.patch_size, c.patch_overlap))  # (batch, N, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        positions = self.position_table(device=x.device, dtype=x.dtype)
        return self.dropout(torch.cat([cls, x], dim=1) + positions)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits ``(batch, num_classes)`` for ``images`` ``(batch, C, H, W)``."""
        x = self.embed(images)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))

    def loss(self, images: torch.Tensor, labels: torch.Tensor, *,
             label_smoothing: float = 0.0) -> torch.Tensor:
        """Mean cross-entropy of ``labels`` ``(batch,)`` given ``images`` ``(batch, C, H, W)``."""
        return F.cross_entropy(self(images).float(), labels, label_smoothing=label_smoothing)

    @torch.no_grad()
    def attention_weights(self, images: torch.Tensor) -> torch.Tensor:
        """Every layer's attention ``(layers, batch, heads, 1 + N, 1 + N)`` in eval mode (the exact
        reference formula, see :func:`attnlab.attention.attention_trace`); token 0 is the class token."""
        was_training = self.training
        self.eval()
        try:
            with record(self) as recording:
                self(images)
        finally:
            self.train(was_training)
        return torch.stack([trace.attention.weights for trace in recording.traces])
