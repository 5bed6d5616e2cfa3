"""Pipeline state on disk: fingerprints, per-stage checkpoints, resume checks.

A pipeline's state folder (``settings.state_dir``, default ``<first sink without .jsonl>.pipeline``)
holds:

* ``state.json``: the spec's fingerprint (everything that changes the records), the SHA-256 of
  every source file and template file, times and session count;
* ``stage-<name>.jsonl``: what each stage produced, appended **before** the records move on, one
  line per input record (``{"in": id, "out": [records]}``, or ``{"in": id, "pass": 1}`` for a
  record the stage let through), or one line per Self-Instruct round;
* ``errors-<source>.jsonl``: unreadable input lines, once each.

On ``--resume`` every stage replays its checkpoint (so nothing an engine already computed is
computed again, and a stage's state -- the Self-Instruct pool, the dedup index -- is rebuilt from
it) and each sink skips what it already wrote (:mod:`instructmill.pipeline.runtime`). A torn last
line (a kill during a write) is cut off with :func:`~instructmill.io.resume.repair_jsonl`.
"""
from __future__ import annotations

import glob
import json
import os
from datetime import datetime, timezone
from typing import Any, Iterator

from ..errors import OptionError, ResumeError
from ..io.resume import add_model_identities, canonical_json, file_sha256, read_state, repair_jsonl, run_paths, settings_diff, \
    settings_sha256, write_state
from ..io.lock import lock_outputs
from ..io.writers import dumps_line
from ..records import Example, OutputRecord
from .spec import PipelineSpec

__all__ = ["STATE_VERSION", "CheckpointFile", "StateDir", "decode_record", "encode_record", "report_paths",
           "sink_files"]

STATE_VERSION = 1


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------- records

def encode_record(rec: OutputRecord) -> dict[str, Any]:
    """An :class:`OutputRecord` as a JSON-ready dict (every field, so decoding gives it back)."""
    ex = rec.example
    example: dict[str, Any] = {"instruction": ex.instruction, "input": ex.input, "output": ex.output}
    if ex.system:
        example["system"] = ex.system
    if ex.history:
        example["history"] = [list(turn) for turn in ex.history]
    if ex.leading_assistant:
        example["leading_assistant"] = list(ex.leading_assistant)
    return {"id": rec.id, "example": example, "status": rec.status, "method": rec.method,
            "settings": rec.settings, "extra": rec.extra}


def decode_record(data: dict[str, Any]) -> OutputRecord:
    """The inverse of :func:`encode_record`."""
    ex = data["example"]
    example = Example(instruction=ex["instruction"], input=ex.get("input", ""), output=ex.get("output", ""),
                      system=ex.get("system", ""), history=[(u, a) for u, a in ex.get("history", [])],
                      leading_assistant=list(ex.get("leading_assistant", [])))
    return OutputRecord(id=data["id"], example=example, status=data["status"], method=data.get("method", ""),
                        settings=data.get("settings") or {}, extra=data.get("extra") or {})


# ------------------------------------------------------------------------- checkpoints

class CheckpointFile:
    """An append-only JSONL checkpoint of one stage (see the module docstring).

    ``lines()`` streams what an earlier session wrote (after repairing a torn tail); ``append``
    writes encoded lines in one ``write`` and flushes, so a kill leaves at most a torn last line.
    """

    def __init__(self, path: str, *, fsync: bool = False):
        self.path = path
        self.fsync = fsync
        self._fh = None
        self.repaired_lines = 0

    def repair(self) -> int:
        """Cut a torn tail; returns the number of intact lines."""
        scan = repair_jsonl(self.path, "in")
        self.repaired_lines = scan.dropped_lines
        return len(scan.values)

    def lines(self) -> Iterator[dict[str, Any]]:
        """The intact lines, streamed (call :meth:`repair` first)."""
        if not os.path.exists(self.path):
            return
        with open(self.path, "rb") as fh:
            for data in fh:
                if data.strip():
                    yield json.loads(data)

    def append(self, lines: list[bytes]) -> None:
        if not lines:
            return
        if self._fh is None:
            self._fh = open(self.path, "ab")
        self._fh.write(b"".join(lines))
        self._fh.flush()
        if self.fsync:
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def encode_line(obj: Any) -> bytes:
    """One checkpoint line (UTF-8 JSON + newline)."""
    return dumps_line(obj)


