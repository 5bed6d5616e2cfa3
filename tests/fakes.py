"""Deterministic fake translation backends for tests (no model, no engine)."""
from __future__ import annotations

import re
import threading
import time

from instructmill.engine.translation import Encoded, TranslationBackend

SYNONYMS = {"garden": "yard", "quiet": "calm", "red": "crimson", "green": "emerald", "fill": "top up",
            "boil": "heat", "open": "launch", "river": "stream", "flows": "runs", "kettle": "pot", "use": "take"}


class FakeBackend(TranslationBackend):
    """Word-level 'translation': forward tags words, backward untags them and swaps synonyms.

    ``calls`` records every batch (texts as received) so tests can assert what reached the model.
    ``mangle`` drops mask tokens (XPH...) to simulate a model that loses placeholders.
    """

    name = "fake"

    def __init__(self, direction: str, *, max_input_tokens: int = 50, parallel_batches: int = 2,
                 delay: float = 0.0, mangle: bool = False, log: list | None = None):
        super().__init__()
        self.direction = direction
        self.model = f"fake-{direction}"
        self.source_lang, self.target_lang = direction.split("-")
        self.max_input_tokens = max_input_tokens
        self.parallel_batches = parallel_batches
        self.delay = delay
        self.mangle = mangle
        self.calls: list[list[str]] = []
        self.log = log if log is not None else []
        self._lock = threading.Lock()

    def encode(self, texts):
        return [Encoded(t, len(t.split()) + 1) for t in texts]

    def _one(self, text: str) -> str:
        words = text.split(" ")
        if self.mangle:
            words = [w for w in words if "XPH" not in w]
        if self.direction.endswith("-xx"):
            return " ".join("~" + w for w in words)
        return " ".join(_swap(w.lstrip("~")) for w in words)

    def translate_batch(self, batch):
        texts = [item.payload for item in batch]
        with self._lock:
            self.calls.append(texts)
            self.log.append(("start", self.direction, len(self.calls)))
        if self.delay:
            time.sleep(self.delay)
        out = [self._one(t) for t in texts]
        with self._lock:
            self.log.append(("end", self.direction, len(self.calls)))
        self.stats.add(segments=len(texts), source_tokens=sum(i.length for i in batch),
                       target_tokens=sum(len(o.split()) + 1 for o in out), seconds=0.0)
        return out

    @property
    def texts_seen(self) -> list[str]:
        return [t for call in self.calls for t in call]


def _swap(word: str) -> str:
    m = re.match(r"^(\w+)(\W*)$", word)
    if not m or m.group(1).lower() not in SYNONYMS:
        return word
    return SYNONYMS[m.group(1).lower()] + m.group(2)


def fake_pair(**kwargs):
    log: list = []
    return FakeBackend("en-xx", log=log, **kwargs), FakeBackend("xx-en", log=log, **kwargs)
