"""Back-translation throughput: instructmill's hop vs raw CTranslate2 vs HF transformers.

One run measures, in one process, target tokens per second of one translation hop over the same
real English sentences on a MarianMT model of Helsinki-NLP/opus-mt-en-de's shape (built here with
random weights, no model hub), with the output length fixed to ``--output-tokens`` in every
engine and greedy decoding everywhere:

* ``instructmill`` -- :func:`instructmill.engine.chain.translate_chain` with one
  :class:`~instructmill.engine.ctranslate2_backend.CTranslate2Backend` and *no* thread or batch
  settings: what instructmill picks by itself (int8 via ``compute_type="auto"`` on CPU).
  Timed from text in to text out (tokenization, scheduling, detokenization included).
* ``ct2_raw_best`` -- ``ctranslate2.Translator(compute_type="int8", inter_threads=cores,
  intra_threads=1)`` and one ``translate_batch`` over all pre-tokenized sentences, in two
  variants: 64-example batches and 3,072-token batches; the faster is "best".
* ``ct2_raw_32`` -- the plain setting: a float32 conversion, default compute type and threads,
  ``translate_batch(max_batch_size=32)``.
* ``hf_batched`` -- ``MarianMTModel.generate`` greedy on batches of 32 sentences in input order,
  ``torch.set_num_threads(cores)``.
* ``hf_pipeline_per_sentence`` -- ``pipeline("translation")`` called one sentence at a time. That
  pipeline task was removed in transformers 5; there the same per-call steps (tokenize one text,
  ``generate``, decode with ``skip_special_tokens``) run directly. Slow, so it runs on the first
  ``--pipeline-sentences`` sentences.

Every engine is warmed up once on a few sentences, then timed. instructmill and the two raw
variants run in ``--repeats`` interleaved rounds (more while a run was disturbed by other
processes, see ``--max-repeats``); the fastest run of each counts and every round is kept in
the results. Each timed run records the share of the machine's CPU that *other* processes used
meanwhile (``/proc/stat``); ``--wait-quiet S`` waits for a quiet CPU before each run on a shared
machine. Target tokens are counted from each engine's actual output (no ``</s>``, no
decoder-start token), so the comparison holds only when every engine produced
``sentences * output_tokens`` of them; the table shows the counts.

Output: a table, the two targets of the issue (instructmill >= 0.95x ct2_raw_best and >= 3.5x
hf_batched) as PASS/FAIL, and one JSON line per engine appended to ``--results``.

The model (HF folder + int8 and float32 CTranslate2 conversions) and the sentence candidates are
cached in ``benchmarks/.cache/`` keyed by the recipe, so reruns start in seconds.

Usage::

    PYTHONPATH=src python benchmarks/bench_backtranslation.py [--sentences 512]
        [--output-tokens 48] [--quick] [--skip-hf] [--results benchmarks/results.jsonl]
"""
from __future__ import annotations

import argparse
import gc
import gzip
import hashlib
import json
import os
import shutil
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
if str(HERE.parent / "src") not in sys.path:  # run from a checkout without installing
    sys.path.insert(1, str(HERE.parent / "src"))

from _common import append_jsonl, environment, git_dirty, git_sha, utc_now, versions  # noqa: E402

DATA = Path(os.environ.get("INSTRUCTMILL_SHARED", "/work/shared")) / "data" / "sharegpt_sample.jsonl.gz"
CACHE = HERE / ".cache"
RESULTS = HERE / "results.jsonl"
#: Bump when the model or sentence recipe changes (invalidates the cache).
RECIPE_VERSION = 1
MIN_TOKENS, MAX_TOKENS = 5, 64  # source tokens per sentence, </s> included
WARMUP_SENTENCES = 8
TARGET_VS_CT2 = 0.95
TARGET_VS_HF = 3.5
#: A run is "clean" when other processes used at most this share of the machine's CPU meanwhile.
CLEAN_SHARE = 0.05
ENGINES = ("instructmill", "ct2_raw_best", "ct2_raw_32", "hf_batched", "hf_pipeline_per_sentence")


