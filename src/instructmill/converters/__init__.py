"""HF transformers -> CTranslate2 conversion with verification (``instructmill convert``).

Public API: :func:`convert_model`, :class:`ConversionResult`, :data:`QUANTIZATIONS`,
:func:`read_manifest`, :func:`load_verified_manifest`, :func:`find_converter`,
:func:`register`, :func:`supported_architectures`.

Importing this package is cheap: torch, transformers and ctranslate2 are imported only when a
conversion runs.
"""
from .base import QUANTIZATIONS, ConversionResult, convert_model
from .manifest import MANIFEST_FORMAT, MANIFEST_NAME, load_verified_manifest, read_manifest
from .registry import Converter, find_converter, register, supported_architectures
from .resolve import ResolvedModel, resolve_model
from .verify import DEFAULT_MIN_TOKEN_AGREEMENT, DEFAULT_SENTENCES, VerificationReport

__all__ = [
    "QUANTIZATIONS", "ConversionResult", "convert_model",
    "MANIFEST_FORMAT", "MANIFEST_NAME", "load_verified_manifest", "read_manifest",
    "Converter", "find_converter", "register", "supported_architectures",
    "ResolvedModel", "resolve_model",
    "DEFAULT_MIN_TOKEN_AGREEMENT", "DEFAULT_SENTENCES", "VerificationReport",
]
