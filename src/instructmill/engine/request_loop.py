"""Submit-and-collect: one thread owns an LLM engine; callers on any thread hand it requests.

:meth:`RequestLoop.submit` takes the :class:`~instructmill.engine.llm.Request` s of one call and
returns one future per request; the loop's thread feeds them to the engine and resolves each
future with its :class:`~instructmill.engine.llm.Sample` (or the exception that failed it). How
the requests are batched is the engine's business, chosen by
:meth:`~instructmill.engine.llm.LLMBackend.request_loop`:

* :class:`GatherLoop` (the default of every backend): gathers what the callers queued (everything
  queued, up to ``max_num_seqs``; when fewer are queued it waits up to ``gather_ms`` for more) and
  runs it in one ``_generate`` call. A merged batch that fails is re-run per call, so the error
  reaches only the calls whose requests were in the failing batch.
* vLLM's continuous loop (:class:`~instructmill.engine.vllm_backend.VLLMEngineLoop`): requests go
  into vLLM's own scheduler between engine steps.

A :class:`LoopListener` sees what happens (submissions, requests taken and released by the
engine, engine steps, completions) without the loop knowing what it measures; the pipeline's
meter is one (:mod:`instructmill.pipeline.meter`). Every event carries the caller's ``tag`` (a
stage name, say) so per-caller counts need no bookkeeping on the caller's side.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import itertools
import queue
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from ..errors import InstructmillError

if TYPE_CHECKING:  # pragma: no cover
    from .llm import LLMBackend, Request, Sample

__all__ = ["EngineClosedError", "GatherLoop", "LoopItem", "LoopListener", "RequestLoop", "fail_future"]


class EngineClosedError(InstructmillError):
    """A request reached a loop that is closed (or whose engine stopped after an error)."""


class LoopListener:
    """What a :class:`RequestLoop` reports, as no-op methods (override the ones you count).

    Events, in the order a request meets them: ``submit`` (a caller handed over ``requests``
    requests of ``prompt_tokens`` tokens), ``start`` (the engine took ``n`` requests: one batch of
    ``callers`` calls, or, ``batch=False``, requests joining a continuous batch), ``prompt`` (the
    engine read a prompt of ``tokens`` tokens), ``step`` (one continuous-batching engine step),
    ``stop`` (the engine released ``n`` requests having produced ``output_tokens`` more tokens, or
    ``total_output`` tokens in all),
    ``complete`` (``n`` requests of ``tag`` went back to their caller; ``failed`` with an error).
    """

    def submit(self, tag: str, requests: int, prompt_tokens: int) -> None:
        """A caller handed over requests."""

    def start(self, n: int, *, callers: int = 1, batch: bool = True) -> None:
        """The engine took ``n`` requests."""

    def prompt(self, tokens: int) -> None:
        """The engine read a prompt of ``tokens`` tokens."""

    def step(self) -> None:
        """One continuous-batching engine step."""

    def stop(self, n: int, output_tokens: int | None = None, *, total_output: int | None = None) -> None:
        """The engine released ``n`` requests (``total_output``: output tokens so far, for engines that
        count cumulatively)."""

    def complete(self, tag: str, n: int, output_tokens: int | None, *, failed: bool = False) -> None:
        """``n`` requests of ``tag`` went back to their caller."""


@dataclass
class LoopItem:
    """One request of one :meth:`RequestLoop.submit` call, waiting for its sample."""

    request: "Request"
    tag: str
    call: int  # submit call id: requests of one call fail together, never with another call's
    future: cf.Future


def fail_future(future: cf.Future, exc: BaseException) -> bool:
    """Fail ``future`` with ``exc`` unless it is already done; whether it was failed now."""
    if future.done():
        return False
    future.set_exception(exc)
    return True


_STOP = object()


class RequestLoop(ABC):
    """One engine thread fed through a thread-safe queue (see the module docstring). Thread-safe.

    Args:
        backend: the engine (while the loop runs, call it only through the loop).
        name: the engine's name (the thread is ``instructmill-llm-<name>``).
        label: how messages name the loop (default ``"LLM engine '<name>'"``).
        listener: receives the loop's events (default: none).

    Subclasses implement :meth:`_run` (the engine thread's body: take entries from ``_queue``,
    return when one is ``_STOP``) and set :attr:`mode`.
    """

    #: how the loop batches (``"batch"`` or ``"engine"``), for reports
    mode: str = "batch"

    def __init__(self, backend: "LLMBackend", *, name: str, label: str | None = None,
                 listener: LoopListener | None = None):
        self.backend = backend
        self.name = name
        self.label = label or f"LLM engine {name!r}"
        self.listener = listener or LoopListener()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._state = threading.Lock()
        self._calls = itertools.count()
        self._closed = False
        self._dead: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True, name=f"instructmill-llm-{name}")
        self._thread.start()

    # ------------------------------------------------------------------ public
    def submit(self, requests: Sequence["Request"], *, tag: str = "") -> list[cf.Future]:
        """Queue one call's requests; one future per request, in request order.

        Raises:
            EngineClosedError: the loop is closed, or its engine thread stopped after an error.
        """
        if not requests:
            return []
        call = next(self._calls)
        items = [LoopItem(r, tag, call, cf.Future()) for r in requests]
        with self._state:
            if self._closed or self._dead is not None:
                why = f" after an engine error: {self._dead}" if self._dead is not None else ""
                raise EngineClosedError(f"{self.label} is closed{why}")
            self.listener.submit(tag, len(items), sum(len(r.prompt_ids) for r in requests))
            self._queue.put(items)  # one entry per call: its requests arrive together
        return [item.future for item in items]

    def is_alive(self) -> bool:
        """Whether the engine thread still runs."""
        return self._thread.is_alive()

    def close(self) -> None:
        """Stop the engine thread: requests still queued (and, for continuous loops, running) fail
        with :class:`EngineClosedError`; a batch already running finishes. Idempotent; the backend
        stays open (its owner closes it)."""
        with self._state:
            first = not self._closed
            self._closed = True
            if first:
                self._queue.put(_STOP)
        self._thread.join()

    # ----------------------------------------------------------------- engine
    @abstractmethod
    def _run(self) -> None:
        """The engine thread's body."""

    def _main(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - reported to every waiting caller
            self._dead = exc
        finally:
            with self._state:
                if self._dead is None and not self._closed:
                    self._dead = RuntimeError("engine thread ended")
                reason = self._dead
            self._fail_queued(reason)

    def _fail_queued(self, reason: BaseException | None) -> None:
        while True:
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                return
            if entry is not _STOP:
                self._fail_items(entry, reason)

    def _fail_items(self, items: Sequence[LoopItem], reason: BaseException | None) -> None:
        """Fail ``items`` with ``reason`` (``None`` or a closing reason: :class:`EngineClosedError`)."""
        for item in items:
            exc = (reason if isinstance(reason, Exception) and not isinstance(reason, EngineClosedError)
                   else EngineClosedError(f"{self.label} closed before request {item.request.index} "
                                          f"of {item.tag!r} finished"))
            if fail_future(item.future, exc):
                self.listener.complete(item.tag, 1, None, failed=True)

    def _resolve(self, item: LoopItem, sample: "Sample") -> None:
        if not item.future.done():
            item.future.set_result(sample)
            self.listener.complete(item.tag, 1, sample.output_tokens)

    def _take(self, *, block: bool) -> tuple[list[LoopItem], bool]:
        """Everything queued now (waiting for the first entry when ``block``): ``(items, stop)``."""
        taken: list = [self._queue.get()] if block else []
        while True:
            try:
                taken.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return [item for entry in taken if entry is not _STOP for item in entry], any(e is _STOP for e in taken)


class GatherLoop(RequestLoop):
    """Gather-and-batch: up to ``max_num_seqs`` queued requests per ``backend._generate`` call.

    Args:
        backend, name, label, listener: as :class:`RequestLoop`.
        gather_ms: when fewer than ``max_num_seqs`` requests are queued, wait up to this long
            (milliseconds) for more before running the batch.

    Raises:
        OptionError: negative ``gather_ms``.
    """

    mode = "batch"

    def __init__(self, backend: "LLMBackend", *, name: str, label: str | None = None,
                 listener: LoopListener | None = None, gather_ms: float = 5.0):
        from ..errors import OptionError

        if gather_ms < 0:
            raise OptionError("gather_ms", gather_ms, "must be >= 0")
        self.gather_s = gather_ms / 1000.0
        self.max_seqs = max(1, int(backend.options.max_num_seqs))
        super().__init__(backend, name=name, label=label, listener=listener)

    def _run(self) -> None:
        pending: collections.deque[LoopItem] = collections.deque()  # taken from the queue, not yet run
        while True:
            stop = False
            if not pending:
                entry = self._queue.get()
                if entry is _STOP:
                    return
                pending.extend(entry)
            deadline = time.monotonic() + self.gather_s
            while len(pending) < self.max_seqs:
                try:
                    entry = self._queue.get_nowait()
                except queue.Empty:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    try:
                        entry = self._queue.get(timeout=remaining)
                    except queue.Empty:
                        break
                if entry is _STOP:
                    stop = True
                    break
                pending.extend(entry)
            if stop or self._closed:  # closing: what has not started yet fails
                self._fail_items(list(pending), None)
                return
            self._run_batch([pending.popleft() for _ in range(min(self.max_seqs, len(pending)))])

    def _run_batch(self, batch: list[LoopItem]) -> None:
        calls = {item.call for item in batch}
        self.listener.start(len(batch), callers=len(calls))
        try:
            samples = self.backend._generate([item.request for item in batch])
            if len(samples) != len(batch):
                raise RuntimeError(f"{self.backend.name} returned {len(samples)} samples "
                                   f"for {len(batch)} requests")
        except Exception as exc:  # noqa: BLE001 - goes to the callers
            self.listener.stop(len(batch), 0)
            if len(calls) > 1:  # isolate the failing caller: re-run each call's requests alone
                for call in sorted(calls):
                    self._run_batch([item for item in batch if item.call == call])
            else:
                self._fail_items(batch, exc)
            return
        for item in batch:
            self.listener.prompt(len(item.request.prompt_ids))
        self.listener.stop(len(batch), sum(s.output_tokens for s in samples))
        for item, sample in zip(batch, samples):
            self._resolve(item, sample)
