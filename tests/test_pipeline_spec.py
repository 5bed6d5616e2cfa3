"""Pipeline files: every key validated, errors name file, line and key path, options map onto the
options dataclasses of the Python API."""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from instructmill.engine.ctranslate2_backend import CTranslate2Options
from instructmill.engine.llm import LLMEngineOptions, SamplingOptions
from instructmill.engine.scheduler import BatchingOptions
from instructmill.errors import InstructmillError
from instructmill.methods.backtranslation import BackTranslationOptions
from instructmill.methods.quality import QualityOptions
from instructmill.methods.respond import RespondOptions
from instructmill.methods.self_instruct import SelfInstructOptions
from instructmill.pipeline.filters import FilterOptions
from instructmill.pipeline.spec import PipelineSpecError, load_spec, parse_spec

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

GOOD = """\
settings:
  seed: 5
  queue_size: 32
engines:
  smol:
    type: llm
    backend: ctranslate2
    model: embedded
    max_model_len: 1024
    dtype: float32
  enpt:
    type: translation
    model: embedded
    pivots: [pt]
    max_batch_tokens: 2048
sources:
  seeds:
    path: seeds.jsonl
stages:
  - name: generate
    method: self-instruct
    engine: smol
    num_instructions: 120
    prompts_per_round: 8
    sampling: {n: 2, temperature: 0.7, stop: "###"}
    instance_sampling:
      max_tokens: 64
  - method: respond
    system: Be brief.
  - method: back-translate
    engine: enpt
    fields: [instruction, output]
    quality: {max_length_ratio: 2.5}
  - method: filter
    min_words: {output: 2}
    blacklist: [image]
sinks:
  - path: out/data.jsonl
  - {path: out/chat.jsonl, format: openai, input: respond}
"""


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str, name: str = "p.yaml") -> PipelineSpecError:
    path = write(tmp_path, text, name)
    with pytest.raises(PipelineSpecError) as info:
        load_spec(path)
    assert isinstance(info.value, InstructmillError)
    return info.value


def line_of(text: str, needle: str, nth: int = 0) -> int:
    lines = [i for i, line in enumerate(text.splitlines(), start=1) if needle in line]
    return lines[nth]


def test_valid_file_builds_the_api_dataclasses(tmp_path):
    spec = load_spec(write(tmp_path, GOOD))
    assert spec.base_dir == str(tmp_path) and spec.settings.seed == 5 and spec.settings.queue_size == 32
    smol = spec.engines["smol"]
    assert smol.type == "llm" and smol.backend == "ctranslate2" and smol.model == "embedded"
    assert smol.options == LLMEngineOptions(max_model_len=1024, dtype="float32", seed=5)  # seed from settings
    enpt = spec.engines["enpt"]
    assert enpt.pivots == ("pt",) and enpt.source_lang == "en"
    assert enpt.batching == BatchingOptions(max_batch_tokens=2048) and enpt.options == CTranslate2Options()
    generate, respond, bt, rules = spec.stages
    assert (generate.name, generate.method, generate.input, generate.engine, generate.num_instructions) == (
        "generate", "self-instruct", "seeds", "smol", 120)
    assert isinstance(generate.options, SelfInstructOptions)
    assert generate.options.prompts_per_round == 8 and generate.options.seed == 5
    assert generate.options.sampling == SamplingOptions(n=2, temperature=0.7, stop=("###",))
    assert generate.options.instance_sampling == SamplingOptions(max_tokens=64)
    # defaults: name = method, input = the stage before, the only LLM engine
    assert (respond.name, respond.input, respond.engine) == ("respond", "generate", "smol")
    assert respond.options == RespondOptions(system="Be brief.", seed=5)
    assert bt.engine == "enpt" and isinstance(bt.options, BackTranslationOptions)
    assert bt.options.fields == ("instruction", "output") and bt.options.quality == QualityOptions(max_length_ratio=2.5)
    assert rules.options == FilterOptions(min_words={"output": 2}, blacklist=("image",))
    assert [(s.name, s.input, s.format) for s in spec.sinks] == [("data", "filter", "alpaca"),
                                                                 ("chat", "respond", "openai")]
    assert spec.resolve("out/data.jsonl") == str(tmp_path / "out/data.jsonl")


