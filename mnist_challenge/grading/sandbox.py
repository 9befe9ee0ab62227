"""Run a student's code contained: its own process, a scratch folder, no network, no home, no environment, limits.

A grader runs a hundred strangers' notebooks, so the code that defines a model (a class body, a decorator, a
default argument all run when it is built) runs in ``python -m mnist_challenge.grading.worker`` under
``run_contained``:

* **with bubblewrap** (``bwrap``, Debian's ``bubblewrap``; CI installs it): new PID, network, IPC and UTS
  namespaces (no network at all, not even loopback to the grader's services); a file system made of the
  Python installation, the kit and the system libraries, all read-only, the notebook's own ``.py`` files and
  packages read-only, an empty size-limited ``/scratch`` as the working directory and home and an empty
  ``/tmp``; nothing else of the grader's files (no home, no notebooks, no ``/etc`` beyond the loader's cache); an
  empty environment; when the sandbox ends, every process the code started ends with it (the PID namespace's
  init dies, the kernel kills the rest). Run as root, the code drops to the ``nobody`` user before it runs.
* **without it**: the same limits, a new session whose process group is killed at the end, an empty environment
  and a scratch working directory, but the code can read what the grader's user can and reach the network.
  ``containment()`` says which applies, and the grade names it.

Both set ``resource`` limits before the code runs: address space (torch alone maps about 3.3 GB), CPU seconds,
processes (threads count), file size; the wall-clock ``timeout`` stops the whole sandbox. Outputs go to files,
not pipes, so a child process that lingers cannot hold the grader waiting.
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import signal
import site
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

NOBODY = 65534  # the unprivileged user the code runs as when the grader is root
JOB = "/job"  # where the sandbox sees the job's folder (the program to run), read-only


@dataclass(frozen=True)
class Limits:
    """What the contained code may use."""

    memory_bytes: int = 8 << 30  # address space: torch's import maps ~3.3 GB, the rest is for the model
    processes: int = 64  # processes and threads of the sandbox's user (RLIMIT_NPROC)
    file_bytes: int = 256 << 20  # the largest file it may write, and the size of its scratch folder
    threads: int = 1  # OMP/MKL threads: a model is built and run on one sample


@dataclass
class Outcome:
    returncode: int | None  # None: stopped at the time limit
    stdout: str  # what the worker's trusted half printed: the result, one JSON object
    stderr: str  # what the code printed, and the worker's own messages
    containment: str


@functools.lru_cache(maxsize=1)
def containment() -> str:
    """``"bubblewrap"`` when ``bwrap`` runs here (it needs namespaces: a container may forbid them), else
    ``"limits only"``; ``MNIST_CHALLENGE_SANDBOX=none`` forces the latter (to test it)."""
    if os.environ.get("MNIST_CHALLENGE_SANDBOX") == "none" or shutil.which("bwrap") is None:
        return "limits only"
    probe = [*_namespaces(), "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--", "true"]
    try:
        done = subprocess.run(["bwrap", *probe], capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return "limits only"
    return "bubblewrap" if done.returncode == 0 else "limits only"


def _namespaces() -> list[str]:
    # As root bwrap needs no user namespace (and then the worker can drop to nobody, whose process count
    # RLIMIT_NPROC does limit; root's it never does); as anyone else it must make one.
    user = [] if os.geteuid() == 0 else ["--unshare-user"]
    return [*user, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]


def _python_dirs() -> list[Path]:
    """The folders the worker's Python needs: the interpreter's installation, the environment's, the site
    packages and the kit itself (an editable install lives outside them)."""
    import mnist_challenge

    dirs = [Path(sys.prefix), Path(sys.base_prefix), Path(os.path.realpath(sys.executable)).parent.parent]
    sites = [Path(p) for p in site.getsitepackages()]
    user_site = site.getusersitepackages()
    if site.ENABLE_USER_SITE and os.path.isdir(user_site):
        sites.append(Path(user_site))
    dirs += sites + [folder for s in sites for folder in _path_file_dirs(s)]
    dirs.append(Path(mnist_challenge.__file__).resolve().parent)
    return [d for d in dict.fromkeys(d.resolve() for d in dirs) if d.is_dir()]


def _path_file_dirs(site_dir: Path) -> list[Path]:
    """Folders the ``.pth`` files of a site directory add to ``sys.path`` (an environment layered on another's
    packages, an older editable install): the sandbox's Python needs them too."""
    found = []
    for pth in sorted(site_dir.glob("*.pth")):
        try:
            lines = pth.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.strip()
            if line and not line.startswith(("#", "import ", "import\t")) and os.path.isdir(site_dir / line):
                found.append(site_dir / line)
    return found


