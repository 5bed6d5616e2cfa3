"""The shapes every benchmark workload shares: options in, one :class:`WorkloadResult` out.

A workload (``instructmill.bench.workloads.<name>``) exposes ``run(options: BenchOptions) ->
WorkloadResult``. It measures instructmill's path and every baseline **in the same process and
run**, on the same inputs, so each figure is read as a ratio measured side by side (the only
kind of speed claim that survives a change of machine or a noisy neighbour).

Metric names follow vLLM's ``benchmarks/benchmark_throughput.py`` (``requests_per_s``,
``total_tokens_per_s``, ``output_tokens_per_s``) plus ``seconds`` (wall time of the timed part),
``peak_rss_mb`` (the process's resident set size at its highest while that engine ran, MiB),
``busy_fraction`` (share of the wall time the engine was computing, where the engine reports
it), and for translation ``bleu`` / ``chrf`` of the engine's output against the raw engine's
(sacrebleu), so speed is never bought with changed output.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator
from contextlib import contextmanager

from ..errors import OptionError

__all__ = ["BenchOptions", "EngineResult", "WorkloadResult", "Measurement", "measure", "current_rss_mb", "throughput",
           "ROLE_INSTRUCTMILL", "ROLE_BASELINE", "DEVICES"]

ROLE_INSTRUCTMILL = "instructmill"
ROLE_BASELINE = "baseline"
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class BenchOptions:
    """What a benchmark run may vary; each workload reads the fields that concern it.

    Attributes:
        quick: a smaller workload (every ``bench all --quick`` finishes in minutes on 2 cores).
        device: ``"cpu"`` or ``"cuda"`` (GPU: vLLM and CTranslate2 float16).
        model: a model path / HF id to measure instead of the workload's built-in one.
        num_prompts: requests (prompts, sentences, rows) to time; ``None``: the workload's default.
        input_len / output_len: fixed prompt / output lengths in tokens, as vLLM's
            ``--input-len`` / ``--output-len``; ``None``: the dataset's real lengths
            (ShareGPT) and the workload's output length.
        max_batch_size / max_batch_tokens: batch budget for instructmill's path (``None``: its
            defaults). A deliberately small budget is how a slowdown is injected on purpose.
        repeats: timed rounds per engine (the fastest counts; all are kept in ``settings``).
        engines: run only these engines (``None``: all the workload has).
        cache_dir: where built models / data are cached between runs.
        seed: for sampled inputs.
    """

    quick: bool = False
    device: str = "cpu"
    model: str | None = None
    num_prompts: int | None = None
    input_len: int | None = None
    output_len: int | None = None
    max_batch_size: int | None = None
    max_batch_tokens: int | None = None
    repeats: int = 1
    engines: tuple[str, ...] | None = None
    cache_dir: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise OptionError("device", self.device, f"must be one of {', '.join(DEVICES)}")
        for name in ("num_prompts", "input_len", "output_len", "max_batch_size", "max_batch_tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise OptionError(name, value, "must be a positive integer")
        if not isinstance(self.repeats, int) or self.repeats < 1:
            raise OptionError("repeats", self.repeats, "must be a positive integer")

    def wants(self, engine: str) -> bool:
        """Whether ``engine`` is selected (``engines`` unset: every engine)."""
        return self.engines is None or engine in self.engines

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["engines"] = list(self.engines) if self.engines is not None else None
        return d


@dataclass
class EngineResult:
    """One engine's measurement in a workload.

    Attributes:
        engine: ``"instructmill"`` or a baseline's name (``"ct2_raw_best"``, ``"hf_batched"``...).
        role: ``"instructmill"`` or ``"baseline"``.
        metrics: ``requests_per_s``, ``total_tokens_per_s``, ``output_tokens_per_s``, ``seconds``,
            ``requests``, ``input_tokens``, ``output_tokens``, ``peak_rss_mb``, ``busy_fraction``,
            ``bleu``, ``chrf``... (``None`` where not measured).
        settings: what ran (batch sizes, compute type, threads, model path...).
        note: anything a reader must know to trust the figure (e.g. extrapolated, subset).
    """

    engine: str
    role: str
    metrics: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)
    note: str = ""


@dataclass
class WorkloadResult:
    """All engines of one workload, measured in one run.

    Attributes:
        workload: its name (``"backtranslation"``, ``"llm"``, ``"template"``, ``"rouge_filter"``,
            ``"pipeline"``).
        headline_metric: the metric the table, the ratios and regression checks use
            (e.g. ``"output_tokens_per_s"``; for workloads without tokens ``"requests_per_s"``).
        results: instructmill's result first, then the baselines.
        detail: the workload's description (dataset, model shape, lengths, counts, hashes).
        options: the :class:`BenchOptions` it ran with (as a dict).
    """

    workload: str
    headline_metric: str
    results: list[EngineResult]
    detail: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def instructmill(self) -> EngineResult | None:
        return next((r for r in self.results if r.role == ROLE_INSTRUCTMILL), None)

    def ratios(self) -> dict[str, float | None]:
        """instructmill's headline metric divided by each baseline's (``None`` when missing)."""
        own = self.instructmill()
        mine = own.metrics.get(self.headline_metric) if own else None
        out: dict[str, float | None] = {}
        for r in self.results:
            if r.role != ROLE_BASELINE:
                continue
            theirs = r.metrics.get(self.headline_metric)
            out[r.engine] = round(mine / theirs, 4) if mine and theirs else None
        return out


def current_rss_mb() -> float:
    """This process's resident set size now, MiB (``/proc/self/statm``; 0.0 where unavailable)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


@dataclass
class Measurement:
    """Filled by :func:`measure`: wall ``seconds`` and the highest RSS seen (``peak_rss_mb``)."""

    seconds: float = 0.0
    peak_rss_mb: float = 0.0


@contextmanager
def measure(interval: float = 0.05) -> Iterator[Measurement]:
    """Time a block and sample the process's RSS every ``interval`` seconds meanwhile.

    ``ru_maxrss`` only ever grows over a process's life, so it cannot tell apart engines measured
    one after another in one process; sampling can (to within ``interval``).
    """
    m = Measurement(peak_rss_mb=current_rss_mb())
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval):
            m.peak_rss_mb = max(m.peak_rss_mb, current_rss_mb())

    sampler = threading.Thread(target=sample, name="bench-rss", daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    try:
        yield m
    finally:
        m.seconds = time.perf_counter() - t0
        stop.set()
        sampler.join()
        m.peak_rss_mb = round(max(m.peak_rss_mb, current_rss_mb()), 1)


def throughput(*, requests: int, input_tokens: int | None, output_tokens: int | None, seconds: float,
               **extra: Any) -> dict[str, Any]:
    """vLLM-style metrics from counts and wall seconds (tokens ``None`` where not counted)."""
    total = (input_tokens or 0) + (output_tokens or 0) if (input_tokens is not None or output_tokens is not None) else None
    per = (lambda x: round(x / seconds, 3) if x is not None and seconds > 0 else None)
    out = {"requests": requests, "input_tokens": input_tokens, "output_tokens": output_tokens,
           "seconds": round(seconds, 4), "requests_per_s": per(requests), "total_tokens_per_s": per(total),
           "output_tokens_per_s": per(output_tokens)}
    out.update(extra)
    return out
