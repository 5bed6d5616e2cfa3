"""A resumable run: output, discards and errors files plus a state file.

Typical use::

    with open_run("out.jsonl", input_path="in.jsonl", settings=method.settings(),
                  resume=True) as run:
        records = read_records("in.jsonl", on_error=run.error)
        for batch in batched(run.pending(records), 64):
            run.write(method.process(batch))
    print(run.summary())

Guarantees: every record id reaches the output or the discards file at most once, across
any number of crashes and resumes (a crash loses at most the batch being written, which
is redone on resume); every unreadable input line reaches the errors file once.
"""
from __future__ import annotations

import collections
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, Callable, Protocol

from instructmill.errors import OptionError, ResumeError
from instructmill.io.idset import IdSet
from instructmill.io.lock import OutputLock
from instructmill.io.readers import ReadError
from instructmill.io.resume import (
    RunPaths,
    add_model_identities,
    canonical_json,
    file_sha256,
    read_state,
    repair_jsonl,
    run_paths,
    settings_diff,
    settings_sha256,
    write_state,
)
from instructmill.io.writers import WRITE_FORMATS, JsonlWriter, format_record
from instructmill.figures import QualityFigures
from instructmill.records import OutputRecord
from instructmill.status import STATUS_OK

__all__ = ["Run", "open_run"]

STATE_VERSION = 1
#: Ids written in this session that :meth:`Run.write` remembers to refuse a repeat.
RECENT_IDS = 4096


class _HasId(Protocol):
    id: str


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def open_run(output_path: str | os.PathLike[str], *, input_path: str | os.PathLike[str],
             settings: dict[str, Any], resume: bool = False, overwrite: bool = False,
             fmt: str = "alpaca", fsync: bool = False) -> Run:
    """Start or resume a run that writes to ``output_path`` (see :func:`run_paths` for the
    four files it uses).

    Args:
        output_path: the main output file ``X.jsonl`` (not ``"-"``: a run needs files).
        input_path: the input file (``"-"`` for stdin: such a run cannot be resumed).
        settings: everything that changes the results (model, compute type, pivot, template,
            seed...); its SHA-256 fingerprint is stored and compared on resume.
        resume: continue the run found at ``output_path``: check that input and settings are
            unchanged, repair torn last lines, skip records already written. With no run there
            (none of the four files exists) a fresh run starts.
        overwrite: delete the four files first and start afresh.
        fmt: output shape, one of ``"alpaca"``, ``"sharegpt"``, ``"openai"``.
        fsync: fsync after every batch (survives power loss, slower).

    Returns:
        an open :class:`Run` (a context manager).

    Raises:
        OptionError: bad ``fmt``, ``output_path == "-"``, both ``resume`` and ``overwrite``,
            or an output file that is the input file.
        OutputLockedError: another live run writes to ``output_path`` (see
            :mod:`instructmill.io.lock`); nothing was changed.
        ResumeError: files of an earlier run exist and neither ``resume`` nor ``overwrite``
            is given; or, resuming: the state file is missing while outputs exist, is
            unreadable, or the input content, output format or settings changed.
    """
    output = os.fspath(output_path)
    source = os.fspath(input_path)
    if fmt not in WRITE_FORMATS:
        raise OptionError("format", fmt, f"expected one of {', '.join(WRITE_FORMATS)}")
    if output == "-":
        raise OptionError("output", output, "a run writes files; give an output path")
    if resume and overwrite:
        raise OptionError("resume", True, "--resume and --overwrite exclude each other")
    paths = run_paths(output)
    if source != "-":
        for path in paths.all():
            if _same_file(path, source):
                raise OptionError("output", path, "is the input file")
    lock = OutputLock(output).acquire()  # before any file is read, deleted or created
    try:
        return _open_locked(paths, lock, source=source, settings=settings, resume=resume, overwrite=overwrite,
                            fmt=fmt, fsync=fsync)
    except BaseException:
        lock.release()
        raise


