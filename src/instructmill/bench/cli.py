"""``instructmill bench``: run the benchmark workloads, keep their history, report regressions.

::

    instructmill bench list
    instructmill bench run template rouge_filter --quick
    instructmill bench all --quick                      # every workload, < 10 min on 2 cores
    instructmill bench all --device cuda --quick        # the one prepared command for a GPU machine
    instructmill bench report [--format markdown] [--threshold 0.10]   # exit 1 on a regression

Nothing heavy is imported until a workload runs.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

import click

from ..cli.common import user_errors
from .core import DEVICES

__all__ = ["bench", "script_main"]

HISTORY_HELP = ("History file [default: <INSTRUCTMILL_CACHE or ~/.cache/instructmill>/bench/history.jsonl]; "
                "the repository's reference runs: --history benchmarks/history.jsonl.")


def _engines(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    if not names:
        raise click.BadParameter("name at least one engine, e.g. --engines instructmill,hf_batched")
    return names


def run_options(func: Callable) -> Callable:
    """The flags of ``bench run`` / ``bench all``: :class:`~instructmill.bench.core.BenchOptions` plus output."""
    decorators = [
        click.option("--quick", is_flag=True, help="Smaller workloads (bench all --quick: minutes on 2 cores)."),
        click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True,
                     help="cuda: vLLM and CTranslate2 float16 on a GPU (refused when no CUDA device is visible)."),
        click.option("--model", default=None, help="A model path / HF id to measure instead of the built-in one."),
        click.option("--num-prompts", type=click.IntRange(min=1), default=None,
                     help="Requests to time (prompts, sentences, rows, candidates); default: the workload's."),
        click.option("--input-len", type=click.IntRange(min=1), default=None,
                     help="Fixed prompt length in tokens (vLLM's --input-len); default: the dataset's real lengths."),
        click.option("--output-len", type=click.IntRange(min=1), default=None,
                     help="Fixed output length in tokens (vLLM's --output-len)."),
        click.option("--max-batch-size", type=click.IntRange(min=1), default=None,
                     help="Batch budget (examples) for instructmill's path; a small one injects a slowdown."),
        click.option("--max-batch-tokens", type=click.IntRange(min=1), default=None,
                     help="Batch budget (tokens) for instructmill's path."),
        click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Timed rounds per engine (the fastest counts)."),
        click.option("--engines", callback=_engines, default=None, metavar="A,B",
                     help="Run only these engines (comma-separated; 'instructmill' is instructmill's path)."),
        click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                     help="Built models / conversions (default: <INSTRUCTMILL_CACHE>/bench)."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of sampled inputs."),
        click.option("--history", "history", type=click.Path(dir_okay=False), default=None,
                     help=HISTORY_HELP + " Appended to."),
        click.option("--no-save", is_flag=True, help="Do not append to the history."),
        click.option("--plot", "plot", type=click.Path(dir_okay=False), default=None,
                     help="Write the history's PNG plot there after the run."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def _run(names: list[str], kw: dict[str, Any]) -> None:
    from .core import BenchOptions
    from .runner import run_workloads

    history, no_save, plot = kw.pop("history"), kw.pop("no_save"), kw.pop("plot")
    options = BenchOptions(**kw)
    outcome = run_workloads(names, options, history_path=history, save=not no_save, plot_path=plot,
                            echo=click.echo, log=lambda m: click.echo(m, err=True))
    if not outcome.ok:
        raise SystemExit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def bench() -> None:
    """Measure instructmill against baselines in the same run; keep a history; flag regressions.

    Every workload times instructmill's path and its baselines (raw engines at their best settings,
    HF transformers, naive loops) on the same inputs in the same process, so every figure comes with
    a ratio. Each run appends one JSON line per workload to the history.
    """


@bench.command("list")
def list_() -> None:
    """List the workloads (in 'bench all' order)."""
    from .workloads import DESCRIPTIONS, WORKLOADS

    for name in WORKLOADS:
        click.echo(f"{name:16s} {DESCRIPTIONS.get(name, '')}")


@bench.command("run")
@click.argument("workloads", nargs=-1, required=True)
@run_options
@user_errors
def run(workloads: tuple[str, ...], **kw: Any) -> None:
    """Run WORKLOADS (see 'bench list') and append their results to the history."""
    from .workloads import check_names

    _run(check_names(list(dict.fromkeys(workloads))), kw)


@bench.command("all")
@run_options
@user_errors
def all_(**kw: Any) -> None:
    """Run every workload (template, rouge_filter, backtranslation, llm, pipeline; ray_backtranslation
    where Ray is installed).

    On a GPU machine, 'instructmill bench all --device cuda --quick' is the one command that measures
    everything (vLLM and CTranslate2 float16) and records it with the GPU's name.
    """
    import importlib.util

    from .workloads import WORKLOADS

    # ray_backtranslation needs Ray Data (an extra); without it, 'bench all' leaves it out
    _run([n for n in WORKLOADS if n != "ray_backtranslation" or importlib.util.find_spec("ray")], kw)


@bench.command("report")
@click.option("--history", "history", type=click.Path(dir_okay=False), default=None,
              help=HISTORY_HELP + " Read.")
@click.option("--plot", "plot", type=click.Path(dir_okay=False), default=None,
              help="PNG of the headline figure over runs (default: next to the history, <name>.png).")
@click.option("--no-plot", is_flag=True, help="Do not write the PNG.")
@click.option("--format", "fmt", type=click.Choice(["text", "markdown", "json"]), default="text", show_default=True,
              help="text: aligned columns; markdown: a GitHub table (as in the README); json: the records.")
@click.option("--threshold", type=click.FloatRange(0, 1, max_open=True), default=0.10, show_default=True,
              help="Flag a series whose latest run is more than this fraction below its best earlier run.")
@click.option("--workload", default=None, help="Only this workload.")
@user_errors
def report(history: str | None, plot: str | None, no_plot: bool, fmt: str, threshold: float,
           workload: str | None) -> None:
    """Show the latest run of each series; exit 1 when one regressed.

    A series is one workload's runs with the same kind (quick or full), workload facts (dataset,
    counts, lengths, model), machine and CPU instruction-set level (AVX2 / AVX-512 / AVX-512 VNNI);
    a run is compared only with earlier runs of its series. instructmill's batch settings are not
    among the facts, so a run with a small batch budget is compared with the normal runs.
    """
    from .history import default_history_path, load_history
    from .report import format_regressions, format_table, latest_runs, plot_history, regressions, report_json
    from .workloads import check_names

    if workload is not None:
        check_names([workload])
    path = Path(history) if history else default_history_path()
    records = load_history(path, warn=lambda m: click.echo(f"warning: {m}", err=True))
    if workload is not None:
        records = [r for r in records if r.get("workload") == workload]
    if not records:
        raise click.ClickException(f"no benchmark runs{f' of {workload}' if workload else ''} in {path}; "
                                   "run 'instructmill bench run WORKLOAD' first")
    found = regressions(records, threshold)
    png = None
    if not no_plot:
        try:
            png = plot_history(records, Path(plot) if plot else path.with_suffix(".png"), threshold=threshold)
        except ValueError as exc:  # no run with a figure (e.g. instructmill's engine was left out)
            click.echo(f"warning: no plot: {exc}", err=True)
    if fmt == "json":
        out = report_json(records, found)
        out["plot"] = str(png) if png else None
        click.echo(json.dumps(out, indent=2, default=str))
    else:
        latest = latest_runs(records)
        if fmt == "markdown":
            dates = sorted({str(r.get("date")) for r in latest})
            click.echo(f"Latest run of each series ({len(records)} runs in `{path.name}`; "
                       f"{dates[0] if dates else '-'} to {dates[-1] if dates else '-'}):\n")
        else:
            click.echo(f"{len(records)} runs in {path}; the latest of each series:")
        click.echo(format_table(latest, fmt))
        click.echo("")
        if found:
            click.echo(format_regressions(found))
        else:
            click.echo(f"no regression (threshold {threshold * 100:.0f}%; each series compared only with itself: "
                       "workload, quick/full, sizes, machine, CPU ISA level)")
        if png:
            click.echo(f"plot: {png}")
    if found:
        raise SystemExit(1)


def script_main(workload: str, argv: list[str] | None = None) -> int:
    """``python benchmarks/bench_<workload>.py ARGS`` == ``instructmill bench run <workload> ARGS``."""
    args = ["run", workload, *(sys.argv[1:] if argv is None else argv)]
    try:
        bench.main(args=args, prog_name=f"bench_{workload}.py", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code or 0)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        return 1
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0
