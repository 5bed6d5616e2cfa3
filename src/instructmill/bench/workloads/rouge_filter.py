"""ROUGE-L near-duplicate filter: instructmill's :class:`~instructmill.methods.rouge.RougeFilter` vs the
naive Self-Instruct filter.

Workload: the 175 Self-Instruct seed instructions as the starting pool (175 synthetic ones without
the shared data) and N synthetic candidate instructions made like a generator's output:
recombinations of seed-instruction words (their natural Zipf-like frequencies, stop words
included), a long tail of rarer words, and edits of earlier candidates (drop / replace / insert a
few words), so a good share are near-duplicates. Seeded (``--seed``): the same options give the
same texts. Quick: 20,000 candidates (the Self-Instruct filter issue's target size); full: 50,000;
``--num-prompts`` sets the count. Greedy sequential filtering at ROUGE-L 0.7 (Wang et al., 2022,
Sec. 2.3): a candidate is kept when it reaches 0.7 with no pool entry, and then joins the pool.

Engines (same candidates, same process):

* ``instructmill``: ``RougeFilter(0.7, seeds).filter(candidates)`` on every candidate
  (tokenization included); ``max(--repeats, 3)`` rounds, the fastest counts.
* ``naive_rouge_score``: the original Self-Instruct code's filter (``yizhongw/self-instruct``,
  ``self_instruct/bootstrap_instructions.py``): for each candidate,
  ``rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False).score(candidate, entry)`` against
  *every* pool entry (seeds + kept so far), then the maximum. The original spreads those calls
  over ``multiprocessing.Pool(4)``; here they run in one process (instructmill's filter uses one
  core too). Decision ``max >= 0.7`` (instructmill's rule, tolerance 1e-9 for float ties; the
  original's ``> 0.7`` differs only on exact ties, counted in ``detail["naive_ties_at_threshold"]``).
* ``brute_force_lcs``: the same greedy loop with a strong implementation: every pool entry compared
  at once with ``rapidfuzz.process.cdist`` (``LCSseq``, C++) on token ids, exact integer test.

The two baselines run on a **verified prefix** (quick: 400 and 5,000 candidates; full: 2,000 and
20,000): their kept sets must equal instructmill's there (``detail["checks"]``), and their time is
**extrapolated** to all candidates by pair count: they compare each candidate with every pool
entry, so their cost is proportional to the number of (candidate, pool entry) pairs, which
instructmill's kept list gives for the whole run. The engines' ``note`` says so. Checked on the
project's 2-core machine: ``rouge_score`` costs 45-70 us per pair at every prefix length tried
(400, 1,000); the rapidfuzz brute force 110-140 ns per pair from 2,000 to 20,000 candidates (all
20,000 took 13.2 s, against 16 s extrapolated from the first 2,000). Headline:
candidates/s (``requests_per_s``); ``input_tokens`` counts the candidates' ROUGE tokens.
There is no batching in this path: ``--max-batch-size`` / ``--max-batch-tokens`` do not apply.
"""
from __future__ import annotations

import hashlib
import json
import random
from typing import Any, Callable

from ..core import ROLE_BASELINE, ROLE_INSTRUCTMILL, BenchOptions, EngineResult, WorkloadResult, measure, throughput
from . import seed_tasks

__all__ = ["run", "make_candidates", "seed_instructions", "naive_filter", "brute_force_filter", "THRESHOLD"]

THRESHOLD = 0.7
QUICK = {"candidates": 20_000, "naive_rouge_score": 400, "brute_force_lcs": 5_000}
FULL = {"candidates": 50_000, "naive_rouge_score": 2_000, "brute_force_lcs": 20_000}
ENGINES = ("instructmill", "naive_rouge_score", "brute_force_lcs")
MIN_ROUNDS = 3
_TIE = 1e-9


def seed_instructions() -> tuple[list[str], str]:
    """The 175 seed instructions and their source name (synthetic ones without the shared data)."""
    tasks = seed_tasks()
    if tasks:
        return [t["instruction"] for t in tasks], "seed_tasks.jsonl"
    rng = random.Random(1)
    words = ("write explain list give describe find the a of to and in for with about story poem "
             "email summary sentence word number list table reason example answer question").split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 20))) for _ in range(175)], "synthetic seeds"


