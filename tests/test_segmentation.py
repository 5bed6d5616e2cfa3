"""Segmentation: structure is kept byte-exact, protected spans are masked and restored."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from instructmill.methods.segmentation import Segmenter, has_words, split_sentences


def words_tokens(text: str) -> int:
    return len(text.split()) + 1


def identity_render(segmenter: Segmenter, text: str) -> str:
    doc = segmenter.segment(text)
    # feed back the *unmasked* view: each segment's text with masks restored is the source piece
    rendered, lost = doc.render([seg.text for seg in doc.segments])
    assert lost == []
    return rendered


pieces = st.sampled_from([
    "The garden is quiet.", " ", "\n", "\n\n", "- ", "1. ", "  * ", "Mr. Smith went home.", "`code`",
    "https://example.org/a?b=c.", "{name}", "3.5", "```python\nx = 1\n```\n", "请用三句话介绍长城。", "你好！",
    "\t", "Note:", "e-mail me@example.com.", "{{ var }}", "%s", "word", "¿Qué?", "...", "!!", "—",
])


@given(st.lists(pieces, max_size=25).map("".join))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_identity_translation_rebuilds_text_exactly(text):
    for lang in ("en", "zh"):
        assert identity_render(Segmenter(lang, words_tokens, 8), text) == text


@given(st.text(max_size=200))
@settings(max_examples=300, deadline=None)
def test_any_unicode_text_rebuilds_exactly(text):
    assert identity_render(Segmenter("en", words_tokens, 6), text) == text


def test_list_markers_and_blank_lines_are_literal():
    doc = Segmenter("en", words_tokens, 50).segment("Steps:\n1. Fill the kettle.\n2. Boil the water.\n\nNote: use fresh water.")
    assert [s.text for s in doc.segments] == ["Steps:", "Fill the kettle.", "Boil the water.", "Note: use fresh water."]
    literal = "".join(p for p in doc.parts if isinstance(p, str))
    assert literal == "\n1. \n2. \n\n"


def test_code_block_never_reaches_the_model():
    text = "Run this:\n```python\nprint('hello')  # Say hello.\n```\nThen stop."
    doc = Segmenter("en", words_tokens, 50).segment(text)
    assert [s.text for s in doc.segments] == ["Run this:", "Then stop."]


def test_unclosed_code_fence_is_kept_to_the_end():
    text = "Look:\n```\nnot closed. Still code."
    doc = Segmenter("en", words_tokens, 50).segment(text)
    assert [s.text for s in doc.segments] == ["Look:"]


def test_masks_and_numbers_checked_on_restore():
    doc = Segmenter("en", words_tokens, 50).segment("Set {count} to 3 at https://x.org/a.")
    [seg] = doc.segments
    assert "{count}" not in seg.text and "https://x.org/a" not in seg.text and "3" in seg.text
    good, lost = doc.render([seg.text.replace("Set", "Put")])
    assert good == "Put {count} to 3 at https://x.org/a." and lost == []
    bad, lost = doc.render([seg.text.replace(" 3 ", " three ")])
    assert lost == ["3"]
    dropped, lost = doc.render(["Put it there."])
    assert set(lost) == {"{count}", "https://x.org/a", "3"}


def test_url_is_not_split_into_sentences():
    text = "Open https://example.org/docs?ref=a.b_c#setup now. Then read it."
    assert len(split_sentences(text)) == 3  # pysbd alone splits inside the URL...
    doc = Segmenter("en", words_tokens, 50).segment(text)
    assert len(doc.segments) == 2  # ...masking first keeps it whole


def test_has_words_any_script():
    assert has_words("长城") and has_words("é") and not has_words("- 3.5 !!") and not has_words("")
