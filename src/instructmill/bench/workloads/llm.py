"""LLM sampling workload: instructmill's LLM path against the raw engines, in one run.

The workload follows vLLM's ``benchmarks/benchmark_throughput.py``:

* **Prompts** (``ShareGPT``, the default): the first human turn of each conversation of
  ``<shared>/data/sharegpt_sample.jsonl.gz`` in file order, tokenized with the model's tokenizer
  (no chat template, as vLLM's benchmark does), kept when they have at least 4 tokens (vLLM prunes
  shorter ones) and truncated to :data:`MAX_INPUT_LEN` tokens (and to what the model's positions
  leave after the output). ``<shared>`` is ``INSTRUCTMILL_SHARED`` or the ``shared`` folder beside
  the checkout. **Random** (``options.input_len``): ``input_len`` token ids drawn uniformly from the
  vocabulary without the special tokens (vLLM's random dataset), seeded by ``options.seed``.
* **Fixed output length**: every engine emits exactly ``output_len`` tokens per prompt, greedy
  (vLLM ``ignore_eos=True, max_tokens=N``; CTranslate2 ``min_length = max_length = N``;
  transformers ``min_new_tokens = max_new_tokens = N``), so the engines do the same work. Output
  tokens are counted from each engine's output and checked against ``prompts x output_len``.
* **Model**: the embedded SmolLM2-135M-Instruct (:func:`instructmill.models.llm.resolve_llm`;
  its HF folder and float32 CTranslate2 conversion are cached in ``INSTRUCTMILL_CACHE``) or
  ``options.model`` (any model argument ``resolve_llm`` takes).

Engines (all get the same token ids):

* ``instructmill`` -- :meth:`VLLMBackend.generate <instructmill.engine.llm.LLMBackend.generate>`
  (validation, chunking, seeds, order by index, EOS handling included in the time). The batch
  budget of :class:`~instructmill.bench.core.BenchOptions` applies here only:
  ``max_batch_size`` becomes the engine's ``max_num_seqs``; ``max_batch_tokens`` caps the
  requests handed to the engine per call (``chunk_size = max_batch_tokens // (longest prompt +
  output_len)``: :class:`~instructmill.engine.vllm_backend.VLLMBackend` has no
  ``max_num_batched_tokens`` option, and on CPU it must prefill whole prompts anyway). Without
  vLLM, instructmill's path is what ``--backend auto`` picks then: the CTranslate2 Generator
  backend (``max_num_seqs`` = its ``max_batch_size``), and ``vllm_raw`` is skipped with the reason.
* ``vllm_raw`` -- ``vllm.LLM.generate`` of all token prompts in one call, one ``SamplingParams``.
  Without a batch budget it runs **on the same engine instance** as instructmill (one engine
  start; interleaved rounds), so the ratio is instructmill's own overhead. With a budget it gets
  its own engine, built with instructmill's default engine arguments, after instructmill's engine
  is shut down (one engine in memory at a time). Those arguments are vLLM's defaults except what
  was measured better on CPU (``shared/notes/engines.md``): float32 (vLLM's ``auto`` picks
  bfloat16, 5-9x slower on an AVX2 CPU), eager mode, all cores bound, whole-prompt prefill.
* ``ct2_generator`` -- ``ctranslate2.Generator.generate_batch`` on the float32 conversion
  (float16 on CUDA), one replica, :data:`CT2_BATCH` prompts per batch.
* ``hf_batched`` -- transformers ``generate``, greedy, batches of :data:`HF_BATCH` prompts, left
  padding, float32 (float16 on CUDA).

Both slow baselines get length-sorted batches (run in a seeded shuffled order) and a CPU thread
count picked by a short probe on the shortest prompts (1 or all cores: with a neighbour on one
core, intra-op threads waiting for each other made them ~10x slower than one thread here), and a
time cap (:data:`CAPS_S`: no batch is started that would likely end past it; the rates are over
the prompts done, a fair sample thanks to the shuffled order). Every engine is warmed up before
it is timed. Rounds: ``options.repeats`` per engine (at least :data:`MIN_VLLM_ROUNDS` for the two
vLLM engines, which take seconds), the fastest counts (the machine is shared; contention only
ever slows a run down); every round's tokens/s and the CPU share other processes took meanwhile
are kept in the engine's ``settings``. ``peak_rss_mb`` here is the RSS of this process **plus its
children** (vLLM runs its engine core in a child process), sampled every 0.1 s.

``--device cuda``: vLLM (GPU build) float16, CTranslate2 ``device="cuda", compute_type="float16"``,
transformers float16 on ``cuda``; the same code path with the device switched. Refused with an
:class:`~instructmill.errors.OptionError` when no CUDA device is visible.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ...errors import OptionError
from ..core import ROLE_BASELINE, ROLE_INSTRUCTMILL, BenchOptions, EngineResult, WorkloadResult
from ._measure import (Call, Counts, Round, engine_result, model_name, require_cuda, shared_data_path,
                       skipped_result, timed_round, vllm_import_error)

__all__ = ["run", "ENGINES", "LLMWorkload", "prepare", "sharegpt_prompts", "random_prompts", "engine_options",
           "instructmill_call", "vllm_raw_call", "start_vllm"]

WORKLOAD = "llm"
HEADLINE = "output_tokens_per_s"
#: instructmill first, then the baselines (the order of the results).
ENGINES: tuple[str, ...] = ("instructmill", "vllm_raw", "ct2_generator", "hf_batched")
#: (prompts, output tokens): full and ``--quick`` workloads.
FULL = (128, 64)
QUICK = (32, 32)
#: ShareGPT prompts are truncated to this many tokens (vLLM's benchmark prunes prompts over 1,024).
MAX_INPUT_LEN = 512
#: vLLM's ``sample_sharegpt_requests`` prunes prompts shorter than this (tokens).
MIN_INPUT_LEN = 4
#: Context slack beyond the longest prompt + output (tokens).
CONTEXT_MARGIN = 8
CT2_BATCH = 32
HF_BATCH = 16
MIN_VLLM_ROUNDS = 3
#: ``VLLM_CPU_KVCACHE_SPACE`` (GiB) when the environment sets none.
KV_CACHE_GIB = 2
#: Time caps of the slow baselines (ct2_generator, hf_batched), seconds, (quick, full): a round
#: does not start a batch that would likely end past the cap; its rates are those of the prompts done.
CAPS_S = (30.0, 300.0)
#: Prompts (the shortest) x output tokens of the probe that picks CPU threads (1 or all cores) for
#: the baselines.
PROBE_PROMPTS, PROBE_TOKENS = 8, 4
BATCH_ORDER = "length-sorted batches, run in a seeded shuffled order"
SHAREGPT_FILE = "sharegpt_sample.jsonl.gz"


def prompt_set_sha256(prompts: Sequence[Sequence[int]]) -> str:
    """SHA-256 of the token ids (JSON), naming the exact prompt set."""
    return hashlib.sha256(json.dumps([list(p) for p in prompts], separators=(",", ":")).encode()).hexdigest()


# ------------------------------------------------------------------------------------ prompts
def sharegpt_prompts(tokenizer: Any, n: int, max_input_len: int, path: str | Path) -> tuple[list[list[int]], dict]:
    """Token ids of the first human turn of the first ``n`` usable ShareGPT conversations.

    A conversation is usable when its first non-empty human turn has at least
    :data:`MIN_INPUT_LEN` tokens; longer prompts are truncated to ``max_input_len`` tokens.

    Returns:
        ``(prompts, stats)``; ``stats`` counts lines read, unreadable lines, conversations without a
        human turn, too-short prompts and truncated prompts (nothing is dropped silently).

    Raises:
        OptionError: the file is missing, or holds fewer than ``n`` usable conversations.
    """
    path = Path(path)
    if not path.is_file():
        raise OptionError("dataset", str(path), "not found: set INSTRUCTMILL_SHARED to the folder holding "
                                                f"data/{SHAREGPT_FILE}, or give --input-len for random prompts")
    stats = {"lines_read": 0, "unreadable_lines": 0, "without_human_turn": 0, "too_short": 0, "truncated": 0}
    prompts: list[list[int]] = []
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if len(prompts) == n:
                break
            stats["lines_read"] += 1
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                stats["unreadable_lines"] += 1
                continue
            turns = record.get("conversations") if isinstance(record, dict) else None
            human = next((t["value"] for t in turns or [] if isinstance(t, dict) and t.get("from") == "human"
                          and isinstance(t.get("value"), str) and t["value"].strip()), None)
            if human is None:
                stats["without_human_turn"] += 1
                continue
            ids = list(tokenizer(human)["input_ids"])
            if len(ids) < MIN_INPUT_LEN:
                stats["too_short"] += 1
                continue
            if len(ids) > max_input_len:
                stats["truncated"] += 1
                ids = ids[:max_input_len]
            prompts.append(ids)
    if len(prompts) < n:
        raise OptionError("num_prompts", n, f"{path} has only {len(prompts)} usable conversations ({stats})")
    return prompts, stats


def random_prompts(tokenizer: Any, n: int, input_len: int, seed: int) -> list[list[int]]:
    """``n`` prompts of ``input_len`` token ids drawn uniformly (``random.Random(seed)``) from the
    vocabulary minus the special tokens, like vLLM's random dataset."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    allowed = [i for i in range(len(tokenizer)) if i not in special]
    rng = random.Random(seed)
    return [[rng.choice(allowed) for _ in range(input_len)] for _ in range(n)]


