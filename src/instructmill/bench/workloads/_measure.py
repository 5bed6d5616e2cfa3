"""Measurement helpers shared by the ``llm`` and ``pipeline`` workloads.

* :func:`measure_tree`: wall time, peak RSS of this process **and its children** (vLLM runs its
  engine core in a child process; :func:`instructmill.bench.core.measure` sees this process only),
  and a noise gauge (``others_share``: the machine's CPU time used by other processes meanwhile,
  from ``/proc/stat``; this machine is shared, and contention only ever slows a run down).
* :class:`Counts` / :class:`Round` / :func:`timed_round` / :func:`engine_result`: timed rounds of
  one engine -> an :class:`~instructmill.bench.core.EngineResult` (the fastest round counts; every
  round is kept in ``settings``; notes for capped, disturbed or miscounted runs).
* :func:`require_cuda`, :func:`vllm_import_error`, :func:`shared_data_path`, :func:`model_name`.
"""
from __future__ import annotations

import os
import threading
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ...errors import OptionError
from ..core import ROLE_BASELINE, ROLE_INSTRUCTMILL, EngineResult, Measurement, measure, throughput
from ..env import REPO_ROOT, machine_cpu_seconds

__all__ = ["CLEAN_SHARE", "Call", "Counts", "Round", "TreeMeasurement", "empty_metrics", "engine_result",
           "measure_tree", "model_name", "require_cuda", "shared_data_path", "skipped_result", "timed_round",
           "vllm_import_error"]

#: A round is clean when other processes used at most this share of the machine's CPU meanwhile.
CLEAN_SHARE = 0.05


def shared_data_path(name: str) -> Path:
    """``<INSTRUCTMILL_SHARED or the checkout's ../shared>/data/<name>`` (not checked)."""
    root = os.environ.get("INSTRUCTMILL_SHARED")
    return (Path(root) if root else REPO_ROOT.parent / "shared") / "data" / name


def model_name(model: str | None) -> str:
    """The model argument as recorded: ``"embedded:<name>"`` for the embedded default's aliases."""
    from ...models.llm import EMBEDDED_ALIASES, EMBEDDED_LLM

    return f"embedded:{EMBEDDED_LLM}" if model is None or model in EMBEDDED_ALIASES else str(model)


def vllm_import_error() -> str | None:
    """``None`` when ``import vllm`` works, else why not (``"ModuleNotFoundError: ..."``)."""
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - a broken install (torchvision...) counts as missing too
        return f"{type(exc).__name__}: {exc}"
    return None


def _cuda_counts() -> dict[str, int]:
    counts = {"torch": 0, "ctranslate2": 0}
    try:
        import torch

        counts["torch"] = int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - no torch / no CUDA runtime: none visible
        pass
    try:
        import ctranslate2

        counts["ctranslate2"] = int(ctranslate2.get_cuda_device_count())
    except Exception:  # noqa: BLE001
        pass
    return counts


def require_cuda(device: str) -> dict[str, int]:
    """CUDA devices seen by torch and CTranslate2 (``{}`` on CPU).

    Raises:
        OptionError: ``device == "cuda"`` and neither library sees a CUDA device.
    """
    if device != "cuda":
        return {}
    counts = _cuda_counts()
    if not any(counts.values()):
        raise OptionError("device", device, "no CUDA device is visible (torch.cuda.is_available() is False and "
                                            "ctranslate2.get_cuda_device_count() is 0): run on a GPU machine "
                                            "or use --device cpu")
    return counts


def _tree_rss_mb() -> float:
    try:
        import psutil
    except ImportError:  # pragma: no cover - vllm / ray bring psutil
        return 0.0
    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def _tree_cpu_seconds() -> float | None:
    """CPU seconds (user + system) of this process and its live children."""
    try:
        import psutil
    except ImportError:  # pragma: no cover
        return None
    me = psutil.Process()
    t = me.cpu_times()
    total = t.user + t.system
    for child in me.children(recursive=True):
        try:
            c = child.cpu_times()
            total += c.user + c.system
        except psutil.Error:
            pass
    return total


@dataclass
class TreeMeasurement(Measurement):
    """:class:`~instructmill.bench.core.Measurement` plus a noise gauge: ``others_share`` = share
    of the machine's CPU time used by processes outside this process tree meanwhile (``None`` when
    the window was too short, < 0.5 CPU-second, or ``/proc`` is missing), ``own_cores`` = CPU
    seconds of this tree / wall seconds."""

    others_share: float | None = None
    own_cores: float | None = None


