"""Engine logs in a file beside the output; the console keeps progress and one-line messages.

vLLM logs ~20 INFO/WARNING lines per start (to stdout), transformers and torch add their
warnings (to stderr), and a dying vLLM engine core prints its whole traceback from its own
process. :func:`engine_logs_to` sends all of that to one file:

* the Python loggers of the engine libraries (:data:`ROUTED_LOGGERS`) and ``warnings.warn``
  (through ``logging.captureWarnings``) get a file handler and stop propagating to the console;
  records carrying a traceback (a failed pipeline stage's) go to the file too
  (:class:`TracebacksToLog`);
* vLLM configures its logger from ``VLLM_LOGGING_CONFIG_PATH`` in this process and in the engine
  core process it spawns, so that variable points at a ``logging.config.dictConfig`` file whose
  handler appends to the log;
* :func:`console_to_log` points file descriptors 1 and 2 at the log while an engine starts: the
  engine core child process inherits them for its whole life (its tracebacks, C++ warnings and
  progress bars land in the log), while this process gets its console back afterwards.

The log's path travels in ``INSTRUCTMILL_ENGINE_LOG`` so that processes started later (Ray
actors, vLLM's engine core) find it. Nothing here changes what a library computes.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator

__all__ = ["ENV_VAR", "ROUTED_LOGGERS", "LogFileHandler", "TracebacksToLog", "engine_log_path", "engine_logs_to", "console_to_log",
           "console_fd", "reroute_library_loggers", "log_exception"]

#: Environment variable holding the log file's path (``None``/unset: logs stay on the console).
ENV_VAR = "INSTRUCTMILL_ENGINE_LOG"
#: Loggers whose records go to the log file instead of the console.
ROUTED_LOGGERS: tuple[str, ...] = ("vllm", "transformers", "torch", "ray", "py.warnings", "filelock")
_CONFIG_PREFIX = "instructmill-vllm-logging-"
_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"

_state_lock = threading.Lock()
_console: int | None = None  # a dup of the console's stderr while fd 2 points at the log
_bars_disabled: set[str] = set()  # log paths for which transformers' progress bars were switched off


def engine_log_path() -> str | None:
    """The log file engines write to (from ``INSTRUCTMILL_ENGINE_LOG``), or ``None``."""
    return os.environ.get(ENV_VAR) or None


def console_fd() -> int:
    """The file descriptor of the console's stderr (fd 2 unless an engine is starting)."""
    return _console if _console is not None else 2


class LogFileHandler(logging.FileHandler):
    """A ``FileHandler`` that drops a record it cannot write (disk full, folder gone) instead of
    printing logging's "--- Logging error ---" traceback on the console: the log is a by-product,
    the command's own writes report such errors."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        pass

    def close(self) -> None:
        try:
            super().close()
        except OSError:  # the last flush on a full disk
            pass


class TracebacksToLog(logging.Filter):
    """A console handler's filter: a record carrying a traceback (``exc_info``, or a message with
    ``Traceback (most recent call last)``, as the pipeline logs a failed stage's) goes to the log
    file instead; the command's one-line error names the file."""

    def __init__(self, path: str):
        super().__init__()
        self.handler = _file_handler(path)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info or "Traceback (most recent call last)" in record.getMessage():
            self.handler.handle(record)
            return False
        return True


