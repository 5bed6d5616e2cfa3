"""Parse rate of Self-Instruct (Alpaca style) with and without structured output, one engine, one run.

Usage: python benchmarks/structured_parse_rate.py [--model embedded] [--backend vllm] [--rounds 2]
    [--prompts-per-round 8] [--seeds ../shared/data/seed_tasks.jsonl]

Both runs use the same engine instance, seeds, prompts per round and sampling; "structured" asks for
JSON under the tasks schema (vLLM structured outputs), "free text" continues Alpaca's numbered list.
Prints, per mode: samples, samples parsed into >= 1 task, the parse rate, tasks read and tasks kept by
Self-Instruct's filters; then one JSON line with the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--backend", default="vllm")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--prompts-per-round", type=int, default=8)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--seeds", default=os.path.join(here, "..", "..", "shared", "data", "seed_tasks.jsonl"))
    a = ap.parse_args()

    from instructmill import LLM, SamplingParams
    from instructmill.io import read_records, to_example
    from instructmill.methods.self_instruct import SelfInstruct, SelfInstructOptions

    seeds = [to_example(r) for r in read_records(a.seeds)]
    llm = LLM(a.model, backend=a.backend, max_model_len=2048, dtype="float32", kv_cache_space_gib=1)
    figures = {}
    try:
        for mode, structured in (("structured", True), ("free text", False)):
            options = SelfInstructOptions(prompt_style="alpaca", structured=structured, instances="none",
                                          prompts_per_round=a.prompts_per_round, max_rounds=a.rounds,
                                          sampling=SamplingParams(n=1, temperature=0.7, top_p=0.9, max_tokens=384,
                                                                  repetition_penalty=1.1))
            method = SelfInstruct(llm.engine, options)
            started = time.perf_counter()
            records = [rec for batch in method.run(seeds, 10_000) for rec in batch]
            s = method.summary
            rate = s["parse_ok"] / s["parse_attempts"] if s["parse_attempts"] else 0.0
            figures[mode] = {"samples": s["parse_attempts"], "parsed": s["parse_ok"], "parse_rate": round(rate, 3),
                             "tasks_read": s["parsed"], "kept": s["kept"], "records": len(records),
                             "seconds": round(time.perf_counter() - started, 1)}
            print(f"{mode:>10}: {s['parse_ok']}/{s['parse_attempts']} samples parsed ({100 * rate:.1f}%), "
                  f"{s['parsed']} tasks read, {s['kept']} kept by the filters", flush=True)
    finally:
        llm.close()
    print(json.dumps({"model": a.model, "backend": a.backend, **figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
