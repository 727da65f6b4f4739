"""``bf16_is_fast``: which devices multiply bfloat16 natively, read from torch's CPU probes, and
what a preset that asks for bf16 trains in on this machine and on one without native bf16
(``precision_for_device``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attnlab.train import precision
from attnlab.train.precision import bf16_is_fast, precision_for_device


def cpu_flags() -> set[str]:
    """The instruction-set flags the Linux kernel lists for this CPU."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    raise AssertionError("/proc/cpuinfo lists no flags")


def native_bf16() -> bool:
    """From the hardware, not from torch: a CUDA GPU of compute capability 8.0 (Ampere) or
    newer, else a CPU with AVX-512 BF16 or AMX tiles."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_capability() >= (8, 0)
    return bool(cpu_flags() & {"avx512_bf16", "amx_tile"})


@pytest.mark.parametrize(("avx512_bf16", "amx"), [(False, False), (True, False), (False, True), (True, True)])
def test_a_cpu_is_fast_in_bf16_with_either_instruction_set(monkeypatch, avx512_bf16, amx):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert bf16_is_fast("cpu") is (avx512_bf16 or amx)
    assert bf16_is_fast(torch.device("cpu")) is (avx512_bf16 or amx)


def test_the_real_cpu_probe_agrees_with_the_cpus_flags():
    assert bf16_is_fast("cpu") is bool(cpu_flags() & {"avx512_bf16", "amx_tile"})


def test_a_bf16_preset_keeps_bf16_here_exactly_where_the_hardware_has_it():
    chosen, note = precision_for_device({"batch_size": 8, "bf16": True})
    assert chosen == {"batch_size": 8, "bf16": native_bf16()}
    assert (note is not None and "training in float32" in note) is not native_bf16()


def test_without_native_bf16_a_bf16_preset_trains_in_float32(monkeypatch):
    # A machine without AVX-512 BF16, AMX or a GPU: torch's own probes say no; the rest is real.
    for probe in precision._CPU_BF16_PROBES:
        monkeypatch.setattr(torch.cpu, probe, lambda: False, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fields = {"batch_size": 8, "bf16": True}
    chosen, note = precision_for_device(fields)
    assert chosen == {"batch_size": 8, "bf16": False}
    assert fields["bf16"] is True  # the preset itself is left alone
    assert "\n" not in note and "this cpu has no native bf16" in note and "training in float32" in note


def test_a_float32_preset_is_kept_with_nothing_to_say(monkeypatch):
    monkeypatch.setattr(precision, "bf16_is_fast", lambda device: False)
    fields = {"batch_size": 8, "bf16": False}
    assert precision_for_device(fields, "cpu") == (fields, None)


def test_a_probe_missing_from_torch_reads_as_unsupported(monkeypatch):
    monkeypatch.setattr(precision, "_CPU_BF16_PROBES", ("_no_such_probe_in_torch",))
    assert bf16_is_fast("cpu") is False


def test_other_devices_are_not_fast():
    assert bf16_is_fast("meta") is False


@pytest.mark.cuda
def test_a_cuda_gpu_is_fast_in_bf16_from_ampere_on():
    assert bf16_is_fast("cuda") is (torch.cuda.get_device_capability() >= (8, 0))
    a = torch.randn(64, 64, device="cuda", dtype=torch.bfloat16)
    assert (a @ a).dtype == torch.bfloat16
