"""The back-translation benchmark workload on the tiny cipher MarianMT model (``options.model``).

The cipher model (``instructmill.testing.build_marian``) emits one target token per source piece,
then ``</s>``: so with natural lengths every engine's target-token count is known in advance
(source tokens minus one ``</s>`` per sentence), and int8 / float32 outputs agree. The ShareGPT
input is a small file written here (``INSTRUCTMILL_SHARED``), so nothing depends on ../shared.
No timing is asserted.
"""
from __future__ import annotations

import gzip
import json
import math
import os
import shutil
from pathlib import Path

import pytest

from instructmill.bench import translation_model as tm
from instructmill.bench.core import BenchOptions
from instructmill.bench.workloads import backtranslation as bt
from instructmill.errors import OptionError
from instructmill.testing import default_corpus

N = 10


def _write_sharegpt(path: Path, turns: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for i, text in enumerate(turns):
            conv = {"id": str(i), "conversations": [{"from": "human", "value": text},
                                                    {"from": "gpt", "value": "Sure."}]}
            fh.write(json.dumps(conv) + "\n")
        fh.write("{not json\n")  # an unreadable line is skipped
    return path


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """INSTRUCTMILL_SHARED -> a folder whose ShareGPT sample holds simple English sentences."""
    root = tmp_path_factory.mktemp("shared")
    sents = default_corpus(60, seed=3)
    _write_sharegpt(root / "data" / "sharegpt_sample.jsonl.gz",
                    [" ".join(sents[i:i + 3]) for i in range(0, 60, 3)])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INSTRUCTMILL_SHARED", str(root))
        yield root


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("bench-cache")


def _run(**kw):
    return bt.run(BenchOptions(**kw), log=lambda _m: None)


def _source_tokens(model_dir: Path, sentences: list[str]) -> int:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_dir / "source.spm"))
    return sum(len(p) + 1 for p in sp.encode(sentences, out_type=str))  # + </s>


@pytest.fixture(scope="module")
def full(shared, cache, tiny_marian_dir):
    """Every engine, natural output lengths, on N sentences."""
    return _run(quick=True, model=str(tiny_marian_dir), num_prompts=N, cache_dir=str(cache))


def test_every_engine_counts_requests_and_tokens(full, tiny_marian_dir):
    by = {r.engine: r for r in full.results}
    assert list(by) == list(bt.ENGINES)
    assert full.results[0].engine == "instructmill" and full.results[0].role == "instructmill"
    assert {r.role for r in full.results[1:]} == {"baseline"}
    assert full.headline_metric == "output_tokens_per_s"
    sentences_sha = full.detail["comparable"]["sentences_sha256"]
    # the same N sentences as select_sentences picks, counted independently with the model's spm
    cands = tm.extract_candidates(tm.sharegpt_path())
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tiny_marian_dir / "source.spm"))
    picked = tm.select_sentences(cands, lambda ts: [len(p) + 1 for p in sp.encode(ts, out_type=str)], N)
    assert tm._sha("\n".join(picked))[:16] == sentences_sha
    source = _source_tokens(tiny_marian_dir, picked)
    assert full.detail["comparable"]["source_tokens"] == source
    for r in full.results:
        m = r.metrics
        assert m["requests"] == N, r.engine
        assert m["input_tokens"] == source, r.engine
        # cipher model: one target token per source piece, </s> not counted
        assert m["output_tokens"] == source - N, r.engine
        assert m["seconds"] > 0
        assert m["total_tokens_per_s"] / m["output_tokens_per_s"] == pytest.approx(
            (m["input_tokens"] + m["output_tokens"]) / m["output_tokens"], rel=1e-3)
        assert m["total_tokens_per_s"] > m["output_tokens_per_s"] > 0
        assert m["peak_rss_mb"] > 0
        assert len(r.settings["rounds_output_tokens_per_s"]) >= 1
    assert len(by["instructmill"].settings["rounds_output_tokens_per_s"]) >= bt.MIN_ROUNDS
    assert set(full.ratios()) == {"ct2_raw_best", "hf_batched", "hf_pipeline_per_sentence"}


