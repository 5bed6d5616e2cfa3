"""Stage adapters: each method of instructmill as a pipeline stage.

Records travel between stages as :class:`Item` objects (an
:class:`~instructmill.records.OutputRecord`, plus the source row while the record is still the
row as read). A stage takes the items whose status it wants (``ok``; the ``filter`` stage takes
the statuses it is told to accept), runs its method on a *window* of them and gives back
``fanout`` output records per item, in item order; every other item passes through unchanged,
in place, so each sink gets its discards with their reasons and the stream keeps its order.

Two kinds of stage:

* :class:`MapStage`: record in, ``fanout`` records out (template, respond, humpback, evolve,
  back-translate, filter, dedup). Stateless methods may run several windows at once
  (``concurrency``); ``dedup`` keeps an index, so it runs one window at a time and rebuilds
  the index on resume with :meth:`MapStage.replay`.
* :class:`GeneratorStage`: Self-Instruct: reads all seed tasks, then yields rounds.

:data:`METHODS` describes every method (options dataclass, engine type, window option), so the
spec (:mod:`instructmill.pipeline.spec`) validates stage options against the same dataclasses
that the Python API uses.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

from ..errors import OptionError
from ..records import Example, InputRecord, OutputRecord
from ..status import STATUS_INVALID_RECORD, STATUS_OK
from .specfile import option_fields

if TYPE_CHECKING:  # pragma: no cover
    from .engines import EngineRegistry
    from .spec import StageSpec

__all__ = ["ALIASES", "METHODS", "GeneratorStage", "Item", "MapStage", "MethodInfo", "TemplateOptions",
           "build_stage", "canonical_method", "option_fields", "plain"]


# ----------------------------------------------------------------------------- items

@dataclass
class Item:
    """One record on its way through the pipeline.

    Attributes:
        record: the record as it is now (``status != "ok"``: it goes to the sinks' discards).
        raw: the source row, while the record is still that row (template / humpback read raw
            fields); ``None`` once a stage has rewritten the record.
        error: why the source row has no usable example (a sink writes such a row with
            ``error_status``; a template stage does not need the example).
        error_status: the row's status when ``error`` is set: ``invalid_record``, or
            ``empty_record`` for a conversation with no text (the reader's ``RecordError.status``).
    """

    record: OutputRecord
    raw: InputRecord | None = None
    error: str | None = None
    error_status: str = STATUS_INVALID_RECORD

    def sink_record(self) -> OutputRecord:
        """The record as a sink writes it: a source row without a usable example (``error``) is an
        ``error_status`` discard holding the error; any other record as it is."""
        rec = self.record
        if self.error is not None and rec.method == "source":
            extra: dict[str, Any] = {"error": self.error}
            if self.raw is not None:
                extra["input"] = self.raw.fields  # the row as read: the discard shows what was wrong
            return OutputRecord(rec.id, rec.example, self.error_status, "source", rec.settings, extra)
        return rec

    def as_input(self) -> InputRecord:
        """The record as a method's input: the source row, or an Alpaca-shaped row of the example."""
        if self.raw is not None:
            return self.raw
        ex = self.record.example
        fields_: dict[str, Any] = {"id": self.record.id, "instruction": ex.instruction, "input": ex.input,
                                   "output": ex.output}
        if ex.system:
            fields_["system"] = ex.system
        if ex.history:
            fields_["history"] = [list(turn) for turn in ex.history]
        if ex.leading_assistant:
            fields_["leading_assistant"] = list(ex.leading_assistant)
        return InputRecord(id=self.record.id, line=0, fields=fields_, shape="alpaca")


# --------------------------------------------------------------------------- methods

@dataclass(frozen=True)
class TemplateOptions:
    """Options of the ``template`` stage.

    Attributes:
        template: a built-in template name (alpaca, translate, summarize, classify, rewrite, qa) or
            a template file (relative to the pipeline file).
        variables: values for the template's names; they win over row fields.
        strict: stop the pipeline at the first row that cannot be rendered (default: the row
            becomes a ``template_error`` record).
    """

    template: str
    variables: dict[str, Any] = field(default_factory=dict)
    strict: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.template, str) or not self.template.strip():
            raise OptionError("template", self.template, "name a built-in template or a template file")


def _dedup_options() -> type:
    from .dedup import DedupOptions

    return DedupOptions


def _lazy(module: str, name: str) -> Callable[[], type]:
    def load() -> type:
        import importlib

        return getattr(importlib.import_module(module), name)

    return load


@dataclass(frozen=True)
class MethodInfo:
    """What the pipeline needs to know about a method.

    Attributes:
        name: the method's name in pipeline files.
        engine: ``"llm"``, ``"translation"`` or ``None`` (no engine).
        options: loads the options dataclass (stage keys are its fields).
        exclude: option fields that come from elsewhere (the translation engine's languages).
        window_field: the option that sizes a window (records per method call); ``None``: the
            pipeline's ``settings.window``.
        generator: the stage generates records from all of its input (Self-Instruct).
        stateful: the stage remembers earlier records (dedup): one window at a time, replayed on
            resume.
        concurrency: windows in flight by default.
        timed_window: windows are sized by time (at most the window option), so a stage of long
            records still checkpoints every few seconds (:class:`~instructmill.iterutil.ChunkSizer`).
            Only for stages whose engine stays full with small windows (translation batches are
            cut from segments); an LLM stage needs many requests in flight.
        reads_example: the method reads the record's example (not the source row): rows without a
            usable example pass through and reach the sinks as ``invalid_record``.
        description: one line for ``--help`` and error messages.
    """

    name: str
    engine: str | None
    options: Callable[[], type]
    exclude: tuple[str, ...] = ()
    window_field: str | None = None
    generator: bool = False
    stateful: bool = False
    concurrency: int = 1
    timed_window: bool = False
    reads_example: bool = False
    description: str = ""


METHODS: dict[str, MethodInfo] = {m.name: m for m in (
    MethodInfo("template", None, lambda: TemplateOptions,
               description="fill a jinja2 instruction template from each row"),
    MethodInfo("self-instruct", "llm", _lazy("instructmill.methods.self_instruct", "SelfInstructOptions"),
               generator=True, description="bootstrap new instructions from seed tasks (Wang et al. 2022)"),
    MethodInfo("respond", "llm", _lazy("instructmill.methods.respond", "RespondOptions"),
               window_field="records_per_batch", concurrency=4,
               description="the LLM writes each instruction's output"),
    MethodInfo("humpback", "llm", _lazy("instructmill.methods.humpback", "HumpbackOptions"),
               window_field="records_per_batch", concurrency=4,
               description="instruction back-translation with self-curation (Li et al. 2023)"),
    MethodInfo("evolve", "llm", _lazy("instructmill.methods.evol", "EvolOptions"),
               window_field="records_per_batch", concurrency=4,
               description="Evol-Instruct in-depth / in-breadth rewriting (Xu et al. 2023)"),
    MethodInfo("judge", "llm", _lazy("instructmill.methods.judge", "JudgeOptions"),
               window_field="records_per_batch", concurrency=4,
               description="LLM-as-judge: score each record 1-5 on a rubric, keep by threshold"),
    MethodInfo("back-translate", "translation", _lazy("instructmill.methods.backtranslation",
                                                      "BackTranslationOptions"),
               exclude=("source_lang", "pivots"), window_field="chunk_size", timed_window=True,
               description="paraphrase fields by round-trip translation"),
    MethodInfo("filter", None, _lazy("instructmill.pipeline.filters", "FilterOptions"), reads_example=True,
               description="length / keyword / regex / status rules"),
    MethodInfo("dedup", None, _dedup_options, stateful=True, reads_example=True,
               description="exact and near-duplicate removal across the whole stream"),
)}

#: Other spellings accepted for method names.
ALIASES = {"self_instruct": "self-instruct", "selfinstruct": "self-instruct", "back_translate": "back-translate",
           "backtranslate": "back-translate", "backtranslation": "back-translate", "evol": "evolve",
           "evol-instruct": "evolve", "evol_instruct": "evolve", "deduplicate": "dedup", "response": "respond",
           "llm-judge": "judge", "llm_judge": "judge", "score": "judge"}


def canonical_method(name: str) -> str | None:
    """The method's canonical name, or ``None`` when unknown."""
    key = name.strip().lower()
    if key in METHODS:
        return key
    key = ALIASES.get(key, ALIASES.get(key.replace("-", "_"), key.replace("_", "-")))
    return key if key in METHODS else None


# ---------------------------------------------------------------------------- adapters

class MapStage:
    """A record-to-records method as a stage.

    Args:
        name: the stage's name.
        method: the method's name (:data:`METHODS`).
        process: ``process(items) -> list[OutputRecord]``: ``fanout`` outputs per item, in order.
        fanout: outputs per wanted item.
        window: wanted items per method call (the most, with ``timed_window``).
        concurrency: windows in flight.
        timed_window: size windows by time (see :class:`MethodInfo`).
        wants: which records the stage takes (default: status ``ok``).
        replay: rebuilds the stage's state from outputs it wrote before a crash (dedup).
        summary: the method's counters for the report.
        close: releases what the method holds.
    """

    generator = False

    def __init__(self, name: str, method: str, process: Callable[[list[Item]], list[OutputRecord]], *,
                 fanout: int = 1, window: int = 256, concurrency: int = 1, timed_window: bool = False,
                 wants: Callable[[OutputRecord], bool] | None = None,
                 replay: Callable[[list[OutputRecord]], None] | None = None,
                 summary: Callable[[], dict[str, Any]] | None = None,
                 close: Callable[[], None] | None = None):
        self.name = name
        self.method = method
        self._process = process
        self.fanout = fanout
        self.window = window
        self.concurrency = concurrency
        self.timed_window = timed_window
        self._wants = wants
        self._replay = replay
        self._summary = summary
        self._close = close
        self.stateful = replay is not None
        #: the method reads the record's example (not the source row): rows without a usable
        #: example pass through and reach the sinks as ``invalid_record``
        self.needs_example = METHODS[method].reads_example if method in METHODS else False

    def wants(self, item: Item) -> bool:
        """Whether the stage processes ``item`` (else it passes through unchanged)."""
        if item.error is not None and self.needs_example:
            return False
        if self._wants is not None:
            return self._wants(item.record)
        return item.record.status == STATUS_OK

    def process(self, items: list[Item]) -> list[OutputRecord]:
        """Outputs of ``items`` (all wanted): ``fanout`` per item, in item order.

        Raises:
            RuntimeError: the method returned another number of records (a bug).
        """
        if not items:
            return []
        outputs = self._process(items)
        if len(outputs) != self.fanout * len(items):
            raise RuntimeError(f"stage {self.name!r} ({self.method}) returned {len(outputs)} records for "
                               f"{len(items)} inputs (expected {self.fanout} each)")
        return outputs

    def replay(self, outputs: list[OutputRecord]) -> None:
        """Give back outputs written before a crash, in order (rebuilds state; default: nothing)."""
        if self._replay is not None:
            self._replay(outputs)

    def summary(self) -> dict[str, Any]:
        return dict(self._summary()) if self._summary is not None else {}

    def close(self) -> None:
        if self._close is not None:
            self._close()


class GeneratorStage:
    """Self-Instruct as a stage: all seeds in, rounds of records out.

    ``run(seeds, done)`` yields one list per round; ``done`` holds the records of the rounds
    written before a crash (``{"id", "status", "instruction", "extra"}``), so the pool is
    rebuilt and generation continues with the next round's seeds.
    """

    generator = True
    concurrency = 1
    stateful = True

    def __init__(self, name: str, method: Any, num_instructions: int):
        self.name = name
        self.method_obj = method
        self.method = "self-instruct"
        self.num_instructions = num_instructions

    def run(self, seeds: list[Example], done: list[dict[str, Any]]) -> Iterator[list[OutputRecord]]:
        return self.method_obj.run(seeds, self.num_instructions, done=done)

    def summary(self) -> dict[str, Any]:
        return dict(self.method_obj.summary)

    def close(self) -> None:
        pass


def _chunked_process(method: Any) -> Callable[[list[Item]], list[OutputRecord]]:
    def run(items: list[Item]) -> list[OutputRecord]:
        return list(method.process(item.as_input() for item in items))

    return run


def _base_dir_path(base_dir: str | os.PathLike[str], value: str) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else Path(base_dir) / path)


