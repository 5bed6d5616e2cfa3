"""Converters for sequence-to-sequence translation models: MarianMT (OPUS-MT) and M2M100/NLLB.

CTranslate2's own loaders (``ctranslate2.converters.transformers.MarianMTLoader`` and
``M2M100Loader``) build the model; these classes add what instructmill needs around them:
language pairs, tokenizer entries for the manifest, and inputs for verification.
"""
from __future__ import annotations

import re
from typing import Any

from ..errors import ConversionError
from .registry import Converter, VerificationBatch, register
from .manifest import read_json_object as _read_json

__all__ = ["MarianConverter", "M2M100Converter", "parse_opus_mt_languages"]

_CODE = r"[A-Za-z]{2,}(?:_[A-Za-z]+)?"
_OPUS_RE = re.compile(rf"opus-mt-(?:tc-(?:big|base|tiny|small)-)?({_CODE})-({_CODE})$")


def parse_opus_mt_languages(name: str) -> tuple[str, str] | None:
    """Parse ``(source, target)`` from an OPUS-MT id or folder name, else ``None``.

    ``"Helsinki-NLP/opus-mt-en-de"`` -> ``("en", "de")``;
    ``"opus-mt-tc-big-en-pt"`` -> ``("en", "pt")``; ``"my-model"`` -> ``None``.
    """
    last = name.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
    m = _OPUS_RE.search(last)
    return (m.group(1), m.group(2)) if m else None




@register
class MarianConverter(Converter):
    """MarianMT / OPUS-MT (``MarianMTModel``): sentencepiece source/target models, shared vocab.

    CTranslate2 drops ``<pad>`` from the vocabulary (the decoder starts from a zero embedding),
    so ``<pad>`` cannot be generated and needs no suppression. Source tokens end with ``</s>``.
    Multilingual-target OPUS-MT models (vocabulary entries like ``>>fra<<``) take the target
    token as the first source token.
    """

    name = "marian"
    architectures = ("MarianMTModel",)
    model_types = ("marian",)

    def model_class(self):
        from transformers import MarianMTModel
        return MarianMTModel

    def languages(self, source, model_dir, source_lang, target_lang):
        parsed = parse_opus_mt_languages(source) or parse_opus_mt_languages(model_dir.name)
        tok_cfg = _read_json(model_dir / "tokenizer_config.json")
        src = source_lang or (parsed[0] if parsed else None) or tok_cfg.get("source_lang")
        tgt = target_lang or (parsed[1] if parsed else None) or tok_cfg.get("target_lang")
        if not src and not tgt:
            return None
        return {"source": src, "target": tgt}

    def _target_token(self, tokenizer, languages) -> str | None:
        tgt = (languages or {}).get("target")
        token = f">>{tgt}<<" if tgt else None
        codes = getattr(tokenizer, "supported_language_codes", None) or []
        return token if token in codes else None

    def tokenizer_manifest(self, tokenizer, languages):
        entry: dict[str, Any] = {"type": "sentencepiece", "source_spm": "source.spm",
                                 "target_spm": "target.spm", "source_suffix": ["</s>"]}
        token = self._target_token(tokenizer, languages)
        if token:
            entry["source_prefix"] = [token]
        return entry

    def verification_batch(self, tokenizer, sentences, languages):
        token = self._target_token(tokenizer, languages)
        texts = [f"{token} {s}" if token else s for s in sentences]
        ids = tokenizer(texts).input_ids
        return VerificationBatch(
            source_tokens=[tokenizer.convert_ids_to_tokens(x) for x in ids],
            target_prefix=None,
            hf_inputs=dict(tokenizer(texts, return_tensors="pt", padding=True)),
            languages=dict(languages or {}),
        )


class _LangVocabTokenizer:
    """Proxy for an M2M100 slow tokenizer whose ``get_vocab`` also lists the language tokens.

    With transformers 5, ``M2M100Tokenizer.get_vocab()`` and ``special_tokens_map`` no longer
    include the 100 ``__xx__`` language tokens, so CTranslate2 4.x's ``M2M100Loader`` builds a
    vocabulary 100 entries short ("Source vocabulary 0 has size ... but the model expected ...").
    """

    def __init__(self, tokenizer: Any):
        self._tokenizer = tokenizer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)

    def get_vocab(self) -> dict[str, int]:
        vocab = dict(self._tokenizer.get_vocab())
        vocab.update(self._tokenizer.lang_token_to_id)
        return vocab


@register
class M2M100Converter(Converter):
    """M2M100 and NLLB (both ``M2M100ForConditionalGeneration``): one multilingual model.

    The source starts with the source-language token (the tokenizer adds it from ``src_lang``);
    the output starts with the target-language token (CTranslate2 ``target_prefix``, HF
    ``forced_bos_token_id``). Language codes follow the tokenizer: ``"en"``/``"de"`` for M2M100
    (tokens ``__en__``), ``"eng_Latn"``/``"deu_Latn"`` for NLLB (the codes are the tokens).
    Verification defaults to English -> French when no languages are given.
    """

    name = "m2m100"
    architectures = ("M2M100ForConditionalGeneration",)
    model_types = ("m2m_100",)

    def model_class(self):
        from transformers import M2M100ForConditionalGeneration
        return M2M100ForConditionalGeneration

    def patch_tokenizer(self, tokenizer):
        lang = getattr(tokenizer, "lang_token_to_id", None)
        if lang and not set(lang) <= set(tokenizer.get_vocab()):
            return _LangVocabTokenizer(tokenizer)
        return tokenizer

    @staticmethod
    def _nllb_style(tokenizer) -> bool:
        return not hasattr(tokenizer, "get_lang_token")

    def lang_token(self, tokenizer, code: str) -> str:
        """The vocabulary token of a language code; ConversionError if the model lacks it."""
        token = code if self._nllb_style(tokenizer) else tokenizer.get_lang_token(code)
        tid = tokenizer.convert_tokens_to_ids(token)
        if tid is None or tid == tokenizer.unk_token_id:
            raise ConversionError(f"language code {code!r} is not known to this model's tokenizer")
        return token

    def _defaults(self, tokenizer, languages) -> dict[str, str]:
        nllb = self._nllb_style(tokenizer)
        langs = dict(languages or {})
        return {"source": langs.get("source") or ("eng_Latn" if nllb else "en"),
                "target": langs.get("target") or ("fra_Latn" if nllb else "fr")}

    def tokenizer_manifest(self, tokenizer, languages):
        entry: dict[str, Any] = {"type": "hf",
                                 "language_tokens": "nllb" if self._nllb_style(tokenizer)
                                 else "m2m100"}
        for key in ("source", "target"):
            code = (languages or {}).get(key)
            if code:
                entry[f"{key}_lang_token"] = self.lang_token(tokenizer, code)
        return entry

    def verification_batch(self, tokenizer, sentences, languages):
        langs = self._defaults(tokenizer, languages)
        self.lang_token(tokenizer, langs["source"])
        tgt_token = self.lang_token(tokenizer, langs["target"])
        tokenizer.src_lang = langs["source"]
        ids = tokenizer(list(sentences)).input_ids
        return VerificationBatch(
            source_tokens=[tokenizer.convert_ids_to_tokens(x) for x in ids],
            target_prefix=[[tgt_token] for _ in sentences],
            hf_inputs=dict(tokenizer(list(sentences), return_tensors="pt", padding=True)),
            hf_generate={"forced_bos_token_id": tokenizer.convert_tokens_to_ids(tgt_token)},
            languages=langs,
        )

