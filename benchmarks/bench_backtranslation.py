"""Back-translation throughput benchmark: a thin wrapper of the suite.

``python benchmarks/bench_backtranslation.py ARGS`` == ``instructmill bench run backtranslation ARGS``
(instructmill's translation hop vs raw CTranslate2 at its best settings, HF batched ``generate`` and
the per-sentence ``pipeline("translation")`` approach, on real ShareGPT sentences and an
opus-mt-en-de-shaped MarianMT model; see ``src/instructmill/bench/workloads/backtranslation.py`` and
``benchmarks/README.md``). Examples::

    python benchmarks/bench_backtranslation.py --quick
    python benchmarks/bench_backtranslation.py --engines instructmill,ct2_raw_best --no-save
    python benchmarks/bench_backtranslation.py --model path/to/opus-mt-en-de --num-prompts 256
    python benchmarks/bench_backtranslation.py --max-batch-size 4     # an injected slowdown

The old standalone script's results stay in ``benchmarks/results.jsonl`` (legacy format).
"""
from __future__ import annotations

import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
if SRC.is_dir() and str(SRC) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(SRC))

from instructmill.bench.cli import script_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(script_main("backtranslation"))
