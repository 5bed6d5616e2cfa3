"""Self-Instruct: bootstrap new instructions (with inputs and outputs) from seed tasks.

Wang et al., 2022, "Self-Instruct: Aligning Language Models with Self-Generated Instructions"
(arXiv:2212.10560), and its Stanford Alpaca variant (Taori et al., 2023). Each round:

1. **Prompts**: ``prompts_per_round`` few-shot prompts, each listing ``num_seed_in_prompt``
   seed instructions and ``num_machine_in_prompt`` instructions generated earlier (seeds fill
   in while there are too few), drawn with a seeded RNG.
2. **Generation**: ``n`` samples per prompt; sample ``i`` of prompt ``p`` in round ``r`` gets
   its own seed (``seed + (r * prompts_per_round + p) * n + i``), so a run is reproducible and
   every sample says which seed made it.
3. **Parsing** (:mod:`~instructmill.methods.llm_parsing`): numbered lists, Alpaca
   ``Instruction/Input/Output`` blocks (typos and numbering slips read leniently), JSON with
   extra text; a sample with nothing readable becomes a ``parse_error`` record with its raw text.
4. **Filtering**, in the paper's order: length bounds (``min_words`` .. ``max_words`` words),
   the keyword blacklist (things a text model cannot do: images, files, audio...),
   ``Write a program`` openings, instructions starting with punctuation or a non-ASCII
   character; then ROUGE-L >= ``rouge_threshold`` against the pool (seeds + every instruction
   kept so far, including earlier ones of the same sample), exact, in
   :class:`~instructmill.methods.rouge.RougeFilter`.
5. **Instances**: an output (``instances="direct"``: the instruction sent to the model as a
   chat turn) or first an input, then the output (``"input_first"``: the paper's input-first
   approach, few-shot from seed tasks). Alpaca-style items keep the input/output they came
   with unless ``regenerate_outputs``.

Rounds repeat until ``num_instructions`` records are kept with outputs (the last round may
overshoot) or ``max_rounds`` is reached. Every generation ends up in exactly one record: kept
(``status="ok"``) or discarded with its reason and raw text (``parse_error``, ``truncated``,
``too_short``, ``too_long``, ``blacklisted``, ``bad_start``, ``rouge_duplicate`` with the
matched pool text and score, ``empty_output``, ``output_truncated``, ``prompt_too_long``).

Ids are ``si-<round>-<prompt>-<sample>-<item>`` (all from 0; ``si-<round>-<prompt>-<sample>``
for a record about a whole sample), stable across reruns with the same seed.

Example::

    si = SelfInstruct(llm, SelfInstructOptions(prompts_per_round=8))
    for batch in si.run(seed_examples, num_instructions=100):
        write(batch)
    print(si.summary)
"""
from __future__ import annotations

import json
import math
import random
import re
import string
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterable, Iterator, Sequence

from ..arguments import ArgumentTypeError, items
from ..engine.llm import GenerationResult, LLMBackend, SamplingOptions
from ..errors import OptionError
from ..records import Example, OutputRecord
from ..status import (STATUS_BAD_START, STATUS_BLACKLISTED, STATUS_EMPTY, STATUS_EMPTY_OUTPUT, STATUS_OK,
                      STATUS_OUTPUT_TRUNCATED, STATUS_PARSE_ERROR, STATUS_PROMPT_TOO_LONG,
                      STATUS_ROUGE_DUPLICATE, STATUS_TOO_LONG, STATUS_TOO_SHORT, STATUS_TRUNCATED,
                      record_status)
from .llm_parsing import ParsedTask, ParseResult, is_no_input, parse_tasks, unwrap_fence
from .structured import tasks_schema, use_structured
from .prompts import render
from .rouge import RougeFilter, rouge_l_tokens, tokenize
from .seeding import stable_seed as _stable_seed
from .tally import Tally

__all__ = ["BLACKLIST", "SelfInstruct", "SelfInstructOptions", "check_instruction", "parse_sample"]

