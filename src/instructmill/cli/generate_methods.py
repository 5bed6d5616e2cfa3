"""``instructmill self-instruct`` / ``humpback`` / ``evolve``: LLM instruction construction.

Flags mirror the Python API: method options are :class:`SelfInstructOptions`,
:class:`HumpbackOptions`, :class:`EvolOptions` fields; sampling flags are
:class:`~instructmill.engine.llm.SamplingOptions` fields (vLLM names) with the method's
defaults; engine flags are :class:`~instructmill.engine.llm.LLMEngineOptions` fields.
"""
from __future__ import annotations

import dataclasses
import itertools
import sys
import time
import typing
from typing import Any, Callable

import click

from ..engine.llm import LLMEngineOptions, SamplingOptions
from ..models.llm_backends import backend_names
from ..errors import InstructmillError
from ..methods.evol import EvolOptions
from ..methods.humpback import HumpbackOptions
from ..methods.self_instruct import SelfInstructOptions
from .common import INPUT_FORMATS, count_lines, heartbeat_text, io_options, print_summary, user_errors
from ..progress import Heartbeat
from .options import _click_type, _field_help, build_options, dataclass_options

BACKEND_CHOICES = backend_names()  # the registry of models.llm_backends


# ------------------------------------------------------------------------------ shared flags

def sampling_options(base: SamplingOptions, *, prefix: str = "", what: str = "",
                     exclude: tuple[str, ...] = ("seed", "ignore_eos", "json_schema")) -> Callable:
    """One ``--<prefix><field>`` flag per SamplingOptions field, showing ``base``'s values as defaults."""
    hints = typing.get_type_hints(SamplingOptions)

    def decorate(func: Callable) -> Callable:
        for f in reversed(dataclasses.fields(SamplingOptions)):
            if f.name in exclude:
                continue
            name = prefix + f.name
            flag = "--" + name.replace("_", "-")
            default = getattr(base, f.name)
            help_text = (f"{what}: " if what else "") + _field_help(SamplingOptions, f.name)
            if f.name == "stop":
                func = click.option(flag, name, multiple=True, help=help_text + " (repeatable)")(func)
                continue
            help_text += f" [default: {default}]"
            kind = _click_type(hints[f.name], default)
            if kind is bool:
                func = click.option(f"{flag}/--no-{name.replace('_', '-')}", name, default=None,
                                    help=help_text)(func)
            else:
                func = click.option(flag, name, type=kind, default=None, help=help_text)(func)
        return func

    return decorate


def build_sampling(flags: dict[str, Any], base: SamplingOptions, *, prefix: str = "") -> SamplingOptions:
    """``base`` with the sampling flags that were given (consumed from ``flags``)."""
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(SamplingOptions):
        if f.name in ("seed", "ignore_eos", "json_schema"):
            continue  # no flags (``--seed`` is the method's; schemas are set by the methods)
        value = flags.pop(prefix + f.name, None)
        if value is None or (f.name == "stop" and not value):
            continue
        changes[f.name] = tuple(value) if f.name == "stop" else value
    try:
        return dataclasses.replace(base, **changes)
    except InstructmillError as exc:
        raise click.ClickException(str(exc)) from exc


def llm_options(func: Callable) -> Callable:
    """``--backend``, ``--model``, ``--allow-unverified`` and the engine flags."""
    func = dataclass_options(LLMEngineOptions, exclude=("seed",))(func)
    func = click.option("--allow-unverified", is_flag=True,
                        help="Use a converted model whose verification failed.")(func)
    func = click.option("--model", default=None,
                        help="Model: 'embedded' (default: SmolLM2-135M-Instruct), a known name, an HF "
                             "folder, a CTranslate2 folder, a GGUF file or a hub id.")(func)
    func = click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="auto", show_default=True,
                        help="LLM engine (auto: openai when --base-url is given, else vLLM when installed, else "
                             "CTranslate2; openai: any OpenAI-compatible server at --base-url).")(func)
    return func


