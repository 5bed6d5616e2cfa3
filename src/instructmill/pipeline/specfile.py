"""Reading pipeline files: YAML / TOML with the line of every key, and options dataclasses built
from plain data with errors that name the key path.

:func:`build` instantiates an options dataclass from a mapping (keys = its fields; nested
dataclasses from nested mappings; lists to tuples; ints to floats), so a pipeline file can hold
exactly what the Python API takes. Every problem raises :class:`PipelineSpecError` with
``FILE:LINE: key 'stages[2].method': ...``.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from typing import Any, Mapping, Union

from ..errors import InstructmillError, OptionError

__all__ = ["Doc", "PipelineSpecError", "build", "check_keys", "did_you_mean", "join", "load_toml", "load_yaml",
           "option_fields", "set_path", "typed", "what"]


def option_fields(cls: type) -> list[str]:
    """The init fields of an options dataclass, in declaration order."""
    return [f.name for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")]


class PipelineSpecError(InstructmillError):
    """A pipeline file is invalid; the message starts with ``FILE:LINE: key 'path':``.

    Attributes:
        file: the pipeline file (or ``"<pipeline>"`` for a spec built in code).
        line: 1-based line of the key, when known.
        key: the key path (``stages[2].method``), when the problem is about one key.
    """

    def __init__(self, message: str, *, file: str = "<pipeline>", line: int | None = None,
                 key: str | None = None):
        self.file = file
        self.line = line
        self.key = key
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: key {key!r}: {message}" if key else f"{where}: {message}")
        self.message = message


def set_path(data: Any, key: str, value: Any, file: str) -> str:
    """Set ``value`` at the dotted ``key`` of ``data`` (creating mappings); returns the key path
    with list entries as indexes (``stages[1].window``)."""
    tokens = re.findall(r"\[\d+\]|[^.\[\]]+", key)
    if not tokens or not isinstance(data, dict):
        raise PipelineSpecError(f"cannot set {key!r}: name a key path such as sources.rows.path", file=file)
    node: Any = data
    path = ""
    for i, token in enumerate(tokens):
        last = i == len(tokens) - 1
        if isinstance(node, list):
            if token.startswith("[") or token.isdigit():
                index: int | None = int(token.strip("[]"))
            else:  # an entry's name, or its method when that is unique and the entry has no name
                found = [j for j, e in enumerate(node) if isinstance(e, dict) and e.get("name") == token] or [
                    j for j, e in enumerate(node) if isinstance(e, dict) and "name" not in e and e.get("method") == token]
                index = found[0] if len(found) == 1 else None
            if index is None or not 0 <= index < len(node):
                raise PipelineSpecError(f"cannot set {key!r}: {path} has no entry {token!r}", file=file)
            path = f"{path}[{index}]"
            if last:
                node[index] = value
            else:
                node = node[index]
            continue
        if not isinstance(node, dict) or token.startswith("["):
            raise PipelineSpecError(f"cannot set {key!r}: {path or 'the file'} is not a mapping", file=file)
        path = join(path, token)
        if last:
            node[token] = value
        else:
            node = node.setdefault(token, {})
    return path


# ---------------------------------------------------------------------- typed building

class Doc:
    """File name and key-path -> line table, for error messages."""

    def __init__(self, file: str, lines: dict[str, int]):
        self.file = file
        self.lines = lines

    def line(self, path: str) -> int | None:
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            path = _parent(path)

    def error(self, path: str, message: str) -> PipelineSpecError:
        return PipelineSpecError(message, file=self.file, line=self.line(path), key=path or None)


def _parent(path: str) -> str:
    m = re.match(r"^(.*?)(?:\.[^.\[\]]+|\[\d+\])$", path)
    return m.group(1) if m else ""


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_keys(data: Mapping[str, Any], allowed: tuple[str, ...] | list[str], path: str, doc: Doc,
                required: tuple[str, ...] = ()) -> None:
    for key in data:
        if not isinstance(key, str):
            raise doc.error(path, f"keys must be strings, got {key!r} (quote it)")
        if key not in allowed:
            hint = did_you_mean(key, list(allowed))
            raise doc.error(join(path, key), f"unknown key{hint}; valid keys: {', '.join(allowed)}")
    for key in required:
        if key not in data:
            raise doc.error(path, f"missing key {key!r}")


def what(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


def _describe(ann: Any) -> str:
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin in (Union, types.UnionType):
        parts = [_describe(a) for a in args if a is not type(None)]
        text = " or ".join(parts)
        return f"{text} or null" if type(None) in args else text
    if ann is bool:
        return "true or false"
    if ann is int:
        return "an integer"
    if ann is float:
        return "a number"
    if ann is str:
        return "a string"
    if origin in (tuple, list):
        return f"a list of {_describe(args[0]).removeprefix('an ').removeprefix('a ')}s" if args else "a list"
    if origin in (dict, Mapping) or ann is dict:
        return "a mapping"
    if dataclasses.is_dataclass(ann):
        return f"a mapping of {ann.__name__} fields"
    return getattr(ann, "__name__", str(ann))


def typed(value: Any, ann: Any, path: str, doc: Doc) -> Any:
    """``value`` checked (and converted: lists -> tuples, ints -> floats) against annotation ``ann``."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if ann is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arm in args:
            if arm is type(None):
                continue
            try:
                return typed(value, arm, path, doc)
            except PipelineSpecError:
                continue
        raise doc.error(path, f"must be {_describe(ann)}, got {what(value)}")
    if ann is bool:
        if isinstance(value, bool):
            return value
    elif ann is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif ann is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif ann is str:
        if isinstance(value, str):
            return value
    elif origin in (tuple, list):
        items = [value] if isinstance(value, str) else value
        if isinstance(items, (list, tuple)):
            elem = args[0] if args else Any
            converted = [typed(v, elem, f"{path}[{i}]", doc) for i, v in enumerate(items)]
            return tuple(converted) if origin is tuple else converted
    elif origin in (dict, Mapping) or ann is dict:
        if isinstance(value, Mapping):
            out = {}
            for k, v in value.items():
                if not isinstance(k, str):
                    raise doc.error(path, f"keys must be strings, got {k!r}")
                out[k] = typed(v, args[1] if len(args) == 2 else Any, join(path, k), doc)
            return out
    elif dataclasses.is_dataclass(ann):
        if isinstance(value, Mapping):
            return build(ann, value, path, doc)
    else:
        return value
    raise doc.error(path, f"must be {_describe(ann)}, got {what(value)}")


