"""Record types shared by io, methods and cli.

An :class:`InputRecord` is one row as read from a file (raw fields, location and a
stable id). An :class:`Example` is the canonical instruction example that methods
work on, in the Alpaca shape (``instruction``, ``input``, ``output``) extended the
way LLaMA-Factory's Alpaca format is (``system``, ``history`` of earlier turns) so
multi-turn ShareGPT / OpenAI ``messages`` conversations round-trip.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Fields of an :class:`Example` that methods may read or rewrite.
EXAMPLE_FIELDS = ("instruction", "input", "output")

#: Status of a record that went through a method without problems.
from .status import STATUS_OK  # noqa: E402,F401 - one vocabulary: instructmill.status


@dataclass
class InputRecord:
    """One input row.

    Attributes:
        id: stable id: the input's own id field when present, else ``"L{line}-{hash8}"``
            built from the line number and a hash of the content (see ``io.readers``).
        line: 1-based line number (JSONL, CSV data rows count from the header's next line)
            or 1-based element index (JSON array).
        fields: the raw object as read (keys with a UTF-8 BOM stripped).
        shape: detected shape: ``"alpaca"``, ``"seed"`` (Self-Instruct seed task),
            ``"sharegpt"``, ``"openai"`` or ``"table"`` (any other flat row, e.g. CSV).
        source: the path it came from (for messages).
        duplicate_of: set when the input's own id was already taken by an earlier record: ``id``
            is then derived (:func:`derived_id`) and this holds the id as written in the input.
    """

    id: str
    line: int
    fields: dict[str, Any]
    shape: str = "table"
    source: str | None = None
    duplicate_of: str | None = None


def derived_id(rid: str, line: int, taken) -> str:
    """The id a record gets when its own id ``rid`` was used by an earlier record of the input.

    ``"<rid>#L<line>"`` (stable across runs, so ``--resume`` finds it again); ``"#2"``, ``"#3"``...
    is appended in the unlikely case that id is taken too. ``taken(candidate) -> bool`` says
    whether an id is already used.
    """
    candidate = f"{rid}#L{line}"
    n = 1
    while taken(candidate):
        n += 1
        candidate = f"{rid}#L{line}#{n}"
    return candidate


@dataclass
class Example:
    """Canonical single-turn instruction example (plus optional earlier turns).

    ``history`` holds earlier ``(user, assistant)`` turns of a conversation, oldest first;
    the last user turn is ``instruction`` (``input`` is ``""`` for conversations) and
    the last assistant turn is ``output``. ``leading_assistant`` holds assistant turns that come
    before the first user turn: real chat dumps (ShareGPT) split long chats, so a piece often
    starts with the assistant (748 of the 2,000 conversations in ``shared/data/sharegpt_sample``).
    A conversation with only assistant turns has them all there, and ``instruction == ""``.
    """

    instruction: str
    input: str = ""
    output: str = ""
    system: str = ""
    history: list[tuple[str, str]] = field(default_factory=list)
    leading_assistant: list[str] = field(default_factory=list)

    @property
    def is_conversation(self) -> bool:
        """Whether the example has turns before its last user/assistant pair."""
        return bool(self.history or self.leading_assistant)

    def get(self, name: str) -> str:
        if name not in EXAMPLE_FIELDS:
            raise KeyError(name)
        return getattr(self, name)


@dataclass
class OutputRecord:
    """One result record, ready for a writer.

    Attributes:
        id: the input record's id (never changed, so outputs join back to inputs).
        example: the produced example.
        status: ``"ok"`` or the reason the record is kept out of the main output
            (e.g. ``"placeholder_lost"``, ``"input_too_long"``, ``"unchanged"``).
        method: the method that produced it (``"template"``, ``"backtranslation"``...).
        settings: provenance: model, ``compute_type``, pivot language(s), template name...
        extra: more per-record information (original text, token counts, status detail).
    """

    id: str
    example: Example
    status: str = STATUS_OK
    method: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