#: Keywords of things a text-only model cannot do (Self-Instruct's list plus Alpaca's additions).
BLACKLIST = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
             "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram")

PROMPT_STYLES = ("self_instruct", "alpaca")
INSTANCE_STYLES = ("direct", "input_first", "none")
#: Statuses of records whose instruction passed the filters (it stays in the ROUGE pool).
INSTANCE_STATUSES = (STATUS_EMPTY_OUTPUT, STATUS_OUTPUT_TRUNCATED, STATUS_PROMPT_TOO_LONG)


@dataclass(frozen=True)
class SelfInstructOptions:
    """How to generate and filter.

    Attributes:
        prompt_style: ``"self_instruct"`` (the paper's completion prompt, a numbered list of
            tasks for the model to continue; suits small models) or ``"alpaca"`` (Alpaca's
            requirements and numbered Instruction/Input/Output blocks; needs a stronger model).
        chat: send the task-generation prompt as a chat user turn (default: raw text, which
            the model continues).
        num_seed_in_prompt: seed tasks per prompt (default 6 for self_instruct, 3 for alpaca).
        num_machine_in_prompt: generated instructions per prompt (default 2 for
            self_instruct, 0 for alpaca, as in the two releases).
        max_tasks_per_sample: new tasks a sample may write before it is stopped.
        prompts_per_round: prompts per round (each sampled ``sampling.n`` times).
        max_rounds: stop after this many rounds even if fewer instructions were kept.
        min_words: fewest words an instruction may have (whitespace-separated, inclusive).
        max_words: most words an instruction may have (whitespace-separated, inclusive).
        blacklist: keywords (whole words or phrases, case-insensitive) that discard an instruction.
        reject_write_a_program: discard instructions starting with "Write a program" (the paper).
        ascii_start: discard instructions whose first character is not ASCII (the paper; turn
            off for non-English generation).
        rouge_threshold: discard an instruction whose ROUGE-L with a pool instruction is >= this.
        instances: ``"direct"``, ``"input_first"`` or ``"none"`` (instructions only).
        regenerate_outputs: alpaca style: generate outputs anew instead of keeping the sample's.
        instance_system: system message of the output requests (``None`` or ``""``: the
            model's default). The default asks for short answers, as Alpaca's prompt asked for
            outputs under 100 words: with SmolLM2-135M it halved the output tokens and the
            outputs cut by ``max_tokens`` (measured on 96 generated instructions).
        keep_truncated_outputs: keep outputs cut by ``instance_sampling.max_tokens``.
        size_last_round: after the first round, send only as many prompts as the records still
            needed call for (from the yield per prompt so far, plus 30%), so the last round
            overshoots little.
        structured: alpaca style: ask for the tasks as JSON constrained by a JSON schema
            (:mod:`~instructmill.methods.structured`); ``None`` = when the backend supports it (vLLM,
            openai). The self_instruct style stays a free-text list continuation.
        seed: seed of the prompt RNG and of every sample.
        sampling: task generation sampling (``n`` samples per prompt; ``seed`` is ignored).
        instance_sampling: input / output generation sampling (``n`` must be 1).

    Raises:
        OptionError: a value out of range.
    """

    prompt_style: str = "self_instruct"
    chat: bool = False
    num_seed_in_prompt: int | None = None
    num_machine_in_prompt: int | None = None
    max_tasks_per_sample: int = 8
    prompts_per_round: int = 16
    max_rounds: int = 100
    min_words: int = 3
    max_words: int = 150
    blacklist: tuple[str, ...] = BLACKLIST
    reject_write_a_program: bool = True
    ascii_start: bool = True
    rouge_threshold: float = 0.7
    instances: str = "direct"
    regenerate_outputs: bool = False
    instance_system: str | None = "Answer in at most a few sentences."
    keep_truncated_outputs: bool = False
    size_last_round: bool = True
    structured: bool | None = None
    seed: int = 0
    sampling: SamplingOptions = field(default_factory=lambda: SamplingOptions(
        n=2, temperature=0.7, top_p=0.9, max_tokens=192, repetition_penalty=1.1))
    instance_sampling: SamplingOptions = field(default_factory=lambda: SamplingOptions(
        temperature=0.7, top_p=0.9, max_tokens=384, repetition_penalty=1.1))

    def __post_init__(self) -> None:
        if isinstance(self.blacklist, str):
            object.__setattr__(self, "blacklist", (self.blacklist,))
        elif not isinstance(self.blacklist, tuple):
            object.__setattr__(self, "blacklist", tuple(self.blacklist))
        if self.prompt_style not in PROMPT_STYLES:
            raise OptionError("prompt_style", self.prompt_style, f"choose from {', '.join(PROMPT_STYLES)}")
        if self.instances not in INSTANCE_STYLES:
            raise OptionError("instances", self.instances, f"choose from {', '.join(INSTANCE_STYLES)}")
        defaults = {"self_instruct": (6, 2), "alpaca": (3, 0)}[self.prompt_style]
        if self.num_seed_in_prompt is None:
            object.__setattr__(self, "num_seed_in_prompt", defaults[0])
        if self.num_machine_in_prompt is None:
            object.__setattr__(self, "num_machine_in_prompt", defaults[1])
        for name in ("num_seed_in_prompt", "num_machine_in_prompt"):
            if getattr(self, name) < 0:
                raise OptionError(name, getattr(self, name), "must be >= 0")
        if self.num_seed_in_prompt + self.num_machine_in_prompt < 1:
            raise OptionError("num_seed_in_prompt", self.num_seed_in_prompt, "a prompt needs at least one example")
        for name in ("max_tasks_per_sample", "prompts_per_round", "max_rounds", "min_words"):
            if getattr(self, name) < 1:
                raise OptionError(name, getattr(self, name), "must be a positive integer")
        if self.max_words < self.min_words:
            raise OptionError("max_words", self.max_words, f"must be >= min_words ({self.min_words})")
        if not 0 < self.rouge_threshold <= 1:
            raise OptionError("rouge_threshold", self.rouge_threshold, "must be in (0, 1]")
        if any(not w.strip() for w in self.blacklist):
            raise OptionError("blacklist", self.blacklist, "keywords must be non-empty")
        if self.instance_sampling.n != 1:
            raise OptionError("instance_sampling.n", self.instance_sampling.n, "one output per instruction")


