"""The driver side of the Ray executor: one run's roots, Ray Datasets, driver stages, sinks, counters.

:class:`RunContext` does the work :class:`~instructmill.pipeline.ray_executor.RayExecutor` sets
up: per root (:mod:`~instructmill.pipeline.ray_plan`) it reads the source with the local
runtime's ``SourceNode`` (or runs Self-Instruct in one actor), turns the pending rows into a Ray
Dataset, chains one ``map_batches`` per operator
(:class:`~instructmill.pipeline.ray_actors.StageOp`), then reads the rows back in order, runs the
driver stages (dedup and after), writes the sinks and appends a progress mark
(:mod:`~instructmill.pipeline.ray_state`). It also keeps the numbers the report needs: per-node
counters, each replica's latest engine counters and method summary (summed at the end).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import traceback
import uuid
import warnings
from typing import Any, Callable, Iterator

from ..errors import InstructmillError, ResumeError
from ..records import Example, OutputRecord
from ..status import STATUS_OK
from .checkpoint import CheckpointFile, StateDir, decode_record, encode_line
from .ray_actors import (BATCH_KEY, GeneratorWorker, StageFailed, StageOp, column_name, decode_items, encode_items,
                         process_rows, run_task_op, stage_label, stats_column)
from .ray_plan import RayOptions, RayPlan, RootPlan
from .ray_state import ProgressLog, SinkWriter, merge_counters, truncate_to
from .spec import PipelineSpec
from .stages import Item, MapStage, build_stage

__all__ = ["RunContext", "StageFailedError"]

log = logging.getLogger("instructmill.pipeline")

_HINT = "; what was done is kept: fix the cause and run again with --resume"


def _fault_args(**values: int | None) -> dict[str, int]:
    """The fault-tolerance options that were set (unset: Ray Data's defaults -- actors restarted
    and their batches retried without limit)."""
    return {k: v for k, v in values.items() if v is not None}


@contextlib.contextmanager
def _quiet_remote_args() -> Iterator[None]:
    """Ray 2.60 deprecates passing ``max_restarts`` & co. to ``map_batches`` (no named parameter
    replaces them yet); they still work, so the warning is not shown to users."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*ray_remote_args.* is deprecated")
        yield


class _View:
    """What :func:`~instructmill.pipeline.report.build_report` reads of a node."""

    def __init__(self, name: str, stats: Any):
        self.name = name
        self.stats = stats


class _Summary:
    """A stage's method summary summed over its replicas (the report's ``method_summary``)."""

    def __init__(self) -> None:
        self.latest: dict[str, tuple[float, dict[str, Any]]] = {}

    def add(self, worker: str, seq: float, summary: dict[str, Any]) -> None:
        if not summary:
            return
        if worker not in self.latest or self.latest[worker][0] <= seq:
            self.latest[worker] = (seq, summary)

    def summary(self) -> dict[str, Any]:
        return merge_counters(s for _, s in self.latest.values())


def _stage_failure(exc: BaseException) -> StageFailed | None:
    """The :class:`StageFailed` inside a Ray error chain, if any."""
    stack: list[Any] = [exc]
    seen: set[int] = set()
    while stack:
        err = stack.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        cause = getattr(err, "cause", None)
        if isinstance(err, StageFailed) and not isinstance(cause, StageFailed):
            # the attributes, not args: Ray Data appends its retry advice to args[0]
            args = tuple(err.args) + ("", "", False, "")
            label = str(getattr(err, "label", args[0])).split("\n", 1)[0]
            return StageFailed(label, str(getattr(err, "detail", args[1])),
                               bool(getattr(err, "user_error", args[2])), str(getattr(err, "trace", args[3]) or ""))
        stack.extend([cause, err.__cause__, err.__context__])
    return None


class RayJobError(RuntimeError):
    """A Ray error as text (see :class:`StageFailedError`)."""


