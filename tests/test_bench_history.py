"""History appends survive a torn last line; an unwritable history is refused before any workload runs."""
import json

import pytest

from instructmill.bench.core import BenchOptions
from instructmill.bench.env import append_jsonl
from instructmill.bench.history import load_history
from instructmill.bench.runner import run_workloads
from instructmill.errors import OptionError


def test_append_after_a_torn_last_line_keeps_the_new_line_whole(tmp_path):
    path = tmp_path / "h.jsonl"
    path.write_text('{"a": 1}\n{"b": 2', encoding="utf-8")  # killed mid-write
    assert append_jsonl(path, [{"c": 3}, {"d": 4}]) == 2
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines == ['{"a": 1}', '{"b": 2', '{"c": 3}', '{"d": 4}', ""]
    assert [json.loads(x) for x in lines if x and x != '{"b": 2'] == [{"a": 1}, {"c": 3}, {"d": 4}]


def test_a_run_appended_to_a_torn_history_is_read_back(tmp_path):
    path = tmp_path / "h.jsonl"
    path.write_text('{"workload": "template", "headline_me', encoding="utf-8")
    outcome = run_workloads(["template"], BenchOptions(quick=True, num_prompts=200, engines=("instructmill",)),
                            history_path=path, plot_path=None, echo=lambda *a, **k: None, log=lambda m: None)
    assert outcome.ok
    with pytest.warns(Warning):
        runs = load_history(path)
    assert [r["workload"] for r in runs] == ["template"] and runs[0]["run_id"] == outcome.run_id


def test_an_unwritable_history_is_refused_before_the_workloads_run(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    ran = []
    with pytest.raises(OptionError, match="history"):
        run_workloads(["template"], BenchOptions(quick=True, num_prompts=200), history_path=blocker / "h.jsonl",
                      echo=lambda *a, **k: None, log=ran.append)
    assert not any("== template ==" in m for m in ran)


# ------------------------------------------------------------ where the history lives, series

import hashlib  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

from click.testing import CliRunner  # noqa: E402

from instructmill.bench.core import EngineResult, WorkloadResult  # noqa: E402
from instructmill.bench.env import isa_level  # noqa: E402
from instructmill.bench.history import default_history_path, make_record  # noqa: E402
from instructmill.bench.report import format_table, latest_runs, regressions, series_label  # noqa: E402
from instructmill.cli import cli  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
AVX512 = ["avx", "avx2", "avx512f", "avx512bw", "avx512_vnni", "fma"]
AVX2 = ["avx", "avx2", "fma"]


def record(value: float, n: int, *, quick: bool = True, rows: int = 20000, flags=AVX512) -> dict:
    own = EngineResult("instructmill", "instructmill", {"requests_per_s": value})
    base = EngineResult("jinja2_loop", "baseline", {"requests_per_s": 1000.0})
    comparable = {"rows": rows, "template": "translate", "quick": quick}
    result = WorkloadResult("template", "requests_per_s", [own, base], {"unit": "rows/s", "comparable": comparable},
                            BenchOptions(quick=quick).as_dict())
    hw = {"key": "AMD EPYC | 2 cores | no gpu | cpu", "cpu_model": "AMD EPYC", "cores": 2, "cpu_flags": flags,
          "gpu": None, "device": "cpu"}
    return make_record(result, run_id=f"r{n}", hardware_info=hw, date=f"2026-12-01T00:00:{n:02d}Z",
                       sha=f"{n:02d}" * 20, dirty=False, package_versions={}, wall_s=1.0)


def test_default_history_is_in_the_users_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTRUCTMILL_CACHE", str(tmp_path / "c"))
    assert default_history_path() == tmp_path / "c" / "bench" / "history.jsonl"
    assert REPO not in default_history_path().parents


def test_isa_levels():
    assert isa_level(AVX512) == "AVX-512 VNNI"
    assert isa_level(["avx2", "avx512f"]) == "AVX-512"
    assert isa_level(AVX2) == "AVX2"
    assert isa_level(["sse4_2"]) == "below AVX2"
    assert isa_level([]) == "ISA unknown"


def test_quick_and_full_runs_are_separate_labelled_series():
    # a full run, then a quick run 10x lower: different series, so no regression, and both shown
    history = [record(100_000.0, 1, quick=False, rows=200_000), record(10_000.0, 2, quick=True)]
    assert regressions(history) == []
    latest = latest_runs(history)
    assert [series_label(r) for r in latest] == [
        "template | full | rows 200000 | AMD EPYC x2 cpu | AVX-512 VNNI",
        "template | quick | rows 20000 | AMD EPYC x2 cpu | AVX-512 VNNI"]
    table = format_table(latest)
    assert "hardware: AMD EPYC | 2 cores | no gpu | cpu; CPU flags: AVX-512 VNNI" in table
    assert "full, rows 200000, AVX-512 VNNI" in table and "quick, rows 20000, AVX-512 VNNI" in table
    # within the quick series, a 10x drop is flagged and named by its series
    [reg] = regressions([*history, record(1_000.0, 3, quick=True)])
    assert (reg.best, reg.latest) == (10_000.0, 1_000.0)
    assert "series template | quick | rows 20000 | AMD EPYC x2 cpu | AVX-512 VNNI" in reg.message()


def test_cpu_isa_levels_are_separate_series():
    # the same machine name and facts measured on an AVX2 CPU is slower, and is not a regression
    history = [record(100_000.0, 1, flags=AVX512), record(60_000.0, 2, flags=AVX2)]
    assert regressions(history) == []
    assert [series_label(r).rsplit(" | ", 1)[1] for r in latest_runs(history)] == ["AVX-512 VNNI", "AVX2"]
    [reg] = regressions([*history, record(40_000.0, 3, flags=AVX2)])
    assert reg.series.endswith("AVX2") and reg.best == 60_000.0
    # an old line without flags is its own series too ("ISA unknown"), never compared with a known level
    assert regressions([record(100_000.0, 1, flags=[]), record(10.0, 2)]) == []


def _repo_state() -> tuple[str, dict[str, str]]:
    try:
        status = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True,
                                text=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        status = "no git"
    files = {str(p.relative_to(REPO)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in (REPO / "benchmarks").rglob("*") if p.is_file()}
    return status, files


def test_bench_run_and_report_leave_the_checkout_alone(tmp_path, monkeypatch):
    """`instructmill bench run template --quick` writes its history to the cache, not the checkout."""
    monkeypatch.setenv("INSTRUCTMILL_CACHE", str(tmp_path / "cache"))
    before = _repo_state()
    runner = CliRunner()
    result = runner.invoke(cli, ["bench", "run", "template", "--quick", "--num-prompts", "300"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = runner.invoke(cli, ["bench", "report"], catch_exceptions=False)
    assert report.exit_code == 0, report.output
    assert _repo_state() == before
    history = tmp_path / "cache" / "bench" / "history.jsonl"
    [run] = load_history(history)
    assert run["workload"] == "template" and run["detail"]["comparable"]["rows"] == 300
    assert run["hardware"]["isa"] == isa_level(run["hardware"]["cpu_flags"])
    assert (tmp_path / "cache" / "bench" / "history.png").is_file()
    assert str(history) in report.output and "the latest of each series" in report.output
