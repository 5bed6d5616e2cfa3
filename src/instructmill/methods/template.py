"""Instruction templates: turn table rows into instruction examples with jinja2.

A :class:`Template` holds three jinja2 sources, one per :class:`~instructmill.records.Example`
field (``instruction``, ``input``, ``output``), plus default ``variables``. A
:class:`TemplateFiller` renders a template for each :class:`~instructmill.records.InputRecord`.

Templates come from :func:`load_template`: a built-in name (see :func:`builtin_templates`;
the files live in ``builtin_templates/<name>.yaml``, phrased after the FLAN / P3 templates,
Wei et al. 2022 "Finetuned Language Models Are Zero-Shot Learners", Sanh et al. 2022
"Multitask Prompted Training Enables Zero-Shot Task Generalization") or a user file.

Rendering rules (the same for every template):

* Variable precedence, highest first: ``variables`` given to :class:`TemplateFiller`
  (the user's explicit choice, e.g. ``--var tgt=French``) > the row's fields > the
  template's default ``variables``. A row can therefore supply its own ``tgt`` where
  the user did not fix one, but can never override what the user fixed.
* A name the template needs and nobody supplies is an error naming the record and the
  field (:class:`~instructmill.errors.TemplateError`); use ``{{ x | default('') }}`` or
  ``{% if x is defined %}`` for optional fields.
* Data is never template text: a row value such as ``"{{ 7*7 }}"`` or ``"Use {curly}
  braces."`` is inserted literally. ``None`` (JSON ``null``) renders as ``""``.
  No HTML escaping is done.
* Templates run in jinja2's sandbox (:class:`jinja2.sandbox.SandboxedEnvironment`), so a
  template cannot reach Python internals (``{{ ''.__class__ }}`` is refused).
* Each record's render is limited in time and size (:class:`TemplateFiller` ``max_seconds``
  / ``max_chars``, by default 5 s and 100 million characters; see
  :mod:`~instructmill.methods.template_sandbox`): a record that passes a limit gets status
  ``"template_error"`` with the reason, and the run goes on.
* Template files are read with the bounded YAML loader (:mod:`instructmill.yamlload`): alias
  bombs, deep nesting and files over 10 MiB are one-line errors.
* Leading and trailing whitespace of each rendered field is stripped (so the trailing
  newline of a YAML block scalar does not leak); inner text is kept as rendered.
* A field whose source is empty renders as ``""`` (nothing is copied from the row
  implicitly; the ``alpaca`` built-in copies ``instruction``/``input``/``output`` columns).
"""
from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import yaml
from jinja2 import StrictUndefined, TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment

from instructmill.arguments import input_records
from instructmill.errors import OptionError, TemplateError
from instructmill.methods.template_sandbox import (MAX_RENDER_CHARS, MAX_RENDER_SECONDS,
                                                   LimitedSandbox, RenderLimitError,
                                                   render_limited, render_limits, render_pieces)
from instructmill.records import EXAMPLE_FIELDS, Example, InputRecord, OutputRecord
from instructmill.yamlload import compose_bounded, config_file_problem, yaml_problem

__all__ = [
    "STATUS_TEMPLATE_ERROR",
    "Template",
    "TemplateFiller",
    "UnsafeTemplateError",
    "builtin_templates",
    "load_template",
    "make_environment",
]

#: Status of an output record whose row could not be rendered (see :meth:`TemplateFiller.fill`).
from ..status import STATUS_TEMPLATE_ERROR  # noqa: E402 - re-exported

#: Keys a YAML/JSON template file may hold.
TEMPLATE_KEYS = ("instruction", "input", "output", "description", "variables")

#: Suffixes read as YAML / JSON template files; any other file is an instruction template alone.
_YAML_SUFFIXES = (".yaml", ".yml")
_JSON_SUFFIXES = (".json",)

_BUILTIN_PACKAGE = "instructmill.methods"
_BUILTIN_DIR = "builtin_templates"

_UNDEFINED_RE = re.compile(r"^'([^']+)' is undefined$")
_MAX_FIELDS_SHOWN = 20


class UnsafeTemplateError(TemplateError):
    """A template tried something jinja2's sandbox forbids (e.g. ``{{ ''.__class__ }}``).

    The template, not the row, is at fault, so :meth:`TemplateFiller.fill` raises it
    even when not ``strict``.
    """


