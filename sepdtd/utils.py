"""Small shared helpers: devices, atomic files, provenance, seeding."""
from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

__all__ = [
    "resolve_device", "atomic_write_bytes", "atomic_writer", "temporary_dir", "temporary_prefix",
    "remove_stale_temporaries", "atomic_write_json", "atomic_torch_save",
    "git_commit", "package_versions", "seed_everything", "device_name", "file_lock", "LockTimeout",
    "LOCK_STOPPED_AFTER_S", "die_with_parent",
]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None) means CUDA when available, else CPU; else ``"cpu"``, ``"cuda"`` or ``"cuda:<index>"``.

    Raises
    ------
    ValueError
        For a device that is not one of these (``"foo"``, ``"meta"``, ``"cuda:x"``).
    RuntimeError
        For a CUDA device that this machine does not have.
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:<index>")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {dev} was asked for but CUDA is not available here; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise RuntimeError(f"device {dev} was asked for but this machine has {torch.cuda.device_count()} CUDA "
                           "device(s); use cuda:0 or auto")
    return dev


def device_name(device: str | torch.device) -> str:
    """A human-readable name of ``device`` for provenance (GPU model or CPU architecture)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there: assume it lives
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except OSError:  # e.g. PermissionError: another user's process
        return True
    return True


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", platform.node()) or "host"


#: A temporary younger than this is left alone even when its writer looks dead (a reused or foreign pid).
STALE_AFTER_S = 600.0

# <name>.tmp-<host>-<pid>-<random>: the host is _host() (letters, digits, _), the random part mkstemp's.
_TEMPORARY = re.compile(r"\.tmp-(?P<host>[A-Za-z0-9_]+)-(?P<pid>[0-9]+)-[A-Za-z0-9_]*$")


def temporary_prefix(name: str) -> str:
    """The prefix of this process's temporaries for ``name``: ``<name>.tmp-<host>-<pid>-``.

    Every temporary file or folder of the package is named ``<name>.tmp-<host>-<pid>-<random>``
    (:func:`atomic_writer`, :func:`temporary_dir`), so that :func:`remove_stale_temporaries` can tell
    whose it is.
    """
    return f"{name}.tmp-{_host()}-{os.getpid()}-"


def remove_stale_temporaries(folder: str | os.PathLike, *, recursive: bool = False) -> list[Path]:
    """Remove the temporaries in ``folder`` that writers killed midway left.

    A temporary (a file or a folder) is named ``<name>.tmp-<host>-<pid>-<random>``
    (:func:`temporary_prefix`); it is removed when it was made on this host, process ``<pid>`` no longer
    runs, and it is older than :data:`STALE_AFTER_S`, whatever ``<name>`` is. Temporaries of a live
    writer, of another host and young ones are kept; the cleanup never fails the caller. Every writer
    (:func:`atomic_writer`, :func:`temporary_dir`) calls it on its folder before it starts.

    Parameters
    ----------
    folder : path
        The folder to sweep; a missing folder has nothing to remove.
    recursive : bool, optional
        Also sweep every folder below it.

    Returns
    -------
    list of Path
        The removed paths.
    """
    removed: list[Path] = []
    now, host = time.time(), _host()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.search(entry.name)
        if match is None:
            if recursive and entry.is_dir(follow_symlinks=False):
                removed += remove_stale_temporaries(entry.path, recursive=True)
            continue
        pid = int(match["pid"])
        if match["host"] != host or pid == os.getpid() or _pid_alive(pid):
            continue
        try:
            if now - entry.stat(follow_symlinks=False).st_mtime <= STALE_AFTER_S:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass
    return removed


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file handle whose content replaces ``path`` atomically when the ``with`` block ends.

    The content goes to a temporary file in the same folder (named by :func:`temporary_prefix`), which
    is fsynced and renamed onto ``path``; an error in the block removes it and leaves ``path`` as it
    was. Before it starts, the stale temporaries of the folder are removed
    (:func:`remove_stale_temporaries`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path.name), dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, fsync, rename.

    See :func:`atomic_writer`: what a writer killed midway leaves is removed by a later writer in the folder.
    """
    with atomic_writer(path) as f:
        f.write(data)
    return Path(path)


