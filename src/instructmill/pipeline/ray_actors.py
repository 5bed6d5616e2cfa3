"""The worker side of the Ray executor: row encoding, stage work on rows, the Ray Data UDFs.

Nothing here imports Ray: :class:`StageOp` is a plain callable class that
:meth:`ray.data.Dataset.map_batches` runs in an actor pool (or, through :func:`run_task_op`, in
plain tasks), and :class:`GeneratorWorker` becomes a Ray actor with ``ray.remote`` in the driver
(:mod:`instructmill.pipeline.ray_executor`).

**Rows.** The Ray Dataset has one row per record of its root (a source record, or a record a
Self-Instruct stage generated): an ``idx`` column (the row's position, ``int64``) and, per
pipeline node, a column ``n:<node>`` holding that node's items for the row as a JSON list
(:func:`encode_items`): one item for the root, ``fanout`` items per wanted item after a stage,
the unwanted ones passed through in place. A stage's column ``s:<stage>`` holds per-row counts
(:func:`row_counts`: items in and out, passed through, discards by status) and, on the first
row of every batch, what the batch cost
(:data:`BATCH_KEY`: busy seconds, the worker's cumulative engine counters and method summary).

**Same records as the local executor.** :func:`~instructmill.pipeline.window.process_rows` is
what the local runtime's stage threads run on each window -- wanted items
processed ``stage.window`` at a time, ``fanout`` outputs each, unwanted items passed through in
place, outputs taken back from their checkpoint encoding -- so concatenating the rows' items, row
after row, gives the local stream, record for record.
"""
from __future__ import annotations

import json
import os
import time
import traceback
import uuid
from dataclasses import replace
from typing import Any, Iterable, Mapping

from ..errors import InstructmillError
from ..records import Example, InputRecord
from .checkpoint import decode_record, encode_record
from .spec import PipelineSpec
from .stages import GeneratorStage, Item, MapStage, build_stage
from .window import RowsResult, process_rows

__all__ = ["BATCH_KEY", "GeneratorWorker", "RowsResult", "StageFailed", "StageOp", "column_name", "decode_items",
           "encode_items", "engine_counters", "process_rows", "row_counts", "run_task_op", "stats_column",
           "worker_spec"]

#: Key of the batch-level entry in a stage's ``s:<stage>`` column (first row of each batch).
BATCH_KEY = "b"

#: Engine counters summed over replicas in the report (every other key is per replica).
ENGINE_COUNTERS = ("requests", "prompt_tokens", "output_tokens", "busy_seconds", "batches", "errors")


def column_name(node: str) -> str:
    """The column holding ``node``'s items (``n:<node>``)."""
    return f"n:{node}"


def stats_column(stage: str) -> str:
    """The column holding ``stage``'s per-row counts and per-batch costs (``s:<stage>``)."""
    return f"s:{stage}"


class StageFailed(Exception):
    """A stage failed inside a Ray worker; picklable, so the driver can name the stage.

    Args (also ``.args``): ``label`` (``"stage 'x' (method)"``), ``detail`` (``"Type: message"``
    or the user error's message), ``user_error`` (an :class:`InstructmillError`: bad input or
    options, reported without a traceback), ``trace`` (the worker's traceback otherwise).
    """

    def __init__(self, label: str, detail: str, user_error: bool = False, trace: str = ""):
        super().__init__(label, detail, user_error, trace)
        self.label, self.detail, self.user_error, self.trace = label, detail, user_error, trace

    def __str__(self) -> str:
        return f"{self.label}: {self.detail}"


# ------------------------------------------------------------------------------ items

def _encode_item(item: Item) -> dict[str, Any]:
    out: dict[str, Any] = {"r": encode_record(item.record)}
    raw = item.raw
    if raw is not None:
        out["w"] = [raw.id, raw.line, raw.fields, raw.shape, raw.source]
    if item.error is not None:
        out["e"] = item.error
        out["es"] = item.error_status
    return out


def _decode_item(data: Mapping[str, Any]) -> Item:
    raw = None
    if "w" in data:
        rid, line, fields, shape, source = data["w"]
        raw = InputRecord(id=rid, line=line, fields=fields, shape=shape, source=source)
    item = Item(decode_record(data["r"]), raw=raw, error=data.get("e"))
    if "es" in data:
        item.error_status = data["es"]
    return item


def encode_items(items: Iterable[Item]) -> str:
    """A row's items as one JSON text (record, source row while present, error)."""
    return json.dumps([_encode_item(item) for item in items], ensure_ascii=False)


def decode_items(text: str | None) -> list[Item]:
    """The inverse of :func:`encode_items` (``None`` / ``""``: no items)."""
    return [_decode_item(d) for d in json.loads(text)] if text else []


# ------------------------------------------------------------------------- stage work

