"""Dataset cards: a ``README.md`` in the Hugging Face dataset-card shape next to every output.

The card of an output ``out/X.jsonl`` is ``out/X.README.md`` (never ``README.md``: several
outputs can share a folder, and a folder's ``README.md`` is usually the user's own). A card
file without :data:`CARD_MARKER` (the line after the YAML header) was not written by
instructmill and is never overwritten (a warning says so). :func:`push_to_hub` uploads it as the repository's
``README.md``.

A card holds (see https://huggingface.co/docs/hub/datasets-cards and
https://huggingface.co/docs/hub/datasets-manual-configuration):

* a YAML header: ``license`` (``other`` unless given), ``tags`` (``synthetic``,
  ``instruction-tuning``, ``instructmill``), ``size_categories``, ``configs`` (one per output:
  its ``data_files``, the ``ok`` records as split ``train``; the discards as config
  ``discards``) and ``dataset_info`` (per config: ``features`` in the ``datasets`` YAML form and
  ``splits`` with ``num_examples``);
* how it was made (the method or pipeline, its settings and models), counts (``ok``, discards
  by status, unreadable input lines: counted in the files themselves when the card is
  written) and the quality figures the run reported.

``features`` come from the file's Arrow schema: a Parquet / Arrow file's own, or, for JSONL,
what ``pyarrow.json`` infers from its first :data:`FEATURE_SAMPLE_LINES` lines (the same
inference ``datasets``' JSON loader uses); they need ``datasets`` and are left out without it.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import yaml

from instructmill.errors import InstructmillError

__all__ = ["CARD_MARKER", "CardEntry", "build_card", "card_path", "push_to_hub", "write_card",
           "write_pipeline_cards", "write_run_card"]

log = logging.getLogger("instructmill.io")

#: First line of every card instructmill writes (so it knows which files it may replace).
CARD_MARKER = "<!-- dataset card written by instructmill; edits are lost when it runs again -->"
#: JSONL lines read to infer a JSONL file's features.
FEATURE_SAMPLE_LINES = 10_000
TAGS = ["synthetic", "instruction-tuning", "instructmill"]
#: Upper bounds of the Hub's ``size_categories`` values (huggingface.co/docs/hub/datasets-cards).
_SIZES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
          (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]


@dataclass
class CardEntry:
    """One output on a card.

    Attributes:
        name: its config name on the card.
        data_file: the file holding the ``ok`` records (a Parquet / Arrow export when there is
            one, else the JSONL output).
        discards_file: the discards JSONL (``None``: none written).
        errors_file: the unreadable input lines (``None``: none).
        fmt: the records' shape (alpaca, sharegpt, openai).
    """

    name: str
    data_file: str
    discards_file: str | None = None
    errors_file: str | None = None
    fmt: str = "alpaca"
    counts: dict[str, Any] = field(default_factory=dict)

    def count(self) -> dict[str, Any]:
        """Count the files (records, discards by status, unreadable lines); cached in ``counts``."""
        if not self.counts:
            self.counts = {"ok": _records_in(self.data_file),
                           "discards_by_status": _statuses(self.discards_file),
                           "unreadable_input_lines": _lines(self.errors_file)}
            self.counts["discards"] = sum(self.counts["discards_by_status"].values())
        return self.counts


def card_path(output_path: str | os.PathLike[str]) -> str:
    """``out/X.jsonl`` (or ``.parquet`` / ``.arrow``) -> ``out/X.README.md``."""
    path = os.fspath(output_path)
    stem, ext = os.path.splitext(path)
    return (stem if ext.lower() in (".jsonl", ".parquet", ".arrow") else path) + ".README.md"


# ------------------------------------------------------------------------- counting

def _lines(path: str | None) -> int:
    if not path or not os.path.exists(path):
        return 0
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def _records_in(path: str) -> int:
    if os.path.splitext(path)[1].lower() in (".parquet", ".arrow", ".feather") and os.path.exists(path):
        from instructmill.io.tables import table_format

        return _table_rows(path, table_format(path) or "parquet")
    return _lines(path)


def _table_rows(path: str, kind: str) -> int:
    import pyarrow as pa

    if kind == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    import pyarrow.ipc as ipc

    with pa.memory_map(path, "r") as source:
        return ipc.open_file(source).read_all().num_rows


def _statuses(path: str | None) -> dict[str, int]:
    counts: Counter[str] = Counter()
    if path and os.path.exists(path):
        with open(path, "rb") as fh:
            for line in fh:
                if line.strip():
                    try:
                        counts[str(json.loads(line).get("status", "?"))] += 1
                    except (json.JSONDecodeError, AttributeError):
                        counts["?"] += 1
    return dict(sorted(counts.items()))


def _features(path: str | None) -> list[dict[str, Any]] | None:
    """The ``datasets`` YAML features of a data file, or ``None`` (no datasets / pyarrow, empty or
    unreadable file: the card is still written, without features)."""
    if not path or not os.path.exists(path) or os.path.getsize(path) == 0:
        return None
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".parquet", ".arrow", ".feather"):
        return _jsonl_features(path)
    try:
        from datasets import Features
        import pyarrow as pa
    except ImportError:
        return None
    try:
        if ext == ".parquet":
            import pyarrow.parquet as pq

            schema = pq.read_schema(path)
        elif ext in (".arrow", ".feather"):
            import pyarrow.ipc as ipc

            with pa.memory_map(path, "r") as source:
                schema = ipc.open_file(source).schema
        return Features.from_arrow_schema(schema)._to_yaml_list()
    except Exception as exc:  # noqa: BLE001 - features are optional on a card; the data is what counts
        log.warning("%s: no features on the dataset card (%s: %s)", path, type(exc).__name__, exc)
        return None


def _jsonl_features(path: str) -> list[dict[str, Any]] | None:
    """Features of a JSONL file in the ``datasets`` YAML form, inferred in plain Python from its first
    :data:`FEATURE_SAMPLE_LINES` lines (keys united, the first non-null value's type kept). Importing
    ``datasets`` and pyarrow for this would add ~150 MB and seconds to every run."""
    fields: dict[str, Any] = {}
    try:
        with open(path, "rb") as fh:
            for _, line in zip(range(FEATURE_SAMPLE_LINES), fh):
                if not line.strip():
                    continue
                row = json.loads(line)
                if isinstance(row, dict):
                    for key, value in row.items():
                        if fields.get(key) is None:
                            fields[key] = value
    except (OSError, ValueError) as exc:
        log.warning("%s: no features on the dataset card (%s: %s)", path, type(exc).__name__, exc)
        return None
    return [{"name": key, **_json_feature(value)} for key, value in fields.items()] or None


def _json_feature(value: Any) -> dict[str, Any]:
    """One value's feature (``dtype`` / ``struct`` / ``list``) in the ``datasets`` YAML form."""
    if isinstance(value, bool):
        return {"dtype": "bool"}
    if isinstance(value, int):
        return {"dtype": "int64"}
    if isinstance(value, float):
        return {"dtype": "float64"}
    if isinstance(value, str):
        return {"dtype": "string"}
    if isinstance(value, dict):
        return {"struct": [{"name": str(k), **_json_feature(v)} for k, v in value.items()]}
    if isinstance(value, list):
        first = next((v for v in value if v is not None), None)
        return {"list": _json_feature(first)}
    return {"dtype": "null"}


def _size_category(n: int) -> str:
    for bound, name in _SIZES:
        if n < bound:
            return name
    return "n>1B"


# ------------------------------------------------------------------------- building

def build_card(entries: list[CardEntry], *, title: str, made: str, figures: str = "", license: str = "other",
               base_dir: str = ".", flat: bool = False) -> str:
    """The card's text: the YAML header and the sections (see the module docstring).

    Args:
        entries: the outputs; the first is the ``default`` config (with one entry: ``default``
            and ``discards``; with several: each entry's ``name``, the first one default).
        title: the card's heading.
        made: Markdown for "How it was made" (method / pipeline, settings, models).
        figures: Markdown for "Quality figures" (may be empty).
        license: the Hub license id (``other`` until the user picks one).
        base_dir: the folder the card lives in: ``data_files`` paths are relative to it.
        flat: name files by their base name instead (a Hub repository holding the files side by side).
    """

    def rel(path: str) -> str:
        return os.path.basename(path) if flat else os.path.relpath(path, base_dir).replace(os.sep, "/")

    configs: list[dict[str, Any]] = []
    info: list[dict[str, Any]] = []

    def add(name: str, path: str, n: int, default: bool) -> None:
        config: dict[str, Any] = {"config_name": name, "data_files": [{"split": "train", "path": rel(path)}]}
        if default:
            config["default"] = True
        configs.append(config)
        entry: dict[str, Any] = {"config_name": name}
        features = _features(path)
        if features is not None:
            entry["features"] = features
        entry["splits"] = [{"name": "train", "num_examples": n}]
        info.append(entry)

    single = len(entries) == 1
    for i, e in enumerate(entries):
        counts = e.count()
        add("default" if single else e.name, e.data_file, counts["ok"], i == 0)
        if e.discards_file and counts["discards"]:
            add("discards" if single else f"{e.name}-discards", e.discards_file, counts["discards"], False)
    total = sum(e.count()["ok"] for e in entries)
    header = {"license": license, "tags": TAGS, "size_categories": [_size_category(total)],
              "task_categories": ["text-generation"], "configs": configs, "dataset_info": info}
    from instructmill import __version__

    # the Hub reads the YAML header only at the very start of the file: the marker goes after it
    lines = ["---", yaml.safe_dump(header, sort_keys=False, allow_unicode=True, width=1000).rstrip(),
             "---", CARD_MARKER, "", f"# {title}", "",
             f"Instruction-tuning data made with [instructmill](https://pypi.org/project/instructmill/) "
             f"{__version__}. Every record has an `id` (joins back to its input), a `status` and its "
             f"provenance (`method`, `settings`).", "",
             "## How it was made", "", made.strip(), "", "## Counts", "",
             "| output | file | ok | discarded | unreadable input lines |", "|---|---|---:|---:|---:|"]
    for e in entries:
        c = e.count()
        lines.append(f"| {e.name} | `{rel(e.data_file)}` | {c['ok']} | {c['discards']} | "
                     f"{c['unreadable_input_lines']} |")
    for e in entries:
        by_status = e.count()["discards_by_status"]
        if by_status:
            lines += ["", f"Discards of {e.name} by status (in `{rel(e.discards_file)}`): "
                      + ", ".join(f"{k}: {v}" for k, v in by_status.items()) + "."]
    if figures.strip():
        lines += ["", "## Quality figures", "", figures.strip()]
    lines += ["", "## License", "",
              f"`{license}`" + (": set the license that the sources and models used allow." if license == "other"
                                else "."), ""]
    return "\n".join(lines)


def write_card(path: str | os.PathLike[str], text: str) -> str | None:
    """Write ``text`` to ``path`` unless a card there was not written by instructmill; returns the
    path, or ``None`` (with a warning) when it left a user's file alone."""
    target = os.fspath(path)
    if os.path.exists(target):
        with open(target, encoding="utf-8", errors="replace") as fh:
            if CARD_MARKER not in fh.read():
                log.warning("%s was not written by instructmill: left as it is (no dataset card)", target)
                return None
    tmp = target + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, target)
    return target


