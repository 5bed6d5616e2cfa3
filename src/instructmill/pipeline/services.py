"""Shared engine services: one engine per model, fed by every pipeline stage that names it.

A pipeline may have several stages on one model (Self-Instruct and respond on the same LLM;
back-translation of instructions and of responses on the same en->pt model). Each stage runs
in its own thread and calls its method as usual; the method talks to a *client* of a
service, which looks exactly like the backend it replaces (:class:`~instructmill.engine.llm.
LLMBackend` or :class:`~instructmill.engine.translation.TranslationBackend`). The service merges
the clients' requests into the engine's batches:

* **LLMs**: the engine batches. The service opens the backend's request loop
  (:meth:`~instructmill.engine.llm.LLMBackend.request_loop`): vLLM's continuous-batching loop,
  which hands new requests to vLLM's scheduler between engine steps, or the gather-and-batch loop
  of the other backends (:mod:`instructmill.engine.request_loop`). The service only submits
  each client call's requests and meters the engine.
* **translation**: ``translate_batch`` calls from every stage go into one shared length-sorting
  :class:`~instructmill.engine.scheduler.Batcher` (token budget) and run on the backend's
  ``parallel_batches`` worker threads. A free worker cuts a batch as soon as the held items fill
  one, or when the oldest held item has waited ``max_wait_ms``; fewer items than a full batch are
  shared among the idle workers, so no replica idles while another runs them all. While every
  worker is busy, items from all stages accumulate, so the next batches are fuller than any one
  stage's. Each caller gets its own items back, in its order.

Clients keep the backend's semantics: prompt validation, seeds (each client draws sample seeds
from its own generator seeded like the backend, so a stage gets the same seeds as when it runs
alone), stop strings and ordering come from :class:`LLMBackend`; the client only replaces
``_generate``. An engine error reaches only the callers whose requests were in the failing
batch: a merged batch that fails is re-run per caller, so a caller whose requests are fine
still gets its results.

Measurements (:meth:`LLMService.stats`, :meth:`TranslationService.stats`, kept by
:class:`~instructmill.pipeline.meter.EngineMeter`): requests, tokens in and out, engine batches,
and the engine's *busy fraction*, plus a timeline of cumulative output tokens for the report.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import itertools
import threading
import time
from typing import Any

from ..engine.llm import LLMBackend, Prompt, Request, Sample
from ..engine.request_loop import EngineClosedError, fail_future
from ..engine.scheduler import Batcher, BatchingOptions, WorkItem, make_batches
from ..engine.translation import Encoded, TranslationBackend
from ..errors import OptionError
from .meter import EngineMeter

__all__ = ["LLMService", "TranslationService", "ServiceClosedError"]

#: A request reached a service that is closed (or whose engine stopped after an error).
ServiceClosedError = EngineClosedError


class _Client:
    """What both clients share: the service, the stage, and the real backend's public attributes
    (unknown attributes are read from it, e.g. ``dtype``); ``close()`` does nothing: the service
    owns the engine."""

    _service: Any

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._service.backend, name)

    def settings(self) -> dict[str, Any]:
        return self._service.backend.settings()

    def close(self) -> None:
        """Nothing to release: the engine belongs to the service."""


# --------------------------------------------------------------------------------- LLMs
class _LLMClient(_Client, LLMBackend):
    """An :class:`LLMBackend` whose ``_generate`` hands its requests to a shared :class:`LLMService`.

    Everything else (prompt encoding, validation, seeds, stop strings, order) is the base
    class's; encoding and decoding are the real backend's.
    """

    def __init__(self, service: "LLMService", stage: str):
        backend = service.backend
        LLMBackend.__init__(self, backend.options)
        self._service = service
        self.stage = stage
        self.name = backend.name
        self.model = backend.model
        self.tokenizer = backend.tokenizer
        self.max_model_len = backend.max_model_len
        # what the engine can do decides how prompts are built and sent (class attributes there)
        self.tokenizes_locally = backend.tokenizes_locally
        self.supports_json_schema = backend.supports_json_schema
        self.budget_batching = backend.budget_batching

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        with self._service._tokenizer_lock:
            return self._service.backend.encode_prompt(prompt)

    def decode(self, token_ids: list[int]) -> str:
        with self._service._tokenizer_lock:
            return self._service.backend.decode(token_ids)

    def count_tokens(self, prompt: Prompt) -> int:
        with self._service._tokenizer_lock:
            return self._service.backend.count_tokens(prompt)

    def is_empty(self, prompt: Prompt) -> bool:  # type: ignore[override]
        return self._service.backend.is_empty(prompt)

    def _generate(self, requests: list[Request]) -> list[Sample]:
        futures = self._service._loop.submit(requests, tag=self.stage)
        return [future.result() for future in futures]


class LLMService:
    """One shared LLM engine for every stage that names it. Thread-safe.

    Args:
        backend: the engine (the service owns it from now on: while the service runs, call it
            only through clients).
        name: the engine's name in the pipeline (reports, thread names).
        mode: how the engine batches (:meth:`~instructmill.engine.llm.LLMBackend.request_loop`):
            ``"auto"`` (the engine's own: ``"engine"`` on vLLM, else ``"batch"``), ``"engine"``
            (vLLM's continuous loop) or ``"batch"`` (gathered batches of up to ``max_num_seqs``).
        gather_ms: batch mode: when fewer than ``max_num_seqs`` requests are queued, wait up to
            this long (milliseconds) for more before running the batch.
        close_backend: :meth:`close` also closes the backend (default).

    Raises:
        OptionError: unknown ``mode``, negative ``gather_ms``, or ``mode="engine"`` for a backend
            without a continuous loop.
    """

    def __init__(self, backend: LLMBackend, *, name: str, mode: str = "auto", gather_ms: float = 5.0,
                 close_backend: bool = True):
        self.backend = backend
        self.name = name
        self.close_backend = close_backend
        self._meter = EngineMeter()
        self._state = threading.Lock()
        self._tokenizer_lock = threading.Lock()
        self._closed = False
        self._clients: dict[str, _LLMClient] = {}
        self._loop = backend.request_loop(name=name, mode=mode, gather_ms=gather_ms,
                                          label=f"LLM service {name!r}", listener=self._meter)
        self.mode = self._loop.mode

    # ------------------------------------------------------------------ public
    def client(self, stage: str) -> LLMBackend:
        """An :class:`LLMBackend` proxy for ``stage`` (the same object for the same stage name).

        Call ``client.generate(...)`` from the stage's thread as with any backend; its requests are
        merged with the other stages' requests into the engine's batches.

        Raises:
            ServiceClosedError: the service is closed.
        """
        with self._state:
            if self._closed:
                raise ServiceClosedError(f"LLM service {self.name!r} is closed")
            client = self._clients.get(stage)
            if client is None:
                client = self._clients[stage] = _LLMClient(self, stage)
            return client

    def stats(self) -> dict[str, Any]:
        """Counters of the engine so far.

        Returns:
            ``{"engine": name, "kind": "llm", "mode", "backend", "model", "requests",
            "prompt_tokens", "output_tokens", "busy_seconds", "wall_seconds", "busy_fraction",
            "output_tokens_per_second", "batches" (engine batches; vLLM: engine steps),
            "mean_batch_size" (requests per batch; vLLM: running requests per step),
            "mean_in_flight" (time-weighted requests held by the engine while busy),
            "max_in_flight", "errors", "per_stage": {stage: {"calls", "requests",
            "requests_done", "prompt_tokens", "output_tokens", "errors"}},
            "timeline": [(seconds since the first request, cumulative output tokens), ...]}``.
            ``wall_seconds`` runs from the first request to the last result (to now while requests
            are pending); ``busy_fraction = busy_seconds / wall_seconds``.
        """
        snap = self._meter.snapshot()
        return {"engine": self.name, "kind": "llm", "mode": self.mode, "backend": self.backend.name,
                "model": self.backend.model, **snap}

    def close(self) -> None:
        """Stop the engine loop (requests still queued, or running in vLLM, fail with
        :class:`ServiceClosedError`), then close the backend when ``close_backend``. Idempotent."""
        with self._state:
            first = not self._closed
            self._closed = True
        self._loop.close()
        if first and self.close_backend:
            self.backend.close()

    def __enter__(self) -> "LLMService":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------- translation
class _Job:
    """One client ``translate_batch`` call: its outputs fill in as engine batches finish."""

    __slots__ = ("stage", "outputs", "remaining", "future", "call")

    def __init__(self, stage: str, n: int, call: int):
        self.stage = stage
        self.outputs: list[str | None] = [None] * n
        self.remaining = n
        self.future: cf.Future = cf.Future()
        self.call = call


class _TranslationClient(_Client, TranslationBackend):
    """A :class:`TranslationBackend` whose ``translate_batch`` goes through a :class:`TranslationService`.

    ``encode``, ``settings`` and the language attributes are the real backend's; unknown
    attributes are read from it too. ``parallel_batches`` is the service's ``client_parallel_batches``
    (calls one stage may have waiting at once, so the service always holds the next batch while
    its workers run). ``stats`` counts this stage's calls (``busy_seconds``: time spent waiting).
    """

    def __init__(self, service: "TranslationService", stage: str):
        TranslationBackend.__init__(self)
        backend = service.backend
        self._service = service
        self.stage = stage
        self.name = backend.name
        self.model = backend.model
        self.source_lang = backend.source_lang
        self.target_lang = backend.target_lang
        self.max_input_tokens = backend.max_input_tokens
        self.parallel_batches = service.client_parallel_batches

    def encode(self, texts: list[str]) -> list[Encoded]:
        return self._service.backend.encode(texts)

    def translate_batch(self, batch: list[Encoded]) -> list[str]:
        start = time.perf_counter()
        outputs = self._service._translate(self.stage, batch)
        self.stats.add(segments=len(batch), source_tokens=sum(e.length for e in batch), target_tokens=0,
                       seconds=time.perf_counter() - start)
        return outputs


class TranslationService:
    """One shared translation model direction (a :class:`TranslationBackend`) for every stage that uses it.

    Args:
        backend: one direction of a model (the service owns it from now on).
        name: the engine's name in the pipeline.
        batching: token budget / batch size / sort window of the merged batches (default:
            :class:`~instructmill.engine.scheduler.BatchingOptions`).
        max_wait_ms: how long held items may wait for more before a batch smaller than the
            budget is cut (milliseconds).
        client_parallel_batches: ``translate_batch`` calls one client lets a stage have in flight
            (default: twice the backend's ``parallel_batches``).
        close_backend: :meth:`close` also closes the backend (default).

    Raises:
        OptionError: negative ``max_wait_ms`` or a ``client_parallel_batches`` below 1.
    """

    def __init__(self, backend: TranslationBackend, *, name: str, batching: BatchingOptions | None = None,
                 max_wait_ms: float = 2.0, client_parallel_batches: int | None = None,
                 close_backend: bool = True):
        if max_wait_ms < 0:
            raise OptionError("max_wait_ms", max_wait_ms, "must be >= 0")
        workers = max(1, int(backend.parallel_batches))
        if client_parallel_batches is None:
            client_parallel_batches = 2 * workers
        if client_parallel_batches < 1:
            raise OptionError("client_parallel_batches", client_parallel_batches, "must be a positive integer")
        self.backend = backend
        self.name = name
        self.batching = batching or BatchingOptions()
        self.max_wait_s = max_wait_ms / 1000.0
        self.client_parallel_batches = client_parallel_batches
        self.close_backend = close_backend
        self._meter = EngineMeter()
        self._cond = threading.Condition()
        self._batcher: Batcher[tuple[_Job, int, Encoded]] = Batcher(self.batching)
        self._held_tokens = 0  # source tokens of items pushed and not yet cut into a batch
        self._oldest: float | None = None  # arrival of the oldest item not yet cut
        self._cut: collections.deque[list[WorkItem]] = collections.deque()  # batches cut, not yet taken
        self._idle = 0  # workers waiting for a batch
        self._index = itertools.count()
        self._calls = itertools.count()
        self._closed = False
        self._clients: dict[str, _TranslationClient] = {}
        self._target_base = backend.stats.target_tokens
        self._workers = [threading.Thread(target=self._work, daemon=True, name=f"instructmill-mt-{name}-{i}")
                         for i in range(workers)]
        for thread in self._workers:
            thread.start()

    # ------------------------------------------------------------------ public
    def client(self, stage: str) -> TranslationBackend:
        """A :class:`TranslationBackend` proxy for ``stage`` (the same object for the same name):
        ``translate_batch`` calls from several stages/threads are merged into token-budget
        batches run on the real backend's ``parallel_batches`` workers."""
        with self._cond:
            if self._closed:
                raise ServiceClosedError(f"translation service {self.name!r} is closed")
            client = self._clients.get(stage)
            if client is None:
                client = self._clients[stage] = _TranslationClient(self, stage)
            return client

    def stats(self) -> dict[str, Any]:
        """Counters of the engine so far: the keys of :meth:`LLMService.stats` (``kind``:
        ``"translation"``). Requests are segments; ``prompt_tokens`` are source tokens and
        ``output_tokens`` target tokens as the backend counts them. The backend counts target tokens
        per batch, not per segment, so ``per_stage[...]["output_tokens"]`` is ``None``;
        ``mean_callers_per_batch`` says how many client calls shared an engine batch."""
        snap = self._meter.snapshot()
        snap["output_tokens"] = self.backend.stats.target_tokens - self._target_base
        wall = snap["wall_seconds"]
        snap["output_tokens_per_second"] = round(snap["output_tokens"] / wall, 2) if wall > 0 else 0.0
        snap["workers"] = len(self._workers)
        return {"engine": self.name, "kind": "translation", "mode": "batch", "backend": self.backend.name,
                "model": self.backend.model, "source_lang": self.backend.source_lang,
                "target_lang": self.backend.target_lang, **snap}

    def close(self) -> None:
        """Stop the workers (batches running finish; items still held fail with
        :class:`ServiceClosedError`), then close the backend when ``close_backend``. Idempotent."""
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
        if first and self.close_backend:
            self.backend.close()

    def __enter__(self) -> "TranslationService":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- clients
    def _translate(self, stage: str, batch: list[Encoded]) -> list[str]:
        if not batch:
            return []
        job = _Job(stage, len(batch), next(self._calls))
        with self._cond:
            if self._closed:
                raise ServiceClosedError(f"translation service {self.name!r} is closed")
            self._meter.submit(stage, len(batch), sum(e.length for e in batch))
            if self._oldest is None:
                self._oldest = time.perf_counter()
            for pos, encoded in enumerate(batch):
                self._batcher.push(WorkItem(next(self._index), encoded.length, (job, pos, encoded)))
                self._held_tokens += max(1, encoded.length)
            self._cond.notify_all()
        return job.future.result()

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
        self._meter.start(len(batch), callers=len(calls))
        try:
            outputs = self.backend.translate_batch([item.payload[2] for item in batch])
            if len(outputs) != len(batch):
                raise RuntimeError(f"{self.backend.name} returned {len(outputs)} translations "
                                   f"for a batch of {len(batch)}")
        except Exception as exc:  # noqa: BLE001 - goes to the callers
            self._meter.stop(len(batch), None)
            if len(calls) > 1:  # isolate the failing caller: re-run each call's items alone
                for call in sorted(calls):
                    self._run_batch([item for item in batch if item.payload[0].call == call])
            else:
                self._fail_batch(batch, exc)
            return
        self._meter.stop(len(batch), total_output=self.backend.stats.target_tokens - self._target_base)
        for item, out in zip(batch, outputs):
            job, pos, encoded = item.payload
            self._meter.prompt(encoded.length)
            if job.future.done():
                continue
            job.outputs[pos] = out
            job.remaining -= 1
            if job.remaining == 0:
                job.future.set_result(list(job.outputs))
                self._meter.complete(job.stage, len(job.outputs), None)

    def _fail_batch(self, batch: list[WorkItem], exc: BaseException | None) -> None:
        for item in batch:
            job = item.payload[0]
            reason = exc if exc is not None else ServiceClosedError(
                f"translation service {self.name!r} closed before a call of stage {job.stage!r} finished")
            if fail_future(job.future, reason):
                self._meter.complete(job.stage, len(job.outputs), None, failed=True)
