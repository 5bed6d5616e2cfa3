"""The translation backend interface shared by CTranslate2, Bergamot and transformers.

A backend is **one direction** (``source_lang`` -> ``target_lang``) of one model.
It knows how to tokenize (so the scheduler can batch by tokens) and how to
translate one already-scheduled batch. Scheduling, de-duplication, threading and
order live in :mod:`instructmill.engine.chain`, so every backend gets them for free.

Backends must be thread-safe: :mod:`~instructmill.engine.chain` calls
``translate_batch`` from up to ``parallel_batches`` threads at once (CTranslate2
and the Bergamot engine both release the GIL while they compute).
"""
from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Encoded:
    """A text prepared for one backend.

    Attributes:
        payload: what the backend's ``translate_batch`` consumes (tokens for CTranslate2, text for Bergamot).
        length: source length in tokens (what the scheduler budgets).
    """

    payload: Any
    length: int


@dataclass
class BackendStats:
    """Counters a backend keeps while it runs (for the run summary and tests).

    Attributes:
        batches: ``translate_batch`` calls.
        segments: segments translated (model inputs).
        source_tokens / target_tokens: tokens in / out, as the backend's tokenizer counts them.
        busy_seconds: wall seconds spent inside ``translate_batch`` summed over threads.
    """

    batches: int = 0
    segments: int = 0
    source_tokens: int = 0
    target_tokens: int = 0
    busy_seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, *, segments: int, source_tokens: int, target_tokens: int, seconds: float) -> None:
        with self._lock:
            self.batches += 1
            self.segments += segments
            self.source_tokens += source_tokens
            self.target_tokens += target_tokens
            self.busy_seconds += seconds

    def as_dict(self) -> dict[str, float | int]:
        return {"batches": self.batches, "segments": self.segments,
                "source_tokens": self.source_tokens, "target_tokens": self.target_tokens,
                "busy_seconds": round(self.busy_seconds, 3)}


class TranslationBackend(ABC):
    """One direction of a translation model.

    Subclasses set ``name`` (backend kind), ``model`` (id or path, for provenance),
    ``source_lang``/``target_lang`` (ISO codes as the model knows them),
    ``max_input_tokens`` (longest source the model accepts, in tokens) and
    ``parallel_batches`` (how many batches may run at once to keep all cores busy).
    """

    name: str = "backend"
    model: str = ""
    source_lang: str = ""
    target_lang: str = ""
    max_input_tokens: int = 256
    parallel_batches: int = 1

    def __init__(self) -> None:
        self.stats = BackendStats()

    @abstractmethod
    def encode(self, texts: list[str]) -> list[Encoded]:
        """Tokenize ``texts`` (one :class:`Encoded` per text, same order)."""

    @abstractmethod
    def translate_batch(self, batch: list[Encoded]) -> list[str]:
        """Translate one batch; returns one detokenized text per input, same order.

        Implementations update :attr:`stats` and must be safe to call from several threads.
        """

    def count_tokens(self, text: str) -> int:
        """Source length of ``text`` in tokens."""
        return self.encode([text])[0].length

    def settings(self) -> dict[str, Any]:
        """Provenance written into every record (model, backend, compute type...)."""
        return {"backend": self.name, "model": self.model,
                "source_lang": self.source_lang, "target_lang": self.target_lang}

    def close(self) -> None:
        """Release what the backend holds (models are cached per process; default: nothing)."""
