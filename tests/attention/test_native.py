"""The native CPU kernel beyond the shared suites (test_functional_parity.py, which compares every
backend with PyTorch's SDPA, test_functional_extras.py with the float64 formula and hypothesis
configurations, and test_tiled_gradcheck.py): bf16 within PyTorch's own bf16 error, threads, the
work it skips, its O(n) memory, its build and cache, and ``auto`` without it.

The kernel must build here (scripts/setup.sh installs g++): a missing kernel fails these tests
rather than skipping them.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.testing import assert_close

from attnlab.attention import attention, choose_backend, native
from attnlab.attention.native import NativeUnavailable


def _randn(gen, *shape, dtype=torch.float32):
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)


def test_the_kernel_builds_and_loads_here():
    assert native.available(), native.unavailable_reason()
    assert native.vector_width(torch.float32) in (4, 8, 16)


def _run(backend, leaves, grad_out, **kwargs):
    leaves = [t.detach().clone().requires_grad_() for t in leaves]
    out = attention(*leaves, backend=backend, **kwargs)
    out.backward(grad_out.to(out.dtype))
    return [out.detach()] + [leaf.grad for leaf in leaves]


BF16_CASES = [
    pytest.param(dict(), id="full"),
    pytest.param(dict(is_causal=True), id="causal"),
    pytest.param(dict(attn_mask=torch.arange(300) % 7 != 3), id="bool-mask"),
]


@pytest.mark.parametrize("kwargs", BF16_CASES)
def test_bf16_errors_are_within_pytorchs_own_bf16_errors(kwargs):
    """Against float64 on the same rounded inputs, the native kernel's bf16 output and gradients
    are no further off than PyTorch's fused kernel's in bf16 (it computes in float32 inside)."""
    gen = torch.Generator().manual_seed(0)
    inputs = [_randn(gen, 2, 4, 300, 64, dtype=torch.bfloat16) for _ in range(3)]
    grad_out = _randn(gen, 2, 4, 300, 64, dtype=torch.bfloat16)
    truth = _run("reference", [t.double() for t in inputs], grad_out.double(), **kwargs)
    ours = _run("native", inputs, grad_out, **kwargs)
    theirs = _run("torch", inputs, grad_out, **kwargs)
    for name, mine, pytorchs, exact in zip(("output", "dq", "dk", "dv"), ours, theirs, truth, strict=True):
        assert mine.dtype == torch.bfloat16
        my_error = (mine.double() - exact).abs().max().item()
        their_error = (pytorchs.double() - exact).abs().max().item()
        assert my_error <= 1.25 * their_error + 1e-3, (name, my_error, their_error)


def test_one_key_value_head_is_split_over_threads_and_stays_exact(monkeypatch):
    """With fewer key/value heads than threads the backward cuts the keys into chunks, each
    with its own dQ: the sum must still be the exact gradient."""
    monkeypatch.setattr(native, "BLOCK_K", 32)
    gen = torch.Generator().manual_seed(1)
    inputs = [_randn(gen, *shape, dtype=torch.float64) for shape in ((1, 3, 200, 16), (1, 1, 200, 16),
                                                                     (1, 1, 200, 8))]
    grad_out = _randn(gen, 1, 3, 200, 8, dtype=torch.float64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        ours = _run("native", inputs, grad_out, is_causal=True, enable_gqa=True)
    finally:
        torch.set_num_threads(threads)
    truth = _run("reference", inputs, grad_out, is_causal=True, enable_gqa=True)
    for mine, exact in zip(ours, truth, strict=True):
        assert_close(mine, exact, atol=1e-11, rtol=1e-9)


def test_the_forward_does_not_depend_on_the_thread_count():
    gen = torch.Generator().manual_seed(2)
    q, k, v = (_randn(gen, 2, 4, 333, 32) for _ in range(3))
    threads = torch.get_num_threads()
    try:
        outputs = []
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            outputs.append(attention(q, k, v, is_causal=True, backend="native"))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[0], outputs[2])


def _tiles(n: int, lq: int | None = None, **kwargs) -> int:
    gen = torch.Generator().manual_seed(0)
    leaves = [_randn(gen, 1, 1, lq or n, 16).requires_grad_(), _randn(gen, 1, 1, n, 16).requires_grad_(),
              _randn(gen, 1, 1, n, 16).requires_grad_()]
    native.take_tile_count()
    out = attention(*leaves, backend="native", **kwargs)
    out.backward(torch.ones_like(out))
    assert all(leaf.grad.isfinite().all() for leaf in leaves)
    return native.take_tile_count()


WORK_CASES = [
    # (kwargs, largest fraction of full attention's tiles; 64 x 64 tiles at n = 1024)
    pytest.param(dict(window=(64, 0)), 0.13, id="window-of-64"),  # 2 of 16 key tiles per row
    pytest.param(dict(window=(64, 64)), 0.19, id="window-of-64-both-sides"),  # 3 of 16
    pytest.param(dict(is_causal=True), 0.54, id="causal"),  # 136 of 256
    # the first row of tiles (the 16 global queries) sees all 16 key tiles, every other row its
    # 2 window tiles and one tile of global keys: (16 + 15 * 3) / 256 = 0.238
    pytest.param(dict(window=(64, 0), global_tokens=16), 0.24, id="window-of-64-16-global-tokens"),
    pytest.param(dict(attn_mask=torch.arange(1024) < 100), 0.13, id="mask-emptying-key-tiles"),  # 2 of 16
]


@pytest.mark.parametrize(("kwargs", "fraction"), WORK_CASES)
def test_the_kernel_skips_the_tiles_windows_causality_and_masks_make_empty(kwargs, fraction, set_blocks):
    n = 1024
    set_blocks(64, 64)
    full = _tiles(n)
    assert full == 2 * 16 * 16  # forward and backward
    assert 0 < _tiles(n, **kwargs) <= fraction * full


def test_cached_decoding_visits_only_the_windows_tiles(set_blocks):
    """Eight new queries after 4,088 cached keys with a window of 100: the query offset lets the
    kernel visit the 2-3 key tiles of the window instead of all 64."""
    set_blocks(64, 64)
    visited = _tiles(4096, lq=8, is_causal=True, window=(100, 0), query_offset=4088)
    assert 0 < visited <= 2 * 3


_MEMORY_SCRIPT = textwrap.dedent("""
    import resource, sys, torch
    from attnlab.attention import attention
    n = 8192
    gen = torch.Generator().manual_seed(0)
    leaves = [torch.randn(1, 1, n, 64, generator=gen, requires_grad=True) for _ in range(3)]
    attention(*(t[:, :, :64] for t in leaves), backend=sys.argv[1], is_causal=True).sum().backward()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    attention(*leaves, backend=sys.argv[1], is_causal=True).sum().backward()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)
