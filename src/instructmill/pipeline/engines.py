"""The engines of a pipeline: loaded once, shared by every stage that names them.

:class:`EngineRegistry` loads each engine of a :class:`~instructmill.pipeline.spec.PipelineSpec`
the first time a stage asks for it and wraps it in a service of
:mod:`instructmill.pipeline.services` (``LLMService`` for an LLM; one ``TranslationService`` per
translation direction), so requests of several stages are merged into the engine's batches.
Stages get per-stage clients (``service.client(stage)``) that look like plain backends.

``backend: python`` engines (a factory named in the pipeline file) load only when
``INSTRUCTMILL_ALLOW_TEST_BACKENDS=1`` (they run code named in a data file: tests only).
"""
from __future__ import annotations

import importlib
import logging
import os
import threading
from typing import Any, Callable

from ..errors import OptionError
from .spec import TEST_BACKENDS_ENV, EngineSpec, PipelineSpec

__all__ = ["EngineRegistry", "ServiceFactory", "default_service_factory"]

log = logging.getLogger("instructmill.pipeline")

#: ``factory(kind, backend, name, engine_spec) -> service`` with ``client(stage)``, ``stats()``, ``close()``;
#: ``kind`` is ``"llm"`` or ``"translation"``.
ServiceFactory = Callable[[str, Any, str, EngineSpec], Any]


def default_service_factory(kind: str, backend: Any, name: str, engine: EngineSpec) -> Any:
    """The shared services of :mod:`instructmill.pipeline.services`."""
    from .services import LLMService, TranslationService

    if kind == "llm":
        return LLMService(backend, name=name, close_backend=False)
    return TranslationService(backend, name=name, batching=engine.batching, close_backend=False)


def _factory(spec: EngineSpec) -> Callable[..., Any]:
    if os.environ.get(TEST_BACKENDS_ENV) != "1":
        raise OptionError("backend", "python", f"test backends need {TEST_BACKENDS_ENV}=1")
    module, _, attr = str(spec.factory).partition(":")
    return getattr(importlib.import_module(module), attr)


