"""The ``openai`` backend against a local stub server (faults) -- the real vLLM server test is in
tests/test_openai_vllm_server.py."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from instructmill.engine.llm import LLMEngineOptions, SamplingOptions
from instructmill.models.llm_backends import load_llm
from instructmill.engine.openai_backend import AdaptiveLimit, OpenAIServerError
from instructmill.errors import OptionError

from openai_stub import StubState, start_stub


@pytest.fixture()
def stub():
    state = StubState()
    server, url = start_stub(state)
    yield state, url
    server.shutdown()
    server.server_close()


def _backend(url: str, **options):
    return load_llm("openai", None, LLMEngineOptions(base_url=url, **options))


def test_results_in_input_order_with_statuses_and_token_counts(stub):
    state, url = stub
    llm = _backend(url)
    assert llm.model == "stub-model"  # the server's first model when none is named
    prompts = [[{"role": "user", "content": f"question {i}"}] for i in range(40)]
    prompts[3] = [{"role": "user", "content": "   "}]
    prompts[7] = [{"role": "user", "content": "this is TOO LONG"}]
    prompts.append("plain completion prompt")
    results = llm.generate(prompts, SamplingOptions(temperature=0, max_tokens=16))
    assert [r.index for r in results] == list(range(41))
    assert results[0].text == "echo: question 0" and results[39].text == "echo: question 39"
    assert results[3].status == "empty_prompt" and results[3].samples == []
    assert results[7].status == "prompt_too_long" and "maximum context length" in results[7].detail
    assert results[40].text == "echo: plain completion prompt"
    assert results[0].prompt_tokens == 2 and results[0].samples[0].output_tokens == 3
    assert state.requests == 40  # 41 prompts: the empty one never left the process


def test_seeds_per_request_and_n_expanded(stub):
    state, url = stub
    llm = _backend(url)
    results = llm.generate(["a", "b"], SamplingOptions(temperature=0.8, n=3, seed=100, max_tokens=8))
    assert [s.seed for s in results[0].samples] == [100, 101, 102]
    assert sorted(state.seen_seeds) == [100, 100, 101, 101, 102, 102]


def test_429_halves_the_limit_and_retries_until_done(stub):
    state, url = stub
    state.fail_first = 30
    llm = _backend(url, max_concurrency=16, max_retries=10)
    results = llm.generate([f"p{i}" for i in range(60)], SamplingOptions(temperature=0, max_tokens=8))
    assert [r.text for r in results] == [f"echo: p{i}" for i in range(60)]
    assert llm.stats["retries"] >= 30 and llm.limit.decreases >= 1
    assert state.requests == 60 + 30


def test_concurrency_stays_under_the_limit(stub):
    state, url = stub
    state.delay = 0.05
    llm = _backend(url, max_concurrency=4)
    llm.generate([f"p{i}" for i in range(40)], SamplingOptions(temperature=0, max_tokens=4))
    assert 1 <= state.peak <= 4


def test_server_gone_ends_in_one_clear_error(stub):
    state, url = stub
    llm = _backend(url, max_retries=1)
    state.fail_first = 10**6
    state.fail_status = 503
    with pytest.raises(OpenAIServerError, match="did not answer after 2 tries.*--resume"):
        llm.generate(["x"], SamplingOptions(temperature=0, max_tokens=4))


def test_bad_request_stops_at_once(stub):
    state, url = stub
    state.fail_first = 10**6
    state.fail_status = 401
    llm = _backend(url)
    with pytest.raises(OpenAIServerError, match="HTTP 401"):
        llm.generate(["x", "y"], SamplingOptions(temperature=0, max_tokens=4))
    assert state.requests <= 2


def test_no_server_and_no_url_are_one_line_errors():
    with pytest.raises(OptionError, match="base-url"):
        load_llm("openai", "m", LLMEngineOptions())
    with pytest.raises(OpenAIServerError, match="did not list its models"):
        load_llm("openai", None, LLMEngineOptions(base_url="http://127.0.0.1:9/v1"))


def test_json_schema_goes_out_as_response_format(stub):
    state, url = stub
    schema = {"type": "object", "properties": {"score": {"type": "integer"}}, "required": ["score"]}
    _backend(url).generate([[{"role": "user", "content": "rate"}]],
                           SamplingOptions(temperature=0, max_tokens=8, json_schema=schema))
    assert state.bodies[-1]["response_format"] == {"type": "json_schema",
                                                   "json_schema": {"name": "output", "schema": schema}}


def test_api_key_from_the_environment_is_sent_but_never_stored(stub, monkeypatch):
    state, url = stub
    monkeypatch.setenv("MY_KEY", "sk-secret")
    llm = _backend(url, api_key_env="MY_KEY")
    assert llm._headers == {"Authorization": "Bearer sk-secret"}
    assert "sk-secret" not in json.dumps(llm.settings())


def test_adaptive_limit_aimd():
    limit = AdaptiveLimit(start=8, low=1, high=10, cooldown=0.0)
    limit.overloaded()
    assert limit.limit == 4
    for _ in range(4):
        limit.succeeded()
    assert 4.9 < limit.limit < 5.1  # +1 per round of `limit` successes
    for _ in range(10):
        limit.overloaded()
    assert limit.limit == 1


def test_humpback_cli_through_the_openai_backend(stub, tmp_path):
    state, url = stub
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"id": f"t{i}", "output": f"Answer number {i} is long enough to be a "
                                        "response worth an instruction."}) + "\n" for i in range(5)))
    out = tmp_path / "hb.jsonl"
    result = subprocess.run([sys.executable, "-m", "instructmill", "humpback", str(data), "-o", str(out),
                             "--backend", "openai", "--base-url", url], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    done = [json.loads(line)["id"] for p in (out, tmp_path / "hb.discards.jsonl") if p.exists()
            for line in p.read_text().splitlines()]
    assert sorted(done) == [f"t{i}" for i in range(5)]
    assert state.requests >= 5


def test_vllm_shaped_api_over_a_server(stub):
    from instructmill.llm_api import LLM, SamplingParams

    state, url = stub
    llm = LLM(backend="openai", base_url=url)
    outs = llm.generate((f"p{i}" for i in range(10)), SamplingParams(temperature=0, max_tokens=8))
    assert [o.outputs[0].text for o in outs] == [f"echo: p{i}" for i in range(10)]
    with pytest.raises(TypeError, match="not a single str"):
        llm.generate("one prompt")
    one = llm.chat([{"role": "user", "content": "hello"}])
    assert len(one) == 1 and one[0].outputs[0].text == "echo: hello"
    with pytest.raises(TypeError, match=r"messages\[0\]"):
        llm.chat([["not a message"]])
    assert llm.backend == "openai" and llm.model == "stub-model"


def test_pipeline_respond_stage_on_the_openai_backend(stub, tmp_path):
    from instructmill.pipeline import Pipeline

    state, url = stub
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "instruction": f"Explain item {i}."}) + "\n" for i in range(9)))
    out = tmp_path / "o.jsonl"
    Pipeline({"engines": {"srv": {"type": "llm", "backend": "openai", "base_url": url}},
              "sources": {"rows": {"path": str(data)}},
              "stages": [{"method": "respond", "engine": "srv", "records_per_batch": 4,
                          "sampling": {"temperature": 0, "max_tokens": 16}}],
              "sinks": [{"path": str(out)}], "settings": {"progress": False, "report": False}}).run()
    got = {r["id"]: r["output"] for r in map(json.loads, out.read_text().splitlines())}
    assert got == {f"q{i}": f"echo: Explain item {i}." for i in range(9)}
