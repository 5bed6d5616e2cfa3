"""How a pipeline maps onto Ray Data: :class:`RayOptions` and the plan (roots, operators, resources).

Importing this module does not import Ray (the local executor and ``--help`` never do).

**Roots.** Each source is a root; so is each Self-Instruct stage (its rounds' records are the
rows of the stages after it). Every other stage belongs to the root its input belongs to. A root
becomes one Ray Dataset with one row per root record (:mod:`~instructmill.pipeline.ray_actors`).
Roots run one after another: sources first (in file order), then Self-Instruct stages.

**Where each stage runs.**

* An engine stage (respond, humpback, evolve, back-translate) starts a Ray Data
  ``map_batches`` operator over a fixed pool of actors; each actor holds one engine replica
  (``num_gpus`` per actor on GPU engines, CPU actors otherwise).
* Stages without an engine (template, filter) run inside the operator before or after them
  (the first engine operator takes those that come before it): the same work Ray Data's own
  operator fusion would do, without plain tasks that need free CPUs while the actors hold them
  all. A root with no engine stage runs them as plain Ray tasks.
* ``dedup`` keeps an index over everything before it, so it runs on the driver, in row order,
  as do all stages after it in the same root (their engines load on the driver).
* Self-Instruct runs in one actor (its rounds are sequential), driven by the driver.
* Stages that name the same engine share one instance locally; on Ray each engine stage has its
  own actors, each loading its own replica (GPU memory per replica, not per engine).

**Defaults from the cluster.** Per root, GPU operators share the cluster's GPUs
(``GPUs // (gpus per actor * GPU operators)`` replicas each, at least 1) and CPU operators the
CPUs the GPU actors leave (``CPUs // (cpus per actor * CPU operators)``). An actor's engine runs
on as many threads as the actor has CPUs, unless the pipeline file sets the engine's threads.
"""
from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import OptionError
from .spec import EngineSpec, PipelineSpec, SinkSpec
from .stages import METHODS

__all__ = ["OpPlan", "RayOptions", "RayPlan", "RootPlan", "plan_pipeline"]

log = logging.getLogger("instructmill.pipeline")


