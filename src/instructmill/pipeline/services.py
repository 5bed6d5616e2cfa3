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
* **translation**: ``translate_batch`` calls from every stage go to the engine's
  :class:`~instructmill.engine.translation_pool.TranslationPool`: one length-sorting token-budget
  batcher fed by every stage, run on the backend's ``parallel_batches`` worker threads, so the
  batches are fuller than any one stage's. Each caller gets its own items back, in its order.

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

import threading
import time
from typing import Any

from ..engine.llm import LLMBackend, Prompt, Request, Sample
from ..engine.request_loop import EngineClosedError
from ..engine.scheduler import BatchingOptions
from ..engine.translation import Encoded, TranslationBackend
from ..engine.translation_pool import TranslationPool
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
    #: attributes copied from the real backend when the client is made (what the engine can do
    #: decides how the base class builds and sends work)
    _copied: tuple[str, ...] = ("name", "model")

    def _attach(self, service: Any, stage: str) -> None:
        self._service = service
        self.stage = stage
        for name in self._copied:
            setattr(self, name, getattr(service.backend, name))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._service.backend, name)

    def settings(self) -> dict[str, Any]:
        return self._service.backend.settings()

    def close(self) -> None:
        """Nothing to release: the engine belongs to the service."""


class _Service:
    """What both services share: per-stage clients made once, closing once, ``with`` support.

    Subclasses set ``_noun`` (for messages), ``_client_class`` and ``_engine`` (the engine-side
    loop or pool, closed before the backend).
    """

    _noun = "engine"
    _client_class: Any
    _engine: Any

    def __init__(self, backend: Any, *, name: str, close_backend: bool):
        self.backend = backend
        self.name = name
        self.close_backend = close_backend
        self._meter = EngineMeter()
        self._state = threading.Lock()
        self._closed = False
        self._clients: dict[str, Any] = {}

    def client(self, stage: str) -> Any:
        """The backend proxy for ``stage`` (the same object for the same stage name): call it from the
        stage's thread as the backend itself; its work is merged with the other stages' work.

        Raises:
            ServiceClosedError: the service is closed.
        """
        with self._state:
            if self._closed:
                raise ServiceClosedError(f"{self._noun} service {self.name!r} is closed")
            client = self._clients.get(stage)
            if client is None:
                client = self._clients[stage] = self._client_class(self, stage)
            return client

    def close(self) -> None:
        """Stop the engine side (work running finishes where the engine can finish it; work still
        queued fails with :class:`ServiceClosedError`), then close the backend when
        ``close_backend``. Idempotent."""
        with self._state:
            first = not self._closed
            self._closed = True
        self._engine.close()
        if first and self.close_backend:
            self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------- LLMs
class _LLMClient(_Client, LLMBackend):
    """An :class:`LLMBackend` whose ``_generate`` hands its requests to a shared :class:`LLMService`.

    Everything else (prompt encoding, validation, seeds, stop strings, order) is the base
    class's; encoding and decoding are the real backend's.
    """

    _copied = ("name", "model", "tokenizer", "max_model_len", "tokenizes_locally", "supports_json_schema",
               "budget_batching")

    def __init__(self, service: "LLMService", stage: str):
        LLMBackend.__init__(self, service.backend.options)
        self._attach(service, stage)

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


class LLMService(_Service):
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

    _noun = "LLM"
    _client_class = _LLMClient

    def __init__(self, backend: LLMBackend, *, name: str, mode: str = "auto", gather_ms: float = 5.0,
                 close_backend: bool = True):
        super().__init__(backend, name=name, close_backend=close_backend)
        self._tokenizer_lock = threading.Lock()
        self._loop = self._engine = backend.request_loop(name=name, mode=mode, gather_ms=gather_ms,
                                                         label=f"LLM service {name!r}", listener=self._meter)
        self.mode = self._loop.mode

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


# ------------------------------------------------------------------------- translation
class _TranslationClient(_Client, TranslationBackend):
    """A :class:`TranslationBackend` whose ``translate_batch`` goes through a :class:`TranslationService`.

    ``encode``, ``settings`` and the language attributes are the real backend's; unknown
    attributes are read from it too. ``parallel_batches`` is the service's ``client_parallel_batches``
    (calls one stage may have waiting at once, so the service always holds the next batch while
    its workers run). ``stats`` counts this stage's calls (``busy_seconds``: time spent waiting).
    """

    _copied = ("name", "model", "source_lang", "target_lang", "max_input_tokens")

    def __init__(self, service: "TranslationService", stage: str):
        TranslationBackend.__init__(self)
        self._attach(service, stage)
        self.parallel_batches = service.client_parallel_batches

    def encode(self, texts: list[str]) -> list[Encoded]:
        return self._service.backend.encode(texts)

    def translate_batch(self, batch: list[Encoded]) -> list[str]:
        start = time.perf_counter()
        outputs = self._service._pool.translate(batch, tag=self.stage)
        self.stats.add(segments=len(batch), source_tokens=sum(e.length for e in batch), target_tokens=0,
                       seconds=time.perf_counter() - start)
        return outputs


class TranslationService(_Service):
    """One shared translation model direction (a :class:`TranslationBackend`) for every stage that uses it.
    Thread-safe.

    The batching is the engine's :class:`~instructmill.engine.translation_pool.TranslationPool`;
    the service hands out per-stage clients and meters the pool.

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

    _noun = "translation"
    _client_class = _TranslationClient

    def __init__(self, backend: TranslationBackend, *, name: str, batching: BatchingOptions | None = None,
                 max_wait_ms: float = 2.0, client_parallel_batches: int | None = None,
                 close_backend: bool = True):
        if client_parallel_batches is None:
            client_parallel_batches = 2 * max(1, int(backend.parallel_batches))
        if client_parallel_batches < 1:
            raise OptionError("client_parallel_batches", client_parallel_batches, "must be a positive integer")
        super().__init__(backend, name=name, close_backend=close_backend)
        self.client_parallel_batches = client_parallel_batches
        self._pool = self._engine = TranslationPool(backend, name=name, label=f"translation service {name!r}", batching=batching,
                                     max_wait_ms=max_wait_ms, listener=self._meter)
        self.batching = self._pool.batching

    def stats(self) -> dict[str, Any]:
        """Counters of the engine so far: the keys of :meth:`LLMService.stats` (``kind``:
        ``"translation"``). Requests are segments; ``prompt_tokens`` are source tokens and
        ``output_tokens`` target tokens as the backend counts them. The backend counts target tokens
        per batch, not per segment, so ``per_stage[...]["output_tokens"]`` is ``None``;
        ``mean_callers_per_batch`` says how many client calls shared an engine batch."""
        snap = self._meter.snapshot()
        snap["output_tokens"] = self.backend.stats.target_tokens - self._pool.target_base
        wall = snap["wall_seconds"]
        snap["output_tokens_per_second"] = round(snap["output_tokens"] / wall, 2) if wall > 0 else 0.0
        snap["workers"] = len(self._pool.workers)
        return {"engine": self.name, "kind": "translation", "mode": "batch", "backend": self.backend.name,
                "model": self.backend.model, "source_lang": self.backend.source_lang,
                "target_lang": self.backend.target_lang, **snap}
