"""The ``instructmill`` command line (click). Thin: parse flags, call the Python API, print a summary.

Subcommands are imported only when used (click's lazy-group pattern), so ``instructmill --help``
and the io / template paths start fast and never import an engine. Every subcommand runs under
:func:`instructmill.cli.interrupts.command_guard` (Ctrl-C / kill / disk full -> one line).
"""
from __future__ import annotations

import importlib
import logging

import click

from .. import __version__

#: command name -> "module:attribute" of its click command
COMMANDS = {
    "template": "instructmill.cli.template:template",
    "backtranslate": "instructmill.cli.backtranslate:backtranslate",
    "convert": "instructmill.converters.cli:convert",
    "models": "instructmill.models.cli:models",
    "self-instruct": "instructmill.cli.generate_methods:self_instruct",
    "humpback": "instructmill.cli.generate_methods:humpback",
    "evolve": "instructmill.cli.generate_methods:evolve",
    "generate": "instructmill.cli.generate:generate",
    "bench": "instructmill.bench.cli:bench",
}


class LazyGroup(click.Group):
    """A click group whose subcommands live in modules imported on first use."""

    def __init__(self, *args, lazy_commands: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_commands = lazy_commands or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy_commands))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy_commands:
            module, attr = self.lazy_commands[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):
        """Run the subcommand under :func:`~instructmill.cli.interrupts.command_guard`: SIGINT /
        SIGTERM, a full disk and unexpected errors end it with one line (exit 130 / 143 / 1)."""
        from .interrupts import command_guard

        with command_guard(verbose=bool(ctx.params.get("verbose"))):
            return super().invoke(ctx)


@click.group(cls=LazyGroup, lazy_commands=COMMANDS,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="instructmill")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
def cli(verbose: int) -> None:
    """Build instruction-tuning data in bulk: fill templates (template), paraphrase by
    back-translation (backtranslate), generate with an LLM (self-instruct, humpback, evolve; respond
    in pipelines), chain these in pipeline files (generate, locally or on Ray), prepare models
    (convert, models) and measure speed against baselines (bench).

    LLM commands run vLLM when installed, else CTranslate2 (--backend). instructmill sends no
    telemetry: the network is used only to download a model you name by hub id, and to reach the
    Ray cluster you name.
    """
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")


def main() -> None:
    from . import interrupts

    interrupts.PROCESS_IS_COMMAND = True  # a signal ends this process: its handlers need no restoring
    cli(prog_name="instructmill")
