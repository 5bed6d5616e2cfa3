"""Template filling: instructmill's :class:`~instructmill.methods.template.TemplateFiller` vs plain loops.

Workload: N rows built from the 175 Self-Instruct seed tasks (``seed_tasks.jsonl``; synthetic
sentences when the shared data is missing), filled with the built-in ``translate`` template
(instruction ``Translate the following {{ src }} text into {{ tgt }}.``, input ``{{ text }}``,
output ``{{ translation | default('') }}``). Row ``i`` takes its ``text`` from seed ``i % 175``
(the instruction, or the first instance's input when there is one and ``i`` is odd); every third
row has a ``translation`` (the instance's output), every fifth its own ``tgt`` ("French"), so
the template's defaults and the rows' own values are both exercised. Quick: 20,000 rows; full:
200,000; ``--num-prompts`` sets the count.

Engines (same rows, same process, interleaved rounds; the fastest round of each counts):

* ``instructmill``: ``TemplateFiller(load_template("translate")).fill(records)`` -- what
  ``instructmill template`` and the pipeline's template stage run: jinja2's sandbox,
  ``StrictUndefined``, missing-field errors per record, provenance ``settings`` on every record.
  Timed: building the filler (compiling the template) and rendering every row into a list.
* ``jinja2_loop``: a plain ``jinja2.Environment()``, the three sources compiled once, then one
  ``render`` per field per row in a Python loop (no sandbox, no per-record error handling).
* ``str_format``: the same three texts as Python ``str.format`` strings, one call per field per row.

Rounds: ``max(--repeats, 3)``, interleaved (instructmill, jinja2_loop, str_format, instructmill...);
every round's time is kept in ``settings["rounds_s"]``.

Every engine's output is compared with instructmill's (``identical_outputs``: share of rows whose
instruction, input and output are equal; ``detail["checks"]["outputs_identical"]``). Tokens are
whitespace words: ``input_tokens`` of the rows' ``text`` (+ ``translation``), ``output_tokens`` of
the rendered fields. Headline: rows/s (``requests_per_s``). This path has no batching, so
``--max-batch-size`` / ``--max-batch-tokens`` do not apply (they are ignored, and logged).
"""
from __future__ import annotations

import hashlib
import json
import random
from typing import Any, Callable

from ..core import ROLE_BASELINE, ROLE_INSTRUCTMILL, BenchOptions, EngineResult, WorkloadResult, measure, throughput
from . import seed_tasks

__all__ = ["run", "make_rows", "QUICK_ROWS", "FULL_ROWS", "TEMPLATE"]

QUICK_ROWS = 20_000
FULL_ROWS = 200_000
TEMPLATE = "translate"
#: rounds per engine at least (each takes about a second in quick mode; the fastest counts)
MIN_ROUNDS = 3
ENGINES = ("instructmill", "jinja2_loop", "str_format")

# The built-in ``translate`` template as str.format strings (checked against the built-in below).
_FORMAT = {"instruction": "Translate the following {src} text into {tgt}.", "input": "{text}", "output": "{translation}"}


def make_rows(n: int, seed: int = 0) -> tuple[list[dict[str, Any]], str]:
    """``n`` rows for the ``translate`` template and the name of their source (see the module docstring).

    Rows are deterministic for ``(n, seed)``; ``seed`` only matters for the synthetic fallback.
    """
    tasks = seed_tasks()
    rows: list[dict[str, Any]] = []
    if tasks:
        source = "seed_tasks.jsonl"
        for i in range(n):
            task = tasks[i % len(tasks)]
            instance = (task.get("instances") or [{}])[0]
            text = instance.get("input") if (i % 2 and instance.get("input")) else task["instruction"]
            row: dict[str, Any] = {"id": f"row{i}", "text": text}
            if i % 3 == 0 and instance.get("output"):
                row["translation"] = instance["output"]
            if i % 5 == 0:
                row["tgt"] = "French"
            rows.append(row)
    else:
        source = f"synthetic (seed {seed})"
        rng = random.Random(seed)
        words = ("write explain list give describe find the a of to and in for with about story poem email "
                 "summary sentence word number table reason example answer question garden river city").split()
        for i in range(n):
            row = {"id": f"row{i}", "text": " ".join(rng.choice(words) for _ in range(rng.randint(4, 30))).capitalize()}
            if i % 3 == 0:
                row["translation"] = " ".join(rng.choice(words) for _ in range(rng.randint(4, 30)))
            if i % 5 == 0:
                row["tgt"] = "French"
            rows.append(row)
    return rows, source


def _words(*texts: str) -> int:
    return sum(len(t.split()) for t in texts)


def _run_instructmill(records: list) -> list[tuple[str, str, str]]:
    from ...methods.template import TemplateFiller, load_template

    filler = TemplateFiller(load_template(TEMPLATE))
    out = list(filler.fill(records))
    return [(r.example.instruction, r.example.input, r.example.output) if r.status == "ok" else ("", "", "")
            for r in out]


def _run_jinja2(rows: list[dict[str, Any]], sources: dict[str, str], defaults: dict[str, Any]) -> list:
    import jinja2

    env = jinja2.Environment()
    compiled = [env.from_string(sources[k]) for k in ("instruction", "input", "output")]
    out = []
    for row in rows:
        ctx = {**defaults, **row}
        out.append({"id": row["id"], "instruction": compiled[0].render(ctx).strip(),
                    "input": compiled[1].render(ctx).strip(), "output": compiled[2].render(ctx).strip()})
    return out


