"""Multi-stage bulk pipelines: sources -> stages -> sinks, streamed, checkpointed, resumable.

Python API (the same pipeline as ``instructmill generate PIPELINE``)::

    from instructmill.pipeline import Pipeline

    report = Pipeline.from_file("examples/template_backtranslate.yaml").run()
    report = Pipeline.from_file("pipeline.yaml").run(resume=True)      # after a crash

    pipeline = Pipeline({
        "sources": {"rows": {"path": "rows.jsonl"}},
        "engines": {"enpt": {"type": "translation", "model": "embedded"}},
        "stages": [{"method": "template", "template": "alpaca"},
                   {"method": "back-translate", "engine": "enpt", "fields": ["instruction"]}],
        "sinks": [{"path": "out/data.jsonl"}],
    }, engines={"enpt": {"pt": (forward, backward)}})   # optional: engines built in code
    print(pipeline.run()["sinks"])

See :mod:`~instructmill.pipeline.spec` for the file format, :mod:`~instructmill.pipeline.runtime`
for how it runs, :mod:`~instructmill.pipeline.report` for the report.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from .spec import PipelineSpec, PipelineSpecError, load_spec, parse_spec

__all__ = ["Pipeline", "PipelineError", "PipelineSpec", "PipelineSpecError", "load_spec", "parse_spec"]


def __getattr__(name: str) -> Any:
    if name == "PipelineError":
        from .runtime import PipelineError

        return PipelineError
    raise AttributeError(f"module 'instructmill.pipeline' has no attribute {name!r}")


class Pipeline:
    """A validated pipeline, ready to run.

    Args:
        spec: a :class:`PipelineSpec`, or the plain mapping a pipeline file holds (validated
            here, relative paths against ``base_dir``).
        engines: engine name -> an engine built in code: an
            :class:`~instructmill.engine.llm.LLMBackend` (``type: llm``) or ``{pivot: (forward,
            backward)}`` translation backends (``type: translation``); the spec still declares
            the engine (its type, languages, batching). Engines given here are not closed.
        base_dir: folder for relative paths of a mapping ``spec`` (default: the current one).
        service_factory: builds the shared engine services (default:
            :mod:`instructmill.pipeline.services`).

    Raises:
        PipelineSpecError: the mapping is invalid.
    """

    def __init__(self, spec: PipelineSpec | Mapping[str, Any], *, engines: dict[str, Any] | None = None,
                 base_dir: str | os.PathLike[str] | None = None, service_factory: Any = None):
        if not isinstance(spec, PipelineSpec):
            spec = parse_spec(spec, base_dir=base_dir or os.getcwd())
        self.spec = spec
        self.engines = engines
        self.service_factory = service_factory

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, overrides: Mapping[str, Any] | None = None,
                  **kwargs: Any) -> Pipeline:
        """Load and validate a YAML / TOML pipeline file (see :func:`load_spec`); ``overrides``
        sets key paths first (``{"sources.rows.path": "big.jsonl"}``)."""
        return cls(load_spec(path, overrides), **kwargs)

    def run(self, *, resume: bool = False, overwrite: bool = False, progress: bool | None = None,
            **kwargs: Any) -> dict[str, Any]:
        """Run to the end and return the report (see :mod:`instructmill.pipeline.report`).

        Args:
            resume: continue an interrupted run (same pipeline and inputs).
            overwrite: delete an earlier run's outputs and state first.
            progress: progress bars per stage (default: ``settings.progress``, else when stderr
                is a terminal).

        Raises:
            ResumeError: earlier outputs exist and neither ``resume`` nor ``overwrite`` is set,
                or the pipeline / inputs changed since the run being resumed.
            PipelineError: a stage, source or sink failed (the message names it).
        """
        from .runtime import Runtime

        runtime = Runtime(self.spec, engines=self.engines, service_factory=self.service_factory, progress=progress)
        return runtime.run(resume=resume, overwrite=overwrite, **kwargs)
