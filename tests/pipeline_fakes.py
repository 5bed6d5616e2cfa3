"""Deterministic fake engines for pipeline tests, loadable from a pipeline file.

With ``INSTRUCTMILL_ALLOW_TEST_BACKENDS=1`` (and this folder on ``PYTHONPATH``) a pipeline engine
``{backend: python, factory: "pipeline_fakes:llm", params: {delay: 0.01}}`` builds :func:`llm`, and
``factory: "pipeline_fakes:mt"`` builds one :class:`FakeMT` direction.

* :func:`llm`: a :class:`fake_llm.FakeLLM` whose answers depend only on the prompt and the seed:
  Self-Instruct list prompts are continued with three tasks drawn from the seed; chat turns are
  answered with ``"Answer <n>: <question>"``. ``delay`` seconds per request make a run slow enough
  to be killed at chosen points. ``fail_on``: a chat question containing it raises ``RuntimeError``.
* :class:`FakeMT`: word-level "translation": forward tags words with the pivot, backward untags them
  and swaps a few synonyms (so some paraphrases change and some come back ``unchanged``).
"""
from __future__ import annotations

import random
import re
import threading
import time

from fake_llm import FakeLLM
from instructmill.engine.translation import Encoded, TranslationBackend

VERBS = ["Describe", "Explain", "Summarize", "List", "Compare", "Name", "Suggest", "Rewrite", "Classify",
         "Outline", "Give", "Invent", "Plan", "Draft"]
TOPICS = ["volcanoes", "tea ceremonies", "bicycle repair", "tax forms", "chess openings", "bread baking",
          "glaciers", "jazz history", "robots", "moths", "sailing knots", "origami", "comets", "cheese",
          "bridges", "salt", "owls", "dice games", "tides", "ink", "lighthouses", "kites", "quilts", "ferns"]
AUDIENCES = ["kids", "experts", "tourists", "a quiet garden club", "new students"]
SYNONYMS = {"garden": "yard", "quiet": "calm", "facts": "details", "kids": "children", "new": "fresh",
            "answer": "reply", "describe": "depict", "experts": "specialists"}


def llm_rule(prompt: str, seed: int | None, fail_on: str | None = None) -> str:
    if prompt.startswith("<|user|>") or prompt.startswith("<|system|>"):
        question = prompt.rsplit("<|user|>", 1)[1].split("<|end|>", 1)[0]
        if fail_on and fail_on in question:
            raise RuntimeError(f"fake engine failure on {question!r}")
        rng = random.Random(seed)
        n = rng.randint(1, 99)
        if question.startswith("Below is a response written by"):  # Humpback: write the instruction
            response = question.rsplit("Response:\n", 1)[1]
            return f"Explain this in {n} words: {' '.join(response.split()[:6])}"
        if 'write "Score: <rating>"' in question:  # Humpback: self-curation
            return f"It answers the request.\nScore: {rng.choice([2, 4, 5])}"
        m = re.search(r"#(?:The Given|Given) Prompt#:\n(.*)\n#(?:Rewritten|Created) Prompt#:", question, re.S)
        if m:  # Evol-Instruct: rewrite
            return f"{m.group(1).strip()} Use exactly {n % 7 + 2} steps and one example."
        if "Your Judgement" in question:
            return "Not Equal"
        return f"Answer {n}: {question}"
    m = re.search(r"(\d+)\.$", prompt)
    k = int(m.group(1)) if m else 1
    rng = random.Random(seed)
    lines = [f"{rng.choice(VERBS)} {rng.randint(2, 9)} facts about {rng.choice(TOPICS)} and "
             f"{rng.choice(TOPICS)} for {rng.choice(AUDIENCES)}." for _ in range(3)]
    return " " + "\n".join(f"{k + i}. {line}" if i else line for i, line in enumerate(lines))


class SlowFakeLLM(FakeLLM):
    """FakeLLM that sleeps ``delay`` seconds per request."""

    def __init__(self, rule, *, delay: float = 0.0, **kwargs):
        super().__init__(rule, **kwargs)
        self.delay = delay

    def _generate(self, requests):
        if self.delay:
            time.sleep(self.delay * len(requests))
        return super()._generate(requests)


def llm(model=None, options=None, delay: float = 0.0, fail_on: str | None = None) -> SlowFakeLLM:
    return SlowFakeLLM(lambda prompt, seed: llm_rule(prompt, seed, fail_on), delay=delay, options=options,
                       model=f"fake:{model or 'embedded'}")


class FakeMT(TranslationBackend):
    """One direction of a word-level fake translation model (thread-safe, deterministic)."""

    name = "fake-mt"

    def __init__(self, source_lang: str, target_lang: str, *, delay: float = 0.0, max_input_tokens: int = 60):
        super().__init__()
        self.source_lang, self.target_lang = source_lang, target_lang
        self.model = f"fake-{source_lang}-{target_lang}"
        self.forward = source_lang == "en"
        self.pivot = target_lang if self.forward else source_lang
        self.delay = delay
        self.max_input_tokens = max_input_tokens
        self.parallel_batches = 2
        self.batches = 0
        self._lock = threading.Lock()

    def encode(self, texts):
        return [Encoded(t, len(t.split()) + 1) for t in texts]

    def _one(self, text: str) -> str:
        tag = f"{self.pivot}_"  # one word with the tag (a separate tag word would dominate the pivot text)
        if self.forward:
            return " ".join(tag + w for w in text.split(" "))
        words = [w[len(tag):] if w.startswith(tag) else w for w in text.split(" ")]
        return " ".join(_swap(w) for w in words)

    def translate_batch(self, batch):
        with self._lock:
            self.batches += 1
        if self.delay:
            time.sleep(self.delay)
        out = [self._one(item.payload) for item in batch]
        self.stats.add(segments=len(batch), source_tokens=sum(i.length for i in batch),
                       target_tokens=sum(len(o.split()) + 1 for o in out), seconds=0.0)
        return out


def _swap(word: str) -> str:
    m = re.match(r"^(\w+)(\W*)$", word)
    if not m or m.group(1).lower() not in SYNONYMS:
        return word
    new = SYNONYMS[m.group(1).lower()]
    if m.group(1)[0].isupper():
        new = new[0].upper() + new[1:]
    return new + m.group(2)


def mt(source_lang: str, target_lang: str, delay: float = 0.0) -> FakeMT:
    return FakeMT(source_lang, target_lang, delay=delay)


def mt_pairs(pivots=("xx",), source_lang: str = "en", **kwargs) -> dict:
    """``{pivot: (forward, backward)}`` for :class:`~instructmill.pipeline.Pipeline` ``engines=``."""
    return {p: (FakeMT(source_lang, p, **kwargs), FakeMT(p, source_lang, **kwargs)) for p in pivots}
