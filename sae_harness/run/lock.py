"""One owner at a time. A run directory is held by the process running in it, from before any work
to its end, and a second process is refused at once (a sweep's job as a manual run: both are
experiment.py); a cache folder is held by the process building it, and a second process that
needs the same cache waits for it and then reuses it, as it would have reused a finished one.

The hold is an OS file lock (flock) on a small file, which the kernel frees when its process ends,
however it ends: a lock file left by a killed process never blocks the next run. The file holds the
owner's pid, for the line that refuses a second process."""

import contextlib
import fcntl
import os
import shutil
import sys
from pathlib import Path

from sae_harness.run.rundir import UsageError

RUN_LOCK = ".lock"  # in the run directory; clear_run leaves it (it is nobody's result)


def _take(path: Path, wait: bool) -> int | None:
    """An open descriptor holding path's lock, or None when another process holds it (wait=False)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError as e:  # a filesystem without locks: say so once, and go on as before locks existed
        print(f"warning: cannot lock {path} ({e.strerror}); nothing stops a second process from using it", file=sys.stderr)
        return fd
    except BaseException:
        os.close(fd)
        raise
    with contextlib.suppress(OSError):  # the pid is for the message only: a full disk must not stop the run here
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _release(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)  # no pid of a process that no longer holds it
    os.close(fd)  # frees the lock


def holder(path: Path) -> str:
    """'process <pid>' of the lock's owner as its file says, else 'another process'."""
    try:
        pid = Path(path).read_text().strip()
    except OSError:
        pid = ""
    return f"process {pid}" if pid.isdigit() else "another process"


@contextlib.contextmanager
def run_dirs(dirs):
    """Hold each of dirs (made if missing) for the block, or refuse at once with UsageError naming
    the process that holds one; what was taken is released on every way out of the block."""
    held = contextlib.ExitStack()
    with held:
        for path in dict.fromkeys(Path(d) for d in dirs):
            path.mkdir(parents=True, exist_ok=True)
            fd = _take(path / RUN_LOCK, wait=False)
            if fd is None:
                raise UsageError(
                    f"{path} is in use by {holder(path / RUN_LOCK)} (a run or a sweep's job); "
                    "wait for it to end, or choose another --out_dir"
                )
            held.callback(_release, fd)
        yield


@contextlib.contextmanager
def exclusive(path: Path):
    """Hold the lock file path for the block, waiting while another process holds it."""
    fd = _take(Path(path), wait=True)
    try:
        yield
    finally:
        _release(fd)


@contextlib.contextmanager
def building(path: Path):
    """Hold the right to build the cache folder path for the block, waiting while another process
    builds it (one line says so), and remove the temporary folders (<path>.tmp<pid>) a killed
    builder left. The caller looks again for a finished cache inside the block: the process it
    waited for has usually built it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(f".{path.name}.lock")
    fd = _take(lock, wait=False)
    if fd is None:
        print(f"{path}: {holder(lock)} is building it; waiting for it to finish", flush=True)
        fd = _take(lock, wait=True)
    for stale in path.parent.glob(f"{path.name}.tmp*"):  # a killed builder's: no other process builds it now
        shutil.rmtree(stale, ignore_errors=True)
    try:
        yield
    finally:
        _release(fd)


@contextlib.contextmanager
def new_folder(path: Path):
    """Yield an empty temporary folder beside path (<path>.tmp<pid>, the name `building` clears
    after a killed builder); when the block ends without an error it replaces path in one rename,
    and it is removed whatever happens: a cache folder is whole or absent, never half-written."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