@dataclass(frozen=True)
class StageContext:
    """What a stage builder gets: the stage's spec and options, the engines, and its window."""

    spec: StageSpec
    engines: EngineRegistry
    base_dir: str | os.PathLike[str]
    window: int
    concurrency: int
    info: MethodInfo

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def options(self) -> Any:
        return self.spec.options


#: method name -> ``builder(StageContext) -> MapStage | GeneratorStage`` (see :func:`stage_builder`)
BUILDERS: dict[str, Callable[[StageContext], "MapStage | GeneratorStage"]] = {}


def stage_builder(method: str) -> Callable[[Callable[[StageContext], Any]], Callable[[StageContext], Any]]:
    """Decorator: register the builder of ``method``'s stage (the method must be in :data:`METHODS`)."""

    def decorate(builder: Callable[[StageContext], Any]) -> Callable[[StageContext], Any]:
        BUILDERS[method] = builder
        return builder

    return decorate


def build_stage(spec: StageSpec, engines: EngineRegistry, *, base_dir: str | os.PathLike[str] = ".",
                default_window: int = 256) -> MapStage | GeneratorStage:
    """The stage for ``spec``, its engine client taken from ``engines`` (shared per engine).

    Raises:
        OptionError / TemplateError: the method refuses its options (e.g. a template file with
            invalid syntax), or no builder is registered for it.
    """
    info = METHODS[spec.method]
    window = getattr(spec.options, info.window_field) if info.window_field else default_window
    builder = BUILDERS.get(spec.method)
    if builder is None:  # pragma: no cover - every built-in method registers one below
        raise OptionError("method", spec.method, f"choose one of {', '.join(BUILDERS)}")
    return builder(StageContext(spec, engines, base_dir, window, spec.concurrency or info.concurrency, info))


