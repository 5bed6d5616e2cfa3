"""``instructmill generate PIPELINE``: run a multi-stage pipeline file (YAML or TOML)."""
from __future__ import annotations

import time

import click

from .common import user_errors
from .interrupts import watch_output


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
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: threads in this process; ray: Ray Data on a Ray cluster (pip install \"ray[data]\").")
@click.option("--ray-address", default=None, metavar="ADDR",
              help="Ray cluster to join ('auto', 'ray://head:10001'). [default: RAY_ADDRESS, else a new local "
                   "cluster on this machine]")
@click.option("--ray-replicas", type=click.IntRange(min=1), default=None, metavar="N",
              help="Actors (engine replicas) per engine stage. [default: from the cluster's GPUs / CPUs]")
@click.option("--ray-stage-replicas", multiple=True, metavar="STAGE=N",
              help="Actors of one engine stage (repeatable; wins over --ray-replicas).")
@click.option("--ray-batch-size", type=click.IntRange(min=1), default=None, metavar="N",
              help="Rows per actor call. [default: the stage's window: records_per_batch / chunk_size]")
@click.option("--ray-cpus-per-actor", type=click.FloatRange(min=0, min_open=True), default=None, metavar="X",
              help="CPUs each actor reserves (its engine's threads on CPU). [default: 1]")
@click.option("--ray-gpus-per-actor", type=click.FloatRange(min=0), default=None, metavar="X",
              help="GPUs each engine actor reserves. [default: 1 per replica on clusters with GPUs for "
                   "engines with device auto/cuda, else 0]")
@click.option("--push-to-hub", "push_to_hub", default=None, metavar="REPO",
              help="After the run, upload the sinks (their exports when they have one), their discards and a "
                   "dataset card as README.md to the Hugging Face Hub dataset REPO (HF_TOKEN, HF_ENDPOINT).")
@user_errors
def generate(pipeline: str, resume: bool, overwrite: bool, progress: bool | None, settings: tuple[str, ...],
             check: bool, executor: str, ray_address: str | None, ray_replicas: int | None,
             ray_stage_replicas: tuple[str, ...], ray_batch_size: int | None, ray_cpus_per_actor: float | None,
             ray_gpus_per_actor: float | None, push_to_hub: str | None) -> None:
    """Run the multi-stage PIPELINE (sources -> stages -> sinks), streaming, with checkpoints.

    Stages: template, self-instruct, respond, humpback, evolve, back-translate, filter, dedup.
    Engines named by several stages are loaded once and shared. Next to every sink: the
    discards file and the run report (.report.json, .report.png).

    With --executor ray the same pipeline runs on a Ray cluster through Ray Data: each engine
    stage on a pool of actors (one engine replica each), the same output files and report.

    \b
    Examples:
      instructmill generate examples/self_instruct_backtranslate.yaml
      instructmill generate examples/template_backtranslate.yaml --resume
      instructmill generate examples/template_backtranslate.yaml --set sources.rows.path=rows.jsonl
      instructmill generate examples/template_backtranslate.yaml --executor ray --ray-address auto
    """
    from ..pipeline import Pipeline

    import yaml

    ray_options = _ray_options(executor, ray_address, ray_replicas, ray_stage_replicas, ray_batch_size,
                               ray_cpus_per_actor, ray_gpus_per_actor)

    overrides = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r}: write KEY=VALUE", param_hint="--set")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise click.BadParameter(f"{item!r}: the value is not valid YAML ({exc})", param_hint="--set") from None
    if push_to_hub:  # a typo must not wait for the end of a long run
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(push_to_hub)
        except HFValidationError as exc:
            raise click.BadParameter(f"{push_to_hub!r}: {exc}", param_hint="--push-to-hub") from None
    pipe = Pipeline.from_file(pipeline, overrides=overrides)
    spec = pipe.spec
    if check:
        if executor == "ray":  # the shapes the Ray executor runs (resources are checked when it runs)
            from ..pipeline.ray_plan import plan_pipeline

            plan_pipeline(spec, ray_options, {"CPU": float(2**20), "GPU": float(2**20)})
        click.echo(f"{pipeline}: ok ({len(spec.sources)} source(s), {len(spec.stages)} stage(s), "
                   f"{len(spec.engines)} engine(s), {len(spec.sinks)} sink(s))", err=True)
        return
    for sink in spec.sinks:  # an interrupt's line counts these; engine logs go beside the first
        watch_output(str(spec.resolve(sink.path)))
    started = time.perf_counter()
    # Ctrl-C / kill: the command guard (cli/interrupts.py) prints what the sinks kept and the --resume hint
    report = pipe.run(resume=resume, overwrite=overwrite, progress=progress, executor=executor, ray=ray_options)
    lines = []
    for name, source in report["sources"].items():
        line = f"source {name}: {source['records']} records"
        if source.get("read_errors"):
            line += f", {source['read_errors']} unreadable lines -> {source['errors_file']}"
        if source.get("duplicate_ids"):
            line += (f"; warning: {source['duplicate_ids']} records repeat an earlier record's id, each kept "
                     "under a derived id '<id>#L<line>'")
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
    if report.get("executor"):
        lines.append(_executor_line(report["executor"]))
    files = [f for f in report.get("report_files", []) if f.endswith(".json")]
    if files:
        lines.append("report: " + ", ".join(files))
    exports = [s["export_file"] for s in report["sinks"].values() if s.get("export_file")]
    if exports:
        lines.append("exported: " + ", ".join(exports))
    if report.get("cards"):
        lines.append("dataset card: " + ", ".join(report["cards"]))
    lines.append(f"time: {time.perf_counter() - started:.1f} s")
    click.echo("\n".join(lines), err=True)
    if push_to_hub:
        _push(spec, report, push_to_hub)