def _positive_int(name: str, value: Any, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OptionError(name, value, "must be a positive integer" + (" or None" if allow_none else ""))


def _retries(name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < -1:
        raise OptionError(name, value, "must be an integer >= 0, -1 for no limit, or None for Ray Data's default")


@dataclass(frozen=True)
class RayOptions:
    """Options of the Ray executor (``instructmill generate --executor ray``).

    Attributes:
        address: the Ray cluster to join (``"auto"``, ``"ray://head:10001"``, ``"head:6379"``);
            ``None``: the ``RAY_ADDRESS`` environment variable, else a Ray instance already
            initialised in this process, else a new local cluster on this machine (stopped at
            the end of the run).
        replicas: actors (engine replicas) per engine stage; ``None``: from the cluster's
            resources (module docstring).
        batch_size: rows per ``map_batches`` call; ``None``: the engine stage's window
            (``records_per_batch``, ``chunk_size``, else ``settings.window``), at most 256.
        num_cpus_per_actor: CPUs each actor reserves (its engine's thread count on CPU).
        num_gpus_per_actor: GPUs each engine actor reserves; ``None``: the engine's
            ``tensor_parallel_size`` (1) when the cluster has GPUs and the engine can use CUDA
            (``device: auto`` or ``cuda``), else 0.
        stage_replicas: engine stage name -> replicas (wins over ``replicas``).
        num_cpus_per_task: CPUs of the plain tasks that run roots without an engine stage.
        max_restarts: times Ray restarts a dead actor (``-1``: no limit); ``None``: Ray Data's
            default (no limit).
        max_task_retries: times a batch whose actor died is retried on a restarted or other actor
            (``-1``: no limit); ``None``: Ray Data's default (no limit). Exceptions raised by a
            method are not retried: they fail the run.

    Raises:
        OptionError: a value out of range (names the option).
    """

    address: str | None = None
    replicas: int | None = None
    batch_size: int | None = None
    num_cpus_per_actor: float = 1.0
    num_gpus_per_actor: float | None = None
    stage_replicas: Mapping[str, int] = field(default_factory=dict)
    num_cpus_per_task: float = 1.0
    max_restarts: int | None = None
    max_task_retries: int | None = None

    def __post_init__(self) -> None:
        if self.address is not None and (not isinstance(self.address, str) or not self.address.strip()):
            raise OptionError("address", self.address, "name a Ray cluster (e.g. 'auto' or 'ray://head:10001') or "
                                                       "leave it unset")
        _positive_int("replicas", self.replicas)
        _positive_int("batch_size", self.batch_size)
        for name in ("num_cpus_per_actor", "num_cpus_per_task", "num_gpus_per_actor"):
            value = getattr(self, name)
            if value is None and name == "num_gpus_per_actor":
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
                raise OptionError(name, value, "must be a number >= 0")
        if self.num_cpus_per_actor <= 0:
            raise OptionError("num_cpus_per_actor", self.num_cpus_per_actor, "must be > 0")
        if not isinstance(self.stage_replicas, Mapping):
            raise OptionError("stage_replicas", self.stage_replicas, "must map stage names to replica counts")
        for stage, n in self.stage_replicas.items():
            if not isinstance(stage, str) or not stage:
                raise OptionError("stage_replicas", stage, "keys are stage names")
            _positive_int(f"stage_replicas[{stage!r}]", n, allow_none=False)
        object.__setattr__(self, "stage_replicas", dict(self.stage_replicas))
        _retries("max_restarts", self.max_restarts)
        _retries("max_task_retries", self.max_task_retries)


# ------------------------------------------------------------------------------- plan

@dataclass
class OpPlan:
    """One ``map_batches`` operator.

    Attributes:
        stages: the stages it runs, in pipeline order.
        engine_stage: its engine stage (``None``: a plain-task operator).
        engine: that stage's engine.
        replicas: actors (``None`` for tasks).
        batch_size: rows per call.
        num_cpus / num_gpus: per actor (or task).
        concurrency: calls one actor runs at once (the stage's ``concurrency``: several windows
            in flight keep an LLM engine's batches full).
        threads: engine -> CPU threads in each actor.
        drop: columns no later operator, driver stage or sink reads.
    """

    stages: list[str]
    engine_stage: str | None = None
    engine: str | None = None
    replicas: int | None = None
    batch_size: int = 256
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    concurrency: int = 1
    threads: dict[str, int] = field(default_factory=dict)
    drop: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"stages": list(self.stages), "kind": "actors" if self.engine_stage else "tasks",
                               "batch_size": self.batch_size, "num_cpus": self.num_cpus}
        if self.engine_stage:
            out.update(engine_stage=self.engine_stage, engine=self.engine, replicas=self.replicas,
                       num_gpus=self.num_gpus, concurrent_calls_per_actor=self.concurrency,
                       engine_threads=dict(self.threads))
        return out


@dataclass
class RootPlan:
    """One root: a source, or a Self-Instruct stage (see the module docstring).

    Attributes:
        name: the source or stage name (its records are the rows).
        kind: ``"source"`` or ``"generator"``.
        source: the source it reads (a generator's seeds).
        ops: its Ray operators, in order.
        driver_stages: stages run on the driver, in order.
        sinks: sinks reading one of its nodes.
        keep: nodes whose columns the driver reads (driver-stage inputs, sink inputs).
        block_rows: rows per input block of its Ray Dataset.
        generator: the generator actor's resources (``{"num_cpus", "num_gpus", "threads"}``).
    """

    name: str
    kind: str
    source: str
    ops: list[OpPlan] = field(default_factory=list)
    driver_stages: list[str] = field(default_factory=list)
    sinks: list[SinkSpec] = field(default_factory=list)
    keep: list[str] = field(default_factory=list)
    block_rows: int = 256
    generator: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "ops": [op.as_dict() for op in self.ops],
                               "driver_stages": list(self.driver_stages), "sinks": [s.name for s in self.sinks],
                               "block_rows": self.block_rows}
        if self.generator is not None:
            out["generator"] = dict(self.generator)
        return out


@dataclass
class RayPlan:
    """The whole plan: roots in run order and the cluster it was sized for."""

    roots: list[RootPlan]
    cluster: dict[str, float]
    placement: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        return {"cluster": dict(self.cluster), "placement": dict(self.placement),
                "roots": {r.name: r.as_dict() for r in self.roots}}


