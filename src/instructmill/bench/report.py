"""Read the benchmark history: tables, regressions, a PNG of throughput over runs.

Regressions (:func:`regressions`): runs are grouped by workload, hardware key
(``hardware["key"]``) and ``detail["comparable"]`` (dataset and its hash, counts, lengths,
model shape, quick: everything that changes what is measured, but not instructmill's batch
settings, so a run with a deliberately small batch budget is compared with the normal ones). In
each group the latest run's headline figure is compared with the best *earlier* run's and is
flagged when ``latest < (1 - threshold) * best`` (default threshold 0.10, the issue's 10%).
A group with a single run has nothing to compare with.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from .core import ROLE_INSTRUCTMILL

__all__ = ["Regression", "regressions", "group_key", "latest_runs", "engine_rows", "format_table",
           "format_regressions", "report_json", "plot_history", "unit_of", "fmt_number", "fmt_ratio"]

#: headline metric -> unit shown in tables (a workload may set ``detail["unit"]`` instead).
UNITS = {
    "output_tokens_per_s": "output tok/s",
    "total_tokens_per_s": "tok/s",
    "requests_per_s": "req/s",
}


def unit_of(record: dict[str, Any]) -> str:
    """The unit of a history record's headline metric (``detail["unit"]``, else from the metric name)."""
    detail = record.get("detail") or {}
    return str(detail.get("unit") or UNITS.get(record.get("headline_metric", ""), record.get("headline_metric", "")))


def group_key(record: dict[str, Any]) -> tuple[str, str, str]:
    """``(workload, hardware key, canonical JSON of detail["comparable"])``: runs comparable for regressions."""
    comparable = (record.get("detail") or {}).get("comparable")
    return (str(record.get("workload")), str((record.get("hardware") or {}).get("key")),
            json.dumps(comparable, sort_keys=True, default=str))


def _short_sha(record: dict[str, Any]) -> str:
    sha = record.get("git_sha") or "nogit"
    return sha[:8] + ("+" if record.get("git_dirty") else "")


def _value(record: dict[str, Any]) -> float | None:
    v = record.get("headline")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


@dataclass(frozen=True)
class Regression:
    """A workload whose latest run is more than ``threshold`` below the best earlier comparable run.

    Attributes:
        workload / hardware_key / metric / unit: what was compared.
        latest / best: the headline values (``unit``).
        drop: ``1 - latest / best`` (0.25 = 25% below).
        latest_sha / latest_date / best_sha / best_date: the runs (sha shortened, ``+`` = dirty tree).
        threshold: the threshold used.
        comparable: the group's ``detail["comparable"]`` as canonical JSON.
    """

    workload: str
    hardware_key: str
    metric: str
    unit: str
    latest: float
    best: float
    drop: float
    latest_sha: str
    latest_date: str
    best_sha: str
    best_date: str
    threshold: float
    comparable: str = "{}"

    def message(self) -> str:
        """``REGRESSION: workload X: latest N unit is Y% below the best earlier run (sha, date)``."""
        return (f"REGRESSION: workload {self.workload}: latest {fmt_number(self.latest)} {self.unit} is "
                f"{self.drop * 100:.1f}% below the best earlier run ({fmt_number(self.best)} {self.unit}; "
                f"{self.best_sha}, {self.best_date}) [threshold {self.threshold * 100:.0f}%; "
                f"latest {self.latest_sha}, {self.latest_date}; hardware {self.hardware_key}]")


def regressions(history: Sequence[dict[str, Any]], threshold: float = 0.10,
                workload: str | None = None) -> list[Regression]:
    """Latest run vs the best earlier run of every comparable group (see the module docstring).

    Args:
        history: history records in run order (:func:`instructmill.bench.history.load_history`).
        threshold: flag when ``latest < (1 - threshold) * best``; in [0, 1).
        workload: only this workload's groups.

    Returns:
        one :class:`Regression` per flagged group, in the order the groups first appear.
        Runs without a headline value (instructmill not run or failed) are ignored.

    Raises:
        ValueError: ``threshold`` outside [0, 1).
    """
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for record in history:
        if workload is not None and record.get("workload") != workload:
            continue
        if _value(record) is None:
            continue
        groups.setdefault(group_key(record), []).append(record)
    found = []
    for (name, hw, comparable), runs in groups.items():
        if len(runs) < 2:
            continue
        latest, earlier = runs[-1], runs[:-1]
        best = max(earlier, key=lambda r: _value(r) or 0.0)
        lv, bv = _value(latest), _value(best)
        if lv is None or bv is None or bv <= 0:
            continue
        if lv < (1.0 - threshold) * bv:
            found.append(Regression(
                workload=name, hardware_key=hw, metric=str(latest.get("headline_metric")), unit=unit_of(latest),
                latest=lv, best=bv, drop=1.0 - lv / bv, latest_sha=_short_sha(latest),
                latest_date=str(latest.get("date")), best_sha=_short_sha(best), best_date=str(best.get("date")),
                threshold=threshold, comparable=comparable))
    return found


def latest_runs(history: Sequence[dict[str, Any]], workload: str | None = None) -> list[dict[str, Any]]:
    """The latest record of each workload, in the order the workloads first appear."""
    latest: dict[str, dict[str, Any]] = {}
    for record in history:
        if workload is None or record.get("workload") == workload:
            latest[str(record.get("workload"))] = record
    return list(latest.values())


# ------------------------------------------------------------------------------ tables

def fmt_number(x: Any) -> str:
    """A figure for a table: ``12,345`` / ``123.4`` / ``1.23`` / ``-`` for missing."""
    if x is None or isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return "-"
    ax = abs(x)
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 0.01 or ax == 0:
        return f"{x:.2f}"
    return f"{x:.2g}"


def fmt_ratio(x: Any) -> str:
    """A ratio for a table: ``0.95x`` / ``12.3x`` / ``2,777x`` / ``-`` for missing."""
    if x is None or isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return "-"
    return f"{x:,.0f}x" if x >= 100 else f"{x:.1f}x" if x >= 10 else f"{x:.2f}x"


