"""Click options generated from the options dataclasses, so CLI and Python API cannot drift.

``--inter-threads`` is ``CTranslate2Options.inter_threads``, ``--max-batch-tokens`` is
``BatchingOptions.max_batch_tokens``, and so on: one field, one flag, same name.
"""
from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any, Callable

import click

from ..errors import InstructmillError


def _field_help(cls: type, name: str) -> str:
    doc = cls.__doc__ or ""
    m = re.search(rf"^\s+(?:[\w\s/,]*\b{name}\b[\w\s/,]*):\s*(.+?)(?=^\s+\w[\w\s/,]*:|\Z)", doc, re.M | re.S)
    return " ".join(m.group(1).split()) if m else ""


def _click_type(annotation: Any, default: Any):
    text = str(annotation)
    if "bool" in text:
        return bool
    if "int" in text and "float" not in text:
        return int
    if "float" in text:
        return float
    return str


def dataclass_options(cls: type, *, prefix: str = "", exclude: tuple[str, ...] = ()) -> Callable:
    """Decorator adding one ``--flag`` per field of ``cls`` (default ``None`` = the dataclass default)."""
    hints = typing.get_type_hints(cls)

    def decorate(func: Callable) -> Callable:
        for f in reversed(dataclasses.fields(cls)):
            if f.name in exclude or f.name.startswith("_"):
                continue
            flag = "--" + (prefix + f.name).replace("_", "-")
            kind = _click_type(hints.get(f.name, str), f.default)
            default = f.default if f.default is not dataclasses.MISSING else None
            help_text = _field_help(cls, f.name)
            if default is not None:
                help_text += f" [default: {default}]"
            if kind is bool:
                func = click.option(flag + "/--no-" + (prefix + f.name).replace("_", "-"), prefix + f.name,
                                    default=None, help=help_text)(func)
            else:
                func = click.option(flag, prefix + f.name, type=kind, default=None, help=help_text)(func)
        return func

    return decorate


def build_options(cls: type, values: dict[str, Any], *, prefix: str = "", **overrides: Any):
    """Instantiate ``cls`` from the flags that were given (``None`` = keep the dataclass default).

    Removes the consumed keys from ``values``. Raises ``click.BadParameter``-style
    ``click.ClickException`` with the option's name on invalid values.
    """
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if key in values:
            value = values.pop(key)
            if value is not None:
                kwargs[f.name] = value
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return cls(**kwargs)
    except InstructmillError as exc:
        raise click.ClickException(str(exc)) from exc
