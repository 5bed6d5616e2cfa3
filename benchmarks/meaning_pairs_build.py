"""Build the candidate source/paraphrase pairs behind ``benchmarks/data/meaning_pairs.jsonl``.

Two steps (the labels in between are written by a person, pair by pair):

    # 1. pick English texts from the seed tasks and the ShareGPT sample -> one record per text
    python benchmarks/meaning_pairs_build.py prepare ../shared/data out/meaning_in.jsonl
    # 2. paraphrase them with the embedded en->pt->en models
    instructmill backtranslate out/meaning_in.jsonl -o out/meaning_bt.jsonl --field instruction
    # 3. join sources and paraphrases (ok records, and "unchanged" ones: paraphrase == source)
    python benchmarks/meaning_pairs_build.py collect out/meaning_in.jsonl out/meaning_bt.jsonl out/candidates.jsonl

Selection (fixed seed, no looking at the paraphrases): from the seed tasks, every non-empty
instruction / input / output of at most 400 characters that is not code; from the ShareGPT sample,
paragraphs (blank-line separated) of 40-400 characters from both roles that look like English prose
(mostly ASCII letters, no code fences, braces or semicolon-ended lines). ``PER_ORIGIN`` texts are
drawn from each pool with ``random.Random(SEED)``.

The committed sample: 250 texts drawn, 3 paraphrases discarded by back-translation itself
(``placeholder_lost``), 5 ShareGPT segments that were code after all (a ``#`` comment line over
Python, a Mermaid edge) left out while labelling: 242 pairs, each labelled by reading it.
"""
from __future__ import annotations

import gzip
import json
import random
import re
import sys
from pathlib import Path

SEED = 20261206
PER_ORIGIN = 125
_CODE = re.compile(r"```|[{};]\s*$|^\s*(def|class|import|for|if|return|print)\b|</?\w+>|\$\s", re.M)


def _prose(text: str, low: int, high: int) -> bool:
    text = text.strip()
    if not low <= len(text) <= high or _CODE.search(text):
        return False
    letters = sum(c.isalpha() for c in text)
    ascii_letters = sum(c.isascii() and c.isalpha() for c in text)
    return letters >= 0.6 * len(text.replace(" ", "")) and ascii_letters >= 0.97 * letters


def _seed_pool(path: Path) -> list[tuple[str, str]]:
    pool = []
    for line in path.open(encoding="utf-8"):
        task = json.loads(line)
        inst = task["instances"][0]
        for field, text in (("instruction", task["instruction"]), ("input", inst.get("input", "")),
                            ("output", inst.get("output", ""))):
            if text and _prose(text, 3, 400):
                pool.append((f"{task['id']}:{field}", text.strip()))
    return pool


def _sharegpt_pool(path: Path) -> list[tuple[str, str]]:
    pool = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            conv = json.loads(line)
            for turn, message in enumerate(conv.get("conversations", [])):
                for para_no, para in enumerate(re.split(r"\n\s*\n", message.get("value") or "")):
                    if _prose(para, 40, 400):
                        pool.append((f"{conv['id']}:{turn}:{para_no}", para.strip()))
    return pool


def prepare(shared_data: Path, out: Path) -> None:
    """Write the drawn texts as Alpaca records (text in ``instruction``) to ``out``."""
    rng = random.Random(SEED)
    rows = []
    for origin, pool in (("seed", _seed_pool(shared_data / "seed_tasks.jsonl")),
                         ("sharegpt", _sharegpt_pool(shared_data / "sharegpt_sample.jsonl.gz"))):
        for key, text in rng.sample(pool, PER_ORIGIN):
            rows.append({"id": f"{origin}/{key}", "instruction": text, "input": "", "output": "",
                         "origin": origin})
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{len(rows)} texts -> {out}")


def collect(inputs: Path, bt_output: Path, out: Path) -> None:
    """Join sources with their paraphrases; ``unchanged`` discards are pairs with paraphrase == source.
    Other discards (placeholder_lost, structure_changed, ...) are left out: the gate never sees them."""
    sources = {}
    for line in inputs.open(encoding="utf-8"):
        row = json.loads(line)
        sources[row["id"]] = row
    paraphrases = {}
    for line in bt_output.open(encoding="utf-8"):
        row = json.loads(line)
        paraphrases[row["id"]] = row["instruction"]
    discards = bt_output.with_name(bt_output.name.replace(".jsonl", ".discards.jsonl"))
    skipped: dict[str, int] = {}
    for line in discards.open(encoding="utf-8"):
        row = json.loads(line)
        if row["status"] == "unchanged":
            paraphrases[row["id"]] = sources[row["id"]]["instruction"]
        else:
            skipped[row["status"]] = skipped.get(row["status"], 0) + 1
    with out.open("w", encoding="utf-8") as fh:
        for key, row in sources.items():
            if key in paraphrases:
                fh.write(json.dumps({"id": key, "source_text": row["instruction"],
                                     "paraphrase": paraphrases[key], "origin": row["origin"]},
                                    ensure_ascii=False) + "\n")
    print(f"{len(paraphrases)} pairs -> {out}; left out: {skipped}")


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"prepare": prepare, "collect": collect}[command](*map(Path, args))
