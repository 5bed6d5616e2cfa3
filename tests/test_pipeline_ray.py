"""The Ray executor on a local 2-CPU Ray cluster: the same records as the local executor, resume after
an interruption, a killed actor, Self-Instruct in an actor, option validation and the missing-Ray error.

Engines: tiny MarianMT models converted to CTranslate2 and a tiny Llama run by transformers (real
engines in real actors), and the deterministic fakes of ``pipeline_fakes`` / ``ray_fakes``
(imported by the Ray workers through ``PYTHONPATH``).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from instructmill.errors import OptionError, ResumeError
from instructmill.pipeline import Pipeline, PipelineError, RayOptions

TESTS = Path(__file__).resolve().parent
SEEDS = TESTS.parent / "examples" / "seed_tasks_sample.jsonl"
SINK_FILES = ("data.jsonl", "data.discards.jsonl", "answers.jsonl", "answers.discards.jsonl")


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster with 2 CPUs for the module; workers import the test fakes."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": path, "INSTRUCTMILL_ALLOW_TEST_BACKENDS": "1"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def models(tiny_marian_pair, tmp_path_factory):
    """CTranslate2 float32 en->xx (a cipher) and xx->en (another cipher's inverse: the round trip
    changes the text), and a tiny Llama for the respond stage."""
    from instructmill.converters import convert_model
    from instructmill.testing import build_marian
    from instructmill.testing.llama import build_llama

    root = tmp_path_factory.mktemp("ray-models")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backward = build_marian(root / "opus-mt-xx-en", seed=1, inverse=True)
        convert_model(str(tiny_marian_pair[0]), str(root / "ct2-en-xx"), quantization="float32")
        convert_model(str(backward), str(root / "ct2-xx-en"), quantization="float32")
        llama = build_llama(root / "tiny-llama")
    return {"forward": root / "ct2-en-xx", "backward": root / "ct2-xx-en", "llama": llama}


def write_rows(folder: Path, n: int = 40) -> None:
    from instructmill.testing import default_corpus

    corpus = default_corpus()
    rows = [{"id": f"r{i}", "topic": f"topic {i % 5}", "text": corpus[i % 60]} for i in range(n)]
    del rows[5]["topic"]                          # template_error
    rows[9]["text"] = rows[2]["text"]             # the same paraphrase as r2: a duplicate for dedup
    rows[9]["topic"] = rows[2]["topic"]
    with open(folder / "rows.jsonl", "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
        fh.write('{"id": "broken", "text": \n')   # unreadable: the errors file
    (folder / "tpl.yaml").write_text('instruction: "{{ text }}"\ninput: "{{ topic }}"\n', encoding="utf-8")


def engine_pipeline(models, out: str) -> dict:
    """template -> respond (sampled, seeded per record) -> back-translate -> filter -> dedup; two sinks."""
    return {
        "settings": {"seed": 5},
        "engines": {
            "llm": {"type": "llm", "backend": "transformers", "model": str(models["llama"]), "device": "cpu",
                    "threads": 1, "max_model_len": 256},
            "mt": {"type": "translation", "backend": "ctranslate2", "forward_model": str(models["forward"]),
                   "backward_model": str(models["backward"]), "pivots": ["xx"], "compute_type": "float32",
                   "inter_threads": 1},
        },
        "sources": {"rows": {"path": "rows.jsonl"}},
        "stages": [
            {"name": "fill", "method": "template", "template": "tpl.yaml"},
            {"name": "answer", "method": "respond", "engine": "llm", "records_per_batch": 8, "keep_truncated": True,
             "sampling": {"temperature": 0.9, "top_p": 0.95, "max_tokens": 6}},
            {"name": "para", "method": "back-translate", "engine": "mt", "fields": ["instruction"], "chunk_size": 8,
             "language_check": False, "meaning_check": False},  # the tiny test model's outputs are not language
            {"name": "rules", "method": "filter", "max_words": {"instruction": 8}},
            {"name": "dedup", "method": "dedup", "fields": ["instruction"], "threshold": 0.9},
        ],
        "sinks": [{"path": f"{out}/data.jsonl"},
                  {"path": f"{out}/answers.jsonl", "format": "sharegpt", "input": "answer"}],
    }


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def files(folder: Path, root: Path) -> dict[str, bytes | None]:
    """The sink files of ``folder``, with the run folder ``root`` (named in error messages) masked."""
    out = {}
    for name in SINK_FILES:
        path = folder / name
        out[name] = path.read_bytes().replace(str(root).encode(), b"<run>") if path.exists() else None
    return out


@pytest.fixture(scope="module")
def reference(ray_cluster, models, tmp_path_factory):
    """The engine pipeline run once by each executor in one folder: ``{"dir", "local", "ray"}``."""
    folder = tmp_path_factory.mktemp("ray-ref")
    write_rows(folder)
    local = Pipeline(engine_pipeline(models, "local"), base_dir=folder).run(progress=False)
    remote = Pipeline(engine_pipeline(models, "ray"), base_dir=folder).run(progress=False, executor="ray")
    return {"dir": folder, "local": local, "ray": remote}


def test_ray_and_local_executors_write_the_same_records(reference):
    folder, local, remote = reference["dir"], reference["local"], reference["ray"]
    assert files(folder / "ray", folder) == files(folder / "local", folder)
    data, bad = lines(folder / "ray/data.jsonl"), lines(folder / "ray/data.discards.jsonl")
    # every readable row exactly once, with the statuses of every stage
    assert sorted(r["id"] for r in data + bad) == sorted(f"r{i}" for i in range(40))
    statuses = {r["id"]: r["status"] for r in bad}
    # r9 repeats r2's text: a duplicate when r2 was kept, else the same quality status as r2 (the tiny
    # cipher model can add a number, which the structure check discards before dedup sees it)
    assert statuses["r5"] == "template_error" and statuses["r9"] == statuses.get("r2", "duplicate")
    # the tiny random cipher model adds digits to many paraphrases: the structure check discards those
    assert "too_long" in statuses.values() and "number_added" in statuses.values() and len(data) >= 5
    assert all(r["method"] == "backtranslation" and r["output"] for r in data)
    answers = lines(folder / "ray/answers.jsonl")
    assert len(answers) == 39 and all(r["conversations"][1]["value"] for r in answers)
    assert len({r["conversations"][1]["value"] for r in answers}) > 10  # sampled, seeded per record
    errors = "data.pipeline/errors-rows.jsonl"
    assert (folder / "ray" / errors).read_bytes() == (folder / "local" / errors).read_bytes()
    # the same report counts; engines and executor reported
    for stage in ("fill", "answer", "para", "rules", "dedup"):
        keys = ("records_in", "records_out", "passed_through", "discards")
        assert {k: remote["stages"][stage][k] for k in keys} == {k: local["stages"][stage][k] for k in keys}, stage
    for sink in ("data", "answers"):
        for key in ("total_ok", "total_discards", "discards_by_status"):
            assert remote["sinks"][sink][key] == local["sinks"][sink][key]
    assert remote["sources"]["rows"]["read_errors"] == 1
    assert remote["engines"]["llm"]["requests"] == local["engines"]["llm"]["requests"] == 39
    assert remote["engines"]["mt"]["output_tokens"] == local["engines"]["mt"]["output_tokens"] > 0
    assert remote["stages"]["dedup"]["method_summary"]["remembered"] == local["stages"]["dedup"]["method_summary"][
        "remembered"]
    executor = remote["executor"]
    assert executor["kind"] == "ray" and executor["cluster"]["CPU"] == 2
    ops = executor["roots"]["rows"]["ops"]
    assert [(op["stages"], op["replicas"]) for op in ops] == [(["fill", "answer"], 1), (["para", "rules"], 1)]
    assert executor["roots"]["rows"]["driver_stages"] == ["dedup"]
    assert executor["placement"]["dedup"] == "driver" and executor["placement"]["para"] == "ray actors"
    assert json.loads((folder / "ray/data.report.json").read_text())["executor"]["kind"] == "ray"


class _Interrupt(Exception):
    pass


def test_an_interrupted_ray_run_resumes_to_the_same_files(ray_cluster, models, tmp_path):
    """Stopped after 16 rows (and a torn line added, as a kill mid-write leaves), resumed: the files of
    an uninterrupted run; dedup's index is rebuilt from its checkpoint on the driver."""
    write_rows(tmp_path)
    spec = engine_pipeline(models, "ray")
    spec["stages"] = [s for s in spec["stages"] if s["name"] != "answer"]  # no LLM: a quicker run
    spec["sinks"][1]["input"] = "fill"
    local = {**spec, "sinks": [{**k, "path": k["path"].replace("ray/", "local/")} for k in spec["sinks"]]}
    Pipeline(local, base_dir=tmp_path).run(progress=False)
    with pytest.raises(ResumeError, match="started with the local executor and resumes only with it"):
        Pipeline(local, base_dir=tmp_path).run(progress=False, executor="ray", resume=True)

    def stop(info):
        if info["rows"] >= 16:  # the sinks of rows 0-15 are written; their progress mark is not
            raise _Interrupt

    with pytest.raises(_Interrupt):
        Pipeline(spec, base_dir=tmp_path).run(progress=False, executor="ray", on_batch=stop)
    written = len(lines(tmp_path / "ray/data.jsonl")) + len(lines(tmp_path / "ray/data.discards.jsonl"))
    assert 0 < written < 40
    with open(tmp_path / "ray/data.jsonl", "ab") as fh:  # a torn line, as a kill mid-write leaves
        fh.write(b'{"id": "r3", "instr')
    # the local executor does not take over a Ray run
    with pytest.raises(ResumeError, match="started with the ray executor"):
        Pipeline(spec, base_dir=tmp_path).run(progress=False, resume=True)
    with pytest.raises(ResumeError, match="--resume to continue it or --overwrite"):
        Pipeline(spec, base_dir=tmp_path).run(progress=False, executor="ray")

    report = Pipeline(spec, base_dir=tmp_path).run(progress=False, executor="ray", resume=True)
    assert files(tmp_path / "ray", tmp_path) == files(tmp_path / "local", tmp_path)
    resumed = {r["id"]: r["status"] for r in lines(tmp_path / "ray/data.discards.jsonl")}
    assert resumed["r9"] == resumed.get("r2", "duplicate")
    assert report["resumed"] and report["sessions"] == 2
    assert 0 < report["sinks"]["data"]["already_written"] < 40
    assert report["sinks"]["data"]["total_ok"] + report["sinks"]["data"]["total_discards"] == 40
    # the rows done before the interruption were not processed again; dedup saw the same rows
    assert 8 <= report["stages"]["fill"]["records_in"] <= 32
    assert report["stages"]["dedup"]["records_in"] == report["stages"]["fill"]["records_in"]


