"""The Ray executor: the same pipeline on a Ray cluster, through Ray Data.

``instructmill generate PIPELINE --executor ray [--ray-address ADDR]``, or
``Pipeline(...).run(executor="ray", ray=RayOptions(...))``. Ray is imported only here, when the
Ray executor runs (``pip install "ray[data]"``).

How a run goes (the plan: :mod:`~instructmill.pipeline.ray_plan`; the worker side:
:mod:`~instructmill.pipeline.ray_actors`; the driver side: :mod:`~instructmill.pipeline.ray_driver`;
files: :mod:`~instructmill.pipeline.ray_state`):

1. The driver reads each source with instructmill's readers (same ids, line-numbered errors file,
   ``invalid_record`` rows) into blocks of rows, one row per record, and makes them a Ray
   Dataset (``ray.data.from_arrow``). A Self-Instruct stage runs in one actor first; its records
   are the rows of the stages after it.
2. Each engine stage is a ``map_batches`` over a fixed pool of actors, one engine replica each;
   Ray restarts a killed actor (``max_restarts``) and retries its batch (``max_task_retries``).
3. The driver reads the result in row order (``preserve_order``), runs dedup and the stages
   after it, writes every sink exactly as the local executor does (same records, same order,
   same files) and appends a progress mark; ``--resume`` continues after the last mark.
4. The report has the local report's shape plus an ``executor`` section (plan, replicas,
   batch sizes, cluster resources).
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Callable

from ..errors import OptionError
from ..io.resume import write_state
from .checkpoint import StateDir
from .ray_driver import RunContext, StageFailedError
from .ray_plan import RayOptions, plan_pipeline
from .ray_state import PROGRESS_FILE, check_executor
from .spec import PipelineSpec

__all__ = ["RayExecutor", "RayOptions", "import_ray"]

log = logging.getLogger("instructmill.pipeline")

_RAY_ERROR_LOGGERS = ("ray.data.exceptions", "ray.data._internal.execution.streaming_executor_state")


def _drop_errors(record: logging.LogRecord) -> bool:
    return record.levelno != logging.ERROR


_DROP_ERRORS = _drop_errors


def import_ray() -> Any:
    """``import ray`` (and Ray Data).

    Raises:
        OptionError: Ray Data is not installed (the message gives the pip command).
    """
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise OptionError("executor", "ray", f"the Ray executor needs Ray Data, which is not installed ({exc}): "
                                             'pip install "ray[data]"') from None
    return ray


class RayExecutor:
    """Runs a :class:`~instructmill.pipeline.spec.PipelineSpec` on Ray (use
    :meth:`instructmill.pipeline.Pipeline.run` with ``executor="ray"``).

    Args:
        spec: the validated pipeline.
        options: :class:`RayOptions`.
        engines: engine overrides built in code; they reach every actor by pickling (one copy
            per replica).
        service_factory: builds the shared services (tests).
        progress: Ray Data's progress bars (``None``: ``settings.progress``, else when stderr is
            a terminal).
    """

    def __init__(self, spec: PipelineSpec, *, options: RayOptions | None = None, engines: dict[str, Any] | None = None,
                 service_factory: Any = None, progress: bool | None = None):
        self.spec = spec
        self.options = options or RayOptions()
        self._engines = engines
        self._service_factory = service_factory
        if progress is None:
            progress = spec.settings.progress
        self.progress = bool(sys.stderr.isatty() if progress is None else progress)

    # ----------------------------------------------------------------------------- run
    def run(self, *, resume: bool = False, overwrite: bool = False,
            on_ready: Callable[[dict[str, Any]], None] | None = None,
            on_batch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Run the pipeline to the end on Ray; returns the report (also written next to every sink).

        Args:
            resume: continue an interrupted Ray run (after its last progress mark).
            overwrite: delete an earlier run's outputs and state first.
            on_ready: called with ``{"state_dir", "resumed"}`` once the run is set up (tests).
            on_batch: called with ``{"root", "rows"}`` after a batch's sink lines are written and
                before its progress mark (tests interrupt a run here).

        Raises:
            OptionError: Ray is not installed; bad options; a pipeline shape the Ray executor
                does not run (the message lists what it runs); engines built in code that
                cannot be pickled.
            ResumeError: as the local executor, and when the run was started by the local one.
            PipelineError: a stage, source or sink failed (the message names it).
        """
        ray = import_ray()
        self._check_engines_picklable(ray)
        spec = self.spec
        wall0 = time.perf_counter()
        started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        check_executor(spec, "ray", resume=resume)
        state = StateDir(spec)
        try:
            return self._run_locked(ray, state, resume=resume, overwrite=overwrite, on_ready=on_ready,
                                    on_batch=on_batch, wall0=wall0, started_at=started_at)
        finally:
            state.release()  # the sinks' locks, taken by prepare

    def _run_locked(self, ray: Any, state: StateDir, *, resume: bool, overwrite: bool, on_ready: Any,
                    on_batch: Any, wall0: float, started_at: str) -> dict[str, Any]:
        from .report import build_report, write_reports

        spec = self.spec
        progress_path = os.path.join(state.path, PROGRESS_FILE)
        resumed = state.prepare(resume=resume, overwrite=overwrite)
        if overwrite and os.path.exists(progress_path):
            os.unlink(progress_path)
        if not resumed:
            if os.path.exists(progress_path):
                os.unlink(progress_path)
            state.state["executor"] = "ray"
            write_state(state.state_file, state.state)
        if on_ready is not None:
            on_ready({"state_dir": state.path, "resumed": resumed})
        ctx = RunContext(spec, self.options, self._engines, self._service_factory, ray, state, resumed, on_batch)
        started_ray = False
        saved = None
        error: BaseException | None = None
        try:
            try:
                started_ray = self._connect(ray)
                saved = self._configure_ray_data(ray)
                plan = plan_pipeline(spec, self.options, ray.cluster_resources())
                run0 = time.perf_counter()  # the stages' clocks start here (engines load in the actors)
                ctx.setup(plan, progress_path, run0)
            except BaseException:
                ctx.close()
                if not resumed:  # nothing was written: leave no state that would block the next run
                    state.discard()
                    if os.path.exists(progress_path):
                        os.unlink(progress_path)
                raise
            ctx.start()
            try:
                for root in plan.roots:
                    ctx.run_root(root)
            finally:
                ctx.close()
        except StageFailedError as exc:
            error = exc.as_pipeline_error()
        finally:
            if saved is not None:
                self._restore_ray_data(ray, saved)
            if started_ray:
                ray.shutdown()
        if error is not None:
            # Raised here, not in the except block, and after a collection: the failed job's
            # frames and Ray objects form reference cycles that would keep its actors (and their
            # CPUs/GPUs) alive while the caller holds this error, so a next run in this process
            # would wait for resources forever.
            import gc

            gc.collect()
            raise error
        report = build_report(spec, nodes=ctx.views(), stages=ctx.summaries(), engines=ctx.engine_stats(),
                              state_dir=state.path, resumed=resumed, sessions=int(state.state.get("sessions", 1)),
                              wall_seconds=time.perf_counter() - wall0, setup_seconds=run0 - wall0,
                              started_at=started_at, clock_zero=run0)
        report["executor"] = {"kind": "ray", "address": self.options.address, "ray_version": ray.__version__,
                              **plan.as_dict()}
        state.finish({name: {k: v for k, v in sink.items() if k in ("total_ok", "total_discards")}
                      for name, sink in report["sinks"].items()})
        if spec.settings.report:
            report["report_files"] = write_reports(report, [spec.resolve(s.path) for s in spec.sinks])
        return report

    # ------------------------------------------------------------------------- ray setup
    def _connect(self, ray: Any) -> bool:
        """Join the cluster (or start a local one); returns whether this run started Ray."""
        if ray.is_initialized():
            return False
        kwargs: dict[str, Any] = {"logging_level": logging.WARNING}
        address = self.options.address
        _check_reachable(address or os.environ.get("RAY_ADDRESS"))
        if address is None and not os.environ.get("RAY_ADDRESS"):
            kwargs["include_dashboard"] = False
        ray.init(address=address, **kwargs)
        return True

    def _configure_ray_data(self, ray: Any) -> tuple[Any, ...]:
        """Rows in order (the driver writes them as they come); Ray Data's progress bars and info
        logs only with ``progress``. Returns what to restore."""
        ctx = ray.data.DataContext.get_current()
        quiet = logging.getLogger("ray.data"), logging.getLogger("ray.data._internal.progress")
        saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.raise_original_map_exception,
                 [lg.level for lg in quiet])
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = self.progress
        ctx.raise_original_map_exception = True  # a stage's StageFailed, not UserCodeException(text)
        # A failed stage reaches the user as a PipelineError naming it (its traceback logged when it
        # is not a user error); Ray Data would also log it at ERROR, with its own frames, as "an
        # exception in Ray Data internal code" (it is not). Its warnings still show.
        for name in _RAY_ERROR_LOGGERS:
            logging.getLogger(name).addFilter(_DROP_ERRORS)
        if not self.progress:
            quiet[0].setLevel(logging.WARNING)
            quiet[1].setLevel(logging.ERROR)  # "Progress bars disabled..."
        return saved

    @staticmethod
    def _restore_ray_data(ray: Any, saved: tuple[Any, ...]) -> None:
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved[0], saved[1]
        ctx.raise_original_map_exception = saved[2]
        for name, level in zip(("ray.data", "ray.data._internal.progress"), saved[3]):
            logging.getLogger(name).setLevel(level)
        for name in _RAY_ERROR_LOGGERS:
            logging.getLogger(name).removeFilter(_DROP_ERRORS)

    def _check_engines_picklable(self, ray: Any) -> None:
        for name, engine in (self._engines or {}).items():
            try:
                ray.cloudpickle.dumps(engine)
            except Exception as exc:  # noqa: BLE001 - any pickling failure
                raise OptionError("engines", name, f"engines built in code reach the Ray actors by pickling, and this "
                                                   f"one cannot be pickled ({type(exc).__name__}: {exc}); declare it "
                                                   "in the pipeline instead (each actor then loads its own "
                                                   "replica)") from None


def _check_reachable(address: str | None, timeout: float = 10.0) -> None:
    """Refuse a ``host:port`` (or ``ray://host:port``) nobody listens on within ``timeout``
    seconds: ``ray.init`` would retry such an address without end."""
    import socket

    if not address or address in ("auto", "local"):
        return
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not port.isdigit():
        return  # not host:port: left to Ray
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as exc:
        raise OptionError("ray_address", address, f"no Ray cluster answers there ({exc.strerror or exc}); start "
                                                  "one with `ray start --head` or pass its address") from None
