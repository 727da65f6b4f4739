"""The ``native`` backend: attnlab's compiled CPU kernel (``csrc/attention.cpp``), forward and
backward, with the meaning of :mod:`attnlab.attention.tiled`.

The C++ source ships with attnlab and is compiled on first use, once per machine, with the
machine's own instructions (``g++ -O3 -march=native -fopenmp``), into
``$ATTNLAB_CACHE_DIR`` (default ``~/.cache/attnlab``)``/native/<hash>/``; the hash covers the
source, the flags, the compiler and the CPU, so a change of any of them builds afresh, and a build
is written under a temporary name and renamed, so a killed build leaves nothing half-written.
Building says so on stderr. Where it cannot be built (no compiler, ``ATTNLAB_NATIVE=0``, a failed
build) :func:`available` is False, and ``backend="auto"`` keeps to the other backends after one
note on stderr; only an explicit ``backend="native"`` is an error.

The kernel computes in float32 (float64 inputs in float64, for gradcheck); bf16 and fp16 inputs
are widened to float32 on the way in, as the tiled backend does with its score tiles, and the
output is rounded back.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from attnlab.attention.tiled import blocked_function

SOURCE = Path(__file__).parent / "csrc" / "attention.cpp"
FLAGS = ("-O3", "-march=native", "-ffp-contract=fast", "-fopenmp", "-fPIC", "-shared", "-std=gnu++17")
#: What ``backend="auto"`` sends here (float64 runs too, when asked for by name: for gradcheck).
AUTO_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: Query rows and keys per tile (see docs/benchmarks.md, "The native kernel"): a tile's scores,
#: its queries and a strip of its keys stay in the 2 cores' L1/L2 caches.
BLOCK_Q, BLOCK_K = 64, 128

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_path: Path | None = None
_reason: str | None = None
_loaded = False
_noted = False


class NativeUnavailable(RuntimeError):
    """The native kernel cannot run on this machine (the message says why)."""


def _cache_root() -> Path:
    base = os.environ.get("ATTNLAB_CACHE_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "attnlab"


def _cpu_identity() -> str:
    """What ``-march=native`` depends on: the CPU's model and instruction-set flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = [line for line in lines if line.split(":")[0].strip() in ("model name", "flags", "Features")]
    return "\n".join(dict.fromkeys(wanted))  # one line of each kind (every core repeats them)


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")


