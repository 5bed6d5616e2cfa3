"""Read the benchmark history: tables, regressions, a PNG of throughput over runs.

Series (:func:`series_key`, labelled by :func:`series_label`): runs of one workload are a series
when they share the run kind (``quick`` or ``full``), the machine (``hardware["key"]``: CPU model,
cores, GPU, device), the CPU's instruction-set level (AVX2 / AVX-512 / AVX-512 VNNI, from the
recorded ``/proc/cpuinfo`` flags) and ``detail["comparable"]`` (dataset and its hash, counts,
lengths, model shape: everything that changes what is measured, but not instructmill's batch
settings, so a run with a deliberately small batch budget is compared with the normal ones).

Regressions (:func:`regressions`) are looked for only within a series: the latest run's headline
figure is compared with the best *earlier* run's of the same series and is flagged when
``latest < (1 - threshold) * best`` (default threshold 0.10, the issue's 10%). A series with a
single run has nothing to compare with. Tables show the latest run of every series, labelled.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from .core import ROLE_INSTRUCTMILL
from .env import isa_level

__all__ = ["Regression", "regressions", "series_key", "series_label", "group_key", "run_kind", "isa_of",
           "latest_runs", "engine_rows", "format_table", "format_regressions", "report_json", "plot_history",
           "unit_of", "fmt_number", "fmt_ratio"]

#: ``detail["comparable"]`` keys that give a workload's size, shown in series labels (first found).
SIZE_KEYS = ("rows", "candidates", "sentences", "num_prompts", "records", "requests")

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


def run_kind(record: dict[str, Any]) -> str:
    """``"quick"`` or ``"full"``: from the run's options, else ``detail["comparable"]["quick"]``."""
    quick = (record.get("options") or {}).get("quick")
    if quick is None:
        quick = ((record.get("detail") or {}).get("comparable") or {}).get("quick")
    return "quick" if quick else "full"


def isa_of(record: dict[str, Any]) -> str:
    """The CPU instruction-set level of a run (``hardware["isa"]``, else from ``hardware["cpu_flags"]``)."""
    hw = record.get("hardware") or {}
    return str(hw.get("isa") or isa_level(hw.get("cpu_flags")))


def series_key(record: dict[str, Any]) -> tuple[str, str, str, str, str]:
    """``(workload, quick|full, hardware key, ISA level, canonical JSON of detail["comparable"])``:
    runs with the same key are one series, and only they are compared (module docstring)."""
    comparable = (record.get("detail") or {}).get("comparable")
    return (str(record.get("workload")), run_kind(record), str((record.get("hardware") or {}).get("key")),
            isa_of(record), json.dumps(comparable, sort_keys=True, default=str))


#: Older name of :func:`series_key`.
group_key = series_key


def series_label(record: dict[str, Any], *, workload: bool = True, machine: bool = True, sep: str = " | ") -> str:
    """A readable name of ``record``'s series, e.g.
    ``"template | quick | rows 20000 | AMD EPYC x2 cpu | AVX-512 VNNI"``.

    ``workload`` / ``machine``: include the workload name / the CPU (or GPU), cores and device (left
    out where a table shows them elsewhere). The ISA level is always included.
    """
    comparable = (record.get("detail") or {}).get("comparable") or {}
    bits = [str(record.get("workload"))] if workload else []
    bits.append(run_kind(record))
    for key in SIZE_KEYS:
        if comparable.get(key) is not None:
            bits.append(f"{key} {comparable[key]}")
            break
    for key in ("input_len", "output_len"):
        if comparable.get(key) is not None:
            bits.append(f"{key} {comparable[key]}")
    if machine:
        hw = record.get("hardware") or {}
        bits.append(f"{hw.get('gpu') or hw.get('cpu_model') or '?'} x{hw.get('cores', '?')} "
                    f"{hw.get('device', '')}".strip())
    bits.append(isa_of(record))
    return sep.join(bits)


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
        comparable: the series' ``detail["comparable"]`` as canonical JSON.
        series: the series' label (:func:`series_label`); ``series_key``: its key as JSON.
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
    series: str = ""
    series_key: str = ""

    def message(self) -> str:
        """``REGRESSION: workload X: latest N unit is Y% below the best earlier run (sha, date) [series ...]``."""
        return (f"REGRESSION: workload {self.workload}: latest {fmt_number(self.latest)} {self.unit} is "
                f"{self.drop * 100:.1f}% below the best earlier run ({fmt_number(self.best)} {self.unit}; "
                f"{self.best_sha}, {self.best_date}) [threshold {self.threshold * 100:.0f}%; "
                f"latest {self.latest_sha}, {self.latest_date}; series {self.series}; hardware {self.hardware_key}]")


