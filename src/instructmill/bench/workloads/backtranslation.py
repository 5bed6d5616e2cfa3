"""Back-translation workload: instructmill's translation hop vs raw CTranslate2 vs HF transformers.

One run measures, in one process, on the same real English sentences (ShareGPT human turns, see
:mod:`instructmill.bench.translation_model`) and the same MarianMT model, greedy decoding
everywhere:

* ``instructmill`` -- :func:`instructmill.engine.chain.translate_chain` with one
  :class:`~instructmill.engine.ctranslate2_backend.CTranslate2Backend` at its defaults (int8 via
  ``compute_type="auto"`` on CPU, one replica per core, batches of <= 64 sentences / <= 3,072
  padded tokens), only the decoding length and beam 1 passed -- plus ``BenchOptions.max_batch_size``
  / ``max_batch_tokens`` when given (how a slowdown is injected on purpose). Timed text in ->
  text out (tokenization, scheduling, detokenization included).
* ``ct2_raw_best`` -- ``ctranslate2.Translator(int8, inter_threads=cores, intra_threads=1)`` and one
  ``translate_batch`` over all pre-tokenized sentences, in variants (64-example and 3,072-token
  batches; on CUDA also 256 examples / 12,288 tokens); the fastest variant counts, and
  ``settings.variant`` says which won. Its outputs are the reference for BLEU / chrF.
* ``hf_batched`` -- ``MarianMTModel.generate`` on batches of 32 sentences (64 on CUDA) in input
  order, float32 (float16 on CUDA), ``torch.set_num_threads(cores)``.
* ``hf_pipeline_per_sentence`` -- what ``pipeline("translation")`` does, one sentence per call. The
  task was removed in transformers 5; there the same per-call steps (tokenize one text,
  ``generate``, decode) run directly, and ``settings.implementation`` says which ran. Slow, so it
  runs on the first 16 (quick) / 48 sentences only: its rates are per second on that subset.

Output length: the built-in model has random weights, so every engine emits exactly
``output_len`` (48) target tokens per sentence (CTranslate2 ``min_decoding_length =
max_decoding_length``; HF ``min_new_tokens = max_new_tokens`` with ``forced_eos_token_id=None``, so
HF decodes the same steps as CTranslate2, whose output has no ``</s>``), as vLLM's throughput
benchmark does with ``ignore_eos``. A user's model (``BenchOptions.model``) keeps its natural
lengths unless ``output_len`` is set (capped at 256 tokens; instructmill also applies its default
cap of ``2 x longest source + 10`` per batch, so an output that loops past it differs from the raw
engine's and counts against ``identical_outputs``). Target tokens are always **counted from each engine's
output** (no ``</s>``, no decoder-start token), source tokens as instructmill's backend encodes them
(sentencepiece pieces + ``</s>``).

Noise (the machine is shared): instructmill and the raw variants run in interleaved rounds (at
least ``max(repeats, 3)``; more, up to 5 quick / 6 full, while an engine's fastest round was
disturbed, within a 45 s / 240 s budget); the fastest round of each engine counts (contention only
slows a run down), and every round's tokens/s and the share of the machine's CPU used by *other*
processes meanwhile (``/proc/stat``) are kept in ``settings``. ``detail["paired_rounds"]`` holds
instructmill / raw per round (same load) and their median. The HF engines run once (a full run
times ``hf_batched`` again when that run was disturbed), with torch's thread count set to the
faster of ``cores`` and 1 by a short probe (with a neighbour on one core, intra-op threads waiting
for each other made ``generate`` ~10x slower than one thread here); each has a time cap (45 / 30 s
quick, 300 / 120 s full) past which it stops after the current batch / sentence and reports the
sentences done (said in its note).

Output check: ``bleu`` / ``chrf`` (sacrebleu corpus scores) and ``identical_outputs`` (share of
sentences with the same text) of every engine's output against ``ct2_raw_best``'s, all
detokenized alike (pieces -> the model's target sentencepiece, ``</s>``/``<pad>`` dropped, as
instructmill does). instructmill runs the same compute type as the raw engine, so 100.0 means
its speed was not bought with changed output; HF runs float32 (float16 on CUDA) against int8, so
its score shows the quantization's effect.
"""
from __future__ import annotations

import gc
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from ...errors import OptionError
from ..core import ROLE_BASELINE, ROLE_INSTRUCTMILL, BenchOptions, EngineResult, WorkloadResult, measure, throughput
from ..env import machine_cpu_seconds
from ..translation_model import TranslationWorkload, prepare

__all__ = ["ENGINES", "NAME", "run", "CpuSample", "check_device"]

