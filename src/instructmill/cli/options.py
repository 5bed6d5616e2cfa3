"""Click options generated from the options dataclasses, so CLI and Python API cannot drift.

``--inter-threads`` is ``CTranslate2Options.inter_threads``, ``--max-batch-tokens`` is
``BatchingOptions.max_batch_tokens``, and so on: one field, one flag, same name.
"""
from __future__ import annotations

import dataclasses
import re
import sys
import typing
from typing import Any, Callable

import click

from ..errors import InstructmillError


def _field_help(cls: type, name: str) -> str:
    """The help of field ``name``: its entry in ``cls``'s docstring, as plain text (:func:`plain_text`)."""
    lines = (cls.__doc__ or "").splitlines()
    key = re.compile(rf"^(?P<indent>\s+)[\w /,]*\b{name}\b[\w /,]*:\s*(?P<text>.*)$")
    for i, line in enumerate(lines):
        m = key.match(line)
        if m is None:
            continue
        parts, indent = [m.group("text")], len(m.group("indent"))
        for more in lines[i + 1:]:  # continuation lines are indented deeper than the entry
            if not more.strip() or len(more) - len(more.lstrip()) <= indent:
                break
            parts.append(more.strip())
        return plain_text(" ".join(" ".join(parts).split()), sys.modules.get(cls.__module__))
    return ""


_ROLE = re.compile(r"(?P<one_of>one of )?:(?P<role>data|class|func|meth|mod|attr|obj|exc):`~?(?P<target>[^`]+)`")
_LITERAL = re.compile(r"``(?P<text>.+?)``")


def plain_text(text: str, module: Any = None) -> str:
    """Docstring text without reStructuredText / Sphinx markup, for ``--help``.

    ````"cpu"```` and ````x```` become ``cpu`` and ``x``; ``:class:`~a.b.C``` becomes ``C``,
    ``:func:`f``` / ``:meth:`...m``` become ``f()`` / ``m()``; ``:data:`NAME``` becomes the allowed
    values when ``NAME`` is a tuple / list / set of strings in ``module`` (``one of: int8,
    int8_float32, ...``), else ``NAME``.
    """

    def role(m: re.Match[str]) -> str:
        target = m.group("target").split(".")[-1]
        if m.group("role") == "data" and module is not None:
            values = getattr(module, target, None)
            if isinstance(values, (tuple, list, set, frozenset)) and values and all(isinstance(v, str) for v in values):
                return "one of: " + ", ".join(values)
        prefix = m.group("one_of") or ""
        return prefix + (target + "()" if m.group("role") in ("func", "meth") else target)

    def literal(m: re.Match[str]) -> str:
        inner = m.group("text")
        return inner[1:-1] if len(inner) >= 2 and inner[0] == inner[-1] and inner[0] in "\"'" else inner

    return _LITERAL.sub(literal, _ROLE.sub(role, text))


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
