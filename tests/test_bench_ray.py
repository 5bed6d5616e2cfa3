"""The Ray back-translation benchmark workload on the tiny cipher MarianMT model (``options.model``).

The cipher model (``instructmill.testing.build_marian``) emits one target token per source piece,
then ``</s>``: with natural lengths the forward hop's target tokens are known in advance (source
tokens minus one ``</s>`` per sentence). The ShareGPT input is a small file written here
(``INSTRUCTMILL_SHARED``). The workload starts its own 2-CPU Ray instance. No timing is asserted.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from instructmill.bench import translation_model as tm
from instructmill.bench.core import BenchOptions
from instructmill.bench.workloads import ray_backtranslation as rb
from instructmill.errors import OptionError
from instructmill.testing import default_corpus

N = 8


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """INSTRUCTMILL_SHARED -> a folder whose ShareGPT sample holds simple English sentences."""
    root = tmp_path_factory.mktemp("shared")
    sents = default_corpus(60, seed=3)
    path = root / "data" / "sharegpt_sample.jsonl.gz"
    path.parent.mkdir(parents=True)
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for i in range(0, 60, 3):
            conv = {"id": str(i), "conversations": [{"from": "human", "value": " ".join(sents[i:i + 3])},
                                                    {"from": "gpt", "value": "Sure."}]}
            fh.write(json.dumps(conv) + "\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INSTRUCTMILL_SHARED", str(root))
        yield root


@pytest.fixture(scope="module")
def result(shared, tiny_marian_dir, tmp_path_factory):
    """All three engines on N sentences, natural lengths, Ray batches of 2 rows."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    out = rb.run(BenchOptions(quick=True, model=str(tiny_marian_dir), num_prompts=N, max_batch_size=2,
                              cache_dir=str(tmp_path_factory.mktemp("bench-cache"))), log=lambda _m: None)
    out.ray_left_running = ray.is_initialized()
    return out


