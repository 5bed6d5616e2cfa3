"""Count the ``ok`` back-translation records whose protected structure changed, per kind.

Reads the main output of ``instructmill backtranslate`` (alpaca format, the default) and its
input, pairs each output field with its source text and compares them with the checks of
:mod:`instructmill.methods.structure`: fenced and unfenced code, JSON-like blocks, inline code,
URLs, e-mails, placeholders, HTML/XML tags, hashtags, @mentions, ``C#``-like tokens, emoji,
emphasis markers, table shape, newline counts, and numbers both ways (lost and added). A record
counts once per kind however many of its fields changed. Statuses of the discards file beside
the output (``<output>.discards.jsonl``) are counted too. Example::

    instructmill backtranslate ../shared/data/sharegpt_sample.jsonl.gz -o out/sg.jsonl \\
        --field instruction --field output --limit 150
    python benchmarks/check_structure.py out/sg.jsonl ../shared/data/sharegpt_sample.jsonl.gz \\
        --field instruction --field output --examples 2

Exit status: 0 when no ``ok`` record changed a protected span, 1 when some did, 2 on bad input.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

SRC = Path(__file__).resolve().parents[1] / "src"
if SRC.is_dir() and str(SRC) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(SRC))

from instructmill.errors import InstructmillError  # noqa: E402
from instructmill.methods.structure import STRUCTURE_KINDS, number_changes, structure_changes  # noqa: E402

#: Every kind reported, in this order: the structure kinds, then numbers each way.
KINDS = (*STRUCTURE_KINDS, "numbers_lost", "numbers_added")


def field_changes(source: str, output: str) -> dict[str, list[str]]:
    """kind -> the spans that changed (lost spans, then added ones marked ``+``) for one field."""
    out: dict[str, list[str]] = {}
    for change in structure_changes(source, output):
        out[change["kind"]] = change["lost"] + ["+" + s for s in change["added"]]
    lost, added = number_changes(source, output)
    if lost:
        out["numbers_lost"] = lost
    if added:
        out["numbers_added"] = added
    return out


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise SystemExit(f"check_structure: {path}:{number}: not JSON ({exc.msg})") from None


def _sources(input_path: str | None) -> dict[str, Any]:
    if input_path is None:
        return {}
    from instructmill.io.readers import read_records, to_example

    sources: dict[str, Any] = {}
    for record in read_records(input_path):
        try:
            sources[record.id] = to_example(record)
        except InstructmillError:
            continue  # such a record comes out as invalid_record, never ok
    return sources


def report(output_path: str, input_path: str | None, fields: list[str], examples: int = 0) -> dict[str, Any]:
    """Per-kind counts of ``ok`` records (and fields) whose protected spans changed.

    Returns a dict: ``ok_records``, ``records_changed`` (any kind), ``by_kind`` (kind ->
    ``{"records", "fields"}``), ``examples`` (kind -> up to ``examples`` ``{"id", "field",
    "spans"}``), ``discard_statuses`` (status -> records in the discards file).

    Raises:
        SystemExit: a line is not JSON, or a record's source cannot be found.
    """
    sources = _sources(input_path)
    by_kind = {kind: {"records": 0, "fields": 0} for kind in KINDS}
    shown: dict[str, list[dict[str, Any]]] = {}
    ok_records = changed_records = 0
    for rec in _jsonl(Path(output_path)):
        if rec.get("status") != "ok":
            continue
        ok_records += 1
        extra = rec.get("extra") or {}
        source_id = extra.get("source_id", rec.get("id"))
        kinds_hit: set[str] = set()
        for name in fields:
            if source_id in sources:
                source = sources[source_id].get(name)
            elif name in (extra.get("original") or {}):
                source = extra["original"][name]
            else:
                raise SystemExit(f"check_structure: record {rec.get('id')!r}: no source for field {name!r} "
                                 f"(give the input file, or an output that carries extra.original)")
            output = rec.get(name)
            if not isinstance(source, str) or not isinstance(output, str):
                continue
            for kind, spans in field_changes(source, output).items():
                by_kind[kind]["fields"] += 1
                kinds_hit.add(kind)
                if len(shown.setdefault(kind, [])) < examples:
                    shown[kind].append({"id": rec.get("id"), "field": name, "spans": spans[:6]})
        for kind in kinds_hit:
            by_kind[kind]["records"] += 1
        changed_records += bool(kinds_hit)
    discards = Path(output_path).with_suffix(".discards.jsonl")
    statuses = Counter(r.get("status") for r in _jsonl(discards)) if discards.exists() else Counter()
    return {"ok_records": ok_records, "records_changed": changed_records, "by_kind": by_kind,
            "examples": shown, "discard_statuses": dict(statuses.most_common())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="main output JSONL of instructmill backtranslate (alpaca format)")
    parser.add_argument("input", nargs="?", help="its input file (else extra.original of each record)")
    parser.add_argument("--field", action="append", default=None,
                        help="paraphrased field (repeat; default: instruction)")
    parser.add_argument("--examples", type=int, default=0, help="show up to N changed spans per kind")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = parser.parse_args(argv)
    try:
        result = report(args.output, args.input, args.field or ["instruction"], args.examples)
    except (OSError, InstructmillError) as exc:
        print(f"check_structure: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(f"ok records: {result['ok_records']}; ok records with a changed protected span: "
              f"{result['records_changed']}")
        print(f"{'kind':<16}{'records':>8}{'fields':>8}")
        for kind, counts in result["by_kind"].items():
            print(f"{kind:<16}{counts['records']:>8}{counts['fields']:>8}")
            for example in result["examples"].get(kind, []):
                print(f"    {example['id']} {example['field']}: {example['spans']}")
        if result["discard_statuses"]:
            print("discarded:", ", ".join(f"{s} {n}" for s, n in result["discard_statuses"].items()))
    return 1 if result["records_changed"] else 0


if __name__ == "__main__":
    sys.exit(main())
