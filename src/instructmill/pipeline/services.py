"""Shared engine services: one engine per model, fed by every pipeline stage that names it.

A pipeline may have several stages on one model (Self-Instruct and respond on the same LLM;
back-translation of instructions and of responses on the same en->pt model). Each stage runs
in its own thread and calls its method as usual; the method talks to a *client* of a
service, which looks exactly like the backend it replaces (:class:`~instructmill.engine.llm.
LLMBackend` or :class:`~instructmill.engine.translation.TranslationBackend`). The service merges
the clients' requests into the engine's batches:

* **vLLM** (:class:`~instructmill.engine.vllm_backend.VLLMBackend`): one engine thread owns the
  ``vllm.LLM``'s ``LLMEngine`` and runs its ``add_request`` / ``step`` loop, the loop that
  ``LLM.generate`` runs internally (``vllm/entrypoints/common/offline.py: _run_engine``). New
  requests are taken from a thread-safe queue between steps, so vLLM's scheduler refills its
  running batch continuously (continuous batching, Yu et al., OSDI 2022, "Orca"; Kwon et al.,
  SOSP 2023, "vLLM") with whatever any stage has ready: the engine never waits for one stage's
  small batch while another stage has work.
* **CTranslate2 / transformers / other LLM backends**: one batching thread gathers requests from
  every stage (everything queued, up to ``max_num_seqs``; when fewer are queued it waits up to
  ``gather_ms`` for more) and runs them in one ``_generate`` call.
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

Measurements (:meth:`LLMService.stats`, :meth:`TranslationService.stats`): requests, tokens in
and out, engine batches, and the engine's *busy fraction*: the time the engine had requests in
flight divided by the wall time from the first request to the last result (the time during
which the engine had work to do), plus a timeline of cumulative output tokens for the report.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import itertools
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence

from ..engine.llm import LLMBackend, Prompt, Request, Sample
from ..engine.scheduler import Batcher, BatchingOptions, WorkItem, make_batches
from ..engine.translation import Encoded, TranslationBackend
from ..errors import InstructmillError, OptionError

__all__ = ["LLMService", "TranslationService", "ServiceClosedError"]


class ServiceClosedError(InstructmillError):
    """A request reached a service that is closed (or whose engine stopped after an error)."""


# --------------------------------------------------------------------------- measurement
class _Meter:
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


def _fail(future: cf.Future, exc: BaseException) -> bool:
    if future.done():
        return False
    future.set_exception(exc)
    return True


# --------------------------------------------------------------------------------- LLMs
@dataclass
class _LLMItem:
    """One request of one client call, waiting for its sample."""

    request: Request
    stage: str
    call: int  # client call id: requests of one call fail together, never with another call's
    future: cf.Future


_STOP = object()


class _LLMClient(LLMBackend):
    """An :class:`LLMBackend` whose ``_generate`` hands its requests to a shared :class:`LLMService`.

    Everything else (prompt encoding, validation, seeds, stop strings, order) is the base
    class's; encoding and decoding are the real backend's. Unknown attributes are read from the
    real backend (e.g. ``dtype``). ``close()`` does nothing: the service owns the engine.
    """

    def __init__(self, service: "LLMService", stage: str):
        backend = service.backend
        super().__init__(backend.options)
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

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._service.backend, name)

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
        return self._service._run(self.stage, requests)

    def settings(self) -> dict[str, Any]:
        return self._service.backend.settings()

    def close(self) -> None:
        """Nothing to release: the engine belongs to the service."""


class LLMService:
    """One shared LLM engine for every stage that names it. Thread-safe.

    Args:
        backend: the engine (the service owns it from now on: while the service runs, call it
            only through clients).
        name: the engine's name in the pipeline (reports, thread names).
        mode: ``"auto"`` (``"engine"`` for :class:`~instructmill.engine.vllm_backend.VLLMBackend`,
            else ``"batch"``), ``"engine"`` (vLLM ``LLMEngine`` add_request/step loop) or
            ``"batch"`` (batches of up to ``max_num_seqs`` requests through ``backend._generate``).
        gather_ms: batch mode: when fewer than ``max_num_seqs`` requests are queued, wait up to
            this long (milliseconds) for more before running the batch.
        close_backend: :meth:`close` also closes the backend (default).

    Raises:
        OptionError: unknown ``mode``, negative ``gather_ms``, or ``mode="engine"`` for a backend
            that is not vLLM.
    """

    def __init__(self, backend: LLMBackend, *, name: str, mode: str = "auto", gather_ms: float = 5.0,
                 close_backend: bool = True):
        from ..engine.vllm_backend import VLLMBackend  # imports no vllm

        if mode not in ("auto", "engine", "batch"):
            raise OptionError("mode", mode, "must be auto, engine or batch")
        if gather_ms < 0:
            raise OptionError("gather_ms", gather_ms, "must be >= 0")
        is_vllm = isinstance(backend, VLLMBackend)
        if mode == "engine" and not is_vllm:
            raise OptionError("mode", mode, f"the engine loop needs a vLLM backend, not {backend.name}")
        self.backend = backend
        self.name = name
        self.mode = ("engine" if is_vllm else "batch") if mode == "auto" else mode
        self.gather_s = gather_ms / 1000.0
        self.close_backend = close_backend
        self._meter = _Meter()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._state = threading.Lock()
        self._tokenizer_lock = threading.Lock()
        self._calls = itertools.count()
        self._closed = False
        self._dead: BaseException | None = None
        self._clients: dict[str, _LLMClient] = {}
        target = self._engine_loop if self.mode == "engine" else self._batch_loop
        self._thread = threading.Thread(target=self._main, args=(target,), daemon=True,
                                        name=f"instructmill-llm-{name}")
        self._thread.start()

    # ------------------------------------------------------------------ public
    def client(self, stage: str) -> LLMBackend:
        """An :class:`LLMBackend` proxy for ``stage`` (the same object for the same stage name).

        Call ``client.generate(...)`` from the stage's thread as with any backend; its requests are
        merged with the other stages' requests into the engine's batches.
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
        """Stop the engine thread (requests still queued or running fail with
        :class:`ServiceClosedError`), then close the backend when ``close_backend``. Idempotent."""
        with self._state:
            first = not self._closed
            self._closed = True
            if first:
                self._queue.put(_STOP)
        self._thread.join()
        if first and self.close_backend:
            self.backend.close()

    def __enter__(self) -> "LLMService":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- clients
    def _run(self, stage: str, requests: list[Request]) -> list[Sample]:
        """Submit one client call's requests and wait for their samples (in request order)."""
        if not requests:
            return []
        call = next(self._calls)
        items = [_LLMItem(r, stage, call, cf.Future()) for r in requests]
        with self._state:
            if self._closed or self._dead is not None:
                why = f" after an engine error: {self._dead}" if self._dead is not None else ""
                raise ServiceClosedError(f"LLM service {self.name!r} is closed{why}")
            self._meter.submit(stage, len(items), sum(len(r.prompt_ids) for r in requests))
            self._queue.put(items)  # one entry per call: its requests arrive together
        return [item.future.result() for item in items]

    # ----------------------------------------------------------------- engine
    def _main(self, target) -> None:
        try:
            target()
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

    def _fail_items(self, items: Sequence[_LLMItem], reason: BaseException | None) -> None:
        for item in items:
            exc = (reason if isinstance(reason, Exception) and not isinstance(reason, ServiceClosedError)
                   else ServiceClosedError(f"LLM service {self.name!r} closed before request "
                                           f"{item.request.index} of stage {item.stage!r} finished"))
            if _fail(item.future, exc):
                self._meter.complete(item.stage, 1, None, failed=True)

    def _resolve(self, item: _LLMItem, sample: Sample) -> None:
        if not item.future.done():
            item.future.set_result(sample)
            self._meter.complete(item.stage, 1, sample.output_tokens)

    # batch mode ---------------------------------------------------------------
    def _batch_loop(self) -> None:
        max_seqs = max(1, int(self.backend.options.max_num_seqs))
        pending: collections.deque[_LLMItem] = collections.deque()  # taken from the queue, not yet run
        while True:
            stop = False
            if not pending:
                entry = self._queue.get()
                if entry is _STOP:
                    return
                pending.extend(entry)
            deadline = time.monotonic() + self.gather_s
            while len(pending) < max_seqs:
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
            self._run_batch([pending.popleft() for _ in range(min(max_seqs, len(pending)))])

    def _run_batch(self, batch: list[_LLMItem]) -> None:
        calls = {item.call for item in batch}
        self._meter.start(len(batch), callers=len(calls))
        try:
            samples = self.backend._generate([item.request for item in batch])
            if len(samples) != len(batch):
                raise RuntimeError(f"{self.backend.name} returned {len(samples)} samples "
                                   f"for {len(batch)} requests")
        except Exception as exc:  # noqa: BLE001 - goes to the callers
            self._meter.stop(len(batch), 0)
            if len(calls) > 1:  # isolate the failing caller: re-run each call's requests alone
                for call in sorted(calls):
                    self._run_batch([item for item in batch if item.call == call])
            else:
                for item in batch:
                    if _fail(item.future, exc):
                        self._meter.complete(item.stage, 1, None, failed=True)
            return
        for item in batch:
            self._meter.prompt(len(item.request.prompt_ids))
        self._meter.stop(len(batch), sum(s.output_tokens for s in samples))
        for item, sample in zip(batch, samples):
            self._resolve(item, sample)

    # vLLM engine mode -------------------------------------------------------------
    def _engine_loop(self) -> None:
        llm = self.backend.llm  # type: ignore[attr-defined]
        engine = llm.llm_engine
        active: dict[str, _LLMItem] = {}
        ids = itertools.count()
        reason: BaseException | None = None
        try:
            while True:
                # Block only when the engine is idle; otherwise take what arrived during the step.
                taken: list[Any] = []
                if not active:
                    taken.append(self._queue.get())
                while True:
                    try:
                        taken.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                stop = any(entry is _STOP for entry in taken)
                items = [item for entry in taken if entry is not _STOP for item in entry]
                if stop:
                    self._fail_items(items, None)
                    return
                for item in items:
                    request_id = f"im{next(ids)}"
                    try:
                        engine.add_request(request_id, self._vllm_prompt(llm, item.request.prompt_ids),
                                           _vllm_params(item.request.params))
                    except Exception as exc:  # noqa: BLE001 - one bad request fails only its caller
                        if _fail(item.future, exc):
                            self._meter.complete(item.stage, 1, None, failed=True)
                        continue
                    active[request_id] = item
                    self._meter.start(1, batch=False)
                    self._meter.prompt(len(item.request.prompt_ids))
                if not active:
                    continue
                self._meter.step()
                for out in engine.step():
                    if not getattr(out, "finished", False):
                        continue
                    item = active.pop(out.request_id, None)
                    if item is None:
                        continue
                    completion = out.outputs[0]
                    sample = Sample(completion.text, list(completion.token_ids),
                                    "length" if completion.finish_reason == "length" else "stop")
                    self._meter.stop(1, sample.output_tokens)
                    self._resolve(item, sample)
        except BaseException as exc:
            reason = exc
            raise
        finally:
            if active:
                try:
                    engine.abort_request(list(active))
                except Exception:  # noqa: BLE001 - best effort while shutting down
                    pass
                self._meter.stop(len(active), 0)
                self._fail_items(list(active.values()), reason if isinstance(reason, Exception) else None)
                active.clear()

    @staticmethod
    def _vllm_prompt(llm: Any, prompt_ids: list[int]) -> Any:
        """A token-id prompt rendered the way ``LLM.generate`` renders it (raw prompt as fallback)."""
        from vllm.inputs import TokensPrompt

        prompt = TokensPrompt(prompt_token_ids=list(prompt_ids))
        render = getattr(llm, "_preprocess_cmpl_one", None)
        return render(prompt) if render is not None else prompt