def test_toml_file_is_the_same_pipeline(tmp_path):
    toml = """\
    [settings]
    seed = 5
    queue_size = 32

    [engines.smol]
    type = "llm"
    backend = "ctranslate2"
    model = "embedded"
    max_model_len = 1024
    dtype = "float32"

    [engines.enpt]
    type = "translation"
    model = "embedded"
    pivots = ["pt"]
    max_batch_tokens = 2048

    [sources.seeds]
    path = "seeds.jsonl"

    [[stages]]
    name = "generate"
    method = "self-instruct"
    engine = "smol"
    num_instructions = 120
    prompts_per_round = 8
    sampling = {n = 2, temperature = 0.7, stop = "###"}
    [stages.instance_sampling]
    max_tokens = 64

    [[stages]]
    method = "respond"
    system = "Be brief."

    [[stages]]
    method = "back-translate"
    engine = "enpt"
    fields = ["instruction", "output"]
    quality = {max_length_ratio = 2.5}

    [[stages]]
    method = "filter"
    min_words = {output = 2}
    blacklist = ["image"]

    [[sinks]]
    path = "out/data.jsonl"

    [[sinks]]
    path = "out/chat.jsonl"
    format = "openai"
    input = "respond"
    """
    yaml_spec = load_spec(write(tmp_path, GOOD))
    toml_spec = load_spec(write(tmp_path, toml, "p.toml"))
    assert toml_spec.fingerprint_data() == yaml_spec.fingerprint_data()


@pytest.mark.parametrize("needle,replacement,key,message", [
    ("    prompts_per_round: 8", "    prompt_per_round: 8", "stages[0].prompt_per_round",
     "unknown key (did you mean 'prompts_per_round'?); valid keys: name, method, input, concurrency, engine, "
     "num_instructions, prompt_style"),
    ("  - method: respond", "  - method: answer_it", "stages[1].method",
     "unknown method 'answer_it'; choose one of template, self-instruct, respond, humpback, evolve, "
     "judge, back-translate, filter, dedup"),
    ("    num_instructions: 120", "    num_instructions: many", "stages[0].num_instructions",
     "must be an integer, got a string ('many')"),
    ("    prompts_per_round: 8", "    rouge_threshold: 2", "stages[0].rouge_threshold",
     "invalid rouge_threshold=2.0: must be in (0, 1]"),
    ("      max_tokens: 64", "      max_tokns: 64", "stages[0].instance_sampling.max_tokns",
     "unknown key (did you mean 'max_tokens'?)"),
    ("    sampling: {n: 2, temperature: 0.7, stop: \"###\"}", "    sampling: {n: 0}", "stages[0].sampling.n",
     "invalid n=0: must be a positive integer"),
    ("    max_model_len: 1024", "    max_model_len: 1", "engines.smol.max_model_len",
     "invalid max_model_len=1: must be at least 2 tokens"),
    ("    dtype: float32", "    dtype: [float32]", "engines.smol.dtype", "must be a string, got a list"),
    ("    backend: ctranslate2", "    backend: tensorrt", "engines.smol.backend",
     "unknown backend 'tensorrt'; choose one of auto, vllm, ctranslate2, transformers"),
    ("    fields: [instruction, output]", "    fields: [instruction, answer]", "stages[2].fields",
     "invalid fields=('instruction', 'answer'): choose from instruction, input, output"),
    ("    fields: [instruction, output]", "    pivots: [de]", "stages[2].pivots", "unknown key"),
    ("    min_words: {output: 2}", "    min_words: {answer: 2}", "stages[3].min_words",
     "choose fields from instruction, input, output"),
    ("  - {path: out/chat.jsonl, format: openai, input: respond}",
     "  - {path: out/chat.jsonl, format: csv, input: respond}", "sinks[1].format",
     "invalid format='csv': choose one of alpaca, sharegpt, openai"),
    ("  - {path: out/chat.jsonl, format: openai, input: respond}",
     "  - {path: out/chat.jsonl, input: nowhere}", "sinks[1].input", "unknown input 'nowhere'"),
    ("    engine: enpt", "    engine: smol", "stages[2].engine",
     "'smol' is not a translation engine; declared translation engines: enpt"),
    ("  queue_size: 32", "  queue_size: 0", "settings.queue_size", "must be a positive integer"),
    ("    type: llm", "    type: speech", "engines.smol.type", "unknown engine type 'speech'; choose one of llm, "
     "translation"),
])
def test_errors_name_file_line_key_and_choices(tmp_path, needle, replacement, key, message):
    text = GOOD.replace(needle, replacement, 1)
    assert text != GOOD
    err = error_of(tmp_path, text)
    path = tmp_path / "p.yaml"
    assert err.key == key
    assert err.line == GOOD[:GOOD.index(needle)].count("\n") + 1  # the line of the key
    assert str(err).startswith(f"{path}:{err.line}: key '{key}': ")
    assert message in str(err)