def make_llm(backend: str, model: str | None, flags: dict[str, Any], seed: int, allow_unverified: bool):
    """Build the engine options from the flags and load the backend."""
    from ..models import llm_backends

    options = build_options(LLMEngineOptions, flags, seed=seed)
    kwargs = {"allow_unverified": True} if allow_unverified else {}
    return llm_backends.load_llm(backend, model, options, **kwargs)


def _method_options(cls: type, flags: dict[str, Any], **overrides: Any):
    return build_options(cls, flags, **overrides)


def _parse_rate(summary: dict[str, Any]) -> str:
    """``"parse rate: 46/48 (95.8%), structured output"`` from a method's summary counters."""
    attempts, ok = summary.get("parse_attempts", 0), summary.get("parse_ok", 0)
    mode = "structured output (JSON schema)" if summary.get("structured") else "free text"
    share = f" ({100.0 * ok / attempts:.1f}%)" if attempts else ""
    return f"parse rate: {ok}/{attempts}{share}, {mode}"


def _echo_engine(llm, seconds: float, tokens: int) -> str:
    speed = tokens / seconds if seconds else 0.0
    return (f"engine: {llm.name} {llm.model}; {tokens} output tokens in {seconds:.1f} s of generation "
            f"({speed:.0f} tok/s)")


# ------------------------------------------------------------------------------ self-instruct

_SI = SelfInstructOptions()


@click.command("self-instruct")
@click.argument("input_path", metavar="SEEDS", type=click.Path(dir_okay=False, exists=True))
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False),
              help="Output JSONL (kept records). Beside it: .discards.jsonl, .errors.jsonl, .run.json.")
@click.option("--format", "fmt", type=click.Choice(["alpaca", "sharegpt", "openai"]), default="alpaca",
              show_default=True, help="Output record format.")
@click.option("--input-format", type=click.Choice(INPUT_FORMATS), default=None,
              help="SEEDS format (default: from the file extension).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run (or raise --num-instructions).")
@click.option("--overwrite", is_flag=True, help="Delete an earlier run's files and start over.")
@click.option("--num-instructions", type=int, default=100, show_default=True,
              help="Stop once this many records are kept with outputs (the last round may overshoot).")
@click.option("--blacklist", "blacklist", multiple=True,
              help="Keyword that discards an instruction (repeatable; replaces the paper's list).")
@click.option("--no-blacklist", is_flag=True, help="Use no keyword blacklist.")
@dataclass_options(SelfInstructOptions, exclude=("sampling", "instance_sampling", "blacklist"))
@sampling_options(_SI.sampling, what="task generation")
@sampling_options(_SI.instance_sampling, prefix="instance_", what="input/output generation",
                  exclude=("seed", "ignore_eos", "n", "json_schema"))