def _vllm_params(p) -> Any:
    """vLLM ``SamplingParams`` as :meth:`VLLMBackend._generate` builds them, with
    ``output_kind=FINAL_ONLY`` (``LLM.generate`` sets that too: only finished requests come out
    of ``step``)."""
    from vllm.sampling_params import RequestOutputKind

    from ..engine.vllm_backend import sampling_params

    return sampling_params(p, output_kind=RequestOutputKind.FINAL_ONLY)


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


class _TranslationClient(TranslationBackend):
    """A :class:`TranslationBackend` whose ``translate_batch`` goes through a :class:`TranslationService`.

    ``encode``, ``settings`` and the language attributes are the real backend's; unknown
    attributes are read from it too. ``parallel_batches`` is the service's ``client_parallel_batches``
    (calls one stage may have waiting at once, so the service always holds the next batch while
    its workers run). ``stats`` counts this stage's calls (``busy_seconds``: time spent waiting).
    """

    def __init__(self, service: "TranslationService", stage: str):
        super().__init__()
        backend = service.backend
        self._service = service
        self.stage = stage
        self.name = backend.name
        self.model = backend.model
        self.source_lang = backend.source_lang
        self.target_lang = backend.target_lang
        self.max_input_tokens = backend.max_input_tokens
        self.parallel_batches = service.client_parallel_batches

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._service.backend, name)

    def encode(self, texts: list[str]) -> list[Encoded]:
        return self._service.backend.encode(texts)

    def translate_batch(self, batch: list[Encoded]) -> list[str]:
        start = time.perf_counter()
        outputs = self._service._translate(self.stage, batch)
        self.stats.add(segments=len(batch), source_tokens=sum(e.length for e in batch), target_tokens=0,
                       seconds=time.perf_counter() - start)
        return outputs

    def settings(self) -> dict[str, Any]:
        return self._service.backend.settings()

    def close(self) -> None:
        """Nothing to release: the model belongs to the service."""


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
        self._meter = _Meter()
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
            if _fail(job.future, reason):
                self._meter.complete(job.stage, len(job.outputs), None, failed=True)