def notebook_sources(folder: Path) -> list[Path]:
    """What of a notebook's folder its code may import: its ``.py`` files and its packages (folders with an
    ``__init__.py``); the rest of the folder (data, other students' notebooks) stays out of reach."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    return [p for p in entries if (p.suffix == ".py" and p.is_file()) or (p / "__init__.py").is_file()]


def _system_binds() -> list[str]:
    args = []
    for top in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for name in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/alternatives"):
        if os.path.exists(name):
            args += ["--ro-bind", name, name]
    return args


def _parents(path: Path, made: set[Path]) -> list[str]:
    """``--dir`` for each folder above ``path`` not made yet, readable by all (bwrap makes them 0700)."""
    args = []
    for parent in reversed(path.parents):
        if parent != Path("/") and parent not in made and not str(parent).startswith(("/usr", "/lib", "/bin")):
            made.add(parent)
            args += ["--perms", "0755", "--dir", str(parent)]
    return args


def _bwrap_command(argv: list[str], readable: list[Path], job: Path, limits: Limits) -> list[str]:
    command = ["bwrap", *_namespaces(), "--die-with-parent", "--new-session", *_system_binds()]
    command += ["--perms", "1777", "--tmpfs", "/tmp"]  # first: a notebook under /tmp is bound into it below
    made: set[Path] = set()
    for path in [*_python_dirs(), *readable]:
        command += [*_parents(path, made), "--ro-bind", str(path), str(path)]
    command += ["--ro-bind", str(job), JOB, "--proc", "/proc", "--dev", "/dev"]
    command += ["--perms", "1777", "--size", str(limits.file_bytes), "--tmpfs", "/scratch", "--chdir", "/scratch"]
    environment = _environment("/scratch", limits, drop=os.geteuid() == 0)
    command += ["--clearenv", *[a for k, v in environment.items() for a in ("--setenv", k, v)]]
    return [*command, "--", *[a.replace("{job}", JOB) for a in argv]]


def _environment(home: str, limits: Limits, drop: bool) -> dict[str, str]:
    """All the environment the code gets: none of the grader's variables (tokens, paths, proxies)."""
    threads = str(limits.threads)
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "TMPDIR": "/tmp" if home == "/scratch" else home,
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "MPLBACKEND": "Agg",
        "MPLCONFIGDIR": f"{home}/.matplotlib",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONIOENCODING": "utf-8:backslashreplace",
        "MNIST_CHALLENGE_DROP_TO": str(NOBODY) if drop else "",
        "MNIST_CHALLENGE_MAX_PROCESSES": str(limits.processes),
    }


def _set_limits(limits: Limits, cpu_seconds: int) -> None:
    """In the child, before ``exec``: limits the sandbox inherits (the process count is set by the worker once
    it runs as its own user, since root's count is never limited)."""
    for which, value in (
        (resource.RLIMIT_AS, limits.memory_bytes),
        (resource.RLIMIT_CPU, cpu_seconds),
        (resource.RLIMIT_FSIZE, limits.file_bytes),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(which, (value, value))


def run_contained(
    argv: list[str], readable: list[Path], job: Path, timeout: float, limits: Limits = Limits()
) -> Outcome:
    """Run ``argv`` (a ``python -m ...`` command; ``{job}`` in it stands for the ``job`` folder, which the code
    reads) contained; ``readable``: other paths the code may read. Stopped at ``timeout`` seconds of wall-clock
    time, and everything it started with it."""
    kind = containment()
    with tempfile.TemporaryDirectory(prefix="kit-sandbox-") as private:
        out_path, err_path = Path(private) / "stdout", Path(private) / "stderr"
        if kind == "bubblewrap":
            command, cwd, env = (
                _bwrap_command(argv, readable, job, limits),
                private,
                {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            )
        else:
            scratch = Path(private) / "scratch"
            scratch.mkdir()
            command = [a.replace("{job}", str(job)) for a in argv]
            cwd, env = str(scratch), _environment(str(scratch), limits, drop=False)
        cpu = int(timeout) + 5
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            process = subprocess.Popen(
                command,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                preexec_fn=lambda: _set_limits(limits, cpu),
            )
            try:
                code = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                code = None
            finally:
                _end(process)
        return Outcome(code, _read(out_path), _read(err_path), kind)


def _end(process: subprocess.Popen) -> None:
    """Kill the process group (bubblewrap's PID namespace takes everything else with it) and reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - a process that ignores SIGKILL (uninterruptible I/O)
        pass


def _read(path: Path, limit: int = 4 << 20) -> str:
    with open(path, "rb") as f:
        return f.read(limit).decode("utf-8", "replace")
