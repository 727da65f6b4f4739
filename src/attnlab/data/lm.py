"""Language-model batches: a corpus as one long tensor of ids, and random windows of it.

For next-token prediction every window of ``block_size + 1`` ids gives an input and a target::

    tokens  = [t0 t1 t2 t3 t4 t5 ...]          the whole corpus, encoded once
    x       = tokens[s : s + block]             (batch, block) at random starts s
    y       = tokens[s + 1 : s + block + 1]     the next id after each position of x
"""

from __future__ import annotations

import torch


def encode_corpus(tokenizer, text: str) -> torch.Tensor:
    """``text`` encoded by ``tokenizer`` as a 1-D int64 tensor ``(num_tokens,)``."""
    return torch.tensor(tokenizer.encode(text), dtype=torch.int64)


def lm_batch(
    tokens: torch.Tensor, batch_size: int, block_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)``, each ``(batch_size, block_size)`` int64: windows of ``tokens`` and their targets.

    The start of each window is drawn uniformly from ``generator`` (the same seed gives the same
    batch), so that ``y[i]`` is ``x[i]`` shifted by one and never runs past the end of ``tokens``.
    ``tokens`` is 1-D and longer than ``block_size``; ``ValueError`` otherwise.
    """
    if batch_size < 1 or block_size < 1:
        raise ValueError(f"batch_size and block_size must be >= 1, got {batch_size=}, {block_size=}")
    if tokens.dim() != 1 or tokens.numel() <= block_size:
        raise ValueError(
            f"tokens must be 1-D and longer than block_size={block_size}, got shape {tuple(tokens.shape)}"
        )
    # Starts 0 .. len - block - 1: the last target, at start + block, is the corpus's last id.
    starts = torch.randint(tokens.numel() - block_size, (batch_size,), generator=generator)
    windows = tokens[starts[:, None] + torch.arange(block_size + 1)].long()  # (batch, block + 1)
    return windows[:, :-1], windows[:, 1:]
