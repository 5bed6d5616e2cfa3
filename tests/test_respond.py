"""The respond method (an LLM writes each instruction's output) and the filter stage's rules."""
from __future__ import annotations

import pytest

from fake_llm import FakeLLM
from instructmill.engine.llm import SamplingOptions
from instructmill.errors import OptionError
from instructmill.methods.respond import RespondOptions, Responder, respond_seed
from instructmill.pipeline.filters import FilterOptions, RecordFilter
from instructmill.records import Example, InputRecord, OutputRecord


def rec(rid, shape="alpaca", **fields):
    return InputRecord(id=rid, line=1, fields=fields, shape=shape)


def echo(prompt: str, seed) -> str:
    return f"seed {seed}: {prompt}"


def test_answers_in_order_with_per_record_seeds_and_chat_turns():
    llm = FakeLLM(echo)
    records = [rec("a", instruction="Name a colour.", input=""),
               rec("b", instruction="Translate.", input="Bom dia", system="Be terse.",
                   history=[["Hi", "Hello!"]]),
               rec("c", text="no instruction", shape="table")]
    out = list(Responder(llm, RespondOptions(seed=4, records_per_batch=2)).process(records))
    assert [(r.id, r.status, r.method) for r in out] == [("a", "ok", "respond"), ("b", "ok", "respond"),
                                                         ("c", "invalid_record", "respond")]
    assert out[0].example.output == f"seed {respond_seed(4, 'a')}: <|user|>Name a colour.<|end|><|assistant|>"
    assert out[0].extra["response_seed"] == respond_seed(4, "a")
    assert out[1].example.output.endswith("<|system|>Be terse.<|end|><|user|>Hi<|end|><|assistant|>Hello!<|end|>"
                                          "<|user|>Translate.\n\nBom dia<|end|><|assistant|>")
    assert out[1].example.history == [("Hi", "Hello!")] and out[1].example.input == "Bom dia"
    assert "no 'instruction' field" in out[2].extra["error"]
    # the same record gets the same answer in another batch and another position
    again = list(Responder(FakeLLM(echo), RespondOptions(seed=4, records_per_batch=7)).process(records[::-1]))
    assert again[2].example.output == out[0].example.output
    # an options system prompt wins over the record's
    msgs = Responder(llm, RespondOptions(system="Answer in French.")).messages(Example("Q", system="Be terse."))
    assert msgs == [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Q"}]


def test_statuses():
    def rule(prompt, seed):
        if "empty" in prompt:
            return "   "
        if "long" in prompt:
            return "word " * 50
        return "fine"

    records = [rec("1", instruction="empty please"), rec("2", instruction="long please"),
               rec("3", instruction="  ", output=""), rec("4", instruction="Q", output="Kept answer."),
               rec("5", instruction="x" * 300)]
    llm = FakeLLM(rule, max_model_len=200)
    opts = RespondOptions(skip_existing=True, sampling=SamplingOptions(max_tokens=10))
    responder = Responder(llm, opts)
    out = {r.id: r for r in responder.process(records)}
    assert {k: r.status for k, r in out.items()} == {
        "1": "empty_output", "2": "output_truncated", "3": "empty_instruction", "4": "ok", "5": "prompt_too_long"}
    assert out["4"].example.output == "Kept answer." and out["4"].extra == {"skipped": "the record has an output"}
    assert "max_tokens (10)" in out["2"].extra["detail"] and len(out["2"].example.output.split()) == 10
    assert responder.summary["discarded"] == {"empty_output": 1, "output_truncated": 1, "empty_instruction": 1,
                                              "prompt_too_long": 1}
    assert responder.summary["skipped"] == 1 and len(llm.calls) == 2
    kept = list(Responder(FakeLLM(rule), RespondOptions(keep_truncated=True, sampling=SamplingOptions(max_tokens=10)))
                .process([records[1]]))
    assert kept[0].status == "ok" and kept[0].extra["truncated"] is True
    with pytest.raises(OptionError, match="sampling.n"):
        RespondOptions(sampling=SamplingOptions(n=2))


def out(instruction="", input="", output="", status="ok"):
    return OutputRecord("r", Example(instruction, input, output), status, "m", {}, {"keep": 1})


def test_filter_rules_in_order():
    rules = RecordFilter(FilterOptions(min_words={"output": 2}, max_words={"instruction": 6},
                                       blacklist=["go to", "image"], require={"output": r"\.$"},
                                       reject={"instruction": r"(?i)^write a program"},
                                       accept_statuses=["ok", "unchanged"]))
    cases = {
        ("Name a colour.", "Blue is nice."): ("ok", None),
        ("Name a colour.", "Blue"): ("too_short", "output"),
        ("Name one colour of a very large sea.", "Blue is nice."): ("too_long", "instruction"),
        ("Please go  to the image shop.", "Sure thing."): ("blacklisted", "instruction"),
        ("Name a colour.", "Blue is nice"): ("regex_required", "output"),
        ("Write a program to add.", "Here it is."): ("regex_rejected", "instruction"),
    }
    for (instruction, output), (status, field) in cases.items():
        result = rules.apply(out(instruction, output=output))
        assert result.status == status, (instruction, output)
        if field:
            assert result.extra["filter"]["field"] == field and result.extra["keep"] == 1
    assert rules.apply(out("Please go  to the image shop.", output="Ok then.")).extra["filter"]["detail"] == \
        "keyword 'go  to'"
    # an accepted non-ok status that passes becomes ok; others are not taken
    revived = rules.apply(out("Name a colour.", output="Blue is nice.", status="unchanged"))
    assert revived.status == "ok" and revived.extra["previous_status"] == "unchanged"
    assert not rules.wants(out(status="duplicate")) and rules.wants(out(status="unchanged"))
    for bad in ({"min_words": {"answer": 1}}, {"max_words": {"output": -1}}, {"require": {"output": "("}},
                {"min_words": {"output": 5}, "max_words": {"output": 2}}, {"accept_statuses": []}):
        with pytest.raises(OptionError):
            FilterOptions(**bad)


def test_windows_are_cut_by_work_on_engines_that_batch_themselves():
    from instructmill.methods.base import WINDOW_TOKENS
    from instructmill.methods.respond import RespondOptions, Responder
    from instructmill.records import InputRecord

    sizes = []

    class CountingLLM(FakeLLM):
        def generate(self, prompts, params=None):
            sizes.append(len(prompts))
            return super().generate(prompts, params)

    llm = CountingLLM(lambda prompt, seed: "An answer.")
    assert llm.window_tokens() is None  # like vLLM: no token budget of its own
    long_text = "word " * 2000  # ~10,000 characters: a window holds only a few such records
    records = [InputRecord(id=f"r{i}", line=i + 1, fields={"instruction": f"Q{i}? {long_text}"}, shape="alpaca")
               for i in range(40)]
    options = RespondOptions(records_per_batch=256)
    out = list(Responder(llm, options).process(records))
    assert [r.id for r in out] == [f"r{i}" for i in range(40)]
    cost = len(f"Q0? {long_text}") + options.sampling.max_tokens  # FakeLLM: one token per character
    assert sizes[0] == WINDOW_TOKENS // cost and sum(sizes) == 40 and len(sizes) > 1
