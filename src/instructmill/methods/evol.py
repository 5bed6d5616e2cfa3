"""Evol-Instruct: rewrite instructions into harder (in-depth) and rarer (in-breadth) ones.

Xu et al., 2023, "WizardLM: Empowering Large Language Models to Follow Complex Instructions"
(arXiv:2304.12244). Each round, every instruction is evolved by one operation drawn at random
(seeded per record and round) with the prompts of the authors' release
(``prompts/evol_depth.txt``, ``evol_breadth.txt``, ``evol_methods.yaml``):

* in-depth: ``constraints`` (add a constraint), ``deepen`` (deeper inquiry), ``concretize``
  (specific concepts), ``reasoning`` (explicit multi-step reasoning);
* in-breadth: ``breadth`` (a new, rarer instruction of the same domain).

The model then answers the evolved instruction, and the paper's **elimination rules**
(Sec. 3.3) discard failed evolutions:

1. ``evol_no_gain``: no information gain over the original -- the same text, or the model
   judges the two "Equal" with the paper's equality prompt (``equality_check="llm"``;
   ``"rouge"`` uses ROUGE-L >= ``equal_rouge_threshold`` instead, ``"none"`` only identical text);
2. ``evol_too_hard``: the response contains "sorry" and is shorter than
   ``sorry_max_words`` (80) words;
3. ``evol_bad_response``: the response is only punctuation and stop words;
4. ``evol_copied_prompt``: the evolved instruction copies words of the evolving prompt
   ("given prompt", "rewritten prompt", "#Rewritten Prompt#", ...).

A leading echoed label (``#Rewritten Prompt#:``) is stripped before the rules (a formatting
slip, recorded as ``stripped_label``); an empty rewrite is ``evol_empty``. As in the paper, a
failed evolution leaves the instruction as it was for the next round; a successful one is
evolved further.

Records: for input ``X`` and each round ``t`` (1-based), one record ``X:evol<t>`` -- the evolved
instruction with its response (``status="ok"``) or the failed attempt with its rule and raw text.
An input record's ``input`` field is appended to the instruction that is evolved.
"""
from __future__ import annotations

import random
import re
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterator

from ..engine.llm import LLMBackend, SamplingOptions
from ..errors import OptionError, RecordError
from ..records import Example, InputRecord, OutputRecord
from ..status import (STATUS_EVOL_BAD_RESPONSE, STATUS_EVOL_COPIED_PROMPT, STATUS_EVOL_EMPTY,
                      STATUS_EVOL_NO_GAIN, STATUS_EVOL_TOO_HARD, STATUS_OK,
                      record_status)
from .llm_parsing import strip_label
from .base import RecordMethod
from .prompts import load_yaml, render
from .rouge import rouge_l
from .seeding import stable_seed as _seed
from .tally import Tally

__all__ = ["EVOL_OPERATIONS", "EvolOptions", "Evolver", "eliminate"]

DEPTH_OPERATIONS = ("constraints", "deepen", "concretize", "reasoning")
EVOL_OPERATIONS = DEPTH_OPERATIONS + ("breadth",)
EQUALITY_CHECKS = ("llm", "rouge", "none")

#: Rule 4: words of the evolving prompt that must not appear in an evolved instruction.
COPIED_PROMPT_RE = re.compile(r"given\s+prompt|rewritten\s+prompt|created\s+prompt|#[^#\n]{0,40}prompt\s*#",
                              re.I)

#: English stop words (NLTK's list), for rule 3.
STOP_WORDS = frozenset("""
i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself yourselves he him his
himself she she's her hers herself it it's its itself they them their theirs themselves what which who whom this
that that'll these those am is are was were be been being have has had having do does did doing a an the and but
if or because as until while of at by for with about against between into through during before after above
below to from up down in out on off over under again further then once here there when where why how all any
both each few more most other some such no nor not only own same so than too very s t can will just don don't
should should've now d ll m o re ve y ain aren aren't couldn couldn't didn didn't doesn doesn't hadn hadn't hasn
hasn't haven haven't isn isn't ma mightn mightn't mustn mustn't needn needn't shan shan't shouldn shouldn't wasn
wasn't weren weren't won won't wouldn wouldn't
""".split())