NAME = "backtranslation"
ENGINES = ("instructmill", "ct2_raw_best", "hf_batched", "hf_pipeline_per_sentence")
QUICK_SENTENCES, FULL_SENTENCES = 128, 512
QUICK_PIPELINE, FULL_PIPELINE = 16, 48
MIN_ROUNDS = 3
QUICK_MAX_ROUNDS, FULL_MAX_ROUNDS = 5, 6
#: No extra (disturbed-run) rounds once the interleaved rounds have taken this long, seconds.
QUICK_ROUND_BUDGET_S, FULL_ROUND_BUDGET_S = 45.0, 240.0
#: A run is clean when other processes used at most this share of the machine's CPU meanwhile.
CLEAN_SHARE = 0.05
WARMUP_SENTENCES = 8
#: Time caps of the HF baselines (hf_batched, per-sentence pipeline), seconds: past it, the
#: run stops after the current batch / sentence and its rates are those of the sentences done.
QUICK_HF_CAPS_S, FULL_HF_CAPS_S = (45.0, 30.0), (300.0, 120.0)
#: Sentences of the probe that picks torch's thread count for the HF baselines.
PROBE_SENTENCES, PROBE_TOKENS = 8, 8
#: Decoding cap for natural lengths (CTranslate2's default ``max_decoding_length``).
NATURAL_CAP = 256
#: Targets from the issue that introduced the back-translation hop (ratios, same run).
TARGETS = {"ct2_raw_best": 0.95, "hf_batched": 3.5}
_SPECIALS = {"</s>", "<pad>", "<s>"}
#: Share of instructmill's outputs identical to the raw engine's (same compute type) below which
#: its check fails.
MIN_IDENTICAL_VS_RAW = 0.99
#: Machine-wide clock ticks (all cores) below which a CPU-share sample is not reported.
MIN_TICKS = 50

Log = Callable[[str], None]


# --------------------------------------------------------------------------- noise gauge

class CpuSample:
    """CPU use between two points, from ``/proc/stat`` and ``/proc/self/stat`` (Linux).

    ``until_now()`` returns ``{"own_cores": CPU seconds of this process / wall seconds,
    "others_share": share of the machine's CPU time used by other processes}`` -- a noise gauge:
    a run is clean when ``others_share`` is near 0. An empty dict where ``/proc`` is missing.
    """

    def __init__(self) -> None:
        self.t = time.perf_counter()
        self.machine = machine_cpu_seconds()
        self.own = self._own()

    @staticmethod
    def _own() -> int | None:
        try:
            with open("/proc/self/stat", encoding="ascii") as fh:
                f = fh.read().rsplit(")", 1)[1].split()
            return int(f[11]) + int(f[12])  # utime + stime of all threads, clock ticks
        except (OSError, ValueError, IndexError):
            return None

    def until_now(self) -> dict[str, float]:
        wall = time.perf_counter() - self.t
        machine, own = machine_cpu_seconds(), self._own()
        if machine is None or own is None or self.machine is None or self.own is None or wall <= 0:
            return {}
        busy = machine[0] - self.machine[0]
        total = machine[1] - self.machine[1]
        tick = os.sysconf("SC_CLK_TCK")
        if total < MIN_TICKS / tick:  # /proc/stat counts 10 ms ticks: a shorter window says nothing
            return {}
        mine = (own - self.own) / tick
        return {"own_cores": round(mine / wall, 2),
                "others_share": round(max(0, busy - mine) / total, 3) if total > 0 else 0.0}


# --------------------------------------------------------------------------- timed engines

@dataclass
class Output:
    """What one engine run produced: counts and the detokenized texts (input order)."""

    requests: int
    input_tokens: int
    output_tokens: int
    texts: list[str]


@dataclass
class Timed:
    """A prepared engine: ``call()`` runs it once on the workload; the fastest run counts."""

    engine: str
    settings: dict[str, Any]
    call: Callable[[], Output]
    variant: str | None = None
    notes: Callable[[], dict[str, Any]] | None = None
    best: Output | None = None
    best_seconds: float = 0.0
    best_cpu: dict[str, float] = field(default_factory=dict)
    best_notes: dict[str, Any] = field(default_factory=dict)
    texts: list[str] | None = None
    rates: list[float] = field(default_factory=list)
    loads: list[float | None] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    backend: Any = None  # instructmill's CTranslate2Backend (to unload its Translator afterwards)

    @property
    def label(self) -> str:
        return f"{self.engine}[{self.variant}]" if self.variant else self.engine

    @property
    def rate(self) -> float:
        return self.best.output_tokens / self.best_seconds if self.best and self.best_seconds > 0 else 0.0

    @property
    def disturbed(self) -> bool:
        return self.best_cpu.get("others_share", 0.0) > CLEAN_SHARE

    def once(self) -> None:
        gc.collect()
        cpu = CpuSample()
        with measure() as m:
            out = self.call()
        load = cpu.until_now()
        rate = out.output_tokens / m.seconds if m.seconds > 0 else 0.0
        self.rates.append(round(rate, 1))
        self.loads.append(load.get("others_share"))
        self.peak_rss_mb = max(self.peak_rss_mb, m.peak_rss_mb)
        if self.texts is None:
            self.texts = out.texts
        if self.best is None or rate > self.rate:
            self.best, self.best_seconds, self.best_cpu = out, m.seconds, load
            self.best_notes = self.notes() if self.notes else {}


