"""Converters for decoder-only LLMs (Llama, Mistral, Qwen2/3, Gemma 1/2/3): kind ``"generation"``.

CTranslate2's own loaders (``ctranslate2.converters.transformers.LlamaLoader``, ``Qwen2Loader``,
...) build the model; these classes add what instructmill needs around them:

* the tokenizer files a chat model needs next to ``model.bin`` (``tokenizer.json``,
  ``tokenizer_config.json`` with the chat template, ``special_tokens_map.json``,
  ``generation_config.json``, ``chat_template.jinja``, and ``tokenizer.model`` for
  sentencepiece models);
* the manifest's ``decoding`` entry for generation: the end tokens (every
  ``generation_config.eos_token_id``, e.g. Llama 3's ``<|eot_id|>`` and ``<|end_of_text|>``)
  and the model's recommended sampling settings;
* verification prompts: the default sentences as user turns of the chat template (plain text
  when the model has no template), compared token for token between transformers greedy
  ``generate`` and CTranslate2 ``Generator.generate_batch(sampling_topk=1)`` (see
  :mod:`instructmill.converters.verify`).

Only architectures whose float32 conversion was checked token for token against transformers
5.19 with CTranslate2 4.8.5 are registered (tiny random models of each; Gemma 2/3 with a sliding
window shorter than the prompts). Not registered although CTranslate2 has a loader: Phi-3
(its loader reads ``rope_scaling["type"]``, which transformers 5 no longer provides) and the
older GPT-2/NeoX/OPT/Bloom families (not checked).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .registry import Converter, VerificationBatch, register
from .manifest import read_json_object as _read_json

__all__ = ["DecoderConverter", "LlamaConverter", "MistralConverter", "Qwen2Converter",
           "Qwen3Converter", "GemmaConverter", "Gemma2Converter", "Gemma3TextConverter",
           "eos_token_ids", "prompt_ids"]

#: Keys of ``generation_config.json`` recorded as the model's recommended sampling settings.
_SAMPLING_KEYS = ("do_sample", "temperature", "top_p", "top_k", "min_p", "repetition_penalty")




def eos_token_ids(model_dir: Path, config: dict[str, Any] | None = None) -> list[int]:
    """The ids that end generation: ``generation_config.json``'s ``eos_token_id`` (int or
    list), else ``config.json``'s; ``[]`` when neither names one."""
    config = config if config is not None else _read_json(model_dir / "config.json")
    gen = _read_json(model_dir / "generation_config.json")
    value = gen.get("eos_token_id", config.get("eos_token_id"))
    if value is None and isinstance(config.get("text_config"), dict):
        value = config["text_config"].get("eos_token_id")
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    return [int(v) for v in values if v is not None]


