"""Run benchmark workloads one after another, print their tables, append them to the history.

:func:`run_workloads` is what ``instructmill bench run`` / ``bench all`` call: every workload runs
with the same :class:`~instructmill.bench.core.BenchOptions`; after each one its table is printed
(when several run) and its history line appended (so a killed ``bench all`` keeps the workloads it
finished); a workload that fails is reported and skipped (nothing recorded for it) and the others
still run. A final table shows every workload.
"""
from __future__ import annotations

import sys
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import InstructmillError, OptionError
from .core import BenchOptions, WorkloadResult
from .env import git_dirty, git_sha
from .history import append_records, default_history_path, hardware, load_history, make_record, new_run_id, packages
from .report import format_regressions, format_table, plot_history, regressions
from .workloads import check_names, load_workload

__all__ = ["RunOutcome", "cuda_device_count", "default_cache_dir", "require_device", "run_workloads"]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cuda_device_count() -> int:
    """CUDA devices visible to CTranslate2 or torch (0 when neither is installed or sees one)."""
    count = 0
    try:
        import ctranslate2

        count = max(count, int(ctranslate2.get_cuda_device_count()))
    except Exception:  # noqa: BLE001 - no ctranslate2 / no CUDA runtime: 0 devices
        pass
    if count:
        return count
    try:
        import torch

        if torch.cuda.is_available():
            count = max(count, int(torch.cuda.device_count()))
    except Exception:  # noqa: BLE001
        pass
    return count


def require_device(device: str) -> None:
    """Refuse ``device="cuda"`` on a machine where neither CTranslate2 nor torch sees a CUDA device.

    Raises:
        OptionError: ``device`` is ``"cuda"`` and no CUDA device is visible.
    """
    if device == "cuda" and cuda_device_count() == 0:
        raise OptionError("device", device, "no CUDA device is visible here (ctranslate2.get_cuda_device_count() "
                          "and torch.cuda.is_available() both say none); run on a GPU machine or use --device cpu")


def default_cache_dir() -> Path:
    """``<INSTRUCTMILL_CACHE or ~/.cache/instructmill>/bench``: built models and converted data."""
    from ..models.cache import cache_dir

    return cache_dir() / "bench"


@dataclass
class RunOutcome:
    """What :func:`run_workloads` did.

    Attributes:
        run_id: shared by the history lines of this run.
        records: the history line of every workload that completed (saved or not), in run order.
        failures: workload -> error message, for the workloads that raised (nothing recorded).
        failed_checks: ``"workload: check"`` for each ``detail["checks"]`` entry that is false
            (the line is still recorded).
        history_path: the history file written (``None`` with ``save=False``).
        plot_path: the PNG written, if any.
    """

    run_id: str
    records: list[dict[str, Any]] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    failed_checks: list[str] = field(default_factory=list)
    history_path: Path | None = None
    plot_path: Path | None = None

    @property
    def ok(self) -> bool:
        """No workload failed and every check passed."""
        return not self.failures and not self.failed_checks