def build(cls: type, data: Any, path: str, doc: Doc, *, defaults: Mapping[str, Any] | None = None,
           exclude: tuple[str, ...] = ()) -> Any:
    """Instantiate the options dataclass ``cls`` from the mapping ``data`` (keys = its fields).

    Unknown keys, missing required keys and wrong types raise :class:`PipelineSpecError`; the
    dataclass's own :class:`OptionError` becomes one too, pointing at the key it names.
    """
    if isinstance(data, Mapping) is False:
        raise doc.error(path, f"must be a mapping of {cls.__name__} fields, got {what(data)}")
    hints = typing.get_type_hints(cls)
    names = [n for n in option_fields(cls) if n not in exclude]
    check_keys(data, names, path, doc)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in names:
            continue
        if f.name in data:
            kwargs[f.name] = typed(data[f.name], hints[f.name], join(path, f.name), doc)
        elif defaults and f.name in defaults:
            kwargs[f.name] = defaults[f.name]
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise doc.error(path, f"missing key {f.name!r}")
    try:
        return cls(**kwargs)
    except OptionError as exc:
        head = str(exc.name).split(".")[0].split(" ")[-1]
        where = join(path, head) if head in data else path
        raise doc.error(where, str(exc)) from None
    except InstructmillError as exc:
        raise doc.error(path, str(exc)) from None
    except (TypeError, ValueError) as exc:
        raise doc.error(path, f"invalid {cls.__name__}: {exc}") from None


# ---------------------------------------------------------------------- file formats

def load_yaml(text: str, file: str) -> tuple[Any, dict[str, int]]:
    """Parse a YAML pipeline file: ``(data, key path -> line)``.

    Parsed with :class:`~instructmill.yamlload.BoundedSafeLoader`, so an alias bomb, a
    recursive alias or nesting deeper than :data:`~instructmill.yamlload.MAX_DEPTH` is a
    one-line error instead of minutes of work or a ``RecursionError``.

    Raises:
        PipelineSpecError: invalid YAML or a limit passed (``FILE:LINE: invalid YAML: ...``),
            or a duplicate key.
    """
    import yaml

    from ..yamlload import compose_bounded, yaml_problem

    try:
        data, node = compose_bounded(text)
    except yaml.YAMLError as exc:
        problem, line = yaml_problem(exc)
        raise PipelineSpecError(f"invalid YAML: {problem}", file=file, line=line) from None
    lines: dict[str, int] = {}
    if node is not None:
        _yaml_lines(node, "", lines, file)
    return data, lines


def _yaml_lines(node: Any, path: str, lines: dict[str, int], file: str) -> None:
    import yaml

    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen and key != "<<":
                raise PipelineSpecError(f"duplicate key (first on line {seen[key]})", file=file, line=line,
                                        key=join(path, key))
            seen[key] = line
            child = join(path, key)
            lines[child] = line
            _yaml_lines(value_node, child, lines, file)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            child = f"{path}[{i}]"
            lines[child] = item.start_mark.line + 1
            _yaml_lines(item, child, lines, file)


def load_toml(text: str, file: str) -> tuple[Any, dict[str, int]]:
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise PipelineSpecError(f"invalid TOML: {exc}", file=file, line=int(m.group(1)) if m else None) from None
    except RecursionError:  # tomllib recurses once per nested array / inline table
        raise PipelineSpecError("invalid TOML: arrays or tables nested too deeply", file=file) from None
    return data, _toml_lines(text)


_TOML_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")
_TOML_KEY = re.compile(r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=""")


def _toml_parts(dotted: str) -> list[str]:
    return [p.strip().strip("\"'") for p in re.findall(r"""(?:"[^"]*"|'[^']*'|[^.]+)""", dotted)]


def _toml_lines(text: str) -> dict[str, int]:
    """Key path -> line for a TOML text (tables, arrays of tables, dotted keys; values that span
    lines are skipped by a simple bracket count)."""
    lines: dict[str, int] = {}
    arrays: dict[str, int] = {}  # array-of-tables path -> last index
    prefix = ""
    depth = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if depth > 0:
            depth += line.count("[") + line.count("{") - line.count("]") - line.count("}")
            continue
        header = _TOML_HEADER.match(line)
        if header:
            parts = _toml_parts(header.group(2))
            path = ""
            for part in parts[:-1]:
                path = join(path, part)
                if path in arrays:
                    path = f"{path}[{arrays[path]}]"
            path = join(path, parts[-1])
            if header.group(1) == "[[":
                arrays[path] = arrays.get(path, -1) + 1
                lines.setdefault(path, number)
                path = f"{path}[{arrays[path]}]"
            lines[path] = number
            prefix = path
            continue
        key = _TOML_KEY.match(line)
        if key:
            path = prefix
            for part in _toml_parts(key.group(1)):
                path = join(path, part)
            lines[path] = number
            rest = line[key.end():]
            depth = rest.count("[") + rest.count("{") - rest.count("]") - rest.count("}")
            depth = max(depth, 0)
    return lines