@dataclass(frozen=True)
class EvolOptions:
    """Options of Evol-Instruct.

    Attributes:
        operations: the evolutions to draw from (``constraints``, ``deepen``, ``concretize``,
            ``reasoning``, ``breadth``), uniformly.
        rounds: evolution rounds per instruction (the paper runs 4).
        equality_check: rule 1 beyond identical text: ``"llm"`` (the paper's judge prompt),
            ``"rouge"`` (ROUGE-L >= ``equal_rouge_threshold``) or ``"none"``.
        equal_rouge_threshold: the ROUGE-L at which ``equality_check="rouge"`` calls two
            instructions equal.
        respond: answer each evolved instruction (needed for rules 2 and 3 and for outputs).
        sorry_max_words: rule 2: a response with "sorry" shorter than this many words fails.
        seed: seed of the operation draws and every sample (per record and round).
        records_per_batch: records evolved together (each stage is one batch to the model).
        evolution: sampling for rewriting.
        response: sampling for answering.
        judge: sampling for the equality judgement (greedy by default).

    Raises:
        OptionError: a value out of range.
    """

    operations: tuple[str, ...] = EVOL_OPERATIONS
    rounds: int = 1
    equality_check: str = "llm"
    equal_rouge_threshold: float = 0.9
    respond: bool = True
    sorry_max_words: int = 80
    seed: int = 0
    records_per_batch: int = 256
    evolution: SamplingOptions = field(default_factory=lambda: SamplingOptions(
        temperature=0.7, top_p=0.9, max_tokens=160, repetition_penalty=1.1))
    response: SamplingOptions = field(default_factory=lambda: SamplingOptions(
        temperature=0.7, top_p=0.9, max_tokens=384, repetition_penalty=1.1))
    judge: SamplingOptions = field(default_factory=lambda: SamplingOptions(temperature=0.0, max_tokens=8))

    def __post_init__(self) -> None:
        if isinstance(self.operations, str):
            object.__setattr__(self, "operations", (self.operations,))
        elif not isinstance(self.operations, tuple):
            object.__setattr__(self, "operations", tuple(self.operations))
        bad = [op for op in self.operations if op not in EVOL_OPERATIONS]
        if bad or not self.operations:
            raise OptionError("operations", self.operations, f"choose from {', '.join(EVOL_OPERATIONS)}")
        if self.rounds < 1:
            raise OptionError("rounds", self.rounds, "must be a positive integer")
        if self.equality_check not in EQUALITY_CHECKS:
            raise OptionError("equality_check", self.equality_check, f"choose from {', '.join(EQUALITY_CHECKS)}")
        if not 0 < self.equal_rouge_threshold <= 1:
            raise OptionError("equal_rouge_threshold", self.equal_rouge_threshold, "must be in (0, 1]")
        if self.sorry_max_words < 0:
            raise OptionError("sorry_max_words", self.sorry_max_words, "must be >= 0")
        if self.records_per_batch < 1:
            raise OptionError("records_per_batch", self.records_per_batch, "must be a positive integer")
        for name in ("evolution", "response", "judge"):
            if getattr(self, name).n != 1:
                raise OptionError(f"{name}.n", getattr(self, name).n, "one sample per request")


def _words(text: str) -> list[str]:
    return re.findall(r"[\w']+", text.lower())


