"""How a command ends early: Ctrl-C, ``kill``, a full disk, an unexpected error.

Every ``instructmill`` command runs inside :func:`command_guard` (installed once, by the CLI
group), which

* turns SIGINT and SIGTERM into :class:`Interrupted` (a ``KeyboardInterrupt``) in the main
  thread, so ``with`` blocks close the run files and engines as on Ctrl-C;
* ends the run within :data:`GRACE_SECONDS` of the signal whatever the main thread is doing (a
  watchdog thread raises the interrupt again where a library swallowed it, as vLLM does while
  its engine starts, and takes over when unwinding hangs), and at once on a second signal;
  after the signal, further SIGINT / SIGTERM are ignored while the process exits;
* stops the child processes the command started (vLLM's engine core, its workers): SIGTERM,
  then SIGKILL after :data:`CHILD_TERM_SECONDS`, and reaps them, so no zombie and no process
  holding a model's memory outlives the command;
* prints ONE line saying what was kept and how to continue, and exits 130 (SIGINT) or 143
  (SIGTERM), the shell's 128 + signal number convention;
* prints one line, not a traceback, for a full disk, a read-only or forbidden output folder and
  any unexpected error (whose traceback goes to the run's log file, see
  :mod:`instructmill.engine.logfile`); ``-v`` or ``INSTRUCTMILL_DEBUG=1`` shows tracebacks.

Commands tell the guard which outputs they write (:func:`watch_output`), so the line can say
how many records are kept where.
"""
from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import click

__all__ = ["EXIT_CODES", "GRACE_SECONDS", "Interrupted", "command_guard", "watch_output", "log_path_for", "one_line",
           "kept_line", "debug_enabled", "reap_children"]

