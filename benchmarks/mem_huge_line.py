"""Peak memory of reading (and template-filling) one huge JSONL line.

Writes a JSONL file whose middle record holds one ``text`` of N characters (default
20,000,000, ASCII) between two small records, then in a fresh subprocess per stage measures
the peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, KiB on Linux)
minus the resident size just before the stage starts (``/proc/self/statm``). Stages:

* ``read``: ``list(read_records(path))`` with the three records kept alive, so the figure
  includes the record itself (one copy of the text is the floor: N bytes);
* ``template``: ``instructmill template PATH -o OUT -t alpaca`` run in-process through the
  CLI (read, render, write).

Usage: ``python benchmarks/mem_huge_line.py [--chars N] [--stage read|template|all]``.
Prints one JSON object per stage: ``{"stage", "chars", "peak_mib", "baseline_mib",
"delta_mib", "ratio"}`` where ``ratio`` = delta bytes / N (the brief's bound is 3).
It is a measurement, not a timed test; tests/test_limits.py runs it with a smaller N.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * _PAGE


def _child(stage: str, path: str, out_dir: str) -> None:
    """Run one stage in this (fresh) process and print its memory figures as JSON."""
    # Import everything the stage uses first, so imports do not count as the line's memory.
    from instructmill.cli import cli
    from instructmill.cli.template import template  # noqa: F401
    from instructmill.io.readers import read_records
    from instructmill.methods.template import TemplateFiller, load_template  # noqa: F401
    import click  # noqa: F401
    import tqdm  # noqa: F401

    baseline = _rss_bytes()
    # ru_maxrss is the peak over the whole process; the imports above set a floor we measure
    # against, so the figure is max(peak) - baseline only when the stage raises the peak.
    if stage == "read":
        records = list(read_records(path))
        assert len(records) == 3, len(records)
    else:
        out = os.path.join(out_dir, "out.jsonl")
        cli.main(["template", path, "-o", out, "-t", "alpaca", "--overwrite"],
                 prog_name="instructmill", standalone_mode=False)
        with open(out, encoding="utf-8") as fh:
            assert sum(1 for _ in fh) == 3
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak": peak, "baseline": baseline}))


def measure(stage: str, chars: int) -> dict:
    """Peak-RSS figures of ``stage`` over a file with one ``chars``-character line."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "huge.jsonl")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(json.dumps({"instruction": "first", "output": "1"}) + "\n")
            fh.write('{"instruction": "Summarize.", "input": "')
            block = "lorem ipsum " * 100_000
            left = chars
            while left > 0:
                piece = block[:left]
                fh.write(piece)
                left -= len(piece)
            fh.write('", "output": "x"}\n')
            fh.write(json.dumps({"instruction": "last", "output": "3"}) + "\n")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"),
             env.get("PYTHONPATH", "")])
        proc = subprocess.run([sys.executable, __file__, "--child", stage, path, tmp],
                              capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"stage {stage} failed: {proc.stderr.strip()[-2000:]}")
        figures = json.loads(proc.stdout.strip().splitlines()[-1])
    delta = max(figures["peak"] - figures["baseline"], 0)
    return {"stage": stage, "chars": chars, "peak_mib": round(figures["peak"] / 2**20, 1),
            "baseline_mib": round(figures["baseline"] / 2**20, 1),
            "delta_mib": round(delta / 2**20, 1), "ratio": round(delta / chars, 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chars", type=int, default=20_000_000)
    parser.add_argument("--stage", choices=("read", "template", "all"), default="all")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(*args.child)
        return
    stages = ("read", "template") if args.stage == "all" else (args.stage,)
    for stage in stages:
        print(json.dumps(measure(stage, args.chars)), flush=True)


if __name__ == "__main__":
    main()
