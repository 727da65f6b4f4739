"""``bf16_is_fast``: which devices multiply bfloat16 natively, read from torch's CPU probes."""

from __future__ import annotations

import pytest
import torch

from attnlab.train import precision
from attnlab.train.precision import bf16_is_fast


@pytest.mark.parametrize(("avx512_bf16", "amx"), [(False, False), (True, False), (False, True), (True, True)])
def test_a_cpu_is_fast_in_bf16_with_either_instruction_set(monkeypatch, avx512_bf16, amx):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert bf16_is_fast("cpu") is (avx512_bf16 or amx)
    assert bf16_is_fast(torch.device("cpu")) is (avx512_bf16 or amx)


def test_a_probe_missing_from_torch_reads_as_unsupported(monkeypatch):
    monkeypatch.setattr(precision, "_CPU_BF16_PROBES", ("_no_such_probe_in_torch",))
    assert bf16_is_fast("cpu") is False


def test_other_devices_are_not_fast():
    assert bf16_is_fast("meta") is False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_gpu_follows_torchs_bf16_support():
    assert bf16_is_fast("cuda") is torch.cuda.is_bf16_supported()