# --------------------------------------------------------------------------- workload

def extract_candidates(path: Path) -> list[str]:
    """Distinct English sentences from the human turns of a ShareGPT JSONL.gz file, in file order.

    Each human turn is cut into lines (code fences skipped), each line into sentences with
    instructmill's pysbd splitter. A sentence is kept when it looks like prose: 20-400 characters,
    starts with an upper-case letter, ends with ``.``, ``?`` or ``!``, is ASCII, has at least four
    words and no code-like characters.
    """
    from instructmill.methods.segmentation import split_sentences

    seen: set[str] = set()
    out: list[str] = []
    code_chars = set("{}<>|\\=_#`@$")
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            try:
                conv = json.loads(line)
            except ValueError:
                continue
            for turn in conv.get("conversations") or []:
                if turn.get("from") != "human" or not isinstance(turn.get("value"), str):
                    continue
                in_fence = False
                for raw in turn["value"].splitlines():
                    text = raw.strip()
                    if text.startswith(("```", "~~~")):
                        in_fence = not in_fence
                        continue
                    if in_fence or not 20 <= len(text) <= 2000 or not text.isascii():
                        continue
                    for start, end in split_sentences(text):
                        sent = " ".join(text[start:end].split())
                        if (20 <= len(sent) <= 400 and sent[0].isupper() and sent[-1] in ".?!"
                                and len(sent.split()) >= 4 and not (code_chars & set(sent))
                                and sent not in seen):
                            seen.add(sent)
                            out.append(sent)
    return out


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def select_sentences(candidates: list[str], count_tokens: Callable[[list[str]], list[int]],
                     n: int) -> list[str]:
    """``n`` sentences of MIN_TOKENS..MAX_TOKENS source tokens, in a fixed pseudo-random order.

    The order is by SHA-256 of the sentence (deterministic, spread over all conversations).
    Raises ``SystemExit`` when fewer than ``n`` sentences qualify.
    """
    ordered = sorted(candidates, key=_sha)
    lengths = count_tokens(ordered)
    picked = [s for s, k in zip(ordered, lengths) if MIN_TOKENS <= k <= MAX_TOKENS][:n]
    if len(picked) < n:
        raise SystemExit(f"only {len(picked)} sentences of {MIN_TOKENS}-{MAX_TOKENS} tokens in {DATA}")
    return picked


@dataclass
class Workload:
    hf_dir: Path
    ct2_int8_dir: Path
    ct2_f32_dir: Path
    sentences: list[str]
    tokens: list[list[str]]  # source pieces + "</s>", as instructmill's backend encodes them
    output_tokens: int
    recipe: dict[str, Any]

    @property
    def name(self) -> str:
        return f"sharegpt-en-{len(self.sentences)}x{self.output_tokens}tok"

    def describe(self) -> dict[str, Any]:
        lens = [len(t) for t in self.tokens]
        return {"name": self.name, "sentences": len(self.sentences), "output_tokens": self.output_tokens,
                "source_tokens": sum(lens), "source_tokens_mean": round(statistics.mean(lens), 2),
                "source_tokens_max": max(lens), "sentences_sha256": _sha("\n".join(self.sentences))[:16],
                "model": self.recipe}


def prepare(n: int, output_tokens: int, *, rebuild: bool = False, log=print) -> Workload:
    """Build (or load from the cache) the model, its conversions and the sentences."""
    from instructmill.testing import OPUS_MT_EN_DE_SHAPE

    recipe = {"recipe": RECIPE_VERSION, "shape": "opus-mt-en-de", **OPUS_MT_EN_DE_SHAPE,
              "weights": "random", "seed": 0, "tokenizer": "sentencepiece unigram trained on ShareGPT",
              "data_sha256": hashlib.sha256(DATA.read_bytes()).hexdigest()[:16]}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    root = CACHE / f"marian-{key}"
    if rebuild and root.exists():
        shutil.rmtree(root)
    done = root / "done.json"
    if not done.is_file():
        _build(root, recipe, log)
    candidates = json.loads((root / "candidates.json").read_text(encoding="utf-8"))
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(root / "ct2-int8" / "source.spm"))

    def count(texts: list[str]) -> list[int]:
        return [len(p) + 1 for p in sp.encode(texts, out_type=str)]

    sentences = select_sentences(candidates, count, n)
    tokens = [p + ["</s>"] for p in sp.encode(sentences, out_type=str)]
    return Workload(root / "hf", root / "ct2-int8", root / "ct2-float32", sentences, tokens,
                    output_tokens, {**recipe, "cache_key": key})


