"""Tests for instructmill.methods.template (jinja2 instruction templates)."""
from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from instructmill.errors import OptionError, RecordError, TemplateError
from instructmill.methods.template import (
    STATUS_TEMPLATE_ERROR,
    Template,
    TemplateFiller,
    UnsafeTemplateError,
    builtin_templates,
    load_template,
)
from instructmill.records import InputRecord


def rec(fields, *, id="L1-ab12cd34", line=1, source=None):
    return InputRecord(id=id, line=line, fields=dict(fields), source=source)


def render(template, fields, **kwargs):
    return TemplateFiller(template, **kwargs).render(rec(fields)).example


# ----------------------------------------------------------------- the brief's exact cases


def test_missing_field_names_field_and_record():
    t = Template(name="x", instruction="Translate: {{ text }} (topic: {{ topic }})")
    with pytest.raises(TemplateError) as info:
        TemplateFiller(t).render(rec({"text": "Good morning."}, id="L1-ab12cd34", line=1))
    err = info.value
    msg = str(err)
    assert "'topic'" in msg
    assert "'L1-ab12cd34'" in msg and "line 1" in msg
    assert "fields: text" in msg
    assert "template 'x'" in msg
    assert (err.record, err.line, err.field) == ("L1-ab12cd34", 1, "topic")
    assert isinstance(err, RecordError)


def test_curly_braces_in_data_render_literally():
    t = Template(name="x", instruction="Translate: {{ text }} (topic: {{ topic }})")
    ex = render(t, {"text": "Use {curly} braces.", "topic": "style"})
    assert ex.instruction == "Translate: Use {curly} braces. (topic: style)"
    assert (ex.input, ex.output) == ("", "")


def test_csv_like_row_instruction_only():
    t = Template(name="x", instruction="{{ instruction }}")
    ex = render(t, {"instruction": "Name a tree.", "input": ""})
    assert ex.instruction == "Name a tree."
    assert ex.input == "" and ex.output == ""


@pytest.mark.parametrize("value", ["{{ 7*7 }}", "{% if true %}x{% endif %}", "{# c #}",
                                   "<b>&amp;</b>", "{0.__class__}"])
def test_template_syntax_in_data_stays_literal(value):
    t = Template(name="x", instruction="Q: {{ text }}", output="{{ text }}")
    ex = render(t, {"text": value})
    assert ex.instruction == f"Q: {value}"
    assert ex.output == value


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_any_data_value_renders_verbatim(value):
    t = Template(name="x", instruction="[{{ text }}]", input="{{ text }}")
    ex = render(t, {"text": value})
    assert ex.instruction == f"[{value}]".strip()
    assert ex.input == value.strip()


# ----------------------------------------------------------------- built-ins


def test_builtin_list():
    names = builtin_templates()
    assert {"translate", "summarize", "classify", "rewrite"} <= set(names)
    for name in names:
        t = load_template(name)
        assert t.name == name
        assert t.description.strip(), f"built-in {name} has no description"


def test_builtin_translate():
    t = load_template("translate")
    assert t.variables == {"src": "English", "tgt": "German"}
    ex = render(t, {"text": "Good morning."})
    assert ex.instruction == "Translate the following English text into German."
    assert ex.input == "Good morning."
    assert ex.output == ""
    ex = render(t, {"text": "Good morning.", "translation": "Guten Morgen."})
    assert ex.output == "Guten Morgen."


def test_builtin_summarize():
    t = load_template("summarize")
    ex = render(t, {"text": "A long article.", "summary": "Short."})
    assert ex.instruction == "Summarize the following text in a few sentences."
    assert (ex.input, ex.output) == ("A long article.", "Short.")
    ex = render(t, {"text": "A long article."}, variables={"length": "one sentence"})
    assert ex.instruction == "Summarize the following text in one sentence."
    assert ex.output == ""


@pytest.mark.parametrize("labels", [["positive", "negative"], "positive, negative"])
def test_builtin_classify_labels_from_variable(labels):
    t = load_template("classify")
    ex = render(t, {"text": "I loved it.", "label": "positive"}, variables={"labels": labels})
    assert ex.instruction == ("Classify the following text into one of these categories: "
                              "positive, negative. Answer with the category only.")
    assert (ex.input, ex.output) == ("I loved it.", "positive")


