"""Parsing model output: task lists, Alpaca blocks, JSON with chatter, scores, echoed labels."""
from __future__ import annotations

import json

import pytest

from instructmill.methods.llm_parsing import (
    extract_json,
    is_no_input,
    parse_score,
    parse_tasks,
    strip_label,
    unwrap_fence,
)

ISSUE_TEXT = ("1. Instruction: List two fruits.\n1. Input:\n<noinput>\n1. Output:\nApple, pear.\n\n"
              "2. Instraction: Name a colour.\n2. Input:\n<noinput>\n2. Output:\nBlue.\n\n"
              "3. Instruction: Count to three.\n4. Input:\n<noinput>\n3. Output:\n1, 2, 3.\n\n"
              "5. Instruction: List two fruits.\n5. Input:\n<noinput>\n5. Output:\nApple, pear.")


def test_issue_alpaca_text_parses_leniently():
    result = parse_tasks(ISSUE_TEXT)
    assert result.status == "ok" and result.style == "alpaca"
    got = [(t.number, t.instruction, t.input, t.output, t.status) for t in result.items]
    assert got == [(1, "List two fruits.", "", "Apple, pear.", "ok"),
                   (2, "Name a colour.", "", "Blue.", "ok"),
                   (3, "Count to three.", "", "1, 2, 3.", "ok"),
                   (5, "List two fruits.", "", "Apple, pear.", "ok")]
    assert result.items[0].warnings == []
    assert result.items[1].warnings == ["label 'Instraction' read as 'instruction'"]
    assert result.items[2].warnings == ["numbering: item 3 has its input label numbered 4"]
    assert result.items[2].raw.startswith("3. Instruction: Count to three.\n4. Input:")


def test_json_with_fence_and_chatter_parses():
    text = '```json\n{"instruction": "List two fruits.", "input": "", "output": "Apple, pear."}\n```\nHope this helps!'
    result = parse_tasks(text)
    assert result.status == "ok" and result.style == "json"
    [task] = result.items
    assert (task.instruction, task.input, task.output) == ("List two fruits.", "", "Apple, pear.")


def test_json_variants():
    text = 'Here are tasks: [{"Instruction": "Sort numbers.", "Input": "3 1 2"}, "Name a tree.", 7] thanks'
    result = parse_tasks(text, "json")
    assert [(t.instruction, t.input, t.output, t.status) for t in result.items] == [
        ("Sort numbers.", "3 1 2", None, "ok"), ("Name a tree.", "", None, "ok"), ("", "", None, "parse_error")]
    nested = parse_tasks('{"tasks": [{"instruction": "A b c.", "output": "x"}]}')
    assert [(t.instruction, t.output) for t in nested.items] == [("A b c.", "x")]
    bad = parse_tasks('```json\n{"instruction": "unterminated\n```', "json")
    assert bad.status == "parse_error" and bad.raw.startswith("```json")


def test_chatter_only_is_a_parse_error_with_raw_text():
    for style in ("auto", "list", "alpaca", "json"):
        result = parse_tasks("Sure! Here you go:", style)
        assert result.status == "parse_error", style
        assert result.raw == "Sure! Here you go:" and result.items == [] and result.detail


def test_numbered_list_with_continuations_bullets_and_chatter():
    text = ("Here are some tasks:\n9. Write a haiku about the sea.\n10. Summarize the article in two\n"
            "   sentences.\n11) Translate the text to French.\nTask 12: Name three rivers.\n"
            "- Suggest a name for a cat.\n\nHope this helps!")
    result = parse_tasks(text)
    assert result.style == "list"
    assert [(t.number, t.instruction) for t in result.items] == [
        (9, "Write a haiku about the sea."), (10, "Summarize the article in two sentences."),
        (11, "Translate the text to French."), (12, "Name three rivers."), (None, "Suggest a name for a cat.")]
    assert result.skipped == ["Here are some tasks:", "Hope this helps!"]


def test_list_inside_code_fence_and_preamble_item():
    text = "Okay!\n```\n1. Sure, here are tasks:\n2. Describe a sunset in five words.\n```"
    result = parse_tasks(text, "list")
    assert [t.instruction for t in result.items] == ["Describe a sunset in five words."]
    assert "1. Sure, here are tasks:" in result.skipped


def test_alpaca_markdown_synonyms_and_separators():
    text = ("**Instruction:** Give a synonym of happy.\n**Input:** <noinput>\n**Output:** Joyful.\n###\n"
            "## Instruction: Explain gravity simply.\nOutput:\nThings fall.\nAnswer: 42 is not this.\n")
    result = parse_tasks(text)
    assert [(t.instruction, t.input, t.output) for t in result.items] == [
        ("Give a synonym of happy.", "", "Joyful."),
        ("Explain gravity simply.", "", "Things fall.\nAnswer: 42 is not this.")]


def test_alpaca_synonym_labels_when_no_canonical_ones():
    result = parse_tasks("Task: Name a planet.\nResponse: Mars.\n\nTask: Name a moon.\nResponse: Titan.")
    assert [(t.instruction, t.output) for t in result.items] == [("Name a planet.", "Mars."), ("Name a moon.", "Titan.")]


def test_alpaca_missing_instruction_text_and_missing_output():
    result = parse_tasks("1. Instruction:\n1. Output:\nSomething.\n\n2. Instruction: Say hi to me.\n2. Input:\n")
    first, second = result.items
    assert first.status == "parse_error" and "instruction" in first.detail
    assert second.status == "ok" and second.output is None and second.input == ""


def test_multiline_fields_keep_their_lines():
    text = "1. Instruction: Sort these.\n1. Input:\n3\n1\n2\n1. Output:\n1\n2\n3"
    [task] = parse_tasks(text).items
    assert task.input == "3\n1\n2" and task.output == "1\n2\n3"


def test_helpers():
    assert unwrap_fence("x\n```python\nprint(1)\n```\ny") == ("print(1)", True)
    assert unwrap_fence("```\nopen to the end") == ("open to the end", True)
    assert unwrap_fence("plain") == ("plain", False)
    assert extract_json('noise {"a": [1, {"b": 2}]} more {"c": 3}') == ({"a": [1, {"b": 2}]}, None)
    assert extract_json("no json here")[0] is None
    assert all(is_no_input(x) for x in ("<noinput>", " None. ", "N/A", "", "<no input>"))
    assert not is_no_input("3, 1, 2")


@pytest.mark.parametrize("text,score", [
    ("Reasoning: good.\nScore: 4", 4), ("score: 2\nthen later Score: 5", 5), ("Rating: 3/5", 3),
    ("I give it 4 out of 5.", 4), ('{"score": 3}', 3), ("**5**", 5), ("5", 5), ("Score: 7", None),
    ("0", None), ("no idea", None), ("The score is 2.", 2),
])
def test_parse_score(text, score):
    assert parse_score(text) == score


def test_strip_label():
    assert strip_label("#Rewritten Prompt#:\nWrite a poem in iambic pentameter.") == (
        "Write a poem in iambic pentameter.", True)
    assert strip_label('**New prompt:** "Name two rare birds."') == ("Name two rare birds.", True)
    assert strip_label("Instruction: Explain tides.") == ("Explain tides.", True)
    assert strip_label("Explain tides.") == ("Explain tides.", False)
    assert strip_label("```\nList 3 primes.\n```") == ("List 3 primes.", True)


def test_json_object_is_reported_raw_per_item():
    item = {"instruction": "Tell a joke.", "output": "Knock knock."}
    [task] = parse_tasks(json.dumps([item])).items
    assert json.loads(task.raw) == item