def make_candidates(seeds: list[str], count: int, seed: int) -> list[str]:
    """``count`` synthetic generator outputs (see the module docstring); deterministic for ``seed``."""
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


def naive_filter(seeds: list[str], candidates: list[str], threshold: float = THRESHOLD) -> tuple[list[bool], int]:
    """The Self-Instruct filter as originally written: returns (kept flags, candidates whose best score
    was within 1e-9 of ``threshold``)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    machine: list[str] = []
    kept: list[bool] = []
    ties = 0
    for inst in candidates:
        scores = [scorer.score(inst, e)["rougeL"].fmeasure for e in seeds + machine]
        best = max(scores) if scores else 0.0
        if abs(best - threshold) <= _TIE:
            ties += 1
        if best >= threshold - _TIE:
            kept.append(False)
            continue
        machine.append(inst)
        kept.append(True)
    return kept, ties


def brute_force_filter(seeds: list[str], candidates: list[str], threshold: float = THRESHOLD) -> list[bool]:
    """The greedy loop with every pool entry compared at once (rapidfuzz ``cdist`` of ``LCSseq`` on token ids,
    one code point per token); exact test ``2 * LCS * den >= num * (m + n)``."""
    from fractions import Fraction

    import numpy as np
    from rapidfuzz.distance import LCSseq
    from rapidfuzz.process import cdist

    from ...methods.rouge import tokenize

    exact = Fraction(repr(float(threshold)))
    num, den = exact.numerator, exact.denominator
    vocab: dict[str, int] = {}

    def encode(text: str) -> str:
        return "".join(chr(0x10000 + vocab.setdefault(t, len(vocab))) for t in tokenize(text))

    pool = [encode(s) for s in seeds]
    lengths = [len(p) for p in pool]
    kept = []
    for text in candidates:
        seq = encode(text)
        dup = False
        if seq and pool:
            lcs = cdist([seq], pool, scorer=LCSseq.similarity, dtype=np.int64)[0]
            n = np.asarray(lengths, dtype=np.int64)
            dup = bool(np.any((n > 0) & (2 * lcs * den >= num * (len(seq) + n))))
        kept.append(not dup)
        if not dup:
            pool.append(seq)
            lengths.append(len(seq))
    return kept


def _pairs(pool0: int, kept: list[bool], upto: int) -> int:
    """(candidate, pool entry) pairs a compare-with-everything filter makes on the first ``upto`` candidates."""
    total, pool = 0, pool0
    for flag in kept[:upto]:
        total += pool
        pool += flag
    return total


def run(options: BenchOptions, *, log: Callable[[str], None]) -> WorkloadResult:
    """Measure the ROUGE-L filter (see the module docstring); headline ``requests_per_s`` (candidates/s).

    Raises:
        OptionError: ``options.engines`` names no engine of this workload.
    """
    from ...errors import OptionError
    from ...methods.rouge import RougeFilter, tokenize

    engines = [e for e in ENGINES if options.wants(e)]
    if not engines:
        raise OptionError("engines", ",".join(options.engines or ()), f"rouge_filter has: {', '.join(ENGINES)}")
    for name in ("max_batch_size", "max_batch_tokens", "model", "input_len", "output_len"):
        if getattr(options, name) is not None:
            log(f"rouge_filter: --{name.replace('_', '-')} does not apply to the ROUGE-L filter; ignored")
    sizes = QUICK if options.quick else FULL
    n = options.num_prompts or sizes["candidates"]
    seeds, source = seed_instructions()
    candidates = make_candidates(seeds, n, options.seed)
    digest = hashlib.sha256(json.dumps([seeds, candidates]).encode()).hexdigest()
    tokens = sum(len(tokenize(c)) for c in candidates)
    log(f"rouge_filter: pool {len(seeds)} ({source}), {n:,} candidates ({tokens:,} tokens), "
        f"threshold {THRESHOLD}, engines {', '.join(engines)}")

    # instructmill runs on everything whatever --engines says: its kept list verifies the baselines and
    # gives the pair counts of the extrapolation.
    rounds: list[float] = []
    peak = 0.0
    kept: list[bool] = []
    stats: dict[str, Any] = {}
    for r in range(max(options.repeats, MIN_ROUNDS) if "instructmill" in engines else 1):
        with measure() as m:
            f = RougeFilter(THRESHOLD, seeds)
            kept = [match is None for match in f.filter(candidates)]
        rounds.append(round(m.seconds, 4))
        peak = max(peak, m.peak_rss_mb)
        stats = dict(f.stats)
        log(f"rouge_filter: instructmill round {r + 1}: {m.seconds:.2f} s, {n / m.seconds:,.0f} candidates/s, "
            f"kept {sum(kept):,}")
    total_pairs = _pairs(len(seeds), kept, n)
    results: list[EngineResult] = []
    if "instructmill" in engines:
        results.append(EngineResult(
            "instructmill", ROLE_INSTRUCTMILL,
            throughput(requests=n, input_tokens=tokens, output_tokens=None, seconds=min(rounds), peak_rss_mb=peak,
                       busy_fraction=None, kept=sum(kept)),
            {"threshold": THRESHOLD, "rounds_s": rounds, "index_stats": stats,
             "batching": "none (sequential greedy filter; batch budgets do not apply)"}))

    checks: dict[str, bool] = {}
    ties = None
    for name in engines:
        if name == "instructmill":
            continue
        k = min(sizes[name], n)
        prefix = candidates[:k]
        with measure() as m:
            if name == "naive_rouge_score":
                got, ties = naive_filter(seeds, prefix)
            else:
                got = brute_force_filter(seeds, prefix)
        pairs = _pairs(len(seeds), kept, k)
        seconds = m.seconds * total_pairs / max(pairs, 1)
        equal = got == kept[:k]
        checks[f"kept_equal[{name}]"] = equal
        log(f"rouge_filter: {name}: {k:,} candidates ({pairs:,} pairs) in {m.seconds:.2f} s -> "
            f"{seconds:,.0f} s extrapolated to {n:,} ({total_pairs:,} pairs); kept set "
            f"{'equal' if equal else 'DIFFERENT'}")
        prefix_tokens = sum(len(tokenize(c)) for c in prefix)
        metrics = throughput(requests=n, input_tokens=tokens, output_tokens=None, seconds=seconds,
                             peak_rss_mb=m.peak_rss_mb, busy_fraction=None, extrapolated=k < n,
                             measured_requests=k, measured_input_tokens=prefix_tokens,
                             measured_seconds=round(m.seconds, 4), measured_pairs=pairs, total_pairs=total_pairs,
                             kept_equal=equal)
        settings: dict[str, Any] = {"threshold": THRESHOLD, "verified_prefix": k}
        if name == "naive_rouge_score":
            settings.update(scorer='rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)', processes=1,
                            decision=">= 0.7 (original: > 0.7)")
        else:
            settings.update(scorer="rapidfuzz.process.cdist(LCSseq) on token ids")
        note = (f"measured on the first {k:,} of {n:,} candidates ({pairs:,} pairs, {m.seconds:.1f} s), "
                f"extrapolated to all by pair count ({total_pairs:,} pairs)" if k < n else "")
        if not equal:
            note = (note + "; " if note else "") + "KEPT SET DIFFERS from instructmill's"
        results.append(EngineResult(name, ROLE_BASELINE, metrics, settings, note))

    detail: dict[str, Any] = {
        "unit": "candidates/s",
        "comparable": {"pool": source, "pool_size": len(seeds), "candidates": n, "dataset_sha256": digest,
                       "threshold": THRESHOLD, "quick": options.quick},
        "candidates": n,
        "kept": sum(kept),
        "candidate_tokens": tokens,
        "checks": checks,
    }
    if ties is not None:
        detail["naive_ties_at_threshold"] = ties
    if options.device != "cpu":
        detail["device_note"] = "CPU-only workload (runs on the CPU whatever --device)"
    return WorkloadResult("rouge_filter", "requests_per_s", results, detail, options.as_dict())
