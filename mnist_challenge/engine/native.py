"""Build and load ``native.c``: CPU kernels for the memory-bound layers (see the comment at its top).

The C file is compiled on first use with the system C compiler (``cc``, or ``$CC``) and cached under
``$MNIST_CHALLENGE_CACHE``, else ``$XDG_CACHE_HOME/mnist_challenge``, else ``~/.cache/mnist_challenge`` (a
per-user folder in the temporary directory when there is no usable home), keyed by the source, the compiler,
the flags and the CPU (it is built with -march=native). Beside each kernel a stamp records its SHA-256: a cached
file that does not match (another library under its name, a truncated or corrupted copy) is never loaded, and is
rebuilt with one warning line. The compiler gets ``COMPILE_TIMEOUT`` seconds, and says so on stderr when it takes
longer than a few; a compiler that fails, hangs or builds a library that will not load leaves a ``.failed`` note
beside the kernel, so that later processes do not wait for it again. Without kernels, ``load_kernels()`` returns
None and ``unavailable_reason()`` says why; every layer that uses them then runs plain ATen ops instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("native.c")
CFLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared"]
COMPILE_TIMEOUT = 60.0  # seconds: the build takes about one; a compiler this slow is treated as broken
COMPILE_NOTICE = 5.0  # seconds after which the build says on stderr what it is doing

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


def cache_dir() -> Path:
    """Where compiled kernels live; never the file system's root when ``HOME`` is empty or unset."""
    if os.environ.get("MNIST_CHALLENGE_CACHE"):
        return Path(os.environ["MNIST_CHALLENGE_CACHE"])
    for base in (os.environ.get("XDG_CACHE_HOME", ""), os.path.join(os.environ.get("HOME", ""), ".cache")):
        if os.path.isabs(base) and base not in ("/", "/.cache"):
            return Path(base) / "mnist_challenge"
    return Path(tempfile.gettempdir()) / f"mnist_challenge-{os.getuid() if hasattr(os, 'getuid') else 'user'}"


def kernel_path(compiler: str) -> Path:
    """Where the compiled kernels are cached: one file per source, compiler, flags and CPU."""
    key = hashlib.sha256("\n".join([SOURCE.read_text(), compiler, *CFLAGS, _cpu_signature()]).encode()).hexdigest()[:16]
    return cache_dir() / f"native-{key}.so"


def _stamp(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _failed(target: Path) -> Path:
    return target.with_name(target.name + ".failed")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _verified(target: Path) -> bool:
    """The cached kernel is the one this kit built: its bytes match the stamp written beside it."""
    try:
        return target.is_file() and _stamp(target).read_text().strip() == _digest(target)
    except OSError:
        return False


def _build(compiler: str, target: Path) -> None:
    """Compile into a temporary folder beside the cache, then move the library and its stamp in (parallel search
    workers may build at the same time); a slow compiler is announced, a hung one stopped."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        argv = [compiler, *CFLAGS, str(SOURCE), "-o", str(out), "-lm"]
        popen = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        with popen as proc:
            try:
                _, err = proc.communicate(timeout=COMPILE_NOTICE)
            except subprocess.TimeoutExpired:
                print(
                    f"compiling the engine's C kernels ({SOURCE.name}) with {compiler}, once per machine; waiting "
                    f"up to {COMPILE_TIMEOUT:.0f} s, then training goes on without them",
                    file=sys.stderr,
                    flush=True,
                )
                try:
                    _, err = proc.communicate(timeout=COMPILE_TIMEOUT - COMPILE_NOTICE)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)  # the compiler and whatever it started (cc1, a wrapper's sleep)
                    proc.communicate()
                    raise subprocess.SubprocessError(f"{compiler} took longer than {COMPILE_TIMEOUT:.0f} s") from None
        if proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, argv, stderr=err)
        stamp = Path(tmp) / _stamp(target).name
        stamp.write_text(_digest(out) + "\n")
        out.replace(target)  # atomic, each
        stamp.replace(_stamp(target))


def load_kernels() -> ctypes.CDLL | None:
    """The compiled kernel, building it on first use; None (see ``unavailable_reason``) if that fails."""
    global _kernels, _unavailable
    if _kernels is not None or _unavailable is not None:
        return _kernels
    compiler = os.environ.get("CC", "cc")
    target = kernel_path(compiler)
    try:
        if _failed(target).is_file():  # an earlier process found this compiler broken: do not wait for it again
            reason = _failed(target).read_text(errors="replace").strip()
            _unavailable = f"{reason} (noted in {_failed(target)}; delete it to try again)"
            return None
        if not _verified(target):
            if target.exists():
                print(
                    f"warning: the cached kernel {target} is not the one this kit built (no matching checksum); "
                    f"rebuilding it",
                    file=sys.stderr,
                    flush=True,
                )
            _build(compiler, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        last_line = detail.strip().splitlines()[-1] if detail.strip() else exc
        _unavailable = f"could not build {SOURCE.name} with {compiler}: {last_line}"
        try:
            _failed(target).write_text(_unavailable + "\n")
        except OSError:
            pass
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
