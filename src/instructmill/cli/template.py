"""``instructmill template``: fill instruction templates from data rows."""
from __future__ import annotations

import hashlib

import click

from .common import io_options, print_summary, run_records, user_errors


def _parse_vars(values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        if "=" not in item:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--var")
        name, value = item.split("=", 1)
        out[name.strip()] = value
    return out


@click.command()
@io_options
@click.option("-t", "--template", "template_name", required=True,
              help="Built-in template name (translate, summarize, classify, rewrite, ...) or a file "
                   "(.yaml/.json with instruction/input/output, or a .j2/.txt instruction template).")
@click.option("--var", "variables", multiple=True, metavar="NAME=VALUE",
              help="Template variable (repeat), e.g. --var src=English --var tgt=German.")
@click.option("--list", "list_templates", is_flag=True, is_eager=True, expose_value=False,
              callback=lambda ctx, _p, v: _list(ctx) if v else None, help="List the built-in templates and exit.")
@user_errors
def template(input_path, output, fmt, input_format, id_field, resume, overwrite, strict, limit,
             template_name, variables):
    """Fill a jinja2 template from every row of INPUT.

    A row missing a field the template needs becomes a 'template_error' record in the discards
    file (with --strict the run stops there). Values are never re-read as template text.
    """
    from ..methods.template import TemplateFiller, load_template

    tpl = load_template(template_name)
    filler = TemplateFiller(tpl, variables=_parse_vars(variables))
    sources = "\0".join(tpl.sources().values())
    settings = {**filler.settings, "method": "template",
                "template_sha256": hashlib.sha256(sources.encode()).hexdigest()}
    summary = run_records(input_path=input_path, output=output, fmt=fmt, input_format=input_format,
                          id_field=id_field, resume=resume, overwrite=overwrite, strict=strict, limit=limit,
                          settings=settings, process=lambda records: filler.fill(records, strict=strict))
    print_summary(summary)


def _list(ctx: click.Context) -> None:
    from ..methods.template import builtin_templates, load_template

    for name in builtin_templates():
        click.echo(f"{name:12s} {load_template(name).description}")
    ctx.exit(0)