def _vllm_config(path: str) -> dict:
    """A ``logging.config.dictConfig`` for vLLM: its loggers append to ``path``."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": _FORMAT}},
        "handlers": {"file": {"class": "instructmill.engine.logfile.LogFileHandler", "filename": path, "mode": "a",
                              "encoding": "utf-8", "delay": True, "formatter": "plain",
                              "level": "DEBUG"}},
        "loggers": {"vllm": {"handlers": ["file"], "level": os.environ.get("VLLM_LOGGING_LEVEL", "INFO"),
                             "propagate": False}},
    }


def _file_handler(path: str) -> logging.Handler:
    handler = LogFileHandler(path, mode="a", encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler._instructmill_engine_log = True  # type: ignore[attr-defined]  # found again by reroute
    return handler


def reroute_library_loggers(path: str | None = None, *, transformers: bool = False) -> None:
    """Point the engine libraries' loggers at the log file (again).

    transformers adds its own console handler the first time it logs, and vLLM configures its
    logger when it is imported; an engine calls this once those libraries are imported so that
    their handlers are replaced by the log file's. transformers' progress bars ("Loading
    weights", six per back-translation model conversion) are switched off as well.
    ``transformers=True`` imports transformers first (for code about to convert a model). No-op
    without a log file.
    """
    path = path or engine_log_path()
    if not path:
        return
    if transformers and "transformers" not in sys.modules:
        with contextlib.suppress(ImportError):
            import transformers.utils.logging  # noqa: F401
    users_vllm_config = os.environ.get("VLLM_CONFIGURE_LOGGING") == "0" or not os.path.basename(
        os.environ.get("VLLM_LOGGING_CONFIG_PATH") or _CONFIG_PREFIX).startswith(_CONFIG_PREFIX)
    for name in ROUTED_LOGGERS:
        if name == "vllm" and users_vllm_config:
            continue
        logger = logging.getLogger(name)
        ours = [h for h in logger.handlers if getattr(h, "_instructmill_engine_log", False)
                and getattr(h, "baseFilename", None) == os.path.abspath(path)]
        logger.handlers = ours or [_file_handler(path)]
        logger.propagate = False
    if "transformers" in sys.modules:
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_default_handler()
            hf_logging.disable_propagation()
            if hf_logging.is_progress_bar_enabled():
                hf_logging.disable_progress_bar()
                _bars_disabled.add(path)
        except Exception:  # noqa: BLE001 - an old transformers without these helpers: stay as is
            pass


@contextlib.contextmanager
def engine_logs_to(path: str | os.PathLike[str] | None) -> Iterator[str | None]:
    """Send engine and library logs to ``path`` for the duration of the block (``None``: no-op).

    Sets ``INSTRUCTMILL_ENGINE_LOG`` and ``VLLM_LOGGING_CONFIG_PATH`` (both restored at the end),
    routes :data:`ROUTED_LOGGERS` to the file and captures ``warnings.warn``. The file is created
    on the first record (an empty run leaves none). Yields the absolute path.
    """
    if path is None:
        yield None
        return
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    saved_env = {k: os.environ.get(k) for k in (ENV_VAR, "VLLM_LOGGING_CONFIG_PATH", "VLLM_CONFIGURE_LOGGING")}
    saved_loggers = {name: (list(logging.getLogger(name).handlers), logging.getLogger(name).propagate)
                     for name in ROUTED_LOGGERS}
    os.environ[ENV_VAR] = path
    config_path = None
    if saved_env["VLLM_LOGGING_CONFIG_PATH"] is None and saved_env["VLLM_CONFIGURE_LOGGING"] != "0":
        # (a user's own vLLM logging configuration wins)
        fd, config_path = tempfile.mkstemp(prefix=_CONFIG_PREFIX, suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump(_vllm_config(path), fh)
        os.environ["VLLM_LOGGING_CONFIG_PATH"] = config_path
    logging.captureWarnings(True)
    reroute_library_loggers(path)
    tracebacks = TracebacksToLog(path)
    console_handlers = list(logging.getLogger().handlers)
    for handler in console_handlers:
        handler.addFilter(tracebacks)
    try:
        yield path
    finally:
        for handler in console_handlers:
            handler.removeFilter(tracebacks)
        tracebacks.handler.close()
        logging.captureWarnings(False)
        if path in _bars_disabled:
            _bars_disabled.discard(path)
            with contextlib.suppress(Exception):
                from transformers.utils import logging as hf_logging

                hf_logging.enable_progress_bar()
        for name, (handlers, propagate) in saved_loggers.items():
            logger = logging.getLogger(name)
            for handler in logger.handlers:
                if getattr(handler, "_instructmill_engine_log", False):
                    handler.close()
            logger.handlers = handlers
            logger.propagate = propagate
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if config_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(config_path)
        with contextlib.suppress(OSError):
            if os.path.getsize(path) == 0:  # nothing was logged (or the disk was full): no empty file
                os.unlink(path)


@contextlib.contextmanager
def console_to_log(path: str | None = None) -> Iterator[None]:
    """Point file descriptors 1 and 2 at the log file for the block (no-op without one).

    Processes started inside the block (vLLM's engine core) inherit the log as their stdout and
    stderr; this process gets its console back at the end, also when the block raises (e.g. on
    Ctrl-C). While it lasts, :func:`console_fd` is a copy of the console's stderr, for messages
    that must reach the user.
    """
    global _console
    path = path or engine_log_path()
    if not path or _console is not None:  # nested: already redirected
        yield
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    saved_out, saved_err = os.dup(1), os.dup(2)
    with _state_lock:
        _console = saved_err
    try:
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        with _state_lock:
            _console = None
        for fd in (saved_out, saved_err, log_fd):
            os.close(fd)


def log_exception(exc: BaseException, path: str | None = None) -> bool:
    """Append ``exc``'s traceback to the log file; return whether there was one to write to."""
    import traceback

    path = path or engine_log_path()
    if not path:
        return False
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write("".join(traceback.format_exception(exc)))
    except OSError:
        return False
    return True
