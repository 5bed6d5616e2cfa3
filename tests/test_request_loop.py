"""The engine's submit-and-collect loop (engine/request_loop.py) used on its own, without a service."""
from __future__ import annotations

import threading

import pytest

from instructmill.engine.llm import LLMEngineOptions, Request, SamplingOptions
from instructmill.engine.request_loop import EngineClosedError, GatherLoop, LoopListener
from instructmill.errors import OptionError

from fake_llm import FakeLLM


class Counting(LoopListener):
    def __init__(self):
        self.events: list[tuple] = []
        self.lock = threading.Lock()

    def start(self, n, *, callers=1, batch=True):
        with self.lock:
            self.events.append(("start", n, callers))

    def complete(self, tag, n, output_tokens, *, failed=False):
        with self.lock:
            self.events.append(("complete", tag, n, failed))


def _requests(engine, texts):
    greedy = SamplingOptions(temperature=0, max_tokens=20)
    return [Request(i, engine.encode_prompt(t), greedy, prompt=t) for i, t in enumerate(texts)]


def test_gather_loop_resolves_each_call_in_order_and_reports_to_its_listener():
    engine = FakeLLM(lambda p, seed: p.upper(), options=LLMEngineOptions(max_num_seqs=8))
    listener = Counting()
    loop = engine.request_loop(name="fake", listener=listener, gather_ms=20)
    assert isinstance(loop, GatherLoop) and loop.mode == "batch"
    try:
        a = loop.submit(_requests(engine, ["one", "two"]), tag="a")
        b = loop.submit(_requests(engine, ["three"]), tag="b")
        assert [f.result(10).text for f in a] == ["ONE", "TWO"]
        assert [f.result(10).text for f in b] == ["THREE"]
    finally:
        loop.close()
    assert not loop.is_alive()
    starts = [e for e in listener.events if e[0] == "start"]
    assert sum(n for _, n, _ in starts) == 3
    assert sorted(e[1] for e in listener.events if e[0] == "complete") == ["a", "a", "b"]
    with pytest.raises(EngineClosedError, match="LLM engine 'fake' is closed"):
        loop.submit(_requests(engine, ["late"]))


def test_request_loop_refuses_a_continuous_loop_the_engine_lacks_and_bad_options():
    engine = FakeLLM(lambda p, seed: p)
    with pytest.raises(OptionError, match="mode"):
        engine.request_loop(name="x", mode="engine")
    with pytest.raises(OptionError, match="mode"):
        engine.request_loop(name="x", mode="stream")
    with pytest.raises(OptionError, match="gather_ms"):
        engine.request_loop(name="x", gather_ms=-1)