class DecoderConverter(Converter):
    """Base class of the decoder-only LLM converters (kind ``"generation"``).

    Subclasses only name their architectures; everything else is shared.
    """

    kind = "generation"
    tokenizer_files = (
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
        "generation_config.json", "chat_template.jinja", "chat_template.json",
        "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
    )

    def model_class(self):
        from transformers import AutoModelForCausalLM
        return AutoModelForCausalLM

    def languages(self, source, model_dir, source_lang, target_lang):
        return None

    def tokenizer_manifest(self, tokenizer, languages):
        probe = tokenizer("a").input_ids
        bos = tokenizer.bos_token_id
        return {"type": "hf",
                "chat_template": bool(getattr(tokenizer, "chat_template", None)),
                "adds_bos": bool(bos is not None and probe and probe[0] == bos)}

    def decoding(self, model_dir: Path, config: dict[str, Any], vocab: set[str],
                 tokenizer: Any) -> dict[str, Any]:
        """Decoding defaults for generation (the manifest's ``decoding`` entry).

        ``end_token``: the tokens that end a sample (every eos id, as tokens);
        ``max_decoding_length``: the context window (``max_position_embeddings``);
        ``sampling``: recommended settings from ``generation_config.json`` (only those given).
        """
        eos = eos_token_ids(model_dir, config)
        if not eos and tokenizer.eos_token_id is not None:
            eos = [int(tokenizer.eos_token_id)]
        end_tokens = [t for t in tokenizer.convert_ids_to_tokens(eos) if t in vocab]
        gen = _read_json(model_dir / "generation_config.json")
        sampling = {k: gen[k] for k in _SAMPLING_KEYS if gen.get(k) is not None}
        window = self.max_input_tokens(config) or 2048
        return {"beam_size": 1, "max_decoding_length": int(window), "length_penalty": 1.0,
                "suppress_sequences": [], "end_token": end_tokens, "sampling": sampling}

    def finalize_output(self, model_dir: Path, out_dir: Path, tokenizer: Any) -> None:
        """Keep the chat template inside ``tokenizer_config.json`` too.

        transformers 5 saves it as ``chat_template.jinja`` (copied as well); readers that only
        look in ``tokenizer_config.json`` (transformers 4.x, other tools) then still find it.
        """
        template = getattr(tokenizer, "chat_template", None)
        path = out_dir / "tokenizer_config.json"
        if not isinstance(template, str) or not path.is_file():
            return
        data = _read_json(path)
        if data and not data.get("chat_template"):
            data["chat_template"] = template
            path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n",
                            encoding="utf-8")

    def verification_batch(self, tokenizer, sentences: Sequence[str],
                           languages) -> VerificationBatch:
        """Each sentence as one user turn of the chat template (plain text without one).

        ``hf_inputs["prompt_ids"]``: per prompt, its token ids (transformers runs each prompt
        alone, unpadded); ``source_tokens``: the same ids as tokens (CTranslate2's input).
        """
        ids = [prompt_ids(tokenizer, s) for s in sentences]
        return VerificationBatch(source_tokens=[tokenizer.convert_ids_to_tokens(x) for x in ids],
                                 target_prefix=None, hf_inputs={"prompt_ids": ids})


def prompt_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` as one user turn (chat template, generation prompt added), or of
    ``text`` itself when the tokenizer has no chat template."""
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                 tokenize=False, add_generation_prompt=True)
        return list(tokenizer(rendered, add_special_tokens=False).input_ids)
    return list(tokenizer(text).input_ids)


@register
class LlamaConverter(DecoderConverter):
    """Llama 1/2/3 and Llama-shaped models (SmolLM2, TinyLlama, ...)."""

    name = "llama"
    architectures = ("LlamaForCausalLM",)
    model_types = ("llama",)


@register
class MistralConverter(DecoderConverter):
    """Mistral (sliding-window attention is applied by CTranslate2 when configured)."""

    name = "mistral"
    architectures = ("MistralForCausalLM",)
    model_types = ("mistral",)


@register
class Qwen2Converter(DecoderConverter):
    """Qwen2 / Qwen2.5 (q/k/v projections with bias)."""

    name = "qwen2"
    architectures = ("Qwen2ForCausalLM",)
    model_types = ("qwen2",)


@register
class Qwen3Converter(DecoderConverter):
    """Qwen3 dense models (per-head q/k RMS norm)."""

    name = "qwen3"
    architectures = ("Qwen3ForCausalLM",)
    model_types = ("qwen3",)


@register
class GemmaConverter(DecoderConverter):
    """Gemma (embeddings scaled by sqrt(hidden size), ``1 + w`` RMS norms)."""

    name = "gemma"
    architectures = ("GemmaForCausalLM",)
    model_types = ("gemma",)


@register
class Gemma2Converter(DecoderConverter):
    """Gemma 2 (logit soft-capping, alternating sliding-window layers)."""

    name = "gemma2"
    architectures = ("Gemma2ForCausalLM",)
    model_types = ("gemma2",)


@register
class Gemma3TextConverter(DecoderConverter):
    """Gemma 3 text-only models (``Gemma3ForCausalLM``, e.g. gemma-3-1b-it)."""

    name = "gemma3"
    architectures = ("Gemma3ForCausalLM",)
    model_types = ("gemma3_text",)
