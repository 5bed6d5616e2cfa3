"""ROUGE-L near-duplicate filter: instructmill's pruned filter vs a brute-force pairwise loop.

Workload: the 175 Self-Instruct seed instructions as the starting pool (or 175 synthetic ones
without ``../shared``) and ``--candidates`` synthetic instructions made like a generator's
output: recombinations of seed-instruction words (their natural Zipf-like frequencies, stop
words included) and edits of earlier candidates (drop / replace / insert a few words), so a
good share of them are near-duplicates. Seeded: the same arguments give the same texts.

Measured, in one process:

* ``instructmill`` -- :class:`instructmill.methods.rouge.RougeFilter` greedy sequential
  filtering of all candidates (tokenization included).
* ``brute_force`` -- the same greedy loop comparing each candidate with *every* pool entry
  (``rapidfuzz.process.cdist`` with ``LCSseq``, i.e. the LCS in C++, so this is a strong
  baseline, not a Python double loop) on the first ``--verify`` candidates; its kept set must
  equal instructmill's on that prefix (exactness), and its time is extrapolated to all
  candidates assuming the per-candidate cost stays the same (it grows with the pool, so the
  extrapolation understates it).

Target (issue): 20,000 candidates in < 10 s. Output: a table, PASS/FAIL, one JSON line per
engine appended to ``--results``.

Usage::

    PYTHONPATH=src python benchmarks/bench_rouge_filter.py [--candidates 20000] [--verify 2000]
        [--seed 0] [--results benchmarks/results.jsonl]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
if str(HERE.parent / "src") not in sys.path:  # run from a checkout without installing
    sys.path.insert(1, str(HERE.parent / "src"))

from _common import append_jsonl, environment, git_dirty, git_sha, utc_now, versions  # noqa: E402

SEEDS = Path(os.environ.get("INSTRUCTMILL_SHARED", "/work/shared")) / "data" / "seed_tasks.jsonl"
RESULTS = HERE / "results.jsonl"
TARGET_SECONDS = 10.0
THRESHOLD = 0.7


def seed_instructions() -> list[str]:
    if SEEDS.is_file():
        with open(SEEDS, encoding="utf-8") as fh:
            return [json.loads(line)["instruction"] for line in fh if line.strip()]
    rng = random.Random(1)
    words = ("write explain list give describe find the a of to and in for with about story poem "
             "email summary sentence word number list table reason example answer question").split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 20))) for _ in range(175)]


def make_candidates(seeds: list[str], count: int, seed: int) -> list[str]:
    """Synthetic generator output (see the module docstring)."""
    rng = random.Random(seed)
    bag = [w for s in seeds for w in s.split()]          # natural word frequencies
    extra = [f"topic{i}" for i in range(3000)]           # a long tail of rarer words
    out: list[str] = []
    for _ in range(count):
        r = rng.random()
        if r < 0.35 and out:
            words = rng.choice(out).split()
            for _ in range(rng.randint(0, 4)):
                op = rng.random()
                if op < 0.4 and len(words) > 2:
                    words.pop(rng.randrange(len(words)))
                elif op < 0.7:
                    words[rng.randrange(len(words))] = rng.choice(bag)
                else:
                    words.insert(rng.randrange(len(words) + 1), rng.choice(extra))
        elif r < 0.45:
            words = rng.choice(seeds).split()
            words[rng.randrange(len(words))] = rng.choice(extra)
        else:
            words = [rng.choice(extra) if rng.random() < 0.15 else rng.choice(bag)
                     for _ in range(rng.randint(4, 30))]
        out.append(" ".join(words))
    return out


def run_instructmill(seeds: list[str], candidates: list[str]) -> tuple[float, list[bool], dict]:
    from instructmill.methods.rouge import RougeFilter

    start = time.perf_counter()
    f = RougeFilter(THRESHOLD, seeds)
    kept = [m is None for m in f.filter(candidates)]
    return time.perf_counter() - start, kept, dict(f.stats)


def run_brute_force(seeds: list[str], candidates: list[str]) -> tuple[float, list[bool]]:
    import numpy as np
    from rapidfuzz.distance import LCSseq
    from rapidfuzz.process import cdist

    from instructmill.methods.rouge import tokenize

    start = time.perf_counter()
    vocab: dict[str, int] = {}

    def encode(text: str) -> str:
        return "".join(chr(0x10000 + vocab.setdefault(t, len(vocab))) for t in tokenize(text))

    pool = [encode(s) for s in seeds]
    kept = []
    for text in candidates:
        seq = encode(text)
        dup = False
        if seq and pool:
            lcs = cdist([seq], pool, scorer=LCSseq.similarity, dtype=np.int32)[0]
            lengths = np.fromiter((len(p) for p in pool), dtype=np.int64, count=len(pool))
            ok = lengths > 0
            dup = bool(np.any(ok & (2 * lcs * 10 >= 7 * (len(seq) + lengths))))
        kept.append(not dup)
        if not dup:
            pool.append(seq)
    return time.perf_counter() - start, kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", type=int, default=20000)
    parser.add_argument("--verify", type=int, default=2000,
                        help="candidates also run through the brute-force loop (exactness + baseline)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args(argv)
    assert THRESHOLD == 0.7  # the brute-force check below hard-codes 7/10

    seeds = seed_instructions()
    candidates = make_candidates(seeds, args.candidates, args.seed)
    seconds, kept, stats = run_instructmill(seeds, candidates)
    verify = min(args.verify, len(candidates))
    bf_seconds, bf_kept = run_brute_force(seeds, candidates[:verify])
    exact = bf_kept == kept[:verify]
    bf_extrapolated = bf_seconds / max(verify, 1) * len(candidates)

    print(f"pool: {len(seeds)} seeds; candidates: {len(candidates)}; kept: {sum(kept)}")
    print(f"{'engine':<14} {'candidates':>10} {'seconds':>9} {'cand/s':>9}")
    print(f"{'instructmill':<14} {len(candidates):>10} {seconds:>9.2f} {len(candidates) / seconds:>9.0f}")
    print(f"{'brute_force':<14} {verify:>10} {bf_seconds:>9.2f} {verify / max(bf_seconds, 1e-9):>9.0f}"
          f"   (x{len(candidates) / max(verify, 1):.0f} -> >= {bf_extrapolated:.0f} s)")
    print(f"exact (same kept set as brute force on the first {verify}): {'PASS' if exact else 'FAIL'}")
    print(f"target {len(candidates)} candidates < {TARGET_SECONDS:.0f} s: "
          f"{'PASS' if seconds < TARGET_SECONDS or len(candidates) < 20000 else 'FAIL'} ({seconds:.2f} s)")
    print(f"index stats: {stats}")

    common = {"benchmark": "rouge_filter", "time": utc_now(), "git_sha": git_sha(), "git_dirty": git_dirty(),
              "versions": versions(), "environment": environment(), "candidates": len(candidates),
              "seed": args.seed, "threshold": THRESHOLD}
    append_jsonl(args.results, [
        {**common, "engine": "instructmill", "seconds": round(seconds, 3), "kept": sum(kept), "stats": stats},
        {**common, "engine": "brute_force", "seconds": round(bf_seconds, 3), "verified": verify,
         "extrapolated_seconds": round(bf_extrapolated, 1), "exact": exact},
    ])
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