def _run_format(rows: list[dict[str, Any]], defaults: dict[str, Any]) -> list:
    fi, fn, fo = _FORMAT["instruction"], _FORMAT["input"], _FORMAT["output"]
    out = []
    for row in rows:
        ctx = {**defaults, "translation": "", **row}
        out.append({"id": row["id"], "instruction": fi.format(**ctx).strip(), "input": fn.format(**ctx).strip(),
                    "output": fo.format(**ctx).strip()})
    return out


def run(options: BenchOptions, *, log: Callable[[str], None]) -> WorkloadResult:
    """Measure template filling (see the module docstring); headline ``requests_per_s`` (rows/s).

    Raises:
        OptionError: ``options.engines`` names no engine of this workload.
    """
    from ...errors import OptionError
    from ...methods.template import load_template
    from ...records import InputRecord

    engines = [e for e in ENGINES if options.wants(e)]
    if not engines:
        raise OptionError("engines", ",".join(options.engines or ()), f"template has: {', '.join(ENGINES)}")
    for name in ("max_batch_size", "max_batch_tokens", "model", "input_len", "output_len"):
        if getattr(options, name) is not None:
            log(f"template: --{name.replace('_', '-')} does not apply to template filling; ignored")
    n = options.num_prompts or (QUICK_ROWS if options.quick else FULL_ROWS)
    rows, source = make_rows(n, options.seed)
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
    records = [InputRecord(id=row["id"], line=i + 1, fields=row, shape="table") for i, row in enumerate(rows)]
    tpl = load_template(TEMPLATE)
    sources, defaults = tpl.sources(), dict(tpl.variables)
    in_tokens = sum(_words(r["text"], r.get("translation", "")) for r in rows)
    repeats = max(options.repeats, MIN_ROUNDS)
    log(f"template: {n:,} rows from {source}, template {TEMPLATE!r}, engines {', '.join(engines)}, "
        f"{repeats} rounds")

    warm_rows, warm_records = rows[:200], records[:200]
    runners: dict[str, Callable[[bool], list]] = {
        "instructmill": lambda warm: _run_instructmill(warm_records if warm else records),
        "jinja2_loop": lambda warm: _run_jinja2(warm_rows if warm else rows, sources, defaults),
        "str_format": lambda warm: _run_format(warm_rows if warm else rows, defaults),
    }
    for name in engines:  # warm-up: imports, jinja2's caches
        runners[name](True)

    best: dict[str, float] = {}
    rounds: dict[str, list[float]] = {e: [] for e in engines}
    rss: dict[str, float] = {}
    outputs: dict[str, list] = {}
    for r in range(repeats):
        for name in engines:
            with measure() as m:
                out = runners[name](False)
            rounds[name].append(round(m.seconds, 4))
            rss[name] = max(rss.get(name, 0.0), m.peak_rss_mb)
            if name not in best or m.seconds < best[name]:
                best[name] = m.seconds
            if r == 0:
                outputs[name] = [(o["instruction"], o["input"], o["output"]) if isinstance(o, dict) else o
                                 for o in out]
            del out
        log(f"template: round {r + 1}: " + ", ".join(f"{e} {n / max(rounds[e][-1], 1e-9):,.0f} rows/s"
                                                     for e in engines))

    reference = outputs.get("instructmill")
    results: list[EngineResult] = []
    checks: dict[str, bool] = {}
    for name in engines:
        out = outputs[name]
        out_tokens = sum(_words(*fields) for fields in out)
        identical = None
        if reference is not None:
            same = sum(1 for a, b in zip(out, reference) if tuple(a) == tuple(b))
            identical = round(same / max(len(reference), 1), 6)
            if name != "instructmill":
                checks[f"outputs_identical[{name}]"] = same == len(reference)
        metrics = throughput(requests=n, input_tokens=in_tokens, output_tokens=out_tokens, seconds=best[name],
                             peak_rss_mb=rss[name], busy_fraction=None, identical_outputs=identical)
        settings: dict[str, Any] = {"rounds_s": rounds[name]}
        if name == "instructmill":
            settings.update(template=TEMPLATE, path="TemplateFiller.fill", sandboxed=True, undefined="strict",
                            batching="none (rows are rendered one by one; batch budgets do not apply)")
            note = ""
        elif name == "jinja2_loop":
            settings.update(environment="jinja2.Environment() (not sandboxed)", compiled_once=True)
            note = "plain loop: no sandbox, no per-record errors, no provenance"
        else:
            settings.update(formats=dict(_FORMAT))
            note = "str.format: no template language at all"
        results.append(EngineResult(name, ROLE_INSTRUCTMILL if name == "instructmill" else ROLE_BASELINE,
                                    metrics, settings, note))
    return WorkloadResult(
        workload="template",
        headline_metric="requests_per_s",
        results=results,
        detail={
            "unit": "rows/s",
            "comparable": {"dataset": source, "dataset_sha256": digest, "rows": n, "template": TEMPLATE,
                           "quick": options.quick},
            "rows": n,
            "input_words": in_tokens,
            **({"device_note": "CPU-only workload (runs on the CPU whatever --device)"}
               if options.device != "cpu" else {}),
            "checks": checks,
        },
        options=options.as_dict(),
    )