def test_missing_and_structural_errors(tmp_path):
    err = error_of(tmp_path, GOOD.replace("sources:\n  seeds:\n    path: seeds.jsonl\n", ""))
    assert re.match(r".*p\.yaml: missing key 'sources'$", str(err))
    err = error_of(tmp_path, GOOD.replace("    path: seeds.jsonl", "    format: jsonl"))
    assert err.key == "sources.seeds" and "missing key 'path'" in str(err) and err.line == line_of(GOOD, "  seeds:")
    err = error_of(tmp_path, GOOD.replace("  - method: respond", "  - methd: respond"))
    assert err.key == "stages[1]" and "missing key 'method'" in str(err)
    err = error_of(tmp_path, GOOD + "extras: 1\n")
    assert err.key == "extras" and "valid keys: settings, engines, sources, stages, sinks" in str(err)
    err = error_of(tmp_path, GOOD.replace("  - method: filter", "  - method: filter\n    name: generate"))
    assert "already used by stages[0]" in str(err)
    # a stage whose records go nowhere
    err = error_of(tmp_path, GOOD.replace("  - path: out/data.jsonl", "  - {path: out/data.jsonl, input: back-translate}"))
    assert err.key == "stages[3]" and "feeds nothing" in str(err)
    err = error_of(tmp_path, GOOD.replace("    engine: smol\n    num", "    engine: smol\n    engine: smol\n    num"))
    first = line_of(GOOD, "    engine: smol")
    assert err.key == "stages[0].engine" and f"duplicate key (first on line {first})" in str(err)
    assert err.line == first + 1
    err = error_of(tmp_path, "")
    assert "the pipeline file is empty" in str(err)
    err = error_of(tmp_path, "sources: [a\n")
    assert "invalid YAML" in str(err) and err.line is not None


def test_yaml_is_read_safely(tmp_path):
    err = error_of(tmp_path, GOOD.replace("  seed: 5", "  seed: !!python/object/apply:os.getcwd []"))
    assert "invalid YAML" in str(err) and "python/object/apply" in str(err)


def test_toml_errors_have_lines(tmp_path):
    toml = '[sources.rows]\npath = "r.jsonl"\n\n[[stages]]\nmethod = "template"\ntemplate = "alpaca"\n\n' \
           '[[stages]]\nmethod = "filter"\nmax_word = {output = 3}\n\n[[sinks]]\npath = "o.jsonl"\n'
    err = error_of(tmp_path, toml, "p.toml")
    assert err.key == "stages[1].max_word" and err.line == 10 and "did you mean 'max_words'" in str(err)
    err = error_of(tmp_path, 'sources = 3\n[[sinks]]\npath = "o.jsonl"\n', "p.toml")
    assert err.key == "sources" and err.line == 1
    err = error_of(tmp_path, "sources = \n", "p.toml")
    assert "invalid TOML" in str(err) and err.line == 1


