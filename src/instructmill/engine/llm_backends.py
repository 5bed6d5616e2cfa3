"""``load_llm``: an LLM backend from a backend name and a model argument.

Model arguments (see :func:`instructmill.models.llm.resolve_llm`): ``None`` / ``"embedded"`` (the
bundled SmolLM2-135M-Instruct, converted once into the cache), a known model name, an HF folder, a
converted CTranslate2 folder, a GGUF file, or an HF hub id (when a hub is reachable).
"""
from __future__ import annotations

from ..errors import OptionError
from .llm import LLMBackend, LLMEngineOptions

BACKENDS = ("vllm", "ctranslate2", "transformers")


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def load_llm(backend: str = "auto", model: str | None = None, options: LLMEngineOptions | None = None,
             *, allow_unverified: bool = False) -> LLMBackend:
    """Create the backend.

    Args:
        backend: ``"vllm"``, ``"ctranslate2"``, ``"transformers"`` or ``"auto"`` (vLLM when installed, else
            CTranslate2).
        model: model argument (default: the embedded model).
        options: engine options.

    Raises:
        OptionError: unknown backend. ModelNotFoundError / ConversionError from model resolution.
    """
    from ..models.llm import resolve_llm

    options = options or LLMEngineOptions()
    if backend == "auto":
        backend = "vllm" if vllm_available() else "ctranslate2"
    if backend == "vllm":
        from .vllm_backend import VLLMBackend

        return VLLMBackend(str(resolve_llm(model, fmt="hf")), options)
    if backend == "ctranslate2":
        from .ct2_generator_backend import CTranslate2GeneratorBackend

        quantization = options.compute_type if options.compute_type not in ("auto", "default") else "float32"
        return CTranslate2GeneratorBackend(str(resolve_llm(model, fmt="ct2", quantization=quantization)), options,
                                           allow_unverified=allow_unverified)
    if backend == "transformers":
        from .transformers_llm_backend import TransformersLLMBackend

        return TransformersLLMBackend(str(resolve_llm(model, fmt="hf")), options)
    raise OptionError("backend", backend, f"choose one of {', '.join(BACKENDS)} or auto")