class StageFailedError(Exception):
    """A failure of a stage, a source or the Ray job, turned into a
    :class:`~instructmill.pipeline.runtime.PipelineError` once the run is cleaned up."""

    def __init__(self, label: str, cause: BaseException, *, detail: str | None = None, user_error: bool = False,
                 trace: str = ""):
        super().__init__(label)
        if type(cause).__module__.split(".")[0] == "ray":
            # A Ray error object keeps the failed job's actors (and their CPUs/GPUs) alive for as
            # long as it lives; the user may hold our error for long (an except block, a test),
            # and the next run in this process would wait for resources forever. Keep its text.
            trace = trace or "".join(traceback.format_exception(cause))
            detail = detail or f"{type(cause).__name__}: {cause}"
            cause = RayJobError(detail)
        self.label, self.cause, self.detail, self.user_error, self.trace = label, cause, detail, user_error, trace

    @classmethod
    def of(cls, failed: StageFailed, cause: BaseException) -> StageFailedError:
        return cls(failed.label, cause, detail=failed.detail, user_error=failed.user_error, trace=failed.trace)

    def as_pipeline_error(self) -> Exception:
        """A user error: its message; anything else: the traceback logged, the message naming the stage."""
        from .runtime import PipelineError

        if isinstance(self.cause, ResumeError):
            return self.cause
        if self.user_error or isinstance(self.cause, InstructmillError):
            detail = self.detail or str(self.cause)
            return PipelineError(f"{self.label}: {detail}{_HINT}", node=self.label, cause=self.cause)
        detail = self.detail or f"{type(self.cause).__name__}: {self.cause}"
        trace = self.trace or "".join(traceback.format_exception(self.cause))
        log.error("%s failed:\n%s", self.label, trace)
        return PipelineError(f"{self.label} failed: {detail} (traceback above){_HINT}", node=self.label,
                             cause=self.cause)


# ------------------------------------------------------------------------ one run's state

class _Blocks:
    """Rows -> pyarrow tables ``{"idx": int64, column: JSON items}`` of ``size`` rows; rows
    before ``done`` (written by an earlier session) are counted, not kept; with ``keep=False``
    nothing is kept (a root nobody reads row by row)."""

    def __init__(self, column: str, size: int, done: int, *, keep: bool = True):
        self.column, self.size, self.done, self.keep = column, size, done, keep
        self.tables: list[Any] = []
        self.total = 0
        self._idx: list[int] = []
        self._texts: list[str] = []

    def add(self, i: int, item: Item) -> None:
        self.total = i + 1
        if not self.keep or i < self.done:
            return
        self._idx.append(i)
        self._texts.append(encode_items([item]))
        if len(self._idx) >= self.size:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._idx:
            self.tables.append(pa.table({"idx": pa.array(self._idx, pa.int64()),
                                         self.column: pa.array(self._texts, pa.string())}))
            self._idx, self._texts = [], []

    def finish(self) -> tuple[list[Any], int]:
        """``(tables, rows in all)``."""
        self._flush()
        return self.tables, self.total