def test_test_backends_need_the_environment_variable(tmp_path, monkeypatch):
    text = GOOD.replace("    backend: ctranslate2", '    backend: python\n    factory: "pipeline_fakes:llm"')
    monkeypatch.delenv("INSTRUCTMILL_ALLOW_TEST_BACKENDS", raising=False)
    err = error_of(tmp_path, text)
    assert err.key == "engines.smol.backend" and "INSTRUCTMILL_ALLOW_TEST_BACKENDS=1" in str(err)
    monkeypatch.setenv("INSTRUCTMILL_ALLOW_TEST_BACKENDS", "1")
    spec = load_spec(write(tmp_path, text))
    assert spec.engines["smol"].factory == "pipeline_fakes:llm"


def test_translation_engine_checks(tmp_path):
    err = error_of(tmp_path, GOOD.replace("    model: embedded\n    pivots: [pt]",
                                          "    forward_model: ct2/en-de\n    pivots: [de]"))
    assert err.key == "engines.enpt" and "missing key 'backward_model'" in str(err)
    err = error_of(tmp_path, GOOD.replace("    pivots: [pt]", "    pivots: [pt]\n    beam_size: 4"))
    assert err.key == "engines.enpt.beam_size" and "do not apply to the embedded" in str(err)
    err = error_of(tmp_path, GOOD.replace("    pivots: [pt]", "    pivots: [en]"))
    assert err.key == "engines.enpt.pivots" and "other than the source language 'en'" in str(err)
    spec = load_spec(write(tmp_path, GOOD.replace("    model: embedded\n    pivots: [pt]",
                                                  "    forward_model: ct2/en-de\n    backward_model: ct2/de-en\n"
                                                  "    pivot: de\n    beam_size: 2")))
    enpt = spec.engines["enpt"]
    assert (enpt.forward_model, enpt.backward_model, enpt.pivots) == ("ct2/en-de", "ct2/de-en", ("de",))
    assert enpt.options == CTranslate2Options(beam_size=2)


def test_parse_spec_from_code_and_fingerprint_ignores_runtime_settings(tmp_path):
    data = {"sources": {"rows": "rows.jsonl"},
            "stages": [{"method": "template", "template": "alpaca"}, {"method": "filter", "max_words": {"output": 50}}],
            "sinks": ["out.jsonl"]}
    spec = parse_spec(data, base_dir=tmp_path)
    assert spec.sources["rows"].path == "rows.jsonl" and spec.sinks[0].input == "filter"
    faster = parse_spec({**data, "settings": {"queue_size": 4, "window": 8, "progress": False}}, base_dir=tmp_path)
    assert faster.fingerprint_data() == spec.fingerprint_data()
    reseeded = parse_spec({**data, "settings": {"seed": 1}}, base_dir=tmp_path)
    assert reseeded.fingerprint_data() != spec.fingerprint_data()
    with pytest.raises(PipelineSpecError, match=r"^<pipeline>: key 'stages\[0\].template': missing|"
                                                r"^<pipeline>: key 'stages\[0\]': missing key 'template'"):
        parse_spec({**data, "stages": [{"method": "template"}]})


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_examples_are_valid(name):
    spec = load_spec(EXAMPLES / name)
    assert spec.sinks and spec.sources


def test_overrides_set_keys_before_validation(tmp_path):
    path = write(tmp_path, GOOD)
    spec = load_spec(path, {"sources.seeds.path": "other.jsonl", "stages.generate.num_instructions": 7,
                            "stages.respond.system": "Hi.", "stages[3].blacklist": ["a", "b"],
                            "engines.enpt.pivots": ["pt"], "settings.state_dir": "st"})
    assert spec.sources["seeds"].path == "other.jsonl" and spec.stages[0].num_instructions == 7
    assert spec.stages[1].options.system == "Hi." and spec.stages[3].options.blacklist == ("a", "b")
    assert spec.settings.state_dir == "st"
    with pytest.raises(PipelineSpecError) as info:
        load_spec(path, {"stages.generate.num_instructions": "lots"})
    assert str(info.value) == (f"{path}: key 'stages[0].num_instructions': must be an integer, "
                               "got a string ('lots')")  # no line: the value came from --set
    with pytest.raises(PipelineSpecError, match="stages has no entry 'nosuch'"):
        load_spec(path, {"stages.nosuch.window": 3})
