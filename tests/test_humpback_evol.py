"""Humpback (instruction back-translation + self-curation) and Evol-Instruct with a fake LLM."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fake_llm import FakeLLM
from instructmill.errors import OptionError
from instructmill.methods.evol import EvolOptions, Evolver, eliminate, judge_equal
from instructmill.methods.humpback import Humpback, HumpbackOptions, clean_instruction
from instructmill.records import InputRecord


def rec(rid, shape="alpaca", **fields):
    return InputRecord(id=rid, line=1, fields=fields, shape=shape)


def lines(path):
    path = Path(path)
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()] if path.exists() else []


# ------------------------------------------------------------------------------------ Humpback

def humpback_rule(prompt: str, seed) -> str:
    chat = prompt.startswith("<|user|>")
    body = prompt[len("<|user|>"):-len("<|end|><|assistant|>")] if chat else prompt
    if body.startswith("Below is a response"):  # instruction_style="chat"
        response = body.split("Response:\n", 1)[1]
        if "blank" in response:
            return "   "
        return f'Instruction: "Tell me about {response.split()[0].lower()}."\nResponse: blah'
    if body.startswith("Write the instruction that each response answers."):  # "fewshot"
        assert not chat and body.endswith("\nInstruction:")
        response = body.rsplit("Response: ", 1)[1].rsplit("\nInstruction:", 1)[0]
        if "blank" in response:
            return "   \nmore"
        return f' "Tell me about {response.split()[0].lower()}."\nResponse: blah'
    if body.startswith("Below is an instruction from an user"):
        if body.endswith("Score:"):  # curation_style="direct"
            assert not chat and "Answer with the score only." in body
            return " 5\nmore text" if "Paris" in body else (" 100" if "gibberish" in body else " 2")
        assert chat and 'write "Score: <rating>" in the last line' in body
        if "gibberish" in body:
            return "I cannot decide."
        return "Reasoning: clear and helpful.\nScore: 5" if "Paris" in body else "Vague.\nScore: 2"
    raise AssertionError(f"unexpected prompt {body[:80]!r}")


def test_humpback_statuses_scores_and_order():
    llm = FakeLLM(humpback_rule)
    hb = Humpback(llm, HumpbackOptions(threshold=4, seed=3))
    records = [rec("a", instruction="old", input="", output="Paris is the capital of France."),
               rec("b", instruction="q", input="", output="Cats sleep a lot."),
               rec("c", shape="table", text="gibberish words here"),
               rec("d", instruction="q", input="", output="   "),
               rec("e", instruction="q", input="", output=42),
               rec("f", instruction="q", input="", output="blank answer")]
    hb_table = Humpback(llm, HumpbackOptions(text_field="text"))
    out = list(hb.process(records[:2] + records[3:]))
    out.insert(2, next(hb_table.process([records[2]])))
    assert [(o.id, o.status) for o in out] == [("a", "ok"), ("b", "low_score"), ("c", "score_parse_error"),
                                               ("d", "empty_text"), ("e", "invalid_record"),
                                               ("f", "empty_instruction")]
    a, b, c, d, e, f = out
    assert (a.example.instruction, a.example.input, a.example.output) == (
        "Tell me about paris.", "", "Paris is the capital of France.")
    assert a.extra["score"] == 5 and a.extra["original_instruction"] == "old" and "Score: 5" in a.extra["judge"]
    assert isinstance(a.extra["instruction_seed"], int)
    assert b.extra["score"] == 2 and b.extra["detail"] == "score 2 < threshold 4"
    assert c.extra["score"] is None and c.extra["judge"] == "I cannot decide."
    assert "'output'" in e.extra["error"] and "is not a string" in e.extra["error"]
    assert f.extra["raw"] == "   "
    assert hb.summary["scores"] == {5: 1, 2: 1} and hb.summary["ok"] == 1
    assert a.method == "humpback" and a.settings["threshold"] == 4 and a.settings["backend"] == "fake"
    # the scoring prompt holds the generated instruction and the text; greedy judge (no seed)
    judge_calls = [(p, params) for p, params in llm.calls if "5-point scale" in p]
    assert "Tell me about paris.\n\nParis is the capital of France." in judge_calls[0][0]
    assert all(params.seed is None and params.temperature == 0 for _, params in judge_calls)


@pytest.mark.parametrize("instruction_style,curation_style", [("chat", "paper"), ("fewshot", "direct")])
def test_humpback_prompt_styles(instruction_style, curation_style):
    llm = FakeLLM(humpback_rule)
    hb = Humpback(llm, HumpbackOptions(instruction_style=instruction_style, curation_style=curation_style))
    out = list(hb.process([rec("a", instruction="q", output="Paris is big."), rec("b", instruction="q", output="Cats nap."),
                           rec("c", instruction="q", output="gibberish here")]))
    assert [(o.status, o.example.instruction, o.extra.get("score")) for o in out] == [
        ("ok", "Tell me about paris.", 5), ("low_score", "Tell me about cats.", 2),
        ("score_parse_error", "Tell me about gibberish.", None)]
    if curation_style == "direct":
        assert out[0].extra["judge"] == "5"  # cut at the newline stop string
    with pytest.raises(OptionError, match="curation_style"):
        HumpbackOptions(curation_style="vibes")


def test_humpback_without_curation_and_threshold_options():
    out = list(Humpback(FakeLLM(humpback_rule), HumpbackOptions(curate=False)).process(
        [rec("b", instruction="q", input="", output="Cats sleep a lot.")]))
    assert out[0].status == "ok" and "score" not in out[0].extra
    out = list(Humpback(FakeLLM(humpback_rule), HumpbackOptions(threshold=2)).process(
        [rec("b", instruction="q", input="", output="Cats sleep a lot.")]))
    assert out[0].status == "ok" and out[0].extra["score"] == 2
    with pytest.raises(OptionError, match="threshold"):
        HumpbackOptions(threshold=6)


def test_humpback_same_seed_same_prompts_and_seeds():
    def seeds():
        llm = FakeLLM(humpback_rule)
        list(Humpback(llm, HumpbackOptions(seed=9)).process([rec("x", instruction="q", output="Paris!")]))
        return [params.seed for _, params in llm.calls]

    assert seeds() == seeds() and seeds()[0] is not None


def test_clean_instruction():
    assert clean_instruction('Instruction: "Explain rain."\n\nResponse: It falls.') == "Explain rain."
    assert clean_instruction("  What is   the answer?  ") == "What is the answer?"


# -------------------------------------------------------------------------------- Evol-Instruct

def test_elimination_rules():
    opts = EvolOptions(equality_check="none")
    long_answer = " ".join(["word"] * 90)
    assert eliminate("Name a fruit.", "Name a red fruit that grows in winter.", "Pomegranate.", opts) is None
    assert eliminate("Name a fruit.", "", None, opts)[0] == "evol_empty"
    assert eliminate("Name a fruit.", "Rewrite the given prompt to name a fruit.", "x", opts)[0] == "evol_copied_prompt"
    assert eliminate("Name a fruit.", "#Rewritten Prompt# Name a red fruit.", "x", opts)[0] == "evol_copied_prompt"
    assert eliminate("Name a fruit.", "  name a  fruit. ", "x", opts)[0] == "evol_no_gain"
    assert eliminate("Name a fruit.", "Name a rare fruit.", "Sorry, I cannot help.", opts)[0] == "evol_too_hard"
    assert eliminate("Name a fruit.", "Name a rare fruit.", "Sorry! " + long_answer, opts) is None
    assert eliminate("Name a fruit.", "Name a rare fruit.", "It is... the, and that!", opts)[0] == "evol_bad_response"
    assert eliminate("Name a fruit.", "Name a rare fruit.", None, opts) is None  # no response: rules 2-3 skipped
    llm_opts = EvolOptions(equality_check="llm")
    assert eliminate("Name a fruit.", "Name a rare fruit.", "Durian.", llm_opts, judge_says_equal=True)[0] == "evol_no_gain"
    assert eliminate("Name a fruit.", "Name a rare fruit.", "Durian.", llm_opts, judge_says_equal=False) is None
    rouge_opts = EvolOptions(equality_check="rouge", equal_rouge_threshold=0.8)
    assert eliminate("Name a fruit please.", "Name a fruit please now.", "Durian.", rouge_opts)[0] == "evol_no_gain"
    assert eliminate("Name a fruit.", "List four tropical fruits by sweetness.", "Durian.", rouge_opts) is None


@pytest.mark.parametrize("text,verdict", [("Equal", True), ("Not Equal", False), ("not equal.", False),
                                          ("They are equal.", True), ("Hmm", None)])
def test_judge_equal(text, verdict):
    assert judge_equal(text) is verdict


def evol_rule(prompt: str, seed) -> str:
    body = prompt[len("<|user|>"):-len("<|end|><|assistant|>")]
    if body.startswith("I want you act as a Prompt"):
        given = body.split("Prompt#:\n", 1)[1].split("\n#", 1)[0]
        if "Prompt Creator" in body:
            return f"#Created Prompt#: {given} in a rare domain"
        if "constraints" in body:
            return f"{given} Use at most 20 words."
        if "specific concepts" in body:
            return f"#Rewritten Prompt#: {given}"            # no change: no information gain
        if "multiple-step reasoning" in body:
            return f"As the given prompt says, {given}"     # copies the evolving prompt
        return f"{given} Explain each step."
    if body.startswith("Here are two Instructions"):
        return "Not Equal"
    if "impossible" in body:
        return "Sorry, I can't."
    return f"Answer to: {body}"


def test_evolver_records_rounds_and_chaining():
    llm = FakeLLM(evol_rule)
    opts = EvolOptions(rounds=3, seed=1)
    ev = Evolver(llm, opts)
    records = [rec("t1", instruction="Name a fruit.", input=""),
               rec("t2", instruction="Sort the list.", input="3 1 2"),
               rec("t3", instruction="", input="")]
    out = list(ev.process(records))
    assert [o.id for o in out] == [f"t{i}:evol{t}" for i in (1, 2, 3) for t in (1, 2, 3)]
    assert [o.status for o in out[6:]] == ["invalid_record"] * 3
    expected_status = {"constraints": "ok", "deepen": "ok", "breadth": "ok", "concretize": "evol_no_gain",
                       "reasoning": "evol_copied_prompt"}
    for i in (0, 1):
        current = "Name a fruit." if i == 0 else "Sort the list.\n\n3 1 2"
        for o in out[3 * i:3 * i + 3]:
            op = o.extra["operation"]
            assert o.status == expected_status[op], (op, o.status)
            assert o.extra["parent"] == current
            if o.status == "ok":
                assert o.example.output == f"Answer to: {o.example.instruction}"
                assert o.example.instruction.startswith(current.split("\n")[0].rstrip("."))
                current = o.example.instruction  # evolve further from a success
            else:
                assert o.extra["raw"] and o.extra["detail"]
    assert {o.extra["operation"] for o in out[:6]} == set(expected_status)  # seed 1 draws all five
    stripped = [o for o in out if o.extra.get("operation") == "breadth"]
    for o in stripped:
        assert o.extra.get("stripped_label") and not o.example.instruction.startswith("#")
    assert ev.summary["attempts"] == 6 and sum(ev.summary["operations"].values()) == 6
    assert ev.summary["ok"] + sum(ev.summary["discarded"].values()) == 9


def test_evolver_same_seed_same_operations_and_too_hard():
    def ops(seed):
        out = Evolver(FakeLLM(evol_rule), EvolOptions(rounds=2, seed=seed)).process(
            [rec(f"r{i}", instruction=f"Task number {i}.", input="") for i in range(8)])
        return [o.extra["operation"] for o in out]

    assert ops(4) == ops(4) and ops(4) != ops(5)
    [out] = Evolver(FakeLLM(evol_rule), EvolOptions(operations=("constraints",), equality_check="rouge")).process(
        [rec("h", instruction="Do the impossible thing.", input="")])
    assert out.status == "evol_too_hard" and out.extra["response"] == "Sorry, I can't."
    with pytest.raises(OptionError, match="operations"):
        EvolOptions(operations=("sideways",))


def test_evolver_llm_equality_judge_eliminates():
    def rule(prompt, seed):
        return "Equal" if "Here are two Instructions" in prompt else evol_rule(prompt, seed)

    [out] = Evolver(FakeLLM(rule), EvolOptions(operations=("constraints",))).process(
        [rec("e", instruction="Name a fruit.", input="")])
    assert out.status == "evol_no_gain" and out.extra["judge"] == "Equal"


# ------------------------------------------------------------------------------------------ CLI

@pytest.fixture
def fake_backend(monkeypatch):
    import instructmill.models.llm_backends as backends

    def load_llm(backend, model, options, **kwargs):
        return FakeLLM(lambda p, s: (humpback_rule if "Below is" in p else evol_rule)(p, s), options=options)

    monkeypatch.setattr(backends, "load_llm", load_llm)


def test_cli_humpback_and_evolve(tmp_path, fake_backend):
    from instructmill.cli import cli

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "a", "instruction": "x", "input": "", "output": "Paris is lovely."},
        {"id": "b", "instruction": "y", "input": "", "output": "Cats nap."}]))
    result = CliRunner().invoke(cli, ["humpback", str(src), "-o", str(tmp_path / "hb.jsonl"), "--threshold", "4",
                                      "--temperature", "0.5"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in lines(tmp_path / "hb.jsonl")] == ["a"]
    assert [(r["id"], r["status"]) for r in lines(tmp_path / "hb.discards.jsonl")] == [("b", "low_score")]
    assert "scores: 2: 1, 5: 1" in result.output
    state = json.loads((tmp_path / "hb.run.json").read_text())
    assert state["settings"]["options"]["generation"]["temperature"] == 0.5

    out = tmp_path / "ev.jsonl"
    args = ["evolve", str(src), "-o", str(out), "--rounds", "2", "--operation", "constraints",
            "--operation", "deepen", "--equality-check", "rouge"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    first = lines(out)
    assert sorted(r["id"] for r in first) == ["a:evol1", "a:evol2", "b:evol1", "b:evol2"]
    assert all(r["extra"]["operation"] in ("constraints", "deepen") for r in first)
    # simulate a crash that lost the last record: resume writes only it
    out.write_text("".join(json.dumps(r) + "\n" for r in first[:3]))
    result = CliRunner().invoke(cli, args + ["--resume"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert lines(out)[:3] == first[:3] and sorted(r["id"] for r in lines(out)) == sorted(r["id"] for r in first)
    assert lines(out)[3] == first[3]
