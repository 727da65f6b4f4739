"""Position information for attention: sinusoidal, learned, rotary (RoPE) and ALiBi.

- :func:`sinusoidal_positions` — the fixed ``(seq, dim)`` table of Vaswani et al. (2017), added
  to token embeddings.
- :func:`sinusoidal_positions_2d` — the same table along the rows and the columns of a grid of
  image patches (Vision Transformers).
- :class:`LearnedPositionalEmbedding` — one trained vector per position (BERT, GPT-2), added to
  token embeddings.
- :class:`RotaryEmbedding` — rotates query and key vectors by a position-dependent angle so that
  ``q·k`` depends only on the distance between them (Su et al., 2021), in the LLaMA / Hugging Face
  "rotate half" layout.
- :func:`alibi_slopes` — per-head slopes for ALiBi (Press et al., 2021); the bias
  ``-slope·|i-j|`` itself is added inside :func:`attnlab.attention.attention`.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_positions(
    seq_len: int,
    dim: int,
    *,
    base: float = 10000.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The sinusoidal position table of "Attention Is All You Need", shape ``(seq_len, dim)``.

    ``table[pos, 2i] = sin(pos / base^(2i/dim))`` and
    ``table[pos, 2i+1] = cos(pos / base^(2i/dim))``
    (sine and cosine interleaved, as in the paper). An odd ``dim`` ends with a sine column.
    The table is computed in float64 and then cast to ``dtype`` (default: torch's default dtype),
    because float32 angles ``pos · freq`` lose ~1e-3 rad at positions in the thousands.
    """
    if seq_len < 0 or dim <= 0:
        raise ValueError(f"need seq_len >= 0 and dim > 0, got seq_len={seq_len}, dim={dim}")
    pos = torch.arange(seq_len, dtype=torch.float64)[:, None]  # (seq, 1)
    pair = torch.arange(dim, dtype=torch.float64) // 2  # (dim,) index i of column 2i / 2i+1
    angles = pos / base ** (2 * pair / dim)  # (seq, dim)
    table = torch.where(torch.arange(dim) % 2 == 0, angles.sin(), angles.cos())
    return table.to(device=device, dtype=dtype or torch.get_default_dtype())



