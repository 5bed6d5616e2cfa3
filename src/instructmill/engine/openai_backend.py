"""OpenAI-compatible server backend: ``vllm serve`` / vLLM's OpenAI server, SGLang, TGI, hosted APIs.

Prompts go to the server as they are (chat ``messages`` to ``/chat/completions``; text or token ids
to ``/completions``): the server applies its chat template and counts tokens, and its ``usage``
gives the token counts. Everything else is :class:`~instructmill.engine.llm.LLMBackend`'s: input
order by request index, ``n`` expanded into seeded requests (``seed`` is sent per request: vLLM
honours it; hosted APIs treat it as best effort), stop strings cut, empty prompts refused before any
request, and a prompt the server finds too long comes back as ``status: "prompt_too_long"`` with
the server's message.

Requests run concurrently (asyncio + httpx) under an **adaptive concurrency limit** (AIMD, the
rule of TCP congestion control, Jacobson 1988 / Chiu & Jain 1989): the limit grows by about one
request per round of successes and halves on a sign of overload (HTTP 429, 5xx, a timeout or a
dropped connection; at most once per second, so one burst of failures counts once). Failed
requests are retried with exponential backoff and jitter (``Retry-After`` honoured) up to
``max_retries`` times; then the run stops with one line naming the server (what was written is
kept: ``--resume`` continues after the server is back). A 4xx other than "too long" (bad key,
unknown model, bad parameter) stops the run at once with the server's message: it would fail
for every request alike.

The API key is read from the environment variable named by ``api_key_env`` (default
``OPENAI_API_KEY``; none is sent when it is unset, as local servers need none) and is never
written to settings, records or logs.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import time
from typing import Any

from ..errors import InstructmillError, OptionError
from ..status import STATUS_PROMPT_TOO_LONG
from .llm import LLMBackend, LLMEngineOptions, Request, Sample, SamplingOptions

__all__ = ["AdaptiveLimit", "OpenAIBackend", "OpenAIServerError"]

#: HTTP statuses that mean "try again later" (overload or a server restarting).
RETRYABLE = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_TOO_LONG_HINTS = ("maximum context length", "context length", "too long", "max_model_len",
                   "maximum input length", "prompt is too long", "longer than the maximum")


class OpenAIServerError(InstructmillError):
    """The server refused the work or stayed unreachable; the message names the server and the cause."""


class AdaptiveLimit:
    """A concurrency limit that adapts to the server (additive increase, multiplicative decrease).

    Args:
        start: initial limit.
        low: the limit never goes below this.
        high: nor above this (``max_concurrency``).
        cooldown: seconds between two decreases (a burst of failures counts once).

    The limit is a float; ``int(limit)`` requests may be in flight. :meth:`succeeded` adds
    ``1 / limit`` (about +1 per round of ``limit`` successes); :meth:`overloaded` halves it.
    """

    def __init__(self, start: float, low: int = 1, high: int = 64, cooldown: float = 1.0):
        self.low, self.high = max(1, low), max(1, high)
        self.limit = float(min(max(start, self.low), self.high))
        self.cooldown = cooldown
        self.in_flight = 0
        self.peak = 0
        self.decreases = 0
        self._last_decrease = -float("inf")
        self._cond: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._cond is None:
            self._cond = asyncio.Condition()
        return self._cond

    def reset_loop(self) -> None:
        """Forget the event loop's condition (each ``_generate`` call runs its own loop)."""
        self._cond = None
        self.in_flight = 0

    async def __aenter__(self) -> AdaptiveLimit:
        cond = self._condition()
        async with cond:
            await cond.wait_for(lambda: self.in_flight < int(self.limit))
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        cond = self._condition()
        async with cond:
            self.in_flight -= 1
            cond.notify_all()

    def succeeded(self) -> None:
        self.limit = min(self.high, self.limit + 1.0 / self.limit)

    def overloaded(self) -> None:
        now = time.monotonic()
        if now - self._last_decrease >= self.cooldown:
            self.limit = max(self.low, self.limit / 2)
            self._last_decrease = now
            self.decreases += 1


