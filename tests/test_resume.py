"""Tests for instructmill.io.run / instructmill.io.resume: output, discards, errors, resume."""
from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from instructmill.errors import OptionError, ResumeError
from instructmill.io import ReadError, open_run, read_records, repair_jsonl, run_paths
from instructmill.records import Example, InputRecord, OutputRecord

SETTINGS = {"model": "tiny-marian", "compute_type": "int8", "pivot": ["de"]}


def make_input(folder: Path, n: int, bad_lines: tuple[int, ...] = ()) -> Path:
    """Input JSONL with ids r1..rn; lines listed in bad_lines are invalid JSON instead."""
    lines = []
    for i in range(1, n + 1):
        if i in bad_lines:
            lines.append('{"id": "broken", ')
        else:
            lines.append(json.dumps({"id": f"r{i}", "instruction": f"Task {i}.", "output": f"A{i}"}))
    path = folder / "in.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def process(record: InputRecord) -> OutputRecord:
    """A stand-in method: every third record is discarded as 'unchanged'."""
    number = int(record.id[1:])
    status = "unchanged" if number % 3 == 0 else "ok"
    ex = Example(instruction=record.fields["instruction"].upper(), output=record.fields["output"])
    return OutputRecord(id=record.id, example=ex, status=status, method="test",
                        settings=SETTINGS, extra={"detail": "same text"} if status != "ok" else {})


def lines_of(path: Path) -> list[dict]:
    if not path.exists():
        return []
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n")
    return [json.loads(line) for line in data.decode("utf-8").splitlines()]


def run_all(out: Path, inp: Path, batch: int = 2, resume: bool = False, limit: int | None = None):
    """Run the stand-in method over inp; stop (as if crashed) after `limit` records."""
    with open_run(out, input_path=inp, settings=SETTINGS, resume=resume) as run:
        todo = list(run.pending(read_records(inp, on_error=run.error)))
        if limit is not None:
            todo = todo[:limit]
        for start in range(0, len(todo), batch):
            run.write([process(r) for r in todo[start:start + batch]])
    return run


# --------------------------------------------------------------------------- exact cases


def test_torn_last_line_is_repaired_on_resume(tmp_path):
    inp = make_input(tmp_path, 5)
    out = tmp_path / "out.jsonl"
    # A first run wrote r1 and r2 and crashed while writing r3.
    run_all(out, inp, limit=2)
    assert [d["id"] for d in lines_of(out)] == ["r1", "r2"]
    with open(out, "ab") as fh:
        fh.write(b'{"id": "r3", "instr')
    run = run_all(out, inp, resume=True)
    ok = lines_of(out)
    discards = lines_of(tmp_path / "out.discards.jsonl")
    assert sorted(d["id"] for d in ok + discards) == ["r1", "r2", "r3", "r4", "r5"]
    assert [d["id"] for d in discards] == ["r3"]
    assert run.repaired == {str(out): 1}
    summary = run.summary()
    assert summary["read"] == 5 and summary["skipped_done"] == 2
    assert summary["by_status"] == {"ok": 2, "unchanged": 1}
    assert summary["total_ok"] == 4 and summary["total_other"] == 1


def test_torn_line_exact_output_case(tmp_path):
    """Output holds r1, r2 and a torn r3; resuming over r1..r5 gives 5 valid lines, once each."""
    inp = make_input(tmp_path, 5)
    out = tmp_path / "out.jsonl"
    with open_run(out, input_path=inp, settings=SETTINGS) as run:
        run.write([OutputRecord(id=f"r{i}", example=Example(instruction="x", output="y"))
                   for i in (1, 2)])
    with open(out, "ab") as fh:
        fh.write(b'{"id": "r3", "instr')
    with open_run(out, input_path=inp, settings=SETTINGS, resume=True) as run:
        todo = list(run.pending(read_records(inp)))
        assert [r.id for r in todo] == ["r3", "r4", "r5"]
        run.write([OutputRecord(id=r.id, example=Example(instruction="x", output="y")) for r in todo])
    ids = [d["id"] for d in lines_of(out)]
    assert ids == ["r1", "r2", "r3", "r4", "r5"]