def run_rounds(timeds: list[Timed], min_rounds: int, max_rounds: int, deadline: float, log: Log) -> None:
    """Time ``timeds`` in interleaved rounds (fastest counts).

    At least ``min_rounds``; more, up to ``max_rounds`` and while ``time.perf_counter() <
    deadline``, as long as some engine's fastest run was disturbed (other processes used more
    than :data:`CLEAN_SHARE` of the machine's CPU meanwhile).
    """
    for r in range(1, max(min_rounds, max_rounds) + 1):
        for t in timeds:
            t.once()
            share = t.loads[-1]
            log(f"[backtranslation] round {r} {t.label}: {t.rates[-1]:,.1f} output tok/s "
                f"(others {'-' if share is None else format(share, '.0%')})")
        disturbed = any(t.disturbed for t in timeds)
        if r >= min_rounds and (not disturbed or r >= max_rounds or time.perf_counter() > deadline):
            return


class _Detok:
    """Target pieces -> text, as instructmill's Marian tokenizer does (specials dropped, spm decode)."""

    def __init__(self, w: TranslationWorkload):
        self.sp = w.target_spm()

    def __call__(self, hyps: list[list[str]]) -> list[str]:
        return [self.sp.decode([t for t in h if t not in _SPECIALS]) for h in hyps]


def _decoding(w: TranslationWorkload) -> dict[str, int]:
    """CTranslate2 ``translate_batch`` length arguments for the workload."""
    if w.output_len is not None:
        return {"min_decoding_length": w.output_len, "max_decoding_length": w.output_len}
    return {"min_decoding_length": 0, "max_decoding_length": NATURAL_CAP}


def make_instructmill(w: TranslationWorkload, options: BenchOptions) -> Timed:
    """instructmill's hop at its defaults (decoding length, beam 1 and the batch budget passed)."""
    from ...engine.chain import translate_chain
    from ...engine.ctranslate2_backend import CTranslate2Backend, CTranslate2Options
    from ...engine.scheduler import BatchingOptions
    from ...engine.translation import BackendStats

    cuda = options.device == "cuda"
    dec = _decoding(w)
    backend = CTranslate2Backend(
        w.ct2_cuda_dir if cuda else w.ct2_dir, allow_unverified=False,
        options=CTranslate2Options(device=options.device, compute_type="float16" if cuda else "auto",
                                   beam_size=1, **dec))
    defaults = BatchingOptions()
    size = options.max_batch_size or defaults.max_batch_size
    batching = BatchingOptions(max_batch_size=size,
                               max_batch_tokens=options.max_batch_tokens or defaults.max_batch_tokens,
                               sort_window=max(defaults.sort_window, size))
    translate_chain(w.sentences[:WARMUP_SENTENCES], [backend], batching=batching)  # warm-up
    last: dict[str, Any] = {}

    def call() -> Output:
        backend.stats = BackendStats()
        t0 = time.perf_counter()
        outputs, stats = translate_chain(w.sentences, [backend], batching=batching)
        wall = time.perf_counter() - t0
        if len(outputs) != len(w.sentences):
            raise RuntimeError(f"instructmill returned {len(outputs)} outputs for {len(w.sentences)} sentences")
        s = backend.stats
        busy = s.busy_seconds / (wall * backend.parallel_batches) if wall > 0 else None
        last.clear()
        last.update(chain=asdict(stats), backend_stats=s.as_dict(),
                    busy_fraction=round(min(1.0, busy), 4) if busy is not None else None)
        return Output(len(outputs), s.source_tokens, s.target_tokens, [o[-1] for o in outputs])

    settings = {**backend.settings(), "model_dir": backend.model_dir, "beam_size": 1, **dec,
                "max_batch_size": batching.max_batch_size, "max_batch_tokens": batching.max_batch_tokens,
                "sort_window": batching.sort_window,
                "batch_budget": ("from options (max_batch_size=%s, max_batch_tokens=%s)"
                                 % (options.max_batch_size, options.max_batch_tokens)
                                 if options.max_batch_size or options.max_batch_tokens else "instructmill defaults"),
                "batches_in_flight": backend.parallel_batches,
                "passed": "CTranslate2Options(device, compute_type, beam_size=1, min/max_decoding_length)"
                          + (", BatchingOptions(max_batch_size, max_batch_tokens)"
                             if options.max_batch_size or options.max_batch_tokens else "")}
    return Timed("instructmill", settings, call, notes=lambda: dict(last), backend=backend)


