"""Fault tests: hostile or broken inputs end in one clear line within seconds, and nothing is lost.

Each fault is run through the real command line in a subprocess with a timeout, as a user would:
a hang fails the test by its timeout, a traceback by the one-line check. Where the run can go on
(a bad record), the records before and after it are in the output and ``--resume`` neither
loses nor doubles anything; where it cannot (a bad file), the exit code is non-zero.
"""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from instructmill.errors import OptionError, RecordError
from instructmill.io.readers import (MAX_JSON_DEPTH, InputFileError, ReadError, content_id,
                                     read_records)
from instructmill.io.resume import file_sha256
from instructmill.methods.template import (STATUS_TEMPLATE_ERROR, Template, TemplateFiller,
                                           load_template)
from instructmill.pipeline.spec import load_spec
from instructmill.pipeline.specfile import PipelineSpecError
from instructmill.records import InputRecord

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: object, cwd: Path, timeout: float = 60) -> tuple[int, str, float]:
    """Run ``python -m instructmill ARGS`` in ``cwd``; returns (exit code, stderr, seconds)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "instructmill", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
    return proc.returncode, proc.stderr, time.monotonic() - start


def one_error_line(stderr: str) -> str:
    """The single ``Error: ...`` line of a failed run (fails on a traceback or several lines)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    return lines[0]


def row(i: int) -> dict:
    return {"id": f"r{i}", "instruction": f"Say {i}.", "input": "", "output": str(i)}


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def output_ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines()]


