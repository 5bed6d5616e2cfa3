"""The ``instructmill`` command line (click). Thin: parse flags, call the Python API, print a summary."""
from __future__ import annotations

import logging

import click

from .. import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="instructmill")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
def cli(verbose: int) -> None:
    """Build instruction-tuning data in bulk: templates, back-translation, conversion."""
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")


def _register() -> None:
    from ..converters.cli import convert
    from .backtranslate import backtranslate
    from .template import template

    cli.add_command(template)
    cli.add_command(backtranslate)
    cli.add_command(convert)


_register()


def main() -> None:
    cli(prog_name="instructmill")
