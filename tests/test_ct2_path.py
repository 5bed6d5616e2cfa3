"""The CTranslate2 MarianMT path end to end: convert (int8, float32), verify, back-translate via the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("transformers")
pytest.importorskip("ctranslate2")

from instructmill.cli import cli  # noqa: E402
from instructmill.engine.chain import translate_chain  # noqa: E402
from instructmill.engine.ctranslate2_backend import CTranslate2Backend, CTranslate2Options  # noqa: E402

SENTENCES = ["the cat sees a book today.", "my friend likes the red car in the morning.",
             "the children paint the blue window.", "a dog finds an old map near the river."]


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


@pytest.fixture(scope="module")
def converted(tiny_marian_pair, tmp_path_factory):
    """The pair converted with float32 and int8 through ``instructmill convert``."""
    root = tmp_path_factory.mktemp("ct2")
    out = {}
    for quant in ("float32", "int8"):
        for name, src in zip(("fwd", "bwd"), tiny_marian_pair):
            target = root / f"{name}-{quant}"
            result = CliRunner().invoke(cli, ["convert", str(src), str(target), "--quantization", quant])
            assert result.exit_code == 0, result.output
            manifest = json.loads((target / "instructmill.json").read_text())
            assert manifest["verification"]["passed"] is True
            assert manifest["quantization"] == quant
            out[(name, quant)] = target
    return out


def hf_greedy(model_dir: Path, texts: list[str]) -> list[str]:
    import torch
    from transformers import AutoTokenizer, MarianMTModel

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = MarianMTModel.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        ids = model.generate(**tok(texts, return_tensors="pt", padding=True), num_beams=1, do_sample=False,
                             max_new_tokens=64)
    return tok.batch_decode(ids, skip_special_tokens=True)


def test_float32_backend_equals_hf_greedy(converted, tiny_marian_pair):
    backend = CTranslate2Backend(converted[("fwd", "float32")],
                                 options=CTranslate2Options(compute_type="float32", beam_size=1))
    outputs, _ = translate_chain(SENTENCES, [backend])
    assert [o[0] for o in outputs] == hf_greedy(tiny_marian_pair[0], SENTENCES)
    assert all(o[0] and o[0] != s for o, s in zip(outputs, SENTENCES))


@pytest.mark.parametrize("quant", ["float32", "int8"])
def test_backtranslate_cli_round_trip(converted, tiny_marian_pair, tmp_path, quant):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": f"s{i}", "instruction": s}) + "\n" for i, s in enumerate(SENTENCES))
                   + json.dumps({"id": "code", "instruction": "the cat sees `x = 1` today."}) + "\n")
    out = tmp_path / "bt.jsonl"
    result = CliRunner().invoke(cli, [
        "backtranslate", str(src), "-o", str(out), "--forward-model", str(converted[("fwd", quant)]),
        "--backward-model", str(converted[("bwd", quant)]), "--pivot", "xx", "--compute-type", quant])
    assert result.exit_code == 0, result.output
    records = {r["id"]: r for r in lines(out) + lines(tmp_path / "bt.discards.jsonl")}
    assert sorted(records) == ["code", "s0", "s1", "s2", "s3"]
    pivots = [records[f"s{i}"]["extra"]["pivot_text"]["instruction"] for i in range(len(SENTENCES))]
    finals = [records[f"s{i}"]["instruction"] for i in range(len(SENTENCES))]
    for i, sentence in enumerate(SENTENCES):
        rec = records[f"s{i}"]
        assert pivots[i] and pivots[i] != sentence  # hop 1 really translated
        assert rec["settings"]["compute_type"] == quant and rec["settings"]["pivot"] == "xx"
        assert rec["status"] in ("ok", "unchanged", "length_mismatch", "degenerate")
    if quant == "float32":
        # float32 equals HF greedy on both hops (the backward model deciphers the forward one)
        assert pivots == hf_greedy(tiny_marian_pair[0], SENTENCES)
        assert finals == hf_greedy(tiny_marian_pair[1], pivots)
        assert sum(f == s for f, s in zip(finals, SENTENCES)) >= 2
    assert "`x = 1`" in records["code"]["instruction"] or records["code"]["status"] == "placeholder_lost"


def test_wrong_pivot_for_bilingual_model_is_refused(converted, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"instruction": "the cat sees a book."}) + "\n")
    result = CliRunner().invoke(cli, [
        "backtranslate", str(src), "-o", str(tmp_path / "o.jsonl"),
        "--forward-model", str(converted[("fwd", "float32")]),
        "--backward-model", str(converted[("bwd", "float32")]), "--pivot", "de"])
    assert result.exit_code != 0 and "en->xx" in result.output and "Traceback" not in result.output


def test_translator_is_shared_between_backends(converted):
    options = CTranslate2Options(compute_type="float32")
    a = CTranslate2Backend(converted[("fwd", "float32")], options=options)
    b = CTranslate2Backend(converted[("fwd", "float32")], options=options)
    assert a._translator is b._translator


@pytest.mark.parametrize("style,src,tgt", [("m2m100", "en", "fr"), ("nllb", "en", "fr")])
def test_multilingual_backend_equals_hf_greedy(tmp_path, style, src, tgt):
    import torch
    from transformers import AutoTokenizer, M2M100ForConditionalGeneration

    from instructmill.converters import convert_model
    from instructmill.engine.ctranslate2_backend import NLLB_CODES
    from instructmill.testing import build_m2m100

    hf_dir = build_m2m100(tmp_path / style, tokenizer=style)
    convert_model(hf_dir, tmp_path / "ct2", quantization="float32")
    backend = CTranslate2Backend(tmp_path / "ct2", source_lang=src, target_lang=tgt,
                                 options=CTranslate2Options(compute_type="float32", beam_size=1,
                                                            max_decoding_length=13))
    outputs, _ = translate_chain(SENTENCES, [backend])
    s, t = (NLLB_CODES[src], NLLB_CODES[tgt]) if style == "nllb" else (src, tgt)
    tok = AutoTokenizer.from_pretrained(str(hf_dir), src_lang=s)
    model = M2M100ForConditionalGeneration.from_pretrained(str(hf_dir)).eval()
    forced = tok.convert_tokens_to_ids(t if style == "nllb" else f"__{t}__")
    with torch.no_grad():
        ids = model.generate(**tok(SENTENCES, return_tensors="pt", padding=True), num_beams=1,
                             do_sample=False, forced_bos_token_id=forced, max_new_tokens=13)
    target_token = t if style == "nllb" else f"__{t}__"
    reference = [text.replace(target_token, "", 1).strip()  # transformers 5 keeps M2M100's __fr__
                 for text in tok.batch_decode(ids, skip_special_tokens=True)]
    assert [o[0] for o in outputs] == reference
    assert all(len(o[0]) > 3 for o in outputs)
