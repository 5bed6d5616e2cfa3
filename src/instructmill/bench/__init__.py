"""The benchmark suite: workloads measured against baselines in the same run, a history, a report.

``instructmill bench run WORKLOAD`` / ``bench all`` / ``bench report``; see ``benchmarks/README.md``.
"""
from .core import BenchOptions, EngineResult, WorkloadResult, measure, throughput

__all__ = ["BenchOptions", "EngineResult", "WorkloadResult", "measure", "throughput"]