#: Most rows per Ray batch by default: a batch is the unit of streaming to the sinks, of progress
#: marks (what a resume keeps) and of spreading over actors, so a stage's whole window (1,024 rows
#: for back-translation) would leave a second actor idle on small inputs and write nothing for long.
DEFAULT_MAX_BATCH_ROWS = 256


def _window(spec: PipelineSpec, stage: Any) -> int:
    info = METHODS[stage.method]
    window = int(getattr(stage.options, info.window_field)) if info.window_field else spec.settings.window
    return min(window, DEFAULT_MAX_BATCH_ROWS)


def _uses_gpu(engine: EngineSpec) -> int:
    """GPUs one replica of ``engine`` wants when the cluster has GPUs (0: a CPU engine)."""
    if engine.backend == "python" or engine.options is None:
        return 0
    device = getattr(engine.options, "device", "cpu")
    if device not in ("auto", "cuda"):
        return 0
    if engine.type == "translation" and engine.backend == "bergamot":
        return 0
    if engine.type == "translation" and engine.backend == "auto" and engine.forward_model is None \
            and engine.model in (None, "embedded"):
        return 0  # the embedded Bergamot models run on CPU
    return int(getattr(engine.options, "tensor_parallel_size", 1) or 1)


def _gpus_for(engine: EngineSpec, options: RayOptions, cluster: Mapping[str, float], where: str) -> float:
    if options.num_gpus_per_actor is not None:
        gpus = float(options.num_gpus_per_actor)
    else:
        gpus = float(_uses_gpu(engine)) if cluster.get("GPU", 0) > 0 else 0.0
    if getattr(engine.options, "device", None) == "cuda" and not cluster.get("GPU", 0):
        raise OptionError(f"engines.{engine.name}.device", "cuda", f"{where} needs GPUs but the Ray cluster has none "
                                                                   f"(resources: {dict(cluster)})")
    if gpus > cluster.get("GPU", 0):
        # Ray would wait for such an actor forever ("No available node types can fulfill ...")
        raise OptionError("num_gpus_per_actor", gpus, f"{where} asks for {gpus:g} GPU(s) per actor but the Ray "
                                                      f"cluster has {cluster.get('GPU', 0):g} (resources: "
                                                      f"{dict(cluster)})")
    return gpus


def plan_pipeline(spec: PipelineSpec, options: RayOptions, cluster: Mapping[str, float]) -> RayPlan:
    """Split ``spec`` into roots, operators and driver stages, sized for ``cluster``
    (``ray.cluster_resources()``: ``{"CPU": n, "GPU": m, ...}``).

    Raises:
        OptionError: a pipeline shape the Ray executor does not run (the message lists what it
            runs), ``stage_replicas`` naming a stage that has no actors, or a CUDA engine on a
            cluster without GPUs.
    """
    by_name = {s.name: s for s in spec.stages}
    root_of: dict[str, str] = {name: name for name in spec.sources}
    placement: dict[str, str] = {}
    for stage in spec.stages:
        info = METHODS[stage.method]
        if info.generator:
            if stage.input not in spec.sources:
                raise OptionError(f"stages.{stage.name}.input", stage.input,
                                  "on the Ray executor a self-instruct stage must read a source directly (it runs "
                                  "first, in one actor, and its records become the rows of the stages after it); "
                                  "supported: source -> [self-instruct] -> any stages; dedup and the stages after "
                                  "it run on the driver")
            root_of[stage.name] = stage.name
            placement[stage.name] = "generator actor"
            continue
        root_of[stage.name] = root_of[stage.input]
        upstream = placement.get(stage.input)
        if info.stateful or upstream == "driver":
            placement[stage.name] = "driver"
        else:
            placement[stage.name] = "ray"

    roots = [RootPlan(name, "source", name) for name in spec.sources]
    roots += [RootPlan(s.name, "generator", s.input) for s in spec.stages if METHODS[s.method].generator]
    root_by_name = {r.name: r for r in roots}
    for sink in spec.sinks:
        root_by_name[root_of[sink.input]].sinks.append(sink)

    actor_stages: set[str] = set()
    for root in roots:
        members = [s for s in spec.stages if root_of[s.name] == root.name and s.name != root.name]
        root.driver_stages = [s.name for s in members if placement[s.name] == "driver"]
        keep = {by_name[n].input for n in root.driver_stages} | {s.input for s in root.sinks}
        root.keep = sorted(keep)
        prefix: list[str] = []
        for s in members:
            if placement[s.name] != "ray":
                continue
            if METHODS[s.method].engine:
                engine = spec.engines[s.engine]
                root.ops.append(OpPlan(stages=prefix + [s.name], engine_stage=s.name, engine=s.engine,
                                       batch_size=options.batch_size or _window(spec, s),
                                       num_cpus=float(options.num_cpus_per_actor),
                                       num_gpus=_gpus_for(engine, options, cluster, f"stage {s.name!r}"),
                                       concurrency=int(s.concurrency or METHODS[s.method].concurrency)))
                actor_stages.add(s.name)
                prefix = []
            elif root.ops:
                root.ops[-1].stages.append(s.name)
            else:
                prefix.append(s.name)
        if prefix:  # no engine stage: plain tasks
            first = by_name[prefix[0]]
            root.ops.append(OpPlan(stages=prefix, batch_size=options.batch_size or _window(spec, first),
                                   num_cpus=float(options.num_cpus_per_task)))
        for op in root.ops:
            for name in op.stages:
                placement[name] = "ray actors" if op.engine_stage else "ray tasks"
        _size(root, spec, options, cluster)
        _drops(root, spec)
        if root.ops:
            root.block_rows = max(1, min(op.batch_size for op in root.ops))
        if root.kind == "generator":
            engine = spec.engines[by_name[root.name].engine]
            gpus = _gpus_for(engine, options, cluster, f"stage {root.name!r}")
            root.generator = {"num_cpus": float(options.num_cpus_per_actor), "num_gpus": gpus,
                              "threads": {engine.name: max(1, int(options.num_cpus_per_actor))} if not gpus else {}}
    unknown = sorted(set(options.stage_replicas) - actor_stages)
    if unknown:
        raise OptionError("stage_replicas", unknown, f"not engine stages running on Ray actors (those are: "
                                                     f"{', '.join(sorted(actor_stages)) or 'none'})")
    return RayPlan(roots=roots, cluster={k: float(v) for k, v in cluster.items() if k in ("CPU", "GPU")},
                   placement=placement)


