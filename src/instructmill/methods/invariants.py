"""Word-level invariants of an English paraphrase: what a rewording may never change.

Sentence embeddings (:mod:`~instructmill.methods.meaning`) miss the small edits that flip a
sentence's meaning while keeping its words: on 30 back-translated ShareGPT conversations read by
hand (the lead's note for issue 12), the errors that MiniLM passed were mostly

* **negations** dropped or added: "Undiscovered dragon eggs" -> "Dragon eggs discovered",
  "Inability to process" -> "Ability to process", "`not` Logical NOT" -> "`not` Logical";
* **person** swapped in pronouns: "what he thinks of your theory" -> "of his theory",
  "I freed him" -> "I free you" (Portuguese "seu" is his / her / your / their);
* **names and terms** cut or renamed: "Internet Assigned Numbers Authority" -> "Assigned Numbers
  Authority", "Closure Library" -> "the Library", "IQP" -> "IQ".

:func:`invariant_issue` checks each of these on one source / paraphrase sentence pair and names the
first that fails. They are deliberately strict (a reworded sentence that changes none of them is
fine; one that does keeps its source text), cheap (regular expressions) and English-only: for
another source language :func:`invariant_issue` returns ``None``.
"""
from __future__ import annotations

import re
from collections import Counter

__all__ = ["INVARIANTS", "invariant_issue"]

_WORD_RE = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
#: Words that negate; contractions ("don't", "isn't") count through their "n't".
NEGATIONS = frozenset({"not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "cannot",
                       "without", "nowhere"})
#: Prefixes that negate a word ("undiscovered", "inability", "disagree", "nonzero").
_NEG_PREFIX_RE = re.compile(r"^(un|in|im|ir|il|dis|non)([a-z]{4,})$")
#: Pronouns by grammatical person ("it" / "its" left out: translations add and drop dummy subjects).
PERSONS = {
    "first": frozenset({"i", "me", "my", "mine", "myself", "we", "us", "our", "ours", "ourselves"}),
    "second": frozenset({"you", "your", "yours", "yourself", "yourselves"}),
    "third": frozenset({"he", "him", "his", "himself", "she", "her", "hers", "herself", "they", "them",
                        "their", "theirs", "themselves"}),
}
#: Capitalized words that say nothing about names (sentence starts are skipped anyway).
_COMMON_CAPS = frozenset({"I", "A", "An", "The", "This", "That", "These", "Those", "It", "If", "In", "On",
                          "For", "To", "And", "But", "Or", "So", "As", "At", "By", "Of", "With", "From",
                          "Yes", "No", "Note", "Example", "Step", "Answer", "Question", "User", "Assistant",
                          "Here", "There", "You", "We", "He", "She", "They", "My", "Your", "Our", "Their"})
_ACRONYM_RE = re.compile(r"\b[A-Z][A-Z0-9]*[A-Z][A-Z0-9]*s?\b")  # two capitals or more: IQP, API, GPUs
_NAME_RE = re.compile(r"(?<![.!?:]\s)(?<!^)\b[A-Z][a-z]+(?:[A-Z][a-z]+)*\b")


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD_RE.findall(text)]


def _negations(words: list[str]) -> int:
    return sum(1 for w in words if w in NEGATIONS or w.endswith("n't"))


def _negation(source: str, paraphrase: str) -> bool:
    src, out = _words(source), _words(paraphrase)
    if _negations(src) != _negations(out):
        return True
    out_set = set(out)
    for word in set(src):  # "undiscovered" -> "discovered": the prefix went, the stem stayed
        match = _NEG_PREFIX_RE.match(word)
        if match and word not in out_set and match.group(2) in out_set:
            return True
    for word in set(out):  # and the other way round
        match = _NEG_PREFIX_RE.match(word)
        if match and word not in set(src) and match.group(2) in set(src):
            return True
    return False


def _person(source: str, paraphrase: str) -> bool:
    src, out = Counter(_words(source)), Counter(_words(paraphrase))
    for pronouns in PERSONS.values():
        a = sum(src[p] for p in pronouns)
        b = sum(out[p] for p in pronouns)
        if (a == 0) != (b == 0) or abs(a - b) > 1:  # one more or less is word order; a new person is not
            return True
    return False


def _names(source: str, paraphrase: str) -> bool:
    if Counter(_ACRONYM_RE.findall(source)) != Counter(_ACRONYM_RE.findall(paraphrase)):
        return True
    out_words = set(_WORD_RE.findall(paraphrase))
    for name in _NAME_RE.findall(source.strip()):
        if name not in _COMMON_CAPS and name not in out_words:
            return True
    return False


#: The checks, in the order reported: name -> ``check(source, paraphrase) -> changed?``.
INVARIANTS = {"negation": _negation, "person": _person, "name": _names}


def invariant_issue(source: str, paraphrase: str, lang: str = "en") -> str | None:
    """The first invariant (``"negation"``, ``"person"``, ``"name"``) that the paraphrase of one
    sentence breaks, or ``None``.

    ``source`` / ``paraphrase``: one sentence each (strings; any length, compared as words).
    ``lang``: the source language; only English (``"en"``, ``"en_US"``...) is checked.
    """
    if not lang.lower().startswith("en"):
        return None
    for name, changed in INVARIANTS.items():
        if changed(source, paraphrase):
            return name
    return None
