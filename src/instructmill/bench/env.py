"""Shared helpers for the benchmarks: environment facts, git sha, JSON-line results.

Nothing here imports an engine; versions are read with ``importlib.metadata`` so asking for
them costs no torch import.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterable

REPO_ROOT = Path(__file__).resolve().parents[3]  # the checkout, when run from one


def utc_now() -> str:
    """Current time, UTC, ISO 8601 with seconds and a ``Z`` suffix."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def git_sha(repo: Path = REPO_ROOT) -> str | None:
    """``git rev-parse HEAD`` of ``repo``, or ``None`` when git or the repository is missing."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                             text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha or None


def git_dirty(repo: Path = REPO_ROOT) -> bool | None:
    """True when tracked files differ from HEAD (the sha alone does not name the code measured)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                             capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip())


def cpu_model() -> str | None:
    """The ``model name`` line of ``/proc/cpuinfo`` (Linux), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def cpu_flags() -> list[str]:
    """The SIMD flags that matter for CTranslate2 / torch speed (avx2, avx512*, ...)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return sorted(f for f in flags if f.startswith(("avx", "fma", "amx", "vnni")))
    except OSError:
        pass
    return []


#: CPU instruction-set levels that change CTranslate2 / torch / Python-extension speed, best first:
#: (label, the ``/proc/cpuinfo`` flag that shows it). The same workload measures differently on
#: each level (wider vectors; int8 dot products on VNNI), so runs are compared only within one.
ISA_LEVELS = (("AVX-512 VNNI", "avx512_vnni"), ("AVX-512", "avx512f"), ("AVX2", "avx2"))


def isa_level(flags: Iterable[str] | None) -> str:
    """The best :data:`ISA_LEVELS` label the CPU ``flags`` show: ``"AVX-512 VNNI"``, ``"AVX-512"``,
    ``"AVX2"``; ``"below AVX2"`` when flags are known but show none; ``"ISA unknown"`` when there are
    no flags (no ``/proc/cpuinfo``, or a history line written without them)."""
    flags = set(flags or ())
    if not flags:
        return "ISA unknown"
    for label, flag in ISA_LEVELS:
        if flag in flags:
            return label
    return "below AVX2"


def machine_cpu_seconds() -> tuple[float, float] | None:
    """``(busy, total)`` CPU seconds of the whole machine since boot, all cores, from the first line
    of ``/proc/stat`` (busy = user + nice + system + irq + softirq + steal; total adds idle and
    iowait); ``None`` where ``/proc`` is missing. The benchmarks' noise gauges diff two readings."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            f = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    busy = f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] if len(f) > 7 else 0)
    return busy / tick, (busy + f[3] + f[4]) / tick


def package_version(name: str) -> str | None:
    """Installed version of distribution ``name`` or ``None``."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    """Versions of the packages the benchmarks compare (and Python)."""
    try:
        import instructmill

        own = getattr(instructmill, "__version__", None)
    except ImportError:
        own = None
    return {
        "instructmill": own,
        "ctranslate2": package_version("ctranslate2"),
        "torch": package_version("torch"),
        "transformers": package_version("transformers"),
        "sentencepiece": package_version("sentencepiece"),
        "python": platform.python_version(),
    }


def environment() -> dict[str, Any]:
    """Machine facts recorded with every result line."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"cpu_model": cpu_model(), "cores": os.cpu_count(), "cpu_flags": cpu_flags(),
            "platform": platform.platform(), "loadavg_at_start": load}


def append_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """Append one JSON object per line to ``path`` (created with its folder); returns lines written.

    Each line is written with a single ``write`` call of a complete line, so a run that dies
    midway leaves whole lines behind. A torn last line (a run killed mid-write) is ended with a
    newline first, so it stays one unreadable line and the new lines are whole.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    torn = False
    if path.is_file() and path.stat().st_size > 0:
        with open(path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            torn = fh.read(1) != b"\n"
    with open(path, "a", encoding="utf-8") as fh:
        if torn:
            fh.write("\n")
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False, sort_keys=False) + "\n")
            n += 1
    return n
