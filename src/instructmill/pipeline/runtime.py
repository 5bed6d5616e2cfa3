"""The streaming runtime: one thread per source, stage and sink, bounded queues between them.

Data flow::

    source --Queue--> stage --Queue--> stage --Queue--> sink
                        \\--Queue--> sink   (a stage may feed several consumers)

* **Bounded memory.** Sources stream from disk; every queue holds at most
  ``settings.queue_size`` records; a stage holds at most ``concurrency`` windows (a window is
  the method's own batch: ``records_per_batch``, ``chunk_size``, or ``settings.window``); sinks
  write as records arrive. Memory does not grow with the input (only a dedup index does, by
  design).
* **Overlap.** Stages run at once: while Self-Instruct waits for its next round, the respond
  stage's requests go to the same engine (the shared services merge them into the engine's
  batches); a stage with ``concurrency > 1`` keeps several windows in flight. A stage whose input
  has been idle for ``settings.flush_seconds`` processes the records it holds rather than wait for
  a full window.
* **Order.** Each stage gives back its outputs in input order (windows finish in any order and
  are put back in order), so every sink receives a deterministic stream: the same pipeline, seeds
  and inputs give the same files, byte for byte.
* **Checkpoints and resume.** A stage appends its outputs to its checkpoint
  (:mod:`~instructmill.pipeline.checkpoint`) before passing them on; on resume it replays the
  checkpoint instead of recomputing (Self-Instruct rebuilds its pool, dedup its index) and sinks
  skip the records their files already hold (checking that the ids agree), so a run killed at any
  moment and resumed writes every record exactly once.
* **Failure.** An exception in any thread stops every other thread (queues wake up, engines
  are closed so blocked requests return) and the run raises :class:`PipelineError` naming the
  stage; no thread is left hanging.
"""
from __future__ import annotations

import sys
import threading
import time
import traceback
from typing import Any, Callable

from ..errors import InstructmillError, ResumeError
from ..progress import Heartbeat
from .checkpoint import CheckpointFile, StateDir
from .engines import EngineRegistry, ServiceFactory
from .nodes import (Channel, GeneratorNode, Node, NodeStats, PipelineError, SinkNode, SourceNode, StageNode, Stopped,
                    log, progress_bar, progress_text)
from .spec import PipelineSpec
from .stages import GeneratorStage, MapStage, build_stage

__all__ = ["PipelineError", "Runtime"]


# ------------------------------------------------------------------------------ runtime

