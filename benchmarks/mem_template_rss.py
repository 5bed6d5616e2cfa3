"""Peak RSS of `instructmill template` at 20k and 200k rows: is a run's bookkeeping flat?

Usage: python benchmarks/mem_template_rss.py [--rows 20000 200000] [--resume]

Each size runs in a fresh process (peak RSS from wait4's rusage, KiB -> MB); with --resume the
run is first killed halfway (SIGKILL) and then resumed, and the resumed process is measured.
Prints one line per size and the ratio of the largest to the smallest.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time


def write_rows(path: str, n: int) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"r{i}", "instruction": f"Say {i} twice.", "input": "", "output": str(i)})
                     + "\n")


def peak_rss_mb(args: list[str]) -> tuple[float, int]:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss / 1024, proc.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[20_000, 200_000])
    ap.add_argument("--resume", action="store_true", help="measure a resume after a kill halfway")
    a = ap.parse_args()
    cli = [sys.executable, "-m", "instructmill", "template"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in a.rows:
            data = os.path.join(tmp, f"in{n}.jsonl")
            out = os.path.join(tmp, f"out{n}", "t.jsonl")
            write_rows(data, n)
            args = cli + [data, "-o", out, "-t", "alpaca"]
            if a.resume:
                first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                while not os.path.exists(out) or sum(1 for _ in open(out, "rb")) < n // 2:
                    time.sleep(0.05)
                first.send_signal(signal.SIGKILL)
                first.wait()
                args = args + ["--resume"]
            rss, rc = peak_rss_mb(args)
            if rc != 0:
                print(f"run of {n} rows failed (exit {rc})", file=sys.stderr)
                return 1
            results[n] = rss
            print(f"{n:>9,} rows{' (resumed after a kill halfway)' if a.resume else ''}: peak RSS {rss:.1f} MB")
    low, high = min(results.values()), max(results.values())
    print(f"largest / smallest: {high / low:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
