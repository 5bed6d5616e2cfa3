"""File-level pieces of a resumable run: file names, fingerprints, torn-line repair.

A run writing to ``X.jsonl`` owns four files (see :func:`run_paths`). After a crash the
JSONL files can end in a torn line (a write cut short); :func:`repair_jsonl` cuts such a
tail off and reports what the intact lines hold, so :mod:`instructmill.io.run` can skip the
records that are already done.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from instructmill.errors import ResumeError
from instructmill.io.limits import require_regular_file

__all__ = [
    "RunPaths",
    "ScanResult",
    "canonical_json",
    "add_model_identities",
    "file_sha256",
    "model_identity",
    "read_state",
    "repair_jsonl",
    "run_paths",
    "settings_diff",
    "settings_sha256",
    "write_state",
]

_CHUNK = 1 << 20


@dataclass(frozen=True)
class RunPaths:
    """The files of one run.

    Attributes:
        output: ``X.jsonl``: records with status ``"ok"``.
        discards: ``X.discards.jsonl``: records with any other status (same shape).
        errors: ``X.errors.jsonl``: unreadable input lines ``{"line", "error", "raw", "source"}``.
        state: ``X.run.json``: input and settings fingerprints, times, counts.
    """

    output: str
    discards: str
    errors: str
    state: str

    def all(self) -> tuple[str, str, str, str]:
        return (self.output, self.discards, self.errors, self.state)

    def derived(self) -> tuple[str, ...]:
        """Files made from the run's output at its end (report, plot, dataset card): rewritten by each
        session, deleted by ``--overwrite`` so no stale one outlives the data it described."""
        stem = self.output[: -len(".jsonl")] if self.output.lower().endswith(".jsonl") else self.output
        return (f"{stem}.report.json", f"{stem}.report.png", f"{stem}.README.md")


def run_paths(output_path: str | os.PathLike[str]) -> RunPaths:
    """File names of a run writing to ``output_path``.

    ``out/X.jsonl`` -> ``out/X.jsonl``, ``out/X.discards.jsonl``, ``out/X.errors.jsonl``,
    ``out/X.run.json``. An output name without the ``.jsonl`` suffix keeps its whole name
    as the stem (``out/X`` -> ``out/X.discards.jsonl``...).
    """
    output = os.fspath(output_path)
    stem = output[: -len(".jsonl")] if output.lower().endswith(".jsonl") else output
    return RunPaths(output=output, discards=f"{stem}.discards.jsonl",
                    errors=f"{stem}.errors.jsonl", state=f"{stem}.run.json")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks (constant memory).

    Raises:
        OptionError: ``path`` is missing or not a regular file (hashing a FIFO would block
            until a writer appears, and would consume the data the run then needs).
    """
    require_regular_file(path)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


#: Settings keys whose string values name a model (a folder or a file) whose identity belongs in
#: the resume fingerprint: the same path can hold another model later (re-converted, replaced).
MODEL_KEYS = ("model", "models", "forward_model", "backward_model")
_SMALL_FILE = 1 << 20


def model_identity(path: str | os.PathLike[str]) -> str | None:
    """A short fingerprint of the model at ``path`` (a folder or a single file such as a GGUF).

    SHA-256 over the relative name and size of every file, plus the bytes of every file up to
    1 MiB (configs, tokenizers, the ``instructmill.json`` manifest with the quantization and its
    verification). Weights are identified by size, not hashed: hashing gigabytes on every run
    and resume would cost minutes; a re-conversion to another type, or another model, changes
    the sizes or the small files.

    Returns:
        16 hex characters, or ``None`` when ``path`` is neither a file nor a folder (an alias
        such as ``"embedded"`` or a hub id: their identity is the name).
    """
    path = os.fspath(path)
    if os.path.isfile(path):
        files = [(os.path.basename(path), path)]
    elif os.path.isdir(path):
        files = []
        for folder, dirs, names in os.walk(path):
            dirs.sort()
            for name in sorted(names):
                full = os.path.join(folder, name)
                files.append((os.path.relpath(full, path), full))
    else:
        return None
    digest = hashlib.sha256()
    for rel, full in files:
        try:
            size = os.path.getsize(full)
        except OSError:
            continue
        digest.update(f"{rel}\0{size}\0".encode("utf-8", "surrogatepass"))
        if size <= _SMALL_FILE and os.path.isfile(full):
            with open(full, "rb") as fh:
                digest.update(fh.read())
    return digest.hexdigest()[:16]


def add_model_identities(settings: Any, resolve: Any = None) -> Any:
    """``settings`` with ``"<key>_identity"`` added beside every model path (see :data:`MODEL_KEYS`)
    that exists on disk, at any depth, so a resume refuses a model that changed under the same path.

    Args:
        settings: a settings mapping (nested dicts/lists are walked).
        resolve: maps a path as written to the one to inspect (pipeline files: relative to the file).
    """
    if isinstance(settings, dict):
        out = {k: add_model_identities(v, resolve) for k, v in settings.items()}
        for key in MODEL_KEYS:
            value = settings.get(key)
            values = value if isinstance(value, (list, tuple)) else [value]
            ids = [model_identity(resolve(v) if resolve else v) if isinstance(v, str) and v else None
                   for v in values]
            if any(ids):
                out[f"{key}_identity"] = ids if isinstance(value, (list, tuple)) else ids[0]
        return out
    if isinstance(settings, (list, tuple)):
        return [add_model_identities(v, resolve) for v in settings]
    return settings


