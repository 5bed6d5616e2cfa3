"""The LLM sampling interface shared by the vLLM, CTranslate2 and transformers backends.

Every backend gets, from :class:`LLMBackend`:

* prompts as text or OpenAI-style ``messages`` (chat template applied once, so the token ids
  start with exactly one BOS),
* validation before the engine sees anything: an empty prompt gets ``status="empty_prompt"``,
  a prompt that leaves no room for output within ``max_model_len`` gets
  ``status="prompt_too_long"`` with its token count; the other prompts run and the engine
  stays usable,
* ``n > 1`` expanded into ``n`` requests with their own seeds (``seed``, ``seed+1``, ...; drawn
  from the engine seed when ``seed`` is ``None``) so every sample says which seed produced it
  and the same seed gives the same samples again,
* stop strings cut from the text (never leaked), on every backend,
* results in input order, matched by request index (never by prompt text: duplicate prompts
  are common in this work),
* requests fed to the engine in chunks of ``chunk_size``, so memory stays bounded; on engines that
  pad a batch and keep its whole KV cache (CTranslate2, transformers: ``budget_batching = True``)
  each chunk is cut further into length-sorted batches under a token budget
  (``max_batch_tokens``, cost of a request = prompt tokens + ``max_tokens``) by the shared
  :mod:`~instructmill.engine.scheduler`, and results stream out as batches finish;
* :meth:`LLMBackend.window_tokens`: how much work a method should hand over at once so its
  output reaches the writer batch by batch (:func:`~instructmill.engine.scheduler.budget_windows`).

Sampling option names are vLLM's ``SamplingParams`` names; engine options are vLLM's ``LLM``
arguments, mapped onto CTranslate2 and transformers by each backend.
"""
from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence, Union

from ..errors import OptionError
from ..status import STATUS_EMPTY_PROMPT, STATUS_OK, STATUS_PROMPT_TOO_LONG
from .scheduler import BatchingOptions, WorkItem, make_batches

if TYPE_CHECKING:  # pragma: no cover
    from .request_loop import LoopListener, RequestLoop

#: A prompt: plain text (sent as is, the tokenizer adds BOS), chat ``messages``
#: (``[{"role": "user", "content": "..."}]``) rendered with the model's chat template, or token ids
#: (``list[int]``, used as given).
Prompt = Union[str, Sequence[dict], Sequence[int]]