def _run_async(coro: Any) -> Any:
    """Run ``coro`` to completion from sync code, also when this thread already runs a loop (Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


class OpenAIBackend(LLMBackend):
    """An LLM behind an OpenAI-compatible HTTP API (see the module docstring).

    Args:
        model: the served model's name (``None``: the first one the server lists at ``/models``).
        options: engine options; this backend reads ``base_url``, ``api_key_env``,
            ``max_concurrency``, ``request_timeout``, ``max_retries`` and ``max_model_len`` (only
            reported; the server enforces its own).

    Raises:
        OptionError: no ``base_url``; httpx not installed.
        OpenAIServerError: the server does not answer at ``/models`` or lists no model.
    """

    name = "openai"
    supports_json_schema = True
    tokenizes_locally = False

    def __init__(self, model: str | None = None, options: LLMEngineOptions | None = None):
        super().__init__(options)
        opts = self.options
        if not opts.base_url:
            raise OptionError("base_url", opts.base_url, "the openai backend needs the server's URL, e.g. "
                              "--base-url http://127.0.0.1:8000/v1")
        try:
            import httpx  # noqa: F401
        except ImportError:  # pragma: no cover - httpx comes with huggingface_hub
            raise OptionError("backend", "openai", "needs httpx: pip install httpx") from None
        self.base_url = opts.base_url.rstrip("/")
        key = os.environ.get(opts.api_key_env) if opts.api_key_env else None
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.model = model if model not in (None, "", "embedded") else self._first_model()
        self.max_model_len = opts.max_model_len or 0
        self.limit = AdaptiveLimit(start=min(16, opts.max_concurrency), high=opts.max_concurrency)
        self.stats.update(retries=0, overloads=0)

    # -------------------------------------------------------------- server
    def _first_model(self) -> str:
        import httpx

        try:
            response = httpx.get(f"{self.base_url}/models", headers=self._headers, timeout=10)
            response.raise_for_status()
            models = [m.get("id") for m in response.json().get("data", []) if m.get("id")]
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            raise OpenAIServerError(f"the server at {self.base_url} did not list its models ({exc}); is it "
                                    "running? Start one (e.g. python -m vllm.entrypoints.openai.api_server "
                                    "--model DIR) or give --base-url") from None
        if not models:
            raise OpenAIServerError(f"the server at {self.base_url} lists no model; give --model")
        return str(models[0])

    def _body(self, request: Request) -> tuple[str, dict[str, Any]]:
        p: SamplingOptions = request.params
        body: dict[str, Any] = {"model": self.model, "max_tokens": p.max_tokens, "temperature": p.temperature,
                                "top_p": p.top_p, "n": 1}
        if p.seed is not None:
            body["seed"] = p.seed
        if p.stop:
            body["stop"] = list(p.stop)
        # vLLM-style extensions, sent only when set (a strict OpenAI server refuses unknown fields)
        if p.top_k > 0:
            body["top_k"] = p.top_k
        if p.min_tokens:
            body["min_tokens"] = p.min_tokens
        if p.repetition_penalty != 1.0:
            body["repetition_penalty"] = p.repetition_penalty
        if p.ignore_eos:
            body["ignore_eos"] = True
        if p.json_schema is not None:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "output", "schema": p.json_schema}}
        prompt = request.prompt
        if isinstance(prompt, str) or (isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[0], int)):
            body["prompt"] = prompt if isinstance(prompt, str) else list(prompt)
            return "/completions", body
        body["messages"] = [dict(m) for m in prompt]
        return "/chat/completions", body

    async def _one(self, client: Any, request: Request) -> Sample:
        import httpx

        path, body = self._body(request)
        last = ""
        for attempt in range(self.options.max_retries + 1):
            if attempt:
                self.stats["retries"] += 1
            wait = None
            async with self.limit:
                try:
                    response = await client.post(path, json=body)
                except (httpx.TimeoutException, httpx.TransportError) as exc:
                    self.limit.overloaded()
                    self.stats["overloads"] += 1
                    last = f"{type(exc).__name__}: {exc}"
                    response = None
            if response is not None:
                if response.status_code == 200:
                    self.limit.succeeded()
                    return self._sample(path, response)
                message = _error_message(response)
                if response.status_code in RETRYABLE:
                    self.limit.overloaded()
                    self.stats["overloads"] += 1
                    last = f"HTTP {response.status_code}: {message}"
                    wait = _retry_after(response)
                elif response.status_code in (400, 413, 422) and any(h in message.lower() for h in _TOO_LONG_HINTS):
                    return Sample("", [], "stop", status=STATUS_PROMPT_TOO_LONG, detail=message[:500])
                else:
                    raise OpenAIServerError(f"the server at {self.base_url} refused a request with HTTP "
                                            f"{response.status_code}: {message[:300]}")
            if attempt < self.options.max_retries:
                await asyncio.sleep(wait if wait is not None else min(30.0, 0.5 * 2 ** attempt) * random.uniform(0.5, 1.5))
        raise OpenAIServerError(f"the server at {self.base_url} did not answer after {self.options.max_retries + 1} "
                                f"tries (last: {last}); what was written is kept: start the server again and "
                                "rerun with --resume")

    @staticmethod
    def _sample(path: str, response: Any) -> Sample:
        try:
            data = response.json()
            choice = data["choices"][0]
            text = (choice["message"].get("content") if path == "/chat/completions" else choice["text"]) or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise OpenAIServerError(f"the server's answer is not an OpenAI completion ({type(exc).__name__}: "
                                    f"{exc}): {response.text[:200]}") from None
        usage = data.get("usage") or {}
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        return Sample(text, [], finish, num_tokens=usage.get("completion_tokens"),
                      prompt_tokens=usage.get("prompt_tokens"))

    async def _all(self, requests: list[Request]) -> list[Sample]:
        import httpx

        self.limit.reset_loop()
        limits = httpx.Limits(max_connections=self.options.max_concurrency,
                              max_keepalive_connections=self.options.max_concurrency)
        async with httpx.AsyncClient(base_url=self.base_url, headers=self._headers, limits=limits,
                                     timeout=httpx.Timeout(self.options.request_timeout, connect=10.0)) as client:
            tasks = [asyncio.ensure_future(self._one(client, r)) for r in requests]
            try:
                return list(await asyncio.gather(*tasks))
            except BaseException:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise

    def _generate(self, requests: list[Request]) -> list[Sample]:
        return _run_async(self._all(requests))

    def settings(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model, "base_url": self.base_url}

    def count_tokens(self, prompt: Any) -> int:
        """An estimate (~4 characters a token) for sizing windows: the server holds the tokenizer."""
        if isinstance(prompt, str):
            return len(prompt) // 4 + 1
        if prompt and isinstance(prompt[0], int):
            return len(prompt)
        return sum(len(str(m.get("content") or "")) for m in prompt) // 4 + 1

    def encode_prompt(self, prompt: Any) -> list[int]:  # pragma: no cover - never called: no local tokenizer
        raise OptionError("backend", "openai", "the server tokenizes prompts; there is no local tokenizer")

    def decode(self, token_ids: list[int]) -> str:  # pragma: no cover
        raise OptionError("backend", "openai", "the server returns text; there is no local tokenizer")


def _error_message(response: Any) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            return str(err.get("message") or err.get("detail") or json.dumps(err))[:500]
        return str(data.get("message") or data.get("detail") or err)[:500]
    return str(data)[:500]


def _retry_after(response: Any) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return min(60.0, max(0.0, float(value))) if value is not None else None
    except ValueError:
        return None