@llm_options
@user_errors
def self_instruct(input_path, output, fmt, input_format, resume, overwrite, num_instructions, blacklist,
                  no_blacklist, backend, model, allow_unverified, **flags):
    """Bootstrap new instructions with inputs and outputs from SEEDS (Self-Instruct, Wang et al. 2022).

    SEEDS: seed tasks (Self-Instruct seed_tasks.jsonl, or Alpaca / ShareGPT / OpenAI records).

    \b
    Examples:
      instructmill self-instruct ../shared/data/seed_tasks.jsonl -o out/si.jsonl --num-instructions 100
      instructmill self-instruct seeds.jsonl -o out/si.jsonl --backend vllm --model Qwen/Qwen2.5-7B-Instruct \\
          --prompt-style alpaca --prompts-per-round 64 --n 4
    """
    from ..io.readers import read_records, to_example
    from ..io.resume import run_paths
    from ..io.run import open_run
    from ..methods.self_instruct import SelfInstruct
    from ..records import Example
    from ..errors import RecordError

    sampling = build_sampling(flags, _SI.sampling)
    instance_sampling = build_sampling(flags, _SI.instance_sampling, prefix="instance_")
    words = () if no_blacklist else (tuple(blacklist) if blacklist else None)
    options = _method_options(SelfInstructOptions, flags, sampling=sampling, instance_sampling=instance_sampling,
                              blacklist=words)
    llm = make_llm(backend, model, flags, options.seed, allow_unverified)
    method = SelfInstruct(llm, options)
    started = time.perf_counter()
    with open_run(output, input_path=input_path, settings=method.settings(), resume=resume,
                  overwrite=overwrite, fmt=fmt) as run:
        seeds: list[Example] = []
        for record in read_records(input_path, format=input_format, on_error=run.error):
            try:
                seeds.append(to_example(record))
            except RecordError as exc:
                click.echo(f"skipping seed: {exc}", err=True)
        done = list(_read_done(run_paths(output))) if run.resumed else []
        rounds = method.run(seeds, num_instructions, done=done)
        with Heartbeat(None, lambda: f"Self-Instruct round {method.summary['rounds']}, "
                                     f"{method.summary['ok']} kept so far"):
            for batch in rounds:
                run.write(batch)
                s = method.summary
                click.echo(f"round {s['rounds']}: {s['ok'] + sum(r.get('status') == 'ok' for r in done)} ok "
                           f"/ {num_instructions}", err=True)
        summary = run.summary()
    summary.update(seconds=round(time.perf_counter() - started, 2), output=output, read=len(seeds))
    s = method.summary
    lines = [f"rounds: {s['rounds']}; prompts: {s['prompts']}; samples: {s['samples']}; parsed items: "
             f"{s['parsed']}; kept by the filters: {s['kept']}; kept with outputs: {s['ok']}",
             _parse_rate(s),
             f"total kept in {output}: {summary['total_ok']}",
             _echo_engine(llm, llm.stats.get("seconds", 0.0), s["output_tokens"])]
    if summary["total_ok"] < num_instructions:
        lines.append(f"note: {summary['total_ok']} < --num-instructions {num_instructions} after "
                     f"--max-rounds {options.max_rounds}")
    print_summary(summary, lines)
    llm.close()


def _read_done(paths) -> Any:
    """The records an earlier session wrote (id, status, instruction, extra), from both files."""
    import os

    from ..io.readers import read_records, to_example
    from ..errors import RecordError

    for path in (paths.output, paths.discards):
        if not os.path.exists(path):
            continue
        for record in read_records(path, format="jsonl"):
            try:
                instruction = to_example(record).instruction
            except RecordError:
                instruction = ""
            yield {"id": record.fields.get("id", record.id), "status": record.fields.get("status"),
                   "instruction": instruction, "extra": record.fields.get("extra") or {}}


# ------------------------------------------------------------------------------ humpback

_HB = HumpbackOptions()


@click.command("humpback")
@io_options
@dataclass_options(HumpbackOptions, exclude=("generation", "curation"))
@sampling_options(_HB.generation, what="instruction writing", exclude=("seed", "ignore_eos", "n", "json_schema"))
@sampling_options(_HB.curation, prefix="curation_", what="self-curation", exclude=("seed", "ignore_eos", "n", "json_schema"))
@llm_options
@user_errors
def humpback(input_path, output, fmt, input_format, id_field, resume, overwrite, strict, limit,
             backend, model, allow_unverified, **flags):
    """Write the instruction each text of INPUT answers, then keep the pairs the model rates highly
    (instruction back-translation, Li et al. 2023 "Humpback").

    INPUT: records whose --text-field holds the text (default: the output / last assistant turn).

    \b
    Examples:
      instructmill humpback answers.jsonl -o out/hb.jsonl --threshold 4
      instructmill humpback web.jsonl -o out/hb.jsonl --text-field text --backend vllm --model NAME
    """
    from ..methods.humpback import Humpback
    from .common import run_records

    generation = build_sampling(flags, _HB.generation)
    curation = build_sampling(flags, _HB.curation, prefix="curation_")
    options = _method_options(HumpbackOptions, flags, generation=generation, curation=curation)
    llm = make_llm(backend, model, flags, options.seed, allow_unverified)
    method = Humpback(llm, options)
    summary = run_records(input_path=input_path, output=output, fmt=fmt, input_format=input_format,
                          id_field=id_field, resume=resume, overwrite=overwrite, strict=strict, limit=limit,
                          settings=method.settings(), process=method.process)
    scores = ", ".join(f"{k}: {v}" for k, v in sorted(method.summary["scores"].items()))
    print_summary(summary, [f"scores: {scores or '-'} (threshold {options.threshold})",
                            _parse_rate(method.summary),
                            _echo_engine(llm, llm.stats.get("seconds", 0.0), method.summary["output_tokens"])])
    llm.close()


