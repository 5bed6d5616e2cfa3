"""Calibrate the meaning gate (instructmill.methods.meaning) on the labelled pairs.

    PYTHONPATH=src python benchmarks/meaning_gate.py [benchmarks/data/meaning_pairs.jsonl]

Reads source / paraphrase pairs labelled ``keeps`` / ``drifts`` (see ``meaning_pairs_build.py``),
scores each with the cosine of its all-MiniLM-L6-v2 embeddings, and prints (markdown):

* for a range of low bounds t (a pair is flagged ``meaning_drift`` when cosine < t): how many
  pairs are flagged, the **precision** and **recall** of the flag for the ``drifts`` label, the
  share of ``keeps`` pairs thrown away, and the **precision of what is kept** (share of pairs at
  or above t labelled ``keeps``);
* the chosen low bound, by the rule "the highest t on a 0.01 grid whose flag precision is at
  least ``--min-precision``" (a flagged pair must be a real drift at least that often), and a
  5-fold cross-validated estimate of that rule (t chosen on 4 folds, counted on the 5th; folds
  stratified by label, fixed seed) so the figure is not only fit to the sample;
* the pairs above the high bound (``too_similar``) and their labels;
* speed: pairs scored per second on this CPU (model loaded, best of 3 rounds), and per CPU-second
  (process time: a figure that a busy machine disturbs less than wall time).

All of it for both units of comparison (``--unit text`` / ``--unit sentence``): whole texts, and
the lowest cosine of aligned sentences.

Identical pairs (paraphrase == source) are left out of the table: back-translation gives them
the status ``unchanged`` before the gate sees them.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from instructmill.methods.meaning import MAX_SIMILARITY, MIN_SIMILARITY, UNITS, encoder, similarities

GRID = np.round(np.arange(0.50, 0.995, 0.01), 2)
SHOWN = (0.70, 0.75, 0.80, 0.85, 0.88, 0.89, 0.90, 0.91, 0.92, 0.94, 0.96, 0.97, 0.98, 0.99)


def counts(sims: np.ndarray, drifts: np.ndarray, t: float) -> dict[str, float]:
    """Confusion counts of the flag ``sims < t`` against the ``drifts`` labels, with the rates."""
    flagged = sims < t
    tp = int(np.sum(flagged & drifts))
    fp = int(np.sum(flagged & ~drifts))
    fn = int(np.sum(~flagged & drifts))
    tn = int(np.sum(~flagged & ~drifts))
    return {"t": t, "flagged": tp + fp, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "precision": tp / (tp + fp) if tp + fp else float("nan"),
            "recall": tp / (tp + fn) if tp + fn else float("nan"),
            "keeps_lost": fp / (fp + tn) if fp + tn else float("nan"),
            "kept_precision": tn / (tn + fn) if tn + fn else float("nan")}


def choose(sims: np.ndarray, drifts: np.ndarray, min_precision: float) -> float:
    """The highest grid threshold whose flag precision is >= ``min_precision`` (the lowest grid
    value when none is)."""
    ok = [t for t in GRID if counts(sims, drifts, t)["precision"] >= min_precision]
    return float(max(ok)) if ok else float(GRID[0])


def cross_validate(sims: np.ndarray, drifts: np.ndarray, min_precision: float, folds: int = 5,
                   seed: int = 0) -> tuple[dict[str, float], list[float]]:
    """Pooled held-out counts of :func:`choose` over stratified folds, and the chosen thresholds."""
    rng = random.Random(seed)
    fold_of = np.zeros(len(sims), dtype=int)
    for label in (True, False):
        idx = [i for i in range(len(sims)) if drifts[i] == label]
        rng.shuffle(idx)
        for k, i in enumerate(idx):
            fold_of[i] = k % folds
    total = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    chosen = []
    for k in range(folds):
        train, test = fold_of != k, fold_of == k
        t = choose(sims[train], drifts[train], min_precision)
        chosen.append(t)
        c = counts(sims[test], drifts[test], t)
        for key in total:
            total[key] += c[key]
    tp, fp, fn, tn = total["tp"], total["fp"], total["fn"], total["tn"]
    return ({"precision": tp / (tp + fp) if tp + fp else float("nan"), "recall": tp / (tp + fn),
             "keeps_lost": fp / (fp + tn), "kept_precision": tn / (tn + fn) if tn + fn else float("nan"),
             **total}, chosen)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="?", default=str(Path(__file__).parent / "data" / "meaning_pairs.jsonl"))
    parser.add_argument("--min-precision", type=float, default=0.75,
                        help="least share of flagged pairs that must really drift (default 0.75)")
    parser.add_argument("--unit", dest="units", action="append", choices=UNITS,
                        help="unit of comparison (repeat; default: both)")
    args = parser.parse_args(argv)
    args.units = args.units or list(UNITS)
    rows = [json.loads(line) for line in Path(args.pairs).open(encoding="utf-8")]
    sources = [r["source_text"] for r in rows]
    paraphrases = [r["paraphrase"] for r in rows]

    t0 = time.perf_counter()
    encoder()
    load_s = time.perf_counter() - t0
    differ = np.array([s.strip() != p.strip() for s, p in zip(sources, paraphrases)])
    drifts = np.array([r["label"] == "drifts" for r in rows])[differ]
    origins: dict[tuple[str, str], int] = {}
    for r in rows:
        origins[(r["origin"], r["label"])] = origins.get((r["origin"], r["label"]), 0) + 1
    print(f"pairs: {len(rows)} ({', '.join(f'{o}/{lab}: {n}' for (o, lab), n in sorted(origins.items()))}); "
          f"identical: {int((~differ).sum())}; scored: {int(differ.sum())} "
          f"({int(drifts.sum())} drifts, {int((~drifts).sum())} keeps)")
    for unit in args.units:
        rounds, cpu = [], []
        for _ in range(3):
            t0, c0 = time.perf_counter(), time.process_time()
            sims_all = similarities(sources, paraphrases, unit=unit)
            rounds.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        report(unit, sims_all[differ], drifts, args.min_precision)
        print(f"speed: {len(rows) / min(rounds):.0f} pairs/s (best of 3 rounds: {min(rounds):.2f} s for "
              f"{len(rows)} pairs, {min(cpu):.2f} CPU-s = {len(rows) / min(cpu):.0f} pairs per CPU-second, "
              f"torch threads {torch.get_num_threads()}; model load {load_s:.1f} s; load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    return 0


def report(unit: str, sims: np.ndarray, drifts: np.ndarray, min_precision: float) -> None:
    """Print the threshold table, the chosen bounds and the cross-validated estimate for one unit."""
    keep_s, drift_s = sims[~drifts], sims[drifts]
    auc = float(np.mean((keep_s[:, None] > drift_s[None, :]) + 0.5 * (keep_s[:, None] == drift_s[None, :])))
    print(f"\n### unit={unit}\n\ncosine median: keeps {np.median(keep_s):.3f}, drifts {np.median(drift_s):.3f}; "
          f"ROC AUC (keeps above drifts) {auc:.3f}\n")
    print("| low bound t | flagged | precision (drifts) | recall (drifts) | keeps lost | kept precision |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for t in SHOWN:
        c = counts(sims, drifts, t)
        print(f"| {t:.2f} | {c['flagged']} | {c['precision']:.2f} ({c['tp']}/{c['flagged']}) | "
              f"{c['recall']:.2f} ({c['tp']}/{c['tp'] + c['fn']}) | {c['keeps_lost']:.2f} | "
              f"{c['kept_precision']:.2f} ({c['tn']}/{c['tn'] + c['fn']}) |")
    print(f"| (no gate) | 0 | - | 0.00 | 0.00 | {float((~drifts).mean()):.2f} |")
    chosen = choose(sims, drifts, min_precision)
    c = counts(sims, drifts, chosen)
    cv, fold_ts = cross_validate(sims, drifts, min_precision)
    print(f"\nchosen low bound (highest t with precision >= {min_precision}): {chosen:.2f} -> "
          f"precision {c['precision']:.2f}, recall {c['recall']:.2f}, keeps lost {c['keeps_lost']:.2f}, "
          f"kept precision {c['kept_precision']:.2f} (default in meaning.py: {MIN_SIMILARITY[unit]})")
    print(f"5-fold cross-validated (t per fold {', '.join(f'{t:.2f}' for t in fold_ts)}): "
          f"precision {cv['precision']:.2f}, recall {cv['recall']:.2f}, keeps lost {cv['keeps_lost']:.2f}, "
          f"kept precision {cv['kept_precision']:.2f}")
    for high in (0.99, 0.995, 0.999):
        above = sims > high
        print(f"above {high}: {int(above.sum())} pairs ({int((above & ~drifts).sum())} keeps, "
              f"{int((above & drifts).sum())} drifts)")
    print(f"default high bound (too_similar): {MAX_SIMILARITY}")


if __name__ == "__main__":
    sys.exit(main())
