"""Kill a pipeline run with SIGKILL at several points, resume it, and get the uninterrupted run's files.

The pipeline has an LLM generator stage (Self-Instruct), an LLM map stage (respond, two windows in
flight), back-translation with two pivots (fan-out), a filter, dedup (state rebuilt on resume) and
two sinks; its engines are slow fakes loaded from the pipeline file (``backend: python``), so
every kill point is reachable. Each run is ``instructmill generate`` in a subprocess.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
SEEDS = TESTS.parent / "examples" / "seed_tasks_sample.jsonl"

PIPELINE = """\
settings: {seed: 11, queue_size: 8, flush_seconds: 0.05}
engines:
  llm: {type: llm, backend: python, factory: "pipeline_fakes:llm", params: {delay: 0.01}}
  mt: {type: translation, backend: python, factory: "pipeline_fakes:mt", pivots: [xx, yy],
       params: {delay: 0.002}}
sources:
  seeds: {path: seeds.jsonl}
stages:
  - {name: generate, method: self-instruct, engine: llm, num_instructions: 45, prompts_per_round: 3,
     num_seed_in_prompt: 3, instances: none, sampling: {n: 2, temperature: 0.7}}
  - {name: answer, method: respond, engine: llm, records_per_batch: 4, concurrency: 2}
  - {name: paraphrase, method: back-translate, engine: mt, fields: [instruction, output], chunk_size: 8,
     language_check: false, meaning_check: false}
  - {name: rules, method: filter, blacklist: [owls]}
  - {method: dedup, threshold: 0.7}
sinks:
  - {path: out/data.jsonl, format: alpaca}
  - {path: out/answers.jsonl, format: sharegpt, input: answer}