# ------------------------------------------------------------------------------ state

def sink_files(path: str) -> list[str]:
    """The files a sink writes: output, discards, report JSON and PNG."""
    paths = run_paths(path)
    report_json, report_png = report_paths(path)
    return [paths.output, paths.discards, report_json, report_png]


def report_paths(path: str) -> tuple[str, str]:
    """``(<stem>.report.json, <stem>.report.png)`` next to the sink ``<stem>.jsonl``."""
    stem = path[: -len(".jsonl")] if path.lower().endswith(".jsonl") else path
    return f"{stem}.report.json", f"{stem}.report.png"


class StateDir:
    """The state folder of a pipeline run (see the module docstring)."""

    def __init__(self, spec: PipelineSpec):
        self.spec = spec
        if spec.settings.state_dir:
            self.path = spec.resolve(spec.settings.state_dir)
        else:
            first = spec.resolve(spec.sinks[0].path)
            stem = first[: -len(".jsonl")] if first.lower().endswith(".jsonl") else first
            self.path = f"{stem}.pipeline"
        self.state_file = os.path.join(self.path, "state.json")
        self.state: dict[str, Any] = {}
        self._locks: Any = None

    def stage_file(self, name: str) -> str:
        return os.path.join(self.path, f"stage-{name}.jsonl")

    def errors_file(self, source: str) -> str:
        return os.path.join(self.path, f"errors-{source}.jsonl")

    def _own_files(self) -> list[str]:
        if not os.path.isdir(self.path):
            return []
        found = [self.state_file] if os.path.exists(self.state_file) else []
        for pattern in ("stage-*.jsonl", "errors-*.jsonl"):
            found += sorted(glob.glob(os.path.join(glob.escape(self.path), pattern)))
        return found

    def _sink_outputs(self) -> list[str]:
        return [p for sink in self.spec.sinks for p in sink_files(self.spec.resolve(sink.path)) if os.path.exists(p)]

    def _inputs(self) -> dict[str, dict[str, Any]]:
        """SHA-256 and size of every source file and template file."""
        out: dict[str, dict[str, Any]] = {}
        for name, source in self.spec.sources.items():
            path = self.spec.resolve(source.path)
            if not os.path.isfile(path):  # a FIFO, device or folder exists but is refused too
                what = "not a regular file" if os.path.exists(path) else "no such file"
                raise OptionError(f"sources.{name}.path", source.path, f"{what} ({path})")
            out[f"sources.{name}"] = {"path": source.path, "sha256": file_sha256(path),
                                      "size": os.path.getsize(path)}
        for stage in self.spec.stages:
            if stage.method == "template":
                path = self.spec.resolve(stage.options.template)
                if os.path.isfile(path):
                    out[f"stages.{stage.name}.template"] = {"path": stage.options.template,
                                                            "sha256": file_sha256(path)}
        return out

    def prepare(self, *, resume: bool, overwrite: bool) -> bool:
        """Start or resume; returns whether an earlier run is continued.

        Raises:
            OptionError: both ``resume`` and ``overwrite``; a sink that is a source file; a
                missing source file.
            OutputLockedError: another live run writes to one of the sinks.
            ResumeError: outputs of an earlier run exist and neither flag is given; resuming
                without a state file, with another state version, or after the pipeline or an
                input file changed (the message says what changed).
        """
        if resume and overwrite:
            raise OptionError("resume", True, "--resume and --overwrite exclude each other")
        # One writer per output: lock every sink before any file is read, deleted or created.
        self._locks = lock_outputs([self.spec.resolve(sink.path) for sink in self.spec.sinks])
        try:
            return self._prepare_locked(resume=resume, overwrite=overwrite)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Release the sinks' locks taken by :meth:`prepare` (idempotent; call when the run ends)."""
        if self._locks is not None:
            self._locks.release()
            self._locks = None

    def _prepare_locked(self, *, resume: bool, overwrite: bool) -> bool:
        sources = {os.path.realpath(self.spec.resolve(s.path)) for s in self.spec.sources.values()}
        for sink in self.spec.sinks:
            for path in sink_files(self.spec.resolve(sink.path))[:2]:
                if os.path.realpath(path) in sources:
                    raise OptionError(f"sink {sink.name}", sink.path, f"{path} is an input file of this pipeline")
        inputs = self._inputs()
        existing = self._sink_outputs() + self._own_files()
        hint = "pass --overwrite to start over"
        if existing and overwrite:
            for path in existing:
                os.unlink(path)
            try:
                os.rmdir(self.path)
            except OSError:
                pass
            existing = []
        if existing and not resume:
            shown = ", ".join(existing[:4]) + (f" (+{len(existing) - 4} more)" if len(existing) > 4 else "")
            raise ResumeError(f"{shown} already exist(s) from an earlier run; pass --resume to continue it "
                              "or --overwrite to start over")
        fingerprint = self.spec.fingerprint_data()
        fingerprint["engines"] = add_model_identities(fingerprint["engines"], self.spec.resolve)
        if existing:
            if not os.path.exists(self.state_file):
                raise ResumeError(f"cannot resume: {', '.join(existing[:4])} exist(s) but the pipeline state "
                                  f"{self.state_file} is missing, so the pipeline and inputs that produced them "
                                  f"cannot be checked; {hint}")
            state = read_state(self.state_file)
            self._check(state, fingerprint, inputs, hint)
            state.update(updated=_now(), sessions=int(state.get("sessions", 1)) + 1)
            self.state = state
            write_state(self.state_file, state)
            return True
        os.makedirs(self.path, exist_ok=True)
        for sink in self.spec.sinks:
            os.makedirs(os.path.dirname(os.path.abspath(self.spec.resolve(sink.path))), exist_ok=True)
        self.state = {"version": STATE_VERSION, "pipeline": self.spec.file,
                      "spec_sha256": settings_sha256(fingerprint), "spec": json.loads(canonical_json(fingerprint)),
                      "inputs": inputs, "started": _now(), "updated": _now(), "sessions": 1}
        write_state(self.state_file, self.state)
        return False

    def _check(self, state: dict[str, Any], fingerprint: dict[str, Any], inputs: dict[str, Any], hint: str) -> None:
        if state.get("version") != STATE_VERSION:
            raise ResumeError(f"the pipeline state {self.state_file} has version {state.get('version')!r}, this "
                              f"instructmill writes version {STATE_VERSION}; {hint}")
        if state.get("spec_sha256") != settings_sha256(fingerprint):
            old = state.get("spec") if isinstance(state.get("spec"), dict) else {}
            changes = settings_diff(old, fingerprint) or ["(fingerprint differs)"]
            raise ResumeError(f"the pipeline changed since the run started: {'; '.join(changes)}; resume with "
                              f"the original pipeline file, or {hint}")
        old_inputs = state.get("inputs") or {}
        for key, new in inputs.items():
            old = old_inputs.get(key)
            if old is None or old.get("sha256") != new["sha256"]:
                was = f"sha256 {str(old.get('sha256'))[:12]}..." if old else "not part of the run"
                raise ResumeError(f"{key} ({new['path']}) changed since the run started (sha256 "
                                  f"{new['sha256'][:12]}..., was {was}); resume with the original input, or {hint}")

    def discard(self) -> None:
        """Remove the state of a fresh run that failed before writing anything."""
        for path in self._own_files():
            os.unlink(path)
        try:
            os.rmdir(self.path)
        except OSError:
            pass

    def finish(self, counts: dict[str, Any]) -> None:
        """Store the final counts in ``state.json``."""
        self.state.update(updated=_now(), counts=counts)
        write_state(self.state_file, self.state)
