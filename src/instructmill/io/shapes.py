"""Record shapes: which layout a row has (Alpaca, Self-Instruct seed, ShareGPT, OpenAI ``messages``,
table) and its canonical :class:`~instructmill.records.Example` (:func:`to_example`).

Split from :mod:`instructmill.io.readers` (which re-exports both functions): reading bytes into
rows and turning a row into an example are separate jobs.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from instructmill.errors import EmptyRecordError, RecordError
from instructmill.records import Example, InputRecord


def _json_type(obj: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(obj), type(obj).__name__)


_USER_ROLES = {"human": "user", "user": "user"}
_ASSISTANT_ROLES = {"gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
                    "bard": "assistant", "model": "assistant"}


def detect_shape(fields: dict[str, Any]) -> str:
    """Name the layout of a record's fields.

    Returns:
        ``"seed"`` (``instruction`` + ``instances`` list), ``"alpaca"`` (``instruction`` and
        ``input`` or ``output``), ``"sharegpt"`` (``conversations`` list), ``"openai"``
        (``messages`` list) or ``"table"`` (anything else). Only keys and container types
        are looked at; :func:`to_example` checks the contents.
    """
    if "instruction" in fields and isinstance(fields.get("instances"), list):
        return "seed"
    if "instruction" in fields and ("input" in fields or "output" in fields):
        return "alpaca"
    if "conversations" in fields and "instruction" not in fields:
        return "sharegpt"  # a non-list value is reported by to_example, naming the field
    if "messages" in fields and "instruction" not in fields:
        return "openai"
    return "table"


def to_example(record: InputRecord) -> Example:
    """Convert a record into an :class:`Example` according to ``record.shape``.

    * seed: ``instruction`` plus the first instance's ``input`` / ``output``.
    * alpaca (and table rows that have an ``instruction``): ``instruction``, ``input``,
      ``output``, optional ``system`` and ``history`` (``[[user, assistant], ...]``, oldest
      first, as in LLaMA-Factory). ``null`` counts as an empty optional field.
    * sharegpt / openai: turns with roles human/user, gpt/assistant/chatgpt/bard/model and
      system (``from``/``value`` or ``role``/``content`` are accepted in either list). System
      turns are joined into ``system``; assistant turns before the first user turn go to
      ``leading_assistant`` (a chat dump split mid-conversation); the other turns must alternate
      user, assistant. The last user turn becomes ``instruction``, the assistant turn after
      it ``output`` (``""`` when the conversation ends with the user), earlier pairs ``history``.
      A conversation of assistant turns only has ``instruction == ""``.
      OpenAI ``content`` may be a list of ``{"type": "text", "text": ...}`` parts.

    Raises:
        RecordError: a required field is missing or has the wrong type, naming the record
            id, its line and the field (e.g. ``conversations[3].from``).
        EmptyRecordError: (a RecordError, status ``empty_record``) a conversation with no turns,
            or with only blank ones.
    """
    fields, shape = record.fields, record.shape

    def fail(field: str, message: str) -> RecordError:
        return RecordError(message, record=record.id, line=record.line, field=field,
                           source=record.source)

    def text(obj: dict[str, Any], key: str, field: str, required: bool = False) -> str:
        if key not in obj or obj[key] is None:
            if required:
                raise fail(field, f"missing {shape} field {field!r}")
            return ""
        value = obj[key]
        if not isinstance(value, str):
            raise fail(field, f"{field!r} is not a string (got {_json_type(value)})")
        return value

    if shape == "seed":
        instruction = text(fields, "instruction", "instruction", required=True)
        instances = fields["instances"]
        if not instances:
            raise fail("instances", "'instances' is empty")
        first = instances[0]
        if not isinstance(first, dict):
            raise fail("instances[0]", f"'instances[0]' is not an object (got {_json_type(first)})")
        return Example(instruction=instruction,
                       input=text(first, "input", "instances[0].input"),
                       output=text(first, "output", "instances[0].output"))
    if shape in ("sharegpt", "openai"):
        key = "conversations" if shape == "sharegpt" else "messages"
        if not isinstance(fields[key], list):
            raise fail(key, f"'{key}' is not a list of turns (got {_json_type(fields[key])})")
        return _conversation_example(fields[key], key, fail)
    if shape == "alpaca" or "instruction" in fields:
        return Example(instruction=text(fields, "instruction", "instruction", required=True),
                       input=text(fields, "input", "input"),
                       output=text(fields, "output", "output"),
                       system=text(fields, "system", "system"),
                       history=_history(fields.get("history"), fail),
                       leading_assistant=_string_list(fields.get("leading_assistant"), "leading_assistant", fail))
    keys = ", ".join(repr(k) for k in list(fields)[:10])
    raise fail("instruction", f"no 'instruction' field (record shape {shape!r}, keys: {keys}); "
                              "use a template to build examples from table rows")


def _history(value: Any, fail: Callable[[str, str], RecordError]) -> list[tuple[str, str]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise fail("history", f"'history' is not a list (got {_json_type(value)})")
    pairs = []
    for i, pair in enumerate(value):
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(isinstance(t, str) for t in pair)):
            raise fail(f"history[{i}]", f"'history[{i}]' is not a [user, assistant] pair of strings")
        pairs.append((pair[0], pair[1]))
    return pairs


def _string_list(value: Any, name: str, fail: Callable[[str, str], RecordError]) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise fail(name, f"{name!r} is not a list of strings")
    return list(value)


def _turn_content(turn: dict[str, Any], where: str,
                  fail: Callable[[str, str], RecordError]) -> str:
    key = "value" if "value" in turn else "content"
    if key not in turn:
        raise fail(f"{where}.value", f"turn {where} has no 'value' or 'content'")
    value = turn[key]
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                       and isinstance(p.get("text"), str) for p in value):
        return "".join(p["text"] for p in value)
    raise fail(f"{where}.{key}", f"'{where}.{key}' is not a string or a list of text parts")


def _conversation_example(turns: Iterable[Any], key: str,
                          fail: Callable[[str, str], RecordError]) -> Example:
    system: list[str] = []
    dialog: list[tuple[str, str, str]] = []  # (role, text, where)
    for i, turn in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise fail(where, f"'{where}' is not an object (got {_json_type(turn)})")
        role_key = "from" if "from" in turn else "role"
        raw_role = turn.get(role_key)
        if not isinstance(raw_role, str):
            raise fail(f"{where}.from", f"turn {where} has no 'from' or 'role' string")
        role_name = raw_role.lower()
        content = _turn_content(turn, where, fail)
        if role_name == "system":
            system.append(content)
        elif role_name in _USER_ROLES:
            dialog.append(("user", content, where))
        elif role_name in _ASSISTANT_ROLES:
            dialog.append(("assistant", content, where))
        else:
            raise fail(f"{where}.{role_key}", f"unsupported role {raw_role!r} in {where}")
    if not any(text.strip() for _, text, _ in dialog):
        err = fail(key, f"'{key}' has no user or assistant turn" + (" with text" if dialog else ""))
        raise EmptyRecordError(err.message, record=err.record, line=err.line, field=err.field, source=err.source)
    # a chat dump split mid-conversation starts with the assistant: those turns are kept as they are
    leading: list[str] = []
    while dialog and dialog[0][0] == "assistant":
        leading.append(dialog.pop(0)[1])
    if not dialog:  # only assistant turns
        return Example(instruction="", system="\n\n".join(system), leading_assistant=leading)
    for i, (role, _, where) in enumerate(dialog):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            article = "an" if expected == "assistant" else "a"
            raise fail(where, f"turn {where} is a {role} turn where {article} {expected} turn was "
                              "expected (turns must alternate user, assistant)")
    if dialog[-1][0] == "user":
        instruction, output, earlier = dialog[-1][1], "", dialog[:-1]
    else:
        instruction, output, earlier = dialog[-2][1], dialog[-1][1], dialog[:-2]
    history = [(earlier[j][1], earlier[j + 1][1]) for j in range(0, len(earlier), 2)]
    return Example(instruction=instruction, input="", output=output,
                   system="\n\n".join(system), history=history, leading_assistant=leading)