def test_outputs_are_scored_against_the_raw_engine(full):
    by = {r.engine: r for r in full.results}
    own = by["instructmill"].metrics
    assert (own["bleu"], own["chrf"], own["identical_outputs"]) == (100.0, 100.0, 1.0)
    assert by["ct2_raw_best"].metrics["bleu"] is None  # the reference itself
    assert "reference" in by["ct2_raw_best"].note
    for name in ("hf_batched", "hf_pipeline_per_sentence"):
        assert 0.0 <= by[name].metrics["bleu"] <= 100.0
        assert 0.0 <= by[name].metrics["identical_outputs"] <= 1.0
    assert 0.0 < own["busy_fraction"] <= 1.0
    assert by["hf_batched"].metrics["busy_fraction"] is None
    assert full.detail["reference"] == "ct2_raw_best"
    assert full.detail["checks"] == {"instructmill_output_matches_raw_engine": True}
    paired = full.detail["paired_rounds"]
    per_round = paired["instructmill_vs_ct2_raw_best"]
    assert len(per_round) == len(by["instructmill"].settings["rounds_output_tokens_per_s"])
    assert min(per_round) <= paired["median"] <= max(per_round)


def test_settings_and_comparable_facts(full, tiny_marian_dir):
    by = {r.engine: r for r in full.results}
    own = by["instructmill"].settings
    assert (own["max_batch_size"], own["max_batch_tokens"]) == (64, 3072)
    assert own["batch_budget"] == "instructmill defaults"
    assert own["compute_type"] == "int8" and own["beam_size"] == 1
    assert own["stats"]["backend_stats"]["segments"] == N
    raw = by["ct2_raw_best"].settings
    assert raw["variant"] in raw["variants_output_tokens_per_s"]
    assert len(raw["variants_output_tokens_per_s"]) == 2
    assert by["hf_pipeline_per_sentence"].settings["implementation"]
    hf = by["hf_batched"].settings
    if (os.cpu_count() or 1) > 1:  # the thread probe timed both and kept the faster
        probe = hf["torch_threads_probe_s"]
        assert set(probe) == {str(os.cpu_count()), "1"}
        assert hf["torch_threads"] == int(min(probe, key=probe.__getitem__))
    comparable = full.detail["comparable"]
    assert comparable["sentences"] == N and comparable["output_len"] is None
    assert comparable["model"]["path"] == str(tiny_marian_dir.resolve())
    assert comparable["model"]["d_model"] == 64
    assert comparable["quick"] is True and comparable["device"] == "cpu"
    assert not any("batch" in key for key in comparable)


def test_injected_small_batches_are_recorded_not_compared(shared, cache, tiny_marian_dir):
    slow = _run(quick=True, model=str(tiny_marian_dir), num_prompts=N, output_len=5, max_batch_size=2,
                engines=("instructmill", "ct2_raw_best"), cache_dir=str(cache))
    normal = _run(quick=True, model=str(tiny_marian_dir), num_prompts=N, output_len=5,
                  engines=("instructmill",), cache_dir=str(cache))
    own = slow.results[0]
    assert own.settings["max_batch_size"] == 2
    assert "max_batch_size=2" in own.settings["batch_budget"]
    assert own.settings["stats"]["chain"]["batches_per_hop"] == [math.ceil(N / 2)]
    assert normal.results[0].settings["stats"]["chain"]["batches_per_hop"] == [1]
    for r in slow.results:
        assert r.metrics["output_tokens"] == N * 5, r.engine  # fixed output length
    assert (own.metrics["chrf"], own.metrics["identical_outputs"]) == (100.0, 1.0)
    assert slow.detail["checks"] == {"instructmill_output_matches_raw_engine": True}
    assert [r.engine for r in normal.results] == ["instructmill"]
    assert normal.results[0].metrics["bleu"] is None  # no reference engine ran
    assert normal.detail["checks"] == {} and normal.detail["paired_rounds"] is None
    assert slow.detail["comparable"] == normal.detail["comparable"]
    assert slow.options["max_batch_size"] == 2


