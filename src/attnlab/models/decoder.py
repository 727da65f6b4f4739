"""What every attnlab decoder (:class:`LlamaDecoder`, :class:`GPT`) shares: KV caches and input checks.

The decoder contract that :mod:`attnlab.generation` relies on: ``model(input_ids, *, caches=None)
-> logits (batch, seq, vocab)``, :meth:`DecoderMixin.new_caches`, ``model.config.max_positions``.
A class mixing this in has ``self.config`` (``num_kv_heads``, ``head_dim``, ``max_positions``),
``self.embed`` (the token embedding) and ``self.layers`` (one attention block each).
"""

from __future__ import annotations

import torch

from attnlab.attention import KVCache


class DecoderMixin:
    """KV caches sized for the model and the checks every decoder's ``forward`` runs first."""

    is_causal = True

    def new_caches(
        self, batch: int, max_len: int, *, dtype: torch.dtype | None = None, device=None
    ) -> list[KVCache]:
        """One empty :class:`KVCache` per layer, each ``(batch, num_kv_heads, max_len, head_dim)``.

        ``dtype`` and ``device`` default to the model's parameters'.
        """
        if max_len > self.config.max_positions:
            raise ValueError(
                f"max_len={max_len} exceeds the model's max_positions={self.config.max_positions}"
            )
        weight = self.embed.weight
        return [
            KVCache(batch, self.config.num_kv_heads, max_len, self.config.head_dim,
                    dtype=dtype or weight.dtype, device=device or weight.device)
            for _ in self.layers
        ]

    def _check_inputs(self, input_ids: torch.Tensor, caches: list[KVCache] | None) -> None:
        """ValueError for ids that are not ``(batch, seq)`` long, or that overflow the caches or
        ``max_positions``."""
        if input_ids.dim() != 2 or input_ids.dtype != torch.long:
            raise ValueError(
                f"input_ids must be a (batch, seq) long tensor, got {input_ids.dtype} "
                f"of shape {tuple(input_ids.shape)}"
            )
        seq = input_ids.shape[1]
        past = 0
        if caches is not None:
            if len(caches) != len(self.layers):
                raise ValueError(f"need one cache per layer ({len(self.layers)}), got {len(caches)}")
            past = caches[0].length
            if past + seq > caches[0].max_len:
                raise ValueError(
                    f"KV cache overflow: {past} cached + {seq} new tokens = {past + seq} > "
                    f"the cache's max_len={caches[0].max_len}"
                )
        if past + seq > self.config.max_positions:
            raise ValueError(
                f"{past} cached + {seq} new tokens = {past + seq} exceeds "
                f"max_positions={self.config.max_positions}"
            )
