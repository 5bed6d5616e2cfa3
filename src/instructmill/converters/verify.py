"""Verify a CTranslate2 conversion against HF transformers greedy decoding.

Method: the same sentences are tokenized once; HF ``generate(num_beams=1, do_sample=False)`` and
CTranslate2 ``translate_batch(beam_size=1)`` decode them with the same limits, forced tokens and
suppressed tokens; the output token ids are compared.

* float32: the outputs must be identical, token for token (CTranslate2 float32 reproduces
  transformers greedy output exactly; see ``shared/notes/engines.md``).
* quantized types (int8, float16, ...): exact equality is not expected. The float32 conversion of
  the same model must still be exact (that checks the conversion itself), and the quantized
  model must follow that float32 model closely on the verification text: free-running greedy
  output, teacher-forced log-probabilities of float32's output, and (decoder LLMs)
  teacher-forced top-1 agreement (see :mod:`instructmill.converters.fidelity`, whose
  ``LIMITS`` were calibrated on healthy and damaged models on several instruction sets).

Token agreement of one sentence = length of the common prefix of the two outputs / length of the
longer output (after the first difference, greedy continuations are conditioned on different
prefixes, so later positions are not compared). Over several sentences: sum of common prefixes /
sum of longer lengths. Identical outputs -> 1.0.

HF ``max_new_tokens`` is the CTranslate2 limit plus one when the model has
``forced_eos_token_id`` (Marian): transformers then spends the last step on the forced ``</s>``.

Decoder-only LLMs (converter kind ``"generation"``): each prompt runs alone in transformers
(``generate(max_new_tokens=N)``, greedy, no padding), and the batch runs in CTranslate2
``Generator.generate_batch(max_length=N, sampling_topk=1, include_prompt_in_result=False,
end_token=<every eos token>)``; the new tokens (up to the first eos, excluded) are compared the
same way; where they differ, ``token_agreement`` is *teacher-forced* (see
:func:`teacher_forced_agreement`): long free-running outputs part at the first near-tie.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fidelity import LIMITS, FidelityInputs
from .registry import Converter, VerificationBatch

__all__ = ["DEFAULT_SENTENCES", "DEFAULT_MIN_TOKEN_AGREEMENT", "DEFAULT_MAX_NEW_TOKENS",
           "Reference", "Comparison", "VerificationReport", "reference_outputs", "compare_ct2",
           "token_agreement", "teacher_forced_agreement", "cpu_compute_type", "fidelity_inputs"]

#: Default verification sentences (English; the check is about engine equivalence, not quality).
DEFAULT_SENTENCES: tuple[str, ...] = (
    "The weather is nice today, so we will walk to the old market.",
    "Please write a short summary of the article below.",
    "How many students passed the final exam last year?",
    "She opened the window and listened to the rain.",
    "Give three tips for staying healthy.",
    "The committee approved the new budget after a long discussion.",
    "If the train is late, call me from the station and I will pick you up.",
    "Water boils at 100 degrees Celsius at sea level.",
)
#: Lowest token agreement (vs float32) accepted for quantized translation models; decoder LLMs
#: use ``LIMITS["generation"]``. The figures behind it are in
#: :data:`instructmill.converters.fidelity.LIMITS`.
DEFAULT_MIN_TOKEN_AGREEMENT = LIMITS["translation"].min_token_agreement
#: Output limit per sentence during verification (CTranslate2 ``max_decoding_length``).
DEFAULT_MAX_NEW_TOKENS = 48


@dataclass
class Reference:
    """HF greedy outputs for a verification batch.

    Attributes:
        batch: the inputs (:class:`VerificationBatch`).
        outputs: per sentence, output token ids (no decoder-start token, nothing from ``</s>`` on).
        tokenizer: the HF tokenizer (maps CTranslate2 tokens to ids).
        max_decoding_length: the CTranslate2 limit that matches HF's.
        suppress_sequences: token sequences never generated (CTranslate2 form).
        options: other decoding options applied in both engines.
        kind: the converter kind (``"translation"`` or ``"generation"``).
        end_tokens: tokens that end generation (``"generation"`` only).
    """

    batch: VerificationBatch
    outputs: list[list[int]]
    tokenizer: Any
    max_decoding_length: int
    suppress_sequences: list[list[str]]
    options: dict[str, Any] = field(default_factory=dict)
    kind: str = "translation"
    end_tokens: list[str] | None = None


@dataclass(frozen=True)
class Comparison:
    """One CTranslate2 model compared with the reference.

    Attributes:
        compute_type: CTranslate2 compute type used.
        sentences: number of sentences.
        exact_matches: sentences with identical output ids.
        token_agreement: the agreement compared with the threshold (0..1): prefix agreement
            (module docstring) for translation, teacher-forced for generation
            (:func:`teacher_forced_agreement`).
        mismatches: human-readable description of each differing sentence.
        prefix_agreement: the prefix agreement (equal to ``token_agreement`` for translation).
    """

    compute_type: str
    sentences: int
    exact_matches: int
    token_agreement: float
    mismatches: tuple[str, ...]
    prefix_agreement: float | None = None


@dataclass(frozen=True)
class VerificationReport:
    """Outcome of verification, as recorded in the manifest's ``verification`` entry.

    ``reference`` is ``"transformers"`` for float32 conversions and ``"float32"`` for quantized
    ones (compared with the float32 conversion, itself checked against transformers);
    ``fidelity`` holds the quantized model's measures and ``limits`` the thresholds applied
    (:mod:`instructmill.converters.fidelity`).
    """

    passed: bool
    compute_type: str
    sentences: int
    exact_matches: int
    token_agreement: float
    detail: str
    float32_exact_matches: int | None = None
    min_token_agreement: float | None = None
    languages: dict[str, Any] | None = None
    reference: str = "transformers"
    fidelity: dict[str, Any] | None = None
    limits: dict[str, float] | None = None

    def to_manifest(self) -> dict[str, Any]:
        """The manifest's ``verification`` dict (required keys first)."""
        out: dict[str, Any] = {
            "passed": self.passed, "reference": self.reference,
            "compute_type": self.compute_type, "sentences": self.sentences,
            "exact_matches": self.exact_matches,
            "token_agreement": round(self.token_agreement, 4), "detail": self.detail,
        }
        if self.float32_exact_matches is not None:
            out["float32_exact_matches"] = self.float32_exact_matches
        if self.min_token_agreement is not None:
            out["min_token_agreement"] = self.min_token_agreement
        if self.languages:
            out["languages"] = self.languages
        if self.fidelity is not None:
            out["fidelity"] = self.fidelity
        if self.limits is not None:
            out["limits"] = self.limits
        return out