@dataclass(frozen=True)
class SamplingOptions:
    """How to sample, with vLLM ``SamplingParams`` names and meanings.

    Attributes:
        n: samples per prompt.
        temperature: 0 = greedy.
        top_p: nucleus sampling mass (1 = off).
        top_k: keep the k most likely tokens (0 = off; vLLM also accepts -1).
        max_tokens: most new tokens per sample.
        min_tokens: fewest new tokens before EOS / stop strings may end a sample.
        seed: seed of the first sample (sample i uses ``seed + i``); ``None`` = drawn from the
            engine seed.
        stop: strings that end a sample; they are not included in the text.
        repetition_penalty: > 1 discourages repeats (CTRL, Keskar et al. 2019; vLLM's definition).
        ignore_eos: keep generating after EOS (benchmarks: fixed output length).
        json_schema: constrain the output to JSON matching this JSON schema (a dict): vLLM's
            structured outputs (``StructuredOutputsParams(json=...)``) in process, the
            ``response_format`` ``json_schema`` on an OpenAI-compatible server. Backends that
            cannot constrain decoding (CTranslate2, transformers) ignore it and the method parses
            free text (:attr:`LLMBackend.supports_json_schema` says which).

    Raises:
        OptionError: a value out of range (names the parameter and the value).
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 256
    min_tokens: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    repetition_penalty: float = 1.0
    ignore_eos: bool = False
    json_schema: Any = None

    def __post_init__(self) -> None:
        if self.json_schema is not None and not isinstance(self.json_schema, dict):
            schema = self.json_schema
            as_dict = getattr(schema, "model_json_schema", None)  # a Pydantic model class
            if not callable(as_dict):
                raise OptionError("json_schema", schema, "give a JSON schema dict or a Pydantic model class")
            object.__setattr__(self, "json_schema", as_dict())
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif not isinstance(self.stop, tuple):
            object.__setattr__(self, "stop", tuple(self.stop))
        if not isinstance(self.n, int) or self.n < 1:
            raise OptionError("n", self.n, "must be a positive integer")
        if self.temperature < 0:
            raise OptionError("temperature", self.temperature, "must be >= 0")
        if not 0 < self.top_p <= 1:
            raise OptionError("top_p", self.top_p, "must be in (0, 1]")
        if self.top_k < -1:
            raise OptionError("top_k", self.top_k, "must be -1, 0 (off) or positive")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise OptionError("max_tokens", self.max_tokens, "must be a positive integer")
        if self.min_tokens < 0 or self.min_tokens > self.max_tokens:
            raise OptionError("min_tokens", self.min_tokens, f"must be between 0 and max_tokens ({self.max_tokens})")
        if self.repetition_penalty <= 0:
            raise OptionError("repetition_penalty", self.repetition_penalty, "must be > 0")
        if any(not s for s in self.stop):
            raise OptionError("stop", self.stop, "stop strings must be non-empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class LLMEngineOptions:
    """Engine options: vLLM ``LLM`` arguments, mapped onto the other backends where they apply.

    Attributes:
        max_model_len: context length in tokens (prompt + output); ``None`` = the model's.
        max_num_seqs: most sequences in one engine batch.
        gpu_memory_utilization: share of GPU memory vLLM may take (GPU only).
        dtype: ``"auto"`` (float32 on CPU: bfloat16 ran 5-9x slower on this AVX2 CPU, measured),
            ``"float32"``, ``"float16"``, ``"bfloat16"``.
        enable_prefix_caching: reuse KV cache of shared prompt prefixes (vLLM).
        tensor_parallel_size: GPUs per model replica (vLLM).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        seed: engine seed (draws sample seeds when a request gives none).
        kv_cache_space_gib: KV cache size on CPU in GiB (vLLM-cpu ``VLLM_CPU_KVCACHE_SPACE``).
        chunk_size: requests handed to the engine per call (bounds memory; default 4 * max_num_seqs).
        trust_remote_code: run code shipped with the model (off by default).
        compute_type: CTranslate2 compute type (``"auto"``: float32 on CPU -- int8 degrades
            SmolLM2-135M into repetition, measured).
        enforce_eager: vLLM without torch.compile / CUDA graphs; ``None`` = eager on CPU (engine
            start ~20 s instead of ~40 s, measured), compiled on GPU.
        threads: CPU threads of the CTranslate2 / transformers engine (``None`` = all cores). An
            LLM engine is one replica, so one count; translation engines split theirs into
            ``inter_threads`` replicas x ``intra_threads`` each.
        max_batch_tokens: CTranslate2 / transformers: most token slots in one engine batch, counted
            as requests x (longest prompt + ``max_tokens``), as these engines pad a batch and hold its
            KV cache until the batch ends (vLLM pages its cache and ignores this). Without it, 40
            long Humpback prompts went to one CTranslate2 batch: 7.7 GB and rising (measured).
        base_url: an OpenAI-compatible server's URL, e.g. ``http://127.0.0.1:8000/v1`` (backend
            ``openai``).
        api_key_env: the environment variable holding the server's API key (``openai``; none is
            sent when it is unset). The key itself is never stored in settings.
        max_concurrency: most requests in flight to the server (``openai``; the limit adapts
            below it: halved on overload, grown back by one per round of successes).
        request_timeout: seconds one server request may take (``openai``).
        max_retries: retries of a request after overload or a dropped connection (``openai``).
    """

    max_model_len: int | None = None
    max_num_seqs: int = 256
    gpu_memory_utilization: float = 0.9
    dtype: str = "auto"
    enable_prefix_caching: bool | None = None
    tensor_parallel_size: int = 1
    device: str = "auto"
    seed: int = 0
    kv_cache_space_gib: float | None = None
    chunk_size: int | None = None
    trust_remote_code: bool = False
    compute_type: str = "auto"
    enforce_eager: bool | None = None
    threads: int | None = None
    max_batch_tokens: int = 8192
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = 64
    request_timeout: float = 600.0
    max_retries: int = 8

    def __post_init__(self) -> None:
        if self.max_concurrency < 1:
            raise OptionError("max_concurrency", self.max_concurrency, "must be a positive integer")
        if self.request_timeout <= 0:
            raise OptionError("request_timeout", self.request_timeout, "must be > 0 seconds")
        if self.max_retries < 0:
            raise OptionError("max_retries", self.max_retries, "must be >= 0")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise OptionError("max_model_len", self.max_model_len, "must be at least 2 tokens")
        if self.max_num_seqs < 1:
            raise OptionError("max_num_seqs", self.max_num_seqs, "must be a positive integer")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise OptionError("gpu_memory_utilization", self.gpu_memory_utilization, "must be in (0, 1]")
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise OptionError("dtype", self.dtype, "must be auto, float32, float16 or bfloat16")
        if self.device not in ("auto", "cpu", "cuda"):
            raise OptionError("device", self.device, "must be auto, cpu or cuda")
        if self.tensor_parallel_size < 1:
            raise OptionError("tensor_parallel_size", self.tensor_parallel_size, "must be a positive integer")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise OptionError("chunk_size", self.chunk_size, "must be a positive integer")
        if not isinstance(self.max_batch_tokens, int) or self.max_batch_tokens < 1:
            raise OptionError("max_batch_tokens", self.max_batch_tokens, "must be a positive integer")


@dataclass
class Sample:
    """One generated sample.

    Attributes:
        text: generated text (stop string and EOS excluded).
        token_ids: generated token ids (as the engine produced them, up to the stop point).
        finish_reason: ``"stop"`` (EOS or a stop string) or ``"length"`` (``max_tokens`` reached).
        seed: the seed that produced it (``None`` for greedy).
        num_tokens: generated tokens as counted by a server that returns text only (``None``:
            ``len(token_ids)``).
        prompt_tokens: prompt tokens as counted by a server (``None``: the local count).
        status: ``"ok"``, or why this request failed where only a server can tell (e.g.
            ``"prompt_too_long"``); the whole prompt's result then gets that status.
        detail: the server's message for a failed request.
    """

    text: str
    token_ids: list[int]
    finish_reason: str
    seed: int | None = None
    num_tokens: int | None = None
    prompt_tokens: int | None = None
    status: str = STATUS_OK
    detail: str | None = None

    @property
    def output_tokens(self) -> int:
        """Generated tokens: ``len(token_ids)``, or the server's count when it sent no ids."""
        return self.num_tokens if self.num_tokens is not None else len(self.token_ids)