def regressions(history: Sequence[dict[str, Any]], threshold: float = 0.10,
                workload: str | None = None) -> list[Regression]:
    """Latest run vs the best earlier run of every series (see the module docstring).

    Args:
        history: history records in run order (:func:`instructmill.bench.history.load_history`).
        threshold: flag when ``latest < (1 - threshold) * best``; in [0, 1).
        workload: only this workload's groups.

    Returns:
        one :class:`Regression` per flagged series, in the order the series first appear.
        Runs without a headline value (instructmill not run or failed) are ignored.

    Raises:
        ValueError: ``threshold`` outside [0, 1).
    """
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for record in history:
        if workload is not None and record.get("workload") != workload:
            continue
        if _value(record) is None:
            continue
        groups.setdefault(series_key(record), []).append(record)
    found = []
    for key, runs in groups.items():
        name, _kind, hw, _isa, comparable = key
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
                threshold=threshold, comparable=comparable, series=series_label(latest),
                series_key=json.dumps(key)))
    return found


def latest_runs(history: Sequence[dict[str, Any]], workload: str | None = None) -> list[dict[str, Any]]:
    """The latest record of each series (:func:`series_key`), grouped by workload in the order the
    workloads first appear, the series of a workload in the order they first appear."""
    latest: dict[tuple[str, ...], dict[str, Any]] = {}
    for record in history:
        if workload is None or record.get("workload") == workload:
            latest[series_key(record)] = record
    order = list(dict.fromkeys(key[0] for key in latest))
    return sorted(latest.values(), key=lambda r: order.index(str(r.get("workload"))))


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
        cells.append(series_label(record, workload=False, machine=False, sep=", "))
    return cells


_ALERTS = ("CHECK FAILED", "WARNING")


def format_table(records: Iterable[dict[str, Any]], fmt: str = "text", *, run_info: bool = True) -> str:
    """The engines of ``records`` (history records) as one table.

    Columns: workload | engine | figure | unit | ratio (instructmill / engine) | bleu | chrf |
    peak RSS MB | busy, plus date, git sha and series (quick / full, size, CPU ISA level) when
    ``run_info`` (and a hardware column when the records come from several machines; otherwise the
    machine and, when all records share it, its ISA level are a caption line). Engine notes
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
        header += ["date", "sha"] + (["hardware"] if hw_column else []) + ["series"]
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
        isas = list(dict.fromkeys(isa_of(r) for r in records))
        flags = f"CPU flags: {isas[0]}" if len(isas) == 1 else ""
        if fmt == "markdown":
            lines.append(f"Hardware: `{hw_keys[0]}`" + (f", {flags}" if flags else "") + "\n")
        else:
            lines.append(f"hardware: {hw_keys[0]}" + (f"; {flags}" if flags else ""))
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
    return series_label(runs[-1])


def plot_history(history: Sequence[dict[str, Any]], path: str | Path, *, threshold: float = 0.10,
                 workload: str | None = None, max_panels: int = 12) -> Path:
    """Write a PNG: one panel per series (:func:`series_key`, titled by :func:`series_label`), the
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

    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    last_seen: dict[tuple[str, ...], int] = {}
    for i, record in enumerate(history):
        if workload is not None and record.get("workload") != workload:
            continue
        if _value(record) is None and not any(_engine_value(record, str(r.get("engine")))
                                              for r in record.get("results") or []):
            continue
        key = series_key(record)
        groups.setdefault(key, []).append(record)
        last_seen[key] = i
    if not groups:
        raise ValueError("no benchmark run with a figure to plot" + (f" for workload {workload!r}" if workload else ""))
    keys = sorted(groups, key=lambda k: -last_seen[k])[:max_panels]
    from .workloads import WORKLOADS

    order = list(WORKLOADS)
    keys.sort(key=lambda k: (order.index(k[0]) if k[0] in order else len(order), -last_seen[k]))
    flagged = {tuple(json.loads(r.series_key)): r for r in regressions(history, threshold, workload)}

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