def engine_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per engine of a history record (or a runner line): workload, engine, role, figure, unit,
    ratio (instructmill / engine on the headline metric), bleu, chrf, peak_rss_mb, busy, note."""
    metric = record.get("headline_metric")
    ratios = record.get("ratios") or {}
    rows = []
    for r in record.get("results") or []:
        m = r.get("metrics") or {}
        rows.append({
            "workload": record.get("workload"),
            "engine": r.get("engine"),
            "role": r.get("role"),
            "figure": m.get(metric),
            "unit": unit_of(record),
            "ratio": None if r.get("role") == ROLE_INSTRUCTMILL else ratios.get(r.get("engine")),
            "bleu": m.get("bleu"),
            "chrf": m.get("chrf"),
            "peak_rss_mb": m.get("peak_rss_mb"),
            "busy": m.get("busy_fraction"),
            "note": r.get("note") or "",
        })
    return rows


def _cells(row: dict[str, Any], record: dict[str, Any], run_info: bool, hw_column: bool, note_id: str) -> list[str]:
    ratio = row["ratio"]
    busy = row["busy"]
    cells = [str(row["workload"]), str(row["engine"]) + (f" [{note_id}]" if note_id else ""),
             fmt_number(row["figure"]), row["unit"],
             fmt_ratio(ratio),
             fmt_number(row["bleu"]), fmt_number(row["chrf"]), fmt_number(row["peak_rss_mb"]),
             f"{busy * 100:.1f}%" if isinstance(busy, (int, float)) else "-"]
    if run_info:
        cells += [str(record.get("date") or "-"), _short_sha(record)]
        if hw_column:
            cells.append(str((record.get("hardware") or {}).get("key", "-")))
    return cells


_ALERTS = ("CHECK FAILED", "WARNING")


def format_table(records: Iterable[dict[str, Any]], fmt: str = "text", *, run_info: bool = True) -> str:
    """The engines of ``records`` (history records) as one table.

    Columns: workload | engine | figure | unit | ratio (instructmill / engine) | bleu | chrf |
    peak RSS MB | busy, plus date and git sha when ``run_info`` (and a hardware column when the
    records come from several machines; otherwise the machine is a caption line). Engine notes
    (extrapolated, subset...), failed ``detail["checks"]`` and ``detail["warnings"]`` are footnotes.

    Args:
        fmt: ``"text"`` (aligned columns) or ``"markdown"`` (a GitHub table).
    """
    if fmt not in ("text", "markdown"):
        raise ValueError(f"fmt must be 'text' or 'markdown', got {fmt!r}")
    records = list(records)
    hw_keys = list(dict.fromkeys(str((r.get("hardware") or {}).get("key", "-")) for r in records))
    hw_column = run_info and len(hw_keys) > 1
    header = ["workload", "engine", "figure", "unit", "ratio", "bleu", "chrf", "peak RSS MB", "busy"]
    if run_info:
        header += ["date", "sha"] + (["hardware"] if hw_column else [])
    body: list[list[str]] = []
    notes: list[str] = []
    for record in records:
        for row in engine_rows(record):
            note_id = ""
            if row["note"]:
                notes.append(row["note"])
                note_id = str(len(notes))
            body.append(_cells(row, record, run_info, hw_column, note_id))
        detail = record.get("detail") or {}
        for name, ok in (detail.get("checks") or {}).items():
            if not ok:
                notes.append(f"CHECK FAILED: {record.get('workload')}: {name}")
        for warning in detail.get("warnings") or []:
            notes.append(f"WARNING: {record.get('workload')}: {warning}")
    lines: list[str] = []
    if run_info and not hw_column and hw_keys:
        lines.append(f"Hardware: `{hw_keys[0]}`\n" if fmt == "markdown" else f"hardware: {hw_keys[0]}")
    if fmt == "markdown":
        lines.append("| " + " | ".join(header) + " |")
        lines.append("| " + " | ".join("---:" if h in ("figure", "ratio", "bleu", "chrf", "peak RSS MB", "busy")
                                      else "---" for h in header) + " |")
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in body]
        if notes:
            lines.append("")
            lines += [f"{i}. {n}" if not n.startswith(_ALERTS) else f"{i}. **{n}**" for i, n in enumerate(notes, 1)]
    else:
        widths = [max(len(h), *(len(c[i]) for c in body)) if body else len(h) for i, h in enumerate(header)]
        right = {"figure", "ratio", "bleu", "chrf", "peak RSS MB", "busy"}

        def line(cells: list[str]) -> str:
            return "  ".join(c.rjust(w) if h in right else c.ljust(w)
                             for c, w, h in zip(cells, widths, header)).rstrip()

        lines.append(line(header))
        lines.append("  ".join("-" * w for w in widths))
        lines += [line(cells) for cells in body]
        for i, n in enumerate(notes, 1):
            lines.append(f"  [{i}] {n}" if not n.startswith(_ALERTS) else f"  !! {n}")
    return "\n".join(lines)


def format_regressions(found: Sequence[Regression]) -> str:
    """One ``REGRESSION: ...`` line per regression (``""`` when none)."""
    return "\n".join(r.message() for r in found)


def report_json(history: Sequence[dict[str, Any]], found: Sequence[Regression],
                workload: str | None = None) -> dict[str, Any]:
    """``{"latest": [records], "regressions": [...], "runs": n}`` for ``bench report --format json``."""
    runs = [r for r in history if workload is None or r.get("workload") == workload]
    return {"runs": len(runs), "latest": latest_runs(history, workload),
            "regressions": [asdict(r) for r in found]}


# -------------------------------------------------------------------------------- plot

def _baseline_names(runs: Sequence[dict[str, Any]]) -> list[str]:
    names: dict[str, None] = {}
    for run in runs:
        for r in run.get("results") or []:
            if r.get("role") != ROLE_INSTRUCTMILL:
                names.setdefault(str(r.get("engine")), None)
    return list(names)


def _engine_value(run: dict[str, Any], engine: str) -> float | None:
    metric = run.get("headline_metric")
    for r in run.get("results") or []:
        if r.get("engine") == engine:
            v = (r.get("metrics") or {}).get(metric)
            return float(v) if isinstance(v, (int, float)) and math.isfinite(v) and v > 0 else None
    return None


def _group_title(runs: Sequence[dict[str, Any]]) -> str:
    last = runs[-1]
    comparable = (last.get("detail") or {}).get("comparable") or {}
    bits = [str(last.get("workload"))]
    if comparable.get("quick"):
        bits.append("quick")
    for key in ("requests", "rows", "candidates", "sentences", "num_prompts", "records"):
        if key in comparable:
            bits.append(f"{key} {comparable[key]}")
            break
    hw = last.get("hardware") or {}
    bits.append(f"{hw.get('gpu') or hw.get('cpu_model') or '?'} x{hw.get('cores', '?')} {hw.get('device', '')}".strip())
    return " | ".join(bits)


def plot_history(history: Sequence[dict[str, Any]], path: str | Path, *, threshold: float = 0.10,
                 workload: str | None = None, max_panels: int = 12) -> Path:
    """Write a PNG: one panel per comparable group (workload x hardware x comparable facts), the
    headline metric over that group's runs (x: run order, labelled short sha + date), instructmill
    solid, each baseline dashed, flagged latest runs marked with a red cross.

    Panels are ordered by workload, at most ``max_panels`` (the groups with the most recent runs).
    The y axis is logarithmic when the figures span more than 20x. Returns ``path``.

    Raises:
        ValueError: the history holds no run (of ``workload``) with a headline figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    last_seen: dict[tuple[str, str, str], int] = {}
    for i, record in enumerate(history):
        if workload is not None and record.get("workload") != workload:
            continue
        if _value(record) is None and not any(_engine_value(record, str(r.get("engine")))
                                              for r in record.get("results") or []):
            continue
        key = group_key(record)
        groups.setdefault(key, []).append(record)
        last_seen[key] = i
    if not groups:
        raise ValueError("no benchmark run with a figure to plot" + (f" for workload {workload!r}" if workload else ""))
    keys = sorted(groups, key=lambda k: -last_seen[k])[:max_panels]
    from .workloads import WORKLOADS

    order = list(WORKLOADS)
    keys.sort(key=lambda k: (order.index(k[0]) if k[0] in order else len(order), -last_seen[k]))
    flagged = {(r.workload, r.hardware_key, r.comparable): r for r in regressions(history, threshold, workload)}

    n = len(keys)
    cols = 1 if n == 1 else 2
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7.5 * cols, 3.6 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        runs = groups[key]
        x = list(range(len(runs)))
        labels = [f"{_short_sha(r)}\n{str(r.get('date', ''))[:16].replace('T', ' ')}" for r in runs]
        values: list[float] = []
        own = [_value(r) for r in runs]
        ax.plot(x, [v if v is not None else math.nan for v in own], "-o", color="C0", linewidth=2,
                label="instructmill")
        values += [v for v in own if v]
        for j, name in enumerate(_baseline_names(runs), start=1):
            ys = [_engine_value(r, name) for r in runs]
            ax.plot(x, [v if v is not None else math.nan for v in ys], "--", marker=".", color=f"C{j % 10}",
                    label=name)
            values += [v for v in ys if v]
        reg = flagged.get(key)
        if reg is not None and own[-1] is not None:
            ax.plot([x[-1]], [own[-1]], "x", color="red", markersize=14, markeredgewidth=3,
                    label=f"regression (-{reg.drop * 100:.0f}%)")
        if values and max(values) / max(min(values), 1e-12) > 20:
            ax.set_yscale("log")
        ax.set_title(_group_title(runs), fontsize=9)
        ax.set_ylabel(unit_of(runs[-1]))
        step = max(1, len(x) // 12)
        ax.set_xticks(x[::step])
        ax.set_xticklabels(labels[::step], fontsize=7)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle("instructmill benchmarks: headline figure per run (solid: instructmill, dashed: baselines)",
                 fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