def test_a_killed_actor_is_replaced_and_no_record_is_lost_or_doubled(ray_cluster, tmp_path, monkeypatch):
    """One replica's process dies mid-batch (os._exit in its engine); Ray restarts it and retries
    the batch. Runs through the CLI, against the local executor's files."""
    from instructmill.cli import cli

    monkeypatch.setenv("INSTRUCTMILL_ALLOW_TEST_BACKENDS", "1")
    marker = tmp_path / "crashed"
    rows = [{"id": f"r{i}", "instruction": f"Describe the quiet garden number {i}.", "output": "", "topic": "x"}
            for i in range(40)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tmp_path / "p.yaml").write_text(
        "engines:\n  mt: {type: translation, backend: python, factory: 'ray_fakes:crash_once_mt', pivots: [xx],\n"
        f"       params: {{marker: '{marker}', after: 2, delay: 0.05}}}}\n"
        "sources:\n  rows: rows.jsonl\n"
        "stages:\n  - {method: back-translate, engine: mt, fields: [instruction], chunk_size: 4, meaning_check: false}\n"
        "  - {method: filter, blacklist: [number 7]}\n"
        "sinks:\n  - out/data.jsonl\n", encoding="utf-8")
    runner = CliRunner()
    marker.write_text("local run: no crash")
    result = runner.invoke(cli, ["generate", str(tmp_path / "p.yaml"), "--set", "sinks[0]=local/data.jsonl"])
    assert result.exit_code == 0, result.output
    marker.unlink()
    result = runner.invoke(cli, ["generate", str(tmp_path / "p.yaml"), "--executor", "ray", "--ray-replicas", "2",
                                 "--ray-batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert marker.read_text().isdigit() and int(marker.read_text()) != os.getpid()  # an actor died
    assert "executor: ray (cluster 2 CPU; back-translate: 2 actors x 1 CPU, batch 4)" in result.output
    assert "sink data: 39 ok" in result.output and "1 discarded" in result.output
    out = lines(tmp_path / "out/data.jsonl") + lines(tmp_path / "out/data.discards.jsonl")
    assert sorted(r["id"] for r in out) == sorted(f"r{i}" for i in range(40))  # each exactly once
    for name in ("data.jsonl", "data.discards.jsonl"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    report = json.loads((tmp_path / "out/data.report.json").read_text())
    assert report["engines"]["mt"]["replicas_reporting"] >= 2


def test_a_failing_stage_is_named_and_resume_finishes_the_run(ray_cluster, tmp_path):
    import pipeline_fakes

    rows = [{"id": f"r{i}", "instruction": f"Name {i} birds.", "output": ""} for i in range(24)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    spec = {"engines": {"llm": {"type": "llm"}}, "sources": {"rows": "rows.jsonl"},
            "stages": [{"name": "answer", "method": "respond", "records_per_batch": 4},
                       {"method": "dedup", "fields": ["output"]}],
            "sinks": ["out/data.jsonl"]}
    options = RayOptions(replicas=2)
    with pytest.raises(PipelineError, match=r"stage 'answer' \(respond\) failed: RuntimeError: fake engine failure "
                                            r"on 'Name 13 birds.' \(traceback above\); what was done is kept") as info:
        Pipeline(spec, base_dir=tmp_path, engines={"llm": pipeline_fakes.llm(fail_on="Name 13 ")}).run(
            progress=False, executor="ray", ray=options)
    assert info.value.node == "stage 'answer' (respond)"
    assert len(lines(tmp_path / "out/data.jsonl")) < 24
    report = Pipeline(spec, base_dir=tmp_path, engines={"llm": pipeline_fakes.llm()}).run(
        progress=False, executor="ray", ray=options, resume=True)
    assert [r["id"] for r in lines(tmp_path / "out/data.jsonl")] == [f"r{i}" for i in range(24)]
    assert report["sinks"]["data"]["total_ok"] == 24 and report["sessions"] == 2


def test_self_instruct_runs_in_an_actor_and_feeds_the_stages_after_it(ray_cluster, tmp_path):
    import pipeline_fakes

    shutil.copy(SEEDS, tmp_path / "seeds.jsonl")
    with open(tmp_path / "seeds.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"id": "bad", "text": "no instruction"}\n')  # not a usable seed: on to the discards
    spec = {
        "settings": {"seed": 3},
        "engines": {"llm": {"type": "llm"}},
        "sources": {"seeds": {"path": "seeds.jsonl"}},
        "stages": [
            {"name": "generate", "method": "self-instruct", "num_instructions": 10, "prompts_per_round": 2,
             "num_seed_in_prompt": 3, "instances": "none"},
            {"name": "answer", "method": "respond", "records_per_batch": 4},
            {"name": "short", "method": "filter", "input": "seeds", "max_words": {"instruction": 12}},
        ],
        "sinks": [{"path": "out/data.jsonl", "input": "answer"}, {"path": "out/gen.jsonl", "input": "generate"},
                  {"path": "out/short.jsonl", "input": "short"}],
    }
    local = Pipeline(spec, base_dir=tmp_path, engines={"llm": pipeline_fakes.llm()}).run(progress=False)
    spec["sinks"] = [{"path": "ray/data.jsonl", "input": "answer"}, {"path": "ray/gen.jsonl", "input": "generate"},
                     {"path": "ray/short.jsonl", "input": "short"}]
    remote = Pipeline(spec, base_dir=tmp_path, engines={"llm": pipeline_fakes.llm()}).run(
        progress=False, executor="ray", ray=RayOptions(replicas=2, batch_size=4))
    for name in ("data.jsonl", "data.discards.jsonl", "gen.jsonl", "gen.discards.jsonl", "short.jsonl",
                 "short.discards.jsonl"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "out" / name).read_bytes(), name
    answers = lines(tmp_path / "ray/data.jsonl")
    assert len(answers) >= 10 and all(r["output"].startswith("Answer ") for r in answers)
    discards = lines(tmp_path / "ray/data.discards.jsonl")
    assert any(r["id"] == "bad" and r["status"] == "invalid_record" for r in discards)
    assert remote["stages"]["generate"]["records_out"] == local["stages"]["generate"]["records_out"]
    assert remote["stages"]["generate"]["placement"] == "generator actor"
    assert remote["executor"]["roots"]["generate"]["ops"][0]["replicas"] == 2
    # the source's own stage, without an engine, runs as plain Ray tasks
    assert remote["executor"]["roots"]["seeds"]["ops"] == [{"stages": ["short"], "kind": "tasks", "batch_size": 4,
                                                           "num_cpus": 1.0}]
    short = lines(tmp_path / "ray/short.jsonl")
    assert 0 < len(short) < 8 and remote["stages"]["short"]["discards"] == {"too_long": 8 - len(short)}
    assert remote["engines"]["llm"]["requests"] == local["engines"]["llm"]["requests"]


def test_options_are_validated_and_unsupported_shapes_refused(tmp_path, monkeypatch):
    for kwargs, name in (({"replicas": 0}, "replicas"), ({"batch_size": -1}, "batch_size"),
                         ({"num_cpus_per_actor": 0}, "num_cpus_per_actor"),
                         ({"num_gpus_per_actor": -1}, "num_gpus_per_actor"),
                         ({"stage_replicas": {"para": 0}}, "stage_replicas['para']"),
                         ({"max_restarts": -2}, "max_restarts"), ({"address": ""}, "address"),
                         ({"replicas": True}, "replicas")):
        with pytest.raises(OptionError, match=rf"invalid {re.escape(name)}="):
            RayOptions(**kwargs)
    assert RayOptions(stage_replicas={"para": 3}, max_task_retries=-1).stage_replicas == {"para": 3}

    from instructmill.pipeline.ray_plan import plan_pipeline

    (tmp_path / "rows.jsonl").write_text('{"id": "a", "instruction": "Say hi."}\n', encoding="utf-8")
    base = {"engines": {"llm": {"type": "llm", "backend": "transformers", "model": "m", "device": "cuda"}},
            "sources": {"rows": "rows.jsonl"}, "sinks": ["out.jsonl"]}
    shape = Pipeline({**base, "stages": [{"method": "template", "template": "alpaca"},
                                         {"method": "self-instruct", "engine": "llm"}]}, base_dir=tmp_path).spec
    with pytest.raises(OptionError, match="must read a source directly.*supported: source -> \\[self-instruct\\]"):
        plan_pipeline(shape, RayOptions(), {"CPU": 4})
    spec = Pipeline({**base, "stages": [{"name": "answer", "method": "respond", "engine": "llm"},
                                        {"method": "dedup"}, {"method": "filter"}]}, base_dir=tmp_path).spec
    with pytest.raises(OptionError, match="needs GPUs but the Ray cluster has none"):
        plan_pipeline(spec, RayOptions(), {"CPU": 4})
    with pytest.raises(OptionError, match=r"invalid stage_replicas=\['dedup'\].*those are: answer"):
        plan_pipeline(spec, RayOptions(stage_replicas={"dedup": 2}), {"CPU": 4, "GPU": 2})
    plan = plan_pipeline(spec, RayOptions(), {"CPU": 16, "GPU": 4})  # GPUs from the cluster, dedup on the driver
    op = plan.roots[0].ops[0]
    assert (op.stages, op.replicas, op.num_gpus, op.threads) == (["answer"], 4, 1.0, {})
    assert plan.roots[0].driver_stages == ["dedup", "filter"] and plan.placement["filter"] == "driver"
    plan = plan_pipeline(spec, RayOptions(num_gpus_per_actor=2, stage_replicas={"answer": 1}), {"CPU": 16, "GPU": 4})
    assert (plan.roots[0].ops[0].replicas, plan.roots[0].ops[0].num_gpus) == (1, 2.0)
    with pytest.raises(OptionError, match=r"asks for 8 GPU\(s\) per actor but the Ray cluster has 4"):  # else: a hang
        plan_pipeline(spec, RayOptions(num_gpus_per_actor=8), {"CPU": 16, "GPU": 4})

    pipe = Pipeline({**base, "stages": []}, base_dir=tmp_path)
    with pytest.raises(OptionError, match="invalid executor='spark'"):
        pipe.run(executor="spark")
    with pytest.raises(OptionError, match="apply to executor='ray' only"):
        pipe.run(ray=RayOptions())
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(OptionError, match=r'not installed .*pip install "ray\[data\]"'):
        pipe.run(executor="ray")
    assert not (tmp_path / "out.jsonl").exists()


def test_the_cli_flags_and_the_local_path_do_not_import_ray(tmp_path):
    from instructmill.cli import cli

    result = CliRunner().invoke(cli, ["generate", "p.yaml", "--ray-replicas", "2"])
    assert result.exit_code != 0 and "--ray-replicas only apply to --executor ray" in result.output
    code = ("import sys; from click.testing import CliRunner; from instructmill.cli import cli; "
            "r = CliRunner().invoke(cli, ['generate', '--help']); assert '--ray-address' in r.output; "
            "from instructmill.pipeline import Pipeline; "
            "spec = {'sources': {'rows': 'rows.jsonl'}, 'sinks': ['out.jsonl']}; "
            "Pipeline(spec, base_dir=sys.argv[1]).run(progress=False); "
            "print('ray' in sys.modules)")
    (tmp_path / "rows.jsonl").write_text('{"id": "a", "instruction": "Say hi.", "output": "Hi."}\n', encoding="utf-8")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
    assert lines(tmp_path / "out.jsonl")[0]["output"] == "Hi."


def test_an_address_nobody_answers_is_refused_at_once():
    import socket

    from instructmill.pipeline.ray_executor import _check_reachable

    with socket.socket() as free:  # a port nobody listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    with pytest.raises(OptionError, match=rf"invalid ray_address='127.0.0.1:{port}': no Ray cluster answers there"):
        _check_reachable(f"127.0.0.1:{port}", timeout=2)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        _check_reachable(f"ray://127.0.0.1:{listening.getsockname()[1]}", timeout=2)
    _check_reachable("auto")
    _check_reachable(None)