def _build(root: Path, recipe: dict[str, Any], log) -> None:
    from instructmill.converters import convert_model
    from instructmill.testing import OPUS_MT_EN_DE_SHAPE, build_marian

    _quiet_transformers()
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    t0 = time.perf_counter()
    candidates = extract_candidates(DATA)
    (root / "candidates.json").write_text(json.dumps(candidates, ensure_ascii=False), encoding="utf-8")
    log(f"[build] {len(candidates)} candidate sentences from {DATA.name} "
        f"({time.perf_counter() - t0:.1f} s)")
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_marian(root / "hf", **OPUS_MT_EN_DE_SHAPE, weights="random", seed=recipe["seed"],
                     corpus=candidates)
    log(f"[build] HF MarianMT folder, opus-mt-en-de shape, random weights "
        f"({time.perf_counter() - t0:.1f} s)")
    for quant, name in (("int8", "ct2-int8"), ("float32", "ct2-float32")):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = convert_model(root / "hf", root / name, quantization=quant, force=True,
                                source_lang="en", target_lang="de")
        log(f"[build] convert_model {quant}: {res.verification.detail if res.verification else '-'} "
            f"({time.perf_counter() - t0:.1f} s)")
    (root / "done.json").write_text(json.dumps(recipe, indent=2) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- engines

@dataclass
class Measurement:
    """One engine's timed run (the fastest of its repeats)."""

    engine: str
    settings: dict[str, Any]
    sentences: int
    target_tokens: int
    seconds: float
    repeats: list[float] = field(default_factory=list)  # tokens/s of every repeat
    variant: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # CpuSample of the counted repeat
    repeat_cpu: list[dict[str, float]] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.target_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def label(self) -> str:
        return f"{self.engine}[{self.variant}]" if self.variant else self.engine


class Timed:
    """Runs a prepared engine callable; keeps the fastest of several repeats."""

    def __init__(self, engine: str, settings: dict[str, Any], run: Callable[[], tuple[int, int]],
                 variant: str | None = None, notes: Callable[[], dict[str, Any]] | None = None):
        self.engine, self.settings, self.run, self.variant = engine, settings, run, variant
        self.notes = notes
        self.best: Measurement | None = None
        self.rates: list[float] = []
        self.loads: list[dict[str, float]] = []

    def once(self) -> Measurement:
        gc.collect()
        QUIET.wait()
        cpu0 = CpuSample()
        start = time.perf_counter()
        sentences, target_tokens = self.run()
        seconds = time.perf_counter() - start
        load = cpu0.until_now()
        rate = target_tokens / seconds
        self.rates.append(round(rate, 1))
        self.loads.append(load)
        if self.best is None or rate > self.best.tokens_per_s:
            self.best = Measurement(self.engine, self.settings, sentences, target_tokens, seconds,
                                    variant=self.variant)
            self.best.cpu = load
            if self.notes is not None:
                self.best.notes = self.notes()
        self.best.repeats = self.rates
        self.best.repeat_cpu = self.loads
        return self.best


class CpuSample:
    """CPU use between two points, from ``/proc/stat`` and ``/proc/self/stat`` (Linux).

    ``until_now()`` returns ``{"own_cores": CPU seconds of this process / wall seconds,
    "others_share": share of the machine's CPU time used by other processes}`` -- a noise gauge:
    a run is clean when ``others_share`` is near 0. Empty dict where /proc is missing.
    """

    def __init__(self) -> None:
        self.t = time.perf_counter()
        self.machine = self._machine()
        self.own = self._own()

    @staticmethod
    def _machine() -> tuple[int, int] | None:
        try:
            with open("/proc/stat", encoding="ascii") as fh:
                f = [int(x) for x in fh.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        busy = f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] if len(f) > 7 else 0)
        return busy, busy + f[3] + f[4]

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
        machine, own = self._machine(), self._own()
        if None in (machine, own, self.machine, self.own) or wall <= 0:
            return {}
        busy = machine[0] - self.machine[0]
        total = machine[1] - self.machine[1]
        mine = own - self.own
        tick = os.sysconf("SC_CLK_TCK")
        return {"own_cores": round(mine / tick / wall, 2),
                "others_share": round(max(0, busy - mine) / total, 3) if total > 0 else 0.0}


