"""Whether training in bfloat16 pays on a device.

``TrainConfig(bf16=True)`` runs the forward pass and the loss under ``torch.autocast`` in
bfloat16 (weights, gradients and AdamW's state stay float32). Where the hardware multiplies
bfloat16 natively this is much faster: the ViT preset trained on 1.47-1.61x as many pictures per
second as in float32 on a 2-core AVX-512 BF16 CPU (``benchmarks/vit.py``). Where it does not,
autocast still works but converts in software, and is slower than float32; presets that ask for
bf16 fall back to float32 there (:func:`precision_for_device`; ``attnlab train`` prints its
note).
"""

from __future__ import annotations

import torch

# torch.cpu's probes are private and may be renamed; a missing one reads as "not supported".
_CPU_BF16_PROBES = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")


def bf16_is_fast(device: torch.device | str) -> bool:
    """True when ``device`` multiplies bfloat16 matrices natively: a CUDA GPU that supports
    bf16, or a CPU with AVX-512 BF16 or AMX instructions. False for any other device."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return any(getattr(torch.cpu, probe, lambda: False)() for probe in _CPU_BF16_PROBES)
    return False


def training_device() -> torch.device:
    """The kind of device :func:`attnlab.train.train` picks by default: CUDA when available,
    else the CPU (the GPU's index, from torchrun's ``LOCAL_RANK``, does not change its kind)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def precision_for_device(fields: dict, device: torch.device | str | None = None) -> tuple[dict, str | None]:
    """A fresh run's :class:`attnlab.train.TrainConfig` fields for ``device`` (default:
    :func:`training_device`) and why they changed: ``fields`` itself and None when they ask for
    float32 or ``device`` multiplies bfloat16 natively (:func:`bf16_is_fast`), else a copy with
    ``bf16`` False and a one-line note that says so (autocast without native bf16 converts in
    software and runs slower than float32). ``fields`` is never changed."""
    device = training_device() if device is None else torch.device(device)
    if not fields.get("bf16") or bf16_is_fast(device):
        return fields, None
    note = (f"the preset trains in bf16, but this {device.type} has no native bf16 (AVX-512 BF16, AMX "
            "or a bf16 GPU), where float32 is faster; training in float32")
    return {**fields, "bf16": False}, note
