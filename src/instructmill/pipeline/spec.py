"""Pipeline files: load YAML or TOML, validate every key, build the options dataclasses.

A pipeline file has five top-level keys::

    settings:            # optional: seed, queue_size, window, flush_seconds, state_dir, progress, report
      seed: 0
    engines:             # name -> engine; stages that name the same engine share one instance
      smol: {type: llm, backend: auto, model: embedded, dtype: float32}
      enpt: {type: translation, model: embedded, source_lang: en, pivots: [pt]}
    sources:             # name -> input file (streamed from disk)
      seeds: {path: ../data/seed_tasks.jsonl}
    stages:              # in order; `input` is a source or an earlier stage (default: the one before)
      - {name: generate, method: self-instruct, input: seeds, engine: smol, num_instructions: 100}
      - {method: respond, engine: smol}
      - {method: back-translate, engine: enpt, fields: [instruction, output]}
      - {method: dedup, threshold: 0.8}
    sinks:               # output files; `input` defaults to the last stage
      - {path: ../out/data.jsonl, format: alpaca}   # or data.parquet / data.arrow (converted at the end)

Engine keys are the fields of :class:`~instructmill.engine.llm.LLMEngineOptions` (``type: llm``)
or of :class:`~instructmill.engine.ctranslate2_backend.CTranslate2Options` and
:class:`~instructmill.engine.scheduler.BatchingOptions` (``type: translation``); stage keys are
the fields of the method's options dataclass (``SelfInstructOptions``, ``RespondOptions``,
``HumpbackOptions``, ``EvolOptions``, ``BackTranslationOptions``, ``FilterOptions``,
``DedupOptions``, ``TemplateOptions``; nested ones such as ``sampling`` as mappings), so the file
cannot drift from the Python API. Relative paths are relative to the pipeline file's folder.

Every problem raises :class:`PipelineSpecError` with ``FILE:LINE: key 'stages[2].method': ...``
and the valid choices. YAML is read with PyYAML's safe loader (no code runs); TOML with
:mod:`tomllib` (line numbers found by a small scan of the text).
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..models.llm_backends import backend_names
from ..errors import OptionError
from .specfile import (Doc, PipelineSpecError, build, check_keys, did_you_mean, load_toml, load_yaml, set_path,
                       typed, what)
from .stages import METHODS, canonical_method, option_fields

__all__ = ["EngineSpec", "PipelineSettings", "PipelineSpec", "PipelineSpecError", "SinkSpec", "SourceSpec",
           "StageSpec", "TEST_BACKENDS_ENV", "load_spec", "parse_spec"]

#: Set to ``1`` to allow ``backend: python`` engines (a factory named in the file; tests only).
TEST_BACKENDS_ENV = "INSTRUCTMILL_ALLOW_TEST_BACKENDS"

TOP_KEYS = ("settings", "engines", "sources", "stages", "sinks")
ENGINE_TYPES = ("llm", "translation")
LLM_BACKENDS = tuple(backend_names())  # the registry of models.llm_backends (plugins included)
TRANSLATION_BACKENDS = ("auto", "bergamot", "ctranslate2")
SINK_FORMATS = ("alpaca", "sharegpt", "openai")
SOURCE_FORMATS = ("jsonl", "ndjson", "json", "csv", "tsv", "parquet", "arrow")
#: Sink file extensions written as a table at the end of the run (see SinkSpec.export).
TABLE_SINK_EXTENSIONS = (".parquet", ".arrow")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


# ------------------------------------------------------------------------- spec objects

@dataclass(frozen=True)
class PipelineSettings:
    """Pipeline-wide settings.

    Attributes:
        seed: default ``seed`` of every method and engine that has one.
        queue_size: records each queue between two stages holds (memory bound).
        window: records per method call for stages without their own batch option (template,
            filter, dedup).
        flush_seconds: a stage whose input has been idle this long processes the records it
            holds (so a slow stage upstream does not starve the ones after it).
        state_dir: where checkpoints live (default: ``<first sink without .jsonl>.pipeline``).
        progress: progress bars per stage (``None``: when stderr is a terminal).
        report: write ``<sink>.report.json`` and ``.report.png`` next to every sink.
        card: write a Hugging Face dataset card ``<sink stem>.README.md`` next to every sink
            (:mod:`instructmill.io.card`).

    Raises:
        OptionError: a value out of range.
    """

    seed: int = 0
    queue_size: int = 256
    window: int = 256
    flush_seconds: float = 0.5
    state_dir: str | None = None
    progress: bool | None = None
    report: bool = True
    card: bool = True

    def __post_init__(self) -> None:
        for name in ("queue_size", "window"):
            if getattr(self, name) < 1:
                raise OptionError(name, getattr(self, name), "must be a positive integer")
        if self.flush_seconds < 0:
            raise OptionError("flush_seconds", self.flush_seconds, "must be >= 0")


#: Settings that change neither the records nor their order (left out of the resume fingerprint).
RUNTIME_ONLY_SETTINGS = ("queue_size", "window", "flush_seconds", "progress", "report", "card")


@dataclass(frozen=True)
class SourceSpec:
    """An input file, streamed record by record (:func:`~instructmill.io.readers.read_records`).

    Attributes:
        path: the file (relative to the pipeline file).
        format: jsonl, json, csv, tsv, parquet or arrow (default: from the extension; ``.arrow`` /
            ``.feather`` are Arrow IPC files or streams).
        id_field: field holding a record's id (else line number + content hash).
        limit: read only the first N records.
    """

    path: str
    format: str | None = None
    id_field: str = "id"
    limit: int | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if self.format is not None and self.format not in SOURCE_FORMATS:
            raise OptionError("format", self.format, f"choose one of {', '.join(SOURCE_FORMATS)}")
        if self.limit is not None and self.limit < 0:
            raise OptionError("limit", self.limit, "must be >= 0")
        if not self.path:
            raise OptionError("path", self.path, "name the input file")


@dataclass(frozen=True)
class SinkSpec:
    """An output file: ``ok`` records to ``path``, the others to ``<path stem>.discards.jsonl``.

    Attributes:
        path: the output JSONL (relative to the pipeline file).
        input: the stage (or source) it writes (default: the last stage).
        format: the records' shape: alpaca, sharegpt or openai.
        fsync: fsync after every batch (survives power loss, slower).
        name: its name in the report (default: the file name without .jsonl).
        export: a ``.parquet`` or ``.arrow`` file that receives the ``ok`` records when the run
            ends (:func:`~instructmill.io.tables.jsonl_to_table`). A sink ``path`` ending in
            ``.parquet`` / ``.arrow`` is short for ``path: <stem>.jsonl, export: <that path>``: the
            run writes and resumes the JSONL exactly as any sink, then converts it (the JSONL is
            kept: a later ``--resume`` continues from it and converts again).
    """

    path: str
    input: str | None = None
    format: str = "alpaca"
    fsync: bool = False
    name: str = ""
    export: str | None = None

    def __post_init__(self) -> None:
        if self.format not in SINK_FORMATS:
            hint = (" (format is the records' shape; for a Parquet / Arrow file name the path .parquet / .arrow "
                    "or set export)" if self.format in ("parquet", "arrow") else "")
            raise OptionError("format", self.format, f"choose one of {', '.join(SINK_FORMATS)}{hint}")
        if self.export is not None and not self.export.lower().endswith(TABLE_SINK_EXTENSIONS):
            raise OptionError("export", self.export, "name a .parquet or .arrow file")
        if not self.path or self.path == "-":
            raise OptionError("path", self.path, "name an output file")


@dataclass(frozen=True)
class EngineSpec:
    """One engine; every stage that names it shares one instance (one service).

    Attributes:
        name: its name in the file.
        type: ``"llm"`` or ``"translation"``.
        backend: llm: auto, vllm, ctranslate2, transformers; translation: auto, bergamot,
            ctranslate2; ``python`` (a ``factory``) only with ``INSTRUCTMILL_ALLOW_TEST_BACKENDS=1``.
        model: llm: ``embedded``, a known name, a folder, a GGUF file or a hub id; translation:
            ``embedded`` (en<->pt) or a CTranslate2 folder of a multilingual model.
        forward_model / backward_model: translation: a pair of bilingual CTranslate2 folders.
        source_lang / pivots: translation: the records' language and the pivot languages.
        allow_unverified: use a converted model whose verification failed.
        options: :class:`LLMEngineOptions` or :class:`CTranslate2Options`.
        batching: translation: :class:`BatchingOptions`.
        factory / params: ``backend: python``: ``"module:callable"`` and its keyword arguments.
    """

    name: str
    type: str
    backend: str = "auto"
    model: str | None = None
    forward_model: str | None = None
    backward_model: str | None = None
    source_lang: str = "en"
    pivots: tuple[str, ...] = ("pt",)
    allow_unverified: bool = False
    options: Any = None
    batching: Any = None
    factory: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StageSpec:
    """One stage.

    Attributes:
        name: unique name (default: the method's name, numbered when repeated).
        method: one of :data:`~instructmill.pipeline.stages.METHODS`.
        input: a source or an earlier stage.
        engine: the engine it uses (LLM and back-translate stages).
        options: the method's options dataclass.
        num_instructions: self-instruct: how many kept instructions to reach.
        concurrency: windows in flight (``None``: the method's default).
        index: position in ``stages``.
    """

    name: str
    method: str
    input: str
    engine: str | None
    options: Any
    num_instructions: int | None = None
    concurrency: int | None = None
    index: int = 0


@dataclass(frozen=True)
class PipelineSpec:
    """A validated pipeline (see the module docstring).

    Attributes:
        settings, engines, sources, stages, sinks: as in the file (names filled in).
        file: the pipeline file (``"<pipeline>"`` when built in code).
        base_dir: the folder relative paths are resolved against.
    """

    settings: PipelineSettings
    engines: dict[str, EngineSpec]
    sources: dict[str, SourceSpec]
    stages: tuple[StageSpec, ...]
    sinks: tuple[SinkSpec, ...]
    file: str = "<pipeline>"
    base_dir: str = "."

    def resolve(self, path: str) -> str:
        """``path`` relative to :attr:`base_dir` (absolute paths unchanged)."""
        p = Path(path).expanduser()
        return os.path.normpath(p if p.is_absolute() else Path(self.base_dir) / p)

    def consumers(self, name: str) -> list[str]:
        """Stages and sinks that read ``name``'s records, in file order."""
        return [s.name for s in self.stages if s.input == name] + [k.name for k in self.sinks if k.input == name]

    def fingerprint_data(self) -> dict[str, Any]:
        """Everything that changes the records (for the resume check): the whole spec except the
        settings in :data:`RUNTIME_ONLY_SETTINGS`."""
        from .stages import plain

        settings = {k: v for k, v in plain(self.settings).items() if k not in RUNTIME_ONLY_SETTINGS}
        return {
            "settings": settings,
            "engines": {n: plain(e) for n, e in self.engines.items()},
            "sources": {n: plain(s) for n, s in self.sources.items()},
            # keyed by name (not lists) so a resume refusal can name the changed key
            "stages": {s.name: plain(s) for s in self.stages},
            # a sink's export is a copy made at the end: adding one to a run being resumed is fine
            "sinks": {s.name: {k: v for k, v in plain(s).items() if k != "export"} for s in self.sinks},
        }


# ----------------------------------------------------------------------------- loading

def load_spec(path: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None) -> PipelineSpec:
    """Read and validate a pipeline file (``.yaml`` / ``.yml`` or ``.toml``).

    Args:
        path: the file.
        overrides: key path -> value, set before validation (``{"sources.rows.path": "big.jsonl",
            "stages.generate.num_instructions": 500}``; list entries by index ``stages[0]`` or by
            ``name``). The CLI's ``--set KEY=VALUE``.

    Raises:
        PipelineSpecError: unreadable file, invalid YAML/TOML, a bad override, or any invalid key
            (the message names file, line and key path).
    """
    name = os.fspath(path)
    from ..yamlload import config_file_problem

    problem = config_file_problem(name)  # before opening: a FIFO would block the read
    if problem is not None:
        raise PipelineSpecError(problem, file=name)
    try:
        text = Path(name).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise PipelineSpecError("no such file", file=name) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineSpecError(f"cannot be read as UTF-8 text: {exc}", file=name) from None
    if name.lower().endswith(".toml"):
        data, lines = load_toml(text, name)
    else:
        data, lines = load_yaml(text, name)
    for key, value in (overrides or {}).items():
        lines[set_path(data, key, value, name)] = None  # type: ignore[assignment]
    return parse_spec(data, file=name, lines=lines, base_dir=str(Path(name).resolve().parent))


def parse_spec(data: Any, *, file: str = "<pipeline>", lines: Mapping[str, int] | None = None,
               base_dir: str | os.PathLike[str] = ".") -> PipelineSpec:
    """Validate a pipeline given as plain data (what a YAML/TOML file holds).

    Args:
        data: the mapping with ``settings``, ``engines``, ``sources``, ``stages``, ``sinks``.
        file: named in error messages.
        lines: key path -> 1-based line, for error messages.
        base_dir: relative paths are relative to this folder.

    Raises:
        PipelineSpecError: any invalid key (unknown, missing, wrong type, invalid value).
    """
    doc = Doc(file, dict(lines or {}))
    if data is None:
        raise doc.error("", "the pipeline file is empty")
    if not isinstance(data, Mapping):
        raise doc.error("", f"must hold a mapping with keys {', '.join(TOP_KEYS)}, got {what(data)}")
    check_keys(data, TOP_KEYS, "", doc, required=("sources", "sinks"))

    settings = build(PipelineSettings, data.get("settings") or {}, "settings", doc)
    engines = _engines(data.get("engines") or {}, settings, doc)
    sources = _sources(data["sources"], doc)
    stages = _stages(data.get("stages") or [], sources, engines, settings, doc)
    sinks = _sinks(data["sinks"], sources, stages, doc)

    produced = {**{n: f"sources.{n}" for n in sources}, **{s.name: f"stages[{s.index}]" for s in stages}}
    used = {s.input for s in stages} | {k.input for k in sinks}
    for name, where in produced.items():
        if name not in used:
            raise doc.error(where, f"{name!r} feeds nothing: name it as the input of a stage or a sink")
    return PipelineSpec(settings=settings, engines=engines, sources=sources, stages=tuple(stages),
                        sinks=tuple(sinks), file=file, base_dir=str(base_dir))


# -------------------------------------------------------------------------- sections

def _named_mapping(data: Any, path: str, doc: Doc) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise doc.error(path, f"must be a mapping of names to entries, got {what(data)}")
    for name in data:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise doc.error(f"{path}.{name}", "names are letters, digits, '_', '-', '.' (up to 64)")
    return data


def _engines(data: Any, settings: PipelineSettings, doc: Doc) -> dict[str, EngineSpec]:
    out: dict[str, EngineSpec] = {}
    for name, entry in _named_mapping(data, "engines", doc).items():
        path = f"engines.{name}"
        if not isinstance(entry, Mapping):
            raise doc.error(path, f"must be a mapping, got {what(entry)}")
        kind = entry.get("type")
        if kind is None:
            raise doc.error(path, f"missing key 'type' (one of {', '.join(ENGINE_TYPES)})")
        if kind not in ENGINE_TYPES:
            raise doc.error(f"{path}.type", f"unknown engine type {kind!r}; choose one of {', '.join(ENGINE_TYPES)}")
        out[name] = _llm_engine(name, entry, settings, doc) if kind == "llm" else _translation_engine(name, entry, doc)
    return out


def _test_backends_allowed() -> bool:
    return os.environ.get(TEST_BACKENDS_ENV) == "1"


def _backend(entry: Mapping[str, Any], path: str, choices: tuple[str, ...], doc: Doc) -> str:
    backend = entry.get("backend", "auto")
    allowed = choices + (("python",) if _test_backends_allowed() else ())
    if backend == "python" and not _test_backends_allowed():
        raise doc.error(f"{path}.backend", f"backend 'python' runs code named in the pipeline file and is for "
                                           f"tests only: set {TEST_BACKENDS_ENV}=1 to allow it; "
                                           f"choose one of {', '.join(choices)}")
    if backend not in allowed:
        raise doc.error(f"{path}.backend", f"unknown backend {backend!r}; choose one of {', '.join(allowed)}")
    if backend == "python":
        if not isinstance(entry.get("factory"), str) or ":" not in entry["factory"]:
            raise doc.error(f"{path}.factory", "backend 'python' needs factory: 'module:callable'")
    elif "factory" in entry or "params" in entry:
        key = "factory" if "factory" in entry else "params"
        raise doc.error(f"{path}.{key}", "only for backend 'python'")
    return backend


def _llm_engine(name: str, entry: Mapping[str, Any], settings: PipelineSettings, doc: Doc) -> EngineSpec:
    from ..engine.llm import LLMEngineOptions

    path = f"engines.{name}"
    own = ("type", "backend", "model", "allow_unverified", "factory", "params")
    opt_keys = option_fields(LLMEngineOptions)
    check_keys(entry, own + tuple(opt_keys), path, doc)
    backend = _backend(entry, path, LLM_BACKENDS, doc)
    model = typed(entry.get("model"), str | None, f"{path}.model", doc)
    options = build(LLMEngineOptions, {k: v for k, v in entry.items() if k in opt_keys}, path, doc,
                     defaults={"seed": settings.seed})
    return EngineSpec(name=name, type="llm", backend=backend, model=model,
                      allow_unverified=typed(entry.get("allow_unverified", False), bool,
                                              f"{path}.allow_unverified", doc),
                      options=options, factory=entry.get("factory"),
                      params=typed(entry.get("params") or {}, dict[str, Any], f"{path}.params", doc))


def _translation_engine(name: str, entry: Mapping[str, Any], doc: Doc) -> EngineSpec:
    from ..engine.ctranslate2_backend import CTranslate2Options
    from ..engine.scheduler import BatchingOptions

    path = f"engines.{name}"
    own = ("type", "backend", "model", "forward_model", "backward_model", "source_lang", "pivots", "pivot",
           "allow_unverified", "factory", "params")
    ct2_keys = option_fields(CTranslate2Options)
    batch_keys = option_fields(BatchingOptions)
    check_keys(entry, own + tuple(ct2_keys) + tuple(batch_keys), path, doc)
    backend = _backend(entry, path, TRANSLATION_BACKENDS, doc)
    models = {k: typed(entry.get(k), str | None, f"{path}.{k}", doc)
              for k in ("model", "forward_model", "backward_model")}
    if (models["forward_model"] is None) != (models["backward_model"] is None):
        missing = "backward_model" if models["backward_model"] is None else "forward_model"
        raise doc.error(path, f"missing key {missing!r}: give forward_model and backward_model together "
                              "(a pair of bilingual models), or one multilingual 'model'")
    if models["forward_model"] is not None and models["model"] is not None:
        raise doc.error(f"{path}.model", "give either 'model' or forward_model + backward_model, not both")
    embedded = models["forward_model"] is None and models["model"] in (None, "embedded")
    if backend == "bergamot" and not embedded:
        raise doc.error(f"{path}.backend", "the bergamot backend runs the embedded en<->pt models only "
                                           "(model: embedded)")
    if backend == "ctranslate2" and embedded:
        raise doc.error(f"{path}.model", "backend ctranslate2 needs a CTranslate2 model folder "
                                         "(model, or forward_model + backward_model)")
    if "pivot" in entry and "pivots" in entry:
        raise doc.error(f"{path}.pivot", "give 'pivot' or 'pivots', not both")
    pivots_raw = entry.get("pivots", entry.get("pivot", ["pt"]))
    pivots = typed(pivots_raw, tuple[str, ...], f"{path}.{'pivot' if 'pivot' in entry else 'pivots'}", doc)
    source_lang = typed(entry.get("source_lang", "en"), str, f"{path}.source_lang", doc)
    if not pivots or len(set(pivots)) != len(pivots) or source_lang in pivots:
        raise doc.error(f"{path}.pivots", f"give distinct pivot languages other than the source "
                                          f"language {source_lang!r}, got {list(pivots)}")
    ct2 = {k: v for k, v in entry.items() if k in ct2_keys}
    if embedded and ct2 and backend != "python":
        raise doc.error(f"{path}.{next(iter(ct2))}", "CTranslate2 options do not apply to the embedded "
                                                     "models (model: embedded)")
    return EngineSpec(name=name, type="translation", backend=backend, model=models["model"],
                      forward_model=models["forward_model"], backward_model=models["backward_model"],
                      source_lang=source_lang, pivots=pivots,
                      allow_unverified=typed(entry.get("allow_unverified", False), bool,
                                              f"{path}.allow_unverified", doc),
                      options=build(CTranslate2Options, ct2, path, doc),
                      batching=build(BatchingOptions, {k: v for k, v in entry.items() if k in batch_keys}, path,
                                      doc),
                      factory=entry.get("factory"),
                      params=typed(entry.get("params") or {}, dict[str, Any], f"{path}.params", doc))


def _sources(data: Any, doc: Doc) -> dict[str, SourceSpec]:
    entries = _named_mapping(data, "sources", doc)
    if not entries:
        raise doc.error("sources", "name at least one source (an input file)")
    out = {}
    for name, entry in entries.items():
        if isinstance(entry, str):
            entry = {"path": entry}
        out[name] = replace_name(build(SourceSpec, entry, f"sources.{name}", doc, exclude=("name",)), name)
    return out


def replace_name(obj: Any, name: str) -> Any:
    return dataclasses.replace(obj, name=name)


def _stages(data: Any, sources: dict[str, SourceSpec], engines: dict[str, EngineSpec],
            settings: PipelineSettings, doc: Doc) -> list[StageSpec]:
    if not isinstance(data, list):
        raise doc.error("stages", f"must be a list of stages, got {what(data)}")
    stages: list[StageSpec] = []
    names: dict[str, str] = {n: f"sources.{n}" for n in sources}
    methods_seen: dict[str, int] = {}
    for i, entry in enumerate(data):
        path = f"stages[{i}]"
        if not isinstance(entry, Mapping):
            raise doc.error(path, f"must be a mapping with 'method' and the method's options, got {what(entry)}")
        if "method" not in entry:
            raise doc.error(path, f"missing key 'method'; choose one of {', '.join(METHODS)}")
        raw_method = entry["method"]
        method = canonical_method(raw_method) if isinstance(raw_method, str) else None
        if method is None:
            hint = did_you_mean(str(raw_method), list(METHODS))
            raise doc.error(f"{path}.method", f"unknown method {raw_method!r}; choose one of "
                                              f"{', '.join(METHODS)}{hint}")
        info = METHODS[method]
        try:
            options_cls = info.options()
        except ImportError as exc:
            raise doc.error(f"{path}.method", f"method {method!r} is not available: {exc}") from None
        structural = ("name", "method", "input", "concurrency") + (("engine",) if info.engine else ()) + (
            ("num_instructions",) if info.generator else ())
        opt_keys = [k for k in option_fields(options_cls) if k not in info.exclude]
        check_keys(entry, structural + tuple(opt_keys), path, doc)

        methods_seen[method] = methods_seen.get(method, 0) + 1
        name = entry.get("name")
        if name is None:
            name = method if methods_seen[method] == 1 else f"{method}-{methods_seen[method]}"
        elif not isinstance(name, str) or not _NAME_RE.match(name):
            raise doc.error(f"{path}.name", "names are letters, digits, '_', '-', '.' (up to 64)")
        if name in names:
            raise doc.error(f"{path}.name" if "name" in entry else path,
                            f"the name {name!r} is already used by {names[name]}; give this stage its own 'name'")

        if "input" in entry:
            source = entry["input"]
            if not isinstance(source, str) or source not in names:
                known = ", ".join(names) or "none yet"
                raise doc.error(f"{path}.input", f"unknown input {source!r}: name a source or an earlier stage "
                                                 f"({known})")
        elif stages:
            source = stages[-1].name
        elif len(sources) == 1:
            source = next(iter(sources))
        else:
            raise doc.error(path, f"missing key 'input': name one of the sources ({', '.join(sources)})")

        engine = None
        if info.engine:
            kind = info.engine
            fitting = [n for n, e in engines.items() if e.type == kind]
            engine = entry.get("engine")
            if engine is None:
                if len(fitting) != 1:
                    raise doc.error(path, f"missing key 'engine': method {method!r} needs a {kind} engine "
                                          f"({', '.join(fitting) or 'none declared under engines'})")
                engine = fitting[0]
            elif engine not in engines or engines[engine].type != kind:
                raise doc.error(f"{path}.engine", f"{engine!r} is not a {kind} engine; declared {kind} engines: "
                                                  f"{', '.join(fitting) or 'none'}")

        defaults = {"seed": settings.seed} if "seed" in opt_keys else {}
        options = build(options_cls, {k: v for k, v in entry.items() if k in opt_keys}, path, doc,
                         defaults=defaults, exclude=info.exclude)
        concurrency = typed(entry.get("concurrency"), int | None, f"{path}.concurrency", doc)
        if concurrency is not None and concurrency < 1:
            raise doc.error(f"{path}.concurrency", f"must be a positive integer, got {concurrency}")
        if concurrency not in (None, 1) and (info.stateful or info.generator):
            raise doc.error(f"{path}.concurrency", f"method {method!r} keeps state across records and runs "
                                                   "one window at a time (concurrency 1)")
        num = None
        if info.generator:
            num = typed(entry.get("num_instructions", 100), int, f"{path}.num_instructions", doc)
            if num < 1:
                raise doc.error(f"{path}.num_instructions", f"must be a positive integer, got {num}")
        names[name] = path
        stages.append(StageSpec(name=name, method=method, input=source, engine=engine, options=options,
                                num_instructions=num, concurrency=concurrency, index=i))
    return stages


def _sinks(data: Any, sources: dict[str, SourceSpec], stages: list[StageSpec], doc: Doc) -> list[SinkSpec]:
    if isinstance(data, Mapping):
        raise doc.error("sinks", "must be a list of sinks (write '- path: ...')")
    if not isinstance(data, list) or not data:
        raise doc.error("sinks", f"must be a non-empty list of sinks, got {what(data)}")
    producers = list(sources) + [s.name for s in stages]
    out: list[SinkSpec] = []
    paths: dict[str, str] = {}
    for i, entry in enumerate(data):
        path = f"sinks[{i}]"
        if isinstance(entry, str):
            entry = {"path": entry}
        sink = build(SinkSpec, entry, path, doc)
        stem, ext = os.path.splitext(sink.path)
        if ext.lower() in TABLE_SINK_EXTENSIONS:  # written as JSONL (exact resume), converted at the end
            if sink.export is not None:
                raise doc.error(f"{path}.export", f"the path {sink.path!r} is already a table file; give one of them")
            sink = dataclasses.replace(sink, path=stem + ".jsonl", export=sink.path)
        source = sink.input
        if source is None:
            if stages:
                source = stages[-1].name
            elif len(sources) == 1:
                source = next(iter(sources))
            else:
                raise doc.error(path, f"missing key 'input': name one of {', '.join(producers)}")
        elif source not in producers:
            raise doc.error(f"{path}.input", f"unknown input {source!r}; choose one of {', '.join(producers)}")
        name = sink.name or Path(sink.path).name.removesuffix(".jsonl")
        key = os.path.normpath(sink.path)
        if key in paths:
            raise doc.error(f"{path}.path", f"{sink.path!r} is already written by {paths[key]}")
        paths[key] = path
        if any(s.name == name for s in out):
            name = f"{name}-{i}"
        out.append(dataclasses.replace(sink, input=source, name=name))
    return out