#: Exit status per signal: 128 + the signal number, as a shell reports a process killed by it.
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
#: Seconds between the first signal and the forced end of the process.
GRACE_SECONDS = 8.0
#: Seconds a child gets between SIGTERM and SIGKILL.
CHILD_TERM_SECONDS = 3.0
#: Seconds between repeats of an interrupt the main thread swallowed (see ``_watchdog``).
RETHROW_SECONDS = 1.0
#: errno values reported as "the disk is full".
NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
#: errno values reported as "the output cannot be written there".
NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}
RESUME_HINT = "run the same command with --resume to continue"


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread when SIGINT or SIGTERM arrives.

    A ``KeyboardInterrupt`` so that code which already cleans up on Ctrl-C does so on
    ``kill`` too. Attributes: ``signum``, the signal's number.
    """

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def debug_enabled() -> bool:
    """Whether tracebacks are wanted: ``INSTRUCTMILL_DEBUG`` set to 1/true/yes/on."""
    return os.environ.get("INSTRUCTMILL_DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}


def log_path_for(output: str) -> str:
    """The log file beside an output: ``out/X.jsonl`` -> ``out/X.log``."""
    stem = output[: -len(".jsonl")] if output.lower().endswith(".jsonl") else output
    return f"{stem}.log"


@dataclass
class _Guard:
    verbose: bool
    outputs: list[str] = field(default_factory=list)
    signum: int | None = None
    finished: threading.Event = field(default_factory=threading.Event)
    spare: set[int] = field(default_factory=set)
    resources: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    said: threading.Lock = field(default_factory=threading.Lock)
    line_printed: bool = False
    rethrow: bool = False
    unwound: threading.Event = field(default_factory=threading.Event)  # the main thread reached the guard


_current: _Guard | None = None
#: True when this process is the ``instructmill`` command itself (set by ``cli.main``): only then is
#: a signal's ending the end of the process. Called in-process (click's CliRunner, a script calling
#: the command), the caller's handlers are put back as they were, never left ignored.
PROCESS_IS_COMMAND = False


def watch_output(path: str | os.PathLike[str] | None) -> str | None:
    """Tell the running command's guard about an output file (counted in the interrupt line).

    The first output also names the command's log file (:func:`log_path_for`): engine and
    library logs go there until the command ends (:func:`instructmill.engine.logfile.engine_logs_to`).
    Returns that log's path for the first output, else ``None``. No-op outside
    :func:`command_guard` (e.g. from the Python API).
    """
    if path is None or _current is None:
        return None
    text = os.fspath(path)
    if text in _current.outputs or text == "-":
        return None
    _current.outputs.append(text)
    if len(_current.outputs) > 1:
        return None
    from ..engine.logfile import engine_logs_to

    return _current.resources.enter_context(engine_logs_to(log_path_for(text)))


def _count_lines(path: str) -> int:
    try:
        with open(path, "rb") as fh:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
    except OSError:
        return 0


def kept_line(outputs: list[str]) -> str:
    """``kept 12 records in out/a.jsonl (+3 discarded in out/a.discards.jsonl)`` for the outputs
    that exist; ``nothing was written`` when none does."""
    from ..io.resume import run_paths

    parts = []
    for output in outputs:
        paths = run_paths(output)
        if not (os.path.exists(paths.output) or os.path.exists(paths.discards)):
            continue
        text = f"kept {_count_lines(paths.output)} records in {paths.output}"
        discarded = _count_lines(paths.discards)
        if discarded:
            text += f" (+{discarded} discarded in {paths.discards})"
        parts.append(text)
    return "; ".join(parts) if parts else "nothing was written"


def _child_pids() -> set[int]:
    try:
        import psutil

        return {child.pid for child in psutil.Process().children(recursive=True)}
    except Exception:  # noqa: BLE001 - psutil missing or /proc unreadable: nothing to spare
        return set()


def _descendants(spare: set[int] | frozenset[int]) -> list:
    """This process's child processes, recursively, less ``spare`` and multiprocessing's resource
    tracker (it exits by itself when this process ends and unlinks any shared memory a killed
    child left behind)."""
    try:
        import psutil

        children = psutil.Process().children(recursive=True)
    except Exception:  # noqa: BLE001 - psutil missing (it comes with vLLM and Ray) or /proc unreadable
        return []
    targets = []
    for child in children:
        if child.pid in spare:
            continue
        try:
            if "resource_tracker" in " ".join(child.cmdline()):
                continue
        except psutil.Error:
            continue
        targets.append(child)
    return targets


def _terminate(children: list) -> None:
    import psutil

    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()


def reap_children(grace: float = CHILD_TERM_SECONDS, spare: set[int] | frozenset[int] = frozenset()) -> list[int]:
    """SIGTERM every child process of this one (recursively) except the ``spare`` pids, SIGKILL
    those alive after ``grace`` seconds, and reap them. Returns the pids that were running.

    ``spare`` keeps the children that existed before the command (e.g. a test session's own
    engine when the CLI runs in-process). A grandchild whose parent is killed first is reaped by
    the system's init process instead.
    """
    targets = _descendants(spare)
    if not targets:
        return []
    import psutil

    _terminate(targets)
    _gone, alive = psutil.wait_procs(targets, timeout=grace)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(alive, timeout=grace)
    return [child.pid for child in targets]


def _say(guard: _Guard, text: str) -> None:
    """Print the one line (once per command), to the console even while fd 2 points at a log."""
    from ..engine.logfile import console_fd

    with guard.said:
        if guard.line_printed:
            return
        guard.line_printed = True
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        with contextlib.suppress(OSError):
            os.write(console_fd(), (text + "\n").encode("utf-8", "replace"))


def _interrupt_message(guard: _Guard, signum: int) -> str:
    name = signal.Signals(signum).name
    kept = kept_line(guard.outputs)
    hint = RESUME_HINT if guard.outputs else "run the same command again"
    return f"interrupted by {name}: {kept}; {hint}"


def _watchdog(guard: _Guard, signum: int) -> None:
    """Stop the children while the main thread unwinds, and force the end GRACE_SECONDS after the
    signal if the main thread has not got there.

    The children get SIGTERM at once (a terminal's Ctrl-C reached them already; ``kill`` did not),
    and SIGKILL after CHILD_TERM_SECONDS: vLLM's engine core only notes a SIGTERM while it is
    still starting. vLLM's parent side swallows a KeyboardInterrupt raised while it waits for its
    engine to start (``zmq_socket_ctx`` in vllm 0.32 catches it), so while the main thread is not
    done the signal is raised in it again, every RETHROW_SECONDS: once out of that block it ends.
    """
    started = time.monotonic()
    with contextlib.suppress(Exception):
        _terminate(_descendants(guard.spare))
    if guard.finished.wait(CHILD_TERM_SECONDS):
        return
    with contextlib.suppress(Exception):
        reap_children(grace=1.0, spare=guard.spare)
    while not guard.finished.is_set():
        left = GRACE_SECONDS - (time.monotonic() - started)
        if left <= 0:
            break
        if not guard.unwound.is_set():
            _rethrow(guard, signum)
        if guard.finished.wait(min(RETHROW_SECONDS, left)):
            return
    if guard.finished.is_set():
        return
    _dump_stacks()
    _force_exit(guard, signum)


def _rethrow(guard: _Guard, signum: int) -> None:
    """Raise :class:`Interrupted` in the main thread again: a real signal to that thread, so that a
    blocking call there returns (EINTR) and the handler runs."""
    guard.rethrow = True
    with contextlib.suppress(Exception):
        signal.pthread_kill(threading.main_thread().ident, signum)


def _dump_stacks() -> None:
    """Every thread's stack into the log file (where the main thread was stuck), if there is one."""
    import faulthandler

    from ..engine.logfile import engine_log_path

    path = engine_log_path()
    if not path:
        return
    with contextlib.suppress(Exception), open(path, "a", encoding="utf-8") as fh:
        fh.write(f"instructmill: the run did not end within {GRACE_SECONDS:g} s of the signal; stacks:\n")
        fh.flush()
        faulthandler.dump_traceback(file=fh, all_threads=True)


def _force_exit(guard: _Guard, signum: int) -> None:
    with contextlib.suppress(Exception):
        reap_children(grace=1.0, spare=guard.spare)
    _say(guard, _interrupt_message(guard, signum))
    os._exit(EXIT_CODES.get(signum, 128 + signum))


def _handler(guard: _Guard):
    def on_signal(signum: int, _frame) -> None:
        if guard.signum is None:
            guard.signum = signum
            threading.Thread(target=_watchdog, args=(guard, signum), name="instructmill-interrupt-watchdog",
                             daemon=True).start()
            raise Interrupted(signum)
        if guard.rethrow:  # the watchdog's repeat of a swallowed interrupt
            guard.rethrow = False
            if not guard.unwound.is_set():
                raise Interrupted(guard.signum)
            return
        # a second signal while the first one unwinds: stop now
        threading.Thread(target=_force_exit, args=(guard, guard.signum), daemon=True).start()

    return on_signal


def _os_error(exc: BaseException | None) -> OSError | None:
    """The OSError with a disk-full / not-writable errno that started ``exc``'s chain.

    Follows ``__cause__`` / ``__context__`` (and a ``PipelineError``'s ``cause``) down to the first
    failure: on a full disk, closing the run files fails again and that later error would hide
    which file could not be written. Prefers the deepest one that names a file.
    """
    found: list[OSError] = []
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in NO_SPACE | NOT_WRITABLE:
            found.append(exc)
        exc = exc.__cause__ or exc.__context__ or getattr(exc, "cause", None)
    named = [e for e in found if e.filename]
    return (named or found)[-1] if found else None


def one_line(exc: BaseException) -> str | None:
    """The message of a user error for the console, or ``None`` when a disk-full / not-writable
    OSError caused it (the command guard then prints its own line with what was kept).

    A pipeline's "(traceback above)" becomes "(the traceback is in <log>)": that traceback went
    to the log file (:class:`~instructmill.engine.logfile.TracebacksToLog`).
    """
    from ..engine.logfile import engine_log_path

    if _os_error(exc) is not None:
        return None
    text = str(exc)
    log = engine_log_path()
    if log and "(traceback above)" in text:
        text = text.replace("(traceback above)", f"(the traceback is in {log})")
    return text


def _os_error_message(exc: OSError, guard: _Guard) -> str:
    where = f" {exc.filename}" if exc.filename else ""
    kept = kept_line(guard.outputs)
    if exc.errno in NO_SPACE:
        what = "no space left on the device" + (f" writing{where}" if where else "")
        fix = "free some space and " + (RESUME_HINT if guard.outputs else "run the same command again")
    else:
        reason = "the file system is read-only" if exc.errno == errno.EROFS else "permission denied"
        what = f"cannot write{where}: {reason}"
        fix = ("make the folder writable and " + RESUME_HINT if guard.outputs and kept != "nothing was written"
               else "choose a writable output folder, or make this one writable, and run the command again")
    return f"{what}; {kept}; {fix}"


def _unexpected_message(exc: BaseException, guard: _Guard) -> str:
    from ..engine.logfile import engine_log_path, log_exception

    logged = log_exception(exc)
    text = f"{type(exc).__name__}: {exc}".strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    where = (f"the traceback is in {engine_log_path()}" if logged
             else "run with INSTRUCTMILL_DEBUG=1 for the traceback")
    kept = kept_line(guard.outputs)
    tail = f"; {kept}; fix the cause and {RESUME_HINT}" if guard.outputs and kept != "nothing was written" else ""
    return f"failed: {first} ({where}){tail}"


@contextlib.contextmanager
def command_guard(verbose: bool = False) -> Iterator[_Guard]:
    """Run a command with the signal handlers and the one-line endings described above.

    Raises ``click.exceptions.Exit`` with 130 / 143 after a signal and 1 after a disk-full,
    not-writable or unexpected error; lets click's own exceptions (usage errors, user errors
    already turned into one message) through. Handlers are only installed in the main thread
    and are restored at the end.
    """
    global _current
    guard = _Guard(verbose=verbose or debug_enabled(), spare=_child_pids())
    previous_guard, _current = _current, guard
    installed = {}
    if threading.current_thread() is threading.main_thread():
        handler = _handler(guard)
        for signum in EXIT_CODES:
            if signal.getsignal(signum) is signal.SIG_IGN:
                continue  # e.g. SIGINT of a background job (`instructmill ... &` in a script): stays ignored
            installed[signum] = signal.signal(signum, handler)
    try:
        with _one_line_errors(guard):
            yield guard
    except BaseException as exc:
        guard.unwound.set()
        # A library may swallow the KeyboardInterrupt (vLLM does while its engine starts) and fail
        # later because the watchdog stopped its children: after a signal, any ending is the signal's.
        if guard.signum is not None or (isinstance(exc, KeyboardInterrupt) and not isinstance(exc, click.Abort)):
            signum = getattr(exc, "signum", None) or guard.signum or signal.SIGINT
            reap_children(spare=guard.spare)
            _say(guard, _interrupt_message(guard, signum))
            guard.finished.set()
            raise click.exceptions.Exit(EXIT_CODES.get(signum, 128 + signum)) from None
        raise
    finally:
        guard.finished.set()
        guard.resources.close()
        for signum, old in installed.items():
            # After a signal the process is on its way out: ignore more of them, or one arriving during
            # the interpreter's shutdown (which resets Python's handlers) would kill it by the signal
            # instead of the exit code. The watchdog still ends a shutdown that hangs.
            ending = guard.signum is not None and PROCESS_IS_COMMAND and previous_guard is None
            signal.signal(signum, signal.SIG_IGN if ending else old)
        _current = previous_guard


@contextlib.contextmanager
def _one_line_errors(guard: _Guard) -> Iterator[None]:
    """A full disk, a read-only output or an unexpected error: one line, exit 1 (see the module)."""
    try:
        yield
    except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
        guard.unwound.set()
        if guard.signum is None:  # else the interrupt's line is the one to print
            reap_children(spare=guard.spare)
        raise
    except Exception as exc:  # noqa: BLE001 - the command's last word: one line, never a traceback
        guard.unwound.set()
        if guard.verbose or guard.signum is not None:
            raise
        found = _os_error(exc)
        if found is not None:
            from ..engine.logfile import log_exception

            log_exception(exc)
            message = _os_error_message(found, guard)
        else:
            message = _unexpected_message(exc, guard)
        reap_children(spare=guard.spare)
        _say(guard, f"Error: {message}")
        raise click.exceptions.Exit(1) from None