class QuietGate:
    """Waits, before each timed run, until other processes leave the CPU (shared machines).

    ``budget`` seconds of waiting in total per run (0 = never wait). Quiet means: over a
    ``sample``-second window while this process idles, other processes used at most
    ``threshold`` of the machine's CPU.
    """

    def __init__(self, budget: float = 0.0, threshold: float = CLEAN_SHARE, sample: float = 2.0):
        self.budget, self.threshold, self.sample = budget, threshold, sample
        self.waited = 0.0

    def wait(self) -> None:
        announced = False
        while self.waited < self.budget:
            probe = CpuSample()
            time.sleep(self.sample)
            share = probe.until_now().get("others_share", 0.0)
            if share <= self.threshold:
                return
            self.waited += self.sample
            if not announced:
                print(f"  waiting for a quiet CPU (others {share:.0%}; "
                      f"{self.budget - self.waited:.0f} s of waiting left)", flush=True)
                announced = True


QUIET = QuietGate()


def make_instructmill(w: Workload) -> Timed:
    """instructmill's hop with its own defaults (only the fixed output length is passed)."""
    from instructmill.engine.chain import translate_chain
    from instructmill.engine.ctranslate2_backend import CTranslate2Backend, CTranslate2Options
    from instructmill.engine.scheduler import BatchingOptions
    from instructmill.engine.translation import BackendStats

    n = w.output_tokens
    backend = CTranslate2Backend(w.ct2_int8_dir, options=CTranslate2Options(
        min_decoding_length=n, max_decoding_length=n, beam_size=1))
    translate_chain(w.sentences[:WARMUP_SENTENCES], [backend])  # warm-up
    last: dict[str, Any] = {}

    def run() -> tuple[int, int]:
        backend.stats = BackendStats()
        outputs, stats = translate_chain(w.sentences, [backend])
        assert len(outputs) == len(w.sentences) and all(o[-1] for o in outputs)
        last.update(chain=asdict(stats), backend_stats=backend.stats.as_dict())
        return backend.stats.segments, backend.stats.target_tokens

    defaults = BatchingOptions()
    settings = {**backend.settings(), "min_decoding_length": n, "max_decoding_length": n,
                "batching (defaults)": asdict(defaults), "batches_in_flight": backend.parallel_batches,
                "passed": "CTranslate2Options(min_decoding_length, max_decoding_length, beam_size=1)"}
    return Timed("instructmill", settings, run, notes=lambda: dict(last))


def _ct2_count(results) -> int:
    return sum(len(r.hypotheses[0]) for r in results)