def _build(compiler: str) -> Path:
    """The compiled library's path, compiling it first if this machine has none cached."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                             timeout=60).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), " ".join(FLAGS), version, _cpu_identity(),
                                    platform.machine()]).encode()).hexdigest()[:16]
    target = _cache_root() / "native" / key / "libattnlab_attention.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"attnlab: building the native CPU attention kernel (once per machine, ~10 s) into "
          f"{target.parent} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    fd, partial = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", partial], capture_output=True,
                              text=True, timeout=600)
        if done.returncode != 0:
            first = next((line for line in done.stderr.splitlines() if "error" in line),
                         done.stderr.strip()[:200])
            raise NativeUnavailable(f"the compiler failed: {first}")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    print(f"attnlab: native CPU attention kernel built in {time.perf_counter() - start:.1f} s",
          file=sys.stderr, flush=True)
    return target


def _load() -> ctypes.CDLL | None:
    global _library, _path, _reason, _loaded
    with _lock:
        if _loaded:
            return _library
        _loaded = True
        try:
            if os.environ.get("ATTNLAB_NATIVE", "1").strip() == "0":
                raise NativeUnavailable("ATTNLAB_NATIVE=0")
            compiler = _compiler()
            if compiler is None:
                raise NativeUnavailable("no C++ compiler (g++) found; scripts/setup.sh installs one")
            path = _build(compiler)
            library = ctypes.CDLL(str(path))
            library.attnlab_vector_bytes.restype = ctypes.c_int64
            library.attnlab_take_tile_count.restype = ctypes.c_int64
            for name in ("forward", "backward"):
                for suffix in ("f32", "f64"):
                    function = getattr(library, f"attnlab_{name}_{suffix}")
                    function.argtypes = [ctypes.POINTER(_Args)]
                    function.restype = ctypes.c_int
            _library, _path = library, path
        except NativeUnavailable as err:
            _reason = str(err)
        except (OSError, subprocess.SubprocessError) as err:
            _reason = f"{type(err).__name__}: {err}"
        return _library


def available() -> bool:
    """Whether the native kernel is built (building it now if needed) and loaded."""
    return _load() is not None


def unavailable_reason() -> str | None:
    """Why :func:`available` is False, or None."""
    _load()
    return _reason


def note_unavailable() -> None:
    """Say once per process, on stderr, that ``auto`` runs without the native kernel."""
    global _noted
    if not _noted:
        _noted = True
        print(f"attnlab: note: the native CPU attention kernel is unavailable ({_reason}); "
              "attention runs on the tiled and PyTorch kernels", file=sys.stderr, flush=True)


def take_tile_count() -> int:
    """Score tiles the kernel computed (forward and backward) since the last call: the work that
    windows, causality and masks did not make it skip."""
    return int(require().attnlab_take_tile_count())


def vector_width(dtype: torch.dtype = torch.float32) -> int:
    """Elements per vector register in the kernel's build (its tiles' key blocks are multiples)."""
    return int(require().attnlab_vector_bytes()) // torch.empty((), dtype=dtype).element_size()


def require() -> ctypes.CDLL:
    """The loaded library, or :class:`NativeUnavailable` saying why there is none."""
    library = _load()
    if library is None:
        raise NativeUnavailable(f"backend='native' is unavailable on this machine: {_reason}")
    return library


class _Args(ctypes.Structure):
    """``struct Args`` of csrc/attention.cpp, field for field."""

    _fields_ = (
        [(name, ctypes.c_void_p) for name in ("q", "kt", "k", "v", "vt", "out", "lse", "dout",
                                               "delta", "dq", "dk", "dv", "mask", "neg_slopes")]
        + [("mask_kind", ctypes.c_int64), ("mask_strides", ctypes.c_int64 * 5)]
        + [(name, ctypes.c_int64) for name in ("nhk", "kv_heads", "groups", "lq", "lk", "dp", "dvp",
                                               "lkp", "q_offset", "left", "right", "global_tokens",
                                               "causal", "block_q", "block_k", "threads", "chunks")]
        + [("softcap", ctypes.c_double)]
    )


def _round_up(x: int, multiple: int) -> int:
    return (x + multiple - 1) // multiple * multiple


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _padded(t: torch.Tensor, rows: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
    """``t`` (B, r, c) as a contiguous (B, rows, cols) ``dtype`` tensor, zeros beyond ``(r, c)``."""
    if t.shape[1:] == (rows, cols):
        return t.to(dtype).contiguous()
    out = t.new_zeros((t.shape[0], rows, cols), dtype=dtype)
    out[:, :t.shape[1], :t.shape[2]] = t
    return out


class _Layout:
    """The kernel's padded tensors for one call (see the layouts in csrc/attention.cpp)."""

    def __init__(self, q, k, v, mask, neg_slopes, n: int, p, width_bytes: int) -> None:
        self.dtype = _compute_dtype(q.dtype)
        width = width_bytes // torch.empty((), dtype=self.dtype).element_size()
        self.nhk, self.groups, self.lq, self.d = q.shape
        self.lk, self.dv = k.shape[1], v.shape[-1]
        self.dp, self.dvp = _round_up(self.d, width), _round_up(self.dv, width)
        self.block_k = _round_up(BLOCK_K, width)  # what the kernel rounds it to
        self.lkp = _round_up(self.lk, self.block_k)
        self.n, self.p = n, p
        q_rows = q.reshape(self.nhk, self.groups * self.lq, self.d).to(self.dtype) * p.scale
        self.q = _padded(q_rows, self.groups * self.lq, self.dp, self.dtype)
        self.kt = self.panels(k.transpose(1, 2), self.dp)
        self.keep = [self.q, self.kt]  # tensors whose memory the kernel reads
        self.mask_kind, self.mask_strides, self.mask = 0, (0,) * 5, None
        if mask is not None:
            full = (n, self.nhk // n, self.groups, self.lq, self.lk)
            if mask.dtype == torch.bool:
                self.mask_kind, self.mask = 1, mask
            else:
                self.mask_kind, self.mask = 2, mask.to(self.dtype)
            self.mask = self.mask.expand(full)
            self.mask_strides = self.mask.stride()
            self.keep.append(self.mask)
        self.neg_slopes = None
        if neg_slopes is not None:
            self.neg_slopes = neg_slopes.to(self.dtype).reshape(-1).contiguous()
            self.keep.append(self.neg_slopes)

    def panels(self, t: torch.Tensor, rows: int) -> torch.Tensor:
        """``t`` (B, r, Lk) padded to (B, rows, Lkp), cut into key blocks: (B, Lkp/bk, rows, bk)."""
        padded = _padded(t, rows, self.lkp, self.dtype)
        blocks = self.lkp // self.block_k
        return padded.view(t.shape[0], rows, blocks, self.block_k).transpose(1, 2).contiguous()

    def args(self, chunks: int = 1, **tensors: torch.Tensor) -> _Args:
        p = self.p
        args = _Args(
            mask=None if self.mask is None else self.mask.data_ptr(),
            neg_slopes=None if self.neg_slopes is None else self.neg_slopes.data_ptr(),
            mask_kind=self.mask_kind, nhk=self.nhk, kv_heads=self.nhk // self.n,
            groups=self.groups, lq=self.lq, lk=self.lk, dp=self.dp, dvp=self.dvp, lkp=self.lkp,
            q_offset=p.q_offset, left=-1 if p.left is None else p.left,
            right=-1 if p.right is None else p.right, global_tokens=p.global_tokens,
            causal=int(p.causal), block_q=BLOCK_Q, block_k=self.block_k,
            threads=torch.get_num_threads(), chunks=chunks, softcap=p.softcap or 0.0,
        )
        args.mask_strides[:] = list(self.mask_strides)
        args.q, args.kt = self.q.data_ptr(), self.kt.data_ptr()
        for name, tensor in tensors.items():
            setattr(args, name, tensor.data_ptr())
        return args

    @property
    def suffix(self) -> str:
        return "f64" if self.dtype == torch.float64 else "f32"


def _forward(q, k, v, mask, neg_slopes, n: int, p):
    """The kernel's forward: ``(out, lse)`` in the compute dtype (see :func:`tiled.blocked_function`)."""
    library = require()
    layout = _Layout(q, k, v, mask, neg_slopes, n, p, library.attnlab_vector_bytes())
    values = _padded(v, layout.lkp, layout.dvp, layout.dtype)
    out = q.new_empty((layout.nhk, layout.groups * layout.lq, layout.dvp), dtype=layout.dtype)
    lse = q.new_empty((layout.nhk, layout.groups * layout.lq), dtype=layout.dtype)
    args = layout.args(v=values, out=out, lse=lse)
    getattr(library, f"attnlab_forward_{layout.suffix}")(ctypes.byref(args))
    return out[..., :layout.dv].reshape(layout.nhk, layout.groups, layout.lq, layout.dv), lse


def _backward(grad_out, q, k, v, out, lse, mask, neg_slopes, n: int, p):
    """The kernel's backward: ``(dq, dk, dv)`` in the inputs' dtypes."""
    library = require()
    layout = _Layout(q, k, v, mask, neg_slopes, n, p, library.attnlab_vector_bytes())
    dtype = layout.dtype
    grad = grad_out.to(dtype)
    # delta_i = sum_j p_ij dP_ij = dO_i . O_i
    delta = (grad * out).sum(-1).reshape(layout.nhk, -1).contiguous()
    d_out = _padded(grad.reshape(layout.nhk, -1, layout.dv), layout.groups * layout.lq,
                    layout.dvp, dtype)
    keys = _padded(k, layout.lkp, layout.dp, dtype)
    values_t = layout.panels(v.transpose(1, 2), layout.dvp)
    threads = torch.get_num_threads()
    # With fewer key/value heads than threads, the keys are cut into chunks so that every
    # thread has work; each chunk adds into its own copy of dQ (summed below), O(n) memory.
    key_blocks = layout.lkp // layout.block_k
    chunks = 1 if layout.nhk >= threads else min(key_blocks, -(-threads // layout.nhk))
    dq = q.new_zeros((chunks, layout.nhk, layout.groups * layout.lq, layout.dp), dtype=dtype)
    dk = q.new_zeros((layout.nhk, layout.lkp, layout.dp), dtype=dtype)
    dv = q.new_zeros((layout.nhk, layout.lkp, layout.dvp), dtype=dtype)
    args = layout.args(k=keys, vt=values_t, lse=lse, delta=delta, dout=d_out, dq=dq, dk=dk,
                       dv=dv, chunks=chunks)
    getattr(library, f"attnlab_backward_{layout.suffix}")(ctypes.byref(args))
    dq = (dq.sum(0) if chunks > 1 else dq[0])[..., :layout.d] * p.scale
    return (dq.reshape(q.shape).to(q.dtype), dk[:, :layout.lk, :layout.d].to(k.dtype),
            dv[:, :layout.lk, :layout.dv].to(v.dtype))


#: Autograd wrapper in :func:`attnlab.attention.tiled.blocked_function`'s layout; ``p`` is a
#: :class:`~attnlab.attention.tiled.TiledParams` without dropout.
NativeAttentionFunction = blocked_function(_forward, _backward, "NativeAttentionFunction")


def main() -> int:
    """Build the kernel now and say where it is, or why not (scripts/setup.sh runs this)."""
    if not available():
        print(f"attnlab: the native CPU attention kernel is unavailable: {_reason}; attention will "
              "run on the tiled and PyTorch kernels", file=sys.stderr)
        return 1
    print(f"attnlab: native CPU attention kernel ready ({vector_width()} floats per vector): {_path}")
    return 0