"""

OUTPUTS = ["out/data.jsonl", "out/data.discards.jsonl", "out/answers.jsonl", "out/answers.discards.jsonl"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["INSTRUCTMILL_ALLOW_TEST_BACKENDS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH", "")) if p)
    return env


def _command(*flags: str) -> list[str]:
    return [sys.executable, "-c", "from instructmill.cli import main; main()", "generate", "p.yaml",
            "--no-progress", *flags]


def _setup(folder: Path) -> Path:
    folder.mkdir()
    (folder / "p.yaml").write_text(PIPELINE, encoding="utf-8")
    shutil.copy(SEEDS, folder / "seeds.jsonl")
    return folder


def _lines(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            return sum(1 for line in fh if line.endswith(b"\n"))
    except FileNotFoundError:
        return 0


def _run_until(folder: Path, flags: tuple[str, ...], condition) -> bool:
    """Start a run; SIGKILL it as soon as ``condition(folder)`` holds. Returns whether it was killed."""
    proc = subprocess.Popen(_command(*flags), cwd=folder, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if condition(folder):
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                return True
            time.sleep(0.005)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err.decode()
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    folder = _setup(tmp_path_factory.mktemp("resume") / "baseline")
    done = subprocess.run(_command(), cwd=folder, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return folder


def test_uninterrupted_run_is_deterministic_and_complete(baseline, tmp_path):
    data = _records(baseline / "out/data.jsonl")
    discards = _records(baseline / "out/data.discards.jsonl")
    answers = _records(baseline / "out/answers.jsonl")
    # enough of every kind of record for the kill points below to fall mid-run
    assert len(data) >= 30 and len(discards) >= 30 and len(answers) >= 45
    statuses = {r["status"] for r in discards}
    assert {"blacklisted", "duplicate"} <= statuses
    ids = [r["id"] for r in data + discards]
    assert len(ids) == len(set(ids))
    # a second uninterrupted run gives the same bytes (same seeds)
    again = _setup(tmp_path / "again")
    done = subprocess.run(_command(), cwd=again, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for name in OUTPUTS:
        assert (again / name).read_bytes() == (baseline / name).read_bytes(), name


def _torn(path: Path, text: str) -> None:
    with open(path, "ab") as fh:
        fh.write(text.encode())


def test_sigkill_at_several_points_then_resume_gives_the_same_files(baseline, tmp_path):
    folder = _setup(tmp_path / "killed")
    data, answers = folder / "out/data.jsonl", folder / "out/answers.jsonl"
    respond_ckpt = folder / "out/data.pipeline/stage-answer.jsonl"
    total = _lines(baseline / "out/data.jsonl")
    kill_points = [
        ("before any record is written", lambda f: (f / "out/data.pipeline/state.json").exists()),
        ("mid-stage: answers checkpointed, few written", lambda f: _lines(respond_ckpt) >= 3),
        ("after a few records written", lambda f: _lines(data) >= 5),
        ("mid-run", lambda f: _lines(data) >= total // 2),
        ("near the end", lambda f: _lines(data) >= total - 5),
    ]
    killed = []
    first = True
    for label, condition in kill_points:
        flags = () if first else ("--resume",)
        if _run_until(folder, flags, condition):
            killed.append(label)
        first = False
        if label == "after a few records written" and _lines(data):
            # a kill during a write leaves a torn last line; resume must cut it off
            _torn(data, '{"id": "si-9-9')
            _torn(respond_ckpt, '{"in": "si-')
    assert len(killed) >= 4, killed  # the kill points were reached
    done = subprocess.run(_command("--resume"), cwd=folder, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for name in OUTPUTS:
        assert (folder / name).read_bytes() == (baseline / name).read_bytes(), name
    ids = [r["id"] for r in _records(data) + _records(folder / "out/data.discards.jsonl")]
    assert len(ids) == len(set(ids))
    assert _lines(answers) == _lines(baseline / "out/answers.jsonl")
    report = json.loads((folder / "out/data.report.json").read_text())
    # (a kill during start-up, before the state is read, does not count as a session)
    assert report["resumed"] is True and 3 <= report["sessions"] <= len(kill_points) + 1
    base_report = json.loads((baseline / "out/data.report.json").read_text())
    for stage in ("generate", "answer", "paraphrase", "rules", "dedup"):
        assert report["stages"][stage]["discards"] == base_report["stages"][stage]["discards"], stage
        assert report["stages"][stage]["records_out"] == base_report["stages"][stage]["records_out"], stage


def test_resume_refuses_a_changed_pipeline_or_input(tmp_path, monkeypatch):
    from instructmill.errors import ResumeError
    from instructmill.pipeline import Pipeline

    monkeypatch.setenv("INSTRUCTMILL_ALLOW_TEST_BACKENDS", "1")
    folder = _setup(tmp_path / "changed")
    spec = folder / "p.yaml"
    spec.write_text(PIPELINE.replace("delay: 0.01", "delay: 0.0"), encoding="utf-8")
    Pipeline.from_file(spec).run(progress=False)
    with pytest.raises(ResumeError, match="--resume to continue it or --overwrite"):
        Pipeline.from_file(spec).run(progress=False)
    spec.write_text(PIPELINE.replace("delay: 0.01", "delay: 0.0").replace("blacklist: [owls]", "blacklist: [moths]"),
                    encoding="utf-8")
    with pytest.raises(ResumeError, match=r"pipeline changed since the run started: .*blacklist.*owls.*moths"):
        Pipeline.from_file(spec).run(resume=True, progress=False)
    spec.write_text(PIPELINE.replace("delay: 0.01", "delay: 0.0"), encoding="utf-8")
    with open(folder / "seeds.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"id": "extra", "instruction": "Name a bird.", "instances": [{"input": "", "output": "Owl"}]}\n')
    with pytest.raises(ResumeError, match=r"sources.seeds \(seeds.jsonl\) changed since the run started"):
        Pipeline.from_file(spec).run(resume=True, progress=False)
    report = Pipeline.from_file(spec).run(overwrite=True, progress=False)
    assert report["sources"]["seeds"]["records"] == 9 and report["resumed"] is False
