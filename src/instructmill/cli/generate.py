"""``instructmill generate PIPELINE``: run a multi-stage pipeline file (YAML or TOML)."""
from __future__ import annotations

import time

import click

from .common import user_errors


@click.command("generate")
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.option("--resume", is_flag=True, help="Continue an interrupted run: replay checkpoints, skip what is written.")
@click.option("--overwrite", is_flag=True, help="Delete an earlier run's outputs and checkpoints and start over.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bars per stage. [default: settings.progress, else when stderr is a terminal]")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Set a key of the pipeline file (repeatable; VALUE is read as YAML), e.g. "
                   "--set sources.seeds.path=seeds.jsonl --set stages.generate.num_instructions=500.")
@click.option("--check", is_flag=True, help="Only validate the pipeline file, run nothing.")
@user_errors
def generate(pipeline: str, resume: bool, overwrite: bool, progress: bool | None, settings: tuple[str, ...],
             check: bool) -> None:
    """Run the multi-stage PIPELINE (sources -> stages -> sinks), streaming, with checkpoints.

    Stages: template, self-instruct, respond, humpback, evolve, back-translate, filter, dedup.
    Engines named by several stages are loaded once and shared. Next to every sink: the
    discards file and the run report (.report.json, .report.png).

    \b
    Examples:
      instructmill generate examples/self_instruct_backtranslate.yaml
      instructmill generate examples/template_backtranslate.yaml --resume
      instructmill generate examples/template_backtranslate.yaml --set sources.rows.path=rows.jsonl
    """
    from ..pipeline import Pipeline

    import yaml

    overrides = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r}: write KEY=VALUE", param_hint="--set")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise click.BadParameter(f"{item!r}: the value is not valid YAML ({exc})", param_hint="--set") from None
    pipe = Pipeline.from_file(pipeline, overrides=overrides)
    spec = pipe.spec
    if check:
        click.echo(f"{pipeline}: ok ({len(spec.sources)} source(s), {len(spec.stages)} stage(s), "
                   f"{len(spec.engines)} engine(s), {len(spec.sinks)} sink(s))", err=True)
        return
    started = time.perf_counter()
    try:
        report = pipe.run(resume=resume, overwrite=overwrite, progress=progress)
    except KeyboardInterrupt:
        click.echo("interrupted; what was done is kept: run again with --resume to continue", err=True)
        raise SystemExit(130) from None
    lines = []
    for name, source in report["sources"].items():
        line = f"source {name}: {source['records']} records"
        if source.get("read_errors"):
            line += f", {source['read_errors']} unreadable lines -> {source['errors_file']}"
        lines.append(line)
    for name, stage in report["stages"].items():
        discards = stage.get("discards") or {}
        line = (f"stage {name} ({stage['method']}): {stage.get('records_in', 0)} in, "
                f"{stage.get('records_out', 0)} out")
        if discards:
            line += " (discarded: " + ", ".join(f"{k}: {v}" for k, v in discards.items()) + ")"
        if stage.get("replayed_in") or stage.get("replayed_out"):
            line += f"; {stage.get('replayed_out', 0)} replayed from the checkpoint"
        lines.append(line)
    for name, engine in report["engines"].items():
        parts = [f"engine {name}:"]
        if "output_tokens" in engine:
            parts.append(f"{engine.get('prompt_tokens', 0)} tokens in, {engine['output_tokens']} out")
        if "output_tokens_per_second" in engine:
            parts.append(f"({engine['output_tokens_per_second']:.0f} tok/s)")
        if isinstance(engine.get("busy_fraction"), (int, float)):
            parts.append(f"busy {100 * engine['busy_fraction']:.0f}%")
        lines.append(" ".join(parts))
    for name, sink in report["sinks"].items():
        line = f"sink {name}: {sink['total_ok']} ok -> {sink['output_file']}"
        if sink["total_discards"]:
            line += f"; {sink['total_discards']} discarded -> {sink['discards_file']}"
        if sink.get("already_written"):
            line += f" ({sink['already_written']} written before the resume)"
        lines.append(line)
    files = [f for f in report.get("report_files", []) if f.endswith(".json")]
    if files:
        lines.append("report: " + ", ".join(files))
    lines.append(f"time: {time.perf_counter() - started:.1f} s")
    click.echo("\n".join(lines), err=True)
