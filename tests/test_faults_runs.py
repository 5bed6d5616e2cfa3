"""Fault tests of a run's output: one writer per output, resume fingerprints, durable progress.

Each test runs the real CLI in a subprocess where the fault is about processes (a second run
beside a live one, a kill), and checks the files afterwards: every id exactly once, nothing lost.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from instructmill.errors import OptionError, ResumeError
from instructmill.io import open_run
from instructmill.io.lock import OutputLock, OutputLockedError, lock_path
from instructmill.io.resume import add_model_identities, model_identity
from instructmill.iterutil import ChunkSizer

N_ROWS = 150_000


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "instructmill", *args], capture_output=True, text=True,
                          timeout=300, **kw)


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "instructmill", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _rows(path: Path, n: int) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"r{i}", "name": f"n{i}", "instruction": f"Say {i} twice.",
                                 "input": "", "output": str(i)}) + "\n")
    return path


def _ids(*paths: Path) -> list[str]:
    out: list[str] = []
    for path in paths:
        if path.exists():
            out += [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines()]
    return out


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size > 0:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the first run ended early: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError(f"{path} was not written within {timeout} s")


# ------------------------------------------------------------------------------ lock

@pytest.mark.parametrize("mode", ["plain", "--resume", "--overwrite"])
def test_second_run_on_a_live_output_is_refused_and_the_file_stays_intact(tmp_path, mode):
    data = _rows(tmp_path / "in.jsonl", N_ROWS)
    out = tmp_path / "out" / "t.jsonl"
    first = _start("template", str(data), "-o", str(out), "-t", "alpaca")
    try:
        _wait_for(out, first)
        extra = [] if mode == "plain" else [mode]
        second = _cli("template", str(data), "-o", str(out), "-t", "alpaca", *extra)
        still_running = first.poll() is None
    finally:
        stdout, stderr = first.communicate(timeout=300)
    assert still_running, "the first run ended before the second started: the test proves nothing"
    assert second.returncode == 1
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, second.stderr
    assert f"pid {first.pid}" in lines[0] and "being written by another run" in lines[0]
    assert first.returncode == 0, stderr
    ids = _ids(out)
    assert len(ids) == N_ROWS and len(set(ids)) == N_ROWS
    assert not Path(lock_path(out)).exists()  # released at the end


def test_lock_is_released_by_a_kill_and_the_next_run_resumes(tmp_path):
    data = _rows(tmp_path / "in.jsonl", N_ROWS)
    out = tmp_path / "t.jsonl"
    first = _start("template", str(data), "-o", str(out), "-t", "alpaca")
    _wait_for(out, first)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert Path(lock_path(out)).exists()  # left behind by the kill, but not held
    done = _cli("template", str(data), "-o", str(out), "-t", "alpaca", "--resume")
    assert done.returncode == 0, done.stderr
    ids = _ids(out)
    assert sorted(ids) == sorted(f"r{i}" for i in range(N_ROWS))


def test_pipeline_refuses_a_sink_held_by_another_run(tmp_path):
    from instructmill.pipeline import Pipeline

    data = _rows(tmp_path / "in.jsonl", 10)
    out = tmp_path / "p.jsonl"
    spec = {"sources": {"rows": {"path": str(data)}},
            "stages": [{"method": "template", "template": "alpaca"}],
            "sinks": [{"path": str(out)}], "settings": {"progress": False, "report": False}}
    with OutputLock(out):
        with pytest.raises(OutputLockedError, match=f"pid {os.getpid()}"):
            Pipeline(spec).run()
        assert not out.exists()
    Pipeline(spec).run()  # free again
    assert len(_ids(out)) == 10
    assert not Path(lock_path(out)).exists()


def test_open_run_refuses_while_locked_and_releases_on_close(tmp_path):
    data = _rows(tmp_path / "in.jsonl", 3)
    out = tmp_path / "o.jsonl"
    with open_run(out, input_path=data, settings={}) as run:
        assert Path(lock_path(out)).read_text().startswith(f"pid {os.getpid()}")
        with pytest.raises(OutputLockedError):
            open_run(out, input_path=data, settings={}, resume=True)
        assert not run.closed
    with open_run(out, input_path=data, settings={}, resume=True):
        pass


# ------------------------------------------------------------------------------ fingerprint

def test_resume_refuses_a_changed_id_field(tmp_path):
    data = _rows(tmp_path / "in.jsonl", 20)
    out = tmp_path / "t.jsonl"
    assert _cli("template", str(data), "-o", str(out), "-t", "alpaca", "--limit", "10").returncode == 0
    changed = _cli("template", str(data), "-o", str(out), "-t", "alpaca", "--limit", "10", "--resume",
                   "--id-field", "name")
    assert changed.returncode == 1
    assert 'id_field: "id" -> "name"' in changed.stderr
    assert len(_ids(out)) == 10


def test_embedded_backend_refuses_decoding_options(tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"id": "a", "instruction": "Open the window."}) + "\n")
    result = _cli("backtranslate", str(data), "-o", str(tmp_path / "bt.jsonl"), "--beam-size", "2")
    assert result.returncode == 1
    assert "beam_size=2" in result.stderr and "greedily" in result.stderr
    assert "Traceback" not in result.stderr


def test_backtranslation_settings_fingerprint_decoding_options():
    from instructmill.engine.ctranslate2_backend import CTranslate2Options
    from instructmill.models.translation import decoding_settings

    assert decoding_settings(CTranslate2Options(beam_size=4))["beam_size"] == 4
    assert decoding_settings(None)["beam_size"] is None
    with pytest.raises(OptionError, match="length_penalty"):
        from instructmill.models.translation import load_direction

        load_direction("embedded", "en", "pt", ct2_options=CTranslate2Options(length_penalty=0.5))


def test_model_identity_changes_with_the_model_and_blocks_resume(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text('{"d_model": 64}')
    (model / "model.bin").write_bytes(b"\0" * 100)
    first = model_identity(model)
    assert first == model_identity(model) and len(first) == 16
    assert model_identity(tmp_path / "nope") is None
    settings = {"engine": {"model": str(model), "beam_size": 1}}
    enriched = add_model_identities(settings)
    assert enriched["engine"]["model_identity"] == first

    data = _rows(tmp_path / "in.jsonl", 3)
    out = tmp_path / "o.jsonl"
    with open_run(out, input_path=data, settings=settings):
        pass
    (model / "model.bin").write_bytes(b"\0" * 200)  # re-converted in place: same path, other weights
    assert model_identity(model) != first
    with pytest.raises(ResumeError, match="model_identity"):
        open_run(out, input_path=data, settings=settings, resume=True)


# ------------------------------------------------------------------------------ durable progress

class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_chunk_sizer_grows_on_fast_chunks_and_shrinks_on_slow_ones():
    clock = FakeClock()
    sizer = ChunkSizer(64, target_seconds=2.0, min_size=4, clock=clock)
    sizes = []
    items = iter(range(10_000))
    for chunk in sizer.chunks(items):
        sizes.append(len(chunk))
        clock.t += 0.01 * len(chunk)  # 10 ms per item: 64 items take 0.64 s < 1 s
        if len(sizes) == 6:
            break
    assert sizes == [4, 8, 16, 32, 64, 64]
    slow = ChunkSizer(64, target_seconds=2.0, min_size=4, clock=clock)
    slow.size = 64
    got = []
    for chunk in slow.chunks(range(200)):
        got.append(len(chunk))
        clock.t += 1.0 * len(chunk)  # 1 s per item: every chunk over 4 s
    assert got[:4] == [64, 32, 16, 8] and set(got[4:-1]) == {4}
    assert sum(got) == 200  # every item exactly once


def test_chunk_sizer_keeps_every_item_in_order():
    clock = FakeClock()
    out = []
    for chunk in ChunkSizer(7, clock=clock).chunks(range(103)):
        out += chunk
        clock.t += 0.5
    assert out == list(range(103))


def test_heartbeat_prints_lines_when_stderr_is_not_a_terminal(tmp_path):
    import io

    from instructmill.progress import Heartbeat

    stream = io.StringIO()
    with Heartbeat(None, lambda: "3 records read", interval=0.05, line_seconds=0.2, stream=stream):
        time.sleep(0.7)
    lines = stream.getvalue().splitlines()
    assert 2 <= len(lines) <= 4
    assert all(line.startswith("instructmill: 3 records read, ") and line.endswith(" s") for line in lines)


# ------------------------------------------------------------------------------ bounded bookkeeping

def test_idset_is_a_set_with_optional_values():
    from instructmill.io.idset import IdSet

    for with_values in (False, True):
        ids = IdSet(with_values=with_values)
        for i in range(50_000):
            assert ids.add(f"L{i}-{i * 7919 % 65536:04x}", i)
        assert len(ids) == 50_000
        assert not ids.add(f"L5-{5 * 7919 % 65536:04x}", 1)  # already there: kept as it was
        assert ids.get("L17-" + f"{17 * 7919 % 65536:04x}") == (17 if with_values else 0)
        assert "L49999-" + f"{49999 * 7919 % 65536:04x}" in ids
        assert "L50000-0000" not in ids and ids.get("nope") is None and 5 not in ids
        assert ids.nbytes <= (32 if with_values else 16) * 50_000


def test_reader_keeps_duplicates_under_derived_ids(tmp_path):
    from instructmill.io import read_records

    path = tmp_path / "d.jsonl"
    rows = [{"id": "a"}, {"id": "b"}, {"id": "a"}, {"id": "c"}, {"id": "b"}]
    path.write_text("".join(json.dumps({**r, "instruction": "x"}) + "\n" for r in rows))
    errors = []
    got = [(r.id, r.duplicate_of) for r in read_records(path, on_error=errors.append)]
    assert got == [("a", None), ("b", None), ("a#L3", "a"), ("c", None), ("b#L5", "b")]
    assert errors == []


def test_run_guards_repeats_within_the_recent_window(tmp_path):
    from instructmill.io import run as run_module
    from instructmill.records import Example, OutputRecord

    data = _rows(tmp_path / "in.jsonl", 3)
    rec = lambda i: OutputRecord(id=f"x{i}", example=Example(instruction="q", output="a"))  # noqa: E731
    with open_run(tmp_path / "o.jsonl", input_path=data, settings={}) as run:
        for i in range(run_module.RECENT_IDS):
            run.write([rec(i)])
        with pytest.raises(RuntimeError, match="twice"):
            run.write([rec(run_module.RECENT_IDS - 1)])
    assert len(_ids(tmp_path / "o.jsonl")) == run_module.RECENT_IDS


def test_pipeline_source_truncated_gzip_keeps_everything_read(tmp_path):
    import gzip

    from instructmill.pipeline import Pipeline, PipelineError

    raw = "".join(json.dumps({"id": f"r{i}", "instruction": f"Say {i} twice please."}) + "\n" for i in range(3000))
    whole = gzip.compress(raw.encode())
    data = tmp_path / "in.jsonl.gz"
    data.write_bytes(whole[: len(whole) * 2 // 3])  # cut: the stream ends early
    out = tmp_path / "p.jsonl"
    spec = {"sources": {"rows": {"path": str(data)}}, "stages": [{"method": "template", "template": "alpaca"}],
            "sinks": [{"path": str(out)}], "settings": {"progress": False, "report": False}}
    with pytest.raises(PipelineError, match="truncated.*everything read before it was processed"):
        Pipeline(spec).run()
    ids = _ids(out, tmp_path / "p.discards.jsonl")
    readable = gzip.GzipFile(fileobj=__import__("io").BytesIO(data.read_bytes()))
    read_lines = 0
    try:
        for _ in readable:
            read_lines += 1
    except EOFError:
        pass
    assert len(ids) == len(set(ids)) and len(ids) >= read_lines - 1 and len(ids) > 64


def test_writer_streams_huge_records_byte_identical(tmp_path):
    from instructmill.io.writers import STREAM_CHARS, JsonlWriter, dumps_line

    small = {"id": "s", "text": "short"}
    huge = {"id": "h", "text": "a\tb\"c\\é😀" * (STREAM_CHARS // 6), "extra": {"n": [1, None, 2.5]}}
    odd = {"id": "o", "text": "x\udc80y" * (STREAM_CHARS // 3)}  # a lone surrogate: escaped, reads back the same
    path = tmp_path / "o.jsonl"
    with JsonlWriter(path) as writer:
        assert writer.write_many([small, huge, small, odd]) == 4
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(lines) == 4
    assert lines[0] == lines[2] == dumps_line(small)
    assert lines[1] == dumps_line(huge)  # streamed, byte for byte what json.dumps writes
    assert json.loads(lines[1]) == huge and json.loads(lines[3]) == odd