def sinusoidal_positions_2d(
    height: int,
    width: int,
    dim: int,
    *,
    base: float = 10000.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """A 2-D sinusoidal table for a ``height x width`` grid (image patches), ``(height * width, dim)``.

    Row-major over the grid: entry ``r * width + c`` is the 1-D table of :func:`sinusoidal_positions`
    for row ``r`` in its first ``dim / 2`` columns and for column ``c`` in the last ``dim / 2``
    (as in MAE, He et al. 2021), so nearby patches get similar vectors along both axes.
    ``dim`` must be even.
    """
    if height <= 0 or width <= 0 or dim <= 0 or dim % 2:
        raise ValueError(f"need height > 0, width > 0 and an even dim > 0, got height={height}, "
                         f"width={width}, dim={dim}")
    rows = sinusoidal_positions(height, dim // 2, base=base, dtype=torch.float64)  # (H, dim/2)
    cols = sinusoidal_positions(width, dim // 2, base=base, dtype=torch.float64)  # (W, dim/2)
    grid = torch.cat([rows[:, None, :].expand(height, width, -1),
                      cols[None, :, :].expand(height, width, -1)], dim=-1)  # (H, W, dim)
    return grid.reshape(height * width, dim).to(device=device, dtype=dtype or torch.get_default_dtype())

class LearnedPositionalEmbedding(nn.Module):
    """A trained vector per position, as in BERT and GPT-2: ``weight`` is ``(max_seq_len, dim)``.

    ``forward(seq_len, offset=k)`` returns rows ``k .. k+seq_len-1`` as a ``(seq_len, dim)``
    tensor (``offset`` is the number of cached tokens during incremental decoding); pass
    ``positions`` (any integer shape ``S``) instead for per-row positions, giving ``(*S, dim)``.
    """

    def __init__(self, max_seq_len: int, dim: int) -> None:
        super().__init__()
        if max_seq_len <= 0 or dim <= 0:
            raise ValueError(f"need max_seq_len > 0 and dim > 0, got {max_seq_len=}, {dim=}")
        self.max_seq_len = max_seq_len
        self.weight = nn.Parameter(torch.empty(max_seq_len, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # GPT-2 / BERT initialisation.
        nn.init.normal_(self.weight, std=0.02)

    def forward(
        self, seq_len: int | None = None, *, offset: int = 0, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        if positions is not None:
            return self.weight[positions]
        if seq_len is None:
            raise ValueError("pass seq_len (with an optional offset) or positions")
        if offset < 0 or offset + seq_len > self.max_seq_len:
            raise ValueError(
                f"positions {offset}..{offset + seq_len - 1} are outside the table of "
                f"max_seq_len={self.max_seq_len} (seq_len={seq_len}, offset={offset})"
            )
        return self.weight[offset : offset + seq_len]

    def extra_repr(self) -> str:
        return f"max_seq_len={self.max_seq_len}, dim={self.weight.shape[1]}"


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``(x1, x2) -> (-x2, x1)`` on the two halves of the last dimension (LLaMA layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE) in the LLaMA / Hugging Face ``rotate_half`` layout.

    Dimension ``d < head_dim/2`` is paired with ``d + head_dim/2`` (first half with second half,
    not neighbouring pairs as in GPT-J), and the pair at position ``p`` is rotated by the angle
    ``p · base^(-2d/head_dim)``. Plainly, for ``x`` shaped ``(..., seq, head_dim)``::

        cos, sin = cos(p · inv_freq), sin(p · inv_freq)    each repeated twice -> (seq, head_dim)
        rotated  = x * cos + rotate_half(x) * sin

    Because both queries and keys are rotated, ``q_m · k_n`` depends only on ``m - n``.

    The angles are computed exactly as ``transformers``' ``LlamaRotaryEmbedding`` does
    (float32 ``inv_freq``, float32 ``p · inv_freq``, then cast to the input dtype), so pretrained
    LLaMA-family weights reproduce Hugging Face's outputs; float64 inputs get float64 angles.
    The cos/sin tables are cached per device and angle dtype, starting at ``max_seq_len`` rows and
    doubling when a longer position is requested. They are plain attributes, not buffers, so they
    stay out of ``state_dict`` and ``module.to(torch.bfloat16)`` cannot round the angles.
    """

    def __init__(self, head_dim: int, base: float = 10000.0, max_seq_len: int = 2048) -> None:
        super().__init__()
        if head_dim <= 0 or head_dim % 2:
            raise ValueError(f"RoPE needs a positive, even head_dim, got head_dim={head_dim}")
        if base <= 0 or max_seq_len <= 0:
            raise ValueError(f"need base > 0 and max_seq_len > 0, got {base=}, {max_seq_len=}")
        self.head_dim = head_dim
        self.base = base
        self.max_seq_len = max_seq_len
        # (device, angle dtype) -> (cos, sin), each (cached_len, head_dim) in the angle dtype.
        self._tables: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def inv_freq(self, *, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``(head_dim/2,)`` rotation frequencies ``base^(-2d/head_dim)``, HF's formula verbatim."""
        exponents = torch.arange(0, self.head_dim, 2, device=device, dtype=dtype) / self.head_dim
        return 1.0 / (self.base**exponents)

    def _angles(self, positions: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Positions ``S`` (any shape) -> angles ``(*S, head_dim)``, halves repeated."""
        freqs = positions.to(dtype)[..., None] * self.inv_freq(device=positions.device, dtype=dtype)
        return torch.cat((freqs, freqs), dim=-1)

    def cos_sin(
        self, seq_len: int, *, offset: int = 0, device=None, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for positions ``offset .. offset+seq_len-1``, each ``(seq_len, head_dim)``.

        Served from the cache (grown if needed) and cast to ``dtype`` (default float32).
        """
        dtype = dtype or torch.float32
        angle_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        device = torch.device(device) if device is not None else torch.get_default_device()
        key = (device, angle_dtype)
        needed = offset + seq_len
        cached = self._tables.get(key)
        if cached is None or cached[0].shape[0] < needed:
            length = max(self.max_seq_len, needed)
            if cached is not None:
                length = max(length, 2 * cached[0].shape[0])  # double: O(log n) rebuilds
            angles = self._angles(torch.arange(length, device=device), angle_dtype)
            cached = self._tables[key] = (angles.cos(), angles.sin())
        cos, sin = cached
        return cos[offset:needed].to(dtype), sin[offset:needed].to(dtype)

    def forward(
        self, x: torch.Tensor, *, offset: int = 0, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Rotate queries or keys ``x`` shaped ``(..., heads, seq, head_dim)``.

        Position of ``x[..., s, :]`` is ``offset + s`` (during cached decoding ``offset`` is the
        number of cached tokens). ``positions`` overrides it: ``(seq,)`` for all rows, or
        ``(batch, seq)`` (any leading shape broadcasting with ``x`` minus its heads dimension)
        for per-row positions, e.g. with left padding.
        """
        if x.shape[-1] != self.head_dim:
            raise ValueError(
                f"RotaryEmbedding(head_dim={self.head_dim}) got x of shape {tuple(x.shape)}"
            )
        if positions is None:
            if offset < 0:
                raise ValueError(f"offset must be >= 0, got {offset}")
            cos, sin = self.cos_sin(x.shape[-2], offset=offset, device=x.device, dtype=x.dtype)
        else:
            if positions.shape[-1] != x.shape[-2]:
                raise ValueError(
                    f"positions of shape {tuple(positions.shape)} do not match "
                    f"seq_len={x.shape[-2]} of x {tuple(x.shape)}"
                )
            # Computed directly (not from the cache): indexing the cache would need the
            # largest position on the host, a device sync.
            angle_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
            angles = self._angles(positions, angle_dtype)  # (*S, seq, head_dim)
            if positions.dim() > 1:
                angles = angles.unsqueeze(-3)  # (..., 1, seq, head_dim): broadcast over heads
            cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        return x * cos + rotate_half(x) * sin

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}, max_seq_len={self.max_seq_len}"


def alibi_slopes(
    num_heads: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """ALiBi head slopes, shape ``(num_heads,)``, following the paper's reference code.

    For ``n`` a power of two the slopes are the geometric sequence ``2^(-8/n), 2^(-16/n), …,
    2^(-8)``. Otherwise, with ``m`` the largest power of two below ``n``, they are the ``m``
    slopes for ``m`` heads followed by every other slope (the 1st, 3rd, …) of the ``2m``-head
    sequence until ``n`` slopes are reached — e.g. 12 heads give ``2^-1 … 2^-8`` then
    ``2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5``.
    """
    if num_heads <= 0:
        raise ValueError(f"num_heads must be positive, got num_heads={num_heads}")

    def power_of_two_slopes(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    closest = 2 ** math.floor(math.log2(num_heads))
    slopes = power_of_two_slopes(closest)
    slopes += power_of_two_slopes(2 * closest)[0::2][: num_heads - closest]
    return torch.tensor(slopes, dtype=dtype or torch.get_default_dtype(), device=device)