def test_ct2_folder_as_model(full, shared, cache, tiny_marian_dir, tmp_path):
    ct2 = Path(full.results[0].settings["model_dir"])  # the workload's own verified int8 conversion
    assert ct2.is_relative_to(cache) and (ct2 / "instructmill.json").is_file()
    res = _run(quick=True, model=str(ct2), num_prompts=4, engines=("instructmill", "hf_batched"),
               cache_dir=str(cache))
    assert [r.engine for r in res.results] == ["instructmill", "hf_batched"]
    assert res.results[1].settings["model_dir"] == str(tiny_marian_dir.resolve())  # from the manifest
    assert res.detail["comparable"]["model"]["kind"] == "ctranslate2"
    # a CTranslate2 folder whose HF source is gone: HF baselines skipped (said), or refused if asked
    orphan = tmp_path / "orphan"
    shutil.copytree(ct2, orphan)
    manifest = json.loads((orphan / "instructmill.json").read_text())
    manifest["source"] = str(tmp_path / "gone")
    (orphan / "instructmill.json").write_text(json.dumps(manifest))
    res = _run(quick=True, model=str(orphan), num_prompts=4, engines=None, cache_dir=str(cache))
    assert [r.engine for r in res.results] == ["instructmill", "ct2_raw_best"]
    assert any("HF baselines skipped" in w for w in res.detail["warnings"])
    with pytest.raises(OptionError, match="hf_batched"):
        _run(quick=True, model=str(orphan), num_prompts=4, engines=("hf_batched",), cache_dir=str(cache))


def test_bad_engines_models_and_devices_are_refused(shared, cache, tmp_path):
    with pytest.raises(OptionError, match="unknown for backtranslation: ct2_raw_32.*known: instructmill"):
        _run(engines=("instructmill", "ct2_raw_32"))
    with pytest.raises(OptionError, match="model"):
        _run(model=str(tmp_path / "missing"), cache_dir=str(cache))
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(OptionError, match="model_type='llama'"):
        _run(model=str(llama), cache_dir=str(cache))


def test_too_few_sentences_is_a_clear_error(shared, cache, tiny_marian_dir):
    with pytest.raises(OptionError, match="num_prompts.*only 60 sentences"):
        _run(model=str(tiny_marian_dir), num_prompts=61, engines=("instructmill",), cache_dir=str(cache))


def test_cuda_is_refused_without_cuda():
    import ctranslate2

    if ctranslate2.get_cuda_device_count() > 0:
        pytest.skip("a CUDA device is visible")
    with pytest.raises(OptionError, match="CUDA"):
        _run(device="cuda")


@pytest.mark.gpu
def test_cuda_path_on_the_tiny_model(shared, cache, tiny_marian_dir):
    import ctranslate2
    import torch

    if ctranslate2.get_cuda_device_count() < 1 or not torch.cuda.is_available():
        pytest.skip("needs CUDA for CTranslate2 and torch")
    res = _run(quick=True, device="cuda", model=str(tiny_marian_dir), num_prompts=N, cache_dir=str(cache))
    by = {r.engine: r for r in res.results}
    assert by["instructmill"].settings["compute_type"] == "float16"
    assert by["ct2_raw_best"].settings["device"] == "cuda"
    assert by["hf_batched"].settings["dtype"] == "float16"
    assert by["instructmill"].metrics["bleu"] == 100.0
    assert {r.metrics["requests"] for r in res.results} == {N}