def row_counts(n_in: int, n_out: int, passed: int, discards: Mapping[str, int]) -> dict[str, Any]:
    """One row's entry of a stage's ``s:`` column: items in / out, passed through, discards."""
    out: dict[str, Any] = {"i": n_in, "o": n_out, "p": passed}
    if discards:
        out["d"] = dict(discards)
    return out


def stage_label(name: str, method: str) -> str:
    return f"stage {name!r} ({method})"


def _failure(label: str, exc: BaseException) -> StageFailed:
    """``exc`` (being handled) as a :class:`StageFailed` of ``label``."""
    if isinstance(exc, InstructmillError):
        return StageFailed(label, str(exc), True)
    return StageFailed(label, f"{type(exc).__name__}: {exc}", False, traceback.format_exc())


def _snapshot(summary: Any) -> dict[str, Any]:
    """A JSON copy of a method's summary (``{}`` if another thread changed it meanwhile)."""
    try:
        return json.loads(json.dumps(summary(), default=repr))
    except RuntimeError:  # "dictionary changed size during iteration"
        return {}


def engine_counters(stats: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of an :meth:`EngineRegistry.stats` entry worth shipping per batch: names and the
    counters of :data:`ENGINE_COUNTERS` (per translation direction too); no timelines."""
    out: dict[str, Any] = {k: stats[k] for k in ("type", "kind", "backend", "model", "engine") if k in stats}
    out.update({k: stats[k] for k in ENGINE_COUNTERS if isinstance(stats.get(k), (int, float))})
    directions = stats.get("directions")
    if isinstance(directions, Mapping):
        out["directions"] = {name: engine_counters(d) for name, d in directions.items() if isinstance(d, Mapping)}
    return out


def worker_spec(spec: PipelineSpec, engine_threads: Mapping[str, int]) -> PipelineSpec:
    """``spec`` with the CPU threads of the named engines set where the file leaves them unset.

    A Ray actor holding ``num_cpus`` CPUs should run its engine on that many threads (the
    engines' own default is every core of the machine, which N replicas on one node would
    oversubscribe). CTranslate2 translation: ``inter_threads`` (one batch per thread, the
    measured fastest CPU setting), ``intra_threads = 1``; LLM engines: ``threads``.
    """
    engines = dict(spec.engines)
    for name, threads in engine_threads.items():
        engine = engines.get(name)
        if engine is None or engine.options is None or threads < 1:
            continue
        opts = engine.options
        if engine.type == "translation" and hasattr(opts, "inter_threads"):
            if opts.inter_threads is None and opts.intra_threads is None:
                engines[name] = replace(engine, options=replace(opts, inter_threads=threads, intra_threads=1))
        elif engine.type == "llm" and getattr(opts, "threads", 0) is None:
            engines[name] = replace(engine, options=replace(opts, threads=threads))
    return replace(spec, engines=engines)


# ----------------------------------------------------------------------- Ray Data UDF

class StageOp:
    """Runs some stages of one root on batches of rows: a Ray Data ``map_batches`` UDF.

    One instance is one replica: it builds its own :class:`EngineRegistry` (so its own engine
    instance) and its stages in ``__init__``; ``__call__`` takes a ``pyarrow.Table`` batch and
    returns it with the stages' ``n:`` / ``s:`` columns added and ``drop`` columns removed.

    Args:
        spec: the pipeline.
        stages: names of the stages to run, in pipeline order (their inputs are root / earlier
            columns of the batch).
        engines: engine overrides built in code (shipped to every replica by pickling).
        service_factory: builds the shared services (tests).
        engine_threads: engine -> CPU threads (see :func:`worker_spec`).
        drop: columns no later stage, sink or driver stage reads.

    Raises:
        StageFailed: a stage cannot be built or fails on a batch (names the stage).
    """

    def __init__(self, spec: PipelineSpec, stages: list[str], engines: dict[str, Any] | None = None,
                 service_factory: Any = None, engine_threads: Mapping[str, int] | None = None,
                 drop: Iterable[str] = ()):
        from .engines import EngineRegistry

        spec = worker_spec(spec, engine_threads or {})
        self.spec = spec
        self.drop = list(drop)
        self.key = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"  # identity of this replica's counters
        self.registry = EngineRegistry(spec, overrides=engines, service_factory=service_factory)
        by_name = {s.name: s for s in spec.stages}
        self.stages: list[tuple[Any, MapStage]] = []
        for name in stages:
            stage_spec = by_name[name]
            try:
                stage = build_stage(stage_spec, self.registry, base_dir=spec.base_dir,
                                    default_window=spec.settings.window)
            except Exception as exc:  # noqa: BLE001 - named and re-raised for the driver
                raise _failure(stage_label(name, stage_spec.method), exc) from None
            assert isinstance(stage, MapStage)
            self.stages.append((stage_spec, stage))

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        columns: dict[str, list[list[Item]]] = {}

        def items_of(node: str) -> list[list[Item]]:
            if node not in columns:
                columns[node] = [decode_items(t) for t in batch.column(column_name(node)).to_pylist()]
            return columns[node]

        added: dict[str, list[str]] = {}
        for stage_spec, stage in self.stages:
            label = stage_label(stage_spec.name, stage_spec.method)
            try:
                result = process_rows(stage, items_of(stage_spec.input))
            except Exception as exc:  # noqa: BLE001 - named and re-raised for the driver
                raise _failure(label, exc) from None
            columns[stage_spec.name] = result.rows
            added[column_name(stage_spec.name)] = [encode_items(items) for items in result.rows]
            stats = [row_counts(len(inp), len(out), passed, bad) for inp, out, passed, bad in
                     zip(columns[stage_spec.input], result.rows, result.passed, result.discards)]
            if stats:
                # cumulative counters of this replica; "seq" orders snapshots of concurrent calls
                entry: dict[str, Any] = {"busy": result.busy_seconds, "worker": self.key, "seq": time.monotonic(),
                                         "summary": _snapshot(stage.summary)}
                if stage_spec.engine:
                    engines = self.registry.stats()
                    if stage_spec.engine in engines:
                        entry["engine"] = {stage_spec.engine: engine_counters(engines[stage_spec.engine])}
                stats[0][BATCH_KEY] = entry
            added[stats_column(stage_spec.name)] = [json.dumps(s, ensure_ascii=False) for s in stats]
        keep = [c for c in batch.column_names if c not in self.drop and c not in added]
        out = batch.select(keep)
        for name, values in added.items():
            if name not in self.drop:
                out = out.append_column(name, pa.array(values, type=pa.string()))
        return out

    def close(self) -> None:
        self.registry.close()

    def __del__(self) -> None:  # pragma: no cover - best effort when Ray tears the actor down
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


_TASK_OPS: dict[str, StageOp] = {}


def run_task_op(batch: Any, *, token: str, **kwargs: Any) -> Any:
    """``map_batches`` function for stages without an engine run as plain Ray tasks: the
    :class:`StageOp` is built once per worker process (cached by ``token``, one per run)."""
    op = _TASK_OPS.get(token)
    if op is None:
        op = _TASK_OPS[token] = StageOp(**kwargs)
    return op(batch)


# ---------------------------------------------------------------------- Self-Instruct

class GeneratorWorker:
    """A Self-Instruct stage in one Ray actor (one engine replica): the driver sends the seeds
    and what earlier rounds produced (:meth:`start`), then pulls rounds (:meth:`next_round`).

    Rounds are sequential (each one's prompts depend on the pool so far), so one replica runs
    them; after a restart the driver calls :meth:`start` again with everything received so far
    and generation continues from the next round (the method's own resume).

    Raises:
        StageFailed: the stage cannot be built or fails.
    """

    def __init__(self, spec: PipelineSpec, stage: str, engines: dict[str, Any] | None = None,
                 service_factory: Any = None, engine_threads: Mapping[str, int] | None = None):
        from .engines import EngineRegistry

        spec = worker_spec(spec, engine_threads or {})
        stage_spec = next(s for s in spec.stages if s.name == stage)
        self.label = stage_label(stage, stage_spec.method)
        self.engine = stage_spec.engine
        self.key = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.registry = EngineRegistry(spec, overrides=engines, service_factory=service_factory)
        try:
            built = build_stage(stage_spec, self.registry, base_dir=spec.base_dir, default_window=spec.settings.window)
        except Exception as exc:  # noqa: BLE001
            raise _failure(self.label, exc) from None
        assert isinstance(built, GeneratorStage)
        self.stage = built
        self._rounds: Any = None

    def start(self, seeds: list[Example], done: list[dict[str, Any]]) -> bool:
        """Start (or restart) generation from ``seeds`` after the ``done`` records."""
        try:
            self._rounds = self.stage.run(seeds, done)
        except Exception as exc:  # noqa: BLE001
            raise _failure(self.label, exc) from None
        return True

    def next_round(self) -> dict[str, Any] | None:
        """The next round: ``{"records": [encoded records], "busy": seconds, "worker", "summary",
        "engine"}``, or ``None`` when generation is complete."""
        started = time.perf_counter()
        try:
            batch = next(self._rounds, None)
        except Exception as exc:  # noqa: BLE001
            raise _failure(self.label, exc) from None
        busy = time.perf_counter() - started
        if batch is None:
            return None
        engines = self.registry.stats()
        return {"records": [encode_record(r) for r in batch], "busy": busy, "worker": self.key,
                "summary": _snapshot(self.stage.summary),
                "engine": {self.engine: engine_counters(engines[self.engine])} if self.engine in engines else {}}

    def close(self) -> bool:
        self.registry.close()
        return True