class Runtime:
    """Runs a :class:`~instructmill.pipeline.spec.PipelineSpec` (use :class:`instructmill.pipeline.Pipeline`).

    Args:
        spec: the validated pipeline.
        engines: engine overrides (see :class:`~instructmill.pipeline.engines.EngineRegistry`).
        service_factory: builds the shared services (tests).
        progress: progress bars (``None``: ``settings.progress``, else when stderr is a terminal).
    """

    def __init__(self, spec: PipelineSpec, *, engines: dict[str, Any] | None = None,
                 service_factory: ServiceFactory | None = None, progress: bool | None = None):
        self.spec = spec
        self._engines = engines
        self._service_factory = service_factory
        if progress is None:
            progress = spec.settings.progress
        if progress is None:
            progress = sys.stderr.isatty()
        self.progress = bool(progress)

    def run(self, *, resume: bool = False, overwrite: bool = False,
            on_ready: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Run the pipeline to the end; returns the report (also written next to every sink).

        Args:
            resume: continue an interrupted run (replay checkpoints, skip what sinks hold).
            overwrite: delete an earlier run's outputs and state first.
            on_ready: called with ``{"state_dir", "resumed"}`` once the run is set up (tests).

        Raises:
            OutputLockedError: another live run writes to one of the sinks.
            ResumeError: outputs exist without ``resume``/``overwrite``, or resuming is unsafe.
            PipelineSpecError / OptionError: an engine or stage refuses its options.
            PipelineError: a stage, source or sink failed (all threads are stopped first).
        """
        state = StateDir(self.spec)
        try:
            return self._run(state, resume=resume, overwrite=overwrite, on_ready=on_ready)
        finally:
            state.release()  # the sinks' locks, taken by prepare

    def _run(self, state: StateDir, *, resume: bool, overwrite: bool,
             on_ready: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
        from .report import build_report, write_reports

        spec = self.spec
        wall0 = time.perf_counter()
        started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        resumed = state.prepare(resume=resume, overwrite=overwrite)
        if on_ready is not None:
            on_ready({"state_dir": state.path, "resumed": resumed})
        registry = EngineRegistry(spec, overrides=self._engines, service_factory=self._service_factory)
        stop = threading.Event()
        failures: list[tuple[str, BaseException, str]] = []
        nodes: list[Node] = []
        stages: dict[str, MapStage | GeneratorStage] = {}
        bars: list[Any] = []
        try:
            try:
                for stage_spec in spec.stages:
                    try:
                        stages[stage_spec.name] = build_stage(stage_spec, registry, base_dir=spec.base_dir,
                                                              default_window=spec.settings.window)
                    except InstructmillError as exc:
                        label = f"stage {stage_spec.name!r} ({stage_spec.method})"
                        raise PipelineError(f"{label}: {exc}", node=label, cause=exc) from exc
            except BaseException:
                if not resumed:  # nothing was written: leave no state that would block the next run
                    state.discard()
                raise
            run0 = time.perf_counter()
            setup_seconds = run0 - wall0
            nodes = self._wire(spec, state, stages, stop, resumed, bars, run0)
            # off a terminal (no bars) a line every 10 s says the run is alive and how far it got
            with Heartbeat(None if not self.progress else bars[0] if bars else None, lambda: progress_text(nodes)):
                self._start_and_wait(nodes, stop, failures, registry)
        except KeyboardInterrupt:
            stop.set()
            registry.close()
            raise
        finally:
            for bar in bars:
                bar.close()
            registry.close()
        if failures:
            name, exc, tb = failures[0]
            if isinstance(exc, ResumeError):
                raise exc
            hint = "; what was done is kept: fix the cause and run again with --resume"
            if isinstance(exc, InstructmillError):
                raise PipelineError(f"{name}: {exc}{hint}", node=name, cause=exc) from exc
            log.error("%s failed:\n%s", name, tb)
            raise PipelineError(f"{name} failed: {type(exc).__name__}: {exc} (traceback above){hint}", node=name,
                                cause=exc) from exc
        late = [(n.name, n.failure) for n in nodes if isinstance(n, SourceNode) and n.failure is not None]
        if late:
            name, exc = late[0]
            raise PipelineError(f"source {name!r}: {exc}; everything read before it was processed and written",
                                node=name, cause=exc) from exc
        engine_stats = registry.stats()
        report = build_report(spec, nodes=nodes, stages=stages, engines=engine_stats, state_dir=state.path,
                              resumed=resumed, sessions=int(state.state.get("sessions", 1)),
                              wall_seconds=time.perf_counter() - wall0, setup_seconds=setup_seconds,
                              started_at=started_at, clock_zero=run0)
        state.finish({name: {k: v for k, v in sink.items() if k in ("total_ok", "total_discards")}
                      for name, sink in report["sinks"].items()})
        if spec.settings.report:
            report["report_files"] = write_reports(report, [spec.resolve(s.path) for s in spec.sinks])
        return report

    # ------------------------------------------------------------------ wiring
    def _wire(self, spec: PipelineSpec, state: StateDir, stages: dict[str, MapStage | GeneratorStage],
              stop: threading.Event, resumed: bool, bars: list[Any], t0: float) -> list[Node]:
        size = spec.settings.queue_size
        inputs: dict[str, Channel] = {}
        consumers: dict[str, list[Channel]] = {}
        for stage_spec in spec.stages:
            inputs[stage_spec.name] = channel = Channel(size, stop)
            consumers.setdefault(stage_spec.input, []).append(channel)
        for sink in spec.sinks:
            inputs[f"sink:{sink.name}"] = channel = Channel(size, stop)
            consumers.setdefault(sink.input, []).append(channel)

        def bar(name: str) -> Any:
            b = progress_bar(self.progress, name, len(bars))
            bars.append(b)
            return b

        nodes: list[Node] = []
        for name, source in spec.sources.items():
            stats = NodeStats(name, "source", t0=t0)
            nodes.append(SourceNode(name, source, spec.resolve(source.path), state.errors_file(name), stats,
                                    consumers.get(name, []), bar(f"source {name}")))
        for stage_spec in spec.stages:
            stage = stages[stage_spec.name]
            stats = NodeStats(stage_spec.name, "stage", stage_spec.method, t0=t0)
            checkpoint = CheckpointFile(state.stage_file(stage_spec.name))
            outs = consumers.get(stage_spec.name, [])
            if isinstance(stage, GeneratorStage):
                nodes.append(GeneratorNode(stage, inputs[stage_spec.name], checkpoint, stats, outs,
                                           bar(stage_spec.name), resumed=resumed))
            else:
                nodes.append(StageNode(stage, inputs[stage_spec.name], checkpoint, stats, outs, bar(stage_spec.name),
                                       flush_seconds=spec.settings.flush_seconds, resumed=resumed))
        for sink in spec.sinks:
            stats = NodeStats(sink.name, "sink", t0=t0)
            nodes.append(SinkNode(sink, spec.resolve(sink.path), inputs[f"sink:{sink.name}"], stats,
                                  bar(f"sink {sink.name}"), resumed=resumed))
        return nodes

    @staticmethod
    def _start_and_wait(nodes: list[Node], stop: threading.Event,
                        failures: list[tuple[str, BaseException, str]], registry: EngineRegistry) -> None:
        lock = threading.Lock()

        def target(node: Node) -> None:
            try:
                node.run()
            except Stopped:
                pass
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                label = f"{node.stats.kind} {node.name!r}" + (f" ({node.stats.method})" if node.stats.method else "")
                with lock:
                    failures.append((label, exc, traceback.format_exc()))
                stop.set()
            finally:
                node.stats.close_timeline()

        for node in nodes:
            node.thread = threading.Thread(target=target, args=(node,), name=f"pipeline-{node.name}", daemon=True)
            node.thread.start()
        while any(n.thread.is_alive() for n in nodes if n.thread is not None):
            if stop.is_set():
                registry.close()  # wakes threads blocked inside an engine call
                deadline = time.monotonic() + 30
                for n in nodes:
                    if n.thread is not None:
                        n.thread.join(max(0.0, deadline - time.monotonic()))
                stuck = [n.name for n in nodes if n.thread is not None and n.thread.is_alive()]
                if stuck:
                    log.warning("pipeline threads did not stop within 30 s: %s", ", ".join(stuck))
                return
            for n in nodes:
                if n.thread is not None and n.thread.is_alive():
                    n.thread.join(0.2)
                    break