def eliminate(original: str, evolved: str, response: str | None, options: EvolOptions,
              judge_says_equal: bool | None = None) -> tuple[str, str] | None:
    """The paper's elimination rules; ``None`` = the evolution stands, else ``(status, detail)``.

    Args:
        original: the instruction before this round.
        evolved: the rewritten instruction (leading label already stripped).
        response: the model's answer to ``evolved`` (``None``: not generated, rules 2-3 skipped).
        judge_says_equal: rule 1's LLM verdict when ``equality_check="llm"``.
    """
    if not evolved.strip():
        return STATUS_EVOL_EMPTY, "the rewrite is empty"
    copied = COPIED_PROMPT_RE.search(evolved)
    if copied:
        return STATUS_EVOL_COPIED_PROMPT, f"copies {copied.group(0)!r} from the evolving prompt"
    if " ".join(evolved.split()).casefold() == " ".join(original.split()).casefold():
        return STATUS_EVOL_NO_GAIN, "the rewrite is the original"
    if options.equality_check == "llm" and judge_says_equal:
        return STATUS_EVOL_NO_GAIN, "the judge found the rewrite equal to the original"
    if options.equality_check == "rouge":
        score = rouge_l(original, evolved)
        if score >= options.equal_rouge_threshold:
            return STATUS_EVOL_NO_GAIN, f"ROUGE-L {score:.3f} >= {options.equal_rouge_threshold} with the original"
    if response is not None:
        words = _words(response)
        if "sorry" in response.lower() and len(response.split()) < options.sorry_max_words:
            return STATUS_EVOL_TOO_HARD, f"the response says sorry in {len(response.split())} words"
        if all(w in STOP_WORDS for w in words):
            return STATUS_EVOL_BAD_RESPONSE, "the response is only punctuation and stop words"
    return None


def judge_equal(text: str) -> bool | None:
    """The equality judge's verdict: ``True`` for "Equal", ``False`` for "Not Equal", else ``None``."""
    t = text.strip().lower()
    if re.search(r"\bnot\s+equal\b|\bunequal\b|\bdifferent\b", t):
        return False
    if re.search(r"\bequal\b", t):
        return True
    return None