@stage_builder("template")
def _template_stage(ctx: StageContext) -> MapStage:
    from ..methods.template import TemplateFiller, builtin_templates, load_template

    options = ctx.options
    builtin = options.template in builtin_templates() and "/" not in options.template
    ref = options.template if builtin else _base_dir_path(ctx.base_dir, options.template)
    filler = TemplateFiller(load_template(ref), variables=options.variables or None)

    def fill(items: list[Item]) -> list[OutputRecord]:
        return list(filler.fill((item.as_input() for item in items), strict=options.strict))

    return MapStage(ctx.name, ctx.spec.method, fill, window=ctx.window, concurrency=ctx.concurrency)


@stage_builder("self-instruct")
def _self_instruct_stage(ctx: StageContext) -> GeneratorStage:
    from ..methods.self_instruct import SelfInstruct

    return GeneratorStage(ctx.name, SelfInstruct(ctx.engines.llm_client(ctx.spec.engine, ctx.name), ctx.options),
                          ctx.spec.num_instructions or 100)


def _llm_map_stage(ctx: StageContext, cls: type, fanout: int = 1) -> MapStage:
    method = cls(ctx.engines.llm_client(ctx.spec.engine, ctx.name), ctx.options)
    return MapStage(ctx.name, ctx.spec.method, _chunked_process(method), fanout=fanout, window=ctx.window,
                    concurrency=ctx.concurrency, summary=lambda: method.summary)


