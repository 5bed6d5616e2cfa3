"""Back-translation paraphrase: source -> pivot language -> source.

Round-trip translation is the oldest way to paraphrase with MT (Bannard & Callison-Burch,
2005; Mallinson et al., 2017, "Paraphrasing Revisited with Neural Machine Translation");
for instruction data it multiplies instructions and answers with new wording while the
meaning stays. This module does the parts that make it usable on real instruction text:

* structure: :mod:`~instructmill.methods.segmentation` keeps line breaks, list markers and
  code blocks and translates sentence by sentence;
* protection: code, URLs, ``{placeholders}`` and numbers come back byte-identical, or the
  record gets ``status: "placeholder_lost"``;
* limits: over-long sentences are split, never cut; unsplittable ones give ``input_too_long``;
* quality: empty, looping (in the pivot or the output), far-off-length or unchanged outputs get a status
  (:mod:`~instructmill.methods.quality`) and stay out of the main output;
* throughput: all segments of a chunk of records go through
  :func:`~instructmill.engine.chain.translate_chain` at once (identical segments once,
  token-budget batches, hop 2 fed as hop-1 batches finish).

Example::

    bt = BackTranslator()                      # embedded en<->pt models, no hub needed
    [p.text for p in bt.paraphrase(["The garden is quiet."])]
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Iterator, Sequence

from ..arguments import input_records as as_input_records
from ..arguments import texts as as_texts
from ..engine.chain import translate_chain
from ..engine.scheduler import BatchingOptions
from ..engine.translation import TranslationBackend
from ..errors import OptionError, RecordError
from ..engine.scheduler import budget_windows
from ..records import EXAMPLE_FIELDS, STATUS_OK, Example, InputRecord, OutputRecord
from .invariants import invariant_issue
from .quality import QualityOptions, check_round_trip, worst_status
from .segmentation import Document, Segmenter, has_words
from .structure import check_structure
from ..status import (STATUS_INPUT_TOO_LONG, STATUS_MEANING_DRIFT, STATUS_OTHER_LANGUAGE, STATUS_PLACEHOLDER_LOST,
                      STATUS_TOO_SIMILAR, STATUS_UNCHANGED)


#: Values of :attr:`BackTranslationOptions.turns`, and the roles each paraphrases.
TURN_ROLES = {"all": ("user", "assistant"), "user": ("user",), "assistant": ("assistant",), "last": ()}
TURN_CHOICES = tuple(TURN_ROLES)


@dataclass(frozen=True)
class BackTranslationOptions:
    """What to paraphrase and how.

    Attributes:
        source_lang: language of the records (ISO 639-1 code, or the model's own code).
        pivots: pivot languages; each gives one paraphrase per record (ids get ``":<pivot>"``
            appended when there is more than one).
        fields: Example fields to paraphrase (``instruction``, ``input``, ``output``) in records that
            are not conversations, and in conversations when ``turns == "last"``.
        turns: which turns of a conversation (a record with earlier turns: ``history`` or
            ``leading_assistant``, e.g. any multi-turn ShareGPT / OpenAI ``messages`` record) are
            paraphrased: ``"all"`` (every user and assistant turn, the default), ``"user"``,
            ``"assistant"``, or ``"last"`` (only ``fields`` of the last turn pair). Roles and order
            are kept; the system prompt is never paraphrased. In a conversation a turn whose
            paraphrase fails a check keeps its original text (``extra.field_status`` names why), and
            the record is ``ok`` when at least one turn was paraphrased.
        chunk_size: the most records translated together (bounds memory; bigger = fuller batches).
            A chunk also ends at :data:`CHUNK_CHARS` characters, so output is written every few
            seconds whatever the record length.
        quality: thresholds for the output checks.
        language_check: detect each segment's language (:mod:`~instructmill.methods.language`);
            a segment in another language than ``source_lang`` is passed through unchanged, never
            sent through the models; a text with nothing left to translate gets ``other_language``.
        meaning_check: compare each translated sentence with its source by sentence-embedding
            similarity (:mod:`~instructmill.methods.meaning`) and by word-level invariants
            (:mod:`~instructmill.methods.invariants`: negations, grammatical person, names and
            acronyms): a sentence below ``min_similarity`` or breaking an invariant keeps its source
            text; a text with no paraphrased sentence left is ``meaning_drift``; one whose changed
            sentences all score above ``max_similarity`` is ``too_similar`` (barely reworded).
            ``None``: the calibrated defaults of :mod:`~instructmill.methods.meaning`.
    """

    source_lang: str = "en"
    pivots: tuple[str, ...] = ("pt",)
    fields: tuple[str, ...] = ("instruction",)
    turns: str = "all"
    chunk_size: int = 1024
    quality: QualityOptions = field(default_factory=QualityOptions)
    language_check: bool = True
    meaning_check: bool = True
    min_similarity: float | None = None
    max_similarity: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.pivots, str) or not self.pivots:
            raise OptionError("pivots", self.pivots, "give a non-empty list of language codes")
        if len(set(self.pivots)) != len(self.pivots):
            raise OptionError("pivots", self.pivots, "a pivot language is listed twice")
        if self.source_lang in self.pivots:
            raise OptionError("pivots", self.pivots, f"the source language {self.source_lang!r} cannot be a pivot")
        bad = [f for f in self.fields if f not in EXAMPLE_FIELDS]
        if bad or not self.fields:
            raise OptionError("fields", self.fields, f"choose from {', '.join(EXAMPLE_FIELDS)}")
        if self.chunk_size < 1:
            raise OptionError("chunk_size", self.chunk_size, "must be a positive integer")
        for name in ("min_similarity", "max_similarity"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise OptionError(name, value, "must be a cosine similarity in [0, 1]")
        if self.turns not in TURN_CHOICES:
            raise OptionError("turns", self.turns, f"choose from {', '.join(TURN_CHOICES)}")


@dataclass
class Paraphrase:
    """The round trip of one text.

    Attributes:
        source: the input text.
        text: the round-trip text (the paraphrase when ``status == "ok"``).
        status: ``"ok"`` or a reason from :mod:`~instructmill.methods.quality`.
        pivot: pivot language; ``pivot_text``: the text in that language.
        detail: e.g. ``{"lost": [...]}``, ``{"tokens": 812, "max_input_tokens": 510}`` or, for
            ``degenerate``, ``{"hop": "pivot", "reason": "2-gram 'de la' repeated 9 times in a row ..."}``.
        languages: segments by detected language (ISO 639-1; undetermined ones count as the source's).
        passed_through: segments in another language, passed through untranslated, by language.
        similarity: the length-weighted mean embedding similarity of the translated segments to their
            sources (``None`` when not measured).
        kept_source: sentences that kept their source text because their paraphrase failed a check
            while the rest of the text passed, by reason (``{"meaning_drift": 2}``).
    """

    source: str
    text: str
    status: str
    pivot: str
    pivot_text: str
    detail: dict[str, Any] = field(default_factory=dict)
    languages: dict[str, int] = field(default_factory=dict)
    passed_through: dict[str, int] = field(default_factory=dict)
    similarity: float | None = None
    segment_texts: list[str] = field(default_factory=list, repr=False)
    kept_source: dict[str, int] = field(default_factory=dict)


#: Most characters of the paraphrased fields in one chunk: ~5,000 tokens, a few seconds of both hops
#: on 2 CPU cores, so finished records are written every few seconds whatever their length.
CHUNK_CHARS = 20_000


def _record_chars(record: Any, fields: Sequence[str]) -> int:
    """Characters of ``fields`` in a record's raw row (a cheap, deterministic size)."""
    values = getattr(record, "fields", None) or {}
    total = sum(len(v) for k, v in values.items() if isinstance(v, str) and (k in fields or k not in EXAMPLE_FIELDS))
    for turns in (values.get("conversations"), values.get("messages"), values.get("history"),
                  values.get("leading_assistant")):
        if isinstance(turns, list):
            total += sum(_turn_chars(t) for t in turns)
    return total


def _turn_chars(turn: Any) -> int:
    if isinstance(turn, dict):
        return len(str(turn.get("value") or turn.get("content") or ""))
    if isinstance(turn, (list, tuple)):
        return sum(len(t) for t in turn if isinstance(t, str))
    return len(turn) if isinstance(turn, str) else 0


class BackTranslator:
    """Paraphrases texts and records by translating to pivot languages and back.

    Args:
        models: for each pivot, a ``(forward, backward)`` pair of
            :class:`~instructmill.engine.translation.TranslationBackend` (source->pivot,
            pivot->source). ``None``: build them from ``model``.
        model: ``None`` / ``"embedded"`` (the bundled English<->Portuguese Bergamot models), a
            converted CTranslate2 folder of a multilingual model (NLLB / M2M100), or use
            ``forward_model`` + ``backward_model`` for a pair of bilingual (OPUS-MT) folders.
        options: :class:`BackTranslationOptions`.
        batching: scheduler options (default: 64 examples / 3,072 tokens per batch).
        ct2_options: :class:`~instructmill.engine.ctranslate2_backend.CTranslate2Options`.

    Raises:
        OptionError: the models do not cover the languages, or options are invalid.
    """

    method = "backtranslation"

    def __init__(self, *, model: str | None = None, forward_model: str | None = None,
                 backward_model: str | None = None,
                 models: dict[str, tuple[TranslationBackend, TranslationBackend]] | None = None,
                 options: BackTranslationOptions | None = None, batching: BatchingOptions | None = None,
                 ct2_options=None, allow_unverified: bool = False):
        self.options = options or BackTranslationOptions()
        self.batching = batching or BatchingOptions()
        self.ct2_options = ct2_options
        if models is None:
            from ..models.translation import load_round_trip

            models = {pivot: load_round_trip(model=model, forward_model=forward_model,
                                             backward_model=backward_model, source_lang=self.options.source_lang,
                                             pivot=pivot, ct2_options=ct2_options,
                                             allow_unverified=allow_unverified)
                      for pivot in self.options.pivots}
        missing = [p for p in self.options.pivots if p not in models]
        if missing:
            raise OptionError("models", sorted(models), f"no models for pivot(s) {missing}")
        self.models = models
        self.seconds = 0.0
        self._meaning = None   # methods/meaning.py MeaningGate, loaded on first use

    # ----------------------------------------------------------------- texts
    def paraphrase(self, texts: Iterable[str], *, pivot: str | None = None) -> list[Paraphrase]:
        """Round-trip ``texts`` through ``pivot`` (default: the only configured pivot).

        ``texts``: any iterable of strings (a list, a tuple, a generator: read once, whole, since
        all its segments are batched together).

        Returns one :class:`Paraphrase` per text, in input order. Empty, whitespace-only and
        punctuation-only texts come back unchanged (status ``"ok"``) without a model call.

        Raises:
            ArgumentTypeError: (a ``TypeError``) ``texts`` is one string -- wrap it in a list -- or
                holds an item that is not a string.
            OptionError: ``pivot`` is not configured, or is missing while several are.
        """
        texts = as_texts(texts)
        if pivot is None:
            if len(self.options.pivots) != 1:
                raise OptionError("pivot", pivot, f"several pivots configured {self.options.pivots}: name one")
            pivot = self.options.pivots[0]
        if pivot not in self.models:
            raise OptionError("pivot", pivot, f"configured pivots: {', '.join(self.models)}")
        forward, backward = self.models[pivot]
        segmenter = Segmenter(self.options.source_lang, forward.count_tokens,
                              min(forward.max_input_tokens, backward.max_input_tokens))
        docs = [segmenter.segment(text) for text in texts]
        routes = self._routes(texts, docs)
        flat: list[str] = []
        for doc, route in zip(docs, routes):
            if not doc.too_long:  # do not spend compute on a record that fails anyway
                flat.extend(seg.text for seg, lang in zip(doc.segments, route) if lang is None)
        start = time.perf_counter()
        outputs, _ = translate_chain(flat, [forward, backward], batching=self.batching)
        self.seconds += time.perf_counter() - start
        results: list[Paraphrase] = []
        all_hops: list[list[list[str]]] = []
        pos = 0
        for text, doc, route in zip(texts, docs, routes):
            hops: list[list[str]] = []
            if doc.too_long:
                results.append(Paraphrase(text, text, STATUS_INPUT_TOO_LONG, pivot, "",
                                          {"tokens": max(doc.too_long),
                                           "max_input_tokens": segmenter.max_tokens}))
                all_hops.append(hops)
                continue
            for seg, lang in zip(doc.segments, route):
                if lang is None:
                    hops.append(outputs[pos])
                    pos += 1
                else:  # another language: kept as it is (pivot and final)
                    hops.append([seg.text, seg.text])
            all_hops.append(hops)
            results.append(self._finish(text, doc, hops, pivot, route))
        self._check_meaning(texts, docs, routes, all_hops, results, pivot)
        return results

    def _routes(self, texts: list[str], docs: list[Document]) -> list[list[str | None]]:
        """Per document, per segment: ``None`` to translate it, else the other language it is in.

        A segment too short to tell (``None`` from the detector) follows the language of its whole
        text when that is another language ("Ingredientes:" in a Spanish recipe), as measured in
        ``benchmarks/README.md`` (language ID: 8.5% -> 1.4% of foreign segments mistranslated)."""
        if not self.options.language_check:
            return [[None] * len(doc.segments) for doc in docs]
        from .language import default_detector, same_language

        source = self.options.source_lang
        detector = default_detector()
        segments = [seg.restore(seg.text)[0] for doc in docs for seg in doc.segments]
        found = iter(d.lang for d in detector.detect(segments, source))
        wholes = iter(detector.languages([t for t, doc in zip(texts, docs) if doc.segments], source))
        routes = []
        for doc in docs:
            langs = [next(found) for _ in doc.segments]
            context = next(wholes) if doc.segments else None
            foreign_context = context is not None and not same_language(context, source)
            routes.append([(context if foreign_context else None) if lang is None
                           else (None if same_language(lang, source) else lang) for lang in langs])
        return routes

    def _check_meaning(self, texts: list[str], docs: list[Document], routes: list[list[str | None]],
                       all_hops: list[list[list[str]]], results: list[Paraphrase], pivot: str) -> None:
        """Embedding similarity of every translated sentence to its source (:mod:`.meaning`).

        A sentence below the bound keeps its source text and the rest of the text stays
        paraphrased (its checks are run again); a text whose every paraphrased sentence drifted is
        ``meaning_drift``, one whose every changed sentence is barely reworded ``too_similar``.
        ``results[i]`` is replaced in place."""
        if not self.options.meaning_check:
            return
        pairs: list[tuple[int, int, str, str]] = []  # (result, segment, source sentence, paraphrased sentence)
        for i, (doc, route, result) in enumerate(zip(docs, routes, results)):
            if result.status != STATUS_OK:
                continue
            for j, (seg, lang) in enumerate(zip(doc.segments, route)):
                if lang is None and j < len(result.segment_texts):
                    source, output = seg.restore(seg.text)[0], result.segment_texts[j]
                    if source.strip() != output.strip():
                        pairs.append((i, j, source, output))
        if not pairs:
            return
        if self._meaning is None:
            from .meaning import MAX_SIMILARITY, MIN_SIMILARITY, MeaningGate

            # segments are sentences: the bound calibrated for the lowest aligned sentence applies
            low = self.options.min_similarity
            high = self.options.max_similarity if self.options.max_similarity is not None else MAX_SIMILARITY
            self._meaning = MeaningGate(min_similarity=MIN_SIMILARITY["sentence"] if low is None else low,
                                        max_similarity=high, unit="text")
        sims, statuses = self._meaning.evaluate([p[2] for p in pairs], [p[3] for p in pairs])
        per_text: dict[int, list[tuple[int, float, str | None, str, str]]] = {}
        reasons: dict[tuple[int, int], str] = {}
        for (i, j, source, output), sim, status in zip(pairs, sims, statuses):
            # the word-level invariants catch what embeddings miss: a flipped negation, a swapped person
            broken = invariant_issue(source, output, self.options.source_lang)
            if broken is not None:
                status = STATUS_MEANING_DRIFT
                reasons[(i, j)] = broken
            elif status == STATUS_MEANING_DRIFT:
                reasons[(i, j)] = "similarity"
            per_text.setdefault(i, []).append((j, float(sim), status, source, output))
        for i, items in per_text.items():
            worst = min(items, key=lambda item: item[1])
            detail = {"similarity": round(worst[1], 4), "bounds": [self._meaning.min_similarity,
                                                                    self._meaning.max_similarity],
                      "source": worst[3][:300], "paraphrase": worst[4][:300]}
            drifted = [item for item in items if item[2] == STATUS_MEANING_DRIFT]
            kept = [item for item in items if item[2] != STATUS_MEANING_DRIFT]
            result = results[i]
            why: dict[str, int] = {}  # "meaning_drift:similarity" / ":negation" / ":person" / ":name"
            for j, *_ in drifted:
                key = f"{STATUS_MEANING_DRIFT}:{reasons[(i, j)]}"
                why[key] = why.get(key, 0) + 1
            if why:
                detail["reasons"] = why
            if drifted and kept:  # the drifted sentences keep their source text; the rest stays
                hops = [list(h) for h in all_hops[i]]
                for j, *_ in drifted:
                    hops[j] = [docs[i].segments[j].text] * len(hops[j])
                result = self._finish(texts[i], docs[i], hops, pivot, routes[i],
                                      kept_source={**results[i].kept_source, **why})
            weight = sum(len(item[3]) for item in kept) or 1
            result.similarity = round(sum(item[1] * len(item[3]) for item in kept) / weight, 4) if kept \
                else round(worst[1], 4)
            if not kept:
                result.status, result.detail = STATUS_MEANING_DRIFT, detail
            elif all(item[2] == STATUS_TOO_SIMILAR for item in kept) and result.status == STATUS_OK:
                result.status, result.detail = STATUS_TOO_SIMILAR, detail
            results[i] = result

    def _finish(self, source: str, doc: Document, hops: list[list[str]], pivot: str,
                route: list[str | None], kept_source: dict[str, int] | None = None) -> Paraphrase:
        kept_source = dict(kept_source or {})
        translated = [i for i, lang in enumerate(route) if lang is None
                      and hops[i][-1].strip() != doc.segments[i].text.strip()]
        failed = [i for i in translated if doc.segments[i].restore(hops[i][-1].strip())[1]]
        if failed and len(failed) < len(translated):
            # a sentence that lost a protected span keeps its source text; the others stay paraphrased
            hops = [[doc.segments[i].text] * len(h) if i in failed else h for i, h in enumerate(hops)]
            kept_source[STATUS_PLACEHOLDER_LOST] = kept_source.get(STATUS_PLACEHOLDER_LOST, 0) + len(failed)
        final, lost = doc.render([h[-1] for h in hops])
        pivot_text, _ = doc.render([h[0] for h in hops])
        languages: dict[str, int] = {}
        passed: dict[str, int] = {}
        for lang in route:
            languages[lang or self.options.source_lang] = languages.get(lang or self.options.source_lang, 0) + 1
            if lang is not None:
                passed[lang] = passed.get(lang, 0) + 1

        def result(text: str, status: str, detail: dict[str, Any] | None = None) -> Paraphrase:
            out = Paraphrase(source, text, status, pivot, pivot_text, detail or {}, languages, passed)
            out.segment_texts = [seg.restore(h[-1].strip())[0] for seg, h in zip(doc.segments, hops)]
            out.kept_source = kept_source
            return out

        if lost:
            return result(final, STATUS_PLACEHOLDER_LOST, {"lost": lost})
        if not doc.segments:  # nothing translatable (code, numbers, punctuation): passed through as it is
            return result(final, STATUS_UNCHANGED if has_words(source) else STATUS_OK)
        if all(lang is not None for lang in route):  # all in other languages: nothing was paraphrased
            return result(final, STATUS_OTHER_LANGUAGE, {"languages": passed})
        issue = check_structure(source, final)
        if issue is not None:  # a protected span / shape changed, or a number was added
            return result(final, issue.status, issue.detail())
        status, detail = check_round_trip(source, pivot_text, final, self.options.quality)
        return result(final, status or STATUS_OK, detail)

    # --------------------------------------------------------------- records
    def settings(self) -> dict[str, Any]:
        """Provenance of this method (written into every record and the resume fingerprint)."""
        from ..models.translation import decoding_settings

        return {
            "method": self.method,
            "source_lang": self.options.source_lang,
            "pivots": list(self.options.pivots),
            "fields": list(self.options.fields),
            "turns": self.options.turns,
            "quality": asdict(self.options.quality),
            "engines": {pivot: [fwd.settings(), bwd.settings()] for pivot, (fwd, bwd) in self.models.items()},
            "decoding": decoding_settings(self.ct2_options),
        }

    def output_ids(self, record_id: str) -> list[str]:
        """Ids of the records written for one input: the id itself, or ``"<id>:<pivot>"`` per pivot."""
        if len(self.options.pivots) > 1:
            return [f"{record_id}:{pivot}" for pivot in self.options.pivots]
        return [record_id]

    def record_settings(self, pivot: str) -> dict[str, Any]:
        """The compact provenance each output record carries (the full one is in the run state)."""
        forward, backward = self.models[pivot]
        out: dict[str, Any] = {"source_lang": self.options.source_lang, "pivot": pivot,
                               "backend": forward.name, "models": [forward.model, backward.model]}
        for key in ("compute_type", "beam_size"):
            if key in forward.settings():
                out[key] = forward.settings()[key]
        return out

    def process(self, records: Iterable[InputRecord | dict[str, Any]]) -> Iterator[OutputRecord]:
        """Paraphrase the chosen fields of every record; yields OutputRecords in input order.

        ``records``: any iterable (streamed ``chunk_size`` records at a time) of
        :class:`~instructmill.records.InputRecord` or plain dicts such as
        ``{"instruction": ..., "output": ...}`` (converted as a file row would be: their ``id``, else
        ``"L{position}-{hash8}"``; see :func:`instructmill.arguments.input_records`).

        A record whose shape has no usable example (e.g. ``instruction`` not a string) yields a
        record with ``status: "invalid_record"`` and the error in ``extra``; nothing is dropped.

        Raises:
            ArgumentTypeError: (a ``TypeError``, at call time) ``records`` is a string or one dict;
                (while iterating) an item is neither an InputRecord nor a dict.
        """
        return self._process(as_input_records(records))

    def _process(self, records: Iterable[InputRecord]) -> Iterator[OutputRecord]:
        # chunks cut by text size as well as count (at most chunk_size records, CHUNK_CHARS characters):
        # long records reach the output every few seconds; a deterministic cut keeps batches, and so
        # outputs, the same from run to run (int8 results depend on a batch's padding)
        fields = self.options.fields
        for chunk in budget_windows(records, lambda rec: _record_chars(rec, fields), max_items=self.options.chunk_size,
                                    max_cost=CHUNK_CHARS):
            yield from self._process_chunk(chunk)

    def targets(self, example: Example, *, conversation: bool | None = None) -> list[tuple[str, str]]:
        """The texts of ``example`` to paraphrase, as ``(name, text)`` in conversation order.

        ``conversation``: whether the record is a conversation (a ShareGPT / OpenAI ``messages``
        record, even of one turn pair); default: whether ``example`` has earlier turns.

        Names: ``instruction`` / ``input`` / ``output`` for the last turn pair,
        ``history[i].user`` / ``history[i].assistant`` and ``leading_assistant[i]`` for earlier turns
        (see :attr:`BackTranslationOptions.turns`).
        """
        roles = TURN_ROLES[self.options.turns]
        if conversation is None:
            conversation = example.is_conversation
        if not (conversation and roles):
            return [(name, example.get(name)) for name in self.options.fields]
        out: list[tuple[str, str]] = []
        if "assistant" in roles:
            out += [(f"leading_assistant[{i}]", text) for i, text in enumerate(example.leading_assistant)]
        for i, (user, assistant) in enumerate(example.history):
            if "user" in roles:
                out.append((f"history[{i}].user", user))
            if "assistant" in roles:
                out.append((f"history[{i}].assistant", assistant))
        if "user" in roles:
            out += [("instruction", example.instruction), ("input", example.input)]
        if "assistant" in roles:
            out.append(("output", example.output))
        return out

    def _process_chunk(self, chunk: list[InputRecord]) -> Iterator[OutputRecord]:
        from ..io.readers import to_example

        examples: list[Example | RecordError] = []
        for record in chunk:
            try:
                examples.append(to_example(record))
            except RecordError as exc:
                examples.append(exc)
        conversations = [_is_conversation(record, ex) for record, ex in zip(chunk, examples)]
        targets = [self.targets(ex, conversation=conv) if isinstance(ex, Example) else []
                   for ex, conv in zip(examples, conversations)]
        texts = [text for names in targets for _, text in names]
        per_pivot = {pivot: self.paraphrase(texts, pivot=pivot) for pivot in self.options.pivots}
        pos = 0
        for record, example, names, conv in zip(chunk, examples, targets, conversations):
            for pivot in self.options.pivots:
                rid = self.output_ids(record.id)[self.options.pivots.index(pivot)]
                record_settings = self.record_settings(pivot)
                if isinstance(example, RecordError):
                    yield OutputRecord(rid, Example(instruction=""), example.status, self.method, record_settings,
                                       {"error": str(example), "line": record.line, "input": record.fields})
                    continue
                results = per_pivot[pivot][pos:pos + len(names)]
                yield self._record(rid, record, example, [n for n, _ in names], results, record_settings,
                                   conversation=conv)
            pos += len(names)

    def _record(self, rid: str, record: InputRecord, example: Example, names: list[str],
                results: list[Paraphrase], settings: dict[str, Any], *, conversation: bool) -> OutputRecord:
        new = Example(instruction=example.instruction, input=example.input, output=example.output,
                      system=example.system, history=[list(pair) for pair in example.history],  # type: ignore[misc]
                      leading_assistant=list(example.leading_assistant))
        # a conversation keeps a failed turn's original text; a single example is judged whole
        per_turn = conversation and self.options.turns != "last"
        field_status: dict[str, str] = {}
        statuses: list[str | None] = []
        detail: dict[str, Any] = {}
        paraphrased = 0
        for name, result in zip(names, results):
            if not result.source.strip():
                continue
            field_status[name] = result.status
            ok = result.status == STATUS_OK
            statuses.append(None if ok else result.status)
            if ok or not per_turn:
                _set_text(new, name, result.text)
            paraphrased += ok
            if result.detail:
                detail[name] = result.detail
        new.history = [(u, a) for u, a in new.history]
        if per_turn:
            status = STATUS_OK if paraphrased else (worst_status(statuses) or STATUS_UNCHANGED)
        else:
            status = worst_status(statuses) or STATUS_OK
        extra: dict[str, Any] = {
            "source_id": record.id,
            "original": {name: r.source for name, r in zip(names, results)},
            "pivot_text": {name: r.pivot_text for name, r in zip(names, results)},
            "field_status": field_status,
        }
        if per_turn:
            extra["turns_paraphrased"] = paraphrased
        languages: dict[str, int] = {}
        passed: dict[str, int] = {}
        for r in results:
            for lang, n in r.languages.items():
                languages[lang] = languages.get(lang, 0) + n
            for lang, n in r.passed_through.items():
                passed[lang] = passed.get(lang, 0) + n
        if languages:
            extra["language"] = max(languages, key=lambda k: languages[k])
        if passed:
            extra["passed_through_languages"] = passed
        sims = [r.similarity for r in results if r.similarity is not None and r.status == STATUS_OK]
        if sims:
            extra["similarity"] = min(sims)
        kept_source: dict[str, int] = {}
        for r in results:
            for reason, n in r.kept_source.items():
                kept_source[reason] = kept_source.get(reason, 0) + n
        if kept_source:
            extra["sentences_kept_as_source"] = kept_source
        if detail:
            extra["detail"] = detail
        return OutputRecord(rid, new, status, self.method, settings, extra)


def _is_conversation(record: InputRecord, example: Example | RecordError) -> bool:
    """A ShareGPT / OpenAI record (of any length), or any example with earlier turns."""
    return record.shape in ("sharegpt", "openai") or (isinstance(example, Example) and example.is_conversation)


def _set_text(example: Example, name: str, text: str) -> None:
    """Put ``text`` into the turn or field ``name`` (see :meth:`BackTranslator.targets`)."""
    if name.startswith("leading_assistant["):
        example.leading_assistant[int(name[18:-1])] = text
    elif name.startswith("history["):
        index, role = name[8:].split("].")
        example.history[int(index)][0 if role == "user" else 1] = text  # type: ignore[index]
    else:
        setattr(example, name, text)