def test_builtin_classify_labels_from_row_and_missing():
    t = load_template("classify")
    ex = render(t, {"text": "Rain today.", "labels": ["sports", "weather"]})
    assert "sports, weather." in ex.instruction
    assert ex.output == ""
    with pytest.raises(TemplateError, match="needs field 'labels'"):
        render(t, {"text": "Rain today."})


def test_builtin_rewrite():
    t = load_template("rewrite")
    ex = render(t, {"text": "gimme the report", "rewritten": "Please send me the report."})
    assert ex.instruction == "Rewrite the following text in a formal tone, keeping its meaning."
    assert (ex.input, ex.output) == ("gimme the report", "Please send me the report.")
    ex = render(t, {"text": "x"}, variables={"tone": "friendly"})
    assert "in a friendly tone" in ex.instruction


def test_builtin_qa_and_alpaca():
    qa = load_template("qa")
    ex = render(qa, {"question": "Who wrote it?", "context": "Ann wrote it.", "answer": "Ann"})
    assert ex.instruction.endswith("\n\nWho wrote it?")
    assert ex.instruction.startswith("Answer the question")
    assert (ex.input, ex.output) == ("Ann wrote it.", "Ann")
    assert render(qa, {"question": "Who?"}).instruction == "Who?"
    alpaca = load_template("alpaca")
    ex = render(alpaca, {"instruction": "Name a tree.", "output": "Oak."})
    assert (ex.instruction, ex.input, ex.output) == ("Name a tree.", "", "Oak.")


# ----------------------------------------------------------------- precedence and values


def test_precedence_user_over_row_over_defaults():
    t = load_template("translate")
    row = {"text": "Hi.", "tgt": "French"}
    assert render(t, row).instruction == "Translate the following English text into French."
    ex = render(t, row, variables={"tgt": "Spanish"})
    assert ex.instruction == "Translate the following English text into Spanish."
    filler = TemplateFiller(t, variables={"tgt": "Spanish"})
    assert filler.settings == {"template": "translate",
                               "variables": {"src": "English", "tgt": "Spanish"}}


def test_unknown_user_variable_is_refused():
    with pytest.raises(OptionError, match="tgt_lang") as info:
        TemplateFiller(load_template("translate"), variables={"tgt_lang": "French"})
    assert "src, text, tgt, translation" in str(info.value)
    with pytest.raises(OptionError):
        TemplateFiller(load_template("translate"), variables={"not a name": 1})


def test_none_renders_empty_and_whitespace_is_stripped():
    t = Template(name="x", instruction="\n  Do it:\n{{ a }}\n\n", input="  {{ b }}  ")
    ex = render(t, {"a": "line one\n\nline two\n", "b": None})
    assert ex.instruction == "Do it:\nline one\n\nline two"
    assert ex.input == ""


def test_empty_rendered_instruction_is_an_error():
    t = Template(name="x", instruction="{{ instruction }}")
    with pytest.raises(TemplateError, match="empty instruction"):
        render(t, {"instruction": "   "})


def test_runtime_failure_names_record():
    t = Template(name="x", instruction="{{ n + 1 }}")
    assert render(t, {"n": 41}).instruction == "42"
    with pytest.raises(TemplateError, match=r"record 'r7'.*TypeError"):
        TemplateFiller(t).render(rec({"n": "forty-one"}, id="r7", line=7))


def test_output_record_shape():
    t = load_template("translate")
    out = TemplateFiller(t).render(rec({"text": "Hi."}, id="abc"))
    assert out.id == "abc"
    assert out.status == "ok"
    assert out.method == "template"
    assert out.settings == {"template": "translate",
                            "variables": {"src": "English", "tgt": "German"}}
    assert out.extra == {}


# ----------------------------------------------------------------- fill


def test_fill_keeps_going_on_bad_rows():
    t = Template(name="x", instruction="About {{ topic }}: {{ text }}")
    rows = [rec({"text": "a", "topic": "t1"}, id="r1", line=1),
            rec({"text": "b"}, id="r2", line=2),
            rec({"text": "c", "topic": "t3"}, id="r3", line=3)]
    outs = list(TemplateFiller(t).fill(rows))
    assert [o.id for o in outs] == ["r1", "r2", "r3"]
    assert [o.status for o in outs] == ["ok", STATUS_TEMPLATE_ERROR, "ok"]
    assert outs[0].example.instruction == "About t1: a"
    assert outs[2].example.instruction == "About t3: c"
    assert "'topic'" in outs[1].extra["error"] and "'r2'" in outs[1].extra["error"]
    assert outs[1].settings["template"] == "x"
    with pytest.raises(TemplateError, match="'r2'"):
        list(TemplateFiller(t).fill(rows, strict=True))