def _open_locked(paths: RunPaths, lock: OutputLock, *, source: str, settings: dict[str, Any], resume: bool,
                 overwrite: bool, fmt: str, fsync: bool) -> Run:
    existing = [p for p in paths.all() if os.path.exists(p)]
    settings = add_model_identities(settings)

    if existing and overwrite:
        for path in existing + [p for p in paths.derived() if os.path.exists(p)]:
            os.unlink(path)
        existing = []
    if existing and not resume:
        raise ResumeError(f"{', '.join(existing)} already exist(s) from an earlier run; pass "
                          "--resume to continue it or --overwrite to start over")
    if existing and not os.path.exists(paths.state):
        raise ResumeError(f"cannot resume: {', '.join(existing)} exist(s) but the run state "
                          f"{paths.state} is missing, so the input and settings that produced "
                          "them cannot be checked; pass --overwrite to start over")

    settings_fp = settings_sha256(settings)
    if not existing:
        state = {
            "version": STATE_VERSION,
            "input": source,
            "input_sha256": None if source == "-" else file_sha256(source),
            "input_size": None if source == "-" else os.path.getsize(source),
            "settings_sha256": settings_fp,
            "settings": _plain(settings),
            "format": fmt,
            "started": _now(),
            "updated": _now(),
            "sessions": 1,
        }
        write_state(paths.state, state)
        return Run(paths, fmt=fmt, state=state, resumed=False, fsync=fsync, lock=lock)

    state = read_state(paths.state)
    _check_resumable(state, paths, source, settings, settings_fp, fmt)
    done = IdSet()
    previous: Counter[str] = Counter()

    def on_done(value: Any, status: Any) -> None:
        done.add(str(value))
        previous[str(status) if status is not None else "?"] += 1

    scans = {"output": repair_jsonl(paths.output, "id", on_done),
             "discards": repair_jsonl(paths.discards, "id", on_done),
             "errors": repair_jsonl(paths.errors, "line")}
    state.update(input=source, updated=_now(), sessions=int(state.get("sessions", 1)) + 1)
    write_state(paths.state, state)
    return Run(paths, fmt=fmt, state=state, resumed=True, fsync=fsync, scans=scans, lock=lock, done=done,
               previous=previous)


def _plain(settings: dict[str, Any]) -> Any:
    return json.loads(canonical_json(settings))


def _check_resumable(state: dict[str, Any], paths: RunPaths, source: str,
                     settings: dict[str, Any], settings_fp: str, fmt: str) -> None:
    hint = "pass --overwrite to start over"
    if state.get("version") != STATE_VERSION:
        raise ResumeError(f"the run state {paths.state} has version {state.get('version')!r}, "
                          f"this instructmill writes version {STATE_VERSION}; {hint}")
    old_sha = state.get("input_sha256")
    if source == "-":
        raise ResumeError(f"cannot resume from stdin: its content cannot be checked against the "
                          f"run in {paths.state}; give the input file, or {hint}")
    if old_sha is None:
        raise ResumeError(f"the run in {paths.state} read stdin, whose content cannot be checked; "
                          f"{hint}")
    new_sha = file_sha256(source)
    if new_sha != old_sha:
        raise ResumeError(f"input {source} changed since the run started (sha256 "
                          f"{new_sha[:12]}... != {str(old_sha)[:12]}..., run input was "
                          f"{state.get('input')}); resume with the original input, or {hint}")
    if state.get("format") != fmt:
        raise ResumeError(f"output format changed since the run started ({state.get('format')!r} "
                          f"-> {fmt!r}); resume with --format {state.get('format')}, or {hint}")
    if state.get("settings_sha256") != settings_fp:
        old = state.get("settings") if isinstance(state.get("settings"), dict) else {}
        changes = settings_diff(old, settings) or ["(fingerprint differs)"]
        raise ResumeError("settings changed since the run started: " + "; ".join(changes)
                          + f"; resume with the original settings, or {hint}")