def billion_laughs(levels: int = 9) -> str:
    """The classic alias bomb: each level is 9 aliases of the one before (9**levels leaves)."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    names = "abcdefghijklmnopqrstuvwxyz"
    for prev, name in zip(names, names[1:levels]):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ YAML


def test_alias_bomb_pipeline_file_is_one_line(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("sources: {rows: rows.jsonl}\nsinks: [out.jsonl]\n" + billion_laughs(), encoding="utf-8")
    assert bomb.stat().st_size < 700  # the 610-byte file of the issue, give or take
    start = time.monotonic()
    with pytest.raises(PipelineSpecError, match="aliases expand to more than 100000 nodes"):
        load_spec(bomb)
    assert time.monotonic() - start < 2
    rc, err, seconds = run_cli("generate", bomb, cwd=tmp_path)
    line = one_error_line(err)
    assert rc != 0 and seconds < 30
    assert "bomb.yaml:" in line and "aliases expand to more than 100000 nodes" in line


def test_alias_bomb_template_file_is_one_line(tmp_path):
    (tmp_path / "bomb.yaml").write_text(billion_laughs() + "instruction: hi\n", encoding="utf-8")
    write_jsonl(tmp_path / "in.jsonl", [json.dumps(row(1))])
    with pytest.raises(OptionError, match="aliases expand to more than"):
        load_template(tmp_path / "bomb.yaml")
    rc, err, seconds = run_cli("template", "in.jsonl", "-o", "out/x.jsonl", "-t", "bomb.yaml", cwd=tmp_path)
    assert rc != 0 and "aliases expand to more than 100000 nodes" in one_error_line(err)


def test_moderate_aliases_still_load():
    # Aliases as people use them (shared settings, merge keys) are not refused.
    text = ("defaults: &d {template: alpaca}\nsources: {rows: rows.jsonl}\n"
            "stages:\n  - {<<: *d, name: a, method: template}\n  - {<<: *d, name: b, method: template}\n"
            "sinks: [out.jsonl]\n")
    from instructmill.yamlload import compose_bounded

    data, _ = compose_bounded(text)
    assert [s["template"] for s in data["stages"]] == ["alpaca", "alpaca"]


@pytest.mark.parametrize("kind", ["pipeline", "template"])
def test_deep_yaml_is_one_line(tmp_path, kind):
    deep = "[" * 100_000 + "]" * 100_000
    write_jsonl(tmp_path / "in.jsonl", [json.dumps(row(1))])
    if kind == "pipeline":
        (tmp_path / "deep.yaml").write_text(f"sources: {deep}\n", encoding="utf-8")
        args = ("generate", "deep.yaml")
    else:
        (tmp_path / "deep.yaml").write_text(f"instruction: {deep}\n", encoding="utf-8")
        args = ("template", "in.jsonl", "-o", "out/x.jsonl", "-t", "deep.yaml")
    rc, err, seconds = run_cli(*args, cwd=tmp_path)
    line = one_error_line(err)
    assert rc != 0 and seconds < 30 and "nested deeper than 64 levels" in line


def test_recursive_alias_and_deep_toml_are_one_line(tmp_path):
    (tmp_path / "rec.yaml").write_text("sources: &s {rows: *s}\nsinks: [o.jsonl]\n", encoding="utf-8")
    with pytest.raises(PipelineSpecError, match=r"rec.yaml:1: invalid YAML: alias \*s refers to its own anchor"):
        load_spec(tmp_path / "rec.yaml")
    (tmp_path / "deep.toml").write_text("sources = " + "[" * 50_000 + "]" * 50_000 + "\n", encoding="utf-8")
    with pytest.raises(PipelineSpecError, match="nested too deeply"):
        load_spec(tmp_path / "deep.toml")


def test_yaml_limits_are_exact():
    from instructmill.yamlload import MAX_DEPTH, YAMLLimitError, compose_bounded

    # Depth: MAX_DEPTH levels (scalar included) load, one more is refused.
    ok = "[" * (MAX_DEPTH - 1) + "1" + "]" * (MAX_DEPTH - 1)
    assert compose_bounded(ok)[0] is not None
    with pytest.raises(YAMLLimitError, match="nested deeper"):
        compose_bounded("[" + ok + "]")
    # Nodes: 3 levels of 9 aliases = 1 + 9 + 81 + 729 + ... counted, as the walkers would see.
    from instructmill.yamlload import BoundedSafeLoader

    class Small(BoundedSafeLoader):
        max_nodes = 100

    loader = Small(billion_laughs(2))  # a (10 nodes) + b (1 + 9 * 10 = 91) + keys -> over 100
    with pytest.raises(YAMLLimitError, match="more than 100 nodes"):
        loader.get_single_node()
    loader.dispose()


# ------------------------------------------------------------------------------------ JSON


def test_deep_json_record_goes_to_errors_and_the_run_goes_on(tmp_path):
    deep = '{"a":' + "[" * 100_000 + "]" * 100_000 + "}"
    write_jsonl(tmp_path / "in.jsonl", [json.dumps(row(1)), deep, json.dumps(row(3))])
    rc, err, seconds = run_cli("template", "in.jsonl", "-o", "out/x.jsonl", "-t", "alpaca", cwd=tmp_path)
    assert rc == 0 and "Traceback" not in err and seconds < 30, err
    assert output_ids(tmp_path / "out/x.jsonl") == ["r1", "r3"]
    errors = [json.loads(line) for line in (tmp_path / "out/x.errors.jsonl").read_text().splitlines()]
    assert [(e["line"], e["error"]) for e in errors] == [(2, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")]
    assert len(errors[0]["raw"]) <= 501  # an excerpt, not the whole line

    # A crash after record 1 (output cut back to it, errors file lost): resume finishes the rest once.
    out = tmp_path / "out/x.jsonl"
    out.write_text(out.read_text().splitlines(keepends=True)[0])
    (tmp_path / "out/x.errors.jsonl").unlink()
    rc, err, _ = run_cli("template", "in.jsonl", "-o", "out/x.jsonl", "-t", "alpaca", "--resume", cwd=tmp_path)
    assert rc == 0 and "Traceback" not in err, err
    assert output_ids(out) == ["r1", "r3"]
    assert len((tmp_path / "out/x.errors.jsonl").read_text().splitlines()) == 1


def test_json_depth_limit_is_exact_and_ignores_strings(tmp_path):
    def nested(depth: int) -> str:  # an object (1 level) holding depth - 1 arrays
        return '{"a":' + "[" * (depth - 1) + "]" * (depth - 1) + "}"

    tricky = json.dumps({"text": "[" * 1000 + '\\"{' * 500})  # brackets and escapes in a string
    unclosed = '{"a":' + "[" * 1000
    path = write_jsonl(tmp_path / "in.jsonl", [nested(MAX_JSON_DEPTH), nested(MAX_JSON_DEPTH + 1), tricky, unclosed])
    errors: list[ReadError] = []
    records = list(read_records(path, on_error=errors.append))
    assert [r.line for r in records] == [1, 3]
    assert records[1].fields["text"].startswith("[[[")
    assert [(e.line, e.error) for e in errors] == [(2, f"JSON nested deeper than {MAX_JSON_DEPTH} levels"),
                                                   (4, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")]


def test_deep_json_array_file_is_one_record_error(tmp_path):
    path = tmp_path / "in.json"
    path.write_text("[" + json.dumps(row(1)) + ',{"a":' + "[" * 5000 + "]" * 5000 + "}]", encoding="utf-8")
    with pytest.raises(RecordError, match=f"JSON nested deeper than {MAX_JSON_DEPTH} levels"):
        list(read_records(path))


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(max_size=5), st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12), max_size=5))
def test_streamed_content_id_matches_the_one_shot_id(fields):
    # A huge record is hashed piece by piece; its id must not depend on the record's size.
    assert content_id(fields, 7, size_hint=1 << 30) == content_id(fields, 7)


# ------------------------------------------------------------------------------- templates

LOOPS = "{% for a in range(n) %}{% for b in range(n) %}{% endfor %}{% endfor %}{{ instruction }}"


def rec(i: int, **fields) -> InputRecord:
    return InputRecord(id=f"r{i}", line=i, fields=fields, source="in.jsonl")


def test_nested_loops_that_print_nothing_stop_at_the_time_limit():
    filler = TemplateFiller(Template(name="loops", instruction=LOOPS), max_seconds=0.5)
    start = time.monotonic()
    outs = list(filler.fill([rec(1, instruction="a", n=2), rec(2, instruction="b", n=100_000),
                             rec(3, instruction="c", n=3)]))
    assert time.monotonic() - start < 5
    assert [(o.id, o.status, o.example.instruction) for o in outs] == [
        ("r1", "ok", "a"), ("r2", STATUS_TEMPLATE_ERROR, ""), ("r3", "ok", "c")]
    assert "rendering took longer than 0.5 s" in outs[1].extra["error"]
    assert "in.jsonl, line 2, record 'r2'" in outs[1].extra["error"]


@pytest.mark.parametrize("source, reason", [
    ("{% for a in range(100000) %}{% for b in range(100000) %}xxxxxxxxxx{% endfor %}{% endfor %}",
     "the output has grown to a text of"),
    ("{{ 'x' * 2000000000 }}", "'*' would build a value of 2000000000"),
    ("{{ 'x' * n * n }}", "'*' would build a value of"),
    ("{{ 10 ** 2000000000 }}", "'**' would build a number of"),
    ("{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
     "'~' would build a text of"),
    ("{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}{% endfor %}x",
     "'+' would build a value of"),
    ("{{ (range(100000)|list) * 100000 }}", "'*' would build a value of"),
    ("{{ 'x'|center(n * 1000) }}", "filter 'center' would build a text of"),
    ("{{ 'x'|center(2000000000) }}", "filter 'center' would build a text of 2000000000"),
    ("{{ ('a' * 100)|indent(2000000000, first=True) }}", "filter 'indent' would build a text of"),
    ("{{ ('a' * 1000)|replace('a', 'b' * 1000) }}", "filter 'replace' would build a text of"),
    ("{{ 'x'.ljust(2000000000) }}", "'.ljust()' would build a text of 2000000000"),
    ("{{ ('a' * 1000).replace('a', 'b' * 1000) }}", "'.replace()' would build a text of"),
    ("{{ range(100000)|join(',' * 100) }}", "filter 'join' built a value of"),
    ("{% macro m(k) %}{% for i in range(k) %}yyyyyyyyyy{% endfor %}{% endmacro %}{{ m(n * 100) }}",
     "a call returned a value of"),
], ids=["output", "str-mul-const", "str-mul-row", "pow", "concat-doubling", "plus-doubling", "list-mul",
        "center-row", "center-const", "indent", "replace-filter", "ljust", "replace-method", "join", "macro"])
def test_values_and_output_past_the_size_limit_are_refused(source, reason):
    # Template() compiles the source: a constant must not be folded (2 GB) at compile time either.
    filler = TemplateFiller(Template(name="big", instruction=source), max_chars=500_000, max_seconds=10)
    start = time.monotonic()
    outs = list(filler.fill([rec(1, n=1000, instruction="i"), rec(2, n=1000, instruction="i")]))
    assert time.monotonic() - start < 10
    assert [o.status for o in outs] == [STATUS_TEMPLATE_ERROR] * 2
    assert reason in outs[0].extra["error"] and "over the limit of 500000" in outs[0].extra["error"]


def test_limits_leave_ordinary_templates_alone():
    source = ("{% for t in turns %}{{ loop.index }}/{{ loop.length }}:{{ t ~ '!' }}{% if not loop.last %} {% endif %}"
              "{% endfor %}{{ ' ' + 'x' * 3 }}{{ '%s-%d' % ('a', 2) }}{{ 2 ** 10 }}{{ name|upper }}"
              "{{ name|center(5) }}|{{ 'a\nb'|indent(2, first=True) }}|{{ name.rjust(3, '.') }}"
              "{{ 'aXa'|replace('a', 'bb') }}{{ 'aXa'.replace('X', '') }}")
    out = TemplateFiller(Template(name="t", instruction=source)).render(
        rec(1, turns=["a", "b", "c"], name="z"))
    assert out.example.instruction == "1/3:a! 2/3:b! 3/3:c! xxxa-21024Z  z  |  a\n  b|..zbbXbbaa"


def test_cli_template_with_a_2gb_constant_ends_in_seconds(tmp_path):
    (tmp_path / "big.yaml").write_text("instruction: \"{{ 'x' * 2000000000 }}\"\n", encoding="utf-8")
    write_jsonl(tmp_path / "in.jsonl", [json.dumps(row(i)) for i in (1, 2)])
    rc, err, seconds = run_cli("template", "in.jsonl", "-o", "out/x.jsonl", "-t", "big.yaml", cwd=tmp_path)
    assert rc == 0 and "Traceback" not in err and "MemoryError" not in err and seconds < 30, err
    discards = [json.loads(line) for line in (tmp_path / "out/x.discards.jsonl").read_text().splitlines()]
    assert [(d["id"], d["status"]) for d in discards] == [("r1", "template_error"), ("r2", "template_error")]


# ---------------------------------------------------------------------------------- FIFOs


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "fifo.jsonl"
    os.mkfifo(path)
    return path


def test_fifo_input_is_refused_without_blocking(tmp_path, fifo):
    with pytest.raises(OptionError, match=r"is a FIFO \(named pipe\), not a regular file; .*give -"):
        read_records(fifo)
    with pytest.raises(OptionError, match="is a FIFO"):
        file_sha256(fifo)
    rc, err, seconds = run_cli("template", fifo.name, "-o", "out/x.jsonl", "-t", "alpaca", cwd=tmp_path, timeout=30)
    assert rc != 0 and "fifo.jsonl" in one_error_line(err) and "FIFO" in err


def test_fifo_pipeline_and_template_files_are_refused(tmp_path):
    os.mkfifo(tmp_path / "p.yaml")
    os.mkfifo(tmp_path / "t.yaml")
    write_jsonl(tmp_path / "in.jsonl", [json.dumps(row(1))])
    rc, err, _ = run_cli("generate", "p.yaml", cwd=tmp_path, timeout=30)
    assert rc != 0 and "not a regular file" in one_error_line(err)
    rc, err, _ = run_cli("template", "in.jsonl", "-o", "out/x.jsonl", "-t", "t.yaml", cwd=tmp_path, timeout=30)
    assert rc != 0 and "not a regular file" in one_error_line(err)


def test_stdin_still_reads(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run([sys.executable, "-m", "instructmill", "template", "-", "-o", "out/x.jsonl", "-t", "alpaca"],
                          input="\n".join(json.dumps(row(i)) for i in (1, 2)) + "\n", cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert output_ids(tmp_path / "out/x.jsonl") == ["r1", "r2"]


# ----------------------------------------------------------------------------------- gzip


def test_not_gzip_named_gz_is_one_line(tmp_path):
    write_jsonl(tmp_path / "in.jsonl.gz", [json.dumps(row(1))])
    with pytest.raises(InputFileError, match=r"in.jsonl.gz: not a gzip file.*0 records read"):
        list(read_records(tmp_path / "in.jsonl.gz"))
    rc, err, _ = run_cli("template", "in.jsonl.gz", "-o", "out/x.jsonl", "-t", "alpaca", cwd=tmp_path)
    assert rc != 0 and "not a gzip file" in one_error_line(err)


def test_truncated_gzip_keeps_what_was_read_and_resumes(tmp_path):
    rows = [json.dumps(row(i)) for i in range(1, 3001)]
    data = gzip.compress(("\n".join(rows) + "\n").encode())
    (tmp_path / "in.jsonl.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputFileError) as info:
        list(read_records(tmp_path / "in.jsonl.gz"))
    read = info.value.records
    assert 0 < read < 3000 and info.value.line == read
    rc, err, _ = run_cli("template", "in.jsonl.gz", "-o", "out/x.jsonl", "-t", "alpaca", cwd=tmp_path)
    line = one_error_line(err)
    assert rc != 0 and "in.jsonl.gz: the gzip data ends early: the file is truncated" in line
    assert f"after line {read}; {read} records read" in line
    assert output_ids(tmp_path / "out/x.jsonl") == [f"r{i}" for i in range(1, read + 1)]
    # Resume: nothing doubled, the same one line.
    rc, err, _ = run_cli("template", "in.jsonl.gz", "-o", "out/x.jsonl", "-t", "alpaca", "--resume", cwd=tmp_path)
    assert rc != 0 and "the file is truncated" in one_error_line(err)
    assert output_ids(tmp_path / "out/x.jsonl") == [f"r{i}" for i in range(1, read + 1)]


def test_errors_file_failure_is_not_blamed_on_the_input(tmp_path):
    # Only the input's own read errors become InputFileError; on_error's OSError passes through.
    path = write_jsonl(tmp_path / "in.jsonl", ["not json", json.dumps(row(2))])

    def failing(err):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        list(read_records(path, on_error=failing))


# --------------------------------------------------------------------------------- memory


def test_reading_a_huge_line_costs_at_most_three_times_its_size(tmp_path):
    chars = 4_000_000
    path = tmp_path / "huge.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(row(1)) + "\n")
        fh.write('{"instruction": "Summarize.", "input": "' + ("lorem ipsum " * (chars // 12 + 1))[:chars] + '"}\n')
        fh.write(json.dumps(row(3)) + "\n")
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        records = list(read_records(path))
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert len(records) == 3 and len(records[1].fields["input"]) == chars
    # The record itself is one copy; reading may hold at most two more at once.
    assert peak <= 3 * chars, peak


def test_mem_script_reports_figures(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "mem_huge_line.py"), "--chars", "1000000",
                           "--stage", "read"], capture_output=True, text=True, timeout=120, check=True)
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["stage"] == "read" and figures["chars"] == 1_000_000
    assert figures["peak_mib"] >= figures["baseline_mib"] > 0