class EngineRegistry:
    """Loads engines on first use and hands out per-stage clients of their shared services.

    Args:
        spec: the pipeline.
        overrides: engine name -> an already built engine: an
            :class:`~instructmill.engine.llm.LLMBackend` for an LLM engine, or ``{pivot: (forward,
            backward)}`` :class:`~instructmill.engine.translation.TranslationBackend` pairs for a
            translation engine (Python API and tests).
        service_factory: builds the services (default: :func:`default_service_factory`).

    Thread-safe: stages are built in the main thread, clients are used from stage threads.
    """

    def __init__(self, spec: PipelineSpec, *, overrides: dict[str, Any] | None = None,
                 service_factory: ServiceFactory | None = None):
        self._spec = spec
        self._overrides = dict(overrides or {})
        unknown = sorted(set(self._overrides) - set(spec.engines))
        if unknown:
            raise OptionError("engines", unknown, f"not declared in the pipeline (declared: "
                                                  f"{', '.join(spec.engines) or 'none'})")
        self._make_service = service_factory or default_service_factory
        self._lock = threading.Lock()
        self._backends: dict[str, list[Any]] = {}      # engine -> backends it loaded (to close)
        self._llm: dict[str, Any] = {}                  # engine -> LLMService
        self._translation: dict[str, dict[str, tuple[Any, Any]]] = {}  # engine -> pivot -> services
        self._owned: set[str] = set()                   # engines we loaded (closed by us)
        self._closed = False

    def spec(self, name: str) -> EngineSpec:
        return self._spec.engines[name]

    # ------------------------------------------------------------------------ LLM
    def _model_arg(self, model: str | None) -> str | None:
        if model is None or model == "embedded":
            return model
        resolved = self._spec.resolve(model)
        return resolved if os.path.exists(resolved) else model

    def llm_service(self, name: str) -> Any:
        """The shared LLM service of engine ``name`` (loaded on first use)."""
        with self._lock:
            service = self._llm.get(name)
            if service is not None:
                return service
            spec = self._spec.engines[name]
            if name in self._overrides:
                backend = self._overrides[name]
            else:
                backend = self._load_llm(spec)
                self._owned.add(name)
            self._backends.setdefault(name, []).append(backend)
            service = self._llm[name] = self._make_service("llm", backend, name, spec)
            return service

    def _load_llm(self, spec: EngineSpec) -> Any:
        if spec.backend == "python":
            return _factory(spec)(model=spec.model, options=spec.options, **spec.params)
        from ..models.llm_backends import load_llm

        kwargs = {"allow_unverified": True} if spec.allow_unverified else {}
        log.info("loading LLM engine %s (%s, %s)", spec.name, spec.backend, spec.model or "embedded")
        return load_llm(spec.backend, self._model_arg(spec.model), spec.options, **kwargs)

    def llm_client(self, name: str, stage: str) -> Any:
        """An LLMBackend-like client of engine ``name`` for ``stage``."""
        return self.llm_service(name).client(stage)

    # ---------------------------------------------------------------- translation
    def translation_services(self, name: str) -> dict[str, tuple[Any, Any]]:
        """``{pivot: (forward service, backward service)}`` of engine ``name`` (loaded on first use)."""
        with self._lock:
            services = self._translation.get(name)
            if services is not None:
                return services
            spec = self._spec.engines[name]
            if name in self._overrides:
                pairs = self._overrides[name]
                missing = [p for p in spec.pivots if p not in pairs]
                if missing:
                    raise OptionError(f"engines.{name}", sorted(pairs), f"no models for pivot(s) {missing}")
            else:
                pairs = {pivot: self._load_pair(spec, pivot) for pivot in spec.pivots}
                self._owned.add(name)
            services = {}
            for pivot in spec.pivots:
                fwd, bwd = pairs[pivot]
                self._backends.setdefault(name, []).extend([fwd, bwd])
                services[pivot] = (
                    self._make_service("translation", fwd, f"{name}:{spec.source_lang}-{pivot}", spec),
                    self._make_service("translation", bwd, f"{name}:{pivot}-{spec.source_lang}", spec))
            self._translation[name] = services
            return services

    def _load_pair(self, spec: EngineSpec, pivot: str) -> tuple[Any, Any]:
        if spec.backend == "python":
            make = _factory(spec)
            return (make(source_lang=spec.source_lang, target_lang=pivot, **spec.params),
                    make(source_lang=pivot, target_lang=spec.source_lang, **spec.params))
        from ..models.translation import load_round_trip

        log.info("loading translation engine %s (%s <-> %s)", spec.name, spec.source_lang, pivot)
        return load_round_trip(model=self._model_arg(spec.model), forward_model=self._model_arg(spec.forward_model),
                               backward_model=self._model_arg(spec.backward_model), source_lang=spec.source_lang,
                               pivot=pivot, ct2_options=spec.options, allow_unverified=spec.allow_unverified)

    def translation_clients(self, name: str, stage: str) -> dict[str, tuple[Any, Any]]:
        """``{pivot: (forward client, backward client)}`` of engine ``name`` for ``stage``."""
        return {pivot: (fwd.client(stage), bwd.client(stage))
                for pivot, (fwd, bwd) in self.translation_services(name).items()}

    # -------------------------------------------------------------------- report
    def stats(self) -> dict[str, dict[str, Any]]:
        """Per engine: its service's ``stats()`` (LLM), or per direction plus totals (translation)."""
        out: dict[str, dict[str, Any]] = {}
        for name, service in self._llm.items():
            out[name] = {"type": "llm", **_safe_stats(service)}
        for name, pivots in self._translation.items():
            directions = {}
            for fwd, bwd in pivots.values():
                for service in (fwd, bwd):
                    stats = _safe_stats(service)
                    directions[str(stats.get("engine") or getattr(service, "name", len(directions)))] = stats
            total: dict[str, Any] = {"type": "translation", "directions": directions}
            for key in ("requests", "prompt_tokens", "output_tokens", "busy_seconds"):
                values = [d.get(key) for d in directions.values() if isinstance(d.get(key), (int, float))]
                if values:
                    total[key] = round(sum(values), 3) if key == "busy_seconds" else sum(values)
            walls = [d.get("wall_seconds") for d in directions.values() if isinstance(d.get("wall_seconds"), (int, float))]
            if walls:
                total["wall_seconds"] = max(walls)
            fractions = [d.get("busy_fraction") for d in directions.values()
                         if isinstance(d.get("busy_fraction"), (int, float))]
            if fractions:
                total["busy_fraction"] = round(max(fractions), 4)
            out[name] = total
        return out

    def close(self) -> None:
        """Close every service, then the engines this registry loaded (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            services = list(self._llm.values()) + [s for pivots in self._translation.values()
                                                   for pair in pivots.values() for s in pair]
            backends = [(name, b) for name, items in self._backends.items() for b in items]
            self._backends = {}
        for service in services:
            try:
                service.close()
            except Exception:  # noqa: BLE001 - best effort at teardown
                log.warning("closing a service failed", exc_info=True)
        for name, backend in backends:
            if name in self._owned and hasattr(backend, "close"):
                try:
                    backend.close()
                except Exception:  # noqa: BLE001
                    log.warning("closing engine %s failed", name, exc_info=True)


def _safe_stats(service: Any) -> dict[str, Any]:
    try:
        return dict(service.stats())
    except Exception as exc:  # noqa: BLE001 - a report must not fail the run
        return {"error": f"stats() failed: {exc}"}
