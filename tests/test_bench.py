"""The benchmark suite's framework: history, regressions, tables, plot, CLI, and the template /
rouge_filter workloads on small inputs. No timing is asserted: the slowdown test injects a delay
far larger than any noise (a 2 ms sleep per row against a few microseconds of rendering)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from instructmill.bench.core import BenchOptions, EngineResult, WorkloadResult
from instructmill.bench.history import HistoryWarning, append_records, load_history, make_record
from instructmill.bench.report import format_table, plot_history, regressions
from instructmill.bench.runner import cuda_device_count, run_workloads
from instructmill.bench.workloads import WORKLOADS, load_workload
from instructmill.cli import cli
from instructmill.errors import OptionError

HW_A = {"key": "cpu A | 2 cores | no gpu | cpu", "cpu_model": "cpu A", "cores": 2, "cpu_flags": [], "gpu": None,
        "device": "cpu"}
HW_B = {**HW_A, "key": "cpu B | 8 cores | no gpu | cpu", "cpu_model": "cpu B", "cores": 8}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_result(value: float, *, baseline: float = 100.0, rows: int = 1000, workload: str = "template",
                max_batch_size: int | None = None) -> WorkloadResult:
    """A workload result whose instructmill figure is ``value`` rows/s (baseline ``baseline``)."""
    own = EngineResult("instructmill", "instructmill",
                       {"requests_per_s": value, "peak_rss_mb": 50.0, "busy_fraction": 0.9},
                       {"max_batch_size": max_batch_size})
    base = EngineResult("jinja2_loop", "baseline", {"requests_per_s": baseline, "peak_rss_mb": 40.0},
                        note="plain loop")
    return WorkloadResult(workload, "requests_per_s", [own, base],
                          {"unit": "rows/s", "comparable": {"rows": rows, "quick": True}},
                          BenchOptions(quick=True, max_batch_size=max_batch_size).as_dict())


def line(value: float, *, hw=HW_A, n: int = 0, **kw) -> dict:
    return make_record(fake_result(value, **kw), run_id=f"run{n}", hardware_info=hw,
                       date=f"2026-11-30T00:00:{n:02d}Z", sha=f"{n:02d}" * 20, dirty=False,
                       package_versions={"instructmill": "0.1.0"}, wall_s=1.0)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


# ----------------------------------------------------------------------------- history

def test_history_round_trip_skips_a_torn_line(tmp_path):
    path = tmp_path / "h" / "history.jsonl"
    assert load_history(path) == []
    first, second = line(120.0, n=1), line(90.0, n=2, max_batch_size=4)
    assert append_records(path, [first, second]) == 2
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"note": "not a history record"}) + "\n")
        fh.write(json.dumps(line(1.0, n=3))[:57])          # a run killed mid-write
    warnings: list[str] = []
    got = load_history(path, warn=warnings.append)
    assert got == [first, second]
    assert got[1]["headline"] == 90.0 and got[1]["ratios"] == {"jinja2_loop": 0.9}
    assert got[1]["results"][0]["settings"] == {"max_batch_size": 4}
    assert got[1]["options"]["max_batch_size"] == 4
    assert {"schema", "run_id", "date", "git_sha", "git_dirty", "workload", "headline_metric", "headline",
            "ratios", "results", "detail", "options", "hardware", "packages"} <= set(got[0])
    assert len(warnings) == 2
    assert "line 3" in warnings[0] and "not a benchmark history record" in warnings[0]
    assert "line 4" in warnings[1] and "torn" in warnings[1]
    # by default: Python warnings, not a crash
    with pytest.warns(HistoryWarning) as caught:
        assert len(load_history(path)) == 2
    assert [str(w.message) for w in caught] == warnings


# --------------------------------------------------------------------------- regressions

def test_regressions_flag_a_20_percent_drop_not_a_5_percent_one():
    history = [line(100.0, n=1), line(80.0, n=2)]
    [reg] = regressions(history)
    assert reg.workload == "template" and reg.latest == 80.0 and reg.best == 100.0
    assert reg.drop == pytest.approx(0.2)
    msg = reg.message()
    assert msg.startswith("REGRESSION: workload template: latest 80.0 rows/s is 20.0% below the best earlier run")
    assert "01010101" in msg and "2026-11-30T00:00:01Z" in msg
    assert regressions([line(100.0, n=1), line(95.0, n=2)]) == []
    assert regressions([line(100.0, n=1), line(95.0, n=2)], threshold=0.04)          # 5% > 4%
    assert regressions([line(100.0, n=1), line(80.0, n=2)], threshold=0.25) == []
    # the best EARLIER run counts, not the previous one; an improvement is never flagged
    assert regressions([line(100.0, n=1), line(50.0, n=2), line(95.0, n=3)]) == []
    assert regressions([line(50.0, n=1), line(100.0, n=2)]) == []
    [reg] = regressions([line(100.0, n=1), line(130.0, n=2), line(110.0, n=3)])
    assert reg.best == 130.0 and reg.best_sha == "02020202"
    # a single run has nothing to compare with
    assert regressions([line(10.0, n=1)]) == []


def test_regressions_compare_only_same_hardware_and_comparable_facts():
    # slower machine, or a different workload size: not comparable, never flagged
    assert regressions([line(100.0, n=1), line(50.0, n=2, hw=HW_B)]) == []
    assert regressions([line(100.0, n=1), line(50.0, n=2, rows=500)]) == []
    # a small batch budget is NOT a different workload: it is compared, and flagged
    [reg] = regressions([line(100.0, n=1), line(50.0, n=2, max_batch_size=1)])
    assert reg.latest == 50.0
    # each group keeps its own latest run
    mixed = [line(100.0, n=1), line(100.0, n=2, hw=HW_B), line(99.0, n=3), line(60.0, n=4, hw=HW_B)]
    [reg] = regressions(mixed)
    assert reg.hardware_key == HW_B["key"] and reg.latest == 60.0
    assert regressions(mixed, workload="rouge_filter") == []


def test_table_text_and_markdown():
    rec = line(150.0, n=1, baseline=100.0)
    text = format_table([rec])
    assert "hardware: cpu A | 2 cores" in text
    rows = {ln.split()[1]: ln for ln in text.splitlines() if ln.startswith("template")}
    assert "1.50x" in rows["jinja2_loop"] and "150" in rows["instructmill"] and "90.0%" in rows["instructmill"]
    assert "[1] plain loop" in text
    md = format_table([rec, line(10.0, n=2, hw=HW_B, workload="rouge_filter")], "markdown")
    assert md.splitlines()[0].startswith("| workload | engine | figure")
    assert "| hardware |" in md.splitlines()[0]            # two machines: a hardware column
    assert "| rouge_filter | instructmill | 10.0 |" in md
    with pytest.raises(ValueError):
        format_table([rec], "html")


def test_plot_is_a_png(tmp_path):
    history = [line(100.0, n=1), line(110.0, n=2), line(50.0, n=3), line(10.0, n=4, hw=HW_B, workload="rouge_filter")]
    out = plot_history(history, tmp_path / "p.png")
    assert out.read_bytes()[:8] == PNG_MAGIC
    import matplotlib.image

    assert matplotlib.image.imread(out).shape[0] > 100
    with pytest.raises(ValueError, match="no benchmark run"):
        plot_history(history, tmp_path / "q.png", workload="llm")


# ---------------------------------------------------------------------------------- CLI

def test_registry_and_unknown_workload():
    assert list(WORKLOADS) == ["template", "rouge_filter", "backtranslation", "llm", "pipeline",
                               "ray_backtranslation"]
    with pytest.raises(OptionError, match="template, rouge_filter, backtranslation, llm, pipeline"):
        load_workload("nope")
    assert callable(load_workload("template").run)
    result = invoke("bench", "run", "template", "nope", "--no-save")
    assert result.exit_code == 1
    assert "unknown; known workloads: template, rouge_filter, backtranslation, llm, pipeline" in result.output
    listed = invoke("bench", "list").output
    assert all(name in listed for name in WORKLOADS)


@pytest.mark.skipif(cuda_device_count() > 0, reason="a CUDA device is visible here")
def test_device_cuda_is_refused_without_cuda(tmp_path):
    history = tmp_path / "h.jsonl"
    result = invoke("bench", "run", "template", "--device", "cuda", "--history", history)
    assert result.exit_code == 1
    assert "invalid device='cuda': no CUDA device is visible" in result.output
    assert not history.exists()


def test_cli_history_report_and_injected_slowdown(tmp_path, monkeypatch):
    history = tmp_path / "bench" / "history.jsonl"
    args = ["bench", "run", "template", "--quick", "--num-prompts", "500", "--history", history,
            "--cache-dir", tmp_path / "cache"]
    for _ in range(2):
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        assert "jinja2_loop" in result.output and "str_format" in result.output
    runs = load_history(history)
    assert [r["workload"] for r in runs] == ["template", "template"]
    for r in runs:
        assert r["headline_metric"] == "requests_per_s" and r["headline"] > 0
        assert r["detail"]["comparable"]["rows"] == 500 and r["detail"]["comparable"]["quick"] is True
        assert all(r["detail"]["checks"].values()) and len(r["detail"]["checks"]) == 2
        assert set(r["ratios"]) == {"jinja2_loop", "str_format"}
        own = r["results"][0]
        assert own["engine"] == "instructmill" and own["metrics"]["requests"] == 500
        assert own["metrics"]["identical_outputs"] == 1.0 and own["metrics"]["output_tokens"] > 500
        assert r["hardware"]["device"] == "cpu" and r["hardware"]["key"]
    assert runs[0]["run_id"] != runs[1]["run_id"]

    # a real slowdown of instructmill's path: 2 ms more per row (rendering takes ~20 us)
    from instructmill.methods.template import TemplateFiller

    render = TemplateFiller.render

    def slow_render(self, record):
        time.sleep(0.002)
        return render(self, record)

    monkeypatch.setattr(TemplateFiller, "render", slow_render)
    result = invoke(*args, "--plot", tmp_path / "after-run.png")
    assert result.exit_code == 0, result.output            # a run reports a regression, only `report` fails
    assert "REGRESSION: workload template" in result.output
    assert (tmp_path / "after-run.png").read_bytes()[:8] == PNG_MAGIC
    monkeypatch.undo()

    report = invoke("bench", "report", "--history", history)
    assert report.exit_code == 1
    assert "REGRESSION: workload template: latest" in report.output and "below the best earlier run" in report.output
    png = history.with_suffix(".png")
    assert png.read_bytes()[:8] == PNG_MAGIC
    as_json = invoke("bench", "report", "--history", history, "--format", "json", "--no-plot")
    data = json.loads(as_json.output)
    assert as_json.exit_code == 1 and data["runs"] == 3 and data["regressions"][0]["workload"] == "template"
    assert data["regressions"][0]["drop"] > 0.5
    # a threshold above the drop: no regression, exit 0
    relaxed = invoke("bench", "report", "--history", history, "--threshold", "0.999", "--no-plot", "--format",
                     "markdown")
    assert relaxed.exit_code == 0 and "no regression" in relaxed.output and "| template | instructmill |" in relaxed.output


def test_report_without_history_is_a_clear_error(tmp_path):
    result = invoke("bench", "report", "--history", tmp_path / "none.jsonl")
    assert result.exit_code == 1 and "no benchmark runs" in result.output


def test_a_failing_workload_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    import instructmill.bench.workloads.rouge_filter as rouge_workload

    def boom(options, *, log):
        raise RuntimeError("engine exploded")

    monkeypatch.setattr(rouge_workload, "run", boom)
    history = tmp_path / "h.jsonl"
    out: list[str] = []
    outcome = run_workloads(["rouge_filter", "template"], BenchOptions(num_prompts=200, cache_dir=str(tmp_path)),
                            history_path=history,
                            echo=out.append, log=lambda m: None)
    assert not outcome.ok and set(outcome.failures) == {"rouge_filter"}
    assert "engine exploded" in outcome.failures["rouge_filter"]
    assert [r["workload"] for r in outcome.records] == ["template"]
    assert [r["workload"] for r in load_history(history)] == ["template"]
    assert any("FAILED: rouge_filter: RuntimeError: engine exploded" in o for o in out)
    result = invoke("bench", "run", "rouge_filter", "--no-save", "--cache-dir", tmp_path)
    assert result.exit_code == 1 and "ERROR: workload rouge_filter failed" in result.output


# ---------------------------------------------------------------------------- workloads

def test_rouge_filter_verifies_and_extrapolates_baselines(monkeypatch):
    from instructmill.bench.workloads import rouge_filter as w
    from instructmill.methods.rouge import RougeFilter

    monkeypatch.setattr(w, "QUICK", {"candidates": 300, "naive_rouge_score": 40, "brute_force_lcs": 150})
    result = w.run(BenchOptions(quick=True, seed=3), log=lambda m: None)
    assert result.headline_metric == "requests_per_s"
    assert result.detail["checks"] == {"kept_equal[naive_rouge_score]": True, "kept_equal[brute_force_lcs]": True}
    seeds, _ = w.seed_instructions()
    candidates = w.make_candidates(seeds, 300, 3)
    kept = sum(m is None for m in RougeFilter(0.7, seeds).filter(candidates))
    assert result.detail["kept"] == kept and result.detail["comparable"]["candidates"] == 300
    own, naive, brute = result.results
    assert own.engine == "instructmill" and own.metrics["requests"] == 300 and own.metrics["kept"] == kept
    for base, k in ((naive, 40), (brute, 150)):
        m = base.metrics
        assert m["extrapolated"] is True and m["measured_requests"] == k and m["requests"] == 300
        assert m["total_pairs"] > m["measured_pairs"] > k * len(seeds) - 1
        assert m["seconds"] == pytest.approx(m["measured_seconds"] * m["total_pairs"] / m["measured_pairs"], rel=1e-2)
        assert f"first {k:,} of 300" in base.note
    assert set(result.ratios()) == {"naive_rouge_score", "brute_force_lcs"}


def test_naive_filter_matches_instructmill_on_exact_ties():
    from instructmill.bench.workloads.rouge_filter import brute_force_filter, naive_filter
    from instructmill.methods.rouge import RougeFilter

    pool = ["a b c d e f g h i j"]
    candidates = ["a b c d e f g x y z",      # LCS 7 of 10 + 10: ROUGE-L exactly 0.7 -> a near-duplicate
                  "a b c d e f q x y z",      # 0.6 -> kept
                  "a b c d e f q x y w"]      # 0.9 with the one before -> dropped
    kept, ties = naive_filter(pool, candidates)
    assert kept == [False, True, False] and ties == 1
    assert brute_force_filter(pool, candidates) == kept
    assert [m is None for m in RougeFilter(0.7, pool).filter(candidates)] == kept


def test_template_workload_outputs_match_the_baselines():
    from instructmill.bench.workloads import template as w

    rows, source = w.make_rows(60)
    assert len(rows) == 60 and rows[0]["tgt"] == "French" and "translation" in rows[0] and "tgt" not in rows[1]
    result = w.run(BenchOptions(num_prompts=60, engines=("instructmill", "str_format")), log=lambda m: None)
    assert [r.engine for r in result.results] == ["instructmill", "str_format"]
    assert result.detail["checks"] == {"outputs_identical[str_format]": True}
    assert result.results[1].metrics["identical_outputs"] == 1.0
    assert result.detail["comparable"]["dataset"] == source
    with pytest.raises(OptionError, match="template has: instructmill, jinja2_loop, str_format"):
        w.run(BenchOptions(num_prompts=10, engines=("hf_batched",)), log=lambda m: None)


def test_rouge_filter_wrapper_script_is_the_cli(tmp_path):
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_rouge_filter.py"
    history = tmp_path / "h.jsonl"
    out = subprocess.run([sys.executable, str(script), "--num-prompts", "120", "--engines",
                          "instructmill,brute_force_lcs", "--history", str(history), "--cache-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    [rec] = load_history(history)
    assert rec["workload"] == "rouge_filter" and [r["engine"] for r in rec["results"]] == [
        "instructmill", "brute_force_lcs"]
    assert rec["detail"]["checks"] == {"kept_equal[brute_force_lcs]": True}


@pytest.mark.gpu
@pytest.mark.skipif(cuda_device_count() == 0, reason="needs a CUDA device")
def test_device_cuda_records_the_gpu(tmp_path):
    history = tmp_path / "h.jsonl"
    result = invoke("bench", "run", "template", "--device", "cuda", "--num-prompts", "200", "--history", history,
                    "--cache-dir", tmp_path)
    assert result.exit_code == 0, result.output
    [rec] = load_history(history)
    assert rec["hardware"]["device"] == "cuda" and rec["hardware"]["gpu"]
    assert rec["hardware"]["gpu"] in rec["hardware"]["key"]
