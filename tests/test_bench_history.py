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