# ----------------------------------------------------------------------------- filters

_BLACKLIST_CACHE: dict[tuple[str, ...], re.Pattern] = {}


def _blacklist_re(words: tuple[str, ...]) -> re.Pattern:
    pattern = _BLACKLIST_CACHE.get(words)
    if pattern is None:
        alternatives = "|".join(r"\s+".join(map(re.escape, w.split())) for w in sorted(words, key=len, reverse=True))
        pattern = _BLACKLIST_CACHE[words] = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.I)
    return pattern


def check_instruction(instruction: str, options: SelfInstructOptions) -> tuple[str, str] | None:
    """The paper's rule-based filters (before ROUGE-L); ``None`` = passes, else ``(status, detail)``.

    Statuses: ``empty``, ``too_short``, ``too_long``, ``blacklisted``, ``bad_start``.
    """
    text = instruction.strip()
    if not text:
        return STATUS_EMPTY, "no instruction text"
    words = len(text.split())
    if words < options.min_words:
        return STATUS_TOO_SHORT, f"{words} words < min_words {options.min_words}"
    if words > options.max_words:
        return STATUS_TOO_LONG, f"{words} words > max_words {options.max_words}"
    if options.blacklist:
        m = _blacklist_re(options.blacklist).search(text)
        if m:
            return STATUS_BLACKLISTED, f"keyword {m.group(0).lower()!r}"
    if options.reject_write_a_program and text.lower().startswith("write a program"):
        return STATUS_BLACKLISTED, "starts with 'Write a program'"
    if text[0] in string.punctuation:
        return STATUS_BAD_START, f"starts with punctuation {text[0]!r}"
    if options.ascii_start and not text[0].isascii():
        return STATUS_BAD_START, f"starts with a non-ASCII character {text[0]!r}"
    return None