class RunContext:
    """Everything one Ray run keeps on the driver: stats, sinks, driver stages, progress.

    Args:
        spec: the pipeline.
        options: the Ray options.
        engines / service_factory: as :class:`~instructmill.pipeline.ray_executor.RayExecutor`.
        ray: the ``ray`` module (connected).
        state: the run's state folder (prepared).
        resumed: whether an earlier run is continued.
        on_batch: test hook (see :meth:`RayExecutor.run`).
    """

    def __init__(self, spec: PipelineSpec, options: RayOptions, engines: dict[str, Any] | None,
                 service_factory: Any, ray: Any, state: StateDir, resumed: bool,
                 on_batch: Callable[[dict[str, Any]], None] | None):
        from .nodes import NodeStats

        self.spec = spec
        self.options = options
        self.engines = engines
        self.service_factory = service_factory
        self.ray = ray
        self.state = state
        self.resumed = resumed
        self.on_batch = on_batch
        self.token = uuid.uuid4().hex
        self._NodeStats = NodeStats
        self.stats: dict[tuple[str, str], Any] = {}
        self.sinks: dict[str, SinkWriter] = {}
        self.driver_stages: dict[str, MapStage] = {}
        self.checkpoints: dict[str, CheckpointFile] = {}
        self.registry: Any = None
        self.progress: ProgressLog | None = None
        self.seeds: dict[str, list[Item]] = {}
        self.stage_summaries: dict[str, _Summary] = {}
        self.engine_snapshots: dict[str, dict[str, tuple[float, dict[str, Any]]]] = {}
        self.plan: RayPlan | None = None

    # ------------------------------------------------------------------------ setup
    def setup(self, plan: RayPlan, progress_path: str, t0: float) -> None:
        """Counters per node (their clocks start at ``t0``, a ``time.perf_counter()``); the stages
        without an engine built here first (a bad template fails before anything is written) and
        the driver stages kept; then, resuming, the last progress mark read, every file cut back to
        it and the driver stages' state rebuilt."""
        from .engines import EngineRegistry

        spec = self.spec
        self.plan = plan
        for name in spec.sources:
            self.stats[("source", name)] = self._NodeStats(name, "source", t0=t0)
        for stage in spec.stages:
            stats = self._NodeStats(stage.name, "stage", stage.method, t0=t0)
            stats.extra["placement"] = plan.placement.get(stage.name, "ray")
            self.stats[("stage", stage.name)] = stats
            self.stage_summaries[stage.name] = _Summary()
        self.registry = EngineRegistry(spec, overrides=self.engines, service_factory=self.service_factory)
        driver = [n for root in plan.roots for n in root.driver_stages]
        for stage in spec.stages:
            if stage.engine is not None and stage.name not in driver:
                continue  # built by its actors
            label = stage_label(stage.name, stage.method)
            try:
                built = build_stage(stage, self.registry, base_dir=spec.base_dir, default_window=spec.settings.window)
            except InstructmillError as exc:
                from .runtime import PipelineError

                raise PipelineError(f"{label}: {exc}", node=label, cause=exc) from exc
            if stage.name in driver:
                assert isinstance(built, MapStage)
                self.driver_stages[stage.name] = built
        self.progress = ProgressLog(progress_path, fsync=any(s.fsync for s in spec.sinks))
        if self.resumed:
            self.progress.load()
        sizes = self.progress.sizes if self.resumed else None
        for sink in spec.sinks:
            stats = self._NodeStats(sink.name, "sink", t0=t0)
            self.stats[("sink", sink.name)] = stats
            self.sinks[sink.name] = SinkWriter(sink, spec.resolve(sink.path), stats, sizes=sizes)
        for name, stage in self.driver_stages.items():
            self._replay(name, stage, sizes)

    def _replay(self, name: str, stage: MapStage, sizes: dict[str, int] | None) -> None:
        """Open a driver stage's checkpoint; resuming, cut it to its mark and rebuild the stage's state."""
        path = self.state.stage_file(name)
        checkpoint = self.checkpoints[name] = CheckpointFile(path)
        if sizes is None:
            return
        truncate_to(path, int(sizes.get(path, 0)))
        for line in checkpoint.lines():
            if "out" in line:
                stage.replay([decode_record(d) for d in line["out"]])

    def start(self) -> None:
        for stats in self.stats.values():
            stats.start()

    def close(self) -> None:
        for sink in self.sinks.values():
            sink.close()
        for checkpoint in self.checkpoints.values():
            checkpoint.close()
        if self.progress is not None:
            self.progress.close()
        if self.registry is not None:
            self.registry.close()
        for stats in self.stats.values():
            if stats.started is not None and stats.finished is None:
                stats.finished = stats.now()
                stats.close_timeline()

    # ------------------------------------------------------------------------- roots
    def run_root(self, root: RootPlan) -> None:
        """Read (or generate) the root's records, run its operators, write its sinks."""
        assert self.progress is not None
        done = self.progress.rows.get(root.name, 0) if self.resumed else 0
        if root.kind == "source":
            tables, total = self._source_blocks(root, done)
        else:
            items = self._generate(root)
            tables, total = self._blocks(root, ((i, item) for i, item in enumerate(items)), done)
        if total <= done or not (root.ops or root.driver_stages or root.sinks):
            return
        batches: Iterator[Any] = iter(tables)
        if root.ops:
            batches = self._dataset(root, tables)
        expected = done
        try:
            for table in batches:
                idx = table.column("idx").to_pylist()
                if idx != list(range(expected, expected + len(idx))):
                    raise StageFailedError(f"source {root.name!r}", RuntimeError(
                        f"Ray Data returned rows {idx[:3]}... where row {expected} was next (rows out of order)"))
                expected += len(idx)
                self._consume(root, table)
                if self.on_batch is not None:
                    self.on_batch({"root": root.name, "rows": expected})
                sizes: dict[str, int] = {}
                for sink in root.sinks:
                    sizes.update(self.sinks[sink.name].sizes())
                for name in root.driver_stages:
                    path = self.state.stage_file(name)
                    sizes[path] = os.path.getsize(path) if os.path.exists(path) else 0
                self.progress.mark(root.name, expected, sizes)
        finally:
            close = getattr(batches, "close", None)
            if close is not None:  # stops the Ray job when the driver gives up early
                close()
        if expected != total:
            raise StageFailedError(f"source {root.name!r}", RuntimeError(
                f"Ray Data returned {expected - done} rows of {total - done}"))

    def _blocks(self, root: RootPlan, rows: Iterator[tuple[int, Item]], done: int) -> tuple[list[Any], int]:
        """The pending rows (``idx >= done``) as pyarrow tables of ``root.block_rows`` rows."""
        blocks = _Blocks(column_name(root.name), root.block_rows, done)
        for i, item in rows:
            blocks.add(i, item)
        return blocks.finish()

    def _source_blocks(self, root: RootPlan, done: int) -> tuple[list[Any], int]:
        """Read a source with the local runtime's ``SourceNode`` (same ids, errors file, invalid
        rows), straight into blocks (and the seeds of the Self-Instruct stages that read it)."""
        from .nodes import SourceNode

        spec = self.spec
        seeds: list[Item] | None = None
        if any(r.kind == "generator" and r.source == root.name for r in self.plan.roots):
            seeds = self.seeds[root.name] = []
        blocks = _Blocks(column_name(root.name), root.block_rows, done,
                         keep=bool(root.ops or root.driver_stages or root.sinks))

        class _Collect:
            def put(self, item: Any) -> None:
                if isinstance(item, Item):
                    if seeds is not None:
                        seeds.append(item)
                    blocks.add(blocks.total, item)

        class _Bar:
            def update(self, n: int) -> None:
                pass

        source = spec.sources[root.name]
        node = SourceNode(root.name, source, spec.resolve(source.path), self.state.errors_file(root.name),
                          self.stats[("source", root.name)], [_Collect()], _Bar())
        try:
            node.run()
        except (InstructmillError, OSError) as exc:
            raise StageFailedError(f"source {root.name!r}", exc) from None
        return blocks.finish()

    # --------------------------------------------------------------------- Ray Data
    def _dataset(self, root: RootPlan, tables: list[Any]) -> Iterator[Any]:
        ray = self.ray
        opts = self.options
        ds = ray.data.from_arrow(tables)
        tables.clear()
        for op in root.ops:
            kwargs: dict[str, Any] = dict(spec=self.spec, stages=list(op.stages), engines=self.engines,
                                          service_factory=self.service_factory,
                                          engine_threads=dict(op.threads), drop=list(op.drop))
            if op.engine_stage:
                multi = op.concurrency > 1
                compute = ray.data.ActorPoolStrategy(size=op.replicas,
                                                     max_concurrent_calls_per_actor=op.concurrency if multi else None,
                                                     enable_true_multi_threading=True if multi else None)
                fault = _fault_args(max_restarts=opts.max_restarts, max_task_retries=opts.max_task_retries)
                with _quiet_remote_args():
                    ds = ds.map_batches(StageOp, compute=compute, fn_constructor_kwargs=kwargs,
                                        batch_size=op.batch_size, batch_format="pyarrow", num_cpus=op.num_cpus,
                                        num_gpus=op.num_gpus or None, **fault)
            else:
                fault = _fault_args(max_retries=opts.max_task_retries)
                with _quiet_remote_args():
                    ds = ds.map_batches(run_task_op, fn_kwargs={"token": f"{self.token}-{op.stages[0]}", **kwargs},
                                        batch_size=op.batch_size, batch_format="pyarrow", num_cpus=op.num_cpus,
                                        **fault)
        try:
            yield from ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=1)
        except StageFailedError:
            raise
        except Exception as exc:  # noqa: BLE001 - Ray's errors wrap the stage's
            failed = _stage_failure(exc)
            if failed is not None:
                raise StageFailedError.of(failed, exc) from None
            stages = ", ".join(n for op in root.ops for n in op.stages)
            raise StageFailedError(f"the Ray job of {root.kind} {root.name!r} (stages {stages})", exc) from None

    def _consume(self, root: RootPlan, table: Any) -> None:
        """Stats of the Ray stages, then the driver stages, then the sinks, for one batch of rows."""
        spec = self.spec
        by_name = {s.name: s for s in spec.stages}
        columns: dict[str, list[list[Item]]] = {}

        def items_of(node: str) -> list[list[Item]]:
            if node not in columns:
                columns[node] = [decode_items(t) for t in table.column(column_name(node)).to_pylist()]
            return columns[node]

        for op in root.ops:
            for name in op.stages:
                self._ray_stage_stats(name, table.column(stats_column(name)).to_pylist())
        for name in root.driver_stages:
            stage = self.driver_stages[name]
            stats = self.stats[("stage", name)]
            label = stage_label(name, by_name[name].method)
            rows_in = items_of(by_name[name].input)
            try:
                result = process_rows(stage, rows_in)
            except Exception as exc:  # noqa: BLE001 - named for the user
                raise StageFailedError(label, exc) from None
            self.checkpoints[name].append(result.lines)
            columns[name] = result.rows
            stats.records_in += sum(len(r) for r in rows_in)
            stats.passed_through += sum(result.passed)
            stats.busy_seconds += result.busy_seconds
            for rec in result.produced:
                if rec.status != STATUS_OK:
                    stats.discards[rec.status] += 1
            stats.add_out(sum(len(r) for r in result.rows))
        for sink in root.sinks:
            self.sinks[sink.name].write(items_of(sink.input))

    def _ray_stage_stats(self, name: str, entries: list[str]) -> None:
        """Add a batch's ``s:<stage>`` column (per-row counts, per-batch costs) to the stage's counters."""
        stats = self.stats[("stage", name)]
        out = 0
        for text in entries:
            entry = json.loads(text)
            stats.records_in += entry["i"]
            out += entry["o"]
            stats.passed_through += entry["p"]
            for status, n in (entry.get("d") or {}).items():
                stats.discards[status] += n
            batch = entry.get(BATCH_KEY)
            if batch:
                stats.busy_seconds += batch["busy"]
                self.stage_summaries[name].add(batch["worker"], batch["seq"], batch.get("summary") or {})
                for engine_name, counters in (batch.get("engine") or {}).items():
                    self._engine_snapshot(engine_name, batch["worker"], batch["seq"], counters)
        if out:
            stats.add_out(out)

    def _engine_snapshot(self, engine: str, worker: str, seq: float, counters: dict[str, Any]) -> None:
        latest = self.engine_snapshots.setdefault(engine, {})
        if worker not in latest or latest[worker][0] <= seq:
            latest[worker] = (seq, counters)

    # --------------------------------------------------------------------- Self-Instruct
    def _generate(self, root: RootPlan) -> list[Item]:
        """Run a Self-Instruct stage in one actor; returns its output items (unusable seeds
        first, as the local runtime emits them, then the rounds' records)."""
        ray = self.ray
        name = root.name
        stats = self.stats[("stage", name)]
        label = stage_label(name, "self-instruct")
        out: list[Item] = []
        examples: list[Example] = []
        for item in self.seeds.get(root.source, []):
            stats.records_in += 1
            if item.error is None and item.record.status == STATUS_OK:
                examples.append(item.record.example)
            else:  # not a usable seed: on to the sinks' discards
                stats.passed_through += 1
                stats.add_out(1)
                out.append(item)
        checkpoint = CheckpointFile(self.state.stage_file(name))
        done: list[dict[str, Any]] = []

        def take(outputs: list[OutputRecord], replayed: bool) -> None:
            done.extend({"id": r.id, "status": r.status, "instruction": r.example.instruction, "extra": r.extra}
                        for r in outputs)
            for rec in outputs:
                if rec.status != STATUS_OK:
                    stats.discards[rec.status] += 1
            if replayed:
                stats.replayed_out += len(outputs)
            out.extend(Item(r) for r in outputs)
            stats.add_out(len(outputs))

        if self.resumed:
            checkpoint.repair()
            for line in checkpoint.lines():
                take([decode_record(d) for d in line["out"]], True)
        gen = root.generator or {}
        restarts = self.options.max_restarts
        remote: dict[str, Any] = {"num_cpus": gen.get("num_cpus", 1.0),
                                  "max_restarts": -1 if restarts is None else restarts}
        if gen.get("num_gpus"):
            remote["num_gpus"] = gen["num_gpus"]
        actor = ray.remote(GeneratorWorker).options(**remote).remote(
            self.spec, name, self.engines, self.service_factory, gen.get("threads") or {})
        # a round lost with its actor is asked again of the restarted actor; with a finite
        # max_restarts the actor is gone for good after that many deaths
        limit = self.options.max_task_retries
        if limit is None:
            limit = restarts if restarts is not None else -1
        failures = 0
        started = False
        try:
            while True:
                try:
                    if not started:
                        ray.get(actor.start.remote(examples, list(done)))
                        started = True
                    result = ray.get(actor.next_round.remote())
                except ray.exceptions.RayActorError as exc:
                    failures += 1
                    if limit != -1 and failures > limit:
                        raise StageFailedError(label, exc, detail=f"its actor died {failures} times ({exc})") from None
                    log.warning("%s: its actor died (%s); restarting from the records received so far", label, exc)
                    started = False
                    time.sleep(0.5)
                    continue
                except Exception as exc:  # noqa: BLE001
                    failed = _stage_failure(exc)
                    if failed is not None:
                        raise StageFailedError.of(failed, exc) from None
                    raise StageFailedError(label, exc) from None
                if result is None:
                    break
                stats.busy_seconds += result["busy"]
                self.stage_summaries[name].add(result["worker"], 0, result.get("summary") or {})
                for engine_name, counters in (result.get("engine") or {}).items():
                    self._engine_snapshot(engine_name, result["worker"], 0, counters)
                if not result["records"]:
                    continue
                key = f"round-{(result['records'][0].get('extra') or {}).get('round', '?')}"
                line = encode_line({"in": key, "out": result["records"]})
                checkpoint.append([line])
                take([decode_record(d) for d in json.loads(line)["out"]], False)
        finally:
            checkpoint.close()
            try:
                ray.get(actor.close.remote(), timeout=120)  # lets the engine shut down its own processes
            except Exception:  # noqa: BLE001 - dead or stuck: killed below
                pass
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
        stats.finished = stats.now()
        return out

    # ------------------------------------------------------------------------- report
    def views(self) -> list[Any]:
        out: list[Any] = [_View(name, stats) for (kind, name), stats in self.stats.items() if kind != "sink"]
        out.extend(self.sinks.values())
        return out

    def summaries(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.stage_summaries)
        out.update(self.driver_stages)
        return out

    def engine_stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, workers in self.engine_snapshots.items():
            merged = merge_counters(c for _, c in workers.values())
            merged["replicas_reporting"] = len(workers)
            out[name] = merged
        if self.registry is not None:  # engines of driver stages
            for name, stats in self.registry.stats().items():
                out[name] = merge_counters([out[name], stats]) if name in out else stats
        return out
