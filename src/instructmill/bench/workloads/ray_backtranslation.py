"""Ray back-translation workload: one back-translation pipeline on Ray with 2 and 1 CPU actors, and
on the local executor, in one run.

The pipeline (built in code, :func:`pipeline_spec`): a JSONL source of N real English sentences
(``{"id", "instruction"}``; the ShareGPT sentences of :mod:`instructmill.bench.translation_model`,
the same selection as the ``backtranslation`` workload's) -> one ``back-translate`` stage
(instruction, en -> de -> en) on a CTranslate2 engine -> one Alpaca sink. Every record goes both
hops, greedy (beam 1), int8.

Engines (all in this process, on the same inputs, interleaved by round):

* ``instructmill`` (the headline) -- ``Pipeline.run(executor="ray")`` with **2 CPU actors**
  (``RayOptions(replicas=2, num_cpus_per_actor=1)``), each holding one engine replica that runs on
  1 thread per translation direction (``inter_threads=1, intra_threads=1``, which the Ray executor
  sets for a 1-CPU actor): 2 actors use the 2 cores.
* ``ray_1_actor`` -- the same with 1 actor (1 core): the scaling reference.
* ``local_executor`` -- the same pipeline on the local threaded executor, the engine at its
  default threads (``inter_threads`` = cores, ``intra_threads=1``: both cores).

The Ray runs share one Ray instance: ``ray.init(num_cpus=2)`` on this machine, started once for
the workload and stopped at its end (a Ray instance already initialised in this process is
reused, and left running). Rows reach the actors in Ray batches of ``max_batch_size`` rows when
given, else ``N / 8`` rows (8..64), so each actor gets several batches (the stage's own window,
1,024 rows, would give one actor all the work); both Ray runs use the same batch size.

Models: a MarianMT pair of Helsinki-NLP/opus-mt-en-de's shape (d_model 512, 6+6 layers, 8 heads,
FFN 2048, vocabulary 58,101), built offline by :func:`instructmill.testing.build_marian` with
``weights="cipher"`` (seed 0; the way back is the **inverse cipher of the same seed**, so a round
trip restores the text) and a sentencepiece model trained on the ShareGPT sentences, converted to
CTranslate2 int8 and cached under ``<cache_dir>/ray_backtranslation/`` (cold: ~30-60 s). Not the
``backtranslation`` workload's random-weights model: its greedy output repeats one token whatever
the input, the back-translation method discards such a pivot text as ``degenerate`` and never
sends it back, so the second hop would not run. A cipher model has the same shape, so the same
cost per token. A user's model (``BenchOptions.model``: an HF MarianMT folder, or a CTranslate2
folder whose manifest names its HF folder) serves **both directions**: it is converted once more
with the language labels swapped for the way back.

Output length: fixed, ``output_len`` target tokens per segment and hop (default 48, as the
``backtranslation`` workload; CTranslate2 ``min_decoding_length = max_decoding_length``), so
tokens are comparable between runs; with a user's model and no ``output_len``, natural lengths.

Rounds: ``repeats`` (at least 1), the engines interleaved in each; one more round (2 in all) when
an engine's fastest round was disturbed -- other processes used more than 5% of the machine's CPU
meanwhile (``settings.rounds_others_cpu_share``, measured by :class:`TreeCpu`; this machine is
shared) -- and the rounds so far took less than 60 s (quick) / 300 s. The 1-actor run counts as
disturbed too when others use the core it leaves idle: measured here, a neighbour on that core
slowed the single actor by ~20% (shared caches and memory bandwidth). The fastest round of each engine counts (contention only slows a run down);
every round is kept in ``settings``.

Before the timed rounds, untimed warm-up runs on 8 records (local, then Ray with 1 actor: Ray
Data starts its own helper actors on its first run in a Ray instance).

Metrics per engine: ``requests`` = records; ``output_tokens`` / ``input_tokens`` = target / source
tokens of **both hops**, counted by the engine (the run report's engine stats, summed over
replicas); ``seconds`` = wall time of ``Pipeline.run``: Ray's own start-up (``ray.init``, in
``detail["ray_init_seconds"]``) is **not** included; starting the actors, loading the engine in
each and reading / writing the files **are**; ``peak_rss_mb`` = RSS of this process **and its
child processes** (the Ray processes ``ray.init`` started here, the actors among them; a reused
Ray instance's processes are not children and not counted); ``busy_fraction`` = engine busy
seconds (both directions) / (wall seconds x replicas), from the report's engine stats.
``detail["scaling"]`` holds the scaling efficiency = (2-actor tok/s) / (2 x 1-actor tok/s), and
where the wall time went: ``per_actor_output_tokens_per_busy_s`` (output tokens / engine busy
seconds summed over replicas: one replica's rate while it computes) with
``busy_rate_efficiency`` (2-actor / 1-actor of that rate: what two replicas sharing the machine
cost each other), and ``first_rows_s`` (seconds to the first written rows: the actors' start,
engine loading and the first batch).

Checks (``detail["checks"]``): every run (every round of every engine) wrote the same records
(ids, statuses, texts, in file order, output and discards files), and every input id exactly once.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ...errors import OptionError
from ..core import ROLE_BASELINE, ROLE_INSTRUCTMILL, BenchOptions, EngineResult, WorkloadResult
from ..env import machine_cpu_seconds
from ._measure import CLEAN_SHARE, Counts, Round, engine_result, measure_tree

__all__ = ["ENGINES", "NAME", "RayBtModels", "TreeCpu", "pipeline_spec", "prepare_models", "ray_batch_size",
           "run"]

NAME = "ray_backtranslation"
ENGINES = ("instructmill", "ray_1_actor", "local_executor")
#: engine -> Ray actors (``None``: the local executor).
ACTORS: dict[str, int | None] = {"instructmill": 2, "ray_1_actor": 1, "local_executor": None}
QUICK_SENTENCES, FULL_SENTENCES = 256, 1024
#: CPUs of the Ray instance this workload starts (1 per actor).
RAY_CPUS = 2
#: Default Ray batch: N / (2 actors x this) rows, clipped to MIN_BATCH..MAX_BATCH.
BATCHES_PER_ACTOR = 4
MIN_BATCH, MAX_BATCH = 8, 64
#: Target tokens per segment and hop for the built-in model.
DEFAULT_OUTPUT_LEN = 48
#: Bump when the built-in model pair's recipe changes (a new cache folder is built).
RECIPE_VERSION = 1
#: Records of the untimed warm-up runs (local executor: imports, page cache; Ray: Ray Data's own
#: helper actors, started by the first run in a Ray instance).
WARMUP_RECORDS = 8
MT = "mt"
#: Extra rounds (up to these many in all) while an engine's fastest round was disturbed, and only
#: while the rounds so far took less than the budget, seconds.
QUICK_MAX_ROUNDS, FULL_MAX_ROUNDS = 2, 2
QUICK_ROUND_BUDGET_S, FULL_ROUND_BUDGET_S = 60.0, 300.0

Log = Callable[[str], None]


# --------------------------------------------------------------------------- models

@dataclass
class RayBtModels:
    """The inputs of one run.

    Attributes:
        forward / backward: CTranslate2 int8 folders (source -> pivot, pivot -> source).
        source_lang / pivot: the language labels of the pair.
        sentences: the source sentences (record ``i`` has id ``s<i>``).
        source_tokens: their source tokens under the forward model's tokenizer (``</s>`` included).
        output_len: fixed target tokens per segment and hop, or ``None`` (natural lengths).
        model: the pair's description (for ``comparable``).
        data: ``{"dataset", "data_sha256"}``.
        sentences_info: count, SHA-256 prefix, source tokens total / mean / max.
        build_seconds: seconds spent building / converting this run (0.0: all cached).
    """

    forward: Path
    backward: Path
    source_lang: str
    pivot: str
    sentences: list[str]
    source_tokens: int
    output_len: int | None
    model: dict[str, Any]
    data: dict[str, Any]
    sentences_info: dict[str, Any]
    build_seconds: float = 0.0


def _sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _cipher_pair(root: Path, data: Path, data_sha: str, log: Log) -> tuple[Path, Path, dict[str, Any], bool]:
    """The built-in HF pair ``(opus-mt-en-de, opus-mt-de-en, description, built now)``: cipher and
    inverse cipher of seed 0, opus-mt-en-de's shape, built once into ``root/cipher-<recipe hash>/``
    (in a temporary folder renamed when complete)."""
    from ..translation_model import extract_candidates
    from ...testing import OPUS_MT_EN_DE_SHAPE, build_marian

    recipe = {"recipe": RECIPE_VERSION, "shape": "opus-mt-en-de", **OPUS_MT_EN_DE_SHAPE, "weights": "cipher",
              "seed": 0, "backward": "inverse cipher, same seed",
              "tokenizer": "sentencepiece unigram trained on ShareGPT", "data_sha256": data_sha}
    key = _sha(json.dumps(recipe, sort_keys=True))[:12]
    folder = root / f"cipher-{key}"
    pair = folder / "opus-mt-en-de", folder / "opus-mt-de-en"
    built = not (folder / "done.json").is_file()
    if built:
        tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        t0 = time.perf_counter()
        corpus = extract_candidates(data)
        _quiet_transformers()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, inverse in (("opus-mt-en-de", False), ("opus-mt-de-en", True)):
                build_marian(tmp / name, **OPUS_MT_EN_DE_SHAPE, weights="cipher", seed=0, inverse=inverse,
                             corpus=corpus)
        (tmp / "done.json").write_text(json.dumps(recipe, indent=2) + "\n", encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        log(f"[{NAME}] built the cipher MarianMT pair (opus-mt-en-de shape) in {time.perf_counter() - t0:.1f} s")
    return pair[0], pair[1], {"kind": "built-in", **recipe, "cache_key": key}, built


def _converted(root: Path, hf_dir: Path, source: str, target: str, log: Log) -> tuple[Path, bool]:
    """``hf_dir`` converted to CTranslate2 int8 with languages ``source -> target``, cached in
    ``root/converted/`` by path, file sizes and times; ``(folder, converted now)``."""
    from ...converters import convert_model

    stamp = "|".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                     for p in sorted(hf_dir.iterdir()) if p.is_file())
    out = root / "converted" / f"{hf_dir.name}-{source}-{target}-int8-{_sha(f'{hf_dir}|{stamp}')[:12]}"
    if (out / "instructmill.json").is_file():
        return out, False
    t0 = time.perf_counter()
    _quiet_transformers()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        convert_model(hf_dir, out, quantization="int8", force=True, source_lang=source, target_lang=target)
    log(f"[{NAME}] converted {hf_dir} ({source}->{target}) to CTranslate2 int8 ({time.perf_counter() - t0:.1f} s)")
    return out, True


def prepare_models(options: BenchOptions, n: int, log: Log) -> RayBtModels:
    """Build or load (cached) the model pair and pick the ``n`` sentences.

    The sentences are :func:`~instructmill.bench.translation_model.prepare`'s selection for the
    forward model (ShareGPT human turns, 5-64 source tokens, ordered by SHA-256).

    Raises:
        OptionError: the ShareGPT sample is missing; too few sentences; ``model`` is not a Marian
            folder, or a CTranslate2 folder without a local HF folder to convert the way back from.
    """
    from ..translation_model import bench_cache_dir, prepare, sharegpt_path

    data = sharegpt_path()
    if not data.is_file():
        raise OptionError("dataset", str(data), "the ShareGPT sample is missing (set INSTRUCTMILL_SHARED to the "
                                                "folder holding data/sharegpt_sample.jsonl.gz)")
    root = bench_cache_dir(options.cache_dir) / NAME
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data_sha = _sha(data.read_bytes())[:16]
    built = False
    if options.model is None:
        hf_fwd, hf_bwd, described, built = _cipher_pair(root, data, data_sha, log)
        w = prepare(n=n, output_len=None, model=str(hf_fwd), device="cpu", cache_dir=options.cache_dir, log=log)
        built = built or bool(w.build_seconds)
        output_len = options.output_len or DEFAULT_OUTPUT_LEN
    else:
        w = prepare(n=n, output_len=None, model=options.model, device="cpu", cache_dir=options.cache_dir, log=log)
        built = bool(w.build_seconds)
        if w.hf_dir is None:
            raise OptionError("model", options.model, "the way back is this model converted with its languages "
                                                      "swapped, which needs its HF folder: give the HF MarianMT "
                                                      "folder (or a CTranslate2 folder whose manifest's source is "
                                                      "a local HF folder)")
        hf_bwd, described = Path(w.hf_dir), {**w.model, "backward": "the same model, languages swapped"}
        output_len = options.output_len
    manifest = json.loads((Path(w.ct2_dir) / "instructmill.json").read_text(encoding="utf-8"))
    langs = manifest.get("languages") or {}
    source_lang, pivot = langs.get("source") or "en", langs.get("target") or "xx"
    backward, converted = _converted(root, Path(hf_bwd), pivot, source_lang, log)
    lens = [len(t) for t in w.tokens]
    return RayBtModels(
        forward=Path(w.ct2_dir), backward=backward, source_lang=source_lang, pivot=pivot, sentences=w.sentences,
        source_tokens=sum(lens), output_len=output_len, model=described, data=w.data,
        sentences_info=w.describe(),
        build_seconds=round(time.perf_counter() - t0, 1) if built or converted else 0.0)


# --------------------------------------------------------------------------- the pipeline

def pipeline_spec(models: RayBtModels, source: str, sink: str) -> dict[str, Any]:
    """The benchmark's pipeline as a dict (``Pipeline(spec, base_dir=...)``): ``source`` (JSONL
    path) -> back-translate (instruction; en -> pivot -> en, beam 1, int8, the fixed output length
    when set) -> Alpaca ``sink``; run report files off. Engine threads are left unset (the local
    executor: CTranslate2's default, one batch per core; a Ray actor: its CPUs)."""
    engine: dict[str, Any] = {"type": "translation", "backend": "ctranslate2", "forward_model": str(models.forward),
                              "backward_model": str(models.backward), "source_lang": models.source_lang,
                              "pivots": [models.pivot], "compute_type": "int8", "beam_size": 1}
    if models.output_len is not None:
        engine.update(min_decoding_length=models.output_len, max_decoding_length=models.output_len)
    return {"settings": {"report": False, "progress": False},
            "engines": {MT: engine},
            "sources": {"rows": {"path": source}},
            "stages": [{"name": "bt", "method": "back-translate", "engine": MT, "fields": ["instruction"]}],
            "sinks": [{"path": sink, "format": "alpaca"}]}


def ray_batch_size(options: BenchOptions, n: int) -> int:
    """Rows per Ray batch: ``max_batch_size`` when given, else ``n / (2 x BATCHES_PER_ACTOR)``
    clipped to ``MIN_BATCH..MAX_BATCH`` (each of the 2 actors gets several batches)."""
    if options.max_batch_size:
        return options.max_batch_size
    return max(MIN_BATCH, min(MAX_BATCH, n // (2 * BATCHES_PER_ACTOR)))


def _write_source(path: Path, sentences: list[str]) -> list[str]:
    ids = [f"s{i}" for i in range(len(sentences))]
    with open(path, "w", encoding="utf-8") as fh:
        for rid, text in zip(ids, sentences):
            fh.write(json.dumps({"id": rid, "instruction": text}, ensure_ascii=False) + "\n")
    return ids


def _records(sink: Path) -> list[tuple[str, ...]]:
    """``(file, id, status, instruction, input, output)`` of every line of the sink and its
    discards file, in file order."""
    out: list[tuple[str, ...]] = []
    for kind, path in (("ok", sink), ("discards", sink.with_name(sink.stem + ".discards.jsonl"))):
        if not path.exists():
            continue
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                r = json.loads(line)
                out.append((kind, str(r.get("id")), str(r.get("status")), str(r.get("instruction")),
                            str(r.get("input")), str(r.get("output"))))
    return out


def _engine_counts(report: dict[str, Any]) -> dict[str, Any]:
    """Requests, prompt / output tokens and busy seconds of the ``mt`` engine per direction."""
    stats = report.get("engines", {}).get(MT, {})
    directions = stats.get("directions") or {}
    per = {name: {k: d.get(k) for k in ("requests", "prompt_tokens", "output_tokens", "busy_seconds")}
           for name, d in sorted(directions.items())}
    return {"directions": per,
            "output_tokens": sum(int(d.get("output_tokens") or 0) for d in per.values()),
            "prompt_tokens": sum(int(d.get("prompt_tokens") or 0) for d in per.values()),
            "requests": sum(int(d.get("requests") or 0) for d in per.values()),
            "busy_seconds": sum(float(d.get("busy_seconds") or 0.0) for d in per.values())}


class TreeCpu:
    """CPU seconds of this process tree over a block, **actors that exit within it included**, and
    the share of the machine's CPU that other processes used meanwhile (the noise gauge).

    A Ray actor is a descendant of this process (driver -> raylet -> worker) only while it lives;
    its CPU time vanishes from the tree when it exits at the end of a run, so a start/end
    difference would count it as another process's. This samples every process of the tree every
    ``interval`` seconds and keeps each one's last CPU time (at most one interval of a process's
    last work is missed). Attributes after the block: ``own_seconds`` (CPU seconds of the tree),
    ``own_cores`` (per wall second), ``others_share``. Needs psutil (Ray brings it) and
    ``/proc/stat``; otherwise they stay ``None``.
    """

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.others_share: float | None = None
        self.own_cores: float | None = None
        self.own_seconds: float | None = None
        self._thread: threading.Thread | None = None
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._stop = threading.Event()

    def _sample(self, into: dict[int, float]) -> None:
        import psutil

        me = psutil.Process()
        for proc in [me, *me.children(recursive=True)]:
            try:
                t = proc.cpu_times()
                into[proc.pid] = t.user + t.system
            except psutil.Error:
                pass

    def __enter__(self) -> TreeCpu:
        import importlib.util

        if importlib.util.find_spec("psutil") is None:  # pragma: no cover - Ray depends on psutil
            return self
        self._sample(self._first)
        self._last.update(self._first)
        self._machine0, self._t0 = machine_cpu_seconds(), time.perf_counter()

        def loop() -> None:
            while not self._stop.wait(self.interval):
                self._sample(self._last)

        self._thread = threading.Thread(target=loop, name="bench-tree-cpu", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._sample(self._last)
        wall = time.perf_counter() - self._t0
        own = sum(cpu - self._first.get(pid, 0.0) for pid, cpu in self._last.items())
        self.own_seconds = round(own, 3)
        machine1 = machine_cpu_seconds()
        if wall > 0:
            self.own_cores = round(own / wall, 2)
        if self._machine0 is not None and machine1 is not None:
            busy, total = machine1[0] - self._machine0[0], machine1[1] - self._machine0[1]
            if total >= 0.5:
                self.others_share = round(min(1.0, max(0.0, busy - own) / total), 3)


@dataclass
class _Engine:
    """One engine of the workload: its rounds, the records of its first run, its last report's facts."""

    name: str
    actors: int | None
    rounds: list[Round] = field(default_factory=list)
    records: list[tuple[str, ...]] | None = None
    counts: list[dict[str, Any]] = field(default_factory=list)
    executor: dict[str, Any] | None = None
    statuses: dict[str, int] = field(default_factory=dict)
    first_rows_s: list[float | None] = field(default_factory=list)
    unstable_rounds: int = 0


def _first_rows_seconds(report: dict[str, Any]) -> float | None:
    """Seconds from the start of ``Pipeline.run`` to the sink's first written rows: for a Ray run,
    starting the actors and loading their engines plus the first batch."""
    timeline = (((report.get("sinks") or {}).get("data") or {}).get("timeline")) or []
    first = next((t for t, rows in timeline if rows > 0), None)
    return round(float(first) + float(report.get("setup_seconds") or 0.0), 2) if first is not None else None


def _run_once(engine: _Engine, spec: dict[str, Any], work: Path, tag: str, batch: int) -> None:
    from ...pipeline import Pipeline, RayOptions

    out = work / f"{engine.name}-{tag}"
    sink = out / "data.jsonl"
    spec = {**spec, "sinks": [{**spec["sinks"][0], "path": str(sink)}]}
    pipeline = Pipeline(spec, base_dir=work)
    kwargs: dict[str, Any] = {"progress": False, "overwrite": True}
    if engine.actors is not None:
        kwargs.update(executor="ray", ray=RayOptions(replicas=engine.actors, batch_size=batch, num_cpus_per_actor=1.0))
    holder: dict[str, Any] = {}

    def call() -> Counts:
        holder["report"] = pipeline.run(**kwargs)
        c = _engine_counts(holder["report"])
        return Counts(output_tokens=c["output_tokens"], input_tokens=c["prompt_tokens"],
                      busy_seconds=c["busy_seconds"] / (engine.actors or 1))

    with measure_tree() as m, TreeCpu() as cpu:
        counts = call()
    rnd = Round(counts, m.seconds, m.peak_rss_mb, cpu.others_share, cpu.own_cores)
    report = holder["report"]
    engine.rounds.append(rnd)
    engine.first_rows_s.append(_first_rows_seconds(report))
    engine.counts.append(_engine_counts(report))
    if engine.actors is not None:
        ex = report.get("executor") or {}
        op = ((ex.get("roots") or {}).get("rows") or {}).get("ops", [{}])[0]
        engine.executor = {"cluster": ex.get("cluster"), "replicas": op.get("replicas"),
                           "batch_size": op.get("batch_size"), "num_cpus_per_actor": op.get("num_cpus"),
                           "engine_threads": op.get("engine_threads"), "ray_version": ex.get("ray_version")}
    records = _records(sink)
    if engine.records is not None and records != engine.records:
        engine.unstable_rounds += 1  # a later round wrote other records than the first
    if engine.records is None:
        engine.records = records
        engine.statuses = dict(sorted(((report.get("sinks") or {}).get("data") or {})
                                      .get("discards_by_status", {}).items()))
        engine.statuses["ok"] = int(((report.get("sinks") or {}).get("data") or {}).get("total_ok", 0))
    shutil.rmtree(out, ignore_errors=True)


def _disturbed(engine: _Engine) -> bool:
    """Whether other processes took more than CLEAN_SHARE of the CPU during the engine's fastest round."""
    best = max(engine.rounds, key=lambda r: r.counts.output_tokens / r.seconds if r.seconds > 0 else 0.0)
    return best.others_share is not None and best.others_share > CLEAN_SHARE


def _selected(options: BenchOptions) -> tuple[str, ...]:
    if options.engines is None:
        return ENGINES
    unknown = [e for e in options.engines if e not in ENGINES]
    if unknown or not options.engines:
        raise OptionError("engines", ",".join(options.engines),
                          f"unknown for {NAME}: {', '.join(unknown) or '(none given)'}; known: {', '.join(ENGINES)}")
    return tuple(e for e in ENGINES if e in options.engines)


def _start_ray(log: Log) -> tuple[Any, bool, float]:
    """``(ray, started here, seconds)``: a local ``ray.init(num_cpus=2)``, or the Ray instance
    already initialised in this process."""
    from ...pipeline.ray_executor import import_ray

    ray = import_ray()  # OptionError with the pip command when Ray Data is missing
    if ray.is_initialized():
        return ray, False, 0.0
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=RAY_CPUS, include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=False)
    seconds = time.perf_counter() - t0
    log(f"[{NAME}] ray.init(num_cpus={RAY_CPUS}) in {seconds:.1f} s")
    return ray, True, seconds


# --------------------------------------------------------------------------- run

def run(options: BenchOptions, *, log: Callable[[str], None]) -> WorkloadResult:
    """Run the pipeline on Ray with 2 and 1 CPU actors and on the local executor (module docstring).

    ``options``: ``quick`` (256 sentences; else 1,024), ``num_prompts`` (sentences), ``output_len``
    (target tokens per segment and hop; default 48 for the built-in model, natural lengths for a
    user's ``model``), ``model`` (an HF MarianMT folder or a CTranslate2 folder with its HF
    folder: both directions), ``max_batch_size`` (rows per Ray batch, both Ray engines),
    ``repeats`` (rounds; the fastest counts), ``engines``, ``cache_dir``. ``device``: the actors
    are CPU actors whatever it says (a warning on ``cuda``); ``input_len`` and
    ``max_batch_tokens`` do not apply (warnings).

    Returns:
        A :class:`WorkloadResult`, headline ``output_tokens_per_s``, ``instructmill`` (2 actors) first.

    Raises:
        OptionError: Ray Data is not installed; unknown engines; a bad model; too few sentences.
    """
    t_start = time.perf_counter()
    engines = _selected(options)
    if any(ACTORS[e] for e in engines):
        from ...pipeline.ray_executor import import_ray

        import_ray()  # fail before any model is built
    warnings_: list[str] = []
    for name, why in (("input_len", "the sentences keep their real lengths"),
                      ("max_batch_tokens", "the Ray batch is set in rows (max_batch_size)")):
        if getattr(options, name) is not None:
            warnings_.append(f"{name}={getattr(options, name)} ignored: {why}")
    if options.device != "cpu":
        warnings_.append(f"device={options.device}: this workload measures CPU actors; it ran on the CPU (a "
                         "per-GPU figure: instructmill bench run backtranslation --device cuda)")
    if (os.cpu_count() or 1) < RAY_CPUS:
        warnings_.append(f"this machine has {os.cpu_count()} core(s): {RAY_CPUS} actors share them")
    for w in warnings_:
        log(f"[{NAME}] {w}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    n = options.num_prompts or (QUICK_SENTENCES if options.quick else FULL_SENTENCES)
    models = prepare_models(options, n, log)
    batch = ray_batch_size(options, n)
    log(f"[{NAME}] {n} sentences, {models.source_tokens} source tokens, output "
        f"{models.output_len or 'natural'} tokens per segment and hop; {models.source_lang}->{models.pivot}->"
        f"{models.source_lang}; Ray batches of {batch} rows"
        + (f" (built / converted in {models.build_seconds:.0f} s)" if models.build_seconds else " (cached)"))
    t_prepared = time.perf_counter()

    state = [_Engine(e, ACTORS[e]) for e in engines]
    rounds = max(1, options.repeats)
    ray, started, ray_seconds = (None, False, 0.0)
    cluster: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="instructmill-raybt-") as tmp:
        work = Path(tmp)
        ids = _write_source(work / "rows.jsonl", models.sentences)
        spec = pipeline_spec(models, str(work / "rows.jsonl"), str(work / "out" / "data.jsonl"))
        from ...pipeline import Pipeline, RayOptions

        _write_source(work / "warm.jsonl", models.sentences[:WARMUP_RECORDS])
        warm = Pipeline({**spec, "sources": {"rows": {"path": str(work / "warm.jsonl")}},
                         "sinks": [{"path": str(work / "warm" / "data.jsonl"), "format": "alpaca"}]}, base_dir=work)
        warm.run(progress=False, overwrite=True)  # untimed: imports, the models in the page cache
        try:
            if any(e.actors for e in state):
                ray, started, ray_seconds = _start_ray(log)
                cluster = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
                if cluster.get("CPU", 0) < RAY_CPUS:
                    warnings_.append(f"the Ray instance has {cluster.get('CPU', 0):g} CPUs: the 2-actor run starts "
                                     "only the actors that fit")
                # untimed: Ray Data's first run in a Ray instance also starts its own helper actors
                t0 = time.perf_counter()
                warm.run(progress=False, overwrite=True, executor="ray", ray=RayOptions(replicas=1))
                log(f"[{NAME}] warm-up Ray run ({WARMUP_RECORDS} records, 1 actor) in {time.perf_counter() - t0:.1f} s")
            t_rounds = time.perf_counter()
            budget = QUICK_ROUND_BUDGET_S if options.quick else FULL_ROUND_BUDGET_S
            most = max(rounds, QUICK_MAX_ROUNDS if options.quick else FULL_MAX_ROUNDS)
            for r in range(1, most + 1):
                for e in state:
                    _run_once(e, spec, work, f"r{r}", batch)
                    rnd = e.rounds[-1]
                    share = "-" if rnd.others_share is None else format(rnd.others_share, ".0%")
                    log(f"[{NAME}] round {r} {e.name}: {rnd.counts.output_tokens / rnd.seconds:,.1f} output tok/s "
                        f"in {rnd.seconds:.1f} s (other processes: {share} of the CPU)")
                if r >= rounds and (not any(_disturbed(e) for e in state)
                                    or time.perf_counter() - t_rounds > budget):
                    break
        finally:
            if started and ray is not None:
                ray.shutdown()
    results, detail = _results(models, options, state, n, batch, ids)
    detail["warnings"] = warnings_ + detail["warnings"]
    detail["ray_init_seconds"] = round(ray_seconds, 2) if started else None
    detail["ray_cluster"] = cluster or None
    detail["ray_started_here"] = started
    detail["wall_s"] = {"prepare": round(t_prepared - t_start, 1), "total": round(time.perf_counter() - t_start, 1),
                        "build_or_convert": models.build_seconds, "cold_cache": bool(models.build_seconds)}
    return WorkloadResult(workload=NAME, headline_metric="output_tokens_per_s", results=results, detail=detail,
                          options=options.as_dict())


def _results(models: RayBtModels, options: BenchOptions, state: list[_Engine], n: int, batch: int,
             ids: list[str]) -> tuple[list[EngineResult], dict[str, Any]]:
    warnings_: list[str] = []
    results: list[EngineResult] = []
    best: dict[str, dict[str, Any]] = {}
    for e in state:
        if e.actors is not None:
            settings: dict[str, Any] = {"executor": "ray", "actors": e.actors, "num_cpus_per_actor": 1.0,
                                        "ray_batch_rows": batch,
                                        "engine_threads_per_actor": "inter_threads=1, intra_threads=1 (set by the "
                                                                    "Ray executor for a 1-CPU actor)",
                                        "plan": e.executor}
            note = "seconds include starting the actors and loading an engine replica in each; not ray.init"
        else:
            settings = {"executor": "local", "engine_threads": "CTranslate2 defaults: inter_threads = cores "
                                                               f"({os.cpu_count()}), intra_threads = 1",
                        "stage_chunk_rows": 1024}
            note = "seconds include loading the engine"
        i_best = max(range(len(e.rounds)), key=lambda i: e.rounds[i].counts.output_tokens / e.rounds[i].seconds
                     if e.rounds[i].seconds > 0 else 0.0)
        counts = e.counts[i_best]
        best[e.name] = {"counts": counts, "first_rows_s": e.first_rows_s[i_best]}
        settings.update(compute_type="int8", beam_size=1, output_len=models.output_len,
                        engine_counts=counts, statuses=e.statuses, rounds_first_rows_s=e.first_rows_s)
        role = ROLE_INSTRUCTMILL if e.name == "instructmill" else ROLE_BASELINE
        result = engine_result(e.name, role, e.rounds, requests=n, input_tokens=counts["prompt_tokens"],
                               output_len=None, settings=settings, note=note)
        results.append(result)
        if models.output_len is not None:
            segs = sum(int(d.get("requests") or 0) for d in counts["directions"].values())
            if counts["output_tokens"] != segs * models.output_len:
                warnings_.append(f"{e.name}: {counts['output_tokens']} target tokens, expected {segs} segments x "
                                 f"{models.output_len}")
    tokens = {e.name: e.counts[0]["output_tokens"] for e in state if e.counts}
    if len(set(tokens.values())) > 1:
        warnings_.append(f"the engines translated different token counts ({tokens}): identical segments are "
                         "translated once per batch, and batches differ; each rate uses its own count")
    checks: dict[str, bool] = {}
    first = state[0].records if state else None
    if len(state) > 1:
        checks["identical_records_across_executors"] = all(e.records == first for e in state[1:]) \
            and not any(e.unstable_rounds for e in state)
    if first is not None:
        checks["every_record_once"] = all(sorted(r[1] for r in (e.records or [])) == sorted(ids) for e in state)
    by = {r.engine: r for r in results}
    two, one = by.get("instructmill"), by.get("ray_1_actor")
    scaling: dict[str, Any] | None = None
    if two and one and two.metrics["output_tokens_per_s"] and one.metrics["output_tokens_per_s"]:
        r2, r1 = two.metrics["output_tokens_per_s"], one.metrics["output_tokens_per_s"]
        scaling = {"actors": [2, 1], "output_tokens_per_s": {"2_actors": r2, "1_actor": r1},
                   "per_actor_output_tokens_per_s": {"2_actors": round(r2 / 2, 1), "1_actor": round(r1, 1)},
                   "speedup": round(r2 / r1, 3), "efficiency": round(r2 / (2 * r1), 3),
                   "definition": "efficiency = (2-actor tok/s) / (2 x 1-actor tok/s), wall times include actor "
                                 "start and engine loading"}
        # where the wall time went: the engines' own rate while busy (per replica), and the time to
        # the first written rows (actors' start, engine loading and the first batch)
        busy = {}
        for key, name, actors in (("2_actors", "instructmill", 2), ("1_actor", "ray_1_actor", 1)):
            c = best[name]["counts"]
            if c["busy_seconds"] > 0:
                busy[key] = round(c["output_tokens"] / c["busy_seconds"], 1)
        if len(busy) == 2:
            scaling["per_actor_output_tokens_per_busy_s"] = busy
            scaling["busy_rate_efficiency"] = round(busy["2_actors"] / busy["1_actor"], 3)
        scaling["first_rows_s"] = {"2_actors": best["instructmill"]["first_rows_s"],
                                   "1_actor": best["ray_1_actor"]["first_rows_s"]}
        disturbed = [r.engine for r in (two, one) if "disturbed" in r.note]
        if disturbed:
            scaling["note"] = (f"other processes used more than {CLEAN_SHARE:.0%} of the CPU during "
                               f"{', '.join(disturbed)}: the efficiency is understated")
    comparable = {**models.data, **{k: v for k, v in models.sentences_info.items() if k != "source_tokens_mean"},
                  "output_len": models.output_len, "hops": f"{models.source_lang}->{models.pivot}->"
                  f"{models.source_lang}", "decoding": "greedy (beam 1), int8", "model": models.model,
                  "ray_cpus": RAY_CPUS, "quick": options.quick}
    detail = {
        "checks": checks,
        "comparable": comparable,
        "unit": "output tok/s (target tokens of both hops)",
        "workload": f"sharegpt-en-{n}x{models.output_len or 'natural'}tok-roundtrip",
        "sentences": models.sentences_info,
        "model": models.model,
        "engines": [e.name for e in state],
        "scaling": scaling,
        "statuses": state[0].statuses if state else {},
        "seconds_note": "wall time of Pipeline.run: actors' start and engine loading included, ray.init excluded",
        "peak_rss_note": "this process and its children (the Ray processes started here, actors included)",
        "warnings": warnings_,
    }
    return results, detail