def _picked_source_tokens(model_dir: Path) -> int:
    """Source tokens (pieces + ``</s>``) of the N sentences the workload picks, counted independently."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_dir / "source.spm"))
    count = (lambda ts: [len(p) + 1 for p in sp.encode(ts, out_type=str)])
    picked = tm.select_sentences(tm.extract_candidates(tm.sharegpt_path()), count, N)
    return sum(count(picked))


def test_every_engine_counts_records_and_tokens_of_both_hops(result, tiny_marian_dir):
    by = {r.engine: r for r in result.results}
    assert list(by) == list(rb.ENGINES)
    assert result.results[0].role == "instructmill" and {r.role for r in result.results[1:]} == {"baseline"}
    assert result.headline_metric == "output_tokens_per_s"
    source = _picked_source_tokens(tiny_marian_dir)
    assert result.detail["comparable"]["source_tokens"] == source
    totals = set()
    for r in result.results:
        m, counts = r.metrics, r.settings["engine_counts"]
        forward, backward = counts["directions"]["mt:en-xx"], counts["directions"]["mt:xx-en"]
        assert m["requests"] == N, r.engine
        # the forward hop: every sentence once, one target token per source piece (no </s>)
        assert (forward["requests"], forward["prompt_tokens"], forward["output_tokens"]) == (N, source, source - N)
        assert backward["requests"] == N and backward["output_tokens"] > 0  # every pivot text went back
        assert m["output_tokens"] == forward["output_tokens"] + backward["output_tokens"]
        assert m["input_tokens"] == forward["prompt_tokens"] + backward["prompt_tokens"]
        # (seconds are rounded to 0.1 ms; a tiny run takes only tens of ms)
        assert m["output_tokens_per_s"] == pytest.approx(m["output_tokens"] / m["seconds"], rel=1e-2)
        assert m["peak_rss_mb"] > 0 and 0 < m["busy_fraction"] <= 1.0
        assert sum(r.settings["statuses"].values()) == N
        totals.add(m["output_tokens"])
    assert len(totals) == 1  # the same work on every executor


def test_the_executors_wrote_identical_records(result):
    assert result.detail["checks"] == {"identical_records_across_executors": True, "every_record_once": True}
    assert sum(result.detail["statuses"].values()) == N


def test_ray_plan_and_scaling_fields(result):
    by = {r.engine: r for r in result.results}
    for name, actors in (("instructmill", 2), ("ray_1_actor", 1)):
        plan = by[name].settings["plan"]
        assert plan["replicas"] == actors and plan["batch_size"] == 2
        assert plan["engine_threads"] == {"mt": 1} and plan["num_cpus_per_actor"] == 1.0
        assert plan["cluster"]["CPU"] == 2
        assert all(s is not None and s > 0 for s in by[name].settings["rounds_first_rows_s"])
    assert by["local_executor"].settings["executor"] == "local"
    scaling = result.detail["scaling"]
    r2 = by["instructmill"].metrics["output_tokens_per_s"]
    r1 = by["ray_1_actor"].metrics["output_tokens_per_s"]
    assert scaling["efficiency"] == pytest.approx(r2 / (2 * r1), abs=1e-3)
    assert scaling["speedup"] == pytest.approx(r2 / r1, abs=1e-3)
    assert scaling["per_actor_output_tokens_per_s"]["2_actors"] == pytest.approx(r2 / 2, abs=0.1)
    busy = scaling["per_actor_output_tokens_per_busy_s"]
    assert scaling["busy_rate_efficiency"] == pytest.approx(busy["2_actors"] / busy["1_actor"], abs=1e-3)
    counts = by["instructmill"].settings["engine_counts"]
    assert busy["2_actors"] == pytest.approx(counts["output_tokens"] / counts["busy_seconds"], abs=0.1)
    # (a second round runs when the first was disturbed by other processes: the fastest counts)
    assert scaling["first_rows_s"]["2_actors"] in by["instructmill"].settings["rounds_first_rows_s"]
    for r in (by["instructmill"], by["ray_1_actor"], by["local_executor"]):
        assert len(r.settings["rounds_first_rows_s"]) == r.settings["rounds"] >= 1
    assert set(result.ratios()) == {"ray_1_actor", "local_executor"}
    assert result.detail["ray_started_here"] and result.detail["ray_cluster"]["CPU"] == 2
    assert result.detail["ray_init_seconds"] > 0
    assert not result.ray_left_running  # the workload stopped the Ray instance it started
    comparable = result.detail["comparable"]
    assert comparable["sentences"] == N and comparable["output_len"] is None and comparable["quick"] is True
    assert comparable["hops"] == "en->xx->en" and comparable["model"]["backward"].startswith("the same model")
    assert not any("batch" in key for key in comparable)


def _engine(name, actors, records, tok_s):
    from instructmill.bench.workloads._measure import Counts, Round

    counts = {"directions": {"a": {"requests": 2, "output_tokens": 10}}, "output_tokens": 10, "prompt_tokens": 4,
              "requests": 2, "busy_seconds": 0.5}
    e = rb._Engine(name, actors, records=records, counts=[counts], statuses={"ok": 2})
    e.rounds = [Round(Counts(output_tokens=10, busy_seconds=0.5), 10 / tok_s, 100.0, 0.0, 1.0)]
    e.first_rows_s = [1.0]
    return e


def test_a_differing_record_fails_the_check_and_scaling_is_computed():
    same = [("ok", "s0", "ok", "a", "", ""), ("discards", "s1", "unchanged", "b", "", "")]
    other = [same[0], ("discards", "s1", "unchanged", "B", "", "")]
    models = rb.RayBtModels(forward=Path("f"), backward=Path("b"), source_lang="en", pivot="de",
                            sentences=["a", "b"], source_tokens=4, output_len=5, model={}, data={},
                            sentences_info={"sentences": 2})
    options = BenchOptions()
    state = [_engine("instructmill", 2, same, 30.0), _engine("ray_1_actor", 1, same, 20.0),
             _engine("local_executor", None, other, 40.0)]
    results, detail = rb._results(models, options, state, 2, 1, ["s0", "s1"])
    assert detail["checks"] == {"identical_records_across_executors": False, "every_record_once": True}
    assert detail["scaling"]["efficiency"] == pytest.approx(0.75, abs=1e-3)
    # 2 segments x 5 tokens expected, 10 counted: no warning; a missing id fails the other check
    assert not [w for w in detail["warnings"] if "expected" in w]
    state[2].records = same[:1]
    assert rb._results(models, options, state, 2, 1, ["s0", "s1"])[1]["checks"]["every_record_once"] is False
    state[2].records = same
    assert rb._results(models, options, state, 2, 1, ["s0", "s1"])[1]["checks"] == {
        "identical_records_across_executors": True, "every_record_once": True}
    state[1].unstable_rounds = 1  # a later round of one engine wrote other records
    assert rb._results(models, options, state, 2, 1, ["s0", "s1"])[1]["checks"][
        "identical_records_across_executors"] is False


def test_tree_cpu_counts_a_child_that_exits_within_the_block():
    """A Ray actor's CPU time leaves the process tree when it exits; TreeCpu keeps it."""
    import subprocess
    import sys

    pytest.importorskip("psutil")
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.0: pass\n"
    with rb.TreeCpu(interval=0.05) as cpu:
        subprocess.run([sys.executable, "-c", burn], check=True)
    assert cpu.own_seconds >= 0.8  # the child's 1 CPU-second, less at most one sampling interval
    assert cpu.own_cores > 0


def test_options_are_checked():
    with pytest.raises(OptionError, match="unknown for ray_backtranslation: nope"):
        rb.run(BenchOptions(engines=("nope",)), log=lambda _m: None)
    assert rb.ray_batch_size(BenchOptions(), 256) == 32
    assert rb.ray_batch_size(BenchOptions(), 10_000) == rb.MAX_BATCH
    assert rb.ray_batch_size(BenchOptions(), 16) == rb.MIN_BATCH
    assert rb.ray_batch_size(BenchOptions(max_batch_size=3), 256) == 3


def test_bench_all_leaves_the_ray_workload_out_without_ray(monkeypatch):
    import importlib.util

    from instructmill.bench import runner
    from instructmill.bench.cli import bench

    seen: list[list[str]] = []

    class Outcome:
        ok = True

    monkeypatch.setattr(runner, "run_workloads", lambda names, *a, **k: seen.append(list(names)) or Outcome())
    real = importlib.util.find_spec
    for has_ray in (False, True):
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a: (real(name, *a) if has_ray else None) if name == "ray" else real(name, *a))
        result = CliRunner().invoke(bench, ["all", "--no-save"])
        assert result.exit_code == 0, result.output
    assert seen[0] == ["template", "rouge_filter", "backtranslation", "llm", "pipeline"]
    if real("ray") is not None:
        assert seen[1] == seen[0] + ["ray_backtranslation"]
