"""Checks of what Python API callers pass where several items are expected.

Public entry points (``BackTranslator.paraphrase`` / ``process``, ``TemplateFiller.fill``, the LLM
methods' ``process``, ``LLMBackend.generate``) take any iterable: a list, a tuple, a generator.
Two mistakes are common and would otherwise pass silently:

* a bare ``str`` (or ``bytes``) where a list of texts was meant -- iterating it yields its
  characters, so every character would become an item; a single ``dict`` where a list of records
  was meant -- iterating it yields its keys. Both are refused with :class:`ArgumentTypeError` (a
  ``TypeError``) at call time, before any work;
* rows as plain dicts instead of :class:`~instructmill.records.InputRecord`: they are converted
  the way :func:`~instructmill.io.readers.read_records` converts a file row (same id rule, same
  shape detection), with the 1-based position in the iterable as the line number.

Nothing here imports an engine.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from .errors import InstructmillError, RecordError
from .records import InputRecord

__all__ = ["ArgumentTypeError", "input_records", "items", "texts"]

_SINGLE = (str, bytes, bytearray)


class ArgumentTypeError(InstructmillError, TypeError):
    """An argument of the Python API has the wrong type (e.g. one string where a list was expected)."""


def items(value: Any, *, name: str, of: str) -> Iterator[Any]:
    """An iterator over ``value``, which must be an iterable of ``of`` (not one ``str`` / ``bytes`` / dict).

    Args:
        name: the parameter's name, for the message (``"texts"``).
        of: what each item should be, for the message (``"strings"``).

    Raises:
        ArgumentTypeError: ``value`` is a ``str``, ``bytes``, a mapping, or not iterable at all.
    """
    if isinstance(value, _SINGLE) or isinstance(value, Mapping):
        kind = type(value).__name__
        raise ArgumentTypeError(f"{name} must be an iterable of {of} (a list, a tuple, a generator), not a "
                                f"single {kind}: wrap one item in a list, e.g. {name}=[...]")
    try:
        return iter(value)
    except TypeError:
        raise ArgumentTypeError(f"{name} must be an iterable of {of}, got {type(value).__name__}") from None


def texts(value: Any, *, name: str = "texts") -> list[str]:
    """``value`` as a list of strings (it is read once, so a generator works).

    Raises:
        ArgumentTypeError: ``value`` is one string (or not an iterable of strings); an item is not a
            ``str`` (the message names its index and type).
    """
    out = list(items(value, name=name, of="strings"))
    for index, text in enumerate(out):
        if not isinstance(text, str):
            raise ArgumentTypeError(f"{name}[{index}] is {type(text).__name__}, not a str")
    return out


def input_records(value: Any, *, name: str = "records", id_field: str = "id") -> Iterator[InputRecord]:
    """Stream ``value``'s items as :class:`InputRecord`; dicts are converted like file rows.

    The container is checked now (:func:`items`); items are converted lazily, so a generator is
    consumed only as far as the caller reads. A dict becomes
    :func:`~instructmill.io.readers.record_from_dict` of it, its 1-based position being its line:
    its ``id_field`` value is the id, else ``"L{position}-{hash8}"`` of its content.

    Raises:
        ArgumentTypeError: now, for a ``str`` / ``bytes`` / single dict / non-iterable ``value``; while
            iterating, for an item that is neither an InputRecord nor a dict (index and type named).
        RecordError: while iterating, two dicts with the same id (an id names one record, as in
            :func:`~instructmill.io.readers.read_records`).
    """
    iterator = items(value, name=name, of="records (InputRecord or dict)")
    return _converted(iterator, name, id_field)


def _converted(iterator: Iterable[Any], name: str, id_field: str) -> Iterator[InputRecord]:
    from .io.readers import record_from_dict

    seen: dict[str, int] = {}
    for position, item in enumerate(iterator, start=1):
        if isinstance(item, InputRecord):
            yield item
            continue
        if not isinstance(item, Mapping):
            raise ArgumentTypeError(f"{name}[{position - 1}] is {type(item).__name__}; expected an InputRecord "
                                    "or a dict of fields (e.g. {'instruction': ...})")
        record = record_from_dict(dict(item), position, id_field=id_field)
        first = seen.get(record.id)
        if first is not None:
            raise RecordError(f"duplicate id {record.id!r} (first seen at {name}[{first - 1}])",
                              record=record.id, line=position)
        seen[record.id] = position
        yield record