def cpu_compute_type(quantization: str) -> str:
    """The CPU compute type that runs a model stored as ``quantization``.

    The type itself when this CPU supports it, else the nearest supported one
    (``int8_float16`` -> ``int8_float32``, ``float16``/``bfloat16`` -> ``float32``, ...).
    """
    import ctranslate2

    supported = set(ctranslate2.get_supported_compute_types("cpu"))
    if quantization in supported:
        return quantization
    if quantization.startswith("int8"):
        for ct in ("int8_float32", "int8"):
            if ct in supported:
                return ct
    if quantization == "int16" and "int16" in supported:
        return "int16"
    return "float32"


def fidelity_inputs(ref: Reference) -> FidelityInputs:
    """The reference's inputs and decoding settings, for :func:`~.fidelity.measure`."""
    return FidelityInputs(kind=ref.kind, source_tokens=ref.batch.source_tokens,
                          target_prefix=ref.batch.target_prefix, end_tokens=ref.end_tokens,
                          max_new_tokens=ref.max_decoding_length,
                          suppress_sequences=ref.suppress_sequences or None,
                          options=ref.options or None)


def token_agreement(a: Sequence[int], b: Sequence[int]) -> tuple[int, int]:
    """``(common prefix length, longer length)`` of two token sequences."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n, max(len(a), len(b))


def reference_outputs(model_dir: Path, converter: Converter, tokenizer: Any,
                      sentences: Sequence[str], languages: dict | None, *,
                      decoding: dict[str, Any], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                      trust_remote_code: bool = False) -> Reference:
    """Run HF greedy decoding (float32, CPU) on ``sentences``.

    ``decoding`` is the manifest's decoding dict: its ``suppress_sequences`` and, when present,
    ``repetition_penalty`` / ``no_repeat_ngram_size`` are applied in both engines.
    Raises whatever transformers raises when the model cannot be loaded.
    """
    import torch
    from transformers import GenerationConfig
    from transformers.utils import logging as hf_logging

    batch = converter.verification_batch(tokenizer, list(sentences), languages)
    model = converter.model_class().from_pretrained(
        str(model_dir), dtype=torch.float32, trust_remote_code=trust_remote_code).eval()
    if converter.kind == "generation":
        return _reference_generation(model, batch, tokenizer, decoding, max_new_tokens)
    cfg = model.config
    gen = model.generation_config
    eos = gen.eos_token_id if gen.eos_token_id is not None else cfg.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    pad = gen.pad_token_id if gen.pad_token_id is not None else cfg.pad_token_id
    start = (gen.decoder_start_token_id if gen.decoder_start_token_id is not None
             else cfg.decoder_start_token_id)
    forced_eos = gen.forced_eos_token_id
    options = {k: decoding[k] for k in ("repetition_penalty", "no_repeat_ngram_size")
               if k in decoding}
    bad = [list(tokenizer.convert_tokens_to_ids(seq)) for seq in decoding.get(
        "suppress_sequences", [])]
    if pad is not None and [pad] not in bad:
        bad.append([pad])
    gc = GenerationConfig(
        decoder_start_token_id=start, eos_token_id=eos, pad_token_id=pad,
        bos_token_id=gen.bos_token_id, forced_eos_token_id=forced_eos,
        num_beams=1, do_sample=False,
        max_new_tokens=max_new_tokens + (1 if forced_eos is not None else 0),
        bad_words_ids=bad or None, **options, **batch.hf_generate)
    # Replace (not just override) the model's generation config: transformers fills settings
    # left at their defaults from the model's own config (min_length, no_repeat_ngram_size...),
    # which CTranslate2 would not apply.
    model.generation_config = gc
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    threads = torch.get_num_threads()
    # One thread: verification batches are small, and multi-threaded ops stall badly when
    # another process saturates the CPUs (measured: 0.018 s -> 6 s per generate call, 2 cores).
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            seqs = model.generate(**batch.hf_inputs)
    finally:
        torch.set_num_threads(threads)
        hf_logging.set_verbosity(verbosity)
    outputs = []
    for row in seqs.tolist():
        ids = []
        for t in row[1:]:  # row[0] is the decoder start token
            if t in eos_ids or t == pad:
                break
            ids.append(t)
        outputs.append(ids[:max_new_tokens])
    return Reference(batch=batch, outputs=outputs, tokenizer=tokenizer,
                     max_decoding_length=max_new_tokens,
                     suppress_sequences=list(decoding.get("suppress_sequences", [])),
                     options=options)


def _reference_generation(model: Any, batch: VerificationBatch, tokenizer: Any,
                          decoding: dict[str, Any], max_new_tokens: int) -> Reference:
    """HF greedy continuations of decoder-only prompts, one prompt at a time (no padding)."""
    import torch
    from transformers import GenerationConfig
    from transformers.utils import logging as hf_logging

    end_tokens = list(decoding.get("end_token") or [])
    eos = [int(i) for i in tokenizer.convert_tokens_to_ids(end_tokens)]
    if not eos and tokenizer.eos_token_id is not None:
        eos = [int(tokenizer.eos_token_id)]
        end_tokens = [tokenizer.eos_token]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or [0])[0]
    bad = [list(tokenizer.convert_tokens_to_ids(seq))
           for seq in decoding.get("suppress_sequences", [])]
    model.generation_config = GenerationConfig(
        eos_token_id=eos or None, pad_token_id=pad, bos_token_id=tokenizer.bos_token_id,
        num_beams=1, do_sample=False, max_new_tokens=max_new_tokens, bad_words_ids=bad or None)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see reference_outputs
    outputs = []
    try:
        with torch.inference_mode():
            for ids in batch.hf_inputs["prompt_ids"]:
                input_ids = torch.tensor([ids], dtype=torch.long)
                seq = model.generate(input_ids=input_ids,
                                     attention_mask=torch.ones_like(input_ids))
                new = []
                for t in seq[0, len(ids):].tolist():
                    if t in eos:
                        break
                    new.append(t)
                outputs.append(new[:max_new_tokens])
    finally:
        torch.set_num_threads(threads)
        hf_logging.set_verbosity(verbosity)
    return Reference(batch=batch, outputs=outputs, tokenizer=tokenizer,
                     max_decoding_length=max_new_tokens,
                     suppress_sequences=list(decoding.get("suppress_sequences", [])),
                     kind="generation", end_tokens=end_tokens)


def _ct2_outputs(ct2_dir: Path, ref: Reference, compute_type: str) -> list[tuple[list[str],
                                                                                 list[int]]]:
    """``(tokens, ids)`` of the CTranslate2 output for each reference input."""
    import ctranslate2

    if ref.kind == "generation":
        generator = ctranslate2.Generator(str(ct2_dir), device="cpu", compute_type=compute_type,
                                          inter_threads=1, intra_threads=1)
        results = generator.generate_batch(
            ref.batch.source_tokens, max_length=ref.max_decoding_length, sampling_topk=1,
            beam_size=1, include_prompt_in_result=False, end_token=ref.end_tokens or None,
            suppress_sequences=ref.suppress_sequences or None)
        del generator
        return [(r.sequences[0], list(r.sequences_ids[0])) for r in results]
    translator = ctranslate2.Translator(str(ct2_dir), device="cpu", compute_type=compute_type,
                                        inter_threads=1, intra_threads=1)  # see reference_outputs
    results = translator.translate_batch(
        ref.batch.source_tokens, target_prefix=ref.batch.target_prefix, beam_size=1,
        max_decoding_length=ref.max_decoding_length,
        suppress_sequences=ref.suppress_sequences or None, **ref.options)
    del translator
    return [(r.hypotheses[0], list(ref.tokenizer.convert_tokens_to_ids(r.hypotheses[0])))
            for r in results]


def teacher_forced_agreement(ct2_dir: Path, ref: Reference, compute_type: str) -> float:
    """Share of reference positions where the CTranslate2 generator's top token, given the
    reference prefix, is the reference token (``"generation"`` references only).

    Each prompt + its transformers greedy output is forwarded once
    (``Generator.forward_batch``); position ``t`` is compared with output token ``t``. When the
    reference stopped at an end token before the limit, the next position must predict one of
    the end tokens. Unlike the prefix agreement, one early near-tie does not discount every
    later position, so this measures a quantized model's fidelity over long outputs.
    """
    import ctranslate2
    import numpy as np

    end_ids = set(ref.tokenizer.convert_tokens_to_ids(ref.end_tokens or []))
    generator = ctranslate2.Generator(str(ct2_dir), device="cpu", compute_type=compute_type,
                                      inter_threads=1, intra_threads=1)
    agree = total = 0
    for prompt, want in zip(ref.batch.hf_inputs["prompt_ids"], ref.outputs):
        seq = list(prompt) + list(want)
        stopped = len(want) < ref.max_decoding_length and bool(end_ids)
        if not want and not stopped:
            continue
        logits = np.asarray(generator.forward_batch([seq]))[0]
        top = logits[len(prompt) - 1:].argmax(-1).tolist()
        for t, token in enumerate(want):
            agree += int(top[t] == token)
            total += 1
        if stopped:
            agree += int(top[len(want)] in end_ids)
            total += 1
    del generator
    return agree / total if total else 1.0


def compare_ct2(ct2_dir: Path, ref: Reference, compute_type: str) -> Comparison:
    """Decode the reference batch with the CTranslate2 model in ``ct2_dir`` and compare.

    ``token_agreement`` is the prefix agreement (module docstring) for translation references,
    and :func:`teacher_forced_agreement` for generation references, whose long free-running
    outputs part at the first near-tie.
    """
    tok = ref.tokenizer
    exact = 0
    agree = total = 0
    mismatches = []
    for i, ((got_tokens, got), want) in enumerate(zip(_ct2_outputs(ct2_dir, ref, compute_type),
                                                      ref.outputs)):
        n, longest = token_agreement(got, want)
        agree += n
        total += longest
        if got == want:
            exact += 1
            continue
        want_tokens = tok.convert_ids_to_tokens(want)
        g = got_tokens[n] if n < len(got_tokens) else "(end)"
        w = want_tokens[n] if n < len(want_tokens) else "(end)"
        mismatches.append(f"sentence {i + 1} differs at output token {n + 1}: transformers "
                          f"{w!r}, ctranslate2 {g!r}")
    prefix = (agree / total) if total else 1.0
    if ref.kind == "generation":
        agreement = (1.0 if exact == len(ref.outputs)
                     else teacher_forced_agreement(ct2_dir, ref, compute_type))
    else:
        agreement = prefix
    return Comparison(compute_type=compute_type, sentences=len(ref.outputs), exact_matches=exact,
                      token_agreement=agreement, mismatches=tuple(mismatches),
                      prefix_agreement=prefix)