class Run:
    """An open run. Create it with :func:`open_run`.

    Attributes:
        paths: the run's files.
        fmt: output shape.
        resumed: whether earlier results were found and kept.
        done_ids: ids an earlier session wrote to the output or discards file (an
            :class:`~instructmill.io.idset.IdSet` of 64-bit hashes); ids written in this session
            are not added (see :data:`RECENT_IDS`).
        done_error_lines: input lines already in the errors file.
        repaired: ``{file: lines cut off}`` for the files whose torn tail was repaired.
    """

    def __init__(self, paths: RunPaths, *, fmt: str, state: dict[str, Any], resumed: bool,
                 fsync: bool = False, scans: dict[str, Any] | None = None, lock: OutputLock | None = None,
                 done: IdSet | None = None, previous: Counter[str] | None = None):
        self.paths = paths
        self._lock = lock
        self.fmt = fmt
        self.resumed = resumed
        self._state = state
        self._fsync = fsync
        scans = scans or {}
        # ids an earlier session wrote, hashed (11-16 bytes each, io/idset.py); ids written in this
        # session are guarded by a window of the latest ones: input ids are unique (the reader
        # refuses duplicates) and written in input order, so a repeat can only come from a
        # method re-emitting recent records, and memory stays flat however long the run
        self.done_ids: IdSet = done if done is not None else IdSet()
        self._recent: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.done_error_lines: set[int] = set()
        self.repaired: dict[str, int] = {}
        self._previous: Counter[str] = previous if previous is not None else Counter()
        if "errors" in scans:
            self.done_error_lines = {v for v in scans["errors"].values if isinstance(v, int)}
        for scan in scans.values():
            if scan.dropped_lines or scan.dropped_bytes:
                self.repaired[scan.path] = scan.dropped_lines
        self._previous_errors = len(self.done_error_lines)
        self._read = 0
        self._skipped = 0
        self.figures = QualityFigures()  # this session's quality figures (figures.py)
        self._renamed = 0
        self._renamed_examples: list[tuple[str, str]] = []
        self._by_status: Counter[str] = Counter()
        self._errors = 0
        self._errors_skipped = 0
        self._out = JsonlWriter(paths.output, append=True, fsync=fsync)
        self._discards: JsonlWriter | None = None
        self._err: JsonlWriter | None = None
        self._closed = False

    # ------------------------------------------------------------------ flow

    def pending(self, records: Iterable[_HasId],
                output_ids: Callable[[str], Sequence[str]] | None = None) -> Iterator[Any]:
        """Yield the records that are not done yet (counting read and skipped ones).

        ``output_ids(input_id)`` lists the ids a method writes for one input (default: the input
        id itself; e.g. ``["r1:de", "r1:fr"]`` for back-translation through two pivots). A record
        is done when all of them are written; a record done only in part raises ``ResumeError``
        rather than writing an id twice.
        """
        for record in records:
            self._read += 1
            original = getattr(record, "duplicate_of", None)
            if original is not None:
                self._renamed += 1
                if len(self._renamed_examples) < 3:
                    self._renamed_examples.append((original, record.id))
            wanted = list(output_ids(record.id)) if output_ids else [record.id]
            done = [i for i in wanted if i in self.done_ids]
            if len(done) == len(wanted):
                self._skipped += 1
                continue
            if done:
                raise ResumeError(f"record {record.id!r} was written only in part ({', '.join(done)}); "
                                  "pass --overwrite to start over")
            yield record

    def write(self, out_records: Sequence[OutputRecord]) -> None:
        """Write a batch: status ``"ok"`` to the output, any other status to the discards.

        Raises:
            RuntimeError: an id in the batch was already written (before a resume, or among the
                latest :data:`RECENT_IDS` of this session) or appears twice in the batch; nothing
                of the batch is written.
            ValueError: the run is closed.
        """
        if self._closed:
            raise ValueError("the run is closed")
        ids = [rec.id for rec in out_records]
        seen: set[str] = set()
        for rid in ids:
            if rid in self.done_ids or rid in self._recent or rid in seen:
                raise RuntimeError(f"record id {rid!r} would be written twice to {self.paths.output}"
                                   " (or its discards); this is a bug in the caller")
            seen.add(rid)
        ok = [format_record(r, self.fmt) for r in out_records if r.status == STATUS_OK]
        bad = [format_record(r, self.fmt) for r in out_records if r.status != STATUS_OK]
        if ok:
            self._out.write_many(ok)
        if bad:
            if self._discards is None:
                self._discards = JsonlWriter(self.paths.discards, append=True, fsync=self._fsync)
            self._discards.write_many(bad)
        for rid in ids:
            self._recent[rid] = None
        while len(self._recent) > RECENT_IDS:
            self._recent.popitem(last=False)
        self._by_status.update(rec.status for rec in out_records)
        for rec in out_records:
            self.figures.observe(rec)

    def error(self, err: ReadError) -> None:
        """Record an unreadable input line in the errors file (once per line across resumes).

        Pass it as ``on_error`` to :func:`~instructmill.io.readers.read_records`.
        """
        if self._closed:
            raise ValueError("the run is closed")
        if err.line in self.done_error_lines:
            self._errors_skipped += 1
            return
        if self._err is None:
            self._err = JsonlWriter(self.paths.errors, append=True, fsync=self._fsync)
        self._err.write({"line": err.line, "error": err.error, "raw": err.raw,
                         "source": err.source or self._state.get("input")})
        self.done_error_lines.add(err.line)
        self._errors += 1

    def summary(self) -> dict[str, Any]:
        """Counts of this session and of the whole run.

        Returns:
            ``{"read", "skipped_done", "written_ok", "written_other", "by_status": {status: n},
            "errors", "errors_skipped", "repaired": {file: lines}, "total_ok", "total_other",
            "total_errors", "resumed", "duplicate_ids", "duplicate_id_examples"}``:
            ``read`` counts records that went through
            :meth:`pending`, ``skipped_done`` those already done, ``by_status`` this session's
            writes, ``total_*`` the files' contents including earlier sessions, ``duplicate_ids`` the
            records read under a derived id because an earlier record had their id (examples first),
            ``quality`` this session's :class:`~instructmill.figures.QualityFigures`.
        """
        written_ok = self._by_status.get(STATUS_OK, 0)
        written_other = sum(self._by_status.values()) - written_ok
        prev_ok = self._previous.get(STATUS_OK, 0)
        prev_other = sum(self._previous.values()) - prev_ok
        return {
            "read": self._read,
            "skipped_done": self._skipped,
            "written_ok": written_ok,
            "written_other": written_other,
            "by_status": dict(self._by_status),
            "errors": self._errors,
            "errors_skipped": self._errors_skipped,
            "repaired": dict(self.repaired),
            "total_ok": prev_ok + written_ok,
            "total_other": prev_other + written_other,
            "total_errors": self._previous_errors + self._errors,
            "resumed": self.resumed,
            "duplicate_ids": self._renamed,
            "duplicate_id_examples": [f"{a!r} -> {b!r}" for a, b in self._renamed_examples],
            "quality": self.figures.as_dict(),
        }

    def close(self) -> None:
        """Close the files and store the counts in the state file (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            for writer in (self._out, self._discards, self._err):
                if writer is not None:
                    writer.close()
            summary = self.summary()
            self._state["updated"] = _now()
            self._state["counts"] = {k: summary[k] for k in ("total_ok", "total_other",
                                                             "total_errors")}
            write_state(self.paths.state, self._state)
        finally:
            if self._lock is not None:
                self._lock.release()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
