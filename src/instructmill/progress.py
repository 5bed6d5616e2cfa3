"""Progress that never goes silent: a heartbeat beside the progress bar of a long run.

A bar advances only when records finish; while an engine works on a chunk (or starts, or a
model converts) it would sit still and look hung. :class:`Heartbeat` refreshes the bar on a
terminal every ``interval`` seconds (its clock keeps moving) and, when stderr is not a terminal
(logs, CI, ``nohup``), prints one line every ``line_seconds`` seconds once the run has lasted that
long: ``instructmill: 12,000 records read, 11,936 written, 83 s``.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Any, Callable, TextIO

__all__ = ["Heartbeat"]


class Heartbeat:
    """A daemon thread that keeps a run's progress visible (see the module docstring).

    Args:
        bar: a tqdm bar (refreshed when enabled), or ``None``.
        status: returns the heartbeat line's text (e.g. ``"120 records read, 96 written"``).
        interval: seconds between bar refreshes.
        line_seconds: seconds between heartbeat lines when the bar is disabled (not a terminal).
        stream: where lines go (default: stderr).

    Use as a context manager; :meth:`stop` joins the thread.
    """

    def __init__(self, bar: Any, status: Callable[[], str], *, interval: float = 2.0,
                 line_seconds: float = 10.0, stream: TextIO | None = None):
        self.bar = bar
        self.status = status
        self.interval = interval
        self.line_seconds = line_seconds
        self.stream = stream or sys.stderr
        self.lines = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="instructmill-heartbeat", daemon=True)
        self._started = time.monotonic()

    def _bar_enabled(self) -> bool:
        return self.bar is not None and not getattr(self.bar, "disable", True)

    def _run(self) -> None:
        next_line = self._started + self.line_seconds
        while not self._stop.wait(self.interval):
            if self._bar_enabled():
                try:
                    self.bar.refresh()
                except Exception:  # noqa: BLE001 - a closed bar: nothing left to show
                    return
                continue
            now = time.monotonic()
            if now >= next_line:
                elapsed = now - self._started
                try:
                    text = self.status()
                except Exception:  # noqa: BLE001 - counters changing under us: try at the next tick
                    continue
                print(f"instructmill: {text}, {elapsed:.0f} s", file=self.stream, flush=True)
                self.lines += 1
                next_line = now + self.line_seconds

    def start(self) -> Heartbeat:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
