"""AdamW with two parameter groups: weight matrices decay, everything else does not.

The rule: a parameter is decayed iff it has two or more dimensions and does not belong to an
``nn.Embedding``. So linear and attention projection matrices decay; biases, LayerNorm/RMSNorm
gains (1-D) and embedding tables (token and learned-position embeddings, and an output head
tied to the token embedding, which is the same tensor) do not. Decay pulls weights toward zero;
for a gain that means toward "switch this feature off", and for an embedding row it shrinks
rare tokens more than frequent ones, neither of which is the intended regularisation.
"""

from __future__ import annotations

import torch
from torch import nn


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW param groups, ``{"name": "decay" | "no_decay", "params": [...], "weight_decay"}``.

    Parameters that do not require gradients are left out; a parameter shared by two modules
    appears once (``named_parameters`` de-duplicates), so a tied head is never counted twice.
    """
    embedding_params = {
        id(p) for module in model.modules() if isinstance(module, nn.Embedding)
        for p in module.parameters(recurse=False)
    }
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.dim() >= 2 and id(param) not in embedding_params:
            decay.append(param)
        else:
            no_decay.append(param)
    return [
        {"name": "decay", "params": decay, "weight_decay": weight_decay},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, *, lr: float, weight_decay: float, betas: tuple[float, float],
                    device: torch.device) -> torch.optim.AdamW:
    """AdamW over :func:`decay_groups`; the fused kernel on CUDA, the plain loop on CPU (where
    fused AdamW is not faster and the plain loop keeps results bit-for-bit reproducible)."""
    return torch.optim.AdamW(decay_groups(model, weight_decay), lr=lr, betas=betas,
                             fused=device.type == "cuda")
