"""Every ``--help`` reads as plain text: no Sphinx markup, one help per flag, every job named."""
from __future__ import annotations

import re

import click
import pytest
from click.testing import CliRunner

from instructmill.cli import COMMANDS, cli

MARKUP = ("``", ":data:", ":class:", ":func:", ":meth:", ":mod:", ":attr:")


def walk(command: click.Command, path: tuple[str, ...] = ()):
    yield path, command
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            yield from walk(command.get_command(ctx, name), (*path, name))


ALL = list(walk(cli))


@pytest.mark.parametrize("path,command", ALL, ids=[" ".join(p) or "instructmill" for p, _ in ALL])
def test_help_is_plain_text(path, command):
    result = CliRunner().invoke(cli, [*path, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    found = [m for m in MARKUP if m in result.output]
    assert not found, f"instructmill {' '.join(path)} --help shows {found}:\n{result.output}"


def _own_text(help_text: str | None) -> str:
    """The help without its ``[default: ...]`` / ``(repeatable)`` tail: what says what the flag does."""
    text = re.sub(r"\[default: [^\]]*\]|\(repeatable\)", "", help_text or "")
    return " ".join(text.split())


@pytest.mark.parametrize("path,command", ALL, ids=[" ".join(p) or "instructmill" for p, _ in ALL])
def test_no_two_flags_share_a_help(path, command):
    seen: dict[str, str] = {}
    clashes = []
    for param in command.params:
        if not isinstance(param, click.Option) or not param.help:
            continue
        text = _own_text(param.help)
        if text in seen:
            clashes.append((seen[text], param.opts[0], text))
        seen.setdefault(text, param.opts[0])
    assert not clashes, clashes


def test_every_option_has_a_help():
    missing = [(" ".join(p), param.opts[0]) for p, command in ALL for param in command.params
               if isinstance(param, click.Option) and not param.hidden and not param.help]
    assert not missing, missing


def test_top_level_help_names_every_job():
    text = CliRunner().invoke(cli, ["--help"], terminal_width=200).output
    intro = text.split("Options:")[0]
    for job in ("template", "back-translation", "LLM", "self-instruct", "humpback", "evolve", "respond",
                "generate", "models", "convert", "bench", "telemetry"):
        assert job in intro, job
    assert set(COMMANDS) <= set(re.findall(r"^  (\S+)\s", text.split("Commands:")[1], re.M))


def test_compute_type_lists_its_values():
    from instructmill.engine.ctranslate2_backend import COMPUTE_TYPES

    text = " ".join(CliRunner().invoke(cli, ["backtranslate", "--help"], terminal_width=200).output.split())
    assert re.search(r"--compute-type \w+ one of: " + re.escape(", ".join(COMPUTE_TYPES)), text), text


def test_thread_flags_explain_each_other():
    bt = " ".join(CliRunner().invoke(cli, ["backtranslate", "--help"], terminal_width=200).output.split())
    llm = " ".join(CliRunner().invoke(cli, ["humpback", "--help"], terminal_width=200).output.split())
    assert "inter_threads x intra_threads" in bt and "single threads count" in bt
    assert "inter_threads replicas x intra_threads" in llm


def test_plain_text_conversions():
    import types

    from instructmill.cli.options import plain_text

    module = types.SimpleNamespace(KINDS=("a", "b"))
    assert plain_text('``"cpu"`` or ``x + 1``') == "cpu or x + 1"
    assert plain_text("one of :data:`KINDS`; see :class:`~pkg.mod.Thing`", module) == "one of: a, b; see Thing"
    assert plain_text(":func:`~pkg.load` and :data:`MISSING`", module) == "load() and MISSING"