def run_workloads(names: Sequence[str], options: BenchOptions, *, history_path: str | Path | None = None,
                  save: bool = True, plot_path: str | Path | None = None, threshold: float = 0.10,
                  echo: Callable[[str], None] = print, log: Callable[[str], None] = _stderr) -> RunOutcome:
    """Run ``names`` in order with ``options``; print tables; append to the history.

    Args:
        names: workload names (see :data:`instructmill.bench.workloads.WORKLOADS`).
        options: one set of options for all of them (``cache_dir`` ``None``: :func:`default_cache_dir`).
        history_path: the history file (``None``: :func:`~instructmill.bench.history.default_history_path`).
        save: append one line per completed workload to the history.
        plot_path: write the history's PNG there at the end (see :func:`~instructmill.bench.report.plot_history`).
        threshold: regression threshold for the lines printed at the end (they do not fail the run).
        echo: where tables and results go (stdout); ``log``: progress lines (stderr).

    Returns:
        a :class:`RunOutcome`; failing workloads are in ``failures`` (their traceback went to ``log``).

    Raises:
        OptionError: an unknown workload name, or ``device="cuda"`` without a visible CUDA device
            (checked before anything runs).
    """
    names = check_names(list(names))
    require_device(options.device)
    if options.cache_dir is None:
        options = replace(options, cache_dir=str(default_cache_dir()))
    history = Path(history_path) if history_path is not None else default_history_path()
    if save:
        _check_writable(history)  # before the workloads run, not after: their results would be lost
    outcome = RunOutcome(run_id=new_run_id(), history_path=history if save else None)
    hw = hardware(options.device)
    pkgs = packages()
    sha, dirty = git_sha(), git_dirty()
    log(f"bench run {outcome.run_id}: {', '.join(names)} on {hw['key']}"
        f"{' (quick)' if options.quick else ''}; history: {history if save else 'not saved'}")
    walls: dict[str, float] = {}
    for name in names:
        log(f"== {name} ==")
        t0 = time.perf_counter()
        try:
            module = load_workload(name)
            result = module.run(options, log=log)
            if not isinstance(result, WorkloadResult):
                raise TypeError(f"workload {name!r} returned {type(result).__name__}, not a WorkloadResult")
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - one failing workload must not stop the others
            walls[name] = time.perf_counter() - t0
            if not isinstance(exc, InstructmillError):  # a user error (bad option, missing model) says it all
                log(traceback.format_exc().rstrip())
            outcome.failures[name] = f"{type(exc).__name__}: {exc}"
            echo(f"ERROR: workload {name} failed after {walls[name]:.1f} s: {outcome.failures[name]} "
                 "(nothing recorded for it)")
            continue
        walls[name] = time.perf_counter() - t0
        if not result.options:
            result.options = options.as_dict()
        record = make_record(result, run_id=outcome.run_id, hardware_info=hw, sha=sha, dirty=dirty,
                             package_versions=pkgs, wall_s=walls[name])
        outcome.records.append(record)
        for check, passed in ((result.detail or {}).get("checks") or {}).items():
            if not passed:
                outcome.failed_checks.append(f"{name}: {check}")
        if len(names) > 1:
            echo("")
            echo(format_table([record], run_info=False))
            echo(f"({name}: {walls[name]:.1f} s wall, set-up included)")
        if save:
            append_records(history, [record])
    echo("")
    echo(f"== all workloads: run {outcome.run_id}, {hw['key']}, git {(sha or 'nogit')[:8]}"
         f"{'+dirty' if dirty else ''} ==")
    if outcome.records:
        echo(format_table(outcome.records, run_info=False))
    echo("wall: " + ", ".join(f"{n} {s:.1f} s" for n, s in walls.items()) + f"; total {sum(walls.values()):.1f} s")
    for name, message in outcome.failures.items():
        echo(f"FAILED: {name}: {message}")
    for check in outcome.failed_checks:
        echo(f"CHECK FAILED: {check}")
    if save:
        past = load_history(history, warn=log)
        found = [r for r in regressions(past, threshold) if r.workload in {rec["workload"] for rec in outcome.records}]
        if found:
            echo(format_regressions(found))
    else:
        past = None
    if plot_path is not None:
        lines = past if past is not None else (load_history(history, warn=log) + outcome.records)
        if any(rec.get("headline") is not None for rec in lines):
            outcome.plot_path = plot_history(lines, plot_path, threshold=threshold)
            echo(f"plot: {outcome.plot_path}")
        else:
            log("no figure to plot")
    return outcome


def _check_writable(path: Path) -> None:
    """Raise :class:`OptionError` unless ``path`` can be appended to (its folder is created)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise OptionError("history", str(path), f"cannot be written ({exc.strerror or exc})") from None