def _normalize(instruction: str, style: str) -> str:
    text = instruction.strip()
    if style == "list":
        text = " ".join(text.split()).rstrip(":").strip()  # as the paper's post-processing
    return text[:1].upper() + text[1:]


_STARTS_ITEM_RE = re.compile(r"^\s*[*#]*\s*(?:\d{1,4}\s*[.):]|(?:task|instruction)\s*\d{0,4}\s*[.:])", re.I)


def parse_sample(text: str, lead: str, style: str) -> ParseResult:
    """Parse one sample of a continuation prompt that ended with ``lead`` (``"9."`` or
    ``"4. Instruction:"``): JSON when the sample is JSON, else ``lead + text`` in ``style``
    (``"list"`` or ``"alpaca"``) -- unless the sample starts an item of its own (it restarted
    the numbering), in which case the lead is not prepended."""
    body = unwrap_fence(text)[0].lstrip() if text.lstrip().startswith("```") else text.lstrip()
    if body.startswith(("{", "[")):
        parsed = parse_tasks(text, "json")
        if parsed.status == STATUS_OK:
            return parsed
    joined = text if _STARTS_ITEM_RE.match(text) else lead + ("" if text[:1].isspace() else " ") + text
    return parse_tasks(joined, style)


# ------------------------------------------------------------------------------ method

@dataclass
class _Candidate:
    id: str
    round: int
    prompt: int
    sample: int
    item: int | None
    seed: int | None
    raw: str
    task: ParsedTask | None = None
    status: str = STATUS_OK
    detail: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)



