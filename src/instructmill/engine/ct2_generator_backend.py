"""CTranslate2 ``Generator`` backend: the CPU fallback for LLM sampling.

Takes a decoder LLM converted by ``instructmill convert`` (float32 by default on CPU: int8
degrades SmolLM2-135M into repetition, measured). The base class hands it length-sorted batches
under the token budget (``LLMEngineOptions.max_batch_tokens``: a Generator pads a batch and keeps
its KV cache until the batch ends); requests of one batch with the same sampling settings go to
one ``generate_batch`` call.

Seeds: CTranslate2 has no per-request seed. Its sampling RNG is per worker thread, seeded from
``ctranslate2.set_random_seed`` when the thread first samples; later calls to
``set_random_seed`` do not reseed it (measured with 4.8.5, also in ``shared/notes/engines.md``).
So the engine seed (``LLMEngineOptions.seed``) is set before the Generator is created: a
rerun of the same job reproduces every sample, but a single request's ``seed`` cannot select
its sample (records still carry the seed instructmill assigned). Use vLLM or transformers
when each sample must be reproducible from its own seed.
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import replace
from typing import Any

from .llm import LLMBackend, LLMEngineOptions, Request, Sample, context_length

class CTranslate2GeneratorBackend(LLMBackend):
    """An LLM run by ``ctranslate2.Generator``.

    Args:
        model_dir: converted CTranslate2 folder (with its ``instructmill.json`` manifest and HF tokenizer files).
        options: engine options; ``compute_type``, ``device``, ``threads`` and ``max_model_len`` apply.

    Raises:
        VerificationError: the folder's conversion failed verification.
    """

    name = "ctranslate2"
    budget_batching = True  # pads each batch and keeps its KV cache to the end

    def __init__(self, model_dir: str, options: LLMEngineOptions | None = None, *, allow_unverified: bool = False):
        super().__init__(options)
        import ctranslate2
        from transformers import AutoTokenizer

        from ..converters.manifest import load_verified_manifest

        self.model_dir = str(model_dir)
        self.manifest = load_verified_manifest(model_dir, allow_unverified=allow_unverified)
        opts = self.options
        device = opts.device if opts.device != "auto" else (
            "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu")
        compute_type = opts.compute_type if opts.compute_type != "auto" else (
            "float32" if device == "cpu" else "float16")
        compute_type = _checked_compute_type(self.model_dir, self.manifest, compute_type,
                                             requested=opts.compute_type, device=device)
        threads = opts.threads or os.cpu_count() or 1
        ctranslate2.set_random_seed(opts.seed)
        self.generator = ctranslate2.Generator(str(model_dir), device=device, compute_type=compute_type,
                                               inter_threads=1, intra_threads=threads)
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.model = str(self.manifest.get("source") or model_dir)
        self.compute_type = compute_type
        self.device = device
        self.max_model_len = context_length(opts.max_model_len, self.manifest.get("max_input_tokens"),
                                            self.model_dir)
        gen_eos = _eos_ids(model_dir, self.tokenizer)
        self.end_tokens = self.tokenizer.convert_ids_to_tokens(gen_eos)
        self.eos_ids = set(gen_eos)

    def _generate(self, requests: list[Request]) -> list[Sample]:
        groups: dict[Any, list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            groups[replace(r.params, stop=(), seed=None)].append(i)  # seeds cannot be per request here
        samples: list[Sample | None] = [None] * len(requests)
        for params, members in groups.items():
            batch = [self.tokenizer.convert_ids_to_tokens(requests[i].prompt_ids) for i in members]
            for i, sample in zip(members, self._batch(batch, params)):
                samples[i] = sample
        return samples  # type: ignore[return-value]

    def _batch(self, batch: list[list[str]], p) -> list[Sample]:
        kwargs: dict[str, Any] = dict(
            max_length=p.max_tokens, min_length=p.max_tokens if p.ignore_eos else p.min_tokens,
            include_prompt_in_result=False, return_scores=False, repetition_penalty=p.repetition_penalty,
            end_token=self.end_tokens, max_batch_size=self.options.max_num_seqs)
        if p.greedy:
            kwargs.update(sampling_topk=1)
        else:
            vocab_top_k = p.top_k if p.top_k > 0 else 0
            kwargs.update(sampling_topk=vocab_top_k, sampling_topp=p.top_p, sampling_temperature=p.temperature)
        results = self.generator.generate_batch(batch, **kwargs)
        out = []
        for r in results:
            ids = [i for i in r.sequences_ids[0] if i not in self.eos_ids]
            finished = len(r.sequences_ids[0]) < p.max_tokens
            out.append(Sample(self.decode(ids), ids, "stop" if finished else "length"))
        return out

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "compute_type": self.compute_type, "device": self.device}


def _checked_compute_type(model_dir: str, manifest: dict, compute_type: str, *, requested: str,
                          device: str) -> str:
    """``compute_type``, checked once against the folder's float32 run when it differs from the
    verified type (:func:`~instructmill.converters.load_check.checked_compute_type`: refuses
    an explicit type that strays too far, falls back to float32 for ``auto``)."""
    from ..converters.decoder import prompt_ids
    from ..converters.fidelity import FidelityInputs
    from ..converters.load_check import checked_compute_type
    from ..converters.verify import DEFAULT_MAX_NEW_TOKENS, DEFAULT_SENTENCES

    def inputs() -> FidelityInputs:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir)
        decoding = manifest.get("decoding") or {}
        return FidelityInputs(
            kind="generation",
            source_tokens=[tok.convert_ids_to_tokens(prompt_ids(tok, s)) for s in DEFAULT_SENTENCES],
            end_tokens=list(decoding.get("end_token") or []) or None,
            max_new_tokens=DEFAULT_MAX_NEW_TOKENS,
            suppress_sequences=decoding.get("suppress_sequences") or None)

    return checked_compute_type(model_dir, manifest, compute_type, requested=requested, device=device,
                                inputs=inputs)


def _eos_ids(model_dir: str, tokenizer) -> list[int]:
    import json
    from pathlib import Path

    ids: list[int] = []
    path = Path(model_dir) / "generation_config.json"
    if path.exists():
        value = json.loads(path.read_text()).get("eos_token_id")
        ids = value if isinstance(value, list) else [value] if value is not None else []
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return [int(i) for i in ids]
