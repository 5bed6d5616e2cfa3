"""``instructmill.LLM``: the LLM engines behind a vLLM-shaped API, for use from other pipelines.

::

    from instructmill import LLM, SamplingParams

    llm = LLM()                                            # embedded SmolLM2; vLLM when installed
    outputs = llm.generate(["Name a color.", "Name a fruit."], SamplingParams(temperature=0, max_tokens=16))
    for out in outputs:                                    # input order, always
        print(out.status, out.outputs[0].text)
    llm.chat([[{"role": "user", "content": "Hi!"}]], SamplingParams(max_tokens=32))
    LLM(backend="openai", base_url="http://127.0.0.1:8000/v1")   # any OpenAI-compatible server

Names follow vLLM's ``LLM`` / ``SamplingParams`` (``SamplingParams`` is
:class:`~instructmill.engine.llm.SamplingOptions`); results are
:class:`~instructmill.engine.llm.GenerationResult` with ``outputs`` (vLLM's name) as well as
``samples``, a ``status`` per prompt (``ok``, ``empty_prompt``, ``prompt_too_long``) and the seed of
every sample. Inputs may be any iterable (lists, generators, a ``datasets`` column); a bare
``str`` where a list is expected is refused with a ``TypeError`` (it would be read as one prompt
per character).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from .engine.llm import GenerationResult, LLMEngineOptions, Prompt, SamplingOptions

__all__ = ["LLM", "SamplingParams"]

#: vLLM's name for the sampling options.
SamplingParams = SamplingOptions


def _sequence_of_prompts(prompts: Any, what: str) -> Iterable[Any]:
    if isinstance(prompts, (str, bytes)):
        raise TypeError(f"{what} must be a list (or any iterable) of prompts, not a single {type(prompts).__name__}: "
                        f"wrap it as [{what[:-1]}]")
    if isinstance(prompts, dict):
        raise TypeError(f"{what} must be a list of prompts, not a dict")
    try:
        return iter(prompts)
    except TypeError:
        raise TypeError(f"{what} must be an iterable of prompts, not {type(prompts).__name__}") from None


class LLM:
    """An LLM engine (vLLM, CTranslate2, transformers or an OpenAI-compatible server).

    Args:
        model: ``None`` / ``"embedded"`` (SmolLM2-135M-Instruct, shipped on PyPI), a known name, an HF
            folder, a CTranslate2 folder, a GGUF file, an HF hub id, or the served model's name
            (``backend="openai"``).
        backend: ``"auto"`` (openai when ``base_url`` is given, else vLLM when installed, else
            CTranslate2), ``"vllm"``, ``"ctranslate2"``, ``"transformers"``, ``"openai"``, or a
            registered plugin backend.
        allow_unverified: use a converted model whose verification failed.
        **engine_options: :class:`~instructmill.engine.llm.LLMEngineOptions` fields (vLLM ``LLM``
            names: ``max_model_len``, ``max_num_seqs``, ``dtype``, ``enable_prefix_caching``...;
            ``base_url``, ``max_concurrency`` for servers).

    Raises:
        OptionError: an unknown backend or option value. ModelNotFoundError / ConversionError:
            the model cannot be found or converted. OpenAIServerError: the server does not answer.
    """

    def __init__(self, model: str | None = None, *, backend: str = "auto", allow_unverified: bool = False,
                 **engine_options: Any):
        from .models.llm_backends import load_llm

        self.options = LLMEngineOptions(**engine_options)
        self.engine = load_llm(backend, model, self.options, allow_unverified=allow_unverified)

    @property
    def backend(self) -> str:
        return self.engine.name

    @property
    def model(self) -> str:
        return self.engine.model

    def generate(self, prompts: Iterable[Prompt],
                 sampling_params: SamplingOptions | list[SamplingOptions] | None = None) -> list[GenerationResult]:
        """Sample from every prompt (text, token ids, or chat messages); results in input order.

        Raises:
            TypeError: ``prompts`` is a bare string or not iterable.
            OptionError: a list of params whose length differs from the prompts'.
        """
        items = _sequence_of_prompts(prompts, "prompts")
        params = sampling_params
        if isinstance(params, (list, tuple)):
            items = list(items)
        return self.engine.generate(list(items) if not isinstance(items, list) else items, params)

    def generate_iter(self, prompts: Iterable[Prompt],
                      sampling_params: SamplingOptions | None = None) -> Iterator[GenerationResult]:
        """Like :meth:`generate`, streaming: results come out chunk by chunk, in input order."""
        return self.engine.generate_iter(_sequence_of_prompts(prompts, "prompts"), sampling_params)

    def chat(self, messages: Iterable[list[dict[str, str]]] | list[dict[str, str]],
             sampling_params: SamplingOptions | list[SamplingOptions] | None = None) -> list[GenerationResult]:
        """Chat completions: one conversation (a list of ``{"role", "content"}``) or a list of them,
        rendered with the model's chat template (by the server for ``openai``).

        Raises:
            TypeError: a bare string, or a conversation that is not a list of role/content dicts.
        """
        items = list(_sequence_of_prompts(messages, "messages"))
        if items and isinstance(items[0], dict):  # one conversation, as vLLM's LLM.chat accepts
            items = [items]
        for i, conv in enumerate(items):
            if not isinstance(conv, (list, tuple)) or not all(isinstance(m, dict) and "role" in m for m in conv):
                raise TypeError(f"messages[{i}] must be a list of {{'role', 'content'}} dicts")
        return self.engine.generate(items, sampling_params)

    def close(self) -> None:
        """Shut the engine down (vLLM's engine process, a server connection pool)."""
        self.engine.close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