def test_outputs_route_by_status_with_provenance(tmp_path):
    inp = make_input(tmp_path, 6, bad_lines=(4,))
    out = tmp_path / "out.jsonl"
    run = run_all(out, inp)
    ok = lines_of(out)
    discards = lines_of(tmp_path / "out.discards.jsonl")
    errors = lines_of(tmp_path / "out.errors.jsonl")
    assert [d["id"] for d in ok] == ["r1", "r2", "r5"]
    assert [d["id"] for d in discards] == ["r3", "r6"]
    assert all(d["status"] == "ok" and d["settings"] == SETTINGS and d["method"] == "test" for d in ok)
    assert discards[0]["status"] == "unchanged" and discards[0]["extra"] == {"detail": "same text"}
    assert ok[0]["instruction"] == "TASK 1." and ok[0]["output"] == "A1"
    assert errors == [{"line": 4, "error": errors[0]["error"], "raw": '{"id": "broken", ',
                       "source": str(inp)}]
    assert errors[0]["error"].startswith("invalid JSON")
    summary = run.summary()
    assert (summary["read"], summary["written_ok"], summary["written_other"], summary["errors"]) == (5, 3, 2, 1)
    state = json.loads((tmp_path / "out.run.json").read_text())
    assert state["input_sha256"] == hashlib.sha256(inp.read_bytes()).hexdigest()
    assert state["settings"] == SETTINGS
    assert state["counts"] == {"total_ok": 3, "total_other": 2, "total_errors": 1}


def test_resume_does_not_repeat_errors(tmp_path):
    inp = make_input(tmp_path, 6, bad_lines=(2, 5))
    out = tmp_path / "out.jsonl"
    run_all(out, inp, limit=1)
    run = run_all(out, inp, resume=True)
    errors = lines_of(tmp_path / "out.errors.jsonl")
    assert [e["line"] for e in errors] == [2, 5]
    assert run.summary()["errors"] == 0 and run.summary()["errors_skipped"] == 2
    ids = [d["id"] for d in lines_of(out) + lines_of(tmp_path / "out.discards.jsonl")]
    assert sorted(ids) == ["r1", "r3", "r4", "r6"]


# --------------------------------------------------------------------------- refusals


def test_changed_input_is_refused(tmp_path):
    inp = make_input(tmp_path, 3)
    out = tmp_path / "out.jsonl"
    run_all(out, inp, limit=1)
    inp.write_text(inp.read_text() + json.dumps({"id": "r9", "instruction": "x", "output": ""}) + "\n")
    before = out.read_bytes()
    with pytest.raises(ResumeError) as info:
        open_run(out, input_path=inp, settings=SETTINGS, resume=True)
    assert str(inp) in str(info.value) and "changed" in str(info.value)
    assert out.read_bytes() == before


def test_changed_settings_and_format_are_refused(tmp_path):
    inp = make_input(tmp_path, 3)
    out = tmp_path / "out.jsonl"
    run_all(out, inp, limit=1)
    changed = dict(SETTINGS, compute_type="float32")
    with pytest.raises(ResumeError, match=r'compute_type: "int8" -> "float32"'):
        open_run(out, input_path=inp, settings=changed, resume=True)
    with pytest.raises(ResumeError, match="format"):
        open_run(out, input_path=inp, settings=SETTINGS, resume=True, fmt="sharegpt")


def test_existing_files_need_resume_or_overwrite(tmp_path):
    inp = make_input(tmp_path, 3)
    out = tmp_path / "out.jsonl"
    run_all(out, inp)
    with pytest.raises(ResumeError) as info:
        open_run(out, input_path=inp, settings=SETTINGS)
    assert "--resume" in str(info.value) and "--overwrite" in str(info.value)
    with pytest.raises(OptionError):
        open_run(out, input_path=inp, settings=SETTINGS, resume=True, overwrite=True)
    # --overwrite starts again from nothing, even with other settings.
    with open_run(out, input_path=inp, settings={"other": 1}, overwrite=True) as run:
        assert len(run.done_ids) == 0
        assert not (tmp_path / "out.discards.jsonl").exists()
    assert out.read_bytes() == b""


def test_resume_without_state(tmp_path):
    inp = make_input(tmp_path, 3)
    out = tmp_path / "out.jsonl"
    # Nothing there yet: --resume starts a fresh run.
    run = run_all(out, inp, resume=True)
    assert run.resumed is False and run.summary()["written_ok"] == 2
    # Outputs without their state file cannot be checked.
    (tmp_path / "out.run.json").unlink()
    with pytest.raises(ResumeError, match="state"):
        open_run(out, input_path=inp, settings=SETTINGS, resume=True)


def test_output_must_not_be_the_input(tmp_path):
    inp = make_input(tmp_path, 1)
    with pytest.raises(OptionError, match="input"):
        open_run(inp, input_path=inp, settings=SETTINGS)


def test_never_writes_an_id_twice(tmp_path):
    inp = make_input(tmp_path, 3)
    out = tmp_path / "out.jsonl"
    rec = OutputRecord(id="r1", example=Example(instruction="x", output="y"))
    with open_run(out, input_path=inp, settings=SETTINGS) as run:
        run.write([rec])
        with pytest.raises(RuntimeError, match="twice"):
            run.write([rec])
        other = OutputRecord(id="r2", example=Example(instruction="x", output="y"))
        with pytest.raises(RuntimeError):
            run.write([other, other])
    assert [d["id"] for d in lines_of(out)] == ["r1"]
    with open_run(out, input_path=inp, settings=SETTINGS, resume=True) as run:
        with pytest.raises(RuntimeError):
            run.write([rec])
    assert [d["id"] for d in lines_of(out)] == ["r1"]


def test_run_paths():
    p = run_paths("data/out.jsonl")
    assert p.all() == ("data/out.jsonl", "data/out.discards.jsonl", "data/out.errors.jsonl",
                       "data/out.run.json")
    assert run_paths("res").discards == "res.discards.jsonl"


# --------------------------------------------------------------------------- repair


def test_repair_drops_every_invalid_tail_line(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": "b"}\n\n{"id": "c", "x\n\x00\x00\x00{"id": "d"}')
    result = repair_jsonl(str(path), "id")
    assert result.values == ["a", "b"]
    assert path.read_bytes() == b'{"id": "a"}\n{"id": "b"}\n\n'
    assert result.dropped_lines == 2


def test_repair_drops_complete_object_without_newline(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": "b"}')
    assert repair_jsonl(str(path), "id").values == ["a"]
    assert path.read_bytes() == b'{"id": "a"}\n'


def test_repair_refuses_damage_in_the_middle(tmp_path):
    path = tmp_path / "f.jsonl"
    data = b'{"id": "a"}\nnot json\n{"id": "c"}\n'
    path.write_bytes(data)
    with pytest.raises(ResumeError, match="line 2"):
        repair_jsonl(str(path), "id")
    assert path.read_bytes() == data


# --------------------------------------------------------------------------- property


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 25), data=st.data())
def test_crash_and_resume_keeps_every_id_once(n, data):
    k = data.draw(st.integers(0, n), label="records done before the crash")
    batch = data.draw(st.integers(1, 4), label="batch size")
    bad = data.draw(st.sets(st.integers(1, n), max_size=3), label="unreadable input lines")
    victim = data.draw(st.sampled_from(["out.jsonl", "out.discards.jsonl", "out.errors.jsonl"]))
    torn = data.draw(st.binary(min_size=1, max_size=30).filter(lambda b: b"\n" not in b),
                     label="torn tail")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        inp = make_input(folder, n, bad_lines=tuple(bad))
        out = folder / "out.jsonl"
        run_all(out, inp, batch=batch, limit=k)
        # The crash: a write cut short leaves a partial last line in one of the files.
        with open(folder / victim, "ab") as fh:
            fh.write(torn)
        run_all(out, inp, batch=batch, resume=True)
        written = [d["id"] for d in lines_of(out) + lines_of(folder / "out.discards.jsonl")]
        expected = [f"r{i}" for i in range(1, n + 1) if i not in bad]
        assert sorted(written) == sorted(expected)
        assert len(written) == len(set(written))
        assert all(d["status"] == "ok" for d in lines_of(out))
        assert sorted(e["line"] for e in lines_of(folder / "out.errors.jsonl")) == sorted(bad)


def test_overwrite_deletes_the_report_and_card_of_the_earlier_run(tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"id": "a", "instruction": "x"}\n')
    out = tmp_path / "o.jsonl"
    with open_run(out, input_path=inp, settings=SETTINGS) as run:
        run.write([OutputRecord("a", Example("x"))])
    stale = [tmp_path / "o.report.json", tmp_path / "o.report.png", tmp_path / "o.README.md"]
    for path in stale:
        path.write_text("from the earlier run")
    with open_run(out, input_path=inp, settings=SETTINGS, overwrite=True) as run:
        assert [p.exists() for p in stale] == [False, False, False]
        assert not out.exists() or out.read_text() == ""
