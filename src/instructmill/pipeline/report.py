"""The run report: ``<sink>.report.json`` and ``<sink>.report.png`` next to every sink.

The JSON holds, for the whole pipeline:

* ``stages``: per stage the quality figures (``quality``, :mod:`instructmill.figures`: kept /
  discarded by reason with an example each, similarity, languages, span failures, scores,
  ROUGE-L to seeds), ``records_in`` / ``records_out`` / ``ok_out`` / ``passed_through``,
  ``discards`` by reason, records replayed from the checkpoint, busy seconds (inside the method)
  and wall seconds, throughput, a ``timeline`` of ``[seconds, records out so far]`` and the
  method's own counters (``method_summary``);
* ``engines``: per engine the shared service's ``stats()`` (requests, prompt / output tokens,
  busy seconds, busy fraction, per-stage split, timeline), plus ``output_tokens_per_second``;
* ``sources`` (records read, unreadable lines), ``sinks`` (written, discards by reason, files),
  wall time, whether the run was resumed.

The PNG (matplotlib, Agg backend) shows per-stage throughput over time (records/s), each engine's
output tokens/s over time when its service reports a timeline, and the discard breakdown.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from typing import Any

from .checkpoint import report_paths
from .spec import PipelineSpec

__all__ = ["build_report", "plot_report", "write_reports"]

log = logging.getLogger("instructmill.pipeline")


def build_report(spec: PipelineSpec, *, nodes: list[Any], stages: dict[str, Any], engines: dict[str, Any],
                 state_dir: str, resumed: bool, sessions: int, wall_seconds: float, started_at: str,
                 setup_seconds: float = 0.0, clock_zero: float | None = None) -> dict[str, Any]:
    """The report dict (see the module docstring) from the runtime's nodes and the engines' stats.

    ``setup_seconds``: state checks and engine loading, before the stage threads started (stage
    timelines count from then: ``run_seconds = wall_seconds - setup_seconds``). ``clock_zero``: the
    ``time.perf_counter()`` at that moment; an engine whose stats give
    ``first_request_perf_counter`` gets its timeline shifted onto the stages' clock
    (``timeline_offset_seconds``)."""
    by_name = {(n.stats.kind, n.name): n for n in nodes}
    report: dict[str, Any] = {
        "pipeline": spec.file,
        "started": started_at,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_seconds": round(wall_seconds, 3),
        "setup_seconds": round(setup_seconds, 3),
        "run_seconds": round(wall_seconds - setup_seconds, 3),
        "resumed": resumed,
        "sessions": sessions,
        "state_dir": state_dir,
        "sources": {},
        "stages": {},
        "engines": {},
        "sinks": {},
    }
    for name, source in spec.sources.items():
        node = by_name.get(("source", name))
        stats = node.stats if node is not None else None
        report["sources"][name] = {"path": source.path, "records": stats.records_out if stats else 0,
                                   "read_errors": stats.extra.get("read_errors", 0) if stats else 0,
                                   "duplicate_ids": stats.extra.get("duplicate_ids", 0) if stats else 0,
                                   "errors_file": stats.extra.get("errors_file") if stats else None}
    for stage_spec in spec.stages:
        node = by_name.get(("stage", stage_spec.name))
        entry: dict[str, Any] = {"method": stage_spec.method, "input": stage_spec.input,
                                 "engine": stage_spec.engine}
        if node is not None:
            entry.update(node.stats.as_dict())
        stage = stages.get(stage_spec.name)
        if stage is not None:
            try:
                entry["method_summary"] = _jsonable(stage.summary())
            except Exception as exc:  # noqa: BLE001 - a report must not fail the run
                entry["method_summary"] = {"error": str(exc)}
        report["stages"][stage_spec.name] = entry
    for name, stats in engines.items():
        entry = dict(stats)
        _align(entry, clock_zero)
        for direction in (entry.get("directions") or {}).values():
            _align(direction, clock_zero)
        wall = entry.get("wall_seconds") or wall_seconds
        for key, out in (("output_tokens", "output_tokens_per_second"), ("prompt_tokens", "prompt_tokens_per_second")):
            if isinstance(entry.get(key), (int, float)) and wall and out not in entry:
                entry[out] = round(entry[key] / wall, 2)
        report["engines"][name] = _jsonable(entry)
    for sink in spec.sinks:
        node = by_name.get(("sink", sink.name))
        from ..io.resume import run_paths

        paths = run_paths(spec.resolve(sink.path))
        written: Counter[str] = node.written if node is not None else Counter()
        total_ok = written.get("ok", 0)
        total_bad = sum(written.values()) - total_ok
        skipped = node.skipped if node is not None else 0
        report["sinks"][sink.name] = {
            "path": sink.path, "format": sink.format, "input": sink.input,
            "output_file": paths.output, "discards_file": paths.discards,
            "total_ok": total_ok, "total_discards": total_bad,
            "written_this_session": (node.stats.records_out if node is not None else 0),
            "already_written": skipped,
            "discards_by_status": dict(sorted((k, v) for k, v in written.items() if k != "ok")),
            "repaired_torn_lines": dict(node.repaired) if node is not None else {},
            "timeline": [list(p) for p in node.stats.timeline] if node is not None else [],
        }
    return report


def _align(stats: dict[str, Any], clock_zero: float | None) -> None:
    first = stats.get("first_request_perf_counter")
    if clock_zero is not None and isinstance(first, (int, float)):
        stats["timeline_offset_seconds"] = round(first - clock_zero, 4)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda o: repr(o)))


def write_reports(report: dict[str, Any], sink_paths: list[str]) -> list[str]:
    """Write ``<sink>.report.json`` (and ``.report.png`` when matplotlib is installed) next to each
    sink; returns the files written. Plotting problems are logged, never raised."""
    written: list[str] = []
    png_bytes: bytes | None = None
    try:
        png_bytes = plot_report(report)
    except ImportError:
        log.warning("matplotlib is not installed: no report PNG (pip install matplotlib)")
    except Exception:  # noqa: BLE001 - the data is in the JSON; a plot must not fail the run
        log.warning("could not draw the report PNG", exc_info=True)
    for path in sink_paths:
        json_path, png_path = report_paths(path)
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        with open(json_path, "w", encoding="utf-8") as fh:
            json.dump(report, fh, ensure_ascii=False, indent=2)
            fh.write("\n")
        written.append(json_path)
        if png_bytes is not None:
            with open(png_path, "wb") as fh:
                fh.write(png_bytes)
            written.append(png_path)
    return written


def _rates(timeline: list[list[float]], horizon: float, bins: int = 60) -> tuple[list[float], list[float]]:
    """Per-bin rate (units/s) of a cumulative ``[[t, total], ...]`` timeline."""
    import numpy as np

    if len(timeline) < 2 or horizon <= 0:
        return [], []
    t = np.array([p[0] for p in timeline], dtype=float)
    y = np.array([p[1] for p in timeline], dtype=float)
    width = max(horizon / bins, 0.05)
    edges = np.arange(0.0, horizon + width, width)
    # a cumulative count is a step function: the value of the last point at or before each edge
    at = np.searchsorted(t, edges, side="right") - 1
    cum = np.where(at >= 0, y[np.clip(at, 0, None)], 0.0)
    rate = np.diff(cum) / width
    centers = (edges[:-1] + edges[1:]) / 2
    return centers.tolist(), rate.tolist()


def plot_report(report: dict[str, Any]) -> bytes:
    """The report figure as PNG bytes.

    Raises:
        ImportError: matplotlib is not installed.
    """
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engine_lines: dict[str, list] = {}
    aligned = True
    for name, e in report["engines"].items():
        for label, stats in [(name, e)] + list((e.get("directions") or {}).items()):
            timeline = stats.get("timeline")
            if isinstance(timeline, list) and len(timeline) >= 2:
                offset = stats.get("timeline_offset_seconds")
                aligned = aligned and isinstance(offset, (int, float))
                shift = offset if isinstance(offset, (int, float)) else 0.0
                engine_lines[label] = [[p[0] + shift, p[1]] for p in timeline
                                       if isinstance(p, (list, tuple)) and len(p) >= 2]
    from ..figures import draw_quality, quality_panels

    quality = {name: stage["quality"] for name, stage in report["stages"].items() if stage.get("quality")}
    extra_kinds = quality_panels(quality, skip=("discards",))
    panels = (3 if engine_lines else 2) + len(extra_kinds)
    fig, axes = plt.subplots(panels, 1, figsize=(10, 3.6 * panels), constrained_layout=True)
    horizon = float(report.get("run_seconds") or report.get("wall_seconds") or 0.0)

    ax = axes[0]
    for name, stage in report["stages"].items():
        xs, ys = _rates(stage.get("timeline") or [], horizon)
        if xs:
            ax.plot(xs, ys, drawstyle="steps-mid", label=f"{name} ({stage.get('method')})")
    for name, sink in report["sinks"].items():
        xs, ys = _rates(sink.get("timeline") or [], horizon)
        if xs:
            ax.plot(xs, ys, drawstyle="steps-mid", linestyle="--", label=f"sink {name}")
    ax.set_title("Per-stage throughput")
    ax.set_xlabel(f"seconds since the stages started (after {report.get('setup_seconds', 0):.0f} s of set-up)")
    ax.set_ylabel("records / s")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", loc="upper right")
    ax.grid(alpha=0.3)

    if engine_lines:
        ax = axes[1]
        for name, points in engine_lines.items():
            xs, ys = _rates(points, max(horizon, max(float(p[0]) for p in points)))
            if xs:
                ax.plot(xs, ys, drawstyle="steps-mid", label=name)
        ax.set_title("Engine output tokens / s")
        ax.set_xlabel("seconds since the stages started" if aligned else "seconds since each engine's first request")
        ax.set_ylabel("tokens / s")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small", loc="upper right")
        ax.grid(alpha=0.3)

    draw_quality(axes[panels - len(extra_kinds):], extra_kinds, quality)
    ax = axes[panels - len(extra_kinds) - 1]
    labels, counts = [], []
    for name, stage in report["stages"].items():
        for status, n in sorted((stage.get("discards") or {}).items(), key=lambda kv: -kv[1]):
            labels.append(f"{name}: {status}")
            counts.append(n)
    if labels:
        ax.barh(range(len(labels)), counts, color="tab:red", alpha=0.7)
        ax.set_yticks(range(len(labels)), labels, fontsize="small")
        ax.invert_yaxis()
        for i, n in enumerate(counts):
            ax.text(n, i, f" {n}", va="center", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no discards", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("Discards by stage and reason")
    ax.set_xlabel("records")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