# ------------------------------------------------------------------------------------ set-up
@dataclass
class LLMWorkload:
    """Everything the engines share: options, model folders, tokenizer, prompts, lengths.

    Attributes:
        prompts: token ids per prompt. output_len: tokens each engine must produce per prompt.
        max_model_len: context given to the engines (longest prompt + output + margin).
        model_name: the model argument as given (``"embedded:<name>"`` for the default).
        dataset: how the prompts were made (the ``comparable`` facts come from here).
        setup: seconds spent resolving models and starting engines (cold-cache cost).
    """

    options: BenchOptions
    model_arg: str | None
    model_name: str
    hf_dir: Path
    tokenizer: Any
    prompts: list[list[int]]
    output_len: int
    max_model_len: int
    model_shape: dict[str, Any]
    dataset: dict[str, Any]
    cuda: dict[str, int] = field(default_factory=dict)
    setup: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> str:
        return self.options.device

    @property
    def cores(self) -> int:
        return os.cpu_count() or 1

    @property
    def input_tokens(self) -> int:
        return sum(map(len, self.prompts))

    @property
    def expected_output_tokens(self) -> int:
        return len(self.prompts) * self.output_len

    @property
    def longest_request(self) -> int:
        return max(map(len, self.prompts)) + self.output_len


def _model_shape(hf_dir: Path) -> dict[str, Any]:
    try:
        config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    keys = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "vocab_size", "max_position_embeddings", "tie_word_embeddings")
    return {k: config.get(k) for k in keys if k in config}


