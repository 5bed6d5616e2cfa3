"""The engine meter: counters, busy time and the output-token timeline of one shared engine.

An :class:`EngineMeter` is the :class:`~instructmill.engine.request_loop.LoopListener` of an LLM
service's request loop and is fed directly by a translation service's workers
(:mod:`instructmill.pipeline.services`); :meth:`EngineMeter.snapshot` is what their ``stats()``
report. The *busy fraction* is the time the engine had requests in flight divided by the wall
time from the first request to the last result (the time during which the engine had work to do).
"""
from __future__ import annotations

import threading
import time
from typing import Any

from ..engine.request_loop import LoopListener

__all__ = ["EngineMeter"]


class EngineMeter(LoopListener):
    """Counters, busy time and the output-token timeline of one engine (thread-safe).

    Events: ``submit`` (a client handed over requests), ``start`` / ``stop`` (the engine took /
    released requests: busy while any is held), ``complete`` (a request's result or error went
    back to its caller). Times are ``time.perf_counter`` seconds.
    """

    def __init__(self, *, resolution: float = 0.05, max_points: int = 2000):
        self._lock = threading.Lock()
        self._resolution = resolution
        self._max_points = max_points
        self.first: float | None = None
        self.last_done: float | None = None
        self._t: float | None = None  # time of the last accounting step
        self.pending = 0  # submitted, not yet completed
        self.in_flight = 0  # held by the engine
        self.max_in_flight = 0
        self.busy = 0.0
        self.occupancy = 0.0  # integral of in_flight over time (request-seconds)
        self.requests = 0
        self.prompt_tokens = 0
        self.output_tokens = 0
        self.batches = 0
        self.batch_items = 0
        self.batch_callers = 0
        self.errors = 0
        self.per_stage: dict[str, dict[str, Any]] = {}
        self.timeline: list[tuple[float, int]] = []

    def _advance(self, now: float) -> None:
        if self._t is not None:
            dt = now - self._t
            if self.in_flight > 0:
                self.busy += dt
                self.occupancy += self.in_flight * dt
        self._t = now

    def _stage(self, stage: str) -> dict[str, Any]:
        entry = self.per_stage.get(stage)
        if entry is None:
            entry = self.per_stage[stage] = {"calls": 0, "requests": 0, "requests_done": 0,
                                             "prompt_tokens": 0, "output_tokens": 0, "errors": 0}
        return entry

    def submit(self, stage: str, requests: int, prompt_tokens: int) -> None:
        now = time.perf_counter()
        with self._lock:
            if self.first is None:
                self.first = now
                self.timeline.append((0.0, 0))
            self._advance(now)
            self.pending += requests
            entry = self._stage(stage)
            entry["calls"] += 1
            entry["requests"] += requests
            entry["prompt_tokens"] += prompt_tokens

    def start(self, n: int, *, callers: int = 1, batch: bool = True) -> None:
        now = time.perf_counter()
        with self._lock:
            self._advance(now)
            self.in_flight += n
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if batch:
                self.batches += 1
                self.batch_items += n
                self.batch_callers += callers

    def step(self) -> None:
        """One vLLM engine step (counted as a batch of the requests in flight)."""
        with self._lock:
            self.batches += 1
            self.batch_items += self.in_flight

    def stop(self, n: int, output_tokens: int | None = None, *, total_output: int | None = None) -> None:
        """The engine released ``n`` requests having produced ``output_tokens`` more tokens (or
        ``total_output`` tokens so far, for engines that count cumulatively)."""
        if n <= 0:
            return
        now = time.perf_counter()
        with self._lock:
            self._advance(now)
            self.in_flight -= n
            if output_tokens:
                self.output_tokens += output_tokens
            if total_output is not None:
                self.output_tokens = max(self.output_tokens, total_output)
            t = now - self.first if self.first is not None else 0.0
            if len(self.timeline) > 1 and t - self.timeline[-2][0] < self._resolution:
                self.timeline[-1] = (t, self.output_tokens)  # coalesce points closer than the resolution
            else:
                self.timeline.append((t, self.output_tokens))
            if len(self.timeline) > self._max_points:
                self.timeline = self.timeline[:-1:2] + [self.timeline[-1]]
                self._resolution *= 2

    def complete(self, stage: str, n: int, output_tokens: int | None, *, failed: bool = False) -> None:
        now = time.perf_counter()
        with self._lock:
            self._advance(now)
            self.pending -= n
            self.last_done = now
            entry = self._stage(stage)
            if failed:
                self.errors += n
                entry["errors"] += n
            else:
                self.requests += n
                entry["requests_done"] += n
                if output_tokens is None:
                    entry["output_tokens"] = None
                elif entry["output_tokens"] is not None:
                    entry["output_tokens"] += output_tokens

    def prompt(self, tokens: int) -> None:
        with self._lock:
            self.prompt_tokens += tokens

    def snapshot(self) -> dict[str, Any]:
        now = time.perf_counter()
        with self._lock:
            self._advance(now)
            if self.first is None:
                wall = 0.0
            else:
                end = now if (self.pending > 0 or self.in_flight > 0 or self.last_done is None) else self.last_done
                wall = max(0.0, end - self.first)
            return {
                "requests": self.requests,
                "prompt_tokens": self.prompt_tokens,
                "output_tokens": self.output_tokens,
                "busy_seconds": round(self.busy, 4),
                "wall_seconds": round(wall, 4),
                "busy_fraction": round(min(1.0, self.busy / wall), 4) if wall > 0 else 0.0,
                "output_tokens_per_second": round(self.output_tokens / wall, 2) if wall > 0 else 0.0,
                "batches": self.batches,
                "mean_batch_size": round(self.batch_items / self.batches, 2) if self.batches else 0.0,
                "mean_callers_per_batch": (round(self.batch_callers / self.batches, 2)
                                           if self.batches and self.batch_callers else None),
                "mean_in_flight": round(self.occupancy / self.busy, 2) if self.busy > 0 else 0.0,
                "max_in_flight": self.max_in_flight,
                "in_flight": self.in_flight,
                "pending": self.pending,
                "errors": self.errors,
                "per_stage": {k: dict(v) for k, v in self.per_stage.items()},
                "timeline": [(round(t, 4), n) for t, n in self.timeline],
            }