class Evolver(RecordMethod):
    """Evol-Instruct on one LLM backend.

    Args:
        llm: the model.
        options: :class:`EvolOptions`.

    Attributes:
        summary: ``{"records", "attempts", "ok", "discarded": {status: n}, "operations":
        {op: n}, "output_tokens", "seconds"}``.
    """

    method = "evol_instruct"

    def __init__(self, llm: LLMBackend, options: EvolOptions | None = None):
        self.llm = llm
        self.options = options or EvolOptions()
        self.summary = Tally({"records": 0, "attempts": 0, "ok": 0, "discarded": {}, "operations": {},
                              "output_tokens": 0, "seconds": 0.0})
        self._methods = load_yaml("evol_methods")

    def settings(self) -> dict[str, Any]:
        """Everything that changes the results (for the run state / resume check)."""
        return {"method": self.method, "options": asdict(self.options), "engine": self.llm.settings()}

    def record_settings(self) -> dict[str, Any]:
        return {"backend": self.llm.name, "model": self.llm.model, "seed": self.options.seed}

    def output_ids(self, record_id: str) -> list[str]:
        """The ids :meth:`process` gives the records made from input ``record_id``."""
        return [f"{record_id}:evol{t}" for t in range(1, self.options.rounds + 1)]

    def evolve_prompt(self, instruction: str, operation: str) -> str:
        """The evolving prompt of ``operation`` for ``instruction`` (the authors' wording)."""
        if operation == "breadth":
            return render("evol_breadth", instruction=instruction)
        return render("evol_depth", method=self._methods[operation], instruction=instruction)

    def max_new_tokens(self) -> int:
        """Every round rewrites and answers: ``rounds x (evolution + response max_tokens)``."""
        return self.options.rounds * (self.options.evolution.max_tokens + self.options.response.max_tokens)

    def _generate(self, prompts: list, params: list) -> list:
        results = self.llm.generate(prompts, params)
        self.summary.add("output_tokens", sum(s.output_tokens for r in results for s in r.samples))
        return results

    def _chunk(self, chunk: list[InputRecord]) -> Iterator[OutputRecord]:
        from ..io.readers import to_example

        opts = self.options
        started = time.perf_counter()
        current: dict[int, str] = {}
        out: dict[int, list[OutputRecord]] = {i: [] for i in range(len(chunk))}
        for i, record in enumerate(chunk):
            try:
                ex = to_example(record)
                text = f"{ex.instruction.strip()}\n\n{ex.input.strip()}".strip()
                if not text:
                    raise RecordError("empty instruction", record=record.id, line=record.line, field="instruction")
                current[i] = text
            except RecordError as exc:
                out[i] = [OutputRecord(rid, Example(instruction=""), exc.status, self.method,
                                       self.record_settings(), {"error": str(exc)})
                          for rid in self.output_ids(record.id)]
        for t in range(1, opts.rounds + 1):
            live = sorted(current)
            ops = {i: random.Random(f"{opts.seed}:{chunk[i].id}:{t}").choice(opts.operations) for i in live}
            prompts = [self.evolve_prompt(current[i], ops[i]) for i in live]
            params = [replace(opts.evolution, seed=_seed(opts.seed, "evolve", chunk[i].id, t)) for i in live]
            prompts = [[{"role": "user", "content": p}] for p in prompts]
            state: dict[int, dict[str, Any]] = {}
            for i, result in zip(live, self._generate(prompts, params)):
                s = state[i] = {"op": ops[i], "raw": result.text, "status": STATUS_OK, "extra": {}}
                self.summary.add("attempts", 1)
                self.summary.add_to("operations", ops[i])
                if result.status != STATUS_OK:
                    s.update(status=record_status(result.status), detail=result.detail, evolved="")
                    continue
                s["extra"]["evolution_seed"] = result.samples[0].seed
                evolved, stripped = strip_label(result.text)
                s["evolved"] = evolved
                if stripped:
                    s["extra"]["stripped_label"] = True
            ok = [i for i in live if state[i]["status"] == STATUS_OK and state[i]["evolved"]]
            verdicts: dict[int, bool | None] = {}
            if opts.equality_check == "llm" and ok:
                prompts = [[{"role": "user", "content": render("evol_equal", first=current[i],
                                                               second=state[i]["evolved"])}] for i in ok]
                params = [replace(opts.judge, seed=None if opts.judge.greedy else
                                  _seed(opts.seed, "judge", chunk[i].id, t)) for i in ok]
                for i, result in zip(ok, self._generate(prompts, params)):
                    verdicts[i] = judge_equal(result.text) if result.status == STATUS_OK else None
                    state[i]["extra"]["judge"] = result.text.strip()
            responses: dict[int, str | None] = {i: None for i in live}
            if opts.respond and ok:
                prompts = [[{"role": "user", "content": state[i]["evolved"]}] for i in ok]
                params = [replace(opts.response, seed=_seed(opts.seed, "respond", chunk[i].id, t)) for i in ok]
                for i, result in zip(ok, self._generate(prompts, params)):
                    if result.status != STATUS_OK:
                        state[i].update(status=record_status(result.status), detail=result.detail)
                        continue
                    responses[i] = result.samples[0].text.strip()
                    state[i]["extra"]["response_seed"] = result.samples[0].seed
                    if result.samples[0].finish_reason == "length":
                        state[i]["extra"]["response_truncated"] = True
            for i in live:
                s = state[i]
                if s["status"] == STATUS_OK:
                    failed = eliminate(current[i], s["evolved"], responses[i], opts, verdicts.get(i))
                    if failed:
                        s["status"], s["detail"] = failed
                rid = f"{chunk[i].id}:evol{t}"
                extra = {"round": t, "operation": s["op"], "parent": current[i], **s["extra"]}
                if s["status"] != STATUS_OK:
                    extra.update(detail=s.get("detail"), raw=s["raw"])
                    if responses[i] is not None:
                        extra["response"] = responses[i]
                example = Example(instruction=s.get("evolved", "") or "", output=responses[i] or "")
                out[i].append(OutputRecord(rid, example, s["status"], self.method, self.record_settings(), extra))
                if s["status"] == STATUS_OK:
                    current[i] = s["evolved"]  # evolve further; a failure keeps the old one
        self.summary.add("seconds", time.perf_counter() - started)
        for i in range(len(chunk)):
            self.summary.add("records", 1)
            for rec in out[i]:
                if rec.status == STATUS_OK:
                    self.summary.add("ok", 1)
                else:
                    self.summary.add_to("discarded", rec.status)
                yield rec