@dataclass
class GenerationResult:
    """The result for one prompt.

    Attributes:
        index: position of the prompt in the input.
        status: ``"ok"``, ``"empty_prompt"`` or ``"prompt_too_long"``.
        prompt_tokens: prompt length in tokens (after the chat template).
        samples: ``n`` samples when ``status == "ok"``, else empty.
        detail: why a prompt was refused (e.g. ``"2052 prompt tokens + 1 >= max_model_len 2048"``).
    """

    index: int
    status: str
    prompt_tokens: int
    samples: list[Sample] = field(default_factory=list)
    detail: str | None = None

    @property
    def text(self) -> str:
        """The first sample's text ("" when refused)."""
        return self.samples[0].text if self.samples else ""

    @property
    def outputs(self) -> list[Sample]:
        """The samples under vLLM's name (``RequestOutput.outputs``): ``result.outputs[0].text``."""
        return self.samples


@dataclass
class Request:
    """One engine request (``n`` already expanded: one sample each)."""

    index: int
    prompt_ids: list[int]
    params: SamplingOptions  # with n == 1 and a concrete seed (None when greedy)
    prompt: Any = None  # the prompt as given (server backends send it as text / messages)


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the earliest stop string; ``(text, found)``."""
    cut = len(text)
    for s in stop:
        pos = text.find(s)
        if pos != -1:
            cut = min(cut, pos)
    return text[:cut], cut < len(text)


class LLMBackend(ABC):
    """Base of every LLM backend (see the module docstring for what it guarantees).

    Subclasses set ``name``, ``model`` (id or path, for provenance), ``tokenizer`` (an HF
    tokenizer) and ``max_model_len``, and implement :meth:`_generate`. Engines that pad a batch
    and keep its memory until the batch ends set ``budget_batching = True``: :meth:`_generate`
    then gets batches of at most ``max_num_seqs`` requests and ``max_batch_tokens`` token slots.
    """

    name: str = "llm"
    model: str = ""
    max_model_len: int = 2048
    #: the engine can constrain decoding to a JSON schema (SamplingOptions.json_schema)
    supports_json_schema: bool = False
    #: prompts are tokenized here; ``False``: the engine takes text / messages and counts tokens
    #: itself (server backends), and a prompt too long comes back as a per-request status
    tokenizes_locally: bool = True
    budget_batching: bool = False
    #: the engine schedules requests itself between its steps (vLLM): :meth:`request_loop` feeds it
    #: continuously instead of in gathered batches
    continuous_batching: bool = False

    def __init__(self, options: LLMEngineOptions | None = None):
        self.options = options or LLMEngineOptions()
        self._seed_rng = random.Random(self.options.seed)
        self.tokenizer: Any = None
        self.stats = {"requests": 0, "prompt_tokens": 0, "output_tokens": 0, "seconds": 0.0}

    # --------------------------------------------------------------- prompts
    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Token ids of ``prompt``: chat template for messages; one BOS at most at the start."""
        tok = self.tokenizer
        if _is_token_ids(prompt):
            return list(prompt)  # type: ignore[arg-type]
        if isinstance(prompt, str):
            ids = list(tok(prompt, add_special_tokens=True)["input_ids"])
        else:
            text = tok.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
            ids = list(tok(text, add_special_tokens=False)["input_ids"])
            bos = tok.bos_token_id
            if bos is not None and _adds_bos(tok) and (not ids or ids[0] != bos):
                ids.insert(0, bos)
        bos = tok.bos_token_id
        while bos is not None and len(ids) > 1 and ids[0] == bos and ids[1] == bos:
            ids.pop(0)  # a template that writes BOS itself plus a tokenizer that adds one
        return ids

    @staticmethod
    def is_empty(prompt: Prompt) -> bool:
        if isinstance(prompt, str):
            return not prompt.strip()
        if _is_token_ids(prompt):
            return len(prompt) == 0
        return not any(str(m.get("content") or "").strip() for m in prompt)

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def count_tokens(self, prompt: Prompt) -> int:
        """Prompt length in tokens, as :meth:`generate` will count it (0 for an empty prompt)."""
        return 0 if self.is_empty(prompt) else len(self.encode_prompt(prompt))

    def window_tokens(self) -> int | None:
        """How many tokens of work (prompt + new tokens, summed over requests) a method should
        hand to :meth:`generate` at once, or ``None`` for no limit beyond its record count.

        Budget-batching engines: two engine batches (``2 * max_batch_tokens``), so a method's
        output reaches its writer every couple of batches instead of after the whole window
        (the measured fault: nothing written after 32 min for 40 long Humpback records on
        CTranslate2). vLLM schedules and pages memory itself: ``None``.
        """
        return 2 * self.options.max_batch_tokens if self.budget_batching else None

    # -------------------------------------------------------------- generate
    def generate(self, prompts: Sequence[Prompt],
                 params: SamplingOptions | Sequence[SamplingOptions] | None = None) -> list[GenerationResult]:
        """Sample from every prompt; one :class:`GenerationResult` per prompt, in input order.

        ``params``: one :class:`SamplingOptions` for all prompts, or a list paired with ``prompts``.

        Raises:
            ArgumentTypeError: (a ``TypeError``) ``prompts`` is one string -- wrap it in a list -- or
                one prompt is a bare message dict or token id (wrap the conversation / ids in a list).
            OptionError: a params list whose length differs from the prompts'.
        """
        return list(self.generate_iter(prompts, params))

    def generate_iter(self, prompts: Iterable[Prompt],
                      params: SamplingOptions | Sequence[SamplingOptions] | None = None
                      ) -> Iterator[GenerationResult]:
        """Like :meth:`generate`, streaming: prompts are consumed and results yielded chunk by chunk.

        ``prompts`` is checked at call time (one string is refused); the prompts themselves as
        they are read.
        """
        from ..arguments import items

        return self._generate_iter(prompts, items(prompts, name="prompts", of="prompts"), params)

    def _generate_iter(self, prompts: Iterable[Prompt], iterator: Iterator[Prompt],
                       params: SamplingOptions | Sequence[SamplingOptions] | None) -> Iterator[GenerationResult]:
        from ..arguments import ArgumentTypeError

        params = params if params is not None else SamplingOptions()
        if not isinstance(params, SamplingOptions):
            params = list(params)
            if not isinstance(prompts, Sequence) or len(params) != len(prompts):
                raise OptionError("params", f"{len(params)} SamplingOptions",
                                  "give one SamplingOptions, or one per prompt")
        chunk_size = self.options.chunk_size or 4 * self.options.max_num_seqs
        chunk: list[tuple[int, Prompt, SamplingOptions]] = []
        for index, prompt in enumerate(iterator):
            if isinstance(prompt, (dict, int)):
                what = "a chat message" if isinstance(prompt, dict) else "a token id"
                raise ArgumentTypeError(f"prompts[{index}] is {what}, not a prompt: a conversation is a list of "
                                        "messages and token ids are a list of ints, so pass [messages] / [ids]")
            chunk.append((index, prompt, params if isinstance(params, SamplingOptions) else params[index]))
            if len(chunk) >= chunk_size:
                yield from self._run_chunk(chunk)
                chunk = []
        if chunk:
            yield from self._run_chunk(chunk)

    def _run_chunk(self, chunk: list[tuple[int, Prompt, SamplingOptions]]) -> Iterator[GenerationResult]:
        import time

        results: dict[int, GenerationResult] = {}
        requests: list[Request] = []
        for index, prompt, params in chunk:
            if self.is_empty(prompt):
                results[index] = GenerationResult(index, STATUS_EMPTY_PROMPT, 0, detail="the prompt is empty")
                continue
            if not self.tokenizes_locally:
                ids, room = [], params.max_tokens
            else:
                ids = self.encode_prompt(prompt)
                room = self.max_model_len - len(ids)
            if room < max(1, params.min_tokens):
                results[index] = GenerationResult(
                    index, STATUS_PROMPT_TOO_LONG, len(ids),
                    detail=f"{len(ids)} prompt tokens leave no room for output within "
                           f"max_model_len {self.max_model_len}")
                continue
            results[index] = GenerationResult(index, STATUS_OK, len(ids))
            one = replace(params, n=1, max_tokens=min(params.max_tokens, room))
            for i in range(params.n):
                seed = None if params.greedy else (
                    params.seed + i if params.seed is not None else self._seed_rng.randrange(2**31))
                requests.append(Request(index, ids, replace(one, seed=seed), prompt=prompt))
        remaining = Counter(r.index for r in requests)
        pending = deque(index for index, _, _ in chunk)
        for batch in self._engine_batches(requests):
            start = time.perf_counter()
            samples = self._generate(batch)
            self.stats["seconds"] += time.perf_counter() - start
            if len(samples) != len(batch):
                raise RuntimeError(f"{self.name} returned {len(samples)} samples for {len(batch)} requests")
            for request, sample in zip(batch, samples):
                result = results[request.index]
                remaining[request.index] -= 1
                self.stats["requests"] += 1
                if sample.prompt_tokens is not None:
                    result.prompt_tokens = sample.prompt_tokens
                self.stats["prompt_tokens"] += result.prompt_tokens
                if sample.status != STATUS_OK:  # a server refused it: the prompt's status, no samples
                    result.status, result.detail, result.samples = sample.status, sample.detail, []
                    continue
                if result.status != STATUS_OK:  # an earlier sample of this prompt was refused
                    continue
                text, stopped = cut_at_stop(sample.text, request.params.stop)
                if stopped:
                    sample = replace(sample, text=text, finish_reason="stop")
                sample.seed = request.params.seed
                result.samples.append(sample)
                self.stats["output_tokens"] += sample.output_tokens
            while pending and remaining[pending[0]] <= 0:  # stream what is complete, in input order
                yield results.pop(pending.popleft())
        for index in pending:
            yield results.pop(index)

    def _engine_batches(self, requests: list[Request]) -> Iterator[list[Request]]:
        """The engine calls for one chunk: all of it (vLLM, servers), or length-sorted batches under
        the token budget (``budget_batching``). A request's cost is its prompt plus ``max_tokens``;
        inside a batch, requests keep their order (a prompt's samples stay in seed order)."""
        if not requests:
            return
        if not self.budget_batching:
            yield requests
            return
        options = BatchingOptions(max_batch_size=self.options.max_num_seqs,
                                  max_batch_tokens=self.options.max_batch_tokens,
                                  sort_window=max(len(requests), self.options.max_num_seqs))
        items = (WorkItem(i, len(r.prompt_ids) + r.params.max_tokens, r) for i, r in enumerate(requests))
        for batch in make_batches(items, options):
            batch.sort(key=lambda item: item.index)
            yield [item.payload for item in batch]

    @abstractmethod
    def _generate(self, requests: list[Request]) -> list[Sample]:
        """Run requests (one sample each); return one :class:`Sample` per request, same order."""

    def request_loop(self, *, name: str, mode: str = "auto", gather_ms: float = 5.0, label: str | None = None,
                     listener: "LoopListener | None" = None) -> "RequestLoop":
        """A thread that owns this engine and serves requests submitted from any thread
        (:mod:`~instructmill.engine.request_loop`): how the engine batches work from many callers.

        Args:
            name, label, listener: see :class:`~instructmill.engine.request_loop.RequestLoop`.
            mode: ``"auto"`` (``"engine"`` where :attr:`continuous_batching`, else ``"batch"``),
                ``"engine"`` (the engine's continuous loop) or ``"batch"`` (gathered batches of up to
                ``max_num_seqs`` requests through :meth:`_generate`).
            gather_ms: batch mode: how long a short batch waits for more requests (milliseconds).

        Raises:
            OptionError: unknown ``mode``, negative ``gather_ms``, or ``mode="engine"`` for an engine
                without a continuous loop.
        """
        from .request_loop import GatherLoop

        if mode not in ("auto", "engine", "batch"):
            raise OptionError("mode", mode, "must be auto, engine or batch")
        if mode == "engine" and not self.continuous_batching:
            raise OptionError("mode", mode, f"the engine loop needs a continuous-batching engine (vLLM), "
                                            f"not {self.name}")
        if gather_ms < 0:
            raise OptionError("gather_ms", gather_ms, "must be >= 0")
        if mode != "batch" and self.continuous_batching:
            return self._continuous_loop(name=name, label=label, listener=listener)
        return GatherLoop(self, name=name, label=label, listener=listener, gather_ms=gather_ms)

    def _continuous_loop(self, *, name: str, label: str | None, listener: "LoopListener | None") -> "RequestLoop":
        """The engine's own :class:`~instructmill.engine.request_loop.RequestLoop` (engines with
        :attr:`continuous_batching` override this)."""
        raise NotImplementedError(f"{self.name} has no continuous loop")

    def settings(self) -> dict[str, Any]:
        """Provenance: backend, model, engine options."""
        return {"backend": self.name, "model": self.model, "max_model_len": self.max_model_len}

    def close(self) -> None:
        """Release the engine (default: nothing)."""


def context_length(requested: int | None, model_limit: int | None, model: str) -> int:
    """The ``max_model_len`` to use: the requested one, refused if the model's positions are fewer.

    Raises:
        OptionError: ``requested`` exceeds the model's ``max_position_embeddings``.
    """
    if requested is None:
        return int(model_limit or 2048)
    if model_limit is not None and requested > model_limit:
        raise OptionError("max_model_len", requested,
                          f"{model} has positions for {model_limit} tokens only")
    return requested


def _is_token_ids(prompt: Any) -> bool:
    return not isinstance(prompt, str) and len(prompt) > 0 and all(isinstance(t, int) for t in prompt)


def _adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts BOS in front of plain text (Llama does; SmolLM2/Qwen2 don't)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos
