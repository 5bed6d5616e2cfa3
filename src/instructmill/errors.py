"""Exceptions raised by instructmill.

Every user-facing error derives from :class:`InstructmillError`; the CLI turns
those into one clear message (no traceback). Errors about a single input record
carry the record's location so the user can find it.
"""
from __future__ import annotations

from .status import STATUS_EMPTY_RECORD, STATUS_INVALID_RECORD


class InstructmillError(Exception):
    """Base class for errors that a user can act on (bad input, bad options)."""


class OptionError(InstructmillError, ValueError):
    """An option has an invalid value. The message names the option and the value."""

    def __init__(self, name: str, value: object, reason: str):
        self.name = name
        self.value = value
        self.reason = reason
        super().__init__(f"invalid {name}={value!r}: {reason}")


class RecordError(InstructmillError):
    """A single input record is unusable.

    Attributes:
        record: the record's id, or ``None`` when the line could not be parsed.
        line: 1-based line (JSONL/CSV) or element index + 1 (JSON array); ``None`` if unknown.
        field: the field at fault, or ``None`` when the whole record is at fault.
        status: the per-record status a method writes for it (``"invalid_record"``; subclasses
            name their own, e.g. ``"empty_record"``).
    """

    status = STATUS_INVALID_RECORD

    def __init__(self, message: str, *, record: str | None = None, line: int | None = None,
                 field: str | None = None, source: str | None = None):
        self.record = record
        self.line = line
        self.field = field
        self.source = source
        where = []
        if source:
            where.append(str(source))
        if line is not None:
            where.append(f"line {line}")
        if record is not None:
            where.append(f"record {record!r}")
        if field is not None:
            where.append(f"field {field!r}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.message = message


class EmptyRecordError(RecordError):
    """A record holds no text at all (e.g. a conversation with no turns, or only blank ones):
    nothing is wrong with its shape, there is just nothing to work on."""

    status = STATUS_EMPTY_RECORD


class TemplateError(RecordError):
    """A template could not be rendered for a record (e.g. a missing field)."""


class ResumeError(InstructmillError):
    """``--resume`` cannot continue safely (input or settings changed since the first run)."""


class ConversionError(InstructmillError):
    """A model could not be converted, or the converted model failed verification."""


class ModelNotFoundError(InstructmillError):
    """A model id or folder could not be found or downloaded."""


class VerificationError(ConversionError):
    """A converted model's output differs from the reference (HF) output; the model is refused."""