def _size(root: RootPlan, spec: PipelineSpec, options: RayOptions, cluster: Mapping[str, float]) -> None:
    """Replicas and engine threads of ``root``'s actor operators (module docstring)."""
    actor_ops = [op for op in root.ops if op.engine_stage]
    gpu_ops = [op for op in actor_ops if op.num_gpus > 0]
    cpu_ops = [op for op in actor_ops if op.num_gpus <= 0]
    cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    for op in gpu_ops:
        default = max(1, int(gpus // (op.num_gpus * len(gpu_ops))))
        op.replicas = options.stage_replicas.get(op.engine_stage or "") or options.replicas or default
    left = cpus - sum((op.replicas or 0) * op.num_cpus for op in gpu_ops)
    for op in cpu_ops:
        default = max(1, int(left // (op.num_cpus * len(cpu_ops)))) if left > 0 else 1
        op.replicas = options.stage_replicas.get(op.engine_stage or "") or options.replicas or default
        if op.engine:
            op.threads = {op.engine: max(1, int(op.num_cpus))}
    need_cpu = sum((op.replicas or 0) * op.num_cpus for op in actor_ops)
    need_gpu = sum((op.replicas or 0) * op.num_gpus for op in actor_ops)
    if need_cpu > cpus or need_gpu > gpus:
        # Ray Data starts the actors that fit and uses them; the others wait for resources
        log.warning("the actors of %s %r ask for %g CPU / %g GPU, the Ray cluster has %g / %g: only those that fit "
                    "will start (set fewer replicas, or add nodes)", root.kind, root.name, need_cpu, need_gpu,
                    cpus, gpus)


def _drops(root: RootPlan, spec: PipelineSpec) -> None:
    """Per operator, the columns that nothing after it reads (they are dropped there)."""
    from .ray_actors import column_name

    by_name = {s.name: s for s in spec.stages}
    last: dict[str, int] = {}
    for i, op in enumerate(root.ops):
        for name in op.stages:
            last[by_name[name].input] = i
            last.setdefault(name, i)  # produced here; read here at the latest
    keep = set(root.keep)
    for node, i in last.items():
        if node not in keep:
            root.ops[i].drop.append(column_name(node))
