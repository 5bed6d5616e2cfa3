"""Registry of converters, keyed by HF architecture (``config.architectures[0]``) and model_type.

Each architecture family is one small :class:`Converter` subclass registered with
:func:`register`. :func:`find_converter` picks the class for a model's ``config.json`` (the
architecture name first, then ``model_type``); an unknown model raises a
:class:`~instructmill.errors.ConversionError` that lists what is supported.

Built-in converters live in :mod:`instructmill.converters.seq2seq` (MarianMT, M2M100/NLLB) and
:mod:`instructmill.converters.decoder` (decoder-only LLMs: Llama, Mistral, Qwen2/3, Gemma 1/2/3).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..errors import ConversionError

__all__ = ["Converter", "VerificationBatch", "register", "find_converter",
           "supported_architectures"]

_BY_ARCH: dict[str, type[Converter]] = {}
_BY_TYPE: dict[str, type[Converter]] = {}


@dataclass
class VerificationBatch:
    """Inputs for one verification run, in both engines' terms.

    Attributes:
        source_tokens: per sentence, the source tokens CTranslate2 receives (special tokens
            included, e.g. a trailing ``</s>``).
        target_prefix: per sentence, tokens forced at the start of the output (CTranslate2
            ``target_prefix``; e.g. ``["__de__"]`` for M2M100), or ``None``.
        hf_inputs: keyword arguments for HF ``generate`` (``input_ids``, ``attention_mask``).
        hf_generate: extra ``generate`` settings (e.g. ``forced_bos_token_id``).
        languages: the ``{"source", "target"}`` codes used (for the report).
    """

    source_tokens: list[list[str]]
    target_prefix: list[list[str]] | None
    hf_inputs: dict[str, Any]
    hf_generate: dict[str, Any] = field(default_factory=dict)
    languages: dict[str, str | None] = field(default_factory=dict)


class Converter:
    """One architecture family that converts from HF transformers to CTranslate2.

    Subclasses set the class attributes and override the hooks they need. Instances are
    stateless; every hook gets the model folder or objects it works on.

    Attributes:
        name: short name (e.g. ``"marian"``).
        kind: what the converted model does (``"translation"`` or ``"generation"``).
        architectures: ``config.architectures[0]`` values handled.
        model_types: ``config.model_type`` values handled (fallback when no architectures).
        tokenizer_files: files copied next to ``model.bin`` when they exist.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "translation"
    architectures: ClassVar[tuple[str, ...]] = ()
    model_types: ClassVar[tuple[str, ...]] = ()
    tokenizer_files: ClassVar[tuple[str, ...]] = (
        "source.spm", "target.spm", "vocab.json", "tokenizer_config.json",
        "special_tokens_map.json", "sentencepiece.bpe.model", "tokenizer.json",
        "generation_config.json", "added_tokens.json",
    )

    # --- hooks ----------------------------------------------------------------------------------
    def model_class(self):
        """The transformers class that loads the model (imports transformers)."""
        raise NotImplementedError

    def patch_tokenizer(self, tokenizer: Any) -> Any:
        """Return the tokenizer CTranslate2's converter should see (default: unchanged)."""
        return tokenizer

    def languages(self, source: str, model_dir: Path, source_lang: str | None,
                  target_lang: str | None) -> dict[str, str | None] | None:
        """The language pair recorded in the manifest, or ``None`` when unknown."""
        if source_lang or target_lang:
            return {"source": source_lang, "target": target_lang}
        return None

    def tokenizer_manifest(self, tokenizer: Any, languages: dict | None) -> dict[str, Any]:
        """The manifest's ``tokenizer`` entry (``tokenizer``: the loaded HF tokenizer)."""
        return {"type": "hf"}

    def max_input_tokens(self, config: dict[str, Any]) -> int | None:
        """Longest source in tokens (from ``max_position_embeddings``)."""
        value = config.get("max_position_embeddings")
        return int(value) if isinstance(value, int) else None

    def verification_batch(self, tokenizer: Any, sentences: Sequence[str],
                           languages: dict | None) -> VerificationBatch:
        """Tokenize ``sentences`` for both engines (see :class:`VerificationBatch`)."""
        raise NotImplementedError

    def decoding(self, model_dir: Path, config: dict[str, Any], vocab: set[str],
                 tokenizer: Any) -> dict[str, Any] | None:
        """The manifest's ``decoding`` entry, or ``None`` for the translation defaults (mapped
        from ``generation_config.json`` by :mod:`instructmill.converters.base`)."""
        return None

    def finalize_output(self, model_dir: Path, out_dir: Path, tokenizer: Any) -> None:
        """Adjust the converted folder ``out_dir`` before the manifest is written (default:
        nothing)."""
        return None


def register(cls: type[Converter]) -> type[Converter]:
    """Class decorator: register ``cls`` for its ``architectures`` and ``model_types``.

    Raises ``ValueError`` if it names no architecture, or one already taken by another class.
    """
    if not cls.architectures:
        raise ValueError(f"{cls.__name__} names no architectures")
    for arch in cls.architectures:
        other = _BY_ARCH.get(arch)
        if other is not None and other is not cls:
            raise ValueError(f"architecture {arch} is already registered by {other.__name__}")
        _BY_ARCH[arch] = cls
    for mt in cls.model_types:
        _BY_TYPE.setdefault(mt, cls)
    return cls


def _load_builtins() -> None:
    from . import decoder, seq2seq  # noqa: F401  (registers the built-in converters)


def supported_architectures() -> dict[str, str]:
    """Supported architecture -> converter name, e.g. ``{"MarianMTModel": "marian"}``."""
    _load_builtins()
    return {arch: cls.name for arch, cls in sorted(_BY_ARCH.items())}


def find_converter(config: dict[str, Any], *, where: str = "model") -> Converter:
    """Return the converter for a model's parsed ``config.json``.

    Looks up ``config["architectures"][0]`` first, then ``config["model_type"]``.

    Raises:
        ConversionError: no converter is registered; the message names the model's architecture
            and lists the supported ones.
    """
    _load_builtins()
    archs = config.get("architectures") or []
    arch = archs[0] if isinstance(archs, list) and archs else None
    cls = _BY_ARCH.get(arch) if arch else None
    if cls is None and not arch:
        cls = _BY_TYPE.get(config.get("model_type") or "")
    if cls is None:
        supported = ", ".join(f"{a} ({c.model_types[0] if c.model_types else c.name})"
                              for a, c in sorted(_BY_ARCH.items()))
        found = arch or "none"
        raise ConversionError(
            f"cannot convert {where}: unsupported architecture {found} "
            f"(model_type {config.get('model_type')!r}); supported architectures: {supported}")
    return cls()