@contextmanager
def measure_tree(interval: float = 0.1) -> Iterator[TreeMeasurement]:
    """Like :func:`~instructmill.bench.core.measure`, over this process **and its children**
    (vLLM's engine core is one): ``peak_rss_mb`` sums their RSS (sampled every ``interval``
    seconds, MiB); ``others_share`` / ``own_cores`` as in :class:`TreeMeasurement`. The timing
    excludes the samplers' start and stop."""
    peak = [_tree_rss_mb()]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval):
            peak[0] = max(peak[0], _tree_rss_mb())

    sampler = threading.Thread(target=sample, name="bench-tree-rss", daemon=True)
    sampler.start()
    own0, machine0 = _tree_cpu_seconds(), machine_cpu_seconds()
    out = TreeMeasurement()
    try:
        with measure() as m:
            yield out
    finally:
        own1, machine1 = _tree_cpu_seconds(), machine_cpu_seconds()
        stop.set()
        sampler.join()
        out.seconds = m.seconds
        out.peak_rss_mb = round(max(m.peak_rss_mb, peak[0]), 1)
        if None not in (own0, own1, machine0, machine1) and m.seconds > 0:
            own = own1 - own0  # type: ignore[operator]
            busy = machine1[0] - machine0[0]  # type: ignore[index]
            total = machine1[1] - machine0[1]  # type: ignore[index]
            out.own_cores = round(own / m.seconds, 2)
            if total >= 0.5:
                out.others_share = round(min(1.0, max(0.0, busy - own) / total), 3)


def empty_metrics(requests: int | None = None) -> dict[str, Any]:
    """The metric keys with no values (an engine that was skipped)."""
    return {"requests": requests, "input_tokens": None, "output_tokens": None, "seconds": None,
            "requests_per_s": None, "total_tokens_per_s": None, "output_tokens_per_s": None,
            "peak_rss_mb": None, "busy_fraction": None}


@dataclass
class Counts:
    """What one engine call produced: ``output_tokens`` counted from its output, ``busy_seconds``
    inside the engine (``None`` where not reported; or ``busy_fraction`` given directly, e.g. from
    a pipeline report), ``statuses`` of prompts that did not run (instructmill's per-prompt
    status), ``requests`` / ``input_tokens`` when they differ from the workload's (a time cap;
    a pipeline's own token counts), and ``extra`` metrics (merged into the engine's metrics)."""

    output_tokens: int
    busy_seconds: float | None = None
    statuses: dict[str, int] = field(default_factory=dict)
    requests: int | None = None
    input_tokens: int | None = None
    busy_fraction: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Round:
    """One timed run of one engine: :class:`Counts` plus wall ``seconds``, ``peak_rss_mb``,
    ``others_share`` and ``own_cores`` (see :class:`TreeMeasurement`)."""

    counts: Counts
    seconds: float
    peak_rss_mb: float
    others_share: float | None = None
    own_cores: float | None = None


Call = Callable[[], Counts]


def timed_round(call: Call) -> Round:
    """Run ``call`` under :func:`measure_tree`."""
    with measure_tree() as m:
        counts = call()
    return Round(counts, m.seconds, m.peak_rss_mb, m.others_share, m.own_cores)


def engine_result(engine: str, role: str, rounds: Sequence[Round], *, requests: int, input_tokens: int,
                  output_len: int | None, settings: dict[str, Any], note: str = "") -> EngineResult:
    """An :class:`EngineResult` from timed rounds: the fastest round's figures (per second: the
    rounds may differ in requests done under a time cap), the highest RSS of all rounds, busy
    fraction = busy seconds / wall seconds of that round. Notes say when output tokens differ
    from ``requests x output_len``, prompts did not run, a cap stopped the run, or other
    processes took more than :data:`CLEAN_SHARE` of the CPU during the counted round."""
    def rate(r: Round) -> float:
        return r.counts.output_tokens / r.seconds if r.seconds > 0 else 0.0

    best = max(rounds, key=rate)
    c = best.counts
    done = c.requests if c.requests is not None else requests
    busy = c.busy_fraction
    if busy is None and c.busy_seconds is not None and best.seconds > 0:
        busy = round(min(1.0, c.busy_seconds / best.seconds), 4)
    metrics = throughput(requests=done, input_tokens=c.input_tokens if c.input_tokens is not None else input_tokens,
                         output_tokens=c.output_tokens, seconds=best.seconds,
                         peak_rss_mb=max(r.peak_rss_mb for r in rounds), busy_fraction=busy, **c.extra)
    notes = [note] if note else []
    if done < requests:
        notes.append(f"time cap: {done} of {requests} prompts done, rates over those")
    if output_len is not None and c.output_tokens != done * output_len:
        notes.append(f"{c.output_tokens} output tokens, expected {done * output_len}")
    statuses: Counter = Counter(c.statuses)
    if statuses:
        notes.append("prompts not run: " + ", ".join(f"{k} x{v}" for k, v in sorted(statuses.items())))
    if best.others_share is not None and best.others_share > CLEAN_SHARE:
        notes.append(f"disturbed: other processes used {best.others_share:.0%} of the CPU meanwhile")
    settings = {**settings, "rounds": len(rounds),
                "rounds_output_tokens_per_s": [round(rate(r), 2) for r in rounds],
                "rounds_others_cpu_share": [r.others_share for r in rounds],
                "own_cores": best.own_cores}
    return EngineResult(engine, role, metrics, settings, "; ".join(notes))


def skipped_result(engine: str, reason: str, requests: int) -> EngineResult:
    """A baseline (or instructmill) that did not run, with the reason as its note."""
    role = ROLE_INSTRUCTMILL if engine == "instructmill" else ROLE_BASELINE
    return EngineResult(engine, role, empty_metrics(requests), {}, f"skipped: {reason}")