def _cache_state(model_arg: str | None) -> dict[str, bool] | None:
    """For a known model: whether its HF / CTranslate2 folders were cached before this run."""
    from ...models.llm import EMBEDDED_ALIASES, EMBEDDED_LLM, KNOWN_LLMS, llm_cache_dir

    name = EMBEDDED_LLM if model_arg is None or model_arg in EMBEDDED_ALIASES else model_arg
    if name not in KNOWN_LLMS:
        return None
    root = llm_cache_dir(name)
    return {"hf": (root / "hf" / "config.json").is_file(), "ct2": (root / "ct2-float32").is_dir()}


def prepare(options: BenchOptions, log: Callable[[str], None], *, positions_margin: int = CONTEXT_MARGIN
            ) -> LLMWorkload:
    """Resolve the model, load its tokenizer and build the prompt set.

    Raises:
        OptionError: bad ``device`` for this machine, lengths beyond the model's positions, or a
            missing / too small dataset. ModelNotFoundError / ConversionError from the model.
    """
    from transformers import AutoTokenizer

    from ...models.llm import resolve_llm

    cuda = require_cuda(options.device)
    n_default, out_default = QUICK if options.quick else FULL
    n = options.num_prompts or n_default
    output_len = options.output_len or out_default
    cached = _cache_state(options.model)
    t0 = time.perf_counter()
    hf_dir = Path(resolve_llm(options.model, fmt="hf"))
    resolve_s = time.perf_counter() - t0
    log(f"llm: model {options.model or 'embedded'} -> {hf_dir} ({resolve_s:.1f} s)")
    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    shape = _model_shape(hf_dir)
    positions = int(shape.get("max_position_embeddings") or 2048)
    room = positions - output_len - positions_margin
    if room < 1:
        raise OptionError("output_len", output_len, f"the model has {positions} positions; leave room for a prompt")
    if options.input_len is not None:
        if options.input_len > room:
            raise OptionError("input_len", options.input_len,
                              f"input_len + output_len + {positions_margin} exceed the model's {positions} positions")
        prompts = random_prompts(tokenizer, n, options.input_len, options.seed)
        dataset = {"dataset": "random", "input_len": options.input_len, "seed": options.seed,
                   "vocabulary": len(tokenizer)}
    else:
        path = shared_data_path(SHAREGPT_FILE)
        max_input = min(MAX_INPUT_LEN, room)
        prompts, stats = sharegpt_prompts(tokenizer, n, max_input, path)
        dataset = {"dataset": f"sharegpt:{SHAREGPT_FILE}", "selection": "first human turn, file order",
                   "max_input_len": max_input, "min_input_len": MIN_INPUT_LEN, **stats}
    lengths = sorted(map(len, prompts))
    dataset.update(prompt_set_sha256=prompt_set_sha256(prompts), prompts=len(prompts),
                   prompt_tokens=sum(lengths), prompt_len_mean=round(sum(lengths) / len(lengths), 1),
                   prompt_len_median=lengths[len(lengths) // 2], prompt_len_max=lengths[-1])
    name = model_name(options.model)
    w = LLMWorkload(options=options, model_arg=options.model, model_name=name, hf_dir=hf_dir, tokenizer=tokenizer,
                    prompts=prompts, output_len=output_len, max_model_len=lengths[-1] + output_len + positions_margin,
                    model_shape=shape, dataset=dataset, cuda=cuda)
    w.setup.update(hf_resolve_seconds=round(resolve_s, 2), cache_before_run=cached)
    log(f"llm: {len(prompts)} prompts ({dataset['dataset']}, {sum(lengths)} prompt tokens, max {lengths[-1]}), "
        f"{output_len} output tokens each")
    return w


def _ct2_dir(w: LLMWorkload, log: Callable[[str], None]) -> Path:
    from ...models.llm import resolve_llm

    t0 = time.perf_counter()
    path = Path(resolve_llm(w.model_arg, fmt="ct2", quantization="float32"))
    w.setup["ct2_resolve_seconds"] = round(time.perf_counter() - t0, 2)
    log(f"llm: CTranslate2 folder {path} ({w.setup['ct2_resolve_seconds']} s)")
    return path


# -------------------------------------------------------------------------- instructmill / vLLM
def engine_options(w: LLMWorkload, *, budget: bool) -> Any:
    """:class:`LLMEngineOptions` for instructmill's backend (``budget``: apply the batch budget)."""
    from ...engine.llm import LLMEngineOptions

    o = w.options
    kwargs: dict[str, Any] = dict(max_model_len=w.max_model_len, device=w.device, seed=o.seed,
                                  dtype="float16" if w.device == "cuda" else "float32",
                                  compute_type="float16" if w.device == "cuda" else "float32")
    if w.device == "cpu":
        kwargs["kv_cache_space_gib"] = float(os.environ.get("VLLM_CPU_KVCACHE_SPACE") or KV_CACHE_GIB)
    if budget:
        if o.max_batch_size is not None:
            kwargs["max_num_seqs"] = o.max_batch_size
        if o.max_batch_tokens is not None:
            kwargs["chunk_size"] = max(1, o.max_batch_tokens // w.longest_request)
    return LLMEngineOptions(**kwargs)


def _budget_settings(w: LLMWorkload, backend: Any) -> dict[str, Any]:
    opts = backend.options
    return {"max_batch_size": w.options.max_batch_size, "max_batch_tokens": w.options.max_batch_tokens,
            "max_num_seqs": opts.max_num_seqs, "chunk_size": opts.chunk_size or 4 * opts.max_num_seqs}


def start_vllm(model: str, options: Any) -> Any:
    """A :class:`~instructmill.engine.vllm_backend.VLLMBackend` (a seam: tests replace it)."""
    from ...engine.vllm_backend import VLLMBackend

    return VLLMBackend(model, options)


def _start_vllm_timed(w: LLMWorkload, options: Any, log: Callable[[str], None], label: str) -> Any:
    t0 = time.perf_counter()
    backend = start_vllm(str(w.hf_dir), options)
    seconds = round(time.perf_counter() - t0, 2)
    w.setup.setdefault("vllm_start_seconds", {})[label] = seconds
    log(f"llm: vLLM engine for {label} started in {seconds} s (max_num_seqs {options.max_num_seqs})")
    return backend


def instructmill_call(backend: Any, w: LLMWorkload, prompts: Sequence[Sequence[int]] | None = None) -> Call:
    """``backend.generate`` of the prompts, fixed output length, greedy; counts output tokens,
    busy seconds (the backend's ``stats["seconds"]``) and prompts that did not run."""
    from ...engine.llm import SamplingOptions

    params = SamplingOptions(temperature=0, max_tokens=w.output_len, ignore_eos=True)
    batch = [list(p) for p in (w.prompts if prompts is None else prompts)]

    def call() -> Counts:
        before = backend.stats["seconds"]
        results = backend.generate(batch, params)
        busy = backend.stats["seconds"] - before
        tokens = sum(s.output_tokens for r in results for s in r.samples)
        return Counts(tokens, busy, dict(Counter(r.status for r in results if r.status != "ok")))

    return call


def vllm_raw_call(llm: Any, w: LLMWorkload, prompts: Sequence[Sequence[int]] | None = None) -> Call:
    """``llm.generate`` of all token prompts (built before timing) with one ``SamplingParams``."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    token_prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in (w.prompts if prompts is None else prompts)]
    params = SamplingParams(temperature=0, max_tokens=w.output_len, ignore_eos=True)

    def call() -> Counts:
        outputs = llm.generate(token_prompts, params, use_tqdm=False)
        return Counts(sum(len(o.outputs[0].token_ids) for o in outputs))

    return call


def _vllm_settings(backend: Any, ours: bool, w: LLMWorkload, shared: bool) -> dict[str, Any]:
    base = {"dtype": getattr(backend, "dtype", None), "max_model_len": getattr(backend, "max_model_len", None),
            "device": w.device, "kv_cache_space_gib": os.environ.get("VLLM_CPU_KVCACHE_SPACE") if w.device == "cpu"
            else None, "engine_shared": shared}
    if ours:
        return {"backend": "vllm", "path": "VLLMBackend.generate", **base, **_budget_settings(w, backend)}
    return {"path": "LLM.generate, all token prompts in one call", **base,
            "max_num_seqs": backend.options.max_num_seqs}


def run_vllm_engines(w: LLMWorkload, log: Callable[[str], None]) -> dict[str, EngineResult]:
    """instructmill's vLLM path and ``vllm_raw``: one shared engine and interleaved rounds without
    a batch budget; else one engine each, instructmill's first, each closed before the next starts."""
    o = w.options
    want = [e for e in ("instructmill", "vllm_raw") if o.wants(e)]
    rounds_n = max(o.repeats, MIN_VLLM_ROUNDS)
    budget = o.max_batch_size is not None or o.max_batch_tokens is not None
    shared = not budget and len(want) == 2
    groups = [want] if shared else [[e] for e in want]
    out: dict[str, EngineResult] = {}
    for group in groups:
        ours_here = "instructmill" in group
        backend = _start_vllm_timed(w, engine_options(w, budget=ours_here), log, "+".join(group))
        try:
            calls = {e: instructmill_call(backend, w) if e == "instructmill" else vllm_raw_call(backend.llm, w)
                     for e in group}
            vllm_raw_call(backend.llm, w)()                 # warm-up: the whole workload once
            instructmill_call(backend, w, w.prompts[:4])()
            rounds: dict[str, list[Round]] = {e: [] for e in group}
            for i in range(rounds_n):                       # interleaved: load changes hit both
                for e in group:
                    rounds[e].append(timed_round(calls[e]))
                log(f"llm: round {i + 1}/{rounds_n}: " + ", ".join(f"{e} {rounds[e][-1].seconds:.2f} s"
                                                                    for e in group))
            for e in group:
                ours = e == "instructmill"
                note = "" if ours else ("same engine instance as instructmill" if shared else
                                        "own engine, built with instructmill's default engine arguments")
                out[e] = engine_result(e, ROLE_INSTRUCTMILL if ours else ROLE_BASELINE, rounds[e],
                                       requests=len(w.prompts), input_tokens=w.input_tokens, output_len=w.output_len,
                                       settings=_vllm_settings(backend, ours, w, shared), note=note)
        finally:
            backend.close()
    return out


def run_instructmill_ct2(w: LLMWorkload, ct2_dir: Path, log: Callable[[str], None]) -> EngineResult:
    """instructmill's path without vLLM: the CTranslate2 Generator backend (what ``auto`` picks)."""
    from ...engine.ct2_generator_backend import CTranslate2GeneratorBackend

    t0 = time.perf_counter()
    backend = CTranslate2GeneratorBackend(str(ct2_dir), engine_options(w, budget=True))
    w.setup["instructmill_ct2_load_seconds"] = round(time.perf_counter() - t0, 2)
    try:
        instructmill_call(backend, w, w.prompts[:4])()
        rounds = [timed_round(instructmill_call(backend, w)) for _ in range(w.options.repeats)]
        log(f"llm: instructmill (CTranslate2) best {min(r.seconds for r in rounds):.2f} s")
        return engine_result("instructmill", ROLE_INSTRUCTMILL, rounds, requests=len(w.prompts),
                             input_tokens=w.input_tokens, output_len=w.output_len,
                             settings={"backend": "ctranslate2", "path": "CTranslate2GeneratorBackend.generate",
                                       "compute_type": backend.compute_type, "device": backend.device,
                                       "max_model_len": backend.max_model_len, **_budget_settings(w, backend)},
                             note="vLLM is not importable: instructmill's auto backend is CTranslate2")
    finally:
        backend.close()


# ------------------------------------------------------------------------------- baselines
def _restore_threads(fn: Callable[[], EngineResult]) -> EngineResult:
    try:
        import torch
    except ImportError:  # pragma: no cover - transformers needs torch
        return fn()
    threads = torch.get_num_threads()
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


def _cap_s(w: LLMWorkload) -> float:
    return CAPS_S[0] if w.options.quick else CAPS_S[1]


def batched_call(w: LLMWorkload, batch_size: int, run_batch: Callable[[list[int]], int], cap_s: float | None) -> Call:
    """Run the prompts in length-sorted batches of ``batch_size`` (``run_batch(indices) -> output
    tokens``), the batches in a seeded shuffled order (so the batches a capped round completes are
    a fair sample, not the shortest prompts); stop before a batch that would likely end past
    ``cap_s`` seconds (judged from the mean batch so far) and count what was done."""
    order = sorted(range(len(w.prompts)), key=lambda i: len(w.prompts[i]))
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    random.Random(0).shuffle(batches)

    def call() -> Counts:
        t0 = time.perf_counter()
        produced = done = prompt_tokens = 0
        for number, part in enumerate(batches, 1):
            produced += run_batch(part)
            done += len(part)
            prompt_tokens += sum(len(w.prompts[i]) for i in part)
            elapsed = time.perf_counter() - t0
            if cap_s is not None and done < len(order) and elapsed * (number + 1) / number > cap_s:
                break  # the next batch would likely end past the cap
        capped = done < len(order)
        return Counts(produced, requests=done if capped else None, input_tokens=prompt_tokens if capped else None)

    return call


def _probe(label: str, candidates: Sequence[int], trial: Callable[[int], float], log: Callable[[str], None]
           ) -> tuple[int, dict[int, float]]:
    """``trial(threads) -> seconds`` for each thread count; the fastest wins (a baseline at its best)."""
    times = {n: round(trial(n), 3) for n in candidates}
    best = min(times, key=times.__getitem__)
    log(f"llm: {label} threads: {best} (probe {PROBE_PROMPTS} prompts x {PROBE_TOKENS} tokens: "
        + ", ".join(f"{k}: {v:.2f} s" for k, v in times.items()) + ")")
    return best, times


def _shortest(w: LLMWorkload) -> list[int]:
    """The :data:`PROBE_PROMPTS` shortest prompts (a probe costs little, even on a busy machine)."""
    return sorted(range(len(w.prompts)), key=lambda i: len(w.prompts[i]))[:PROBE_PROMPTS]


def _seconds(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_ct2_generator(w: LLMWorkload, ct2_dir: Path, log: Callable[[str], None]) -> EngineResult:
    """``ctranslate2.Generator.generate_batch`` on length-sorted batches of :data:`CT2_BATCH`
    (token strings built before timing); CPU threads: the faster of all cores and 1 (probe)."""
    import ctranslate2

    if w.device == "cuda" and w.cuda.get("ctranslate2", 0) == 0:
        return skipped_result("ct2_generator", "CTranslate2 sees no CUDA device", len(w.prompts))
    compute = "float16" if w.device == "cuda" else "float32"
    tokens = [w.tokenizer.convert_ids_to_tokens(p) for p in w.prompts]
    gen_kwargs = dict(max_length=w.output_len, min_length=w.output_len, sampling_topk=1,
                      include_prompt_in_result=False, max_batch_size=CT2_BATCH)

    def load(threads: int | None) -> Any:
        kwargs: dict[str, Any] = dict(device=w.device, compute_type=compute, inter_threads=1)
        if threads is not None:
            kwargs["intra_threads"] = threads
        return ctranslate2.Generator(str(ct2_dir), **kwargs)

    threads, probe = (1 if w.device == "cpu" else None), None
    if w.device == "cpu" and w.cores > 1:
        def trial(n: int) -> float:
            g = load(n)
            g.generate_batch(probe_tokens[:1], max_length=1, sampling_topk=1, include_prompt_in_result=False)
            return _seconds(lambda: g.generate_batch(probe_tokens, max_length=PROBE_TOKENS, min_length=PROBE_TOKENS,
                                                     sampling_topk=1, include_prompt_in_result=False))

        probe_tokens = [tokens[i] for i in _shortest(w)]
        threads, probe = _probe("ct2_generator", (1, w.cores), trial, log)
    t0 = time.perf_counter()
    generator = load(threads)
    w.setup["ct2_load_seconds"] = round(time.perf_counter() - t0, 2)

    def run_batch(indices: list[int]) -> int:
        results = generator.generate_batch([tokens[i] for i in indices], **gen_kwargs)
        return sum(len(r.sequences_ids[0]) for r in results)

    run_batch(_shortest(w))                                 # warm-up
    call = batched_call(w, CT2_BATCH, run_batch, _cap_s(w))
    rounds = [timed_round(call) for _ in range(w.options.repeats)]
    log(f"llm: ct2_generator best {min(r.seconds for r in rounds):.2f} s")
    return engine_result("ct2_generator", ROLE_BASELINE, rounds, requests=len(w.prompts), input_tokens=w.input_tokens,
                         output_len=w.output_len,
                         settings={"compute_type": compute, "device": w.device, "inter_threads": 1,
                                   "intra_threads": threads, "thread_probe_seconds": probe,
                                   "max_batch_size": CT2_BATCH, "batches": BATCH_ORDER, "cap_s": _cap_s(w),
                                   "model_dir": str(ct2_dir)})


def run_hf_batched(w: LLMWorkload, log: Callable[[str], None]) -> EngineResult:
    """transformers ``generate``, greedy, length-sorted batches of :data:`HF_BATCH`, left padding;
    CPU threads: the faster of all cores and 1 (probe)."""
    import torch
    from transformers import AutoModelForCausalLM

    if w.device == "cuda" and w.cuda.get("torch", 0) == 0:
        return skipped_result("hf_batched", "torch sees no CUDA device", len(w.prompts))
    dtype = torch.float16 if w.device == "cuda" else torch.float32
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(w.hf_dir), dtype=dtype).to(w.device).eval()
    w.setup["hf_load_seconds"] = round(time.perf_counter() - t0, 2)
    tok = w.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def generate(indices: Sequence[int], new_tokens: int) -> int:
        part = [w.prompts[i] for i in indices]
        width = max(map(len, part))
        ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in part], device=w.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in part], device=w.device)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1,
                                 max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=pad,
                                 temperature=None, top_p=None, top_k=None)
        if w.device == "cuda":
            torch.cuda.synchronize()
        return int(out[:, width:].numel())

    generate(_shortest(w)[:1], 2)                            # first-call set-up
    threads, probe = (1 if w.device == "cpu" else None), None
    if w.device == "cpu" and w.cores > 1:
        def trial(n: int) -> float:
            torch.set_num_threads(n)
            return _seconds(lambda: generate(_shortest(w), PROBE_TOKENS))

        threads, probe = _probe("hf_batched", (1, w.cores), trial, log)
    if threads is not None:
        torch.set_num_threads(threads)
    call = batched_call(w, HF_BATCH, lambda idx: generate(idx, w.output_len), _cap_s(w))
    rounds = [timed_round(call) for _ in range(w.options.repeats)]
    log(f"llm: hf_batched best {min(r.seconds for r in rounds):.2f} s")
    return engine_result("hf_batched", ROLE_BASELINE, rounds, requests=len(w.prompts), input_tokens=w.input_tokens,
                         output_len=w.output_len,
                         settings={"dtype": str(dtype).replace("torch.", ""), "device": w.device,
                                   "batch_size": HF_BATCH, "batches": BATCH_ORDER, "torch_threads": threads,
                                   "thread_probe_seconds": probe, "cap_s": _cap_s(w)})


