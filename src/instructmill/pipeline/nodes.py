"""The pipeline's threads: a source, a stage (map or generator) or a sink each, joined by bounded
:class:`Channel` s, each counting its work in a :class:`NodeStats` (see :mod:`~instructmill.pipeline.runtime`
for the data flow, order, checkpoints and failure rules they keep).
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import itertools
import json
import logging
import os
import queue
import sys
import threading
import time
from collections import Counter
from typing import Any

from ..errors import InstructmillError, RecordError, ResumeError
from ..io.resume import repair_jsonl, run_paths
from ..io.writers import JsonlWriter, format_record
from ..figures import QualityFigures
from ..records import Example, OutputRecord
from ..status import STATUS_INVALID_RECORD, STATUS_OK
from .checkpoint import CheckpointFile, decode_record, encode_line, encode_record
from .spec import SinkSpec, SourceSpec
from .stages import GeneratorStage, Item, MapStage
from .window import process_rows

__all__ = ["Channel", "GeneratorNode", "NodeStats", "PipelineError", "SinkNode", "SourceNode", "StageNode", "Stopped"]

log = logging.getLogger("instructmill.pipeline")

END = object()  # end-of-stream marker
_POLL = 0.1       # seconds between checks of the stop flag while blocked


#: Most characters of example text in one window of a stage with ``timed_window`` (back-translate):
#: a few seconds of work on 2 CPU cores, so its checkpoint lines come every few seconds.
WINDOW_CHARS = 20_000


def _example_chars(example: Example) -> int:
    return (len(example.instruction) + len(example.input) + len(example.output)
            + sum(len(u) + len(a) for u, a in example.history) + sum(len(a) for a in example.leading_assistant))


class PipelineError(InstructmillError):
    """A stage, source or sink failed; the message names it and the cause.

    Attributes:
        node: the failing stage / source / sink name.
        cause: the original exception.
    """

    def __init__(self, message: str, *, node: str | None = None, cause: BaseException | None = None):
        super().__init__(message)
        self.node = node
        self.cause = cause


class Stopped(Exception):
    """Raised inside a thread when the pipeline is stopping."""


class Channel:
    """A bounded queue whose blocking calls give up when the pipeline stops."""

    def __init__(self, maxsize: int, stop: threading.Event):
        self._q: queue.Queue = queue.Queue(maxsize)
        self._stop = stop

    def put(self, item: Any) -> None:
        while True:
            if self._stop.is_set():
                raise Stopped
            try:
                self._q.put(item, timeout=_POLL)
                return
            except queue.Full:
                continue

    def get(self, timeout: float | None = None) -> Any:
        """The next item; ``queue.Empty`` after ``timeout`` seconds (``None``: wait)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._stop.is_set():
                raise Stopped
            wait = _POLL if deadline is None else min(_POLL, max(0.0, deadline - time.monotonic()))
            try:
                return self._q.get(timeout=wait)
            except queue.Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    def get_nowait(self) -> Any:
        return self._q.get_nowait()


class NodeStats:
    """Counters of one source, stage or sink (thread-safe)."""

    def __init__(self, name: str, kind: str, method: str = "", t0: float = 0.0):
        self.name = name
        self.kind = kind
        self.method = method
        self._t0 = t0
        self._lock = threading.Lock()
        self.records_in = 0
        self.records_out = 0
        self.passed_through = 0
        self.replayed_in = 0
        self.replayed_out = 0
        self.discards: Counter[str] = Counter()
        self.busy_seconds = 0.0
        self.started: float | None = None
        self.finished: float | None = None
        self.timeline: list[tuple[float, int]] = []
        self._last_sample = -1.0
        self.extra: dict[str, Any] = {}
        self.quality = QualityFigures()  # of the records a stage emits, replayed ones included

    def now(self) -> float:
        return time.perf_counter() - self._t0

    def start(self) -> None:
        self.started = self.now()
        with self._lock:
            self.timeline.append((round(self.started, 3), self.records_out))

    def add_out(self, n: int) -> None:
        with self._lock:
            self.records_out += n
            t = self.now()
            if t - self._last_sample >= 0.2 or not self.timeline:
                self.timeline.append((round(t, 3), self.records_out))
                self._last_sample = t
            else:  # at most one point per 0.2 s: the latest count, at the point's time
                self.timeline[-1] = (self.timeline[-1][0], self.records_out)

    def close_timeline(self) -> None:
        with self._lock:
            self.timeline.append((round(self.now(), 3), self.records_out))

    def as_dict(self) -> dict[str, Any]:
        wall = (self.finished or self.now()) - (self.started or 0.0) if self.started is not None else 0.0
        out: dict[str, Any] = {"kind": self.kind}
        if self.method:
            out["method"] = self.method
        out.update(records_in=self.records_in, records_out=self.records_out,
                   ok_out=self.records_out - sum(self.discards.values()) - self.passed_through,
                   passed_through=self.passed_through, replayed_in=self.replayed_in,
                   replayed_out=self.replayed_out, discards=dict(sorted(self.discards.items())),
                   busy_seconds=round(self.busy_seconds, 3), wall_seconds=round(wall, 3),
                   records_per_second=round((self.records_out - self.replayed_out) / wall, 3) if wall > 0 else None,
                   timeline=[list(p) for p in self.timeline])
        if self.kind == "stage":
            out["quality"] = self.quality.as_dict()
        out.update(self.extra)
        return out