def _finalize(value: Any) -> Any:
    """jinja2 ``finalize`` hook: render ``None`` (JSON ``null``) as an empty string."""
    return "" if value is None else value


def make_environment() -> SandboxedEnvironment:
    """The jinja2 environment every template is compiled in.

    Sandboxed with time and size limits (:class:`~instructmill.methods.template_sandbox.
    LimitedSandbox`), ``StrictUndefined`` (a missing name is an error, not ``""``), trailing
    newlines kept (they are stripped after rendering), no autoescaping, ``None`` -> ``""``.
    """
    return LimitedSandbox(undefined=StrictUndefined, keep_trailing_newline=True,
                          autoescape=False, finalize=_finalize)


_CHECK_ENV = make_environment()

#: Maps a line of a section's source (1-based) to the line of the file it came from, or None.
LineMap = Callable[[int], "int | None"]


def _check_source(source: str, *, template: str, section: str, path: str | None,
                  line_map: LineMap | None) -> frozenset[str]:
    """Parse and compile one section; return the names it references.

    Raises:
        TemplateError: invalid jinja2 syntax (or an unknown filter/test); the message
            names the template, the section and the line; ``source``/``line`` of the
            error point into the template file when known.
        UnsafeTemplateError: the source uses a dunder attribute (``x.__class__``,
            ``x | attr('__class__')``), which the sandbox would refuse at render time.
    """

    def fail(cls: type[TemplateError], lineno: int | None, what: str) -> TemplateError:
        file_line = line_map(lineno) if (line_map is not None and lineno) else None
        at = f" (line {lineno} of the {section})" if lineno else ""
        return cls(f"template {template!r}: {what} in the {section}{at}",
                   source=path, line=file_line, field=section)

    try:
        ast = _CHECK_ENV.parse(source)
        _CHECK_ENV.compile(source)  # also catches unknown filters / tests
    except TemplateSyntaxError as exc:
        raise fail(TemplateError, exc.lineno, f"invalid jinja2 syntax: {exc.message}") from None
    except RecursionError:  # jinja2's parser recurses once per nested block / bracket
        raise fail(TemplateError, None, "cannot be compiled: blocks or brackets nested too "
                   "deeply") from None
    except (RenderLimitError, MemoryError, OverflowError) as exc:  # jinja2 folds constants
        raise fail(TemplateError, None, f"cannot be compiled: a constant is too large "
                   f"({type(exc).__name__}: {exc})") from None
    for node in ast.find_all((nodes.Getattr, nodes.Filter)):
        if isinstance(node, nodes.Getattr):
            attr = node.attr
        elif (node.name == "attr" and node.args and isinstance(node.args[0], nodes.Const)
              and isinstance(node.args[0].value, str)):
            attr = node.args[0].value
        else:
            continue
        if attr.startswith("__"):
            raise fail(UnsafeTemplateError, node.lineno,
                       f"attribute {attr!r} is not allowed (the jinja2 sandbox refuses "
                       "access to Python internals)")
    return frozenset(meta.find_undeclared_variables(ast))


