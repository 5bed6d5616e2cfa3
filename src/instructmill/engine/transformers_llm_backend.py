"""transformers backend: the reference the fast backends are checked against.

Greedy requests are batched (left padding, attention mask) within the base class's token-budget
batches (``LLMEngineOptions.max_batch_tokens``); sampled requests run one at a time after
``torch.manual_seed(seed)``, which makes each sample reproducible from its seed.
Correctness over speed: this backend exists to tell whether vLLM and CTranslate2 are right.
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import replace
from typing import Any

from .ct2_generator_backend import _eos_ids
from .llm import LLMBackend, LLMEngineOptions, Request, Sample, context_length


class TransformersLLMBackend(LLMBackend):
    """An LLM run by ``transformers`` ``AutoModelForCausalLM.generate`` (float32 on CPU).

    Args:
        model: HF model folder (or hub id when a hub is reachable).
        options: engine options; ``dtype``, ``device``, ``threads``, ``max_model_len``,
            ``max_num_seqs`` (greedy batch size) and ``trust_remote_code`` apply.
    """

    name = "transformers"
    budget_batching = True  # pads each batch and keeps its KV cache to the end

    def __init__(self, model: str, options: LLMEngineOptions | None = None):
        super().__init__(options)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        opts = self.options
        if opts.threads:
            torch.set_num_threads(opts.threads)
        self.device = "cuda" if opts.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
        dtype = {"auto": torch.float32 if self.device == "cpu" else torch.bfloat16, "float32": torch.float32,
                 "float16": torch.float16, "bfloat16": torch.bfloat16}[opts.dtype]
        self.tokenizer = AutoTokenizer.from_pretrained(str(model), trust_remote_code=opts.trust_remote_code)
        self.hf = AutoModelForCausalLM.from_pretrained(str(model), dtype=dtype,
                                                       trust_remote_code=opts.trust_remote_code).to(self.device).eval()
        self.model = str(model)
        self.max_model_len = context_length(opts.max_model_len,
                                            getattr(self.hf.config, "max_position_embeddings", None), str(model))
        self.eos_ids = _eos_ids(str(model), self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]
        self.dtype = str(dtype).replace("torch.", "")

    def _generate(self, requests: list[Request]) -> list[Sample]:
        samples: list[Sample | None] = [None] * len(requests)
        greedy: dict[Any, list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            if r.params.greedy:
                greedy[replace(r.params, stop=())].append(i)
            else:
                samples[i] = self._run([r.prompt_ids], r.params)[0]
        size = self.options.max_num_seqs
        for params, members in greedy.items():
            for start in range(0, len(members), size):
                part = members[start:start + size]
                for i, sample in zip(part, self._run([requests[i].prompt_ids for i in part], params)):
                    samples[i] = sample
        return samples  # type: ignore[return-value]

    def _run(self, prompts: list[list[int]], p) -> list[Sample]:
        import torch

        width = max(len(x) for x in prompts)
        input_ids = torch.tensor([[self.pad_id] * (width - len(x)) + x for x in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in prompts], device=self.device)
        kwargs: dict[str, Any] = dict(max_new_tokens=p.max_tokens,
                                      min_new_tokens=p.max_tokens if p.ignore_eos else p.min_tokens,
                                      repetition_penalty=p.repetition_penalty, eos_token_id=self.eos_ids,
                                      pad_token_id=self.pad_id)
        if p.greedy:
            kwargs.update(do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None)
        else:
            torch.manual_seed(p.seed if p.seed is not None else 0)
            kwargs.update(do_sample=True, temperature=p.temperature, top_p=p.top_p,
                          top_k=p.top_k if p.top_k > 0 else 0)  # HF's default top_k=50 would differ from vLLM
        with torch.no_grad():
            out = self.hf.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
        samples = []
        for row in out[:, width:].tolist():
            ids = []
            finished = False
            for t in row:
                if t in self.eos_ids:
                    finished = True
                    break
                ids.append(t)
            samples.append(Sample(self.decode(ids), ids, "stop" if finished else "length"))
        return samples

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "dtype": self.dtype, "device": self.device}
