"""``instructmill convert MODEL OUTPUT_DIR``: the click command around :func:`convert_model`.

Register it in the CLI group with ``group.add_command(convert)``. User errors (bad options,
missing model, unsupported architecture, failed verification) become ``click.ClickException``
(exit status 1, one message, no traceback).
"""
from __future__ import annotations

import click

from ..errors import InstructmillError
from .base import QUANTIZATIONS, convert_model

__all__ = ["convert"]


@click.command("convert")
@click.argument("model")
@click.argument("output_dir", type=click.Path(file_okay=False))
@click.option("--quantization", "-q", type=click.Choice(QUANTIZATIONS), default="int8",
              show_default=True, help="Weight type of the converted model.")
@click.option("--revision", default=None, help="Hub branch, tag or commit (hub ids only).")
@click.option("--force", is_flag=True, help="Replace OUTPUT_DIR if it holds a converted model.")
@click.option("--no-verify", "no_verify", is_flag=True,
              help="Skip the comparison with transformers (the model is then marked unverified).")
@click.option("--trust-remote-code", is_flag=True,
              help="Allow models that need custom code from their repository (it runs here).")
@click.option("--source-lang", default=None, help="Source language code (e.g. en, eng_Latn).")
@click.option("--target-lang", default=None, help="Target language code (e.g. de, deu_Latn).")
def convert(model: str, output_dir: str, quantization: str, revision: str | None, force: bool,
            no_verify: bool, trust_remote_code: bool, source_lang: str | None,
            target_lang: str | None) -> None:
    """Convert MODEL (a local HF folder or a hub id) to a verified CTranslate2 folder OUTPUT_DIR."""
    try:
        result = convert_model(model, output_dir, quantization=quantization, revision=revision,
                               force=force, verify=not no_verify,
                               trust_remote_code=trust_remote_code, source_lang=source_lang,
                               target_lang=target_lang)
    except InstructmillError as exc:
        raise click.ClickException(str(exc)) from exc
    m = result.manifest
    langs = m.get("languages") or {}
    pair = f"{langs.get('source') or '?'} -> {langs.get('target') or '?'}" if langs else "unknown"
    click.echo(f"converted {m['source']} ({m['architecture']}) -> {result.output_dir}")
    click.echo(f"  quantization: {m['quantization']}   languages: {pair}   "
               f"revision: {m.get('revision') or '-'}")
    ver = m["verification"]
    if ver.get("passed") is None:
        click.echo("  verification: skipped (--no-verify); loaders refuse this model unless "
                   "unverified models are allowed")
    else:
        click.echo(f"  verification: passed - {ver.get('detail')}")
    click.echo(f"  took {result.seconds:.1f} s")
