"""instructmill: high-throughput construction of instruction-tuning data.

The Python API (everything the CLI does), importable from the top level::

    from instructmill import BackTranslator, TemplateFiller, load_llm, Responder, Pipeline

* records in and out: :func:`~instructmill.io.readers.read_records`,
  :func:`~instructmill.io.run.open_run`;
* templates: :class:`~instructmill.methods.template.TemplateFiller`,
  :func:`~instructmill.methods.template.load_template`;
* back-translation: :class:`~instructmill.methods.backtranslation.BackTranslator` with
  :class:`~instructmill.methods.backtranslation.BackTranslationOptions`,
  :class:`~instructmill.engine.scheduler.BatchingOptions` and
  :class:`~instructmill.engine.ctranslate2_backend.CTranslate2Options`;
* LLM generation: :class:`~instructmill.llm_api.LLM` (vLLM-shaped ``generate`` / ``chat``) and
  :func:`~instructmill.models.llm_backends.load_llm` (vLLM, CTranslate2, transformers or any
  OpenAI-compatible server; plugins through ``register_llm_backend``) with :class:`~instructmill.engine.llm.LLMEngineOptions` and
  :class:`~instructmill.engine.llm.SamplingOptions`; the methods
  :class:`~instructmill.methods.self_instruct.SelfInstruct`,
  :class:`~instructmill.methods.humpback.Humpback`, :class:`~instructmill.methods.evol.Evolver`
  :class:`~instructmill.methods.respond.Responder` and :class:`~instructmill.methods.judge.Judge`,
  each with its options class;
* pipelines: :class:`~instructmill.pipeline.Pipeline`, :class:`~instructmill.pipeline.ray_plan.RayOptions`;
* conversion: :func:`~instructmill.converters.convert_model` (HF -> CTranslate2, verified).

Every name is imported on first use (module ``__getattr__``), so ``import instructmill`` imports no
engine (CTranslate2, transformers, torch, vLLM, Ray) and stays fast.

instructmill sends nothing anywhere. Two of the engines it drives report usage by default (vLLM to
stats.vllm.ai, a Ray instance started by ``ray.init`` to usage-stats.ray.io) and huggingface_hub adds
telemetry to downloads; importing instructmill switches these off for this process and the ones it
starts, unless the variable is already set (an explicit choice wins): see :data:`NO_TELEMETRY`.
vLLM and Ray read theirs when they start; huggingface_hub reads its own when it is imported, so it
applies when instructmill is imported first (as the CLI does).
"""
from __future__ import annotations

import os as _os

__version__ = "0.1.0"

#: Environment defaults that turn off the engines' own usage reports (vLLM's ``usage_lib``, Ray's
#: ``usage_lib``, huggingface_hub's download telemetry); set with ``os.environ.setdefault``.
NO_TELEMETRY = {"VLLM_NO_USAGE_STATS": "1", "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_DISABLE_TELEMETRY": "1"}
for _name, _value in NO_TELEMETRY.items():
    _os.environ.setdefault(_name, _value)
del _name, _value, _os

#: public name -> the module that defines it (imported on first access)
_LAZY = {
    # records in and out
    "read_records": "instructmill.io.readers",
    "open_run": "instructmill.io.run",
    "InputRecord": "instructmill.records",
    "OutputRecord": "instructmill.records",
    "Example": "instructmill.records",
    # templates
    "TemplateFiller": "instructmill.methods.template",
    "load_template": "instructmill.methods.template",
    # back-translation
    "BackTranslator": "instructmill.methods.backtranslation",
    "BackTranslationOptions": "instructmill.methods.backtranslation",
    "BatchingOptions": "instructmill.engine.scheduler",
    "CTranslate2Options": "instructmill.engine.ctranslate2_backend",
    # LLM generation
    "LLM": "instructmill.llm_api",
    "SamplingParams": "instructmill.llm_api",
    "load_llm": "instructmill.models.llm_backends",
    "register_llm_backend": "instructmill.models.llm_backends",
    "LLMEngineOptions": "instructmill.engine.llm",
    "SamplingOptions": "instructmill.engine.llm",
    "SelfInstruct": "instructmill.methods.self_instruct",
    "SelfInstructOptions": "instructmill.methods.self_instruct",
    "Humpback": "instructmill.methods.humpback",
    "HumpbackOptions": "instructmill.methods.humpback",
    "Evolver": "instructmill.methods.evol",
    "EvolOptions": "instructmill.methods.evol",
    "Responder": "instructmill.methods.respond",
    "RespondOptions": "instructmill.methods.respond",
    "Judge": "instructmill.methods.judge",
    "JudgeOptions": "instructmill.methods.judge",
    # pipelines
    "Pipeline": "instructmill.pipeline",
    "RayOptions": "instructmill.pipeline.ray_plan",
    # conversion
    "convert_model": "instructmill.converters",
}

__all__ = [*_LAZY, "NO_TELEMETRY", "__version__"]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'instructmill' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
