"""AdamW with two parameter groups: weight matrices decay, everything else does not; or Muon for
the weight matrices and AdamW for the rest (:class:`MuonWithAdamW`).

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


OPTIMIZERS = ("adamw", "muon")


def build_optimizer(model: nn.Module, *, lr: float, weight_decay: float, betas: tuple[float, float],
                    device: torch.device, kind: str = "adamw"):
    """AdamW over :func:`decay_groups` (``kind="adamw"``; the fused kernel on CUDA, the plain loop
    on CPU, where fused AdamW is not faster and the plain loop keeps results bit-for-bit
    reproducible), or :class:`MuonWithAdamW` (``kind="muon"``)."""
    if kind == "muon":
        return MuonWithAdamW(model, lr=lr, weight_decay=weight_decay, betas=betas, device=device)
    if kind != "adamw":
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {kind!r}")
    return torch.optim.AdamW(decay_groups(model, weight_decay), lr=lr, betas=betas,
                             fused=device.type == "cuda")


class MuonWithAdamW:
    """Muon (``torch.optim.Muon``) for the hidden weight matrices, AdamW for everything else.

    Muon (Jordan et al. 2024) replaces each matrix's momentum by its nearest orthogonal matrix
    (five Newton-Schulz iterations), so every direction of the update moves at the same rate; it
    is meant for the 2-D weights inside the network, not for embeddings, the output head tied to
    them, gains or biases, which stay with AdamW. ``adjust_lr_fn="match_rms_adamw"`` scales
    Muon's step to the size of an AdamW step (Liu et al. 2025, "Muon is Scalable for LLM
    Training"), so that one learning rate and one schedule serve both.

    It stands in for one ``torch.optim.Optimizer`` where the training loop and the checkpoints
    need one: ``param_groups`` (Muon's groups first; setting ``"lr"`` reaches the optimizer that
    owns the group), ``step``, ``zero_grad``, and ``state_dict`` / ``load_state_dict`` in the
    standard layout, parameters numbered across both optimizers.
    """

    def __init__(self, model: nn.Module, *, lr: float, weight_decay: float, betas: tuple[float, float],
                 device: torch.device) -> None:
        groups = decay_groups(model, weight_decay)
        matrices = groups[0]["params"]  # 2-D and not an embedding: the hidden weights
        self.muon = torch.optim.Muon([{"name": "muon", "params": matrices}], lr=lr,
                                     weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw")
        self.adamw = torch.optim.AdamW([groups[1]], lr=lr, betas=betas, fused=device.type == "cuda")
        self._parts = (self.muon, self.adamw)

    @property
    def param_groups(self) -> list[dict]:
        return [group for part in self._parts for group in part.param_groups]

    @property
    def state(self) -> dict:
        return {param: value for part in self._parts for param, value in part.state.items()}

    @torch.no_grad()
    def step(self) -> None:
        for part in self._parts:
            part.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self._parts:
            part.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        """Both optimizers' state, their parameters numbered 0, 1, ... across Muon then AdamW."""
        state, groups, offset = {}, [], 0
        for part in self._parts:
            saved = part.state_dict()
            state.update({offset + index: value for index, value in saved["state"].items()})
            groups += [{**group, "params": [offset + index for index in group["params"]]}
                       for group in saved["param_groups"]]
            offset += sum(len(group["params"]) for group in part.param_groups)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """The inverse of :meth:`state_dict`."""
        groups, offset = list(state_dict["param_groups"]), 0
        for part in self._parts:
            mine, groups = groups[:len(part.param_groups)], groups[len(part.param_groups):]
            count = sum(len(group["params"]) for group in mine)
            part.load_state_dict({
                "state": {int(index) - offset: value for index, value in state_dict["state"].items()
                          if offset <= int(index) < offset + count},
                "param_groups": [{**group, "params": [int(index) - offset for index in group["params"]]}
                                 for group in mine],
            })
            offset += count