def _push(spec, report: dict, repo: str) -> None:
    """Upload to the Hub after the data is written; one line and exit status 1 when it fails."""
    from ..io.card import HubError
    from ..pipeline.publish import push_pipeline

    try:
        url = push_pipeline(spec, report, repo)
    except HubError as exc:
        click.echo(f"Error: {exc}", err=True)
        raise SystemExit(1) from None
    click.echo(f"pushed to the Hub: {url}", err=True)


def _ray_options(executor: str, address: str | None, replicas: int | None, stage_replicas: tuple[str, ...],
                 batch_size: int | None, cpus: float | None, gpus: float | None) -> object | None:
    """The ``RayOptions`` of the ``--ray-*`` flags (``None`` for the local executor)."""
    given = [name for name, value in (("--ray-address", address), ("--ray-replicas", replicas),
                                      ("--ray-stage-replicas", stage_replicas), ("--ray-batch-size", batch_size),
                                      ("--ray-cpus-per-actor", cpus), ("--ray-gpus-per-actor", gpus)) if value]
    if executor != "ray":
        if given:
            raise click.UsageError(f"{', '.join(given)} only apply to --executor ray")
        return None
    from ..pipeline.ray_plan import RayOptions

    per_stage = {}
    for item in stage_replicas:
        stage, sep, value = item.partition("=")
        if not sep or not stage.strip() or not value.strip().isdigit():
            raise click.BadParameter(f"{item!r}: write STAGE=N", param_hint="--ray-stage-replicas")
        per_stage[stage.strip()] = int(value)
    kwargs = {"address": address, "replicas": replicas, "batch_size": batch_size, "num_gpus_per_actor": gpus,
              "stage_replicas": per_stage}
    if cpus is not None:
        kwargs["num_cpus_per_actor"] = cpus
    return RayOptions(**kwargs)


def _executor_line(info: dict) -> str:
    """``executor: ray (cluster 2 CPU; para: 2 actors x 1 CPU, batch 64; driver: dedup)``."""
    cluster = info.get("cluster") or {}
    parts = [", ".join(f"{v:g} {k}" for k, v in cluster.items()) or "no resources"]
    driver = []
    for root in (info.get("roots") or {}).values():
        for op in root.get("ops") or []:
            if op.get("kind") == "actors":
                gpu = f" + {op['num_gpus']:g} GPU" if op.get("num_gpus") else ""
                actors = f"{op['replicas']} actor{'s' if op['replicas'] != 1 else ''}"
                parts.append(f"{op['engine_stage']}: {actors} x {op['num_cpus']:g} CPU{gpu}, batch {op['batch_size']}")
            else:
                parts.append(f"{'+'.join(op['stages'])}: tasks, batch {op['batch_size']}")
        if root.get("generator"):
            parts.append("self-instruct: 1 actor")
        driver.extend(root.get("driver_stages") or [])
    if driver:
        parts.append("on the driver: " + ", ".join(driver))
    return f"executor: {info.get('kind', 'ray')} (cluster {'; '.join(parts)})"