# ------------------------------------------------------------------------------------- run
def run(options: BenchOptions, *, log: Callable[[str], None] = lambda _: None) -> WorkloadResult:
    """Measure instructmill's LLM sampling path and its baselines on one prompt set.

    Args:
        options: ``quick`` (32 prompts x 32 tokens; full: 128 x 64), ``num_prompts``,
            ``input_len`` (random prompts) / ``output_len``, ``model``, ``device``,
            ``max_batch_size`` / ``max_batch_tokens`` (instructmill's budget, see the module
            docstring), ``repeats``, ``engines``, ``seed``.
        log: progress lines.

    Returns:
        a :class:`WorkloadResult` (headline ``output_tokens_per_s``); ``detail["comparable"]``:
        dataset, prompt-set hash, counts, lengths, model and shape, quick, device, instructmill's
        backend. ``detail["checks"]``: every engine that ran produced ``output_len`` tokens per prompt.

    Raises:
        OptionError: ``device="cuda"`` without a visible CUDA device; lengths beyond the model;
            a missing dataset.
    """
    w = prepare(options, log)
    vllm_error = vllm_import_error() if (options.wants("instructmill") or options.wants("vllm_raw")) else None
    results: dict[str, EngineResult] = {}
    ct2_dir: Path | None = None
    if vllm_error is None:
        results.update(run_vllm_engines(w, log))
    else:
        log(f"llm: vLLM not importable ({vllm_error}); instructmill runs on CTranslate2")
        if options.wants("vllm_raw"):
            results["vllm_raw"] = skipped_result("vllm_raw", f"vllm is not importable ({vllm_error})", len(w.prompts))
        if options.wants("instructmill"):
            ct2_dir = _ct2_dir(w, log)
            results["instructmill"] = run_instructmill_ct2(w, ct2_dir, log)
    if options.wants("ct2_generator"):
        ct2_dir = ct2_dir or _ct2_dir(w, log)
        results["ct2_generator"] = _restore_threads(lambda: run_ct2_generator(w, ct2_dir, log))
    if options.wants("hf_batched"):
        results["hf_batched"] = _restore_threads(lambda: run_hf_batched(w, log))
    ordered = [results[e] for e in ENGINES if e in results]
    ran = [r for r in ordered if r.metrics.get("output_tokens") is not None]
    backend = "vllm" if vllm_error is None else "ctranslate2"  # what instructmill's path runs on
    comparable = {
        "dataset": w.dataset["dataset"], "prompt_set_sha256": w.dataset["prompt_set_sha256"],
        "num_prompts": len(w.prompts), "prompt_tokens": w.input_tokens, "input_len": options.input_len,
        "max_input_len": w.dataset.get("max_input_len"), "output_len": w.output_len, "model": w.model_name,
        "model_shape": w.model_shape, "quick": options.quick, "device": options.device,
        "instructmill_backend": backend,
    }
    detail = {
        "comparable": comparable,
        "unit": "output tok/s",
        "dataset": w.dataset,
        "model": {"name": w.model_name, "hf_dir": str(w.hf_dir), "ct2_dir": str(ct2_dir) if ct2_dir else None,
                  "shape": w.model_shape},
        "expected_output_tokens": w.expected_output_tokens,
        "setup": w.setup,
        "cuda_devices": w.cuda or None,
        "peak_rss_scope": "this process and its children (vLLM's engine core), RSS sampled every 0.1 s",
        "checks": {f"{r.engine}_output_tokens": r.metrics["output_tokens"] == r.metrics["requests"] * w.output_len
                   for r in ran},
    }
    if vllm_error is not None:
        detail["vllm_unavailable"] = vllm_error
    return WorkloadResult(WORKLOAD, HEADLINE, ordered, detail, options.as_dict())
