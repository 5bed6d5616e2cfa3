"""The judge method (LLM-as-judge) on fake LLMs: prompts, scores, statuses, structured output."""
from __future__ import annotations

import json

import pytest

from instructmill.errors import OptionError
from instructmill.methods.judge import Judge, JudgeOptions
from instructmill.records import InputRecord

from fake_llm import FakeLLM


def rec(i: int, output: str = "Paris is the capital of France.") -> InputRecord:
    return InputRecord(id=f"r{i}", line=i + 1, fields={"instruction": f"Question {i}?", "input": "",
                                                       "output": output}, shape="alpaca")


def test_scores_thresholds_and_parse_errors_in_input_order():
    answers = {"Question 0?": "Clear and correct.\nScore: 5", "Question 1?": "Vague.\nScore: 2",
               "Question 2?": "I cannot decide."}

    def rule(prompt: str, seed):
        return next(v for k, v in answers.items() if k in prompt)

    judge = Judge(FakeLLM(rule), JudgeOptions(threshold=3))
    assert not judge.structured  # the fake cannot constrain decoding
    out = list(judge.process([rec(0), rec(1), rec(2), rec(3, output="  ")]))
    assert [r.id for r in out] == ["r0", "r1", "r2", "r3"]
    assert [r.status for r in out] == ["ok", "low_score", "score_parse_error", "empty_output"]
    assert out[0].extra["judge"] == {"score": 5, "reason": "Clear and correct.", "rubric": "helpfulness"}
    assert out[1].extra["detail"] == "score 2 < threshold 3"
    assert judge.summary["scores"] == {5: 1, 2: 1}
    assert (judge.summary["parse_ok"], judge.summary["parse_attempts"]) == (2, 3)


def test_prompt_holds_rubric_instruction_and_answer():
    llm = FakeLLM(lambda p, s: "Score: 4")
    judge = Judge(llm, JudgeOptions(rubric="correctness"))
    list(judge.process([rec(7, output="The answer is 42.")]))
    prompt = llm.calls[0][0]
    assert "how correct the answer is" in prompt and "Question 7?" in prompt and "The answer is 42." in prompt
    assert 'Score: <rating>' in prompt


def test_structured_judge_reads_json_and_sends_the_schema():
    class SchemaLLM(FakeLLM):
        supports_json_schema = True

    llm = SchemaLLM(lambda p, s: json.dumps({"reason": "fine", "score": 4}))
    judge = Judge(llm, JudgeOptions(threshold=4))
    out = list(judge.process([rec(0)]))
    assert judge.structured and out[0].status == "ok" and out[0].extra["judge"]["score"] == 4
    assert llm.calls[0][1].json_schema["properties"]["score"] == {"type": "integer", "minimum": 1, "maximum": 5}
    bad = Judge(SchemaLLM(lambda p, s: '{"reason": "x", "score": 9}'), JudgeOptions())
    assert list(bad.process([rec(0)]))[0].status == "score_parse_error"


def test_custom_rubric_file_and_bad_options(tmp_path):
    path = tmp_path / "r.txt"
    path.write_text("Rate whether the answer is in French.")
    judge = Judge(FakeLLM(lambda p, s: "Score: 1"), JudgeOptions(rubric=str(path)))
    assert judge.rubric == "Rate whether the answer is in French."
    assert list(judge.process([rec(0)]))[0].extra["judge"]["rubric"] == "custom"
    with pytest.raises(OptionError, match="threshold"):
        JudgeOptions(threshold=6)
    with pytest.raises(OptionError, match="rubric file"):
        JudgeOptions(rubric=str(tmp_path / "missing.txt")).rubric_text()
    with pytest.raises(OptionError, match="structured"):
        Judge(FakeLLM(lambda p, s: ""), JudgeOptions(structured=True))