@stage_builder("respond")
def _respond_stage(ctx: StageContext) -> MapStage:
    from ..methods.respond import Responder

    return _llm_map_stage(ctx, Responder)


@stage_builder("humpback")
def _humpback_stage(ctx: StageContext) -> MapStage:
    from ..methods.humpback import Humpback

    return _llm_map_stage(ctx, Humpback)


@stage_builder("evolve")
def _evolve_stage(ctx: StageContext) -> MapStage:
    from ..methods.evol import Evolver

    return _llm_map_stage(ctx, Evolver, fanout=ctx.options.rounds)


@stage_builder("judge")
def _judge_stage(ctx: StageContext) -> MapStage:
    from ..methods.judge import Judge

    return _llm_map_stage(ctx, Judge)


@stage_builder("back-translate")
def _back_translate_stage(ctx: StageContext) -> MapStage:
    from ..methods.backtranslation import BackTranslator

    engine = ctx.engines.spec(ctx.spec.engine)
    bt_options = replace(ctx.options, source_lang=engine.source_lang, pivots=tuple(engine.pivots))
    translator = BackTranslator(models=ctx.engines.translation_clients(ctx.spec.engine, ctx.name), options=bt_options,
                                batching=engine.batching)
    return MapStage(ctx.name, ctx.spec.method, _chunked_process(translator), fanout=len(engine.pivots),
                    window=ctx.window, concurrency=ctx.concurrency, timed_window=ctx.info.timed_window,
                    summary=lambda: {"seconds": round(translator.seconds, 3)})


@stage_builder("filter")
def _filter_stage(ctx: StageContext) -> MapStage:
    from .filters import RecordFilter

    rules = RecordFilter(ctx.options)
    return MapStage(ctx.name, ctx.spec.method, lambda items: [rules.apply(item.record) for item in items],
                    window=ctx.window, concurrency=ctx.concurrency, wants=rules.wants)


@stage_builder("dedup")
def _dedup_stage(ctx: StageContext) -> MapStage:
    from .dedup import Deduplicator

    dedup = Deduplicator(ctx.options)

    def run(items: list[Item]) -> list[OutputRecord]:
        return list(dedup.process(item.record for item in items))

    def replay(outputs: list[OutputRecord]) -> None:
        kept = [rec for rec in outputs if rec.status == STATUS_OK]
        if kept:
            dedup.replay(kept)

    return MapStage(ctx.name, ctx.spec.method, run, window=ctx.window, concurrency=1, replay=replay,
                    summary=dedup.stats)


def plain(value: Any) -> Any:
    """``value`` with dataclasses, tuples and mappings turned into JSON-ready values."""
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
