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

    report = Pipeline.from_file("pipeline.yaml").run(executor="ray",          # on a Ray cluster
                                                     ray=RayOptions(address="auto", replicas=4))

See :mod:`~instructmill.pipeline.spec` for the file format, :mod:`~instructmill.pipeline.runtime`
for how it runs, :mod:`~instructmill.pipeline.ray_executor` for the Ray executor,
:mod:`~instructmill.pipeline.report` for the report.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from .spec import PipelineSpec, PipelineSpecError, load_spec, parse_spec

__all__ = ["Pipeline", "PipelineError", "PipelineSpec", "PipelineSpecError", "RayOptions", "load_spec", "parse_spec"]


def __getattr__(name: str) -> Any:
    if name == "PipelineError":
        from .runtime import PipelineError

        return PipelineError
    if name == "RayOptions":
        from .ray_plan import RayOptions

        return RayOptions
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
        datasets: source name -> rows held in memory: a ``datasets.Dataset``, an
            ``IterableDataset`` (streamed) or any iterable of dicts. Each is written, before the
            run, as JSONL to the path its source declares (a file the run can fingerprint and
            resume from; rewritten only when the rows changed), then read like any source.

    Raises:
        PipelineSpecError: the mapping is invalid.
        OptionError: a ``datasets`` name that is no source of the pipeline.
    """

    def __init__(self, spec: PipelineSpec | Mapping[str, Any], *, engines: dict[str, Any] | None = None,
                 base_dir: str | os.PathLike[str] | None = None, service_factory: Any = None,
                 datasets: Mapping[str, Any] | None = None):
        if not isinstance(spec, PipelineSpec):
            spec = parse_spec(spec, base_dir=base_dir or os.getcwd())
        self.spec = spec
        self.engines = engines
        self.service_factory = service_factory
        self.datasets = dict(datasets or {})
        unknown = sorted(set(self.datasets) - set(spec.sources))
        if unknown:
            from ..errors import OptionError

            raise OptionError("datasets", unknown, f"not sources of this pipeline ({', '.join(spec.sources)})")

    def _write_datasets(self) -> None:
        """Write every in-memory source to its declared path (atomically; kept when unchanged)."""
        import hashlib
        import tempfile

        from ..io.resume import file_sha256
        from ..io.writers import dumps_line

        for name, rows in self.datasets.items():
            if isinstance(rows, (str, bytes, Mapping)):
                from ..errors import OptionError

                raise OptionError(f"datasets.{name}", type(rows).__name__,
                                  "give a datasets.Dataset / IterableDataset or an iterable of dicts (one split)")
            path = self.spec.resolve(self.spec.sources[name].path)
            folder = os.path.dirname(os.path.abspath(path))
            os.makedirs(folder, exist_ok=True)
            digest = hashlib.sha256()
            fd, tmp = tempfile.mkstemp(prefix=".dataset-", suffix=".jsonl", dir=folder)
            try:
                with os.fdopen(fd, "wb") as fh:
                    for i, row in enumerate(rows, start=1):
                        try:
                            line = dumps_line(dict(row) if isinstance(row, Mapping) else row)
                        except (TypeError, ValueError) as exc:
                            from ..errors import OptionError

                            raise OptionError(f"datasets.{name}", f"row {i}", f"cannot be stored as JSON ({exc})") \
                                from None
                        digest.update(line)
                        fh.write(line)
                if os.path.exists(path) and file_sha256(path) == digest.hexdigest():
                    os.unlink(tmp)  # same rows: keep the file (and its resume fingerprint) as it is
                else:
                    os.replace(tmp, path)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, overrides: Mapping[str, Any] | None = None,
                  **kwargs: Any) -> Pipeline:
        """Load and validate a YAML / TOML pipeline file (see :func:`load_spec`); ``overrides``
        sets key paths first (``{"sources.rows.path": "big.jsonl"}``)."""
        return cls(load_spec(path, overrides), **kwargs)

    def run(self, *, resume: bool = False, overwrite: bool = False, progress: bool | None = None,
            executor: str = "local", ray: Any = None, **kwargs: Any) -> dict[str, Any]:
        """Run to the end and return the report (see :mod:`instructmill.pipeline.report`).

        Then sinks with an ``export`` are converted to Parquet / Arrow and every sink gets its
        dataset card (:mod:`~instructmill.pipeline.publish`; ``report["cards"]``).

        Args:
            resume: continue an interrupted run (same pipeline, inputs and executor).
            overwrite: delete an earlier run's outputs and state first.
            progress: progress bars per stage (default: ``settings.progress``, else when stderr
                is a terminal).
            executor: ``"local"`` (threads and bounded queues in this process,
                :mod:`~instructmill.pipeline.runtime`) or ``"ray"`` (Ray Data on a Ray cluster,
                :mod:`~instructmill.pipeline.ray_executor`; needs ``pip install "ray[data]"``).
            ray: :class:`~instructmill.pipeline.ray_plan.RayOptions` for ``executor="ray"``
                (default: all defaults).

        Raises:
            OptionError: an unknown executor, ``ray`` options with the local executor, or (Ray)
                Ray Data not installed / options the cluster cannot meet.
            ResumeError: earlier outputs exist and neither ``resume`` nor ``overwrite`` is set,
                or the pipeline / inputs / executor changed since the run being resumed.
            PipelineError: a stage, source or sink failed (the message names it).
        """
        from ..errors import OptionError
        from .ray_state import check_executor

        if self.datasets:
            self._write_datasets()
        if executor not in ("local", "ray"):
            raise OptionError("executor", executor, "choose local or ray")
        if executor == "ray":
            from .ray_executor import RayExecutor
            from .ray_plan import RayOptions

            if ray is not None and not isinstance(ray, RayOptions):
                raise OptionError("ray", ray, "pass RayOptions(...)")
            runner = RayExecutor(self.spec, options=ray, engines=self.engines, service_factory=self.service_factory,
                                 progress=progress)
            return _published(self.spec, runner.run(resume=resume, overwrite=overwrite, **kwargs))
        if ray is not None:
            raise OptionError("ray", ray, "Ray options apply to executor='ray' only")
        check_executor(self.spec, "local", resume=resume)
        from .runtime import Runtime

        runtime = Runtime(self.spec, engines=self.engines, service_factory=self.service_factory, progress=progress)
        return _published(self.spec, runtime.run(resume=resume, overwrite=overwrite, **kwargs))


def _published(spec: PipelineSpec, report: dict[str, Any]) -> dict[str, Any]:
    """Sink exports (Parquet / Arrow) and dataset cards, once the run has finished."""
    from .publish import publish_sinks

    return publish_sinks(spec, report)
