"""Build and load ``native.c``: CPU kernels for the memory-bound layers (see the comment at its top).

The C file is compiled on first use with the system C compiler (``cc``, or ``$CC``) and cached under
``~/.cache/mnist_challenge`` (``$MNIST_CHALLENGE_CACHE``), keyed by the source, the compiler, the flags
and the CPU (it is built with -march=native). Without a compiler, ``load_kernels()`` returns None and
``unavailable_reason()`` says why; every layer that uses the kernels then runs plain ATen ops instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("native.c")
CFLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared"]

_kernels: ctypes.CDLL | None = None
_unavailable: str | None = None  # why the kernel could not be built, once we know


def _cpu_signature() -> str:
    """The CPU's feature flags: a kernel built with -march=native must not be reused on another CPU."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _build(compiler: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        subprocess.run(
            [compiler, *CFLAGS, str(SOURCE), "-o", str(out), "-lm"],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        out.replace(target)  # atomic: parallel search workers may build at the same time


def kernel_path(compiler: str) -> Path:
    """Where the compiled kernels are cached: one file per source, compiler, flags and CPU."""
    key = hashlib.sha256("\n".join([SOURCE.read_text(), compiler, *CFLAGS, _cpu_signature()]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("MNIST_CHALLENGE_CACHE", Path.home() / ".cache" / "mnist_challenge"))
    return cache / f"native-{key}.so"


def load_kernels() -> ctypes.CDLL | None:
    """The compiled kernel, building it on first use; None (see ``unavailable_reason``) if that fails."""
    global _kernels, _unavailable
    if _kernels is not None or _unavailable is not None:
        return _kernels
    compiler = os.environ.get("CC", "cc")
    target = kernel_path(compiler)
    try:
        if not target.is_file():
            _build(compiler, target)
        try:
            lib = ctypes.CDLL(str(target))
        except OSError:  # a cached file that will not load (truncated, foreign): build it afresh once
            _build(compiler, target)
            lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        last_line = detail.strip().splitlines()[-1] if detail.strip() else exc
        _unavailable = f"could not build {SOURCE.name} with {compiler}: {last_line}"
        return None
    ptr, i64, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
    lib.tail_forward.argtypes = [ptr] * 7 + [i64, i64, i64, f32, ctypes.c_int, ctypes.c_uint32, f32, ctypes.c_uint64]
    lib.tail_backward.argtypes = [ptr] * 9 + [i64, i64, i64, ctypes.c_int, ctypes.c_uint32, f32, ctypes.c_uint64]
    lib.tail_mask.argtypes = [ptr, i64, ctypes.c_uint32, f32, ctypes.c_uint64]
    lib.tail_forward_nhwc.argtypes = [ptr] * 7 + [i64, i64, f32, ctypes.c_int, ctypes.c_uint32, f32, ctypes.c_uint64]
    lib.tail_backward_nhwc.argtypes = [ptr] * 9 + [i64, i64, ctypes.c_int, ctypes.c_uint32, f32, ctypes.c_uint64]
    lib.maxpool2x2_forward.argtypes = [ptr, ptr, ptr, i64, i64, i64]
    lib.maxpool2x2_backward.argtypes = [ptr, ptr, ptr, i64, i64, i64]
    lib.maxpool2x2_forward_nhwc.argtypes = lib.maxpool2x2_backward_nhwc.argtypes = [ptr, ptr, ptr, i64, i64, i64, i64]
    failing = ("tail_forward", "tail_backward", "tail_forward_nhwc", "tail_backward_nhwc", "maxpool2x2_forward")
    for name in failing:
        getattr(lib, name).restype = ctypes.c_int  # -1: out of memory
    for fn in (lib.tail_mask, lib.maxpool2x2_backward, lib.maxpool2x2_forward_nhwc, lib.maxpool2x2_backward_nhwc):
        fn.restype = None
    _kernels = lib
    return lib


def plain_cpu_float32(x: torch.Tensor) -> bool:
    """A contiguous float32 CPU tensor: the only kind the C kernels (and the layouts they assume) take."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and x.is_contiguous()


def nhwc_cpu_float32(x: torch.Tensor) -> bool:
    """A 4-D float32 CPU tensor laid out channels-last and not also plain contiguous (then the NCHW kernel
    takes it): what the ``*_nhwc`` kernels take."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous()
    )


def kernel_layout(x: torch.Tensor) -> str | None:
    """'nchw' or 'nhwc': which of the C kernels can take ``x``; None if neither (GPU, bf16, strided views)."""
    if plain_cpu_float32(x):
        return "nchw"
    return "nhwc" if nhwc_cpu_float32(x) else None


def unavailable_reason() -> str | None:
    load_kernels()
    return _unavailable
