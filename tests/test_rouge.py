"""ROUGE-L tokenizer, score and the pruned near-duplicate filter against brute force."""
from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from instructmill.errors import OptionError
from instructmill.methods.rouge import RougeFilter, lcs_length, rouge_l, tokenize


def dp_lcs(a, b):
    """Textbook O(len(a) * len(b)) LCS (the reference)."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def brute_force_kept(pool, candidates, threshold):
    """Greedy sequential filtering by comparing every pair with exact rational scores."""
    t = Fraction(repr(threshold))
    pool = [tokenize(p) for p in pool]
    kept = []
    for text in candidates:
        toks = tokenize(text)
        dup = any(toks and other and Fraction(2 * dp_lcs(toks, other), len(toks) + len(other)) >= t
                  for other in pool)
        kept.append(not dup)
        if not dup:
            pool.append(toks)
    return kept


# ----------------------------------------------------------------------------- tokenizer

def test_tokenize_matches_rouge_score_rules_for_ascii():
    assert tokenize("Don't panic -- it's 42_000!") == ["don", "t", "panic", "it", "s", "42", "000"]


def test_tokenize_unicode():
    assert tokenize("请用三句话介绍长城。") == list("请用三句话介绍长城")
    assert tokenize("Café CAFÉ naïve Straße") == ["café", "café", "naïve", "strasse"]
    assert tokenize("Cafe\u0301") == ["café"]  # decomposed accent composes (NFKC)
    assert tokenize("ＡＢＣ１２３") == ["abc123"]  # full-width forms fold
    assert tokenize("日本語のテキスト") == list("日本語のテキスト")
    assert tokenize("한국어 문장") == ["한", "국", "어", "문", "장"]
    assert tokenize("great 👍🏽👍 job 👨‍👩‍👧 🇫🇷!") == ["great", "👍🏽", "👍", "job", "👨‍👩‍👧", "🇫🇷"]
    assert tokenize("नमस्ते दुनिया") == ["नमस्ते", "दुनिया"]  # vowel signs stay in the word
    assert tokenize("... ,;: !!") == []


def test_rouge_l_values():
    assert rouge_l("请用三句话介绍长城。", "请用三句话介绍长城。") == 1.0
    assert rouge_l("请用三句话介绍长城。", "请用两句话介绍故宫。") == pytest.approx(2 * 6 / 18)  # 请用_句话介绍_ shared
    assert rouge_l("Crème brûlée recipe", "creme brulee recipe") == pytest.approx(2 * 1 / 6)
    assert rouge_l("I love it 😀", "i LOVE it 😢") == pytest.approx(0.75)
    assert rouge_l("", "anything") == 0.0
    assert rouge_l("!!!", "!!!") == 0.0
    assert lcs_length("ABCBDAB", "BDCABA") == 4


def test_rouge_l_equals_rouge_score_on_ascii():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    pairs = [("Write a poem about cats and dogs.", "Write a short poem about dogs!"),
             ("What is the relation between the given pairs?", "Find the relation between pairs."),
             ("Don't use C++ or C#, use Python_3.", "do not use python 3"),
             ("abc", "xyz"), ("a b c d e f g", "g f e d c b a")]
    for a, b in pairs:
        assert rouge_l(a, b) == pytest.approx(scorer.score(a, b)["rougeL"].fmeasure, abs=1e-12)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", "the", "Cat", "cat", "x_y", "1", ".", " "]),
                max_size=12).map(" ".join),
       st.lists(st.sampled_from(["a", "b", "c", "the", "Cat", "cat", "x_y", "1", ".", " "]),
                max_size=12).map(" ".join))
def test_rouge_l_equals_rouge_score_property(a, b):
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    assert tokenize(a) == rouge_scorer.tokenizers.DefaultTokenizer(use_stemmer=False).tokenize(a)
    assert rouge_l(a, b) == pytest.approx(scorer.score(a, b)["rougeL"].fmeasure, abs=1e-12)


# -------------------------------------------------------------------------------- filter

WORDS = ["write", "a", "the", "poem", "about", "cats", "dogs", "list", "three", "fruits", "café",
         "请", "用", "句", "话", "😀", "👍🏽", "of", "and", "to", "1", "2", "x"]


def texts(max_words):
    return st.lists(st.sampled_from(WORDS), max_size=max_words).map(" ".join)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pool=st.lists(texts(10), max_size=20), candidates=st.lists(texts(14), max_size=70),
       threshold=st.sampled_from([0.3, 0.5, 0.6, 0.7, 0.75, 0.9, 1.0]))
def test_filter_equals_brute_force(pool, candidates, threshold):
    f = RougeFilter(threshold, pool)
    got = [match is None for match in f.filter(candidates)]
    assert got == brute_force_kept(pool, candidates, threshold)


@settings(max_examples=60, deadline=None)
@given(base=st.lists(texts(12), min_size=1, max_size=8), data=st.data())
def test_filter_near_duplicates_equal_brute_force(base, data):
    """Candidates made by small edits of each other, so many pairs sit near the threshold."""
    candidates = []
    for _ in range(data.draw(st.integers(10, 80))):
        words = data.draw(st.sampled_from(base + candidates)).split()
        for _ in range(data.draw(st.integers(0, 3))):
            op = data.draw(st.integers(0, 2))
            pos = data.draw(st.integers(0, len(words)))
            if op == 0 and pos < len(words):
                del words[pos]
            elif op == 1 and pos < len(words):
                words[pos] = data.draw(st.sampled_from(WORDS))
            else:
                words.insert(pos, data.draw(st.sampled_from(WORDS)))
        candidates.append(" ".join(words))
    f = RougeFilter(0.7, base[:3])
    assert [m is None for m in f.filter(candidates)] == brute_force_kept(base[:3], candidates, 0.7)
    assert f.stats["rebuilds"] >= (1 if len(f) >= 64 else 0)


def test_matches_report_exact_scores_best_first():
    f = RougeFilter(0.5, ["List two fruits.", "List two red fruits please.", "Name a colour."])
    found = f.matches("list two fruits")
    assert [(m.index, m.text) for m in found] == [(0, "List two fruits."), (1, "List two red fruits please.")]
    assert found[0].score == 1.0 and found[1].score == pytest.approx(2 * 3 / 8)
    assert f.check("Name a color.") == f.matches("Name a color.")[0]
    assert f.check("Name a color.").score == pytest.approx(2 / 3)
    assert f.check("something else entirely") is None


def test_exact_threshold_tie_is_a_match():
    # 10 tokens each, LCS 7: exactly 0.7 (rouge_score's float formula gives 0.7 here too, but
    # 0.6999999999999998 on 23/37-token ties; the filter decides in exact arithmetic).
    a = "a b c d e f g h i j"
    b = "a b c d e f g x y z"
    assert RougeFilter(0.7, [a]).check(b).score == pytest.approx(0.7)
    long_a = " ".join(f"w{i}" for i in range(23))
    long_b = " ".join([f"w{i}" for i in range(21)] + [f"v{i}" for i in range(16)])
    match = RougeFilter(0.7, [long_a]).check(long_b)
    assert match is not None and Fraction(2 * 21, 23 + 37) == Fraction(7, 10)


def test_cjk_and_emoji_duplicates_are_caught():
    f = RougeFilter(0.7, ["请用三句话介绍长城。", "Tell me a joke 😀"])
    assert f.check("请用三句话介绍一下长城").index == 0
    assert f.check("tell me a JOKE 😀!!").index == 1
    assert f.check("请写一首关于秋天的诗") is None


def test_empty_texts_never_match():
    f = RougeFilter(0.7, ["", "..."])
    assert f.filter(["", "!!", "hello"]) == [None, None, None]
    assert len(f) == 5


def test_bad_threshold():
    with pytest.raises(OptionError, match="rouge_threshold"):
        RougeFilter(0)
    with pytest.raises(OptionError):
        RougeFilter(1.5)