def make_ct2_raw(w: TranslationWorkload, options: BenchOptions, detok: _Detok) -> tuple[list[Timed], Any]:
    """Raw ``ctranslate2.Translator`` at its best measured settings, one Timed per batch variant."""
    import ctranslate2

    cuda = options.device == "cuda"
    cores = os.cpu_count() or 1
    if cuda:
        translator = ctranslate2.Translator(str(w.ct2_cuda_dir), device="cuda", compute_type="float16")
        common = {"device": "cuda", "compute_type": "float16", "model_dir": str(w.ct2_cuda_dir)}
        variants = (("examples", 64), ("tokens", 3072), ("examples", 256), ("tokens", 12288))
    else:
        translator = ctranslate2.Translator(str(w.ct2_dir), device="cpu", compute_type="int8",
                                            inter_threads=cores, intra_threads=1)
        common = {"device": "cpu", "compute_type": "int8", "inter_threads": cores, "intra_threads": 1,
                  "model_dir": str(w.ct2_dir)}
        variants = (("examples", 64), ("tokens", 3072))
    dec = _decoding(w)
    source_tokens = w.source_tokens
    timed = []
    for batch_type, size in variants:
        kwargs = dict(max_batch_size=size, batch_type=batch_type, beam_size=1, **dec)
        translator.translate_batch(w.tokens[:WARMUP_SENTENCES], **kwargs)

        def call(kwargs=kwargs) -> Output:
            results = translator.translate_batch(w.tokens, **kwargs)
            hyps = [r.hypotheses[0] for r in results]
            return Output(len(results), source_tokens, sum(len(h) for h in hyps), detok(hyps))

        timed.append(Timed("ct2_raw_best", {**common, **kwargs}, call, variant=f"{size} {batch_type}"))
    return timed, translator