def _yaml_block(data: Any) -> str:
    return "```yaml\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=110).rstrip() + "\n```"


# ------------------------------------------------------------------------- record commands

def write_run_card(output_path: str | os.PathLike[str], figures: list[str] | None = None) -> str | None:
    """The card of a record command's run (``template``, ``backtranslate``, ...), from the files
    of the run at ``output_path`` (its state file gives method, settings and input).

    Args:
        output_path: the run's main output ``X.jsonl``.
        figures: the run's summary lines (speed, method counters) for "Quality figures".

    Returns:
        the card's path, or ``None`` when there is no state file or a user's file is in the way.
    """
    from instructmill.io.resume import read_state, run_paths

    paths = run_paths(output_path)
    try:
        state = read_state(paths.state)
    except InstructmillError:  # no (readable) state file: not a finished run of a record command
        return None
    if not state:
        return None
    settings = state.get("settings") or {}
    method = settings.get("method", "instructmill")
    entry = CardEntry(os.path.basename(paths.output), paths.output, paths.discards, paths.errors,
                      state.get("format", "alpaca"))
    command = {"backtranslation": "backtranslate", "self_instruct": "self-instruct", "evol": "evolve"}.get(method, method)
    made = (f"`instructmill {command}` over `{os.path.basename(str(state.get('input', '?')))}` "
            f"(sha256 `{str(state.get('input_sha256', ''))[:16]}`), output shape `{entry.fmt}`, "
            f"{state.get('sessions', 1)} session(s), started {state.get('started', '?')}, "
            f"last written {state.get('updated', '?')}. Settings (models, decoding, options):\n\n"
            + _yaml_block(settings))
    text = build_card([entry], title=f"{os.path.basename(paths.output)}: {method}", made=made,
                      figures="\n".join(f"- {line}" for line in (figures or [])),
                      base_dir=os.path.dirname(os.path.abspath(paths.output)))
    return write_card(card_path(paths.output), text)


# ------------------------------------------------------------------------- pipelines

def _pipeline_made(spec: Any, report: dict[str, Any]) -> str:
    from instructmill.pipeline.stages import plain

    described = {
        "engines": {name: plain(e) for name, e in spec.engines.items()},
        "sources": {name: {"path": s.path, "format": s.format} for name, s in spec.sources.items()},
        "stages": [{"name": s.name, "method": s.method, "input": s.input, "engine": s.engine,
                    "options": plain(s.options)} for s in spec.stages],
    }
    return (f"Pipeline `{os.path.basename(spec.file)}` (`instructmill generate`), run {report.get('started', '?')} "
            f"to {report.get('finished', '?')} in {report.get('sessions', 1)} session(s), "
            f"{report.get('wall_seconds', 0):.0f} s. Stages, engines (models) and their settings:\n\n"
            + _yaml_block(described))


def _pipeline_figures(report: dict[str, Any]) -> str:
    lines = ["| stage | method | in | out | ok out | discarded (by reason) |", "|---|---|---:|---:|---:|---|"]
    for name, stage in (report.get("stages") or {}).items():
        discards = stage.get("discards") or {}
        lines.append(f"| {name} | {stage.get('method', '')} | {stage.get('records_in', 0)} | "
                     f"{stage.get('records_out', 0)} | {stage.get('ok_out', '')} | "
                     + (", ".join(f"{k}: {v}" for k, v in discards.items()) or "-") + " |")
    summaries = {name: stage["method_summary"] for name, stage in (report.get("stages") or {}).items()
                 if stage.get("method_summary")}
    if summaries:
        lines += ["", "Method counters (per stage):", "", _yaml_block(summaries)]
    engines = {name: {k: e[k] for k in ("output_tokens", "output_tokens_per_second", "busy_fraction") if k in e}
               for name, e in (report.get("engines") or {}).items()}
    if any(engines.values()):
        lines += ["", "Engines:", "", _yaml_block({k: v for k, v in engines.items() if v})]
    return "\n".join(lines)


def pipeline_entries(spec: Any, report: dict[str, Any]) -> list[CardEntry]:
    """One :class:`CardEntry` per sink of a finished pipeline run (its export, if any, as data)."""
    from instructmill.io.resume import run_paths

    entries = []
    for sink in spec.sinks:
        paths = run_paths(spec.resolve(sink.path))
        data = spec.resolve(sink.export) if sink.export else paths.output
        errors = [s.get("errors_file") for s in (report.get("sources") or {}).values() if s.get("errors_file")]
        entries.append(CardEntry(sink.name, data, paths.discards, errors[0] if len(errors) == 1 else None,
                                 sink.format))
    return entries


def write_pipeline_cards(spec: Any, report: dict[str, Any]) -> list[str]:
    """Write ``<sink stem>.README.md`` next to every sink of a finished run; returns the cards written."""
    made, figures = _pipeline_made(spec, report), _pipeline_figures(report)
    written = []
    for sink, entry in zip(spec.sinks, pipeline_entries(spec, report)):
        target = card_path(spec.resolve(sink.path))
        text = build_card([entry], title=f"{sink.name}: pipeline {os.path.basename(spec.file)}", made=made,
                          figures=figures, base_dir=os.path.dirname(target))
        if write_card(target, text):
            written.append(target)
    return written


# ------------------------------------------------------------------------- the Hub

class HubError(InstructmillError):
    """Uploading to the Hugging Face Hub failed (the local files are kept)."""


def push_to_hub(repo: str, entries: list[CardEntry], *, title: str, made: str, figures: str = "",
                private: bool = False, token: str | None = None) -> str:
    """Upload the entries' files (by base name) and their card (as ``README.md``) to the dataset
    repository ``repo`` in one commit, creating it if needed; returns the commit URL.

    Uses ``huggingface_hub`` (``HF_ENDPOINT``, ``HF_TOKEN`` as usual).

    Raises:
        HubError: the Hub cannot be reached, refuses the token, or two files share a base name
            (one line, naming the endpoint and the cause).
    """
    from huggingface_hub import CommitOperationAdd, HfApi, constants

    endpoint = constants.ENDPOINT
    files: dict[str, str] = {}
    for e in entries:
        for path in (e.data_file, e.discards_file):
            if path and os.path.exists(path):
                name = os.path.basename(path)
                if name in files and files[name] != path:
                    raise HubError(f"cannot push {path} and {files[name]} to {repo}: both are named {name!r}")
                files[name] = path
    card = build_card(entries, title=title, made=made, figures=figures, flat=True)
    api = HfApi(token=token)
    try:
        api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
        ops = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=path) for name, path in files.items()]
        ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode("utf-8")))
        info = api.create_commit(repo, operations=ops, repo_type="dataset",
                                 commit_message="instructmill: upload data and dataset card")
    except Exception as exc:  # noqa: BLE001 - network, auth, HTTP: all one line for the user
        cause = str(exc).splitlines()[0] if str(exc) else ""
        raise HubError(f"could not push to {endpoint} (dataset {repo}): {type(exc).__name__}: {cause[:300]}; "
                       "the data is kept locally") from None
    return str(getattr(info, "commit_url", info))