# ------------------------------------------------------------------------------ evolve

_EV = EvolOptions()


@click.command("evolve")
@io_options
@click.option("--operation", "operations", multiple=True,
              type=click.Choice(["constraints", "deepen", "concretize", "reasoning", "breadth"]),
              help="Evolution to draw from (repeatable). [default: all five]")
@dataclass_options(EvolOptions, exclude=("operations", "evolution", "response", "judge"))
@sampling_options(_EV.evolution, what="rewriting", exclude=("seed", "ignore_eos", "n", "json_schema"))
@sampling_options(_EV.response, prefix="response_", what="answering", exclude=("seed", "ignore_eos", "n", "json_schema"))
@llm_options
@user_errors
def evolve(input_path, output, fmt, input_format, id_field, resume, overwrite, strict, limit, operations,
           backend, model, allow_unverified, **flags):
    """Rewrite INPUT's instructions into harder (in-depth) or rarer (in-breadth) ones and answer them,
    with the paper's elimination rules (Evol-Instruct, Xu et al. 2023).

    Each input record X gives --rounds records X:evol1, X:evol2, ...

    \b
    Examples:
      instructmill evolve seed_tasks.jsonl -o out/evol.jsonl --rounds 2
      instructmill evolve data.jsonl -o out/evol.jsonl --operation breadth --equality-check rouge
    """
    from ..io.readers import read_records
    from ..io.run import open_run
    from ..methods.evol import Evolver

    evolution = build_sampling(flags, _EV.evolution)
    response = build_sampling(flags, _EV.response, prefix="response_")
    options = _method_options(EvolOptions, flags, evolution=evolution, response=response,
                              operations=tuple(operations) or None)
    llm = make_llm(backend, model, flags, options.seed, allow_unverified)
    method = Evolver(llm, options)
    started = time.perf_counter()
    from tqdm import tqdm

    with open_run(output, input_path=input_path, settings={**method.settings(), "limit": limit, "id_field": id_field},
                  resume=resume, overwrite=overwrite, fmt=fmt) as run:
        records = read_records(input_path, format=input_format, id_field=id_field, strict=strict,
                               on_error=run.error)
        if limit is not None:
            records = itertools.islice(records, limit)
        bar = tqdm(total=None if limit is not None else count_lines(input_path), unit="rec", desc="records",
                   disable=None, file=sys.stderr, dynamic_ncols=True)
        skipped = 0

        def pending():
            nonlocal skipped
            for record in records:
                bar.update(1)
                if all(rid in run.done_ids for rid in method.output_ids(record.id)):
                    skipped += 1
                    continue
                yield record

        with Heartbeat(bar, lambda: heartbeat_text(run)):
            for out in method.process(pending()):
                if out.id not in run.done_ids:  # a record half-written before a crash: write the rest
                    run.write([out])
        bar.close()
        summary = run.summary()
    summary.update(seconds=round(time.perf_counter() - started, 2), output=output,
                   read=method.summary["records"] + skipped, skipped_done=skipped)
    ops = ", ".join(f"{k}: {v}" for k, v in sorted(method.summary["operations"].items()))
    print_summary(summary, [f"evolutions tried: {method.summary['attempts']} ({ops or '-'})",
                            _echo_engine(llm, llm.stats.get("seconds", 0.0), method.summary["output_tokens"])])
    llm.close()
