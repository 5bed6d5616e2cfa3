"""Tests for instructmill.io.readers and instructmill.io.writers."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import sys
from pathlib import Path

import pytest

from instructmill.errors import OptionError, RecordError
from instructmill.io import (
    JsonlWriter,
    ReadError,
    detect_format,
    detect_shape,
    format_record,
    read_records,
    to_example,
)
from instructmill.records import Example, InputRecord, OutputRecord
from instructmill.io.writers import example_fields

SEED_TASKS = Path("/work/shared/data/seed_tasks.jsonl")


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def read_all(path, **kw):
    errors: list[ReadError] = []
    records = list(read_records(path, on_error=errors.append, **kw))
    return records, errors


# --------------------------------------------------------------------------- reading JSONL


BAD_UTF8 = b'{"instruction": "a"}\n{"instruction": "caf\xe9 menu"}\n{"instruction": "c"}\n'


def test_bad_utf8_line_is_reported_and_reading_goes_on(tmp_path):
    path = write(tmp_path, "in.jsonl", BAD_UTF8)
    records, errors = read_all(path)
    assert [r.line for r in records] == [1, 3]
    assert [r.fields["instruction"] for r in records] == ["a", "c"]
    assert len(errors) == 1
    assert errors[0].line == 2
    assert "UTF-8" in errors[0].error
    assert errors[0].raw == '{"instruction": "caf\ufffd menu"}'
    assert errors[0].source == str(path)


def test_bad_utf8_line_strict_raises_naming_path_and_line(tmp_path):
    path = write(tmp_path, "in.jsonl", BAD_UTF8)
    with pytest.raises(RecordError) as info:
        list(read_records(path, strict=True))
    assert info.value.line == 2
    assert str(path) in str(info.value)
    assert "line 2" in str(info.value)


def test_bom_and_blank_lines(tmp_path):
    data = b'\xef\xbb\xbf{"instruction": "Name a tree."}\n\n   \n{"instruction": "Name a river."}\n'
    path = write(tmp_path, "in.jsonl", data)
    records, errors = read_all(path)
    assert errors == []
    assert [list(r.fields) for r in records] == [["instruction"], ["instruction"]]
    assert [r.fields["instruction"] for r in records] == ["Name a tree.", "Name a river."]
    assert [r.line for r in records] == [1, 4]


def test_invalid_json_and_non_objects_are_reported(tmp_path):
    data = b'{"id": "a", "instruction": "x"}\n{"id": "b", \n[1, 2]\n"text"\n{"id": "c", "instruction": "y"}\r\n'
    path = write(tmp_path, "in.jsonl", data)
    records, errors = read_all(path)
    assert [r.id for r in records] == ["a", "c"]
    assert [e.line for e in errors] == [2, 3, 4]
    assert errors[0].error.startswith("invalid JSON")
    assert errors[1].error == "expected a JSON object, got an array"
    assert errors[2].error == "expected a JSON object, got a string"
    assert errors[1].raw == "[1, 2]"


def test_raw_is_truncated(tmp_path):
    path = write(tmp_path, "in.jsonl", b"{" + b"x" * 2000 + b"\n")
    _, errors = read_all(path)
    assert len(errors) == 1
    assert 500 <= len(errors[0].raw) <= 502


def test_no_on_error_logs_a_warning(tmp_path, caplog):
    path = write(tmp_path, "in.jsonl", BAD_UTF8)
    with caplog.at_level("WARNING", logger="instructmill.io"):
        records = list(read_records(path))
    assert len(records) == 2
    assert "line 2" in caplog.text


# --------------------------------------------------------------------------- ids


def expected_hash_id(fields: dict, line: int) -> str:
    canonical = json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return f"L{line}-{hashlib.sha1(canonical.encode('utf-8')).hexdigest()[:8]}"


def test_ids_from_field_or_content_hash_and_stable(tmp_path):
    rows = [{"id": "x1", "instruction": "a"}, {"id": 7, "instruction": "b"},
            {"id": "", "instruction": "ç"}, {"instruction": "d"}, {"id": None, "instruction": "e"}]
    path = write(tmp_path, "in.jsonl",
                 "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
    first, errors = read_all(path)
    assert errors == []
    assert [r.id for r in first] == ["x1", "7", expected_hash_id(rows[2], 3),
                                     expected_hash_id(rows[3], 4), expected_hash_id(rows[4], 5)]
    second, _ = read_all(path)
    assert [r.id for r in first] == [r.id for r in second]


def test_custom_id_field(tmp_path):
    path = write(tmp_path, "in.jsonl", b'{"uid": "q1", "id": "zz", "instruction": "a"}\n')
    records, _ = read_all(path, id_field="uid")
    assert records[0].id == "q1"


def test_duplicate_id_is_kept_under_a_derived_id(tmp_path):
    data = b'{"id": "x", "instruction": "a"}\n{"id": "y", "instruction": "b"}\n{"id": "x", "instruction": "c"}\n'
    path = write(tmp_path, "in.jsonl", data)
    records, errors = read_all(path)
    assert [(r.id, r.fields["instruction"], r.duplicate_of) for r in records] == [
        ("x", "a", None), ("y", "b", None), ("x#L3", "c", "x")]
    assert errors == []
    with pytest.raises(RecordError) as info:
        list(read_records(path, strict=True))
    assert info.value.line == 3 and info.value.record == "x"
    assert "first seen on line 1" in str(info.value)


def test_derived_id_steps_past_an_id_the_input_already_uses(tmp_path):
    rows = [{"id": "x"}, {"id": "x#L3"}, {"id": "x"}]
    path = write(tmp_path, "in.jsonl", "".join(json.dumps({**r, "instruction": "i"}) + "\n" for r in rows).encode())
    records, _ = read_all(path)
    assert [r.id for r in records] == ["x", "x#L3", "x#L3#2"]


# --------------------------------------------------------------------------- other formats


def test_csv_with_bom(tmp_path):
    path = write(tmp_path, "in.csv", b"\xef\xbb\xbfinstruction,input\nName a tree.,\n")
    records, errors = read_all(path)
    assert errors == []
    assert len(records) == 1
    assert records[0].fields == {"instruction": "Name a tree.", "input": ""}
    assert records[0].line == 2
    assert records[0].shape == "alpaca"


def test_csv_multiline_field_bad_rows_and_blank_lines(tmp_path):
    data = (b'id,instruction,output\n'
            b'a,"two\nlines",x\n'
            b'\n'
            b'b,too,many,fields\n'
            b'c,caf\xe9,z\n'
            b'd,ok,w\n')
    path = write(tmp_path, "in.csv", data)
    records, errors = read_all(path)
    assert [(r.id, r.line) for r in records] == [("a", 2), ("d", 7)]
    assert records[0].fields["instruction"] == "two\nlines"
    assert [(e.line, e.error) for e in errors] == [
        (5, "row has 4 fields, the header has 3"), (6, "invalid UTF-8")]
    assert errors[1].raw == "c,caf\ufffd,z"


def test_csv_repeated_header_raises(tmp_path):
    path = write(tmp_path, "in.csv", b"a,b,a\n1,2,3\n")
    with pytest.raises(RecordError, match="repeated column"):
        list(read_records(path))


def test_tsv(tmp_path):
    path = write(tmp_path, "in.tsv", b"instruction\toutput\nSay hi, please.\tHi.\n")
    records, _ = read_all(path)
    assert records[0].fields == {"instruction": "Say hi, please.", "output": "Hi."}


def test_json_array(tmp_path):
    data = json.dumps([{"instruction": "a", "output": "b"}, 5, {"instruction": "c", "input": ""}])
    path = write(tmp_path, "in.json", b"\xef\xbb\xbf" + data.encode())
    records, errors = read_all(path)
    assert [(r.line, r.fields["instruction"]) for r in records] == [(1, "a"), (3, "c")]
    assert [(e.line, e.error) for e in errors] == [(2, "expected a JSON object, got a number")]


def test_json_top_level_object_raises(tmp_path):
    path = write(tmp_path, "in.json", b'{"data": [1]}')
    with pytest.raises(RecordError, match="top-level JSON array"):
        list(read_records(path, format="json"))


def test_json_extension_holding_jsonl_is_read_as_jsonl(tmp_path):
    path = write(tmp_path, "in.json", b'{"instruction": "a"}\n{"instruction": "b"}\n')
    records, errors = read_all(path)
    assert errors == []
    assert [r.fields["instruction"] for r in records] == ["a", "b"]


def test_json_bad_syntax_raises_with_line(tmp_path):
    path = write(tmp_path, "in.json", b'[\n{"a": 1},\n{"a": }\n]')
    with pytest.raises(RecordError) as info:
        list(read_records(path))
    assert info.value.line == 3


def test_format_override_and_detection(tmp_path):
    path = write(tmp_path, "data.txt", b'{"instruction": "a"}\n')
    with pytest.raises(OptionError):
        read_records(path)
    assert [r.fields for r in read_records(path, format="ndjson")] == [{"instruction": "a"}]
    with pytest.raises(OptionError):
        read_records(path, format="xml")
    assert detect_format("a.NDJSON") == "jsonl"
    assert detect_format("a.csv.gz") == "csv"
    assert detect_format("-") == "jsonl"


def test_missing_file_is_an_option_error(tmp_path):
    with pytest.raises(OptionError, match="no such file"):
        read_records(tmp_path / "nope.jsonl")


def test_gzip(tmp_path):
    path = tmp_path / "in.jsonl.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(b'{"instruction": "a"}\n{"instruction": "b"}\n')
    assert [r.fields["instruction"] for r in read_records(path)] == ["a", "b"]


def test_stdin(monkeypatch):
    fake = io.TextIOWrapper(io.BytesIO(b'{"id": "s1", "instruction": "a"}\n\n{"id": "s2", "instruction": "b"}\n'))
    monkeypatch.setattr(sys, "stdin", fake)
    records = list(read_records("-"))
    assert [(r.id, r.line, r.source) for r in records] == [("s1", 1, "-"), ("s2", 3, "-")]
    assert not fake.buffer.closed


@pytest.mark.skipif(not SEED_TASKS.exists(), reason="seed tasks file not present")
def test_seed_tasks_file():
    records, errors = read_all(SEED_TASKS)
    assert errors == []
    assert len(records) == 175
    assert {r.shape for r in records} == {"seed"}
    assert records[0].id == "seed_task_0"
    first = json.loads(SEED_TASKS.read_text(encoding="utf-8").splitlines()[0])
    ex = to_example(records[0])
    assert ex.instruction == first["instruction"]
    assert ex.input == first["instances"][0]["input"]
    assert ex.output == first["instances"][0]["output"]


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("fields, shape", [
    ({"instruction": "a", "instances": [{"input": "", "output": "b"}]}, "seed"),
    ({"instruction": "a", "input": "b"}, "alpaca"),
    ({"instruction": "a", "output": "b"}, "alpaca"),
    ({"conversations": [{"from": "human", "value": "hi"}]}, "sharegpt"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "openai"),
    ({"text": "a"}, "table"),
    ({"instruction": "a"}, "table"),
    ({"conversations": "not a list"}, "sharegpt"),  # to_example then names the field
])
def test_detect_shape(fields, shape):
    assert detect_shape(fields) == shape


@pytest.mark.parametrize("fields, field, words", [
    ({"conversations": "human: hi"}, "conversations", "'conversations' is not a list of turns (got a string)"),
    ({"conversations": [{"from": "human", "value": None}, {"from": "gpt", "value": "A."}]},
     "conversations[0].value", "is not a string or a list of text parts"),
])
def test_conversation_shape_errors_name_the_field(fields, field, words):
    with pytest.raises(RecordError) as info:
        to_example(rec(fields))
    assert info.value.field == field and words in str(info.value)


def rec(fields, id="r1", line=4):
    return InputRecord(id=id, line=line, fields=fields, shape=detect_shape(fields), source="in.jsonl")


def test_to_example_alpaca_with_system_and_history():
    ex = to_example(rec({"instruction": "And 3+3?", "input": "", "output": "6", "system": "Be brief.",
                         "history": [["1+1?", "2"], ["2+2?", "4"]]}))
    assert ex == Example(instruction="And 3+3?", input="", output="6", system="Be brief.",
                         history=[("1+1?", "2"), ("2+2?", "4")])


def test_to_example_alpaca_null_optional_fields():
    ex = to_example(rec({"instruction": "a", "input": None, "output": "b"}))
    assert (ex.input, ex.output) == ("", "b")


def test_to_example_seed():
    ex = to_example(rec({"instruction": "Add.", "instances": [{"input": "1 2", "output": "3"},
                                                              {"input": "2 2", "output": "4"}]}))
    assert (ex.instruction, ex.input, ex.output) == ("Add.", "1 2", "3")


def test_to_example_sharegpt_multi_turn():
    fields = {"conversations": [
        {"from": "system", "value": "You are kind."},
        {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"},
        {"from": "human", "value": "Name a tree."}, {"from": "chatgpt", "value": "Oak."}]}
    ex = to_example(rec(fields))
    assert ex == Example(instruction="Name a tree.", input="", output="Oak.", system="You are kind.",
                         history=[("Hi", "Hello!")])


def test_to_example_openai_ending_with_user_and_text_parts():
    fields = {"messages": [
        {"role": "system", "content": "Sys."},
        {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
        {"role": "user", "content": [{"type": "text", "text": "Q"}, {"type": "text", "text": "2"}]}]}
    ex = to_example(rec(fields))
    assert ex == Example(instruction="Q2", input="", output="", system="Sys.", history=[("Q1", "A1")])


@pytest.mark.parametrize("fields, field, words", [
    ({"instruction": 5, "input": ""}, "instruction", "is not a string"),
    ({"instruction": "a", "output": ["x"]}, "output", "is not a string"),
    ({"instruction": "a", "output": "b", "history": [["only one"]]}, "history[0]", "pair"),
    ({"instruction": "a", "instances": []}, "instances", "empty"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role", "unsupported role"),
    ({"messages": [{"role": "system", "content": "x"}]}, "messages", "no user or assistant turn"),
    ({"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]},
     "conversations[1]", "alternate"),
    ({"conversations": [{"from": "human", "value": 3}]}, "conversations[0].value", "not a string"),
    ({"text": "a"}, "instruction", "no 'instruction'"),
])
def test_to_example_errors_name_record_line_and_field(fields, field, words):
    with pytest.raises(RecordError) as info:
        to_example(rec(fields, id="rec-9", line=12))
    err = info.value
    assert (err.record, err.line, err.field) == ("rec-9", 12, field)
    assert words in str(err)
    assert "rec-9" in str(err) and "line 12" in str(err)


@pytest.mark.parametrize("turns", [[], [{"from": "system", "value": "S"}], [{"from": "human", "value": " \n"}]])
def test_empty_conversations_get_their_own_status(turns):
    from instructmill.errors import EmptyRecordError

    with pytest.raises(EmptyRecordError) as info:
        to_example(rec({"conversations": turns}, id="e1", line=4))
    assert info.value.status == "empty_record"
    assert (info.value.record, info.value.line, info.value.field) == ("e1", 4, "conversations")


def test_leading_assistant_turns_are_kept_in_order_and_written_back():
    turns = [{"from": "gpt", "value": "A0"}, {"from": "gpt", "value": "A0b"}, {"from": "human", "value": "Q1"},
             {"from": "gpt", "value": "A1"}, {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}]
    ex = to_example(rec({"conversations": turns}))
    assert ex == Example(instruction="Q2", output="A2", history=[("Q1", "A1")], leading_assistant=["A0", "A0b"])
    assert example_fields(ex, "sharegpt") == {"conversations": turns}
    assert [m["role"] for m in example_fields(ex, "openai")["messages"]] == [
        "assistant", "assistant", "user", "assistant", "user", "assistant"]
    alpaca = example_fields(ex, "alpaca")
    assert alpaca["leading_assistant"] == ["A0", "A0b"]
    assert to_example(rec(alpaca)) == ex  # the Alpaca shape reads back the same example


def test_assistant_only_conversation_is_kept_without_a_made_up_user_turn():
    turns = [{"role": "system", "content": "S"}, {"role": "assistant", "content": "Only me."}]
    ex = to_example(rec({"messages": turns}))
    assert ex == Example(instruction="", system="S", leading_assistant=["Only me."])
    assert example_fields(ex, "openai") == {"messages": turns}


# --------------------------------------------------------------------------- writers


EX = Example(instruction="Translate.", input="Bom dia", output="Good morning", system="Be exact.",
             history=[("Hi", "Hello")])


def out(example=EX, **kw):
    return OutputRecord(id="r1", example=example, method="template",
                        settings={"model": "m", "compute_type": "int8"}, **kw)


def test_format_alpaca():
    d = format_record(out(), "alpaca")
    assert d == {"id": "r1", "instruction": "Translate.", "input": "Bom dia", "output": "Good morning",
                 "system": "Be exact.", "history": [["Hi", "Hello"]], "status": "ok",
                 "method": "template", "settings": {"model": "m", "compute_type": "int8"}}
    plain = format_record(out(Example(instruction="a", output="b"), extra={"detail": "x"}), "alpaca")
    assert "system" not in plain and "history" not in plain
    assert plain["extra"] == {"detail": "x"}


def test_format_sharegpt_and_openai():
    sg = format_record(out(), "sharegpt")
    assert sg["conversations"] == [
        {"from": "system", "value": "Be exact."}, {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Hello"}, {"from": "human", "value": "Translate.\n\nBom dia"},
        {"from": "gpt", "value": "Good morning"}]
    oa = format_record(out(Example(instruction="Q", output="A"), status="unchanged"), "openai")
    assert oa["messages"] == [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    assert oa["status"] == "unchanged" and oa["id"] == "r1" and "extra" not in oa
    with pytest.raises(OptionError):
        format_record(out(), "xml")


@pytest.mark.parametrize("fmt", ["sharegpt", "openai", "alpaca"])
def test_written_conversations_read_back(tmp_path, fmt):
    ex = Example(instruction="Name a tree.", output="Oak.", system="S", history=[("Hi", "Hello")])
    path = tmp_path / "o.jsonl"
    with JsonlWriter(path) as w:
        w.write(format_record(out(ex), fmt))
    (record,) = read_records(path)
    assert record.id == "r1"
    assert to_example(record) == ex


def test_jsonl_writer_append_utf8_and_surrogates(tmp_path):
    path = tmp_path / "o.jsonl"
    with JsonlWriter(path) as w:
        assert w.write_many([{"t": "café"}, {"t": "日本"}]) == 2
    with JsonlWriter(path, append=True, fsync=True) as w:
        w.write({"t": "\ud800"})
    data = path.read_bytes()
    assert data.count(b"\n") == 3 and data.endswith(b"\n")
    assert "café".encode() in data and "日本".encode() in data
    assert [json.loads(line) for line in data.decode("utf-8").splitlines()] == [
        {"t": "café"}, {"t": "日本"}, {"t": "\ud800"}]
    with JsonlWriter(path, append=False) as w:
        w.write({"n": 1})
    assert path.read_bytes() == b'{"n": 1}\n'
    assert w.closed
    with pytest.raises(ValueError):
        w.write({"n": 2})