def test_candidates_keep_prose_only(tmp_path):
    path = _write_sharegpt(tmp_path / "s.jsonl.gz", [
        "The garden is quiet in the morning. short one.\n```\nThe code line is skipped here.\n```",
        "Déjà vu is not plain ASCII text here.\nUse x = 1 in the code please today.",
        "How can I open the blue window today? The cat sees the red car again!",
        "The garden is quiet in the morning.",  # a duplicate
    ])
    cands = tm.extract_candidates(path)
    assert cands == ["The garden is quiet in the morning.", "How can I open the blue window today?",
                     "The cat sees the red car again!"]
    picked = tm.select_sentences(cands, lambda ts: [len(t.split()) + 1 for t in ts], 2)
    assert picked == sorted(cands, key=tm._sha)[:2]
    with pytest.raises(OptionError, match="only 3 sentences"):
        tm.select_sentences(cands, lambda ts: [len(t.split()) + 1 for t in ts], 4)


def test_legacy_build_is_reused_without_touching_it(tmp_path, monkeypatch):
    data = _write_sharegpt(tmp_path / "shared" / "data" / "sharegpt_sample.jsonl.gz", ["One two three four."])
    data_sha = tm._sha(data.read_bytes())[:16]
    from instructmill.testing import OPUS_MT_EN_DE_SHAPE

    recipe = {"recipe": tm.RECIPE_VERSION, "shape": "opus-mt-en-de", **OPUS_MT_EN_DE_SHAPE,
              "weights": "random", "seed": 0, "tokenizer": "sentencepiece unigram trained on ShareGPT",
              "data_sha256": data_sha}
    key = tm._sha(json.dumps(recipe, sort_keys=True))[:12]
    legacy = tmp_path / "repo" / "benchmarks" / ".cache" / f"marian-{key}"
    for sub in ("hf", "ct2-int8", "ct2-float32"):
        (legacy / sub).mkdir(parents=True)
        (legacy / sub / "model.bin").write_bytes(b"weights")
    for sub in ("ct2-int8", "ct2-float32"):
        (legacy / sub / "instructmill.json").write_text(json.dumps({"source": str(legacy / "hf")}))
    (legacy / "candidates.json").write_text(json.dumps(["One two three four."]))
    (legacy / "done.json").write_text(json.dumps(recipe))
    monkeypatch.setattr(tm, "REPO_ROOT", tmp_path / "repo")
    root = tmp_path / "cache" / "backtranslation"
    root.mkdir(parents=True)
    built = [False]
    folder, described = tm._builtin_model(root, data, data_sha, lambda _m: None, built)
    assert folder == root / f"marian-{key}" and described["cache_key"] == key and built == [True]
    assert (folder / "ct2-int8" / "model.bin").read_bytes() == b"weights"
    assert json.loads((folder / "ct2-int8" / "instructmill.json").read_text())["source"] == str(folder / "hf")
    assert json.loads((legacy / "ct2-int8" / "instructmill.json").read_text())["source"] == str(legacy / "hf")
    assert (root / f"candidates-{data_sha}.json").is_file()
    built = [False]
    assert tm._builtin_model(root, data, data_sha, lambda _m: None, built)[0] == folder and built == [False]


def test_wrapper_script_is_the_cli(shared, cache, tiny_marian_dir, tmp_path, capsys):
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_backtranslation.py"
    spec = importlib.util.spec_from_file_location("bench_backtranslation_script", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the __main__ guard keeps it from running
    history = tmp_path / "history.jsonl"
    code = module.script_main("backtranslation", ["--quick", "--model", str(tiny_marian_dir), "--num-prompts", "4",
                                                   "--engines", "instructmill,ct2_raw_best", "--output-len", "3",
                                                   "--cache-dir", str(cache), "--history", str(history)])
    assert code == 0
    out = capsys.readouterr().out
    assert "backtranslation" in out and "ct2_raw_best" in out
    [record] = [json.loads(line) for line in history.read_text().splitlines()]
    assert record["workload"] == "backtranslation"