@contextlib.contextmanager
def temporary_dir(parent: str | os.PathLike, name: str) -> Iterator[Path]:
    """A temporary folder ``<parent>/<name>.tmp-<host>-<pid>-<random>``, removed with its content at the end.

    Before it is made, the stale temporaries of ``parent`` are removed (:func:`remove_stale_temporaries`);
    if this process is killed, the next writer in ``parent`` removes the folder.
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(parent)
    tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix(name), dir=parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """:func:`torch.save` ``obj`` to ``path`` atomically."""
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


_OWN_COMMIT: list[str] = []


def git_commit(repo: str | os.PathLike | None = None) -> str:
    """The commit of the code: ``$SEPDTD_COMMIT`` if set, else ``git rev-parse HEAD`` with ``-dirty`` if
    the package's tracked files changed; ``"unknown"`` outside git.

    For the package's own repository (``repo`` None) git is asked once per process, at the first call:
    a long run records the commit of the code it loaded, not one that a checkout made while it ran.
    The stages call it when they start.
    """
    if os.environ.get("SEPDTD_COMMIT"):  # set where the code runs from a copy without .git (the GPU runner)
        return os.environ["SEPDTD_COMMIT"]
    if repo is None:
        if not _OWN_COMMIT:
            _OWN_COMMIT.append(_ask_git(Path(__file__).resolve().parent.parent))
        return _OWN_COMMIT[0]
    return _ask_git(Path(repo))


def _ask_git(repo: Path) -> str:
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no",
                                "--", "sepdtd"], capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("SEPDTD_COMMIT", "unknown")


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages a result depends on."""
    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for name in ("sepdtd", "torchvision", "zennit"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    if torch.cuda.is_available():
        out["cuda"] = str(torch.version.cuda)
    return out


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); return a CPU generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


class LockTimeout(TimeoutError):
    """Another process held a lock (:func:`file_lock`) for longer than the timeout, or holds it stopped."""


#: Seconds a lock's holder may stay stopped (SIGSTOP, a debugger) before a waiter gives up on it.
LOCK_STOPPED_AFTER_S = 10.0


def _pid_stopped(pid: int) -> bool:
    """Whether process ``pid`` of this host is stopped (state T or t in ``/proc``); False where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state in (b"T", b"t")


def _holder(text: str) -> int | None:
    """The pid in a lock file's ``<pid> <host>`` when the host is this one, else None."""
    parts = text.split()
    if len(parts) == 2 and parts[0].isdigit() and parts[1] == _host():
        return int(parts[0])
    return None


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, timeout: float = 60.0, what: str = "this file") -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created when missing) for the ``with`` block.

    The lock is an advisory ``flock`` where the platform has it, so a killed holder releases it at
    once; elsewhere the file is created exclusively and holds the holder's pid. The holder's pid and
    host are written into the file, and a :class:`LockTimeout` after ``timeout`` seconds names them. A
    holder on this host that stays stopped (``SIGSTOP``, a debugger) for :data:`LOCK_STOPPED_AFTER_S`
    ends the wait early, with a :class:`LockTimeout` that says how to resume or end it.

    Parameters
    ----------
    path : path
        The lock file (e.g. ``<folder>/.lock``).
    timeout : float, optional
        Seconds to wait for another holder.
    what : str, optional
        What the lock protects, for the message.

    Raises
    ------
    LockTimeout
        After ``timeout`` seconds, or when the holder is stopped; the message names the lock file and the holder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    me = f"{os.getpid()} {_host()}\n".encode()
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        fcntl = None
    if fcntl is not None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        stopped_since: float | None = None
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                    pid = _holder(holder)
                    if pid is not None and _pid_stopped(pid):
                        stopped_since = stopped_since if stopped_since is not None else time.monotonic()
                        if time.monotonic() - stopped_since > LOCK_STOPPED_AFTER_S:
                            raise LockTimeout(
                                f"{what} is locked by process {pid} of this host, which is stopped (SIGSTOP or a "
                                f"debugger; lock file {path}): resume it with `kill -CONT {pid}` or end it, then retry"
                            ) from None
                    else:
                        stopped_since = None
                    if time.monotonic() > deadline:
                        raise LockTimeout(f"{what} is locked by another process (pid and host: {holder}; lock file "
                                          f"{path}) for more than {timeout:g} s: wait for it to finish, or stop it"
                                          ) from None
                    time.sleep(0.2)
            os.ftruncate(fd, 0)
            os.pwrite(fd, me, 0)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        return
    while True:  # pragma: no cover - Windows
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            try:
                pid = int(path.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pid = None
            if pid is not None and not _pid_alive(pid):
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            if time.monotonic() > deadline:
                raise LockTimeout(f"{what} is locked by process {pid} (lock file {path}) for more than "
                                  f"{timeout:g} s: wait for it to finish, or stop it and delete the lock file"
                                  ) from None
            time.sleep(0.2)
    try:
        os.write(fd, me)
        os.close(fd)
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()


def die_with_parent() -> None:
    """Make this (worker) process end when the process that started it ends.

    On Linux the kernel sends SIGTERM when the parent dies (``prctl(PR_SET_PDEATHSIG)``); elsewhere a
    daemon thread checks every second whether the parent is gone.
    """
    import signal
    import threading

    parent = os.getppid()
    if parent == 1:  # the parent is already gone
        os._exit(1)
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        if libc.prctl(1, signal.SIGTERM, 0, 0, 0) == 0:  # 1 = PR_SET_PDEATHSIG
            if os.getppid() != parent:
                os._exit(1)
            return
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="die-with-parent").start()