""")


def _peak_growth(backend: str) -> int:
    done = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, backend], capture_output=True,
                          text=True, timeout=300, check=True)
    return int(done.stdout.split()[-1])


def test_forward_and_backward_at_n_8192_hold_no_n_by_n_tensor():
    n_by_n = 8192 * 8192 * 4  # one float32 score matrix: 256 MiB
    assert _peak_growth("native") < n_by_n / 4  # its O(n) layouts: ~30 MiB
    assert _peak_growth("reference") >= n_by_n  # the control sees one


def test_without_the_kernel_auto_keeps_the_other_backends_and_says_so_once(monkeypatch, capsys):
    monkeypatch.setattr(native, "_loaded", True)
    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setattr(native, "_reason", "a test took it away")
    monkeypatch.setattr(native, "_noted", False)
    gen = torch.Generator().manual_seed(3)
    q, k, v = (_randn(gen, 1, 2, 200, 16) for _ in range(3))
    assert choose_backend(q, k, v, is_causal=True) == "torch"
    assert choose_backend(q, k, v, window=(8, 0)) == "tiled"
    for kwargs in (dict(is_causal=True), dict(window=(8, 0)), dict(is_causal=True, query_offset=5)):
        assert_close(attention(q, k, v, **kwargs), attention(q, k, v, backend="reference", **kwargs))
    notes = capsys.readouterr().err.splitlines()
    assert notes == ["attnlab: note: the native CPU attention kernel is unavailable (a test took it "
                     "away); attention runs on the tiled and PyTorch kernels"]
    refusal = "backend='native' is unavailable on this machine: a test took it away"
    with pytest.raises(NativeUnavailable, match=refusal):
        attention(q, k, v, backend="native")


def _python(code: str, env: dict, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **env})


_USE = ("import torch; from attnlab.attention import attention; "
        "q = torch.randn(1, 2, 300, 16); out = attention(q, q, q, is_causal=True); "
        "ref = attention(q, q, q, is_causal=True, backend='reference'); "
        "print(float((out - ref).abs().max()))")


def test_the_first_use_builds_into_the_cache_and_later_ones_load_it(tmp_path):
    first = _python(_USE, {"ATTNLAB_CACHE_DIR": str(tmp_path)})
    assert first.returncode == 0, first.stderr
    assert "attnlab: building the native CPU attention kernel" in first.stderr
    assert "native CPU attention kernel built in" in first.stderr
    assert float(first.stdout) < 1e-5
    built = list(tmp_path.glob("native/*/libattnlab_attention.so"))
    assert len(built) == 1
    assert [p.name for p in built[0].parent.iterdir()] == ["libattnlab_attention.so"]  # no leftovers
    second = _python(_USE, {"ATTNLAB_CACHE_DIR": str(tmp_path)})
    assert second.returncode == 0 and second.stderr == ""


def test_a_failing_compiler_means_one_note_and_the_other_backends(tmp_path):
    compiler = tmp_path / "broken-g++"
    compiler.write_text("#!/bin/sh\n[ \"$1\" = --version ] && echo broken 1.0 && exit 0\n"
                        "echo 'attention.cpp:1: error: this compiler is broken' >&2\nexit 1\n")
    compiler.chmod(0o755)
    cache = tmp_path / "cache"
    done = _python(_USE, {"ATTNLAB_CACHE_DIR": str(cache), "CXX": str(compiler)})
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) < 1e-5
    notes = [line for line in done.stderr.splitlines() if "note:" in line]
    assert notes == ["attnlab: note: the native CPU attention kernel is unavailable (the compiler "
                     "failed: attention.cpp:1: error: this compiler is broken); attention runs on "
                     "the tiled and PyTorch kernels"]
    assert not [p for p in cache.rglob("*") if p.is_file()]  # the failed build left nothing


def test_attnlab_native_0_switches_the_kernel_off(tmp_path):
    done = _python(_USE, {"ATTNLAB_CACHE_DIR": str(tmp_path), "ATTNLAB_NATIVE": "0"})
    assert done.returncode == 0, done.stderr
    assert "unavailable (ATTNLAB_NATIVE=0)" in done.stderr
    assert not (tmp_path / "native").exists()


def test_the_native_backend_refuses_dropout_by_name():
    q = torch.randn(1, 1, 80, 8)
    with pytest.raises(ValueError, match="backend='native' does not support dropout"):
        attention(q, q, q, dropout_p=0.1, backend="native")


def test_query_offset_is_validated():
    q = torch.randn(1, 1, 8, 8)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="query_offset must be an int >= 0"):
            attention(q, q, q, query_offset=bad)


@pytest.mark.cuda
def test_auto_sends_cuda_requests_to_pytorchs_fused_kernels():
    q = torch.randn(1, 2, 256, 64, device="cuda", dtype=torch.bfloat16)
    for kwargs in (dict(), dict(is_causal=True)):
        assert choose_backend(q, q, q, **kwargs) == "torch"
    with pytest.raises(ValueError, match="backend='native' runs on the CPU only"):
        attention(q, q, q, backend="native")


def test_the_setup_scripts_build_step_reports_the_kernel(capsys):
    assert native.main() == 0  # what scripts/setup.sh runs
    assert "attnlab: native CPU attention kernel ready" in capsys.readouterr().out