def _check_json_value(value: Any, where: str) -> None:
    """Refuse variable values that cannot go into JSON provenance (dates, sets, objects)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json_value(item, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for k, item in value.items():
            if not isinstance(k, str):
                raise OptionError(where, value, f"keys must be strings, got {k!r}")
            _check_json_value(item, f"{where}.{k}")
        return
    raise OptionError(where, value,
                      f"must be a string, number, boolean, null, list or mapping, "
                      f"not {type(value).__name__} (quote it in YAML)")


def _check_variables(variables: Any, option: str) -> dict[str, Any]:
    if variables is None:
        return {}
    if not isinstance(variables, Mapping):
        raise OptionError(option, variables, "must be a mapping of names to values")
    out: dict[str, Any] = {}
    for key, value in variables.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise OptionError(option, key, "variable names must be identifiers "
                              "(letters, digits, '_'; not starting with a digit)")
        _check_json_value(value, f"{option}.{key}")
        out[key] = value
    return out


@dataclass(frozen=True)
class Template:
    """An instruction template: one jinja2 source per example field.

    Attributes:
        name: short name (built-in name, or the file's stem); recorded in output settings.
        instruction: jinja2 source of the example's instruction (must not be empty).
        input: jinja2 source of the example's input (``""``: the input is empty).
        output: jinja2 source of the example's output (``""``: the output is empty).
        description: what the template is for and which row fields it reads.
        variables: default values for names the sources use (e.g. ``{"src": "English",
            "tgt": "German"}``); strings, numbers, booleans, null, lists or mappings.
        path: the file it was loaded from, if any (used in error messages).
        required: (derived) every name the sources reference, sorted, from
            :func:`jinja2.meta.find_undeclared_variables`. Names used only behind
            ``default(...)`` or ``is defined`` are listed too but are optional at render time.

    Raises (on construction):
        OptionError: a non-string source, an empty instruction, bad ``variables``.
        TemplateError: invalid jinja2 syntax; names the template, section and line.
        UnsafeTemplateError: a source uses a dunder attribute such as ``__class__``.
    """

    name: str
    instruction: str
    input: str = ""
    output: str = ""
    description: str = ""
    variables: dict[str, Any] = field(default_factory=dict, hash=False)
    path: str | None = None
    required: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise OptionError("template name", self.name, "must be a non-empty string")
        for section in EXAMPLE_FIELDS:
            if not isinstance(getattr(self, section), str):
                raise OptionError(f"template {section}", getattr(self, section),
                                  "must be a string (jinja2 source)")
        if not self.instruction.strip():
            raise OptionError("template instruction", self.instruction,
                              "must be a non-empty jinja2 template")
        if not isinstance(self.description, str):
            raise OptionError("template description", self.description, "must be a string")
        object.__setattr__(self, "variables", _check_variables(self.variables, "variables"))
        names: set[str] = set()
        for section in EXAMPLE_FIELDS:
            names |= _check_source(getattr(self, section), template=self.name, section=section,
                                   path=self.path, line_map=None)
        object.__setattr__(self, "required", tuple(sorted(names)))

    def sources(self) -> dict[str, str]:
        """``{"instruction": ..., "input": ..., "output": ...}`` jinja2 sources."""
        return {section: getattr(self, section) for section in EXAMPLE_FIELDS}


# --------------------------------------------------------------------------- loading


def builtin_templates() -> list[str]:
    """Names of the built-in templates, sorted (e.g. ``["alpaca", "classify", ...]``)."""
    folder = resources.files(_BUILTIN_PACKAGE).joinpath(_BUILTIN_DIR)
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir()
                  if p.is_file() and p.name.endswith(".yaml"))


def _builtins_hint() -> str:
    return "built-in templates: " + ", ".join(builtin_templates())


def _is_builtin_name(name: str) -> bool:
    return (bool(name) and "/" not in name and os.sep not in name and "." not in name
            and name in builtin_templates())


def load_template(name_or_path: str | os.PathLike[str]) -> Template:
    """Load a built-in template by name, or a template file.

    * A built-in name (``translate``, ``summarize``, ``classify``, ``rewrite``, ``qa``,
      ``alpaca``; see :func:`builtin_templates`) loads ``builtin_templates/<name>.yaml``.
      A built-in name wins over a same-named file without suffix; write ``./name`` to load
      the file.
    * ``*.yaml`` / ``*.yml``: a mapping read with ``yaml.safe_load`` with keys
      ``instruction`` (required), ``input``, ``output``, ``description``, ``variables``.
    * ``*.json``: a JSON object with the same keys.
    * Any other file (``.j2``, ``.txt``...): its whole text is the instruction template;
      input and output are empty.

    The template's name is the built-in name or the file's stem. Files are read as UTF-8
    (a BOM is ignored).

    Raises:
        OptionError: unknown built-in / missing file (the message lists the built-ins),
            unreadable file, invalid YAML/JSON, unknown or badly typed keys.
        TemplateError: invalid jinja2 syntax; the error's ``source`` is the file and its
            ``line`` the file line when it can be known (text files, YAML ``|`` blocks and
            one-line YAML values); the message also gives the line within the section.
        UnsafeTemplateError: a source uses a dunder attribute.
    """
    if isinstance(name_or_path, str) and _is_builtin_name(name_or_path):
        ref = resources.files(_BUILTIN_PACKAGE).joinpath(_BUILTIN_DIR, f"{name_or_path}.yaml")
        text = ref.read_text(encoding="utf-8")
        return _from_mapping_text(text, name=name_or_path, path=f"<built-in {name_or_path}>",
                                  kind="yaml")
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise OptionError("template", name_or_path, "must be a built-in name or a file path")
    path = Path(name_or_path)
    problem = config_file_problem(path)  # before opening: a FIFO would block the read
    if problem is not None:
        what = "is neither a built-in template nor an existing file" if problem == "no such file" \
            else problem
        raise OptionError("template", str(name_or_path), f"{what}; {_builtins_hint()}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise OptionError("template", str(path), f"cannot be read as UTF-8 text: {exc}") from None
    suffix = path.suffix.lower()
    if suffix in _YAML_SUFFIXES:
        return _from_mapping_text(text, name=path.stem, path=str(path), kind="yaml")
    if suffix in _JSON_SUFFIXES:
        return _from_mapping_text(text, name=path.stem, path=str(path), kind="json")
    _check_source(text, template=path.stem, section="instruction", path=str(path),
                  line_map=lambda n: n)
    return Template(name=path.stem, instruction=text, path=str(path))


def _yaml_with_lines(text: str, path: str) -> tuple[Any, dict[str, LineMap]]:
    """``yaml.safe_load`` (bounded: :func:`~instructmill.yamlload.compose_bounded`) plus, per
    top-level key, a map from value line to file line."""
    try:
        data, node = compose_bounded(text)
    except yaml.YAMLError as exc:
        problem, line = yaml_problem(exc)
        at = f" (line {line})" if line else ""
        raise OptionError("template", path, f"is not valid YAML{at}: {problem}") from None
    line_maps: dict[str, LineMap] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or not isinstance(value_node,
                                                                           yaml.ScalarNode):
                continue
            start = value_node.start_mark.line  # 0-based line of the value (or of '|')
            if value_node.style == "|":
                # Literal block: content line k sits k lines below the '|' indicator.
                line_maps[key_node.value] = lambda n, s=start: s + 1 + n
            else:
                # Plain, quoted or folded: lines may be folded; point at the value's start.
                line_maps[key_node.value] = lambda n, s=start: s + 1
    return data, line_maps


def _from_mapping_text(text: str, *, name: str, path: str, kind: str) -> Template:
    if kind == "yaml":
        data, line_maps = _yaml_with_lines(text, path)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise OptionError("template", path,
                              f"is not valid JSON: {exc.msg} (line {exc.lineno}, "
                              f"column {exc.colno})") from None
        except RecursionError:
            raise OptionError("template", path, "is not valid JSON: nested too deeply") from None
        line_maps = {}
    if not isinstance(data, dict):
        raise OptionError("template", path,
                          f"must hold a mapping with keys {', '.join(TEMPLATE_KEYS)}, "
                          f"got {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in TEMPLATE_KEYS)
    if unknown:
        raise OptionError("template", path, f"unknown key(s) {', '.join(unknown)}; "
                          f"allowed: {', '.join(TEMPLATE_KEYS)}")
    if "instruction" not in data:
        raise OptionError("template", path, "has no 'instruction' key")
    values: dict[str, Any] = {}
    for key in ("instruction", "input", "output", "description"):
        value = data.get(key, "")
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise OptionError(f"template {key}", value,
                              f"must be a string in {path}, got {type(value).__name__}")
        values[key] = value
    for section in EXAMPLE_FIELDS:
        _check_source(values[section], template=name, section=section, path=path,
                      line_map=line_maps.get(section))
    variables = data.get("variables")
    if variables is not None and not isinstance(variables, Mapping):
        raise OptionError("template variables", variables, f"must be a mapping in {path}")
    return Template(name=name, variables=variables or {}, path=path, **values)


# --------------------------------------------------------------------------- rendering

#: Statements whose effect could reach from one section into the next if they were rendered as one.
_SHARED_STATE_NODES = (nodes.Assign, nodes.AssignBlock, nodes.Macro, nodes.Import, nodes.FromImport,
                       nodes.Extends, nodes.Block, nodes.Include, nodes.CallBlock, nodes.Scope)


def _sections_independent(env: SandboxedEnvironment, sources: Iterable[str]) -> bool:
    """Whether the sections can be rendered as one template with the same result as one by one."""
    for source in sources:
        if any(True for _ in env.parse(source).find_all(_SHARED_STATE_NODES)):
            return False
    return True



class TemplateFiller:
    """Renders a :class:`Template` for input records.

    Args:
        template: the template (see :func:`load_template`).
        variables: the user's values for template names; they win over row fields and
            template defaults (see the module docstring). Each must be a name the template
            uses, so a typo (``tgt_lang`` for ``tgt``) is caught.
        max_seconds: longest render of one record (all sections), in seconds.
        max_chars: most characters one record's render may output (all sections rendered
            together; a section rendered alone counts on its own), and the longest value it
            may build on the way.

    Attributes:
        template: the template.
        variables: template defaults overlaid with the user's ``variables``.
        settings: provenance put on every output record:
            ``{"template": name, "variables": {...}}`` (``variables`` as above).

    Raises:
        OptionError: a variable name the template does not use, a badly typed value, or a
            limit that is not positive.

    The three sources are compiled once, here.
    """

    method = "template"

    def __init__(self, template: Template, *, variables: Mapping[str, Any] | None = None,
                 max_seconds: float = MAX_RENDER_SECONDS, max_chars: int = MAX_RENDER_CHARS):
        if not isinstance(template, Template):
            raise OptionError("template", template, "must be a Template (see load_template)")
        if not (isinstance(max_seconds, (int, float)) and max_seconds > 0):
            raise OptionError("max_seconds", max_seconds, "must be a positive number of seconds")
        if not (isinstance(max_chars, int) and max_chars > 0):
            raise OptionError("max_chars", max_chars, "must be a positive number of characters")
        self.max_seconds = float(max_seconds)
        self.max_chars = max_chars
        user = _check_variables(variables, "variables")
        unused = sorted(set(user) - set(template.required))
        if unused:
            raise OptionError("variables", ", ".join(unused),
                              f"template {template.name!r} does not use "
                              f"{'it' if len(unused) == 1 else 'them'}; it uses: "
                              f"{', '.join(template.required)}")
        self.template = template
        self._user = user
        self.variables: dict[str, Any] = {**template.variables, **user}
        self.settings: dict[str, Any] = {"template": template.name,
                                         "variables": dict(self.variables)}
        env = make_environment()
        sources = template.sources()
        self._compiled = {section: env.from_string(source) for section, source in sources.items()}
        # One render per row instead of one per section: jinja2 spends most of a small render on
        # setting up its context. The sections are joined with a separator no row can guess; a
        # row whose rendering fails or whose text holds the separator is rendered section by
        # section, so errors name their section and the output is always the same.
        self._separator = f"IMSEP{uuid.uuid4().hex}IMSEP"
        self._combined = (env.from_string(self._separator.join(sources.values()))
                          if _sections_independent(env, sources.values()) else None)

    def __repr__(self) -> str:
        return f"TemplateFiller({self.template.name!r}, variables={self.variables!r})"

    def _split_sections(self, pieces: list[str]) -> list[str]:
        """The combined render's pieces cut at the separator, one text per section.

        Split piece by piece rather than joined then split: a field printed alone stays the
        row's own string object (``"".join`` of one string returns it), so a 20 MB field is
        not copied twice. A row value that holds the separator yields too many sections, and
        the caller renders section by section.
        """
        sections: list[list[str]] = [[]]
        for piece in pieces:
            if self._separator in piece:
                first, *rest = piece.split(self._separator)
                sections[-1].append(first)
                sections.extend([part] for part in rest)
            else:
                sections[-1].append(piece)
        # Empty pieces dropped: ["", text] would make join copy text.
        return ["".join([p for p in section if p]) for section in sections]

    def _context(self, record: InputRecord) -> dict[str, Any]:
        ctx = dict(self.template.variables)
        ctx.update((k, v) for k, v in record.fields.items() if isinstance(k, str))
        ctx.update(self._user)
        return ctx

    def _error(self, cls: type[TemplateError], record: InputRecord, message: str,
               field_name: str | None = None) -> TemplateError:
        return cls(message, record=record.id, line=record.line, field=field_name,
                   source=record.source)

    def render(self, record: InputRecord) -> OutputRecord:
        """Render the template for one record.

        Returns:
            an ``OutputRecord`` with ``id=record.id``, status ``"ok"``, method
            ``"template"``, ``settings`` as :attr:`settings`, and an ``Example`` whose
            instruction/input/output are the rendered sections, stripped.

        Raises:
            TemplateError: a name the template needs is missing from the row (the message
                names the field, the record id and line, and the row's fields), the
                rendered instruction is empty, a filter/expression failed on the row's
                values (e.g. ``{{ text + 1 }}`` on a string), or the render passed its time
                or size limit (``max_seconds`` / ``max_chars``).
            UnsafeTemplateError: the sandbox refused an operation of the template.
        """
        with render_limits(self.max_seconds, self.max_chars):
            return self._render(record)

    def _render(self, record: InputRecord) -> OutputRecord:
        ctx = self._context(record)
        rendered: dict[str, str] = {}
        if self._combined is not None:
            try:
                parts = self._split_sections(render_pieces(self._combined, ctx))
            except RenderLimitError as exc:  # the same limit would stop each section again
                raise self._error(TemplateError, record, f"template {self.template.name!r}: "
                                  f"{exc}") from None
            except Exception:  # noqa: BLE001 - rendered again below, section by section, for the message
                parts = []
            if len(parts) == len(self._compiled):
                rendered = {section: part.strip() for section, part in zip(self._compiled, parts)}
        for section, compiled in self._compiled.items():
            if section in rendered:
                continue
            try:
                rendered[section] = render_limited(compiled, ctx).strip()
            except RenderLimitError as exc:
                raise self._error(TemplateError, record, f"template {self.template.name!r} "
                                  f"({section}): {exc}") from None
            except SecurityError as exc:
                raise self._error(UnsafeTemplateError, record,
                                  f"template {self.template.name!r} ({section}) did something "
                                  f"the jinja2 sandbox forbids: {exc}") from None
            except UndefinedError as exc:
                match = _UNDEFINED_RE.match(str(exc))
                name = match.group(1) if match else None
                if name is not None and name not in ctx:
                    fields = [str(k) for k in record.fields]
                    shown = ", ".join(fields[:_MAX_FIELDS_SHOWN]) or "none"
                    if len(fields) > _MAX_FIELDS_SHOWN:
                        shown += f", ... ({len(fields)} in all)"
                    raise self._error(
                        TemplateError, record,
                        f"template {self.template.name!r} needs field {name!r}, which the "
                        f"row does not have (fields: {shown}); add it to the rows or give "
                        "it as a template variable", field_name=name) from None
                raise self._error(TemplateError, record,
                                  f"template {self.template.name!r} ({section}): {exc}") from None
            except Exception as exc:  # a filter or operator failed on this row's values
                raise self._error(TemplateError, record,
                                  f"template {self.template.name!r} ({section}) failed on this "
                                  f"row: {type(exc).__name__}: {exc}") from None
        if not rendered["instruction"]:
            raise self._error(TemplateError, record,
                              f"template {self.template.name!r} rendered an empty instruction",
                              field_name="instruction")
        return OutputRecord(
            id=record.id,
            example=Example(instruction=rendered["instruction"], input=rendered["input"],
                            output=rendered["output"]),
            method=self.method,
            settings=dict(self.settings),
        )

    def fill(self, records: Iterable[InputRecord | dict[str, Any]], *, strict: bool = False
             ) -> Iterator[OutputRecord]:
        """Render every record, lazily and in order; one output per input.

        ``records``: any iterable (a generator is streamed) of
        :class:`~instructmill.records.InputRecord` or plain dicts of fields, e.g.
        ``[{"text": "Hello", "tgt": "German"}]`` (converted as a file row would be: their ``id``,
        else ``"L{position}-{hash8}"``; see :func:`instructmill.arguments.input_records`).

        A row that cannot be rendered yields an ``OutputRecord`` with status
        ``"template_error"``, an empty example, the same id, and
        ``extra={"error": message}``, so a bulk run keeps going; with ``strict=True``
        its :class:`~instructmill.errors.TemplateError` is raised instead.

        Raises:
            ArgumentTypeError: (a ``TypeError``, at call time) ``records`` is a string or one dict;
                (while iterating) an item is neither an InputRecord nor a dict.
            TemplateError: only when ``strict``.
            UnsafeTemplateError: always (the template, not the row, is at fault).
        """
        return self._fill(input_records(records), strict)

    def _fill(self, records: Iterable[InputRecord], strict: bool) -> Iterator[OutputRecord]:
        for record in records:
            try:
                yield self.render(record)
            except UnsafeTemplateError:
                raise
            except TemplateError as exc:
                if strict:
                    raise
                yield OutputRecord(id=record.id, example=Example(instruction=""),
                                   status=STATUS_TEMPLATE_ERROR, method=self.method,
                                   settings=dict(self.settings), extra={"error": str(exc)})
