"""A shared pool of translation workers: ``translate_batch`` calls from many threads merged into
token-budget batches of one model direction.

Every caller's segments go into one length-sorting :class:`~instructmill.engine.scheduler.Batcher`
(token budget) and run on the backend's ``parallel_batches`` worker threads. A free worker cuts a
batch as soon as the held items fill one, or when the oldest held item has waited ``max_wait_ms``;
fewer items than a full batch are shared among the idle workers, so no replica idles while
another runs them all. While every worker is busy, items from all callers accumulate, so the next
batches are fuller than any one caller's. Each caller gets its own items back, in its order; a
merged batch that fails is re-run per call, so the error reaches only the calls at fault.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import itertools
import threading
import time

from ..errors import OptionError
from .request_loop import EngineClosedError, LoopListener, fail_future
from .scheduler import Batcher, BatchingOptions, WorkItem, make_batches
from .translation import Encoded, TranslationBackend

__all__ = ["TranslationPool"]


class _Job:
    """One ``translate`` call: its outputs fill in as engine batches finish."""

    __slots__ = ("tag", "outputs", "remaining", "future", "call")

    def __init__(self, tag: str, n: int, call: int):
        self.tag = tag
        self.outputs: list[str | None] = [None] * n
        self.remaining = n
        self.future: cf.Future = cf.Future()
        self.call = call


class TranslationPool:
    """Worker threads that run one translation direction for every caller (module docstring). Thread-safe.

    Args:
        backend: one direction of a model (while the pool runs, call it only through the pool).
        name: the engine's name (threads ``instructmill-mt-<name>-<i>``).
        label: how messages name the pool (default ``"translation engine '<name>'"``).
        batching: token budget / batch size / sort window of the merged batches (default:
            :class:`~instructmill.engine.scheduler.BatchingOptions`).
        max_wait_ms: how long held items may wait for more before a batch smaller than the
            budget is cut (milliseconds).
        listener: receives the pool's events (:class:`~instructmill.engine.request_loop.LoopListener`;
            ``stop`` gets ``total_output``: the backend's target tokens since the pool started).

    Raises:
        OptionError: negative ``max_wait_ms``.
    """

    def __init__(self, backend: TranslationBackend, *, name: str, label: str | None = None,
                 batching: BatchingOptions | None = None, max_wait_ms: float = 2.0,
                 listener: LoopListener | None = None):
        if max_wait_ms < 0:
            raise OptionError("max_wait_ms", max_wait_ms, "must be >= 0")
        self.backend = backend
        self.name = name
        self.label = label or f"translation engine {name!r}"
        self.batching = batching or BatchingOptions()
        self.max_wait_s = max_wait_ms / 1000.0
        self.listener = listener or LoopListener()
        self._cond = threading.Condition()
        self._batcher: Batcher[tuple[_Job, int, Encoded]] = Batcher(self.batching)
        self._held_tokens = 0  # source tokens of items pushed and not yet cut into a batch
        self._oldest: float | None = None  # arrival of the oldest item not yet cut
        self._cut: collections.deque[list[WorkItem]] = collections.deque()  # batches cut, not yet taken
        self._idle = 0  # workers waiting for a batch
        self._index = itertools.count()
        self._calls = itertools.count()
        self._closed = False
        self.target_base = backend.stats.target_tokens
        self._workers = [threading.Thread(target=self._work, daemon=True, name=f"instructmill-mt-{name}-{i}")
                         for i in range(max(1, int(backend.parallel_batches)))]
        for thread in self._workers:
            thread.start()

    @property
    def workers(self) -> list[threading.Thread]:
        """The worker threads (one per ``backend.parallel_batches``)."""
        return list(self._workers)

    def translate(self, batch: list[Encoded], *, tag: str = "") -> list[str]:
        """Translate ``batch`` (merged with other callers' items); its outputs, in its order.

        Raises:
            EngineClosedError: the pool is closed (or closed before this call finished).
            Exception: what the backend raised for a batch holding this call's items.
        """
        if not batch:
            return []
        job = _Job(tag, len(batch), next(self._calls))
        with self._cond:
            if self._closed:
                raise EngineClosedError(f"{self.label} is closed")
            self.listener.submit(tag, len(batch), sum(e.length for e in batch))
            if self._oldest is None:
                self._oldest = time.perf_counter()
            for pos, encoded in enumerate(batch):
                self._batcher.push(WorkItem(next(self._index), encoded.length, (job, pos, encoded)))
                self._held_tokens += max(1, encoded.length)
            self._cond.notify_all()
        return job.future.result()

    def close(self) -> None:
        """Stop the workers: batches running finish; items still held fail with
        :class:`~instructmill.engine.request_loop.EngineClosedError`. Idempotent; the backend stays
        open (its owner closes it)."""
        with self._cond:
            first = not self._closed
            self._closed = True
            held = (list(self._cut) + list(self._batcher.flush())) if first else []
            self._cut.clear()
            self._held_tokens, self._oldest = 0, None
            self._cond.notify_all()
        for batch in held:
            self._fail_batch(batch, None)
        for thread in self._workers:
            thread.join()

    # ---------------------------------------------------------------- workers
    def _full(self) -> bool:
        """The held items can fill at least one batch (count or token budget)."""
        held = len(self._batcher)
        return held >= self.batching.max_batch_size or self._held_tokens >= self.batching.max_batch_tokens

    def _cut_held(self) -> None:
        """Cut every held item into batches (call with the condition held).

        Enough items for a full batch: budget batches, as the Batcher cuts them. Fewer: split them
        over the idle workers (one batch each, by length), so no replica sits idle while another
        runs everything; when workers are busy, items keep accumulating into fuller batches.
        """
        full = self._full()
        batches = list(self._batcher.flush())
        self._held_tokens, self._oldest = 0, None
        items = [item for batch in batches for item in batch]
        idle = max(1, min(self._idle, len(items)))
        if full or idle == 1:
            self._cut.extend(batches)
            return
        share = min(-(-len(items) // idle), self.batching.max_batch_size)
        options = BatchingOptions(max_batch_size=share, max_batch_tokens=self.batching.max_batch_tokens,
                                  sort_window=max(share, len(items)))
        self._cut.extend(make_batches(items, options))

    def _take(self) -> list[WorkItem] | None:
        """The next batch to run (``None``: closed). Call with the condition held."""
        self._idle += 1
        try:
            while True:
                if self._closed:
                    return None
                batch = self._cut.popleft() if self._cut else self._batcher.ready()
                if batch is None:
                    if not len(self._batcher):
                        self._cond.wait()
                        continue
                    waited = time.perf_counter() - (self._oldest or 0.0)
                    if not (self._full() or waited >= self.max_wait_s):
                        self._cond.wait(timeout=self.max_wait_s - waited)
                        continue
                    self._cut_held()
                    if len(self._cut) > 1:
                        self._cond.notify_all()  # wake idle workers for the other batches
                    continue
                if len(self._batcher) and self._oldest is None:
                    self._oldest = time.perf_counter()
                live = [item for item in batch if not item.payload[0].future.done()]  # skip failed calls
                if live:
                    return live
        finally:
            self._idle -= 1

    def _work(self) -> None:
        while True:
            with self._cond:
                batch = self._take()
            if batch is None:
                return
            self._run_batch(batch)

    def _run_batch(self, batch: list[WorkItem]) -> None:
        calls = {item.payload[0].call for item in batch}
        self.listener.start(len(batch), callers=len(calls))
        try:
            outputs = self.backend.translate_batch([item.payload[2] for item in batch])
            if len(outputs) != len(batch):
                raise RuntimeError(f"{self.backend.name} returned {len(outputs)} translations "
                                   f"for a batch of {len(batch)}")
        except Exception as exc:  # noqa: BLE001 - goes to the callers
            self.listener.stop(len(batch), None)
            if len(calls) > 1:  # isolate the failing caller: re-run each call's items alone
                for call in sorted(calls):
                    self._run_batch([item for item in batch if item.payload[0].call == call])
            else:
                self._fail_batch(batch, exc)
            return
        self.listener.stop(len(batch), total_output=self.backend.stats.target_tokens - self.target_base)
        for item, out in zip(batch, outputs):
            job, pos, encoded = item.payload
            self.listener.prompt(encoded.length)
            if job.future.done():
                continue
            job.outputs[pos] = out
            job.remaining -= 1
            if job.remaining == 0:
                job.future.set_result(list(job.outputs))
                self.listener.complete(job.tag, len(job.outputs), None)

    def _fail_batch(self, batch: list[WorkItem], exc: BaseException | None) -> None:
        for item in batch:
            job = item.payload[0]
            reason = exc if exc is not None else EngineClosedError(
                f"{self.label} closed before a call of {job.tag!r} finished")
            if fail_future(job.future, reason):
                self.listener.complete(job.tag, len(job.outputs), None, failed=True)
