"""A fake :class:`~instructmill.engine.llm.LLMBackend` for method tests: scripted or rule-based.

Tokens are characters: a text prompt is its code points; chat ``messages`` are rendered as
``<|user|>content<|end|>`` turns followed by ``<|assistant|>`` (so a rule can tell chat from
raw text), then encoded the same way. Output "tokens" are whitespace-separated words, so
``max_tokens`` cuts after that many words with ``finish_reason="length"``.

A rule is ``rule(prompt_text, seed) -> str``; :meth:`FakeLLM.scripted` answers from a list in
call order. Every call is logged in ``calls`` as ``(prompt_text, SamplingOptions)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from instructmill.engine.llm import LLMBackend, LLMEngineOptions, Prompt, Request, Sample

Rule = Callable[[str, "int | None"], str]


def render_chat(messages: Sequence[dict]) -> str:
    return "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in messages) + "<|assistant|>"


@dataclass
class _Tok:
    """The little of a tokenizer the base class may touch."""

    bos_token_id: int | None = None


class FakeLLM(LLMBackend):
    """Rule-based fake LLM (see the module docstring)."""

    name = "fake"

    def __init__(self, rule: Rule, *, max_model_len: int = 100_000, model: str = "fake-model",
                 options: LLMEngineOptions | None = None):
        super().__init__(options)
        self.rule = rule
        self.max_model_len = max_model_len
        self.model = model
        self.tokenizer = _Tok()
        self.calls: list[tuple[str, object]] = []

    @classmethod
    def scripted(cls, outputs: Sequence[str], **kwargs) -> "FakeLLM":
        """Answers ``outputs[0]``, ``outputs[1]``, ... in request order (then repeats the last)."""
        it = iter(outputs)
        last = [outputs[-1] if outputs else ""]

        def rule(prompt: str, seed: int | None) -> str:
            try:
                last[0] = next(it)
            except StopIteration:
                pass
            return last[0]

        return cls(rule, **kwargs)

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        if not isinstance(prompt, str) and prompt and all(isinstance(t, int) for t in prompt):
            return list(prompt)  # token ids (code points here)
        text = prompt if isinstance(prompt, str) else render_chat(prompt)
        return [ord(c) for c in text]

    def decode(self, token_ids: list[int]) -> str:
        return "".join(map(chr, token_ids))

    def _generate(self, requests: list[Request]) -> list[Sample]:
        out = []
        for req in requests:
            prompt = self.decode(req.prompt_ids)
            self.calls.append((prompt, req.params))
            text = self.rule(prompt, req.params.seed)
            words = text.split(" ")
            finish = "stop"
            if len([w for w in text.split() if w]) > req.params.max_tokens:
                kept, count = [], 0
                for w in words:
                    count += bool(w.strip())
                    if count > req.params.max_tokens:
                        break
                    kept.append(w)
                text, finish = " ".join(kept), "length"
            out.append(Sample(text=text, token_ids=[ord(c) for c in text], finish_reason=finish))
        return out