@dataclass
class _HF:
    """One loaded transformers model, shared by both HF baselines."""

    torch: Any
    tok: Any
    model: Any
    device: str
    probe: dict[int, float] = field(default_factory=dict)  # torch threads -> probe seconds

    @classmethod
    def load(cls, w: TranslationWorkload, device: str) -> "_HF":
        import warnings

        import torch
        from transformers import AutoTokenizer, MarianMTModel
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        torch.set_num_threads(os.cpu_count() or 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tok = AutoTokenizer.from_pretrained(str(w.hf_dir))
            model = MarianMTModel.from_pretrained(str(w.hf_dir)).eval()
        if device == "cuda":
            model = model.to("cuda", dtype=torch.float16)
        return cls(torch, tok, model, device)

    def pick_threads(self, w: TranslationWorkload, log: Log) -> None:
        """Set torch's CPU threads to the faster of ``cores`` and 1 on a few sentences (best settings).

        With another process on one of the cores, torch's intra-op threads wait for each other at
        every operator and ``generate`` can run many times slower than on one thread; on a quiet
        machine all cores win. The probe times both here, so the baseline runs at its best.
        """
        cores = os.cpu_count() or 1
        if self.device == "cuda" or cores == 1:
            return
        texts = w.sentences[:PROBE_SENTENCES]
        # a few decoding steps are enough: every step runs the same operators
        kwargs = {**_hf_generate_kwargs(w), "min_new_tokens": PROBE_TOKENS, "max_new_tokens": PROBE_TOKENS,
                  "forced_eos_token_id": None}
        self.generate(texts[:2], kwargs)  # first-call set-up, outside the probe
        for threads in (cores, 1):
            self.torch.set_num_threads(threads)
            t0 = time.perf_counter()
            self.generate(texts, kwargs)
            self.probe[threads] = round(time.perf_counter() - t0, 3)
        best = min(self.probe, key=self.probe.__getitem__)
        self.torch.set_num_threads(best)
        log(f"[backtranslation] HF torch threads: {best} (probe on {len(texts)} sentences x {PROBE_TOKENS} tokens: "
            + ", ".join(f"{k} threads {v:.2f} s" for k, v in self.probe.items()) + ")")

    def settings(self, w: TranslationWorkload) -> dict[str, Any]:
        return {"device": self.device, "dtype": "float16" if self.device == "cuda" else "float32",
                "torch_threads": self.torch.get_num_threads(),
                "torch_threads_probe_s": {str(k): v for k, v in self.probe.items()},
                "model_dir": str(w.hf_dir), **_hf_generate_kwargs(w)}

    def generate(self, texts: list[str], gen_kwargs: dict[str, Any]) -> tuple[Any, int]:
        """``(generated ids on the CPU, source tokens)`` for one padded batch of ``texts``."""
        enc = self.tok(texts, return_tensors="pt", padding=True)
        n_in = int(enc["attention_mask"].sum())
        if self.device == "cuda":
            enc = enc.to("cuda")
        with self.torch.inference_mode():
            seqs = self.model.generate(**enc, **gen_kwargs)
        return seqs.cpu(), n_in


def _hf_generate_kwargs(w: TranslationWorkload) -> dict[str, Any]:
    if w.output_len is not None:
        # Marian's forced_eos_token_id would spend the last step on a forced </s>; turned off, HF
        # decodes the same steps / tokens as CTranslate2's min = max_decoding_length (no </s>).
        return dict(num_beams=1, do_sample=False, min_new_tokens=w.output_len, max_new_tokens=w.output_len,
                    forced_eos_token_id=None)
    return dict(num_beams=1, do_sample=False, max_new_tokens=NATURAL_CAP)


class _HFCounter:
    """Counts and detokenizes HF ``generate`` output like the CTranslate2 engines'."""

    def __init__(self, tok, detok: _Detok):
        self.tok, self.detok = tok, detok
        self.skip = {tok.pad_token_id, tok.eos_token_id}

    def __call__(self, seqs) -> tuple[int, list[str]]:
        rows = seqs[:, 1:].tolist()  # drop the decoder-start token
        kept = [[i for i in row if i not in self.skip] for row in rows]
        return sum(len(k) for k in kept), self.detok([self.tok.convert_ids_to_tokens(k) for k in kept])


def make_hf_batched(w: TranslationWorkload, hf: _HF, detok: _Detok, cap_s: float) -> Timed:
    """transformers ``MarianMTModel.generate``, greedy, batches in input order (padded).

    Stops after the batch that passes ``cap_s`` seconds (the rates are then those of the
    sentences done; ``requests`` says how many): a slow baseline must not eat the run's budget.
    """
    batch_size = 64 if hf.device == "cuda" else 32
    gen_kwargs = _hf_generate_kwargs(w)
    count = _HFCounter(hf.tok, detok)

    def translate(texts: list[str], cap: float | None = None) -> Output:
        start = time.perf_counter()
        n_in = n_out = 0
        out: list[str] = []
        for i in range(0, len(texts), batch_size):
            if cap is not None and i and time.perf_counter() - start > cap:
                break
            seqs, k_in = hf.generate(texts[i:i + batch_size], gen_kwargs)
            k, decoded = count(seqs)
            n_in, n_out = n_in + k_in, n_out + k
            out.extend(decoded)
        return Output(len(out), n_in, n_out, out)

    translate(w.sentences[:batch_size])  # warm-up on one full batch (first calls allocate)
    settings = {"batch_size": batch_size, "order": "input order", "time_cap_s": cap_s, **hf.settings(w)}
    return Timed("hf_batched", settings, lambda: translate(w.sentences, cap_s))


def make_hf_pipeline(w: TranslationWorkload, hf: _HF, detok: _Detok, n: int, cap_s: float) -> Timed:
    """``pipeline("translation")`` one sentence per call, or its per-call steps on transformers >= 5.

    Runs on the first ``n`` sentences, stopping after the one that passes ``cap_s`` seconds.
    """
    torch, tok = hf.torch, hf.tok
    gen_kwargs = _hf_generate_kwargs(w)
    count = _HFCounter(tok, detok)
    texts = w.sentences[:n]
    try:
        from transformers import pipeline

        pipe = pipeline("translation", model=hf.model, tokenizer=tok, device=0 if hf.device == "cuda" else -1)
        implementation = "transformers.pipeline('translation')"

        def one(text: str) -> tuple[int, int, str]:
            res = pipe(text, return_tensors=True, **gen_kwargs)
            ids = torch.as_tensor(res[0]["translation_token_ids"]).reshape(1, -1).cpu()
            k, decoded = count(ids)
            return len(tok(text)["input_ids"]), k, decoded[0]
    except KeyError:  # transformers >= 5 removed the task
        implementation = ("emulated: per-sentence tokenize + generate + decode, what "
                          "pipeline('translation') did per call (the task was removed in transformers 5)")

        def one(text: str) -> tuple[int, int, str]:
            seqs, n_in = hf.generate([text], gen_kwargs)
            tok.decode(seqs[0], skip_special_tokens=True)  # the pipeline's own decode (timed)
            k, decoded = count(seqs)
            return n_in, k, decoded[0]

    for text in texts[:2]:
        one(text)

    def call() -> Output:
        start = time.perf_counter()
        n_in = n_out = 0
        out = []
        for text in texts:
            if out and time.perf_counter() - start > cap_s:
                break
            a, b, t = one(text)
            n_in, n_out = n_in + a, n_out + b
            out.append(t)
        return Output(len(out), n_in, n_out, out)

    settings = {"implementation": implementation, "sentences_subset": f"first {len(texts)} of {len(w.sentences)}",
                "time_cap_s": cap_s, **hf.settings(w)}
    return Timed("hf_pipeline_per_sentence", settings, call)


# --------------------------------------------------------------------------- checks

def check_device(device: str, engines: tuple[str, ...]) -> None:
    """Refuse ``device="cuda"`` when the engines selected cannot see a CUDA device.

    Raises:
        OptionError: CTranslate2 sees no CUDA device or lacks float16 there; or an HF engine is
            selected and torch has no CUDA.
    """
    if device != "cuda":
        return
    import ctranslate2

    if ctranslate2.get_cuda_device_count() < 1:
        raise OptionError("device", device, "CTranslate2 sees no CUDA device (ctranslate2.get_cuda_device_count() "
                                            "== 0): run on a GPU machine with a CUDA build of ctranslate2")
    if "float16" not in ctranslate2.get_supported_compute_types("cuda"):
        raise OptionError("device", device, "this CUDA device has no float16 in CTranslate2")
    if any(e.startswith("hf_") for e in engines):
        import torch

        if not torch.cuda.is_available():
            raise OptionError("device", device, "torch sees no CUDA device (torch.cuda.is_available() is False) "
                                                "for the HF baselines: install a CUDA build of torch or "
                                                "select only the CTranslate2 engines")


def _selected(options: BenchOptions) -> tuple[str, ...]:
    if options.engines is None:
        return ENGINES
    unknown = [e for e in options.engines if e not in ENGINES]
    if unknown:
        raise OptionError("engines", ",".join(options.engines),
                          f"unknown for {NAME}: {', '.join(unknown)}; known: {', '.join(ENGINES)}")
    if not options.engines:
        raise OptionError("engines", "", f"select at least one of {', '.join(ENGINES)}")
    return tuple(e for e in ENGINES if e in options.engines)


def _scores(texts: list[str] | None, reference: list[str] | None) -> dict[str, float | None]:
    if texts is None or reference is None:
        return {"bleu": None, "chrf": None, "identical_outputs": None}
    import sacrebleu

    ref = reference[:len(texts)]
    return {"bleu": round(sacrebleu.corpus_bleu(texts, [ref]).score, 2),
            "chrf": round(sacrebleu.corpus_chrf(texts, [ref]).score, 2),
            "identical_outputs": round(sum(a == b for a, b in zip(texts, ref)) / max(1, len(texts)), 4)}


def _unload(timeds: list[Timed], raw_translator: Any) -> None:
    """Free the CTranslate2 models before the torch engines run (one process, shared memory)."""
    from ...engine import ctranslate2_backend as cb

    for t in timeds:
        backend = t.backend
        if backend is None:
            continue
        with cb._TRANSLATORS_LOCK:  # instructmill caches one Translator per process and settings
            for key in [k for k, v in cb._TRANSLATORS.items() if v is backend._translator]:
                del cb._TRANSLATORS[key]
        backend._translator.unload_model()
    if raw_translator is not None:
        raw_translator.unload_model()
    gc.collect()


# --------------------------------------------------------------------------- run

def run(options: BenchOptions, *, log: Callable[[str], None]) -> WorkloadResult:
    """Measure the back-translation hop and its baselines; see the module docstring.

    ``options``: ``quick`` (128 sentences, 16 for the per-sentence pipeline; else 512 / 48),
    ``num_prompts`` (sentences), ``output_len`` (target tokens per sentence; default 48 for the
    built-in model, natural lengths for a user's ``model``), ``model`` (an HF MarianMT folder or a
    CTranslate2 folder), ``device``, ``max_batch_size`` / ``max_batch_tokens`` (instructmill's
    batch budget), ``repeats`` (interleaved rounds, at least 3), ``engines``, ``cache_dir``.
    ``input_len`` does not apply (real sentence lengths) and is ignored with a warning.

    Returns:
        A :class:`WorkloadResult` with headline ``output_tokens_per_s``, instructmill first.

    Raises:
        OptionError: unknown engines; ``device="cuda"`` without CUDA; a bad model path; too few
            sentences; an HF engine selected while the model has no HF folder.
    """
    t_start = time.perf_counter()
    engines = _selected(options)
    check_device(options.device, engines)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings_: list[str] = []
    if options.input_len is not None:
        warnings_.append(f"input_len={options.input_len} ignored: the sentences keep their real lengths")
        log(f"[backtranslation] {warnings_[-1]}")
    n = options.num_prompts or (QUICK_SENTENCES if options.quick else FULL_SENTENCES)
    w = prepare(n=n, output_len=options.output_len, model=options.model, device=options.device,
                cache_dir=options.cache_dir, log=log)
    hf_wanted = [e for e in engines if e.startswith("hf_")]
    if hf_wanted and w.hf_dir is None:
        if options.engines is not None:
            raise OptionError("engines", ",".join(hf_wanted), f"{options.model} has no local HF folder "
                                                              "(its manifest's source) for the HF baselines")
        engines = tuple(e for e in engines if not e.startswith("hf_"))
        warnings_.append("HF baselines skipped: the CTranslate2 model's source is not a local HF folder")
        log(f"[backtranslation] {warnings_[-1]}")
    log(f"[backtranslation] {len(w.sentences)} sentences, {w.source_tokens} source tokens, output "
        f"{w.output_len or 'natural'} tokens each; model {w.ct2_dir}"
        + (f" (built / converted in {w.build_seconds:.0f} s)" if w.build_seconds else " (cached)"))
    detok = _Detok(w)
    t_prepared = time.perf_counter()

    # instructmill and raw CTranslate2: interleaved rounds so load drifts hit both alike.
    fast: list[Timed] = []
    raw_translator = None
    if "instructmill" in engines:
        fast.append(make_instructmill(w, options))
    if "ct2_raw_best" in engines:
        raws, raw_translator = make_ct2_raw(w, options, detok)
        fast.extend(raws)
    min_rounds = max(options.repeats, MIN_ROUNDS)
    max_rounds = max(min_rounds, QUICK_MAX_ROUNDS if options.quick else FULL_MAX_ROUNDS)
    budget = QUICK_ROUND_BUDGET_S if options.quick else FULL_ROUND_BUDGET_S
    try:
        if fast:
            run_rounds(fast, min_rounds, max_rounds, time.perf_counter() + budget, log)
    finally:
        _unload(fast, raw_translator)
    slow: list[Timed] = []
    if any(e.startswith("hf_") for e in engines):
        hf = _HF.load(w, options.device)
        hf.pick_threads(w, log)
        caps = QUICK_HF_CAPS_S if options.quick else FULL_HF_CAPS_S
        if "hf_batched" in engines:
            batched = make_hf_batched(w, hf, detok, caps[0])
            run_rounds([batched], 1, 1 if options.quick else 2, time.perf_counter() + budget, log)
            slow.append(batched)
        if "hf_pipeline_per_sentence" in engines:
            subset = min(QUICK_PIPELINE if options.quick else FULL_PIPELINE, len(w.sentences))
            pipe = make_hf_pipeline(w, hf, detok, subset, caps[1])
            run_rounds([pipe], 1, 1, 0.0, log)
            slow.append(pipe)
        for t in slow:
            t.call = None  # type: ignore[assignment]  # drop the closures holding the model
        del hf
        gc.collect()

    results, detail = _results(w, options, fast, slow, engines)
    detail["warnings"] = warnings_ + detail["warnings"]
    detail["wall_s"] = {"prepare": round(t_prepared - t_start, 1),
                        "total": round(time.perf_counter() - t_start, 1),
                        "build_or_convert": w.build_seconds, "cold_cache": bool(w.build_seconds)}
    return WorkloadResult(workload=NAME, headline_metric="output_tokens_per_s", results=results,
                          detail=detail, options=options.as_dict())


def _paired_ratios(fast: list[Timed]) -> dict[str, Any] | None:
    """instructmill / the fastest raw variant **of the same round**, per round, and their median.

    Under persistent contention the fastest runs of two engines may come from different rounds
    (a quiet moment for one of them); a ratio within each round compares runs that met the same
    load, so its median is the steadier figure.
    """
    own = next((t for t in fast if t.engine == "instructmill"), None)
    raws = [t for t in fast if t.engine == "ct2_raw_best"]
    if own is None or not raws:
        return None
    ratios = []
    for i, rate in enumerate(own.rates):
        theirs = max((r.rates[i] for r in raws if i < len(r.rates)), default=0.0)
        if theirs > 0:
            ratios.append(round(rate / theirs, 3))
    if not ratios:
        return None
    return {"instructmill_vs_ct2_raw_best": ratios, "median": round(statistics.median(ratios), 3)}


def _results(w: TranslationWorkload, options: BenchOptions, fast: list[Timed], slow: list[Timed],
             engines: tuple[str, ...]) -> tuple[list[EngineResult], dict[str, Any]]:
    raws = [t for t in fast if t.engine == "ct2_raw_best"]
    best_raw = max(raws, key=lambda t: t.rate) if raws else None
    reference = best_raw.texts if best_raw else None
    warnings_: list[str] = []
    results: list[EngineResult] = []
    counted = [t for t in fast if t.engine != "ct2_raw_best"] + ([best_raw] if best_raw else []) + slow
    for t in counted:
        assert t.best is not None
        notes = []
        extra: dict[str, Any] = {"peak_rss_mb": round(t.peak_rss_mb, 1),
                                 "busy_fraction": t.best_notes.get("busy_fraction")}
        if t is best_raw:
            extra.update(bleu=None, chrf=None, identical_outputs=None)
            notes.append("reference for bleu / chrf (the other engines' outputs are scored against it)")
        else:
            extra.update(_scores(t.texts, reference))
        settings = {**t.settings, "rounds_output_tokens_per_s": t.rates, "rounds_others_share": t.loads,
                    "cpu_counted_round": t.best_cpu}
        if t is best_raw:
            settings["variant"] = t.variant
            settings["variants_output_tokens_per_s"] = {r.variant: round(r.rate, 1) for r in raws}
            notes.append(f"best of the raw variants: {t.variant}")
        if t.best_notes:
            settings["stats"] = {k: v for k, v in t.best_notes.items() if k != "busy_fraction"}
        if t.engine == "hf_pipeline_per_sentence":
            notes.append(t.settings["implementation"].split(":")[0])
        if t.best.requests < len(w.sentences):
            capped = t.best_seconds > t.settings.get("time_cap_s", float("inf"))
            notes.append(f"measured on the first {t.best.requests} of {len(w.sentences)} sentences"
                         + (f" (stopped at its {t.settings['time_cap_s']:.0f} s time cap)" if capped else "")
                         + f": rates are per second on that subset (all would take "
                         f"~{t.best_seconds * len(w.sentences) / t.best.requests:.0f} s)")
        if t.disturbed:
            notes.append(f"disturbed: other processes used {t.best_cpu['others_share']:.0%} of the CPU "
                         "during the counted run")
        if w.output_len is not None and t.best.output_tokens != t.best.requests * w.output_len:
            warnings_.append(f"{t.label}: {t.best.output_tokens} target tokens, expected "
                             f"{t.best.requests} x {w.output_len}: tokens/s are not comparable")
        role = ROLE_INSTRUCTMILL if t.engine == "instructmill" else ROLE_BASELINE
        metrics = throughput(requests=t.best.requests, input_tokens=t.best.input_tokens,
                             output_tokens=t.best.output_tokens, seconds=t.best_seconds, **extra)
        results.append(EngineResult(engine=t.engine, role=role, metrics=metrics, settings=settings,
                                    note="; ".join(notes)))
    own = next((r for r in results if r.role == ROLE_INSTRUCTMILL), None)
    targets = {}
    for name, target in TARGETS.items():
        base = next((r for r in results if r.engine == name), None)
        if own and base and base.metrics["output_tokens_per_s"]:
            ratio = own.metrics["output_tokens_per_s"] / base.metrics["output_tokens_per_s"]
            targets[f"vs_{name}"] = {"target": target, "ratio": round(ratio, 3), "pass": ratio >= target}
    paired = _paired_ratios(fast)
    checks = {}
    if own is not None and own.metrics.get("identical_outputs") is not None:
        # int8 vs int8 (float16 vs float16 on CUDA): the same text, but for a rare greedy tie broken
        # differently under another batch shape. (Not BLEU: corpus BLEU is 0 for identical texts
        # shorter than 4 words.)
        checks["instructmill_output_matches_raw_engine"] = own.metrics["identical_outputs"] >= MIN_IDENTICAL_VS_RAW
    detail = {
        "checks": checks,
        "comparable": {**w.data, **{k: v for k, v in w.describe().items() if k != "source_tokens_mean"},
                       "output_len": w.output_len, "decoding": "greedy (beam 1)", "model": w.model,
                       "quick": options.quick, "device": options.device},
        "workload": f"sharegpt-en-{len(w.sentences)}x{w.output_len or 'natural'}tok",
        "sentences": w.describe(),
        "model": w.model,
        "engines": list(engines),
        "reference": "ct2_raw_best" if best_raw else None,
        "detokenization": "pieces -> target sentencepiece decode, </s> / <pad> dropped (as instructmill's "
                          "backend), for every engine",
        "targets": targets,
        "paired_rounds": paired,
        "peak_rss_note": "process RSS: instructmill's and the raw engine's models are both resident during "
                         "the interleaved rounds; CTranslate2 models are unloaded before the HF engines"
                         + ("; host memory only (GPU memory is not included)" if options.device == "cuda" else ""),
        "warnings": warnings_,
    }
    return results, detail
