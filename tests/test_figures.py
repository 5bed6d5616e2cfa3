"""Quality figures (figures.py): what a run's summary and report say about its records."""
from __future__ import annotations

import json

from instructmill.figures import QualityFigures, figures_from_files
from instructmill.io.writers import format_record
from instructmill.records import Example, OutputRecord


def _records():
    conv_extra = {"field_status": {"instruction": "structure_changed", "output": "ok",
                                   "history[0].user": "placeholder_lost"},
                  "detail": {"instruction": {"structure": [{"kind": "table", "lost": ["| a |"]},
                                                           {"kind": "hashtag", "lost": ["#x"]}]},
                             "history[0].user": {"lost": ["42"]}},
                  "similarity": 0.91, "language": "en", "passed_through_languages": {"zh": 3}}
    return [
        OutputRecord("a", Example("Q"), "ok", "backtranslation", {}, conv_extra),
        OutputRecord("b", Example("Name a tree."), "meaning_drift", "backtranslation", {},
                     {"original": {"instruction": "Name a tree."}, "detail": {"instruction": {"similarity": 0.2}},
                      "similarity": 0.2, "language": "en"}),
        OutputRecord("c", Example("Other."), "meaning_drift", "backtranslation", {}, {"similarity": 0.3}),
        OutputRecord("d", Example("Hola."), "other_language", "backtranslation", {}, {"language": "es"}),
        OutputRecord("j1", Example("Q"), "ok", "judge", {}, {"judge": {"score": 4}}),
        OutputRecord("j2", Example("Q"), "low_score", "judge", {}, {"judge": {"score": 2}}),
        OutputRecord("s1", Example("Write a poem."), "ok", "self_instruct", {}, {"rouge_l_to_seeds": 0.35}),
        OutputRecord("s2", Example("Write a song."), "ok", "self_instruct", {}, {"rouge_l_to_seeds": 0.61}),
    ]


def test_figures_count_reasons_examples_spans_scores_and_histograms():
    figures = QualityFigures()
    for rec in _records():
        figures.observe(rec)
    d = figures.as_dict()
    assert d["kept"] == 4
    assert d["discarded"] == {"low_score": 1, "meaning_drift": 2, "other_language": 1}
    assert d["discard_examples"]["meaning_drift"] == {"id": "b", "text": "Name a tree.",
                                                      "detail": {"instruction": {"similarity": 0.2}}}
    # a conversation's turn that kept its original text still counts its failed spans, by kind
    assert d["span_failures"] == {"table": 1, "hashtag": 1, "placeholder_lost": 1}
    assert d["similarity"]["n"] == 3 and d["similarity"]["counts"][18] == 1  # 0.91 -> bin [0.90, 0.95)
    assert d["similarity"]["counts"][4] == 1 and d["similarity"]["counts"][6] == 1
    assert d["languages"] == {"records": {"en": 2, "es": 1}, "segments_passed_through": {"zh": 3}}
    assert d["judge_scores"] == {"2": 1, "4": 1}
    assert d["rouge_l_to_seeds"]["counts"][3] == 1 and d["rouge_l_to_seeds"]["counts"][6] == 1
    lines = "\n".join(figures.summary_lines())
    assert "mean similarity 0.470 over 3 records (2 below 0.5)" in lines
    assert "protected-span failures: table: 1, hashtag: 1, placeholder_lost: 1" in lines


def test_figures_read_back_from_written_files(tmp_path):
    recs = _records()
    out, discards = tmp_path / "o.jsonl", tmp_path / "o.discards.jsonl"
    out.write_text("".join(json.dumps(format_record(r, "sharegpt")) + "\n" for r in recs if r.status == "ok"))
    discards.write_text("".join(json.dumps(format_record(r, "alpaca")) + "\n" for r in recs if r.status != "ok"))
    again = figures_from_files([str(out), str(discards), str(tmp_path / "missing.jsonl")]).as_dict()
    live = QualityFigures()
    for rec in recs:
        live.observe(rec)
    expected = live.as_dict()
    assert again["discarded"] == expected["discarded"]
    assert again["span_failures"] == expected["span_failures"]
    assert again["similarity"] == expected["similarity"]
    assert again["rouge_l_to_seeds"] == expected["rouge_l_to_seeds"]
