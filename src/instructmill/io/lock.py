"""One writer per output: an OS file lock beside the output, released on any exit.

Two runs writing to the same output at once double or lose records (both append the same
ids; an ``--overwrite`` run deletes the files the other is still writing). Every run --
plain, ``--resume`` or ``--overwrite``, a one-command run or a pipeline -- takes this lock
before it looks at or changes any file of its output, and a second run is refused with one
line naming the pid that holds it.

The lock is ``fcntl.flock`` on ``<stem>.lock`` (``out/X.jsonl`` -> ``out/X.lock``): the
kernel releases it when the process ends in any way (exit, exception, SIGKILL, crash), so a
killed run never leaves a lock that blocks the next one; the file itself may stay behind
after a kill and is reused. The holder writes its pid and command line into the file so the
refusal can say who holds it.
"""
from __future__ import annotations

import os
import sys
from types import TracebackType

from ..errors import InstructmillError

__all__ = ["OutputLock", "OutputLockedError", "lock_path", "lock_outputs"]

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows: fall back to the filelock package
    fcntl = None  # type: ignore[assignment]


class OutputLockedError(InstructmillError):
    """Another live run holds the output's lock.

    Attributes:
        path: the lock file.
        holder: what the holder wrote into it (``"pid 1234: instructmill template ..."``), or ``""``.
    """

    def __init__(self, output: str, path: str, holder: str):
        self.path = path
        self.holder = holder
        who = holder or "another process"
        super().__init__(f"{output} is being written by another run ({who}); wait for it to end or stop it "
                         "-- a second run on the same output (plain, --resume or --overwrite) is refused")


def lock_path(output_path: str | os.PathLike[str]) -> str:
    """``out/X.jsonl`` -> ``out/X.lock`` (``out/X`` -> ``out/X.lock``)."""
    output = os.fspath(output_path)
    stem = output[: -len(".jsonl")] if output.lower().endswith(".jsonl") else output
    return f"{stem}.lock"


class OutputLock:
    """An exclusive, non-blocking lock on one output (see the module docstring).

    Args:
        output_path: the output file the lock protects (its folder is created if missing).

    Use as a context manager, or :meth:`acquire` / :meth:`release`.
    """

    def __init__(self, output_path: str | os.PathLike[str]):
        self.output = os.fspath(output_path)
        self.path = lock_path(self.output)
        self._fd: int | None = None
        self._fallback = None

    def acquire(self) -> OutputLock:
        """Take the lock or refuse.

        Raises:
            OutputLockedError: a live process holds it (the message names its pid).
            OSError: the lock file cannot be created (e.g. a read-only folder).
        """
        if self._fd is not None or self._fallback is not None:
            return self
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        if fcntl is None:  # pragma: no cover
            import filelock

            self._fallback = filelock.FileLock(self.path + ".win")
            try:
                self._fallback.acquire(timeout=0)
            except filelock.Timeout:
                self._fallback = None
                raise OutputLockedError(self.output, self.path, "") from None
            return self
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise OutputLockedError(self.output, self.path, holder) from None
            # The holder before us may have unlinked the file between our open and flock: then we
            # locked an orphan inode. Lock the file that is at the path now instead.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        command = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300]
        os.write(fd, f"pid {os.getpid()}: {command}\n".encode("utf-8", "replace"))
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and release the lock (idempotent)."""
        if self._fallback is not None:  # pragma: no cover
            self._fallback.release()
            self._fallback = None
            return
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.unlink(self.path)  # while still holding it: a waiter re-checks the path (see acquire)
        except OSError:
            pass
        os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None or self._fallback is not None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


class _Locks:
    """Several :class:`OutputLock` taken together (all or none)."""

    def __init__(self, locks: list[OutputLock]):
        self.locks = locks

    def release(self) -> None:
        for lock in reversed(self.locks):
            lock.release()


def lock_outputs(paths: list[str]) -> _Locks:
    """Lock every output in ``paths`` (sorted, duplicates once); all or none.

    Raises:
        OutputLockedError: one of them is held by another run (the ones taken are released).
    """
    taken: list[OutputLock] = []
    try:
        for path in sorted({os.path.abspath(p) for p in paths}):
            taken.append(OutputLock(path).acquire())
    except BaseException:
        for lock in reversed(taken):
            lock.release()
        raise
    return _Locks(taken)


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 400).decode("utf-8", "replace").strip()
    except OSError:
        return ""
