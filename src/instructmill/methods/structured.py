"""JSON schemas the LLM methods constrain their outputs with (structured outputs), and the switch.

With a backend that supports it (:attr:`~instructmill.engine.llm.LLMBackend.supports_json_schema`:
vLLM in process through ``StructuredOutputsParams(json=...)``, an OpenAI-compatible server through
``response_format``), a method sends one of these schemas with its requests, so every sample is
valid JSON of the expected shape and parsing cannot fail on the format (only on content, e.g. an
empty instruction). Backends that cannot constrain decoding (CTranslate2, transformers) get the
free-text prompts and parsers. Each method counts ``parse_ok`` / ``parse_attempts`` so the run
summary shows the parse rate with and without.
"""
from __future__ import annotations

from typing import Any

__all__ = ["SCORE_SCHEMA", "TASKS_SCHEMA", "use_structured", "tasks_schema"]

#: A 1..5 rating with its reason first (the reasoning the paper's prompt asks for, then the score).
SCORE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"reason": {"type": "string", "maxLength": 600},
                   "score": {"type": "integer", "minimum": 1, "maximum": 5}},
    "required": ["reason", "score"],
    "additionalProperties": False,
}


def tasks_schema(max_tasks: int) -> dict[str, Any]:
    """Alpaca-style tasks: ``{"tasks": [{"instruction", "input", "output"}, ...]}``, 1..``max_tasks`` items."""
    return {
        "type": "object",
        "properties": {"tasks": {
            "type": "array", "minItems": 1, "maxItems": max_tasks,
            "items": {"type": "object",
                      "properties": {"instruction": {"type": "string", "minLength": 1},
                                     "input": {"type": "string"},
                                     "output": {"type": "string"}},
                      "required": ["instruction", "input", "output"],
                      "additionalProperties": False}}},
        "required": ["tasks"],
        "additionalProperties": False,
    }


#: The schema of :func:`tasks_schema` with 8 tasks at most (Self-Instruct's default per sample).
TASKS_SCHEMA = tasks_schema(8)


def use_structured(option: bool | None, llm: Any) -> bool:
    """Whether to constrain outputs: the method's ``structured`` option, ``None`` = when the backend
    supports JSON schemas.

    Raises:
        OptionError: ``structured=True`` on a backend that cannot constrain decoding.
    """
    supported = bool(getattr(llm, "supports_json_schema", False))
    if option is None:
        return supported
    if option and not supported:
        from ..errors import OptionError

        raise OptionError("structured", True, f"the {getattr(llm, 'name', 'llm')} backend cannot constrain "
                          "outputs to a JSON schema; use vllm or openai, or leave structured unset")
    return bool(option)
