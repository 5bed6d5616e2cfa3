"""Time and size limits for rendering user templates.

jinja2's sandbox stops templates from reaching Python internals and caps one ``range()`` at
100,000 items, but not what a template costs: three nested ``{% for %}`` loops run for hours,
``{{ 'x' * 2000000000 }}`` builds a 2 GB string (jinja2 even folds it at compile time), and
the sandbox cannot interrupt a running template. :class:`LimitedSandbox` adds checks at the
places where a template spends time or grows a value:

* every ``{% for %}`` iterable is wrapped so each iteration checks the render's deadline (this
  stops loops that print nothing, which a check on the output alone would miss);
* ``*``, ``**``, ``+``, ``~`` (concat) and the filters and string methods that grow a text by
  a width or a replacement (``center``, ``indent``, ``replace``, ``ljust``...) are checked
  before they compute (``'x' * n``, ``10 ** n``, ``'x'|center(n)``); ``%``, every other filter
  and every call (macros, methods) after, against the size limit; intercepting the operators
  also stops jinja2 from folding them at compile time;
* the renderer (:func:`render_limited`) counts the output as it streams and checks the deadline
  between pieces.

Limits hold for one render, set with :func:`render_limits` (thread-local, so pipeline stages on
several threads each keep their own); outside it only the size limit applies (at its default).
Passing one raises :class:`RenderLimitError`.
"""
from __future__ import annotations

import contextlib
import functools
import math
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from jinja2 import nodes, pass_context
from jinja2.sandbox import SandboxedEnvironment
from jinja2.visitor import NodeTransformer

__all__ = ["MAX_RENDER_CHARS", "MAX_RENDER_SECONDS", "LimitedSandbox", "RenderLimitError",
           "render_limited", "render_limits", "render_pieces"]

#: Longest render of one record (all sections), in seconds. Real templates render in
#: microseconds to milliseconds; 5 s is over 1,000 times that, even on a loaded machine.
MAX_RENDER_SECONDS = 5.0
#: Most characters one render may output, and the longest value (string, list) it may build
#: on the way: 100 million, five times the largest single line the readers are measured on.
MAX_RENDER_CHARS = 100_000_000

_LOOP_FILTER = "instructmill_loop_guard"
_CONCAT_FILTER = "instructmill_concat_guard"
_SIZED = (str, bytes, list, tuple, dict)


class RenderLimitError(Exception):
    """A render passed its time or size limit; the message says which and by how much.

    Deliberately not an :class:`~instructmill.errors.InstructmillError`: the renderer turns it
    into a :class:`~instructmill.errors.TemplateError` that names the record.
    """


class _Limits(threading.local):
    deadline: float | None = None
    seconds: float = MAX_RENDER_SECONDS
    max_chars: int = MAX_RENDER_CHARS


_LIMITS = _Limits()


@contextlib.contextmanager
def render_limits(seconds: float = MAX_RENDER_SECONDS,
                  max_chars: int = MAX_RENDER_CHARS) -> Iterator[None]:
    """Apply a deadline ``seconds`` from now and a size limit of ``max_chars`` to renders in
    this thread until the block ends (nested blocks restore the outer limits)."""
    saved = (_LIMITS.deadline, _LIMITS.seconds, _LIMITS.max_chars)
    _LIMITS.deadline, _LIMITS.seconds = time.monotonic() + seconds, seconds
    _LIMITS.max_chars = max_chars
    try:
        yield
    finally:
        _LIMITS.deadline, _LIMITS.seconds, _LIMITS.max_chars = saved


def _check_time() -> None:
    deadline = _LIMITS.deadline
    if deadline is not None and time.monotonic() > deadline:
        raise RenderLimitError(f"rendering took longer than {_LIMITS.seconds:g} s (the limit)")


def _too_big(size: int, what: str, unit: str = "characters (or items)") -> RenderLimitError:
    return RenderLimitError(f"{what} of {size} {unit}, over the limit of {_LIMITS.max_chars}")


def _check_size(value: Any, what: str) -> Any:
    if isinstance(value, _SIZED) and len(value) > _LIMITS.max_chars:
        raise _too_big(len(value), what)
    return value


@pass_context  # pass_context: never called at compile time (jinja2 does not fold such filters)
def _loop_guard(context: Any, iterable: Iterable[Any]) -> Iterator[Any]:
    """Yield ``iterable``'s items, checking the deadline before each."""
    for item in iterable:
        _check_time()
        yield item


@pass_context
def _concat_guard(context: Any, values: list[Any]) -> str:
    """``a ~ b ~ ...``: the joined text, refused before joining when it would be too long."""
    parts = [str(v) for v in values]
    size = sum(map(len, parts))
    if size > _LIMITS.max_chars:
        raise _too_big(size, "'~' would build a text", "characters")
    return "".join(parts)


class _Guards(NodeTransformer):
    """Wrap every for-loop iterable in the loop guard and every ``~`` in the concat guard."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, _LOOP_FILTER, [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return nodes.Filter(nodes.List(node.nodes, lineno=node.lineno), _CONCAT_FILTER, [], [],
                            None, None, lineno=node.lineno)


def _grown_size(name: str, text: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """Size ``text.name(*args)`` (string method or filter of the same meaning) would have, for
    the operations that can grow a text far beyond their inputs; 0 for any other."""
    if not isinstance(text, str):
        return 0
    if name in ("center", "ljust", "rjust", "zfill"):
        width = args[0] if args else kwargs.get("width", 80 if name == "center" else 0)
        return width if isinstance(width, int) else 0
    if name == "indent":
        width = args[0] if args else kwargs.get("width", 4)
        width = len(width) if isinstance(width, str) else width
        return len(text) + width * (text.count("\n") + 1) if isinstance(width, int) else 0
    if name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        count = text.count(args[0]) if args[0] else len(text) + 1
        return len(text) + (len(args[1]) - len(args[0])) * count
    return 0


def _guard_filter(name: str, func: Any) -> Any:
    """``func`` with its result checked against the size limit (pass_* markers kept); for the
    filters that grow a text by a width or a replacement, checked before it runs."""
    skip = {"context": 1, "eval_context": 1, "environment": 1}.get(
        getattr(getattr(func, "jinja_pass_arg", None), "name", ""), 0)

    @functools.wraps(func)  # copies __dict__, so jinja2's pass_context/eval_context marker too
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if len(args) > skip:
            size = _grown_size(name, args[skip], args[skip + 1:], kwargs)
            if size > _LIMITS.max_chars:
                raise _too_big(size, f"filter {name!r} would build a text", "characters")
        return _check_size(func(*args, **kwargs), f"filter {name!r} built a value")

    return guarded


class LimitedSandbox(SandboxedEnvironment):
    """jinja2's :class:`~jinja2.sandbox.SandboxedEnvironment` plus per-render time and size
    limits (see the module docstring). Takes the same arguments.

    Raises (while rendering):
        RenderLimitError: the deadline of :func:`render_limits` passed, or a value would grow
            past its size limit.
    """

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.filters = {name: _guard_filter(name, func) for name, func in self.filters.items()}
        self.filters[_LOOP_FILTER] = _loop_guard
        self.filters[_CONCAT_FILTER] = _concat_guard

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        # jinja2 has no public hook between parsing and code generation; _parse is what both
        # Environment.parse and Environment.compile call (jinja2 2.x and 3.x).
        return _Guards().visit(super()._parse(source, name, filename))

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, _SIZED) and isinstance(times, int) and times > 0 \
                        and len(seq) * times > _LIMITS.max_chars:
                    raise _too_big(len(seq) * times, "'*' would build a value")
        elif operator_ == "**":
            if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
                digits = right * math.log10(abs(left))
                if digits > _LIMITS.max_chars:
                    raise _too_big(int(digits), "'**' would build a number", "digits")
        elif operator_ == "+" and isinstance(left, _SIZED) and isinstance(right, _SIZED):
            if len(left) + len(right) > _LIMITS.max_chars:
                raise _too_big(len(left) + len(right), "'+' would build a value")
        result = self.binop_table[operator_](left, right)
        return _check_size(result, f"{operator_!r} built a value")

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _check_time()
        size = _grown_size(getattr(__obj, "__name__", ""), getattr(__obj, "__self__", None), args, kwargs)
        if size > _LIMITS.max_chars:
            raise _too_big(size, f"'.{__obj.__name__}()' would build a text", "characters")
        result = SandboxedEnvironment.call(__self, __context, __obj, *args, **kwargs)
        return _check_size(result, "a call returned a value")


def render_pieces(template: Any, context: dict[str, Any]) -> list[str]:
    """Render a template of a :class:`LimitedSandbox`, streaming, within the current limits,
    and return the output pieces unjoined (a value printed by ``{{ x }}`` is its own piece,
    often the very string object of the row, so a caller can split or join without copies).

    The size limit applies to this render's output; the deadline is shared by every render in
    the same :func:`render_limits` block (the sections of one record).

    Raises:
        RenderLimitError: the output passed the size limit or the deadline passed.
        Exception: whatever the template raises.
    """
    # What Template.generate() does, minus one generator layer per piece (a tenth of a small
    # template's render time): root_render_func yields the pieces, handle_exception re-raises
    # with the template's lines in the traceback.
    pieces: list[str] = []
    total = 0
    limit, deadline, clock = _LIMITS.max_chars, _LIMITS.deadline, time.monotonic
    try:
        for piece in template.root_render_func(template.new_context(context)):
            total += len(piece)
            if total > limit:
                raise _too_big(total, "the output has grown to a text", "characters")
            if deadline is not None and clock() > deadline:
                _check_time()
            pieces.append(piece)
    except Exception:  # noqa: BLE001 - re-raised by handle_exception
        template.environment.handle_exception()
    return pieces


def render_limited(template: Any, context: dict[str, Any]) -> str:
    """:func:`render_pieces` joined into one text."""
    return "".join(render_pieces(template, context))