def test_fill_is_lazy():
    t = Template(name="x", instruction="{{ text }}")

    def gen():
        yield rec({"text": "one"}, id="a")
        raise AssertionError("read too far")

    it = TemplateFiller(t).fill(gen())
    assert next(it).example.instruction == "one"


# ----------------------------------------------------------------- sandbox


def test_dunder_attribute_in_template_refused_at_load(tmp_path):
    with pytest.raises(UnsafeTemplateError, match="__class__"):
        Template(name="x", instruction="{{ ''.__class__ }}")
    p = tmp_path / "evil.j2"
    p.write_text("Hello\n{{ text.__class__.__mro__ }}\n")
    with pytest.raises(UnsafeTemplateError) as info:
        load_template(p)
    assert info.value.line == 2 and info.value.source == str(p)


def test_sandbox_security_error_becomes_clear_error():
    # The attribute name is computed, so only the sandbox (at render time) can catch it.
    t = Template(name="x", instruction="{% set n = '__cla' ~ 'ss__' %}{{ text | attr(n) }}")
    rows = [rec({"text": "a"}, id="r1"), rec({"text": "b"}, id="r2")]
    with pytest.raises(UnsafeTemplateError, match="sandbox") as info:
        TemplateFiller(t).render(rows[0])
    assert "__class__" in str(info.value)
    # the template is at fault, so even a non-strict bulk run stops
    with pytest.raises(UnsafeTemplateError):
        list(TemplateFiller(t).fill(rows))


def test_sandbox_blocks_format_string_tricks():
    t = Template(name="x", instruction="{{ text.format(text) }}")
    with pytest.raises(UnsafeTemplateError):
        render(t, {"text": "{0.__class__}"})


# ----------------------------------------------------------------- loading files


def test_load_yaml_template(tmp_path):
    p = tmp_path / "topic.yaml"
    p.write_text(
        "description: Ask about a topic.\n"
        "variables:\n"
        "  audience: children\n"
        "instruction: |\n"
        "  Explain {{ topic }} to {{ audience }}.\n"
        "  Keep it short.\n"
        "output: \"{{ answer }}\"\n")
    t = load_template(str(p))
    assert (t.name, t.path, t.description) == ("topic", str(p), "Ask about a topic.")
    assert t.variables == {"audience": "children"}
    assert t.required == ("answer", "audience", "topic")
    ex = render(t, {"topic": "rain", "answer": "Water falls."})
    assert ex.instruction == "Explain rain to children.\nKeep it short."
    assert (ex.input, ex.output) == ("", "Water falls.")


def test_load_json_and_text_templates(tmp_path):
    pj = tmp_path / "t.json"
    pj.write_text(json.dumps({"instruction": "Define {{ word }}.", "input": "",
                              "output": "{{ definition }}", "variables": {"word": "tree"}}))
    t = load_template(pj)
    ex = render(t, {"definition": "A plant."})
    assert (ex.instruction, ex.output) == ("Define tree.", "A plant.")
    for suffix in (".j2", ".txt"):
        p = tmp_path / f"plain{suffix}"
        p.write_text("\ufeffSay hello to {{ name }}.\n", encoding="utf-8")
        t = load_template(str(p))
        assert t.name == "plain" and t.input == "" and t.output == ""
        assert render(t, {"name": "Ann"}).instruction == "Say hello to Ann."


def test_bad_syntax_names_file_and_line_text(tmp_path):
    p = tmp_path / "bad.j2"
    p.write_text("line one\nline two\nbroken {{ x }\n")
    with pytest.raises(TemplateError) as info:
        load_template(p)
    err = info.value
    assert err.source == str(p) and err.line == 3
    assert str(p) in str(err) and "line 3" in str(err)


