"""Driver-side files of the Ray executor: the progress log, sink writers, counters for the report.

**Progress log** (``<state dir>/ray-progress.jsonl``). After the sink lines of a batch of rows
are written and flushed, the driver appends one line ``{"rows": {root: rows done}, "sizes":
{file: bytes}}``: for every root the rows whose records are all written, and the size of every
sink file and driver-stage checkpoint at that moment. A resumed run reads the last intact line,
cuts each file back to its recorded size (lines written after the last mark, possibly torn) and
skips the rows done (rows come in a deterministic order), so every record is written exactly
once.
"""
from __future__ import annotations

import json
import numbers
import os
from collections import Counter
from typing import Any, Iterable, Mapping

from ..errors import ResumeError
from ..io.resume import read_state, repair_jsonl, run_paths
from ..io.writers import JsonlWriter, dumps_line, format_record
from ..status import STATUS_OK
from .checkpoint import CheckpointFile
from .spec import PipelineSpec, SinkSpec
from .stages import Item

__all__ = ["PROGRESS_FILE", "ProgressLog", "SinkWriter", "check_executor", "merge_counters", "truncate_to"]

PROGRESS_FILE = "ray-progress.jsonl"


def check_executor(spec: PipelineSpec, executor: str, *, resume: bool) -> None:
    """Refuse to resume a run that another executor started (their states differ).

    Raises:
        ResumeError: ``resume`` and the run's ``state.json`` names another executor (no
            ``executor`` key: the local executor).
    """
    from .checkpoint import StateDir

    if not resume:
        return
    state = StateDir(spec)
    if not os.path.exists(state.state_file):
        return
    recorded = read_state(state.state_file).get("executor") or "local"
    if recorded != executor:
        raise ResumeError(f"the run in {state.path} was started with the {recorded} executor and resumes only with "
                          f"it (--executor {recorded}); the {executor} executor keeps its progress differently -- "
                          "resume with the same executor, or pass --overwrite to start over")


def truncate_to(path: str, size: int) -> int:
    """Cut ``path`` back to ``size`` bytes; returns the lines removed (a torn one counts).

    Raises:
        ResumeError: the file is shorter than ``size`` (it was changed since).
    """
    have = os.path.getsize(path) if os.path.exists(path) else 0
    if have < size:
        raise ResumeError(f"{path} holds {have} bytes but the run had written {size} when it last recorded its "
                          "progress: the file was changed -- pass --overwrite to start over")
    if have == size:
        return 0
    with open(path, "rb") as fh:
        fh.seek(size)
        tail = fh.read()
    os.truncate(path, size)
    return tail.count(b"\n") + (0 if tail.endswith(b"\n") else 1)


class ProgressLog:
    """The progress log (module docstring)."""

    def __init__(self, path: str, *, fsync: bool = False):
        self.path = path
        self.rows: dict[str, int] = {}
        self.sizes: dict[str, int] = {}
        self._file = CheckpointFile(path, fsync=fsync)  # the same append-only, flushed writes

    def load(self) -> None:
        """Read the last intact mark (a torn last line, from a kill, is cut off)."""
        repair_jsonl(self.path, "rows")
        last = None
        if os.path.exists(self.path):
            with open(self.path, "rb") as fh:
                for line in fh:
                    if line.strip():
                        last = line
        if last is not None:
            data = json.loads(last)
            self.rows = {str(k): int(v) for k, v in (data.get("rows") or {}).items()}
            self.sizes = {str(k): int(v) for k, v in (data.get("sizes") or {}).items()}

    def mark(self, root: str, rows: int, sizes: Mapping[str, int]) -> None:
        """Record that ``rows`` rows of ``root`` are written and the files have ``sizes``."""
        self.rows[root] = rows
        self.sizes.update(sizes)
        self._file.append([dumps_line({"rows": self.rows, "sizes": self.sizes})])

    def close(self) -> None:
        self._file.close()


class SinkWriter:
    """One sink, written by the driver exactly as the local runtime's ``SinkNode`` writes it:
    ``ok`` records to the output file, the others to the discards file, in stream order; a
    source row without a usable example becomes an ``invalid_record`` discard.

    Resuming, both files are first cut back to the sizes the progress log recorded; what they
    still hold counts as already written.
    """

    def __init__(self, sink: SinkSpec, path: str, stats: Any, *, sizes: Mapping[str, int] | None):
        self.spec = sink
        self.name = sink.name
        self.stats = stats
        self.paths = run_paths(path)
        self.written: Counter[str] = Counter()
        self.skipped = 0
        self.repaired: dict[str, int] = {}
        if sizes is not None:  # resumed
            for file in (self.paths.output, self.paths.discards):
                dropped = truncate_to(file, int(sizes.get(file, 0)))
                if dropped:
                    self.repaired[file] = dropped
            ok = repair_jsonl(self.paths.output, "id")
            bad = repair_jsonl(self.paths.discards, "id")
            self.written["ok"] += len(ok.values)
            self.written.update(str(s) for s in bad.statuses)
            self.skipped = len(ok.values) + len(bad.values)
        self._out = JsonlWriter(self.paths.output, append=True, fsync=sink.fsync)
        self._bad: JsonlWriter | None = None

    def write(self, rows: Iterable[list[Item]]) -> int:
        """Write the items of ``rows``, in order; returns the records written."""
        ok_lines, bad_lines = [], []
        for items in rows:
            for item in items:
                rec = item.sink_record()
                self.stats.records_in += 1
                self.written[rec.status] += 1
                (ok_lines if rec.status == STATUS_OK else bad_lines).append(format_record(rec, self.spec.format))
        if ok_lines:
            self._out.write_many(ok_lines)
        if bad_lines:
            if self._bad is None:
                self._bad = JsonlWriter(self.paths.discards, append=True, fsync=self.spec.fsync)
            self._bad.write_many(bad_lines)
        n = len(ok_lines) + len(bad_lines)
        if n:
            self.stats.add_out(n)
        return n

    def sizes(self) -> dict[str, int]:
        """Bytes in the output and discards files now (flushed)."""
        return {p: os.path.getsize(p) if os.path.exists(p) else 0 for p in (self.paths.output, self.paths.discards)}

    def close(self) -> None:
        self._out.close()
        if self._bad is not None:
            self._bad.close()


def merge_counters(snapshots: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Sum the numbers of several replicas' cumulative counters (nested dicts merged key by key;
    other values: the first one seen)."""
    out: dict[str, Any] = {}
    for snap in snapshots:
        for key, value in snap.items():
            if isinstance(value, Mapping):
                prev = out.get(key)
                if prev is None or isinstance(prev, Mapping):
                    out[key] = merge_counters([prev or {}, value])
            elif isinstance(value, numbers.Number) and not isinstance(value, bool):
                have = out.get(key, 0)
                out[key] = (have if isinstance(have, numbers.Number) else 0) + value
                if isinstance(out[key], float):
                    out[key] = round(out[key], 6)
            else:
                out.setdefault(key, value)
    return out