def progress_bar(enabled: bool, name: str, position: int, unit: str = "rec") -> Any:
    from tqdm import tqdm

    return tqdm(total=None, desc=name, position=position, unit=unit, disable=not enabled, file=sys.stderr,
                dynamic_ncols=True, leave=True, mininterval=0.5)


# ------------------------------------------------------------------------------- nodes

class Node:
    """A thread of the pipeline with its output channels."""

    def __init__(self, name: str, stats: NodeStats, outputs: list[Channel], bar: Any):
        self.name = name
        self.stats = stats
        self.outputs = outputs
        self.bar = bar
        self.thread: threading.Thread | None = None

    def emit(self, items: list[Item]) -> None:
        for item in items:
            for channel in self.outputs:
                channel.put(item)
        self.stats.add_out(len(items))
        self.bar.update(len(items))

    def finish(self) -> None:
        for channel in self.outputs:
            channel.put(END)

    def run(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class SourceNode(Node):
    """Streams one input file as items (the source row plus its example)."""

    def __init__(self, name: str, spec: SourceSpec, path: str, errors_path: str, stats: NodeStats,
                 outputs: list[Channel], bar: Any):
        super().__init__(name, stats, outputs, bar)
        self.spec = spec
        self.path = path
        self.errors_path = errors_path
        self.errors = 0
        self.duplicates = 0  # records kept under a derived id (their id was taken by an earlier one)
        self.failure: InstructmillError | None = None

    def run(self) -> None:
        from ..io.readers import read_records, to_example

        self.stats.start()
        seen_lines: set[int] = set()
        if os.path.exists(self.errors_path):
            seen_lines = {v for v in repair_jsonl(self.errors_path, "line").values if isinstance(v, int)}
        writer: JsonlWriter | None = None

        def on_error(err: Any) -> None:
            nonlocal writer
            self.errors += 1
            if err.line in seen_lines:
                return
            if writer is None:
                writer = JsonlWriter(self.errors_path, append=True)
            writer.write({"line": err.line, "error": err.error, "raw": err.raw, "source": err.source})
            seen_lines.add(err.line)

        try:
            records = read_records(self.path, format=self.spec.format, id_field=self.spec.id_field, on_error=on_error)
            if self.spec.limit is not None:
                records = itertools.islice(records, self.spec.limit)
            batch: list[Item] = []
            try:
                for raw in records:
                    try:
                        example, error, error_status = to_example(raw), None, STATUS_INVALID_RECORD
                    except RecordError as exc:
                        example, error, error_status = Example(instruction=""), str(exc), exc.status
                    if raw.duplicate_of is not None:
                        self.duplicates += 1
                    record = OutputRecord(raw.id, example, STATUS_OK, "source", {"source": self.name})
                    batch.append(Item(record, raw=raw, error=error, error_status=error_status))
                    if len(batch) >= 64:
                        self.emit(batch)
                        batch = []
            except InstructmillError as exc:
                # the input itself fails part-way (a truncated .gz): what was read still flows to the
                # sinks, and the run reports the failure once everything downstream has finished
                self.failure = exc
            self.emit(batch)
        finally:
            if writer is not None:
                writer.close()
        self.stats.extra.update(path=self.spec.path, read_errors=self.errors, duplicate_ids=self.duplicates,
                                errors_file=self.errors_path if self.errors else None)
        self.finish()


class StageNode(Node):
    """Runs a :class:`MapStage`: replay its checkpoint, then windows of live records."""

    def __init__(self, stage: MapStage, inp: Channel, checkpoint: CheckpointFile, stats: NodeStats,
                 outputs: list[Channel], bar: Any, *, flush_seconds: float, resumed: bool):
        super().__init__(stage.name, stats, outputs, bar)
        self.stage = stage
        self.inp = inp
        self.checkpoint = checkpoint
        self.flush_seconds = flush_seconds
        self.resumed = resumed
        self._busy_lock = threading.Lock()
        # windows of long records would hold minutes of work before their checkpoint line: such
        # stages also end a window at a size in characters (deterministic, so the same input gives
        # the same windows, batches and outputs in every run)
        self._chars = 0

    # ----------------------------------------------------------------- replay
    def _replay(self) -> None:
        if not self.resumed:
            return
        self.checkpoint.repair()
        for line in self.checkpoint.lines():
            item = self.inp.get()
            if item is END:
                raise ResumeError(f"stage {self.name!r}: its checkpoint {self.checkpoint.path} holds more records "
                                  "than its input gives now; the pipeline's input changed -- pass --overwrite")
            if line.get("in") != item.record.id:
                raise ResumeError(f"stage {self.name!r}: its input gave record {item.record.id!r} where the "
                                  f"checkpoint {self.checkpoint.path} has {line.get('in')!r}; the input changed "
                                  "since the run started -- pass --overwrite")
            self.stats.records_in += 1
            self.stats.replayed_in += 1
            if line.get("pass"):
                self.stats.passed_through += 1
                self.stats.replayed_out += 1
                self.emit([item])
                continue
            outputs = [decode_record(d) for d in line["out"]]
            self.stage.replay(outputs)
            self._count(outputs)
            self.stats.replayed_out += len(outputs)
            self.emit([Item(rec) for rec in outputs])

    def _count(self, outputs: list[OutputRecord]) -> None:
        for rec in outputs:
            self.stats.quality.observe(rec)
            if rec.status != STATUS_OK:
                self.stats.discards[rec.status] += 1

    # ------------------------------------------------------------------ live
    def _work(self, window: list[Item]) -> tuple[list[bytes], list[Item], list[OutputRecord]]:
        """Worker thread: run the method on a window; checkpoint lines and items to emit."""
        result = process_rows(self.stage, [window])
        with self._busy_lock:
            self.stats.busy_seconds += result.busy_seconds
        return result.lines, result.rows[0], result.produced

    def run(self) -> None:
        self.stats.start()
        self._replay()
        stage = self.stage
        cap = 2 * stage.window + 64  # window length incl. pass-through records

        def full(wanted: int, length: int) -> bool:
            if stage.timed_window and self._chars >= WINDOW_CHARS:
                return True
            return wanted >= stage.window or length >= cap

        inflight: collections.deque[tuple[list[Item], cf.Future]] = collections.deque()
        pool = cf.ThreadPoolExecutor(max_workers=stage.concurrency, thread_name_prefix=f"stage-{self.name}")

        def harvest(block: bool) -> None:
            while inflight and (block or inflight[0][1].done()):
                window, future = inflight.popleft()
                lines, emitted, produced = future.result()
                self.checkpoint.append(lines)
                self.stats.passed_through += len(window) - sum(1 for it in window if stage.wants(it))
                self._count(produced)
                self.emit(emitted)
                block = False  # waited for the head; take the others only if done

        def submit(window: list[Item]) -> None:
            while len(inflight) >= stage.concurrency:
                harvest(block=True)
            inflight.append((window, pool.submit(self._work, window)))

        try:
            window: list[Item] = []
            wanted = 0
            while True:
                timeout = self.flush_seconds if window else (_POLL if inflight else None)
                try:
                    item = self.inp.get(timeout=timeout)
                except queue.Empty:
                    if window and len(inflight) < stage.concurrency:
                        submit(window)
                        window, wanted, self._chars = [], 0, 0
                    harvest(block=False)
                    continue
                if item is END:
                    break
                self.stats.records_in += 1
                window.append(item)
                if stage.wants(item):
                    wanted += 1
                    if stage.timed_window:
                        self._chars += _example_chars(item.record.example)
                if full(wanted, len(window)):
                    submit(window)
                    window, wanted, self._chars = [], 0, 0
                harvest(block=False)
            if window:
                submit(window)
            while inflight:
                harvest(block=True)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            self.checkpoint.close()
        self.stats.finished = self.stats.now()
        self.finish()


class GeneratorNode(Node):
    """Runs a :class:`GeneratorStage` (Self-Instruct): all seeds in, then round after round out."""

    def __init__(self, stage: GeneratorStage, inp: Channel, checkpoint: CheckpointFile, stats: NodeStats,
                 outputs: list[Channel], bar: Any, *, resumed: bool):
        super().__init__(stage.name, stats, outputs, bar)
        self.stage = stage
        self.inp = inp
        self.checkpoint = checkpoint
        self.resumed = resumed

    def run(self) -> None:
        self.stats.start()
        seeds: list[Example] = []
        while True:
            item = self.inp.get()
            if item is END:
                break
            self.stats.records_in += 1
            if item.error is None and item.record.status == STATUS_OK:
                seeds.append(item.record.example)
            else:  # not a usable seed: it goes on to the sinks' discards, not silently away
                self.stats.passed_through += 1
                self.emit([item])
        done: list[dict[str, Any]] = []
        if self.resumed:
            self.checkpoint.repair()
            for line in self.checkpoint.lines():
                outputs = [decode_record(d) for d in line["out"]]
                done.extend({"id": r.id, "status": r.status, "instruction": r.example.instruction, "extra": r.extra}
                            for r in outputs)
                self._count(outputs)
                self.stats.replayed_out += len(outputs)
                self.emit([Item(r) for r in outputs])
        try:
            rounds = self.stage.run(seeds, done)
            while True:
                started = time.perf_counter()
                batch = next(rounds, None)
                self.stats.busy_seconds += time.perf_counter() - started
                if batch is None:
                    break
                if not batch:
                    continue
                key = f"round-{batch[0].extra.get('round', '?')}"
                line = encode_line({"in": key, "out": [encode_record(r) for r in batch]})
                self.checkpoint.append([line])
                outputs = [decode_record(d) for d in json.loads(line)["out"]]
                self._count(outputs)
                self.emit([Item(r) for r in outputs])
        finally:
            self.checkpoint.close()
        self.stats.finished = self.stats.now()
        self.finish()

    def _count(self, outputs: list[OutputRecord]) -> None:
        for rec in outputs:
            self.stats.quality.observe(rec)
            if rec.status != STATUS_OK:
                self.stats.discards[rec.status] += 1


class SinkNode(Node):
    """Writes ``ok`` records to the sink's file and the others to its discards file, in stream order.

    Resuming, the first records of the stream are the ones the files already hold: they are
    checked (same ids, same order) and skipped, so each record is written exactly once.
    """

    def __init__(self, spec: SinkSpec, path: str, inp: Channel, stats: NodeStats, bar: Any, *, resumed: bool):
        super().__init__(spec.name, stats, [], bar)
        self.spec = spec
        self.path = path
        self.paths = run_paths(path)
        self.inp = inp
        self.resumed = resumed
        self.written: Counter[str] = Counter()
        self.skipped = 0
        self.repaired: dict[str, int] = {}

    def _expected(self, path: str) -> collections.deque:
        if not self.resumed:
            return collections.deque()
        scan = repair_jsonl(path, "id")
        if scan.dropped_lines or scan.dropped_bytes:
            self.repaired[path] = scan.dropped_lines
        return collections.deque(scan.values)

    def _mismatch(self, path: str, have: Any, got: str) -> ResumeError:
        return ResumeError(f"sink {self.name!r}: {path} continues with record {have!r} but the resumed pipeline "
                           f"produced {got!r}; the files were changed or the pipeline is not deterministic -- "
                           "pass --overwrite to start over")

    def run(self) -> None:
        self.stats.start()
        expect_ok = self._expected(self.paths.output)
        expect_bad = self._expected(self.paths.discards)
        out = JsonlWriter(self.paths.output, append=True, fsync=self.spec.fsync)
        bad_writer: JsonlWriter | None = None
        try:
            done = False
            while not done:
                items = [self.inp.get()]
                while len(items) < 256:
                    try:
                        items.append(self.inp.get_nowait())
                    except queue.Empty:
                        break
                ok_lines, bad_lines = [], []
                for item in items:
                    if item is END:
                        done = True
                        break
                    rec = item.sink_record()
                    self.stats.records_in += 1
                    self.written[rec.status] += 1
                    ok = rec.status == STATUS_OK
                    expected = expect_ok if ok else expect_bad
                    if expected:
                        have = expected.popleft()
                        if have != rec.id:
                            raise self._mismatch(self.paths.output if ok else self.paths.discards, have, rec.id)
                        self.skipped += 1
                        continue
                    (ok_lines if ok else bad_lines).append(format_record(rec, self.spec.format))
                if ok_lines:
                    out.write_many(ok_lines)
                if bad_lines:
                    if bad_writer is None:
                        bad_writer = JsonlWriter(self.paths.discards, append=True, fsync=self.spec.fsync)
                    bad_writer.write_many(bad_lines)
                n = len(ok_lines) + len(bad_lines)
                if n:
                    self.stats.add_out(n)
                    self.bar.update(n)
            for path, expected in ((self.paths.output, expect_ok), (self.paths.discards, expect_bad)):
                if expected:
                    raise ResumeError(f"sink {self.name!r}: {path} holds {len(expected)} record(s) more than the "
                                      f"resumed pipeline produced (next: {expected[0]!r}) -- pass --overwrite")
        finally:
            out.close()
            if bad_writer is not None:
                bad_writer.close()
        self.stats.finished = self.stats.now()


def progress_text(nodes: list[Node]) -> str:
    """The heartbeat line: records out of every stage and sink so far."""
    parts = [f"{n.stats.kind} {n.name}: {n.stats.records_out:,}" for n in nodes if n.stats.kind in ("stage", "sink")]
    return "; ".join(parts) or "starting"
