"""The benchmark workloads, by name, imported only when run.

Each module ``instructmill.bench.workloads.<name>`` exposes
``run(options: BenchOptions, *, log: Callable[[str], None]) -> WorkloadResult`` (see
:mod:`instructmill.bench.core`). The registry holds import strings, not modules, so listing the
workloads (``instructmill bench list``) imports no engine.
"""
from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any

from ...errors import OptionError
from ..env import REPO_ROOT

__all__ = ["WORKLOADS", "DESCRIPTIONS", "load_workload", "check_names", "shared_data_path", "seed_tasks"]

#: workload name -> module; the order is ``bench all``'s order (cheapest first).
WORKLOADS: dict[str, str] = {
    "template": "instructmill.bench.workloads.template",
    "rouge_filter": "instructmill.bench.workloads.rouge_filter",
    "backtranslation": "instructmill.bench.workloads.backtranslation",
    "llm": "instructmill.bench.workloads.llm",
    "pipeline": "instructmill.bench.workloads.pipeline",
    "ray_backtranslation": "instructmill.bench.workloads.ray_backtranslation",
}

#: one line per workload, for ``instructmill bench list`` (no import needed).
DESCRIPTIONS: dict[str, str] = {
    "template": "jinja2 template filling (built-in 'translate') vs a plain jinja2 loop and str.format; rows/s",
    "rouge_filter": "ROUGE-L near-duplicate filter vs the naive Self-Instruct pairwise rouge_score loop; "
                    "candidates/s",
    "backtranslation": "one translation hop, opus-mt-en-de-shaped MarianMT on CTranslate2, vs raw CTranslate2, "
                       "HF batched generate, per-sentence pipeline; output tok/s",
    "llm": "LLM sampling on ShareGPT prompts (vLLM path) vs raw LLM.generate, CTranslate2, HF batched; "
           "output tok/s",
    "pipeline": "a streamed multi-stage pipeline vs its stages run one after another; output tok/s",
    "ray_backtranslation": "a back-translation pipeline on Ray with 2 CPU actors vs 1 actor and the local "
                           "executor; scaling efficiency; output tok/s (bench all: only where ray is installed)",
}


def check_names(names: list[str] | tuple[str, ...]) -> list[str]:
    """``names`` if every one is a known workload, else :class:`OptionError` listing the known names."""
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise OptionError("workload", ", ".join(unknown),
                          f"unknown; known workloads: {', '.join(WORKLOADS)}")
    return list(names)


def load_workload(name: str) -> ModuleType:
    """Import the module of workload ``name`` (it has a ``run(options, *, log)`` function).

    Raises:
        OptionError: ``name`` is not a known workload (the message lists the known names).
        ImportError: the workload's module (or an engine it needs at import time) is missing.
    """
    check_names([name])
    module = importlib.import_module(WORKLOADS[name])
    if not callable(getattr(module, "run", None)):
        raise ImportError(f"{WORKLOADS[name]} has no run(options, *, log) function")
    return module


def shared_data_path(name: str) -> Path:
    """``$INSTRUCTMILL_SHARED/data/<name>`` (default: ``../shared/data`` next to the checkout)."""
    root = os.environ.get("INSTRUCTMILL_SHARED")
    return (Path(root) if root else REPO_ROOT.parent / "shared") / "data" / name


def seed_tasks() -> list[dict[str, Any]] | None:
    """The 175 Self-Instruct seed tasks (``seed_tasks.jsonl``: ``instruction``, ``instances``...), or
    ``None`` when the shared data is not there (workloads then use synthetic text and say so)."""
    path = shared_data_path("seed_tasks.jsonl")
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
