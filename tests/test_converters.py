"""HF -> CTranslate2 conversion (manifest, verification, refusals, CLI) and the model builders."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest

from instructmill.converters import (
    MANIFEST_NAME,
    QUANTIZATIONS,
    convert_model,
    find_converter,
    load_verified_manifest,
    read_manifest,
    register,
    supported_architectures,
)
from instructmill.converters.cli import convert as convert_cmd
from instructmill.converters.registry import Converter
from instructmill.converters.seq2seq import parse_opus_mt_languages
from instructmill.converters.verify import DEFAULT_SENTENCES, token_agreement
from instructmill.errors import ConversionError, ModelNotFoundError, OptionError, VerificationError

SENTENCES = [
    "The cat sees a book today.",
    "My friend writes a long story after work.",
    "Where is the doctor?",
    "Give three tips for staying healthy.",
    "The farmer sells an old map near the river in the city on Monday.",
]


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture(scope="module")
def converted(tiny_marian_dir, tmp_path_factory):
    """float32 and int8 conversions of the tiny Marian model (converted once for the module)."""
    root = tmp_path_factory.mktemp("ct2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {q: convert_model(tiny_marian_dir, root / f"ct2-{q}", quantization=q)
                for q in ("float32", "int8")}


def _hf_greedy(model_dir: Path, sentences: list[str], n: int) -> list[list[int]]:
    """HF greedy output ids (decoder start and </s> removed)."""
    import torch
    from transformers import AutoTokenizer, MarianMTModel

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = MarianMTModel.from_pretrained(model_dir).eval()
    batch = tok(sentences, return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = model.generate(**batch, num_beams=1, do_sample=False, max_new_tokens=n + 1)
    pad = model.config.pad_token_id
    rows = []
    for row in out.tolist():
        ids = []
        for t in row[1:]:
            if t in (0, pad):  # </s> = 0
                break
            ids.append(t)
        rows.append(ids)
    return rows


def _ct2_greedy(ct2_dir: Path, model_dir: Path, sentences: list[str], n: int,
                compute_type: str = "float32") -> list[list[int]]:
    import ctranslate2
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    source = [tok.convert_ids_to_tokens(ids) for ids in tok(sentences).input_ids]
    translator = ctranslate2.Translator(str(ct2_dir), device="cpu", compute_type=compute_type)
    results = translator.translate_batch(source, beam_size=1, max_decoding_length=n)
    return [tok.convert_tokens_to_ids(r.hypotheses[0]) for r in results]


# --- conversion --------------------------------------------------------------------------------

def test_float32_conversion_matches_hf_token_for_token(converted, tiny_marian_dir):
    result = converted["float32"]
    out = result.output_dir
    hf = _hf_greedy(tiny_marian_dir, SENTENCES, 64)
    ct2 = _ct2_greedy(out, tiny_marian_dir, SENTENCES, 64)
    assert ct2 == hf
    # real multi-token outputs that depend on the input
    assert all(len(ids) >= 5 for ids in hf)
    assert len({tuple(ids) for ids in hf}) == len(SENTENCES)

    ver = result.manifest["verification"]
    assert ver["passed"] is True
    assert ver["reference"] == "transformers"
    assert ver["compute_type"] == "float32"
    assert ver["sentences"] == len(DEFAULT_SENTENCES)
    assert ver["exact_matches"] == ver["sentences"]
    assert ver["token_agreement"] == 1.0
    assert result.verification is not None and result.verification.passed


def test_manifest_fields_come_from_the_model(converted, tiny_marian_dir):
    out = converted["float32"].output_dir
    manifest = read_manifest(out)
    assert manifest == converted["float32"].manifest
    assert manifest["format"] == "instructmill-ct2/1"
    assert manifest["kind"] == "translation"
    assert manifest["architecture"] == "MarianMTModel"
    assert manifest["source"] == str(tiny_marian_dir.resolve())
    assert manifest["revision"] is None
    assert manifest["quantization"] == "float32"
    assert manifest["languages"] == {"source": "en", "target": "xx"}  # parsed from opus-mt-en-xx
    assert manifest["tokenizer"]["type"] == "sentencepiece"
    assert manifest["tokenizer"]["source_spm"] == "source.spm"
    assert manifest["max_input_tokens"] == 512

    gen = json.loads((tiny_marian_dir / "generation_config.json").read_text())
    dec = manifest["decoding"]
    assert dec["beam_size"] == gen["num_beams"] == 4
    assert dec["max_decoding_length"] == gen["max_length"] == 512
    assert dec["length_penalty"] == 1.0
    # <pad> can never be generated: CTranslate2's Marian vocabulary does not contain it, so no
    # suppression entry is needed (and CTranslate2 rejects suppressing an unknown token).
    vocab = json.loads((out / "shared_vocabulary.json").read_text())
    assert "<pad>" not in vocab
    assert len(vocab) == len(json.loads((tiny_marian_dir / "vocab.json").read_text())) - 1
    assert dec["suppress_sequences"] == []
    assert set(manifest["versions"]) == {"ctranslate2", "transformers", "instructmill"}
    assert manifest["created"].endswith("Z")
    # self-contained: tokenizer files next to model.bin
    for name in ("model.bin", "source.spm", "target.spm", "vocab.json", "tokenizer_config.json",
                 "generation_config.json", MANIFEST_NAME):
        assert (out / name).is_file(), name
    assert (out / "source.spm").read_bytes() == (tiny_marian_dir / "source.spm").read_bytes()
    assert load_verified_manifest(out)["verification"]["passed"] is True


@pytest.mark.isa
def test_int8_conversion_checks_float32_exactly_and_measures_agreement(converted,
                                                                       tiny_marian_dir):
    from instructmill.converters.fidelity import LIMITS

    result = converted["int8"]
    ver = result.manifest["verification"]
    assert result.manifest["quantization"] == "int8"
    assert ver["passed"] is True and ver["reference"] == "float32"
    assert ver["compute_type"] == "int8"
    assert ver["float32_exact_matches"] == ver["sentences"] == len(DEFAULT_SENTENCES)
    assert ver["min_token_agreement"] == LIMITS["translation"].min_token_agreement
    assert "float32 conversion" in ver["detail"] and "log-prob gap" in ver["detail"]
    int8_size = (result.output_dir / "model.bin").stat().st_size
    f32_size = (converted["float32"].output_dir / "model.bin").stat().st_size
    assert int8_size < 0.5 * f32_size
    # the recorded agreement is what the int8 model really does (float32 = transformers)
    hf = _hf_greedy(tiny_marian_dir, list(DEFAULT_SENTENCES), 48)
    ct2 = _ct2_greedy(result.output_dir, tiny_marian_dir, list(DEFAULT_SENTENCES), 48, "int8")
    pairs = [token_agreement(a, b) for a, b in zip(ct2, hf)]
    measured = sum(p for p, _ in pairs) / sum(n for _, n in pairs)
    assert ver["token_agreement"] == pytest.approx(measured, abs=1e-4)
    assert ver["exact_matches"] == sum(a == b for a, b in zip(ct2, hf))
    # the cipher model survives int8 on every CPU kind measured (all outputs identical, gap
    # 0.033 nats/token on AVX2, AVX and SSE4.1): well inside the limits
    fid = ver["fidelity"]
    assert fid["exact_share"] == 1.0 and fid["window_agreement"] == 1.0
    assert 0 < fid["logprob_gap"] <= LIMITS["translation"].max_logprob_gap / 2


def _damaged_quantization(monkeypatch, scale: float) -> None:
    """Make every non-float32 conversion start from weights with ``scale`` x std Gaussian
    noise: a quantization that broke the model, while the float32 conversion stays right."""
    import instructmill.converters.base as base

    real = base._ct2_convert

    def convert(model_dir, out, quantization, *args):
        if quantization == "float32":
            return real(model_dir, out, quantization, *args)
        import torch
        from safetensors.torch import load_file, save_file

        noisy = Path(str(out) + "-noisy-source")
        shutil.copytree(model_dir, noisy)
        weights = load_file(str(noisy / "model.safetensors"))
        gen = torch.Generator().manual_seed(0)
        weights = {k: (v + scale * v.std() * torch.randn(v.shape, generator=gen)
                       if v.dim() == 2 else v) for k, v in weights.items()}
        save_file(weights, str(noisy / "model.safetensors"), metadata={"format": "pt"})
        return real(noisy, out, quantization, *args)

    monkeypatch.setattr(base, "_ct2_convert", convert)


@pytest.mark.isa
def test_damaged_int8_translation_model_is_refused(tiny_marian_dir, tmp_path, monkeypatch):
    from instructmill.converters.fidelity import LIMITS

    _damaged_quantization(monkeypatch, 0.5)
    with pytest.raises(VerificationError) as info:
        convert_model(tiny_marian_dir, tmp_path / "ct2", quantization="int8")
    message = str(info.value)
    assert "--quantization float32" in message and "int8_float32" in message
    assert "\n" not in message
    ver = read_manifest(tmp_path / "ct2")["verification"]
    assert ver["passed"] is False
    assert ver["float32_exact_matches"] == len(DEFAULT_SENTENCES)
    fid, limits = ver["fidelity"], LIMITS["translation"]
    assert (fid["logprob_gap"] > limits.max_logprob_gap
            or fid["prefix_agreement"] < limits.min_token_agreement)


def test_m2m100_converts_and_verifies(tmp_path):
    from instructmill.testing import build_m2m100

    src = build_m2m100(tmp_path / "m2m")
    result = convert_model(src, tmp_path / "m2m-ct2", quantization="float32",
                           source_lang="en", target_lang="de")
    m = result.manifest
    assert m["architecture"] == "M2M100ForConditionalGeneration"
    assert m["verification"]["passed"] is True
    assert m["verification"]["exact_matches"] == len(DEFAULT_SENTENCES)
    assert m["verification"]["languages"] == {"source": "en", "target": "de"}
    assert m["tokenizer"] == {"type": "hf", "language_tokens": "m2m100",
                              "source_lang_token": "__en__", "target_lang_token": "__de__"}
    assert m["languages"] == {"source": "en", "target": "de"}
    assert m["decoding"]["suppress_sequences"] == [["<pad>"]]
    assert m["decoding"]["beam_size"] == 5 and m["decoding"]["max_decoding_length"] == 200
    # the 100 language tokens and 8 madeup words are in the CTranslate2 vocabulary
    vocab = json.loads((result.output_dir / "shared_vocabulary.json").read_text())
    config = json.loads((src / "config.json").read_text())
    assert len(vocab) == config["vocab_size"]
    assert "__de__" in vocab and vocab[-1] == "madeupword7"


def test_nllb_converts_and_verifies(tmp_path):
    from instructmill.testing import build_m2m100

    src = build_m2m100(tmp_path / "nllb", tokenizer="nllb")
    result = convert_model(src, tmp_path / "nllb-ct2", quantization="float32",
                           source_lang="eng_Latn", target_lang="deu_Latn")
    m = result.manifest
    assert m["verification"]["passed"] is True
    assert m["verification"]["exact_matches"] == len(DEFAULT_SENTENCES)
    assert m["tokenizer"] == {"type": "hf", "language_tokens": "nllb",
                              "source_lang_token": "eng_Latn", "target_lang_token": "deu_Latn"}
    assert (result.output_dir / "tokenizer.json").is_file()
    vocab = json.loads((result.output_dir / "shared_vocabulary.json").read_text())
    assert len(vocab) == json.loads((src / "config.json").read_text())["vocab_size"]
    with pytest.raises(ConversionError, match="xxx_Latn"):
        convert_model(src, tmp_path / "other", quantization="float32", target_lang="xxx_Latn")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nllb", "nllb-ct2"]  # no leftovers


# --- refusals ----------------------------------------------------------------------------------

def test_unknown_architecture_lists_supported(tmp_path):
    folder = tmp_path / "weird"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["FooForBar"],
                                                    "model_type": "foo"}))
    with pytest.raises(ConversionError) as exc:
        convert_model(folder, tmp_path / "out")
    msg = str(exc.value)
    assert "FooForBar" in msg
    assert "MarianMTModel" in msg and "M2M100ForConditionalGeneration" in msg
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_force(converted, tiny_marian_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConversionError, match="already exists"):
        convert_model(tiny_marian_dir, out, quantization="float32", verify=False)
    with pytest.raises(ConversionError, match="does not look like a converted model"):
        convert_model(tiny_marian_dir, out, quantization="float32", verify=False, force=True)
    assert (out / "notes.txt").read_text() == "mine"
    # a previous conversion is replaced with force
    previous = tmp_path / "previous"
    shutil.copytree(converted["float32"].output_dir, previous)
    result = convert_model(tiny_marian_dir, previous, quantization="int8", verify=False,
                           force=True)
    assert read_manifest(previous)["quantization"] == "int8"
    assert result.verification is None
    assert read_manifest(previous)["verification"]["passed"] is None
    with pytest.raises(VerificationError, match="without verification"):
        load_verified_manifest(previous)
    assert load_verified_manifest(previous, allow_unverified=True)["quantization"] == "int8"


def test_tampered_manifest_is_refused_with_reason(converted, tmp_path):
    folder = tmp_path / "tampered"
    shutil.copytree(converted["float32"].output_dir, folder)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["verification"]["passed"] = False
    manifest["verification"]["detail"] = "sentence 2 differs at output token 3"
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(VerificationError) as exc:
        load_verified_manifest(folder)
    assert "refusing to use" in str(exc.value)
    assert "sentence 2 differs at output token 3" in str(exc.value)
    assert load_verified_manifest(folder, allow_unverified=True)["verification"]["passed"] is False


def test_folder_without_manifest_is_refused(tiny_marian_dir, tmp_path):
    with pytest.raises(ConversionError, match="no instructmill.json"):
        read_manifest(tiny_marian_dir)
    with pytest.raises(ConversionError, match="not a folder"):
        load_verified_manifest(tmp_path / "missing")


def test_failed_verification_writes_failed_manifest_and_raises(tiny_marian_dir, tmp_path,
                                                                 monkeypatch):
    from instructmill.converters import base

    real = base.reference_outputs

    def wrong_reference(*args, **kwargs):
        ref = real(*args, **kwargs)
        ref.outputs[1] = ref.outputs[1][:2] + [ref.outputs[1][2] + 1] + ref.outputs[1][3:]
        return ref

    monkeypatch.setattr(base, "reference_outputs", wrong_reference)
    out = tmp_path / "bad"
    with pytest.raises(VerificationError) as exc:
        convert_model(tiny_marian_dir, out, quantization="float32")
    assert "sentence 2 differs at output token 3" in str(exc.value)
    ver = read_manifest(out)["verification"]
    assert ver["passed"] is False
    assert ver["exact_matches"] == len(DEFAULT_SENTENCES) - 1
    with pytest.raises(VerificationError, match="sentence 2 differs at output token 3"):
        load_verified_manifest(out)


def test_remote_code_needs_permission(tiny_marian_dir, tmp_path):
    folder = tmp_path / "custom"
    shutil.copytree(tiny_marian_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_custom.CustomModel"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match="trust_remote_code"):
        convert_model(folder, tmp_path / "out")


def test_options_are_validated(tiny_marian_dir, tmp_path):
    with pytest.raises(OptionError, match="quantization"):
        convert_model(tiny_marian_dir, tmp_path / "out", quantization="int4")
    with pytest.raises(OptionError, match="min_token_agreement"):
        convert_model(tiny_marian_dir, tmp_path / "out", min_token_agreement=1.5)
    assert "int8_float32" in QUANTIZATIONS and "bfloat16" in QUANTIZATIONS
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        convert_model(tmp_path / "nowhere" / "model", tmp_path / "out")


def test_hub_id_offline_says_how_to_use_a_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(ModelNotFoundError) as exc:
        convert_model("Helsinki-NLP/opus-mt-en-de", tmp_path / "out")
    msg = str(exc.value)
    assert "offline" in msg
    assert "pass its path" in msg and "folder" in msg
    assert not (tmp_path / "out").exists()


# --- registry ----------------------------------------------------------------------------------

def test_registry_lookup_and_registration():
    archs = supported_architectures()
    assert {a: archs[a] for a in ("M2M100ForConditionalGeneration", "MarianMTModel")} == {
        "M2M100ForConditionalGeneration": "m2m100", "MarianMTModel": "marian"}
    assert archs["LlamaForCausalLM"] != "marian"  # decoder LLMs registered beside them
    assert find_converter({"architectures": ["MarianMTModel"]}).name == "marian"
    assert find_converter({"model_type": "m2m_100"}).name == "m2m100"  # no architectures
    with pytest.raises(ConversionError):  # a known model_type with another head is refused
        find_converter({"architectures": ["MarianForCausalLM"], "model_type": "marian"})

    class Duplicate(Converter):
        architectures = ("MarianMTModel",)

    with pytest.raises(ValueError, match="already registered"):
        register(Duplicate)


def test_parse_opus_mt_languages():
    assert parse_opus_mt_languages("Helsinki-NLP/opus-mt-en-de") == ("en", "de")
    assert parse_opus_mt_languages("Helsinki-NLP/opus-mt-tc-big-en-pt") == ("en", "pt")
    assert parse_opus_mt_languages("/models/opus-mt-de-en/") == ("de", "en")
    assert parse_opus_mt_languages("facebook/m2m100_418M") is None


# --- CLI ---------------------------------------------------------------------------------------

def test_cli_convert(converted, tiny_marian_dir, tmp_path):
    from click.testing import CliRunner

    runner = CliRunner()
    out = tmp_path / "cli-out"
    res = runner.invoke(convert_cmd, [str(tiny_marian_dir), str(out), "--quantization", "float32"])
    assert res.exit_code == 0, res.output
    assert "verification: passed" in res.output
    assert read_manifest(out)["verification"]["exact_matches"] == len(DEFAULT_SENTENCES)

    res = runner.invoke(convert_cmd, [str(tiny_marian_dir), str(out)])
    assert res.exit_code == 1
    assert "already exists" in res.output and "Traceback" not in res.output

    res = runner.invoke(convert_cmd, [str(tiny_marian_dir), str(out), "-q", "int3"])
    assert res.exit_code == 2 and "int3" in res.output


# --- builders ----------------------------------------------------------------------------------

def test_builder_is_deterministic_and_pads_vocab(tiny_marian_dir, tmp_path):
    from instructmill.testing import build_marian

    again = build_marian(tmp_path / "again")
    assert ((again / "model.safetensors").read_bytes()
            == (tiny_marian_dir / "model.safetensors").read_bytes())
    padded = build_marian(tmp_path / "padded", vocab_size=300)
    vocab = json.loads((padded / "vocab.json").read_text())
    assert len(vocab) == 300
    assert vocab["</s>"] == 0 and vocab["<unk>"] == 1 and vocab["<pad>"] == 299
    config = json.loads((padded / "config.json").read_text())
    assert config["vocab_size"] == 300 and config["pad_token_id"] == 299
    gen = json.loads((padded / "generation_config.json").read_text())
    assert gen["bad_words_ids"] == [[299]] and gen["decoder_start_token_id"] == 299
    assert gen["forced_eos_token_id"] == 0


def test_marian_pair_round_trip(tiny_marian_pair):
    from transformers import AutoTokenizer

    forward, backward = tiny_marian_pair
    tok = AutoTokenizer.from_pretrained(forward)
    src_ids = [tok(s).input_ids[:-1] for s in SENTENCES]  # without </s>
    xx_ids = _hf_greedy(forward, SENTENCES, 64)
    # one output token per source token, and not a copy of the input
    assert [len(x) for x in xx_ids] == [len(s) for s in src_ids]
    assert all(x != s for x, s in zip(xx_ids, src_ids))
    xx_text = tok.batch_decode(xx_ids, skip_special_tokens=True)
    back = tok.batch_decode(_hf_greedy(backward, xx_text, 64), skip_special_tokens=True)
    assert sum(b == s for b, s in zip(back, SENTENCES)) >= 3


# --- load-time check of another compute type ----------------------------------------------------

@pytest.mark.isa
def test_float32_translation_folder_run_as_int8_is_checked_once(converted, tmp_path, monkeypatch,
                                                                caplog):
    from instructmill.converters.fidelity import Fidelity
    from instructmill.engine.ctranslate2_backend import CTranslate2Backend, CTranslate2Options

    folder = tmp_path / "opus-mt-en-xx"
    shutil.copytree(converted["float32"].output_dir, folder)
    # "auto" is int8 on CPU: checked against the folder's float32 run, passes (the cipher model
    # gives identical outputs in int8), recorded
    backend = CTranslate2Backend(folder)
    assert backend.compute_type == "int8"
    [(key, check)] = read_manifest(folder)["compute_checks"].items()
    assert key.startswith("int8_float32@") and check["passed"] is True
    assert check["exact_share"] == 1.0 and check["sentences"] == len(DEFAULT_SENTENCES)
    f32 = CTranslate2Backend(folder, options=CTranslate2Options(compute_type="float32"))
    assert f32.compute_type == "float32"
    texts = list(SENTENCES)
    assert (backend.translate_batch(backend.encode(texts))
            == f32.translate_batch(f32.encode(texts)))
    # a failing check: "auto" falls back to float32 with a warning, an explicit int8 is refused
    bad = tmp_path / "bad"
    shutil.copytree(converted["float32"].output_dir, bad)

    def strays(reference_dir, candidate_dir, compute_type, inputs, device="cpu"):
        return Fidelity(compute_type=compute_type, isa="AVX2", sentences=8, exact_share=0.25,
                        window_agreement=0.4, logprob_gap=0.9, top1_agreement=None,
                        prefix_agreement=0.3)
    monkeypatch.setattr("instructmill.converters.load_check.measure", strays)
    with caplog.at_level("WARNING"):
        assert CTranslate2Backend(bad).compute_type == "float32"
    assert "using float32 instead" in caplog.text and "log-prob gap 0.900" in caplog.text
    with pytest.raises(VerificationError) as info:
        CTranslate2Backend(bad, options=CTranslate2Options(compute_type="int8"))
    assert "--compute-type float32" in str(info.value) and "int8_float32" in str(info.value)
    # an int8 folder run as float32 only loses the activation rounding: nothing to check
    assert CTranslate2Backend(converted["int8"].output_dir, options=CTranslate2Options(
        compute_type="float32")).compute_type == "float32"
