"""The ``filter`` stage: rule-based checks that move records out of the main output.

Rules, checked in this order (the first that fails names the record's new status):

* ``min_words`` / ``max_words``: per field, whitespace-separated words (``too_short`` /
  ``too_long``), as Self-Instruct's length filter (Wang et al., 2022);
* ``blacklist``: keywords or phrases, whole words, case-insensitive, in ``blacklist_fields``
  (``blacklisted``);
* ``require``: per field, a regular expression that must match somewhere (``regex_required``);
* ``reject``: per field, a regular expression that must not match (``regex_rejected``).

Only records whose status is in ``accept_statuses`` are checked (default: ``ok``); a record
that passes gets status ``ok`` (so ``accept_statuses: [ok, unchanged]`` takes back-translations
that came back unchanged into the output), every other record passes through unchanged. A
failing record keeps its example and gets ``extra["filter"] = {"rule", "field", "detail"}``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import OptionError
from ..records import EXAMPLE_FIELDS, OutputRecord
from ..status import (STATUS_BLACKLISTED, STATUS_OK, STATUS_REGEX_REJECTED, STATUS_REGEX_REQUIRED, STATUS_TOO_LONG,
                      STATUS_TOO_SHORT)

__all__ = ["FilterOptions", "RecordFilter"]


@dataclass(frozen=True)
class FilterOptions:
    """Rules of the ``filter`` stage (see the module docstring).

    Attributes:
        min_words: ``{field: fewest words}`` (fields: instruction, input, output).
        max_words: ``{field: most words}``.
        blacklist: keywords / phrases that discard a record.
        blacklist_fields: fields searched for blacklisted words.
        require: ``{field: regex}`` that must match (``re.search``).
        reject: ``{field: regex}`` that must not match.
        accept_statuses: statuses that are checked (and become ``ok`` when they pass).

    Raises:
        OptionError: an unknown field, a negative bound, an invalid regular expression.
    """

    min_words: dict[str, int] = field(default_factory=dict)
    max_words: dict[str, int] = field(default_factory=dict)
    blacklist: tuple[str, ...] = ()
    blacklist_fields: tuple[str, ...] = ("instruction",)
    require: dict[str, str] = field(default_factory=dict)
    reject: dict[str, str] = field(default_factory=dict)
    accept_statuses: tuple[str, ...] = (STATUS_OK,)

    def __post_init__(self) -> None:
        for name in ("blacklist", "blacklist_fields", "accept_statuses"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, (value,))
            elif not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        for name in ("min_words", "max_words", "require", "reject"):
            for key in getattr(self, name):
                if key not in EXAMPLE_FIELDS:
                    raise OptionError(f"{name}.{key}", key, f"choose fields from {', '.join(EXAMPLE_FIELDS)}")
        for name in ("min_words", "max_words"):
            for key, value in getattr(self, name).items():
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise OptionError(f"{name}.{key}", value, "must be an integer >= 0")
        for key, low in self.min_words.items():
            high = self.max_words.get(key)
            if high is not None and high < low:
                raise OptionError(f"max_words.{key}", high, f"must be >= min_words.{key} ({low})")
        bad = [f for f in self.blacklist_fields if f not in EXAMPLE_FIELDS]
        if bad:
            raise OptionError("blacklist_fields", bad, f"choose from {', '.join(EXAMPLE_FIELDS)}")
        if any(not w.strip() for w in self.blacklist):
            raise OptionError("blacklist", self.blacklist, "keywords must be non-empty")
        if not self.accept_statuses:
            raise OptionError("accept_statuses", self.accept_statuses, "name at least one status")
        for name in ("require", "reject"):
            for key, pattern in getattr(self, name).items():
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise OptionError(f"{name}.{key}", pattern, f"invalid regular expression: {exc}") from None


class RecordFilter:
    """Applies :class:`FilterOptions` to output records (stateless, thread-safe)."""

    method = "filter"

    def __init__(self, options: FilterOptions | None = None):
        self.options = options or FilterOptions()
        words = self.options.blacklist
        self._blacklist = None
        if words:
            alternatives = "|".join(r"\s+".join(map(re.escape, w.split()))
                                    for w in sorted(words, key=len, reverse=True))
            self._blacklist = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.I)
        self._require = {k: re.compile(v) for k, v in self.options.require.items()}
        self._reject = {k: re.compile(v) for k, v in self.options.reject.items()}

    def wants(self, record: OutputRecord) -> bool:
        """Whether ``record`` is checked (its status is one of ``accept_statuses``)."""
        return record.status in self.options.accept_statuses

    def check(self, record: OutputRecord) -> tuple[str, str, str] | None:
        """``None`` when ``record`` passes, else ``(status, field, detail)``."""
        ex = record.example
        for name, low in self.options.min_words.items():
            n = len(ex.get(name).split())
            if n < low:
                return STATUS_TOO_SHORT, name, f"{n} words < min_words.{name} {low}"
        for name, high in self.options.max_words.items():
            n = len(ex.get(name).split())
            if n > high:
                return STATUS_TOO_LONG, name, f"{n} words > max_words.{name} {high}"
        if self._blacklist is not None:
            for name in self.options.blacklist_fields:
                m = self._blacklist.search(ex.get(name))
                if m:
                    return STATUS_BLACKLISTED, name, f"keyword {m.group(0).lower()!r}"
        for name, pattern in self._require.items():
            if not pattern.search(ex.get(name)):
                return STATUS_REGEX_REQUIRED, name, f"no match for {pattern.pattern!r}"
        for name, pattern in self._reject.items():
            m = pattern.search(ex.get(name))
            if m:
                return STATUS_REGEX_REJECTED, name, f"matches {pattern.pattern!r} ({m.group(0)[:40]!r})"
        return None

    def apply(self, record: OutputRecord) -> OutputRecord:
        """The record with its new status (a new object; ``record`` is not changed)."""
        failed = self.check(record)
        extra: dict[str, Any] = dict(record.extra)
        if failed is None:
            if record.status == STATUS_OK:
                return record
            extra["previous_status"] = record.status
            return replace(record, status=STATUS_OK, extra=extra)
        status, name, detail = failed
        extra["filter"] = {"rule": status, "field": name, "detail": detail}
        if record.status != STATUS_OK:
            extra["previous_status"] = record.status
        return replace(record, status=status, extra=extra)
