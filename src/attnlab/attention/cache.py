"""Key/value cache for incremental (token-by-token) decoding."""

from __future__ import annotations

import torch


class KVCache:
    """Preallocated key/value buffers that decoding steps append to in place.

    ``key`` is ``(batch, kv_heads, max_len, head_dim)`` and ``value`` is
    ``(batch, kv_heads, max_len, value_dim)``; ``length`` steps of them are filled. Every batch
    row has the same length (batched decoding advances all rows together). Only the key/value
    heads are stored, so a grouped-query model (``kv_heads < heads``) caches ``kv_heads`` heads.

    Appending copies the new steps into the preallocated buffers, never ``torch.cat``: a step
    costs O(new steps), not a copy of everything cached, and the buffers never move in memory.
    One cache serves one attention layer. It is meant for inference (``torch.no_grad()``):
    later appends overwrite storage that earlier returned views share.

    Example::

        cache = KVCache(batch=2, kv_heads=4, max_len=128, head_dim=64, dtype=torch.bfloat16)
        keys, values = cache.append(k_step, v_step)   # k_step: (2, 4, 1, 64)
        # keys: (2, 4, cache.length, 64), a view of cache.key
    """

    def __init__(
        self,
        batch: int,
        kv_heads: int,
        max_len: int,
        head_dim: int,
        *,
        value_dim: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        value_dim = head_dim if value_dim is None else value_dim
        if min(batch, kv_heads, max_len, head_dim, value_dim) <= 0:
            raise ValueError(
                f"KVCache sizes must be positive, got {batch=}, {kv_heads=}, {max_len=}, "
                f"{head_dim=}, {value_dim=}"
            )
        self.key = torch.empty(batch, kv_heads, max_len, head_dim, device=device, dtype=dtype)
        self.value = torch.empty(batch, kv_heads, max_len, value_dim, device=device, dtype=dtype)
        self._length = 0

    @property
    def length(self) -> int:
        """Number of filled steps (the position the next appended token will take)."""
        return self._length

    @property
    def max_len(self) -> int:
        return self.key.shape[2]

    def append(self, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``steps`` new positions and return views of everything filled so far.

        Args:
            key: ``(batch, kv_heads, steps, head_dim)``.
            value: ``(batch, kv_heads, steps, value_dim)``.

        Returns:
            ``(keys, values)``: ``(batch, kv_heads, length, head_dim)`` and
            ``(batch, kv_heads, length, value_dim)`` views of the buffers, ``length`` counting
            the new steps.

        Raises:
            ValueError: a shape that does not match the buffers, or more steps than fit.
            TypeError: a dtype or device that differs from the buffers'.
        """
        batch, kv_heads, max_len, head_dim = self.key.shape
        value_dim = self.value.shape[-1]
        steps = key.shape[2] if key.dim() == 4 else -1
        expect_key = (batch, kv_heads, steps, head_dim)
        expect_value = (batch, kv_heads, steps, value_dim)
        if tuple(key.shape) != expect_key or tuple(value.shape) != expect_value:
            raise ValueError(
                f"KVCache expects key (batch={batch}, kv_heads={kv_heads}, steps, "
                f"head_dim={head_dim}) and value (batch, kv_heads, steps, value_dim={value_dim}) "
                f"with the same steps, got key {tuple(key.shape)} and value {tuple(value.shape)}"
            )
        for name, tensor in (("key", key), ("value", value)):
            if tensor.dtype != self.key.dtype or tensor.device != self.key.device:
                raise TypeError(
                    f"KVCache holds {self.key.dtype} on {self.key.device}, got {name} "
                    f"{tensor.dtype} on {tensor.device}"
                )
        end = self._length + steps
        if end > max_len:
            raise ValueError(
                f"KVCache overflow: appending {steps} steps to {self._length} cached would need "
                f"{end} > max_len={max_len}; key {tuple(key.shape)}, buffer "
                f"{tuple(self.key.shape)}"
            )
        self.key[:, :, self._length : end].copy_(key)
        self.value[:, :, self._length : end].copy_(value)
        self._length = end
        return self.filled()

    def filled(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of the filled part: ``(batch, kv_heads, length, head_dim)`` keys and the values."""
        return self.key[:, :, : self._length], self.value[:, :, : self._length]

    def reorder(self, indices: torch.Tensor) -> None:
        """Keep the batch rows ``indices`` ``(new_batch,)`` (repeats allowed), e.g. the surviving
        hypotheses of a beam search. The filled length is shared by all rows, so it stays valid."""
        self.key = self.key.index_select(0, indices)
        self.value = self.value.index_select(0, indices)

    def reset(self) -> None:
        """Forget every cached step; the buffers are kept (and later overwritten), not zeroed."""
        self._length = 0

    def __repr__(self) -> str:
        batch, kv_heads, max_len, head_dim = self.key.shape
        return (
            f"KVCache(batch={batch}, kv_heads={kv_heads}, length={self._length}, "
            f"max_len={max_len}, head_dim={head_dim}, value_dim={self.value.shape[-1]}, "
            f"dtype={self.key.dtype}, device={self.key.device})"
        )
