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

import math

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
    """Muon (:class:`Muon`) for the hidden weight matrices, AdamW for everything else.

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
        self.muon = Muon([{"name": "muon", "params": matrices}], lr=lr, weight_decay=weight_decay,
                         adjust_lr_fn="match_rms_adamw", ns_dtype=newton_schulz_dtype(device))
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


def newton_schulz_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CUDA (as ``torch.optim.Muon``), fp32 on the CPU: there bf16 matmuls are fast only
    with AVX-512 BF16 or AMX, and without them they are ~50x slower than fp32 (measured on a
    2-core AMD EPYC with AVX2: 0.8-3 GFLOP/s against 123-130), which made Muon's steps 7x slower."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def orthogonalize(matrix: torch.Tensor, coefficients: tuple[float, float, float], steps: int,
                  eps: float, dtype: torch.dtype) -> torch.Tensor:
    """Muon's quintic Newton-Schulz iteration, ``torch.optim.Muon``'s, in ``dtype``: maps the
    ``(A, B)`` ``matrix`` to roughly the nearest semi-orthogonal matrix (singular values ~0.7-1.2)."""
    a, b, c = coefficients
    x = matrix.to(dtype)
    tall = matrix.size(0) > matrix.size(1)
    if tall:  # iterate on the wide orientation: the Gram matrix is the smaller square
        x = x.T
    x = x / x.norm().clamp(min=eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


class Muon(torch.optim.Muon):
    """``torch.optim.Muon`` whose Newton-Schulz iterations run in ``ns_dtype`` (see
    :func:`newton_schulz_dtype`); with ``ns_dtype=torch.bfloat16`` its steps are PyTorch's,
    bit for bit. State and param groups are PyTorch's, so checkpoints load in either."""

    def __init__(self, params, *, ns_dtype: torch.dtype = torch.float32, **kwargs) -> None:
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, buffers = [], [], []
            self._init_group(group, params, grads, buffers)
            lr, momentum = float(group["lr"]), group["momentum"]
            for param, grad, buf in zip(params, grads, buffers, strict=True):
                buf.lerp_(grad, 1 - momentum)
                update = grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = orthogonalize(update, group["ns_coefficients"], group["ns_steps"],
                                       group["eps"], self.ns_dtype)
                param.mul_(1 - lr * group["weight_decay"])
                param.add_(update, alpha=-lr * _lr_ratio(group["adjust_lr_fn"], param.shape))
        return loss


def _lr_ratio(adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """``torch.optim.Muon``'s learning-rate adjustment for an ``(A, B)`` matrix."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return 1.0
