"""LLM sampling throughput benchmark: a thin wrapper of the suite.

``python benchmarks/bench_llm.py ARGS`` == ``instructmill bench run llm ARGS``: instructmill's LLM
path (vLLM) against raw ``vllm.LLM.generate``, CTranslate2 ``generate_batch`` and transformers
batched ``generate`` on ShareGPT prompts with their real lengths (or fixed ``--input-len``), a fixed
``--output-len`` for every engine (see ``src/instructmill/bench/workloads/llm.py`` and
``benchmarks/README.md``). Examples::

    python benchmarks/bench_llm.py --quick                            # 32 prompts x 32 tokens
    python benchmarks/bench_llm.py                                    # 128 prompts x 64 tokens
    python benchmarks/bench_llm.py --input-len 256 --output-len 128 --num-prompts 64 --no-save
    python benchmarks/bench_llm.py --model path/to/hf-model --engines instructmill,vllm_raw
    python benchmarks/bench_llm.py --quick --max-batch-size 2         # an injected slowdown

The old standalone script's results stay in ``benchmarks/results.jsonl`` (legacy format).
"""
from __future__ import annotations

import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
if SRC.is_dir() and str(SRC) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(SRC))

from instructmill.bench.cli import script_main  # noqa: E402

if __name__ == "__main__":  # vLLM starts its engine core in a child process: keep this guard
    sys.exit(script_main("llm"))
