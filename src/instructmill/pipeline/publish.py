"""After a pipeline run: sink exports (Parquet / Arrow), dataset cards, the Hugging Face Hub.

:func:`publish_sinks` runs when a run has finished (both executors, see
:meth:`~instructmill.pipeline.Pipeline.run`): it converts every sink that has an ``export``
(:class:`~instructmill.pipeline.spec.SinkSpec`) from its JSONL, which the run wrote and resumes
exactly, into the Parquet / Arrow file, then writes the dataset cards
(:mod:`instructmill.io.card`) unless ``settings.card`` is off. :func:`push_pipeline` uploads the
sinks and one card for them all.
"""
from __future__ import annotations

import os
from typing import Any

from .spec import PipelineSpec

__all__ = ["publish_sinks", "push_pipeline"]


def publish_sinks(spec: PipelineSpec, report: dict[str, Any]) -> dict[str, Any]:
    """Export the sinks that ask for it and write the cards; records the files in ``report``
    (``report["sinks"][name]["export_file"]``, ``report["cards"]``) and returns it.

    Raises:
        RecordError: a JSONL line does not fit the export's schema (the JSONL stays as written).
    """
    from ..io.resume import run_paths
    from ..io.tables import jsonl_to_table

    for sink in spec.sinks:
        if sink.export:
            target = spec.resolve(sink.export)
            os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
            jsonl_to_table(run_paths(spec.resolve(sink.path)).output, target, sink.format)
            report.setdefault("sinks", {}).setdefault(sink.name, {})["export_file"] = target
    if spec.settings.card:
        from ..io.card import write_pipeline_cards

        report["cards"] = write_pipeline_cards(spec, report)
    return report


def push_pipeline(spec: PipelineSpec, report: dict[str, Any], repo: str, *, private: bool = False) -> str:
    """Upload every sink's data (its export when it has one) and discards, with one card for them
    all as ``README.md``, to the Hub dataset ``repo``; returns the commit URL.

    Raises:
        HubError: the Hub cannot be reached or refuses (one line; the local files are kept).
    """
    from ..io.card import _pipeline_figures, _pipeline_made, pipeline_entries, push_to_hub

    return push_to_hub(repo, pipeline_entries(spec, report), title=f"{repo}: pipeline {os.path.basename(spec.file)}",
                       made=_pipeline_made(spec, report), figures=_pipeline_figures(report), private=private)
