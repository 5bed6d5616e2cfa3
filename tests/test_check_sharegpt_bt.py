"""benchmarks/check_sharegpt_bt.py: the independent checker finds what a broken run would change."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "check_sharegpt_bt.py"


def _load():
    spec = importlib.util.spec_from_file_location("check_sharegpt_bt", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _conv(rid, *turns, status=None):
    row = {"id": rid, "conversations": [{"from": r, "value": t} for r, t in turns]}
    if status:
        row["status"] = status
    return json.dumps(row, ensure_ascii=False) + "\n"


def test_checker_counts_each_kind_of_change_and_passes_a_clean_run(tmp_path, capsys):
    check = _load()
    source = ("Order 42 costs $7.\n| a | b |\n|---|---|\n| 1 | 2 |\n请实现 generateBoard 方法\n"
              "Run `pip install x` at https://example.org/a #tag\nfor (int i = 0; i < n; i++) {")
    good = source.replace("Order 42 costs", "Order 42 is")
    bad = ("Order 42 costs $7 (R8).\n| a | b |\n|---|\n| 1 | 2 |\n- generateBoard -\n"
           "Run `pip install y` at https://example.org/b #tag\nfor (int i = 0; i < n; i++) {")
    inp = tmp_path / "in.jsonl"
    inp.write_text(_conv("c1", ("human", source), ("gpt", "Sure.")) + _conv("c2", ("gpt", "Hi")))
    out = tmp_path / "out.jsonl"
    out.write_text(_conv("c1", ("human", good), ("gpt", "Sure."), status="ok") + _conv("c2", ("gpt", "Hello"), status="ok"))
    assert check.main([str(out), str(inp)]) == 0
    out.write_text(_conv("c1", ("human", bad), ("gpt", "Sure."), status="ok")
                   + _conv("c2", ("human", "Hi"), status="ok"))
    report = tmp_path / "r.json"
    assert check.main([str(out), str(inp), "--json", str(report)]) == 1
    changed = json.loads(report.read_text())["changed"]
    assert changed == {"numbers_added": 1, "table_shape": 1, "other_language": 1, "inline_code": 1, "urls": 1,
                       "roles": 1}
    assert "rejected (invalid_record, empty_record): 0 of 2" in capsys.readouterr().out