def make_ct2_raw_best(w: Workload) -> list[Timed]:
    """Raw CTranslate2 int8, one replica per core, 64-example or 3,072-token batches."""
    import ctranslate2

    cores = os.cpu_count() or 1
    n = w.output_tokens
    translator = ctranslate2.Translator(str(w.ct2_int8_dir), device="cpu", compute_type="int8",
                                        inter_threads=cores, intra_threads=1)
    timed = []
    for batch_type, size in (("examples", 64), ("tokens", 3072)):
        kwargs = dict(max_batch_size=size, batch_type=batch_type, beam_size=1,
                      min_decoding_length=n, max_decoding_length=n)
        translator.translate_batch(w.tokens[:WARMUP_SENTENCES], **kwargs)

        def run(kwargs=kwargs) -> tuple[int, int]:
            results = translator.translate_batch(w.tokens, **kwargs)
            return len(results), _ct2_count(results)

        settings = {"compute_type": "int8", "inter_threads": cores, "intra_threads": 1, **kwargs}
        timed.append(Timed("ct2_raw_best", settings, run, variant=f"{size}{batch_type[:3]}"))
    return timed


def make_ct2_raw_32(w: Workload) -> Timed:
    """Raw CTranslate2, the plain setting: float32 model, default compute type and threads."""
    import ctranslate2

    n = w.output_tokens
    translator = ctranslate2.Translator(str(w.ct2_f32_dir), device="cpu")
    kwargs = dict(max_batch_size=32, beam_size=1, min_decoding_length=n, max_decoding_length=n)
    translator.translate_batch(w.tokens[:WARMUP_SENTENCES], **kwargs)

    def run() -> tuple[int, int]:
        results = translator.translate_batch(w.tokens, **kwargs)
        return len(results), _ct2_count(results)

    settings = {"model": "float32 conversion", "compute_type": translator.compute_type,
                "inter_threads": "default (1)", "intra_threads": "default (0)", **kwargs}
    return Timed("ct2_raw_32", settings, run)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _load_hf(w: Workload):
    import torch
    from transformers import AutoTokenizer, MarianMTModel

    _quiet_transformers()

    torch.set_num_threads(os.cpu_count() or 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = AutoTokenizer.from_pretrained(str(w.hf_dir))
        model = MarianMTModel.from_pretrained(str(w.hf_dir)).eval()
    return torch, tok, model


def _hf_generate_kwargs(n: int) -> dict[str, Any]:
    # Greedy, exactly n new tokens. Marian's forced_eos_token_id would spend the n-th step on a
    # forced </s>; turning it off makes HF decode the same n steps / n tokens as CTranslate2's
    # min_decoding_length = max_decoding_length = n (whose output has no </s>).
    return dict(num_beams=1, do_sample=False, min_new_tokens=n, max_new_tokens=n,
                forced_eos_token_id=None)


def _hf_count(seqs, tok) -> int:
    gen = seqs[:, 1:]  # drop the decoder-start token
    special = (gen == tok.pad_token_id) | (gen == tok.eos_token_id)
    return int((~special).sum())


def make_hf_batched(w: Workload, batch_size: int = 32) -> Timed:
    """transformers ``MarianMTModel.generate``, greedy, batches of 32 in input order."""
    torch, tok, model = _load_hf(w)
    gen_kwargs = _hf_generate_kwargs(w.output_tokens)

    def translate(texts: list[str]) -> int:
        count = 0
        for i in range(0, len(texts), batch_size):
            enc = tok(texts[i:i + batch_size], return_tensors="pt", padding=True)
            with torch.inference_mode():
                seqs = model.generate(**enc, **gen_kwargs)
            tok.batch_decode(seqs, skip_special_tokens=True)
            count += _hf_count(seqs, tok)
        return count

    translate(w.sentences[:batch_size])  # warm-up on one full batch (first calls allocate)

    def run() -> tuple[int, int]:
        return len(w.sentences), translate(w.sentences)

    settings = {"batch_size": batch_size, "order": "input order", "dtype": "float32",
                "torch_threads": torch.get_num_threads(), **gen_kwargs}
    return Timed("hf_batched", settings, run)


def make_hf_pipeline(w: Workload, n_sentences: int) -> Timed:
    """``pipeline("translation")`` one sentence per call (or its transformers-5 equivalent)."""
    torch, tok, model = _load_hf(w)
    gen_kwargs = _hf_generate_kwargs(w.output_tokens)
    texts = w.sentences[:n_sentences]
    try:
        from transformers import pipeline

        pipe = pipeline("translation", model=model, tokenizer=tok)
        implementation = "transformers.pipeline('translation')"

        def one(text: str) -> int:
            out = pipe(text, return_tensors=True, **gen_kwargs)
            ids = torch.as_tensor(out[0]["translation_token_ids"]).reshape(1, -1)
            return _hf_count(ids, tok)
    except KeyError:  # transformers >= 5 removed the task
        implementation = ("per-sentence tokenize + generate + decode: what pipeline('translation') "
                          "did per call; the task was removed in transformers 5")

        def one(text: str) -> int:
            enc = tok([text], return_tensors="pt")
            with torch.inference_mode():
                seqs = model.generate(**enc, **gen_kwargs)
            tok.decode(seqs[0], skip_special_tokens=True, clean_up_tokenization_spaces=False)
            return _hf_count(seqs, tok)

    for text in texts[:2]:
        one(text)

    def run() -> tuple[int, int]:
        return len(texts), sum(one(t) for t in texts)

    settings = {"implementation": implementation, "sentences_subset": f"first {len(texts)}",
                "torch_threads": torch.get_num_threads(), **gen_kwargs}
    return Timed("hf_pipeline_per_sentence", settings, run)


# --------------------------------------------------------------------------- report

def _ratio(a: float, b: float | None) -> float | None:
    return round(a / b, 3) if b else None


def report(measurements: list[Measurement], w: Workload,
           args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    """Build the JSON records and the printed lines (table + target checks)."""
    raw = [m for m in measurements if m.engine == "ct2_raw_best"]
    best_raw = max(raw, key=lambda m: m.tokens_per_s) if raw else None
    hf = next((m for m in measurements if m.engine == "hf_batched"), None)
    ours = next((m for m in measurements if m.engine == "instructmill"), None)
    ref_ct2 = best_raw.tokens_per_s if best_raw else None
    ref_hf = hf.tokens_per_s if hf else None

    header = (f"{'engine':<32} {'sentences':>9} {'target tok':>10} {'expected':>8} {'seconds':>8} "
              f"{'tok/s':>8} {'vs ct2 best':>11} {'vs hf batch':>11} {'others':>6}")
    lines = [f"workload: {w.name} (source tokens {w.describe()['source_tokens']}, "
             f"mean {w.describe()['source_tokens_mean']}, max {w.describe()['source_tokens_max']})",
             header, "-" * len(header)]
    for m in measurements:
        expected = m.sentences * w.output_tokens
        r1, r2 = _ratio(m.tokens_per_s, ref_ct2), _ratio(m.tokens_per_s, ref_hf)
        mark = " *" if m is best_raw else ""
        lines.append(f"{m.label + mark:<32} {m.sentences:>9} {m.target_tokens:>10} {expected:>8} "
                     f"{m.seconds:>8.2f} {m.tokens_per_s:>8.1f} "
                     f"{(f'{r1:.2f}x' if r1 else '-'):>11} {(f'{r2:.2f}x' if r2 else '-'):>11} "
                     f"{(format(m.cpu['others_share'], '.0%') if m.cpu else '-'):>6}")
    lines.append("(* = ct2_raw_best: the faster raw variant; tok/s = fastest of the repeats; "
                 "others = share of the machine's CPU used by other processes meanwhile)")
    noisy = [m.label for m in measurements if m.cpu.get("others_share", 0) > CLEAN_SHARE]
    if noisy:
        lines.append(f"WARNING: other processes used > {CLEAN_SHARE:.0%} of the CPU during "
                     f"{', '.join(noisy)}: "
                     "figures are noisy, rerun when the machine is quiet")
    for m in measurements:
        lines.append(f"  {m.label}: {json.dumps(m.settings, default=str)}"
                     + (f" repeats tok/s {m.repeats}" if len(m.repeats) > 1 else ""))
    mismatched = [m.label for m in measurements if m.target_tokens != m.sentences * w.output_tokens]
    if mismatched:
        lines.append(f"WARNING: target tokens differ from sentences x {w.output_tokens} for "
                     f"{', '.join(mismatched)}: tokens/s are not comparable")

    checks: dict[str, Any] = {}
    if ours is not None:
        for name, ref, target in (("vs_ct2_raw_best", ref_ct2, TARGET_VS_CT2),
                                  ("vs_hf_batched", ref_hf, TARGET_VS_HF)):
            if ref:
                ratio = ours.tokens_per_s / ref
                checks[name] = {"target": target, "ratio": round(ratio, 3), "pass": ratio >= target}
                lines.append(f"target instructmill >= {target}x {name[3:]}: {ratio:.3f}x "
                             f"{'PASS' if ratio >= target else 'FAIL'}")
            else:
                checks[name] = {"target": target, "ratio": None, "pass": None}
                lines.append(f"target instructmill >= {target}x {name[3:]}: SKIPPED (not measured)")

    env = environment()
    common = {"benchmark": "backtranslation", "date": utc_now(), "workload": w.name,
              "workload_detail": w.describe(),
              "versions": versions(), "cpu_model": env["cpu_model"], "cores": env["cores"],
              "environment": env, "git_sha": git_sha(), "git_dirty": git_dirty(),
              "argv": sys.argv[1:], "repeats": args.repeats,
              "waited_for_quiet_s": round(QUIET.waited, 1)}
    records = []
    for m in measurements:
        rec = {**common, "engine": m.engine, "variant": m.variant, "settings": m.settings,
               "sentences": m.sentences, "target_tokens": m.target_tokens,
               "expected_target_tokens": m.sentences * w.output_tokens,
               "seconds": round(m.seconds, 3), "tokens_per_s": round(m.tokens_per_s, 1),
               "repeats_tokens_per_s": m.repeats, "cpu": m.cpu, "repeats_cpu": m.repeat_cpu,
               "ratio_vs_ct2_raw_best": _ratio(m.tokens_per_s, ref_ct2),
               "ratio_vs_hf_batched": _ratio(m.tokens_per_s, ref_hf)}
        if m.engine == "ct2_raw_best":
            rec["is_best"] = m is best_raw
        if m is ours:
            rec["targets"] = checks
        if m.notes:
            rec["notes"] = m.notes
        records.append(rec)
    return records, lines


# --------------------------------------------------------------------------- main

def run_rounds(timeds: list[Timed], min_rounds: int, max_rounds: int, deadline: float,
               clean: float = CLEAN_SHARE) -> list[Measurement]:
    """Time ``timeds`` in interleaved rounds; returns each one's fastest run.

    At least ``min_rounds``; more (up to ``max_rounds``, while ``time.perf_counter() < deadline``)
    as long as some engine's fastest run was disturbed (other processes used more than ``clean``
    of the machine's CPU meanwhile).
    """
    for r in range(1, max(min_rounds, max_rounds) + 1):
        for t in timeds:
            t.once()
            print(f"  [{r}] {t.best.label}: {t.rates[-1]:.1f} tok/s "
                  f"(others {t.loads[-1].get('others_share', 0):.0%})", flush=True)
        disturbed = any(t.best.cpu.get("others_share", 0.0) > clean for t in timeds)
        if r >= min_rounds and (not disturbed or r >= max_rounds or time.perf_counter() > deadline):
            break
    return [t.best for t in timeds if t.best is not None]


def _unload_ct2() -> None:
    """Free the Translators instructmill caches per process (before the torch engines run)."""
    from instructmill.engine import ctranslate2_backend as cb

    with cb._TRANSLATORS_LOCK:
        for translator in cb._TRANSLATORS.values():
            translator.unload_model()
        cb._TRANSLATORS.clear()
    gc.collect()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sentences", type=int, default=512, help="sentences per engine (default 512)")
    p.add_argument("--output-tokens", type=int, default=48,
                   help="target tokens per sentence (default 48)")
    p.add_argument("--pipeline-sentences", type=int, default=48,
                   help="sentences for the slow per-sentence pipeline (default 48)")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed rounds of instructmill and ct2_raw_best, interleaved; the fastest "
                        "run of each counts (default 3)")
    p.add_argument("--max-repeats", type=int, default=6,
                   help="at most this many rounds in all: rounds beyond --repeats run while an "
                        "engine's fastest run was disturbed by other processes "
                        f"(> {CLEAN_SHARE * 100:.0f}%% of the CPU) (default 6)")
    p.add_argument("--time-budget", type=float, default=300.0,
                   help="no extra rounds after this many seconds of the run (default 300)")
    p.add_argument("--quick", action="store_true",
                   help="fast check: 128 sentences, 16 pipeline sentences, 3 rounds (about a "
                        "minute; overrides those three options)")
    p.add_argument("--skip-hf", action="store_true", help="skip the transformers engines")
    p.add_argument("--engines", default=",".join(ENGINES),
                   help=f"comma-separated subset of {', '.join(ENGINES)}")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before each timed run, wait until other processes use <= "
                        f"{CLEAN_SHARE * 100:.0f}%% of the CPU; at most this many seconds of "
                        "waiting in the whole run (default 0: never wait)")
    p.add_argument("--results", type=Path, default=RESULTS, help="JSON-lines file to append to")
    p.add_argument("--no-save", action="store_true", help="print only, append nothing")
    p.add_argument("--rebuild", action="store_true", help="rebuild the cached model and sentences")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = p.parse_args(argv)
    if args.quick:
        args.sentences, args.pipeline_sentences, args.repeats = 128, 16, 3
        args.max_repeats = min(args.max_repeats, 3)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = set(engines) - set(ENGINES)
    if unknown:
        p.error(f"unknown engines: {', '.join(sorted(unknown))}")
    if args.skip_hf:
        engines = [e for e in engines if not e.startswith("hf_")]
    args.engine_list = engines
    args.max_repeats = max(args.max_repeats, args.repeats)
    for name in ("sentences", "output_tokens", "pipeline_sentences", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    t_start = time.perf_counter()
    QUIET.budget = args.wait_quiet
    w = prepare(args.sentences, args.output_tokens, rebuild=args.rebuild)
    print(f"model cache: {w.hf_dir.parent}", flush=True)
    engines = args.engine_list
    measurements: list[Measurement] = []

    # instructmill and raw CTranslate2 best: build all, then interleave the repeats so load
    # drifts (other processes on the machine) hit them alike; the fastest repeat counts.
    ct2: list[Timed] = []
    if "instructmill" in engines:
        ct2.append(make_instructmill(w))
    if "ct2_raw_best" in engines:
        ct2.extend(make_ct2_raw_best(w))
    deadline = t_start + args.time_budget + args.wait_quiet
    measurements.extend(run_rounds(ct2, args.repeats, args.max_repeats, deadline))
    ct2.clear()
    _unload_ct2()
    # The slower engines: one timed run, a second one only if the first was disturbed.
    if "ct2_raw_32" in engines:
        measurements.extend(run_rounds([make_ct2_raw_32(w)], 1, 2, deadline))
    gc.collect()
    if "hf_batched" in engines:
        measurements.extend(run_rounds([make_hf_batched(w)], 1, 2, deadline))
    if "hf_pipeline_per_sentence" in engines:
        pipe = make_hf_pipeline(w, min(args.pipeline_sentences, len(w.sentences)))
        measurements.extend(run_rounds([pipe], 1, 1, deadline))

    records, lines = report(measurements, w, args)
    print()
    print("\n".join(lines))
    if not args.no_save and records:
        append_jsonl(args.results, records)
        print(f"appended {len(records)} lines to {args.results}")
    print(f"total wall time {time.perf_counter() - t_start:.0f} s")
    failed = any(c.get("pass") is False for r in records for c in (r.get("targets") or {}).values())
    return 1 if (args.check and failed) else 0


if __name__ == "__main__":
    sys.exit(main())
