"""ROUGE-L near-duplicate filter benchmark: a thin wrapper of the suite.

``python benchmarks/bench_rouge_filter.py ARGS`` == ``instructmill bench run rouge_filter ARGS``
(instructmill's ``RougeFilter`` vs the naive Self-Instruct ``rouge_score`` loop and a rapidfuzz
brute force, on a verified prefix; see ``src/instructmill/bench/workloads/rouge_filter.py`` and
``benchmarks/README.md``). Examples::

    python benchmarks/bench_rouge_filter.py --quick
    python benchmarks/bench_rouge_filter.py --num-prompts 20000 --no-save
"""
from __future__ import annotations

import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
if SRC.is_dir() and str(SRC) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(SRC))

from instructmill.bench.cli import script_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(script_main("rouge_filter"))
