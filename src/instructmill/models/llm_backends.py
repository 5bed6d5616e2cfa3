"""``load_llm``: an LLM backend from a backend name and a model argument, through a registry.

It lives in ``models`` (model arguments -> backends), above ``engine``: the loaders resolve model
arguments (:func:`instructmill.models.llm.resolve_llm`) and build engine backends; the engine
never imports ``models``.

Backends register a loader with :func:`register_llm_backend` (the built-ins below use the same
hook a plugin would). Model arguments (see :func:`instructmill.models.llm.resolve_llm`): ``None`` /
``"embedded"`` (the bundled SmolLM2-135M-Instruct, converted once into the cache), a known model
name, an HF folder, a converted CTranslate2 folder, a GGUF file, or an HF hub id (when a hub is
reachable); for ``openai``, the served model's name.
"""
from __future__ import annotations

from typing import Callable

from ..errors import OptionError
from ..engine.llm import LLMBackend, LLMEngineOptions

__all__ = ["LLM_BACKENDS", "backend_names", "load_llm", "register_llm_backend", "vllm_available"]

#: ``name -> loader(model, options, allow_unverified) -> LLMBackend``
LLM_BACKENDS: dict[str, Callable[..., LLMBackend]] = {}


def register_llm_backend(name: str) -> Callable[[Callable[..., LLMBackend]], Callable[..., LLMBackend]]:
    """Decorator: register ``loader(model, options, *, allow_unverified) -> LLMBackend`` as ``name``.

    Raises:
        OptionError: ``name`` is taken, or is ``"auto"``.
    """

    def decorate(loader: Callable[..., LLMBackend]) -> Callable[..., LLMBackend]:
        if name == "auto" or name in LLM_BACKENDS:
            raise OptionError("backend", name, "is already registered")
        LLM_BACKENDS[name] = loader
        return loader

    return decorate


def backend_names() -> list[str]:
    """Registered backend names (plus ``"auto"`` first), for CLI choices and spec checks."""
    return ["auto", *LLM_BACKENDS]


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


@register_llm_backend("vllm")
def _vllm(model: str | None, options: LLMEngineOptions, *, allow_unverified: bool = False) -> LLMBackend:
    from .llm import resolve_llm
    from ..engine.vllm_backend import VLLMBackend

    return VLLMBackend(str(resolve_llm(model, fmt="hf")), options)


@register_llm_backend("ctranslate2")
def _ctranslate2(model: str | None, options: LLMEngineOptions, *, allow_unverified: bool = False) -> LLMBackend:
    from .llm import resolve_llm
    from ..engine.ct2_generator_backend import CTranslate2GeneratorBackend

    quantization = options.compute_type if options.compute_type not in ("auto", "default") else "float32"
    return CTranslate2GeneratorBackend(str(resolve_llm(model, fmt="ct2", quantization=quantization)), options,
                                       allow_unverified=allow_unverified)


@register_llm_backend("transformers")
def _transformers(model: str | None, options: LLMEngineOptions, *, allow_unverified: bool = False) -> LLMBackend:
    from .llm import resolve_llm
    from ..engine.transformers_llm_backend import TransformersLLMBackend

    return TransformersLLMBackend(str(resolve_llm(model, fmt="hf")), options)


@register_llm_backend("openai")
def _openai(model: str | None, options: LLMEngineOptions, *, allow_unverified: bool = False) -> LLMBackend:
    from ..engine.openai_backend import OpenAIBackend

    return OpenAIBackend(model, options)


def load_llm(backend: str = "auto", model: str | None = None, options: LLMEngineOptions | None = None,
             *, allow_unverified: bool = False) -> LLMBackend:
    """Create the backend.

    Args:
        backend: a registered name (``"vllm"``, ``"ctranslate2"``, ``"transformers"``, ``"openai"``)
            or ``"auto"``: ``openai`` when ``options.base_url`` is set, else vLLM when installed,
            else CTranslate2.
        model: model argument (default: the embedded model; ``openai``: the server's first model).
        options: engine options.

    Raises:
        OptionError: unknown backend. ModelNotFoundError / ConversionError from model resolution;
        OpenAIServerError when a server does not answer.
    """
    options = options or LLMEngineOptions()
    if backend == "auto":
        backend = "openai" if options.base_url else "vllm" if vllm_available() else "ctranslate2"
    loader = LLM_BACKENDS.get(backend)
    if loader is None:
        raise OptionError("backend", backend, f"choose one of {', '.join(backend_names())}")
    return loader(model, options, allow_unverified=allow_unverified)