class SelfInstruct:
    """Runs Self-Instruct with one :class:`~instructmill.engine.llm.LLMBackend`.

    Args:
        llm: the model (any backend: vLLM, CTranslate2, transformers, or a fake in tests).
        options: :class:`SelfInstructOptions`.

    Attributes:
        summary: counts, updated as rounds finish: ``rounds``, ``prompts``, ``samples``,
            ``parsed`` (items read from samples), ``kept`` (passed every filter), ``ok``
            (kept with an output), ``discarded`` (``{status: count}``), ``output_tokens``,
            ``seconds``.
    """

    method = "self_instruct"

    def __init__(self, llm: LLMBackend, options: SelfInstructOptions | None = None):
        self.llm = llm
        self.options = options or SelfInstructOptions()
        self.summary = Tally({"rounds": 0, "prompts": 0, "samples": 0, "parsed": 0, "kept": 0,
                              "ok": 0, "discarded": {}, "output_tokens": 0, "seconds": 0.0,
                              "parse_attempts": 0, "parse_ok": 0})
        #: tasks come back as schema-constrained JSON (alpaca style on a backend that supports it)
        self.structured = self.options.prompt_style == "alpaca" and use_structured(self.options.structured, llm)
        self.summary.add("structured", int(self.structured))

    # ------------------------------------------------------------------ provenance
    def settings(self) -> dict[str, Any]:
        """Everything that changes the results (for the run state / resume check)."""
        opts = asdict(self.options)
        opts["blacklist"] = list(self.options.blacklist)
        opts["structured"] = self.structured  # resolved: what was actually sent
        return {"method": self.method, "options": opts, "engine": self.llm.settings()}

    def record_settings(self) -> dict[str, Any]:
        """The compact provenance every record carries."""
        out = {"backend": self.llm.name, "model": self.llm.model, "seed": self.options.seed,
               "prompt_style": self.options.prompt_style}
        if self.structured:
            out["structured"] = True
        return out

    # --------------------------------------------------------------------- prompts
    def build_prompt(self, examples: Sequence[Example]) -> tuple[str | list[dict], str]:
        """The task-generation prompt for ``examples`` and the text that starts the model's
        continuation (prepended to the output before parsing)."""
        k = len(examples) + 1
        if self.structured:
            return self._json_prompt(examples), ""
        if self.options.prompt_style == "self_instruct":
            text = render("self_instruct_tasks")
            for i, ex in enumerate(examples, 1):
                text += f"{i}. {' '.join(ex.instruction.split()).rstrip(':')}\n"
            lead = f"{k}."
        else:
            text = render("alpaca_tasks", num_tasks=str(len(examples) + self.options.max_tasks_per_sample))
            for i, ex in enumerate(examples, 1):
                text += (f"###\n{i}. Instruction: {ex.instruction.strip()}\n{i}. Input:\n"
                         f"{ex.input.strip() or '<noinput>'}\n{i}. Output:\n{ex.output.strip()}\n")
            text += "###\n"
            lead = f"{k}. Instruction:"
        text += lead
        if self.options.chat:
            return [{"role": "user", "content": text}], lead
        return text, lead

    def _json_prompt(self, examples: Sequence[Example]) -> list[dict]:
        """Alpaca's task prompt asking for JSON (the shape :func:`~instructmill.methods.structured.tasks_schema`
        enforces), the examples shown as such JSON."""
        n = self.options.max_tasks_per_sample
        text = render("alpaca_tasks", num_tasks=str(n)).replace(f"List of {n} tasks:", "").rstrip()
        shown = [{"instruction": ex.instruction.strip(), "input": ex.input.strip(), "output": ex.output.strip()}
                 for ex in examples]
        text += ("\n\nAnswer with a JSON object {\"tasks\": [...]} holding up to " f"{n} new tasks, each "
                 '{"instruction", "input", "output"} (input "" when none is needed). Examples:\n'
                 + json.dumps({"tasks": shown}, ensure_ascii=False, indent=1))
        return [{"role": "user", "content": text}]

    def _stops(self, k: int) -> tuple[str, ...]:
        if self.structured:
            return self.options.sampling.stop
        last = k + self.options.max_tasks_per_sample
        own = (f"\n{last}.",) if self.options.prompt_style == "self_instruct" else (f"{last}. Instruction",)
        return own + tuple(s for s in self.options.sampling.stop if s not in own)

    # ------------------------------------------------------------------------- run
    def run(self, seed_tasks: Iterable[Example | str], num_instructions: int, *,
            done: Iterable[dict[str, Any]] = ()) -> Iterator[list[OutputRecord]]:
        """Generate until ``num_instructions`` records are kept with outputs; yields each
        round's records (kept and discarded, one per generated item or failed sample).

        Args:
            seed_tasks: the seed tasks (:class:`~instructmill.records.Example` or instruction
                strings); their instructions start the ROUGE pool.
            num_instructions: how many ``ok`` records to reach (counting ``done``).
            done: records of an interrupted run (dicts with ``id``, ``status``,
                ``instruction`` and ``extra``, as read back from its files): the run continues
                from the first round not fully written, with the pool as it was then (a partly
                written round is generated again -- the same seeds give the same samples -- and
                only its missing records are yielded); no id is produced twice.

        Raises:
            ArgumentTypeError: (a ``TypeError``, at call time) ``seed_tasks`` is one string, or
                an item is neither an Example nor a string.
            OptionError: no seed tasks, or ``num_instructions < 1``.
        """
        seeds = []
        for index, ex in enumerate(items(seed_tasks, name="seed_tasks", of="Examples or strings")):
            if not isinstance(ex, (Example, str)):
                raise ArgumentTypeError(f"seed_tasks[{index}] is {type(ex).__name__}, not an Example or a str")
            seeds.append(ex if isinstance(ex, Example) else Example(instruction=ex))
        return self._run(seeds, num_instructions, done)

    def _run(self, seeds: list[Example], num_instructions: int,
             done: Iterable[dict[str, Any]]) -> Iterator[list[OutputRecord]]:
        seeds = [ex for ex in seeds if ex.instruction.strip()]
        if not seeds:
            raise OptionError("seed_tasks", len(seeds), "need at least one seed task with an instruction")
        if num_instructions < 1:
            raise OptionError("num_instructions", num_instructions, "must be a positive integer")
        opts = self.options
        pool = RougeFilter(opts.rouge_threshold, [ex.instruction for ex in seeds])
        # kept instructions' closest seed, for the report's histogram (the paper's Fig. 3)
        self._seed_tokens = [tokenize(ex.instruction) for ex in seeds]
        machine: list[str] = []
        done_ids: set[str] = set()
        start_round, ok, yield_ok, yield_prompts = self._restore(done, pool, machine, done_ids)
        # ok records when the round began, as an uninterrupted run counted them: a partly written
        # round is redone whole, so its records already written do not count yet
        at_round_start = yield_ok
        for r in range(start_round, opts.max_rounds):
            if at_round_start >= num_instructions:
                break
            started = time.perf_counter()
            size = opts.prompts_per_round
            if opts.size_last_round and yield_ok > 0:
                # expected ok records per prompt so far; 30% margin against a short last round
                needed = num_instructions - at_round_start
                size = max(1, min(size, math.ceil(needed * yield_prompts / yield_ok * 1.3)))
            records = self._round(r, size, seeds, machine, pool, done_ids)
            for rec in records:
                self._count(rec)
            new_ok = sum(rec.status == STATUS_OK for rec in records)
            ok += new_ok
            at_round_start = ok
            yield_ok, yield_prompts = ok, yield_prompts + size
            self.summary.add("rounds", 1)
            self.summary.add("seconds", time.perf_counter() - started)
            yield records

    def _restore(self, done: Iterable[dict[str, Any]], pool: RougeFilter, machine: list[str],
                 done_ids: set[str]) -> tuple[int, int, int, int]:
        """Rebuild the state after ``done``: ``(start round, ok records, ok records and prompts of
        the complete rounds)``."""
        rounds: Counter[int] = Counter()
        ok_by_round: Counter[int] = Counter()
        expected: dict[int, int] = {}
        round_prompts: dict[int, int] = {}
        in_pool: list[tuple[tuple[int, ...], str]] = []
        ok = 0
        for rec in done:
            rid = str(rec.get("id"))
            parts = rid.split("-")
            if parts[0] != "si" or not all(p.isdigit() for p in parts[1:]):
                continue
            done_ids.add(rid)
            extra = rec.get("extra") or {}
            r = int(parts[1])
            rounds[r] += 1
            if isinstance(extra.get("round_records"), int):
                expected[r] = extra["round_records"]
            if isinstance(extra.get("round_prompts"), int):
                round_prompts[r] = extra["round_prompts"]
            status = rec.get("status")
            ok += status == STATUS_OK
            ok_by_round[r] += status == STATUS_OK
            if status == STATUS_OK or status in INSTANCE_STATUSES:
                in_pool.append((tuple(int(p) for p in parts[1:]), str(rec.get("instruction") or "")))
        if not rounds:
            return 0, ok, 0, 0
        last = max(rounds)
        start = last + 1 if expected.get(last) == rounds[last] else last
        # The pool as it was when round `start` began; a partly written round is redone (same
        # seeds, same outputs) and only its missing records are yielded.
        for key, text in sorted(in_pool):
            if key[0] < start:
                pool.add(text)
                machine.append(text)
        complete = range(start)
        return (start, ok, sum(ok_by_round[r] for r in complete),
                sum(round_prompts.get(r, self.options.prompts_per_round) for r in complete))

    def _round(self, r: int, size: int, seeds: list[Example], machine: list[str], pool: RougeFilter,
               done_ids: set[str]) -> list[OutputRecord]:
        opts = self.options
        rng = random.Random(f"{opts.seed}:{r}")
        prompts, leads, params = [], [], []
        for p in range(size):
            chosen = [Example(instruction=t) for t in rng.sample(machine, min(opts.num_machine_in_prompt, len(machine)))]
            k_seed = min(len(seeds), opts.num_seed_in_prompt + opts.num_machine_in_prompt - len(chosen))
            examples = rng.sample(seeds, k_seed) + chosen
            prompt, lead = self.build_prompt(examples)
            prompts.append(prompt)
            leads.append(lead)
            base = opts.seed + (r * opts.prompts_per_round + p) * opts.sampling.n
            params.append(replace(opts.sampling, seed=base, stop=self._stops(len(examples) + 1),
                                  json_schema=tasks_schema(opts.max_tasks_per_sample) if self.structured else None))
        results = self.llm.generate(prompts, params)
        self.summary.add("prompts", len(prompts))
        candidates: list[_Candidate] = []
        for p, result in enumerate(results):
            candidates.extend(self._parse_result(r, p, result, leads[p], params[p]))
        for cand in candidates:
            if cand.status == STATUS_OK:
                self._filter(cand, pool, machine)
        todo = [c for c in candidates if c.status == STATUS_OK and c.id not in done_ids]
        self._instances(r, todo)
        records = [self._record(c) for c in candidates]
        for rec in records:
            rec.extra.update(round_records=len(records), round_prompts=size)
        return [rec for rec in records if rec.id not in done_ids]

    def _parse_result(self, r: int, p: int, result: GenerationResult, lead: str,
                      params: SamplingOptions) -> list[_Candidate]:
        style = "list" if self.options.prompt_style == "self_instruct" else "alpaca"
        if result.status != STATUS_OK:
            return [_Candidate(f"si-{r}-{p}-{s}", r, p, s, None, None if params.greedy else params.seed + s, "",
                               status=record_status(result.status), detail=result.detail) for s in range(params.n)]
        out: list[_Candidate] = []
        for s, sample in enumerate(result.samples):
            self.summary.add("samples", 1)
            self.summary.add("output_tokens", sample.output_tokens)
            base = dict(round=r, prompt=p, sample=s, seed=sample.seed)
            parsed = parse_tasks(sample.text, "json") if self.structured else parse_sample(sample.text, lead, style)
            self.summary.add("parse_attempts", 1)
            self.summary.add("parse_ok", int(parsed.status == STATUS_OK))
            if parsed.status != STATUS_OK:
                out.append(_Candidate(f"si-{r}-{p}-{s}", **base, item=None, raw=sample.text,
                                      status=STATUS_PARSE_ERROR, detail=parsed.detail or "nothing readable",
                                      extra={"finish_reason": sample.finish_reason}))
                continue
            last = len(parsed.items) - 1
            for i, task in enumerate(parsed.items):
                self.summary.add("parsed", 1)
                cand = _Candidate(f"si-{r}-{p}-{s}-{i}", **base, item=i, raw=task.raw, task=task)
                if task.warnings:
                    cand.extra["parse_warnings"] = list(task.warnings)
                if task.status != STATUS_OK:
                    cand.status, cand.detail = task.status, task.detail
                elif i == last and sample.finish_reason == "length":
                    cand.status, cand.detail = STATUS_TRUNCATED, "the sample hit max_tokens inside this item"
                out.append(cand)
        return out

    def _filter(self, cand: _Candidate, pool: RougeFilter, machine: list[str]) -> None:
        task = cand.task
        assert task is not None
        style = "list" if self.options.prompt_style == "self_instruct" else "alpaca"
        task.instruction = _normalize(task.instruction, style)
        failed = check_instruction(task.instruction, self.options)
        if failed:
            cand.status, cand.detail = failed
            return
        match = pool.check(task.instruction)
        if match is not None:
            cand.status = STATUS_ROUGE_DUPLICATE
            cand.detail = f"ROUGE-L {match.score:.3f} >= {self.options.rouge_threshold} with a pool instruction"
            cand.extra.update(matched=match.text, rouge_l=round(match.score, 4))
            return
        pool.add(task.instruction)
        machine.append(task.instruction)
        tokens = tokenize(task.instruction)
        cand.extra["rouge_l_to_seeds"] = round(max((rouge_l_tokens(tokens, seed) for seed in self._seed_tokens),
                                                   default=0.0), 4)
        self.summary.add("kept", 1)

    def _instances(self, r: int, todo: list[_Candidate]) -> None:
        opts = self.options
        if opts.instances == "none":
            return
        need = [c for c in todo if c.task is not None and (opts.regenerate_outputs or c.task.output is None)]
        if opts.instances == "input_first":
            inputs = [c for c in need if c.task.output is None]  # alpaca items came with an input
            prompts = [self._input_prompt(c.task.instruction) for c in inputs]
            params = [replace(opts.instance_sampling, seed=_stable_seed(opts.seed, "input", c.id),
                              stop=("\nTask:", "\n\n") + opts.instance_sampling.stop) for c in inputs]
            for cand, result in zip(inputs, self.llm.generate(prompts, params)):
                text = result.text.strip() if result.status == STATUS_OK else ""
                cand.task.input = "" if is_no_input(text) else text
                self.summary.add("output_tokens", sum(s.output_tokens for s in result.samples))
        system = [{"role": "system", "content": opts.instance_system}] if opts.instance_system else []
        prompts = [system + [{"role": "user", "content": f"{c.task.instruction}\n\n{c.task.input}".strip()}]
                   for c in need]
        params = [replace(opts.instance_sampling, seed=_stable_seed(opts.seed, "output", c.id)) for c in need]
        for cand, result in zip(need, self.llm.generate(prompts, params)):
            if result.status != STATUS_OK:
                cand.status, cand.detail = record_status(result.status), result.detail
                continue
            sample = result.samples[0]
            self.summary.add("output_tokens", sample.output_tokens)
            cand.task.output = sample.text.strip()
            cand.extra["output_seed"] = sample.seed
            if not cand.task.output:
                cand.status, cand.detail = STATUS_EMPTY_OUTPUT, "the model wrote no output"
            elif sample.finish_reason == "length" and not opts.keep_truncated_outputs:
                cand.status = STATUS_OUTPUT_TRUNCATED
                cand.detail = f"output hit max_tokens ({opts.instance_sampling.max_tokens})"

    def _input_prompt(self, instruction: str) -> str:
        text = render("instance_input")
        for ex in self._input_examples:
            text += f"\nTask: {ex.instruction.strip()}\nInput: {ex.input.strip() or '<noinput>'}\n"
        return text + f"\nTask: {instruction.strip()}\nInput:"

    _input_examples: tuple[Example, ...] = (
        Example("Sort the given list ascendingly.", "[10, 92, 2, 5, -4, 92, 5, 101]"),
        Example("Give me a joke about cats."),
        Example("Suggest a better and more professional rephrasing of the following sentence.",
                "This house is surprisingly not constructed very well, and you probably need more money to fix it."),
        Example("Name three European capitals."),
    )

    def _record(self, cand: _Candidate) -> OutputRecord:
        task = cand.task
        example = Example(instruction=task.instruction if task else "", input=task.input if task else "",
                          output=(task.output or "") if task else "")
        extra: dict[str, Any] = {"round": cand.round, "prompt": cand.prompt, "sample": cand.sample,
                                 "seed": cand.seed}
        if cand.item is not None:
            extra["item"] = cand.item
        extra.update(cand.extra)
        if cand.status != STATUS_OK:
            extra["detail"] = cand.detail
            extra["raw"] = cand.raw
        return OutputRecord(cand.id, example, cand.status, self.method, self.record_settings(), extra)

    def _count(self, rec: OutputRecord) -> None:
        if rec.status == STATUS_OK:
            self.summary.add("ok", 1)
        else:
            self.summary.add_to("discarded", rec.status)
