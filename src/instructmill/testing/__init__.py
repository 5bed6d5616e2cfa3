"""Helpers for tests and benchmarks: small models built offline (no model hub).

:func:`build_marian` (MarianMT / OPUS-MT shaped, default a seeded "cipher" translator with real
multi-token outputs) and :func:`build_m2m100` (M2M100 with random weights). torch, transformers
and sentencepiece are imported only when a builder runs.
"""
from .m2m100 import build_m2m100
from .marian import OPUS_MT_EN_DE_SHAPE, TINY_SHAPE, build_marian, default_corpus

__all__ = ["build_marian", "build_m2m100", "default_corpus", "OPUS_MT_EN_DE_SHAPE", "TINY_SHAPE"]