def _default(obj: Any) -> Any:
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    return repr(obj)


def canonical_json(obj: Any) -> str:
    """Canonical JSON text (sorted keys, compact, ``ensure_ascii=False``); values JSON cannot
    hold become their ``repr`` (paths their string), so any settings dict has a fingerprint."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                      default=_default)


def settings_sha256(settings: dict[str, Any]) -> str:
    """Hex SHA-256 of :func:`canonical_json` of a method's settings."""
    return hashlib.sha256(canonical_json(settings).encode("utf-8", "surrogatepass")).hexdigest()


def _flatten(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(obj, dict) and obj:
        for key in sorted(obj, key=str):
            yield from _flatten(obj[key], f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, obj


def settings_diff(old: dict[str, Any], new: dict[str, Any], limit: int = 5) -> list[str]:
    """Human-readable differences between two settings dicts (``"beam_size: 4 -> 5"``),
    nested keys dotted, at most ``limit`` entries (plus ``"..."``)."""
    a = dict(_flatten(json.loads(canonical_json(old))))
    b = dict(_flatten(json.loads(canonical_json(new))))
    missing = object()
    changes = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, missing), b.get(key, missing)
        if va == vb:
            continue
        left = "(unset)" if va is missing else json.dumps(va, ensure_ascii=False)
        right = "(unset)" if vb is missing else json.dumps(vb, ensure_ascii=False)
        changes.append(f"{key}: {left} -> {right}")
    if len(changes) > limit:
        changes = changes[:limit] + ["..."]
    return changes


def write_state(path: str, state: dict[str, Any]) -> None:
    """Write the run state atomically (temporary file in the same folder, then rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".run-", suffix=".json.tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(state, ensure_ascii=False, indent=2, default=_default))
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_state(path: str) -> dict[str, Any]:
    """Load a run state file.

    Raises:
        ResumeError: it is not a JSON object.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            state = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResumeError(f"cannot read the run state {path}: {exc}; "
                          "pass --overwrite to start the run again") from None
    except RecursionError:  # a hand-edited state nested 1,000 deep; ours is 3 levels
        raise ResumeError(f"cannot read the run state {path}: JSON nested too deeply; "
                          "pass --overwrite to start the run again") from None
    if not isinstance(state, dict):
        raise ResumeError(f"the run state {path} is not a JSON object; "
                          "pass --overwrite to start the run again")
    return state


@dataclass
class ScanResult:
    """What :func:`repair_jsonl` found in one file.

    Attributes:
        path: the file.
        values: the ``key`` value of each intact line, in file order.
        statuses: the ``status`` value of each intact line (``None`` where absent).
        dropped_lines: torn or invalid lines cut off the end.
        dropped_bytes: bytes cut off the end.
    """

    path: str
    values: list[Any] = field(default_factory=list)
    statuses: list[Any] = field(default_factory=list)
    dropped_lines: int = 0
    dropped_bytes: int = 0


def repair_jsonl(path: str, key: str, on_line: Callable[[Any, Any], None] | None = None) -> ScanResult:
    """Repair a torn tail of a JSONL file and return the ``key`` of every intact line.

    With ``on_line``, each intact line's ``(key value, status)`` is passed to it instead of being
    kept in the result (``values`` / ``statuses`` stay empty): a resume then holds no list that
    grows with the file.

    A line is intact when it ends with ``"\\n"`` and holds a JSON object with ``key``. Lines
    that are not intact at the end of the file (a write cut short by a crash: a last line
    without ``"\\n"``, a partial object, NUL bytes left by a power loss) are removed by
    truncating the file after the last intact line. Blank lines are ignored. A missing file
    gives an empty result.

    Raises:
        ResumeError: an invalid line is followed by intact lines: the file was changed by
            something other than a crash, and repairing it could lose or duplicate records.
    """
    result = ScanResult(path=path)
    if not os.path.exists(path):
        return result
    good_end = 0
    offset = 0
    bad_line: int | None = None
    bad_count = 0
    with open(path, "rb") as fh:
        for line_no, data in enumerate(fh, start=1):
            offset += len(data)
            if not data.strip():
                if bad_line is None:
                    good_end = offset
                continue
            obj = _parse_line(data) if data.endswith(b"\n") else None
            if obj is None or key not in obj:
                if bad_line is None:
                    bad_line = line_no
                bad_count += 1
                continue
            if bad_line is not None:
                raise ResumeError(
                    f"{path}, line {bad_line}: not a valid record, but valid records follow it "
                    "(only a torn last line can be repaired); fix or remove that line, or pass "
                    "--overwrite to start the run again")
            if on_line is not None:
                on_line(obj[key], obj.get("status"))
            else:
                result.values.append(obj[key])
                result.statuses.append(obj.get("status"))
            good_end = offset
    if good_end < offset:
        os.truncate(path, good_end)
        result.dropped_bytes = offset - good_end
        result.dropped_lines = bad_count
    return result


def _parse_line(data: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None
