"""Safe file writes and cross-process locks, for everything a run leaves on disk.

Why: a kill or a full disk must never leave a half-written file under its final name (a
torn checkpoint made every rerun fail), and two commands on one store must never run one
job twice. So every file the runner relies on is written to a temporary name in the same
folder and renamed into place (atomic on POSIX), after checking that the disk has room; and
each job, table and store creation holds an advisory ``flock`` lock, which the kernel
releases when its process dies however it dies (``kill -9`` included): a free lock with a
RUNNING run behind it means that run's process is gone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

SPACE_MARGIN = 2.0  # free space wanted per byte about to be written
MIN_FREE_MB = 16  # never write into the last 16 MiB of a disk ($DEPTHLAB_MIN_FREE_MB)


class DiskFullError(OSError):
    """Not enough free space for a write; raised before anything is written."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return self.strerror


def is_disk_full(error: BaseException) -> bool:
    """Whether an exception (or one it was raised from) is "no space left on device"."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "database or disk is full" in str(error):  # SQLite's words for ENOSPC
            return True
        error = error.__cause__ or error.__context__
    return False


def ensure_space(folder: str | os.PathLike, nbytes: int, what: str) -> None:
    """Raise :class:`DiskFullError` unless ``folder``'s disk can take ``nbytes`` with margin.

    Args:
        folder: an existing folder on the disk written to.
        nbytes: the size of what is about to be written.
        what: a few words naming the write, for the message.
    """
    free = shutil.disk_usage(folder).free
    floor = int(os.environ.get("DEPTHLAB_MIN_FREE_MB", MIN_FREE_MB)) << 20
    need = int(nbytes * SPACE_MARGIN) + floor
    if free < need:
        raise DiskFullError(
            f"no space left on device for {what} in {folder}: {free / 2**20:.0f} MiB free, "
            f"{need / 2**20:.0f} MiB needed; free some space and run the command again "
            "(finished jobs are kept, the interrupted one resumes)"
        )


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    On any exception the temporary file is removed and ``target`` is left as it was.

    Args:
        target: the final path.
        suffix: the temporary name's ending, for writers that check it (Keras wants
            ``.weights.h5``). Defaults to the target's own name.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                suffix=".tmp" + (suffix or ""))
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(target: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``target`` atomically, after a free-space check."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    ensure_space(target.parent, len(text.encode()), f"writing {target.name}")
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def check_writable(folder: str | os.PathLike, what: str) -> Path:
    """Create ``folder`` if needed and prove it writable by writing a probe file.

    Raises:
        PermissionError / OSError: with a one-line message naming ``what`` and the folder.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise type(error)(error.errno, f"{what} {folder} is not writable ({reason})") from None
    return folder


class FileLock:
    """An advisory ``flock`` lock on ``path``; the holder's pid and host are written in it.

    Exclusive locks run a job once; shared locks let several processes work under one
    table while a sweep (exclusive, non-blocking) can tell that nobody does any more. Two
    ``FileLock`` objects on one path conflict even inside one process.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self, *, shared: bool = False, blocking: bool = True) -> bool:
        """Take the lock; with ``blocking=False`` return False at once when it is held."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        flags = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB)
        try:
            fcntl.flock(fd, flags)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        if not shared:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> str:
        """Who wrote the lock last ("pid N on host"), for messages."""
        try:
            return self.path.read_text().strip() or "another process"
        except OSError:
            return "another process"

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