def test_bad_syntax_names_file_and_line_yaml(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("description: d\n"          # 1
                 "instruction: |\n"          # 2
                 "  fine {{ a }}\n"          # 3
                 "  {% for x in y %}oops\n"  # 4
                 "output: ok\n")             # 5
    with pytest.raises(TemplateError) as info:
        load_template(p)
    err = info.value
    assert err.source == str(p) and err.field == "instruction"
    assert err.line == 4
    assert "'endfor'" in str(err)
    p.write_text("instruction: ok\noutput: \"{{ x | nosuchfilter }}\"\n")
    with pytest.raises(TemplateError, match="nosuchfilter") as info:
        load_template(p)
    assert (info.value.line, info.value.field) == (2, "output")


def test_bad_syntax_json_and_direct(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps({"instruction": "a\n{% if %}"}))
    with pytest.raises(TemplateError, match="line 2 of the instruction") as info:
        load_template(p)
    assert info.value.source == str(p)
    with pytest.raises(TemplateError, match="template 'direct'.*line 1 of the input"):
        Template(name="direct", instruction="ok", input="{{ }}")


def test_unknown_builtin_and_missing_file(tmp_path):
    with pytest.raises(OptionError) as info:
        load_template("tranlsate")
    msg = str(info.value)
    for name in builtin_templates():
        assert name in msg
    with pytest.raises(OptionError, match="translate"):
        load_template(tmp_path / "nope.yaml")
    with pytest.raises(OptionError, match="folder"):
        load_template(tmp_path)


@pytest.mark.parametrize("text, match", [
    ("instruction: x\nouput: y\n", "ouput"),
    ("input: '{{ text }}'\n", "no 'instruction'"),
    ("- a\n- b\n", "mapping"),
    ("instruction: [a]\n", "string"),
    ("instruction: x\nvariables: [a]\n", "mapping"),
    ("instruction: x\nvariables:\n  day: 2024-01-01\n", "date"),
    ("instruction: 'x\n", "YAML"),
    ("instruction: ''\n", "non-empty"),
])
def test_bad_yaml_files(tmp_path, text, match):
    p = tmp_path / "t.yaml"
    p.write_text(text)
    with pytest.raises(OptionError, match=match):
        load_template(p)


def test_yaml_is_loaded_safely(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("instruction: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(OptionError, match="YAML"):
        load_template(p)


def test_template_is_frozen_and_required_is_derived():
    t = Template(name="x", instruction="{{ a }}{% set b = 1 %}{{ b }}",
                 output="{% for i in items %}{{ i }}{% endfor %}")
    assert t.required == ("a", "items")
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.name = "y"  # type: ignore[misc]
    with pytest.raises(OptionError):
        Template(name="", instruction="x")


# ------------------------------------------------- one render per row equals one per section



@pytest.mark.parametrize("name", builtin_templates())
@given(st.dictionaries(st.sampled_from(["text", "question", "context", "answer", "instruction", "input", "output",
                                        "translation", "label", "summary", "topic"]),
                       st.text(max_size=40), min_size=11, max_size=11))
@settings(max_examples=40, deadline=None)
def test_one_render_per_row_equals_rendering_each_section(name, fields):
    template = load_template(name)
    fast = TemplateFiller(template, variables={k: "x" for k in template.required if k not in fields})
    combined = fast._combined
    assert combined is not None  # the built-in templates have no shared-state statements
    try:
        got = fast.render(rec(fields))
    except TemplateError as exc:
        got = exc
    fast._combined = None
    try:
        want = fast.render(rec(fields))
    except TemplateError as exc:
        want = exc
    if isinstance(want, TemplateError):
        assert type(got) is type(want) and str(got) == str(want)
    else:
        assert got == want


def test_a_row_holding_the_separator_still_renders_right():
    t = Template(name="x", instruction="Say {{ text }}", input="{{ text }}!")
    filler = TemplateFiller(t)
    text = f"a {filler._separator} b"
    out = filler.render(rec({"text": text}))
    assert out.example.instruction == f"Say {text}" and out.example.input == f"{text}!"


def test_sections_that_set_names_are_rendered_one_by_one():
    t = Template(name="x", instruction="{% set topic = 'cats' %}About {{ topic }}: {{ text }}",
                 input="{{ topic | default('none') }}")
    filler = TemplateFiller(t)
    assert filler._combined is None
    out = filler.render(rec({"text": "hi"}))
    assert (out.example.instruction, out.example.input) == ("About cats: hi", "none")


def test_a_failing_section_is_named_in_the_error():
    t = Template(name="x", instruction="Q: {{ text }}", input="{{ text + 1 }}")
    with pytest.raises(TemplateError, match=r"\(input\) failed on this row"):
        TemplateFiller(t).render(rec({"text": "a"}))
