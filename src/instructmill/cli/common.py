"""What the record-processing commands share: input/output flags, the run loop, the summary."""
from __future__ import annotations

import functools
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator

import click

from ..errors import InstructmillError
from ..records import OutputRecord
from ..progress import Heartbeat


#: ``--input-format`` choices (:data:`instructmill.io.readers.READ_FORMATS` less the ndjson alias).
INPUT_FORMATS = ["jsonl", "json", "csv", "tsv", "parquet", "arrow"]


def io_options(func: Callable) -> Callable:
    """INPUT argument and the output / resume flags of every record-processing command."""
    decorators = [
        click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False, allow_dash=True)),
        click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False),
                     help="Output JSONL (ok records). Beside it: .discards.jsonl, .errors.jsonl, .run.json."),
        click.option("--format", "fmt", type=click.Choice(["alpaca", "sharegpt", "openai"]), default="alpaca",
                     show_default=True, help="Output record format."),
        click.option("--input-format", type=click.Choice(INPUT_FORMATS), default=None,
                     help="Input format (default: from the file extension)."),
        click.option("--id-field", default="id", show_default=True,
                     help="Input field holding a record id (else line number + content hash)."),
        click.option("--resume", is_flag=True, help="Continue an interrupted run: skip what is done."),
        click.option("--overwrite", is_flag=True, help="Delete an earlier run's files and start over."),
        click.option("--strict", is_flag=True, help="Stop at the first invalid input line or record."),
        click.option("--limit", type=int, default=None, help="Process only the first N records."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def user_errors(func: Callable) -> Callable:
    """Turn instructmill's user errors into one clear message (no traceback).

    Also tells the command guard (:mod:`.interrupts`) about the ``output`` file, so that an
    interrupt's line counts what was kept there and engine logs go to the log file beside it.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from . import interrupts

        try:
            if isinstance(kwargs.get("output"), str):
                interrupts.watch_output(kwargs["output"])
            return func(*args, **kwargs)
        except InstructmillError as exc:
            message = interrupts.one_line(exc)
            if message is None:
                raise  # a full disk / read-only output inside: the command guard's line says what was kept
            raise click.ClickException(message) from exc
        except FileNotFoundError as exc:
            raise click.ClickException(f"file not found: {exc.filename}") from exc

    return wrapper


def count_lines(path: str) -> int | None:
    """Lines of a JSONL/CSV file (for the progress bar total; blank lines count too); None for stdin,
    gzip or huge files. Counted in 1 MiB blocks, so one huge line is never held whole."""
    if path == "-" or path.lower().endswith(".gz") or not os.path.isfile(path) \
            or os.path.getsize(path) > 512 * 1024 * 1024:
        return None
    if path.lower().endswith((".parquet", ".arrow", ".feather")):  # binary: lines mean nothing
        return None
    lines, last = 0, b"\n"
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")


def run_records(*, input_path: str, output: str, fmt: str, input_format: str | None, id_field: str,
                resume: bool, overwrite: bool, strict: bool, limit: int | None, settings: dict[str, Any],
                process: Callable[[Iterable], Iterator[OutputRecord]], unit: str = "rec",
                output_ids: Callable[[str], list[str]] | None = None) -> dict[str, Any]:
    """Read -> skip done -> process -> write, with a progress bar; returns the run summary.

    ``output_ids(input_id)``: the ids ``process`` writes for one input (default: the same id).
    """
    import itertools

    from tqdm import tqdm

    from ..io.readers import read_records
    from ..io.run import open_run

    start = time.perf_counter()
    # every setting that changes ids or output belongs in the fingerprint (a resume refuses a change)
    fingerprint = {**settings, "limit": limit, "id_field": id_field}
    with open_run(output, input_path=input_path, settings=fingerprint, resume=resume,
                  overwrite=overwrite, fmt=fmt) as run:
        records = read_records(input_path, format=input_format, id_field=id_field, strict=strict,
                               on_error=run.error)
        if limit is not None:
            records = itertools.islice(records, limit)
        total = None if limit is not None else count_lines(input_path)
        bar = tqdm(total=total, unit=unit, desc="records", disable=None, file=sys.stderr,
                   initial=0, dynamic_ncols=True)
        pending = run.pending(_counting(records, bar), output_ids)
        with Heartbeat(bar, lambda: heartbeat_text(run)):
            for out in process(pending):
                run.write([out])
        bar.close()
        summary = run.summary()
    summary["seconds"] = round(time.perf_counter() - start, 2)
    summary["output"] = output
    return summary


def heartbeat_text(run) -> str:
    """The heartbeat line of a :class:`~instructmill.io.run.Run`: records read and written so far."""
    s = run.summary()
    return (f"{s['read']:,} records read, {s['written_ok'] + s['written_other']:,} written "
            f"({s['written_ok']:,} ok) to {run.paths.output}")


def _counting(records: Iterable, bar) -> Iterator:
    for record in records:
        bar.update(1)
        yield record


def print_summary(summary: dict[str, Any], extra_lines: list[str] | None = None) -> None:
    """The end-of-run summary on stderr: read, written, statuses, errors, speed."""
    from ..io.resume import run_paths

    paths = run_paths(summary["output"])
    lines = [
        f"records read: {summary['read']}"
        + (f" ({summary['skipped_done']} of them already done)" if summary.get("skipped_done") else ""),
        f"written: {summary['written_ok']} ok -> {paths.output}",
    ]
    other = {k: v for k, v in summary["by_status"].items() if k != "ok"}
    if other:
        lines.append(f"discarded: {summary['written_other']} -> {paths.discards} ("
                     + ", ".join(f"{k}: {v}" for k, v in sorted(other.items())) + ")")
    if summary.get("errors"):
        lines.append(f"unreadable input lines: {summary['errors']} -> {paths.errors}")
    if summary.get("duplicate_ids"):
        lines.append(f"warning: {summary['duplicate_ids']} input records repeat an earlier record's id; each is "
                     "kept under a derived id (" + ", ".join(summary["duplicate_id_examples"]) + ")")
    if summary.get("repaired"):
        lines.append("repaired torn lines: " + ", ".join(f"{k}: {v}" for k, v in summary["repaired"].items() if v))
    lines.extend(extra_lines or [])
    lines.extend(quality_lines(summary))
    lines.extend(card_lines(summary["output"], extra_lines))
    lines.append(f"time: {summary['seconds']:.1f} s")
    click.echo("\n".join(lines), err=True)


def quality_lines(summary: dict[str, Any]) -> list[str]:
    """The quality figures' console lines, and ``<stem>.report.json`` / ``.report.png`` written
    beside the output (figures of the whole output: read back from the files after a resume)."""
    import json

    from ..figures import QualityFigures, figures_from_files, plot_quality
    from ..io.resume import run_paths
    from ..pipeline.checkpoint import report_paths

    paths = run_paths(summary["output"])
    if summary.get("resumed") or "quality" not in summary:
        figures = figures_from_files([paths.output, paths.discards])
    else:
        figures = QualityFigures.from_dict(summary["quality"])
    data = figures.as_dict()
    json_path, png_path = report_paths(paths.output)
    report = {"output": paths.output, "summary": {k: v for k, v in summary.items() if k != "quality"},
              "quality": data}
    lines = figures.summary_lines()
    try:
        with open(json_path, "w", encoding="utf-8") as fh:
            json.dump(report, fh, ensure_ascii=False, indent=2, default=str)
            fh.write("\n")
    except OSError as exc:
        return lines + [f"report not written: {exc}"]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        holder: dict[str, Any] = {}

        def axes_for(n: int):
            fig, axes = plt.subplots(n, 1, figsize=(9, 3.2 * n), constrained_layout=True, squeeze=False)
            holder["fig"] = fig
            return [row[0] for row in axes]

        if plot_quality(axes_for, {"run": data}):
            holder["fig"].savefig(png_path, dpi=80)
            plt.close(holder["fig"])
    except Exception:  # noqa: BLE001 - the JSON holds the figures; a plot must not fail the run
        pass
    return lines + [f"report: {json_path}"]


def card_lines(output: str, figures: list[str] | None) -> list[str]:
    """Write the run's dataset card (io/card.py) beside ``output``; the summary line naming it."""
    from ..io.card import write_run_card

    card = write_run_card(output, figures)
    return [f"dataset card: {card}"] if card else []
