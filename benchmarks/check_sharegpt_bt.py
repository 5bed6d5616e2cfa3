"""Independent check of a back-translation run on conversations (ShareGPT / OpenAI ``messages``).

``instructmill backtranslate`` has its own gates (methods/structure.py, methods/language.py,
methods/meaning.py). This script shares none of their code: it re-implements each check with its
own plain regular expressions, pairs every turn of every ``ok`` output record with the same turn of
its input record (roles and order must match), and counts, per kind, the turns whose protected
content differs:

* ``roles``: the turn count or a role changed;
* ``fenced_code``: fenced code blocks (byte-identical);
* ``code_lines``: lines outside fences that are clearly code (two or more code signals: ending in
  ``;`` ``{`` ``}``, starting with a keyword or a shell prompt, assignments, calls with
  brackets...), as a multiset;
* ``inline_code``, ``urls``, ``placeholders`` (``{name}``), ``tags`` (``<div>``), ``hashtags``
  (``#word``) and ``mentions`` (``@word``): multisets;
* ``numbers_lost`` / ``numbers_added``: digit sequences, both ways;
* ``table_shape``: for each markdown table line (``|`` first), the number of ``|``, in order;
* ``json_lines``: lines holding ``"key":`` pairs, byte-identical;
* ``newlines``: the count of line breaks;
* ``other_language``: a line of the input written mostly in a non-Latin script (CJK, Hangul, kana,
  Cyrillic, Arabic, Hebrew, Thai, Devanagari, Greek) that does not come back byte-identical: such
  text must never go through the en<->pt models. Latin-script languages are checked with
  ``--lang-check`` (langid.py, when installed: another library than the one the run uses).

Usage::

    instructmill backtranslate ../shared/data/sharegpt_sample.jsonl.gz -o out/sg.jsonl --format sharegpt
    python benchmarks/check_sharegpt_bt.py out/sg.jsonl ../shared/data/sharegpt_sample.jsonl.gz

Prints the counts of records by status (output + discards), the rejection rate (``invalid_record``,
``empty_record``), and the changed turns per kind with examples. Exit 0 when no ``ok`` record
changed anything, 1 otherwise, 2 on bad input.
"""
from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
import unicodedata
from collections import Counter
from typing import Any, Iterator

FENCE_RE = re.compile(r"```.*?(?:```|\Z)", re.S)
INLINE_RE = re.compile(r"`[^`\n]+`")
URL_RE = re.compile(r"(?:https?|ftp)://[^\s<>()\[\]\"'`]+|www\.[^\s<>()\[\]\"'`]+")
PLACEHOLDER_RE = re.compile(r"\{[A-Za-z_][A-Za-z0-9_.]*\}|\{\{[^{}\n]+\}\}")
TAG_RE = re.compile(r"</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>\n]*)?/?>")
HASHTAG_RE = re.compile(r"(?<![\w&#/])#[A-Za-z_][A-Za-z0-9_]*")
MENTION_RE = re.compile(r"(?<![\w.])@[A-Za-z_][A-Za-z0-9_]*")
NUMBER_RE = re.compile(r"\d+")
JSON_LINE_RE = re.compile(r'"[^"\n]{1,60}"\s*:')
KEYWORDS = re.compile(r"^\s*(?:def|class|import|from|return|if|elif|else|for|while|try|except|catch|const|let|var|"
                      r"function|public|private|static|void|int|#include|SELECT|INSERT|UPDATE|CREATE|print|echo|"
                      r"sudo|pip|npm|git|cd|ls|export|package|func|fn|struct|enum|interface|using|namespace)\b")
NON_LATIN = ("CJK", "HANGUL", "HIRAGANA", "KATAKANA", "CYRILLIC", "ARABIC", "HEBREW", "THAI", "DEVANAGARI", "GREEK")
KINDS = ("roles", "fenced_code", "code_lines", "inline_code", "urls", "placeholders", "tags", "hashtags",
         "mentions", "numbers_lost", "numbers_added", "table_shape", "json_lines", "newlines", "other_language")


def _unfenced(text: str) -> str:
    return FENCE_RE.sub("\n", text)


def code_signals(line: str) -> int:
    """How many code signals a line shows (a line with two or more is code)."""
    s = line.strip()
    if not s:
        return 0
    signals = 0
    signals += s.endswith((";", "{", "}", "};", "){", ");"))
    signals += bool(KEYWORDS.match(s))
    signals += s.startswith(("$ ", "> ", ">>> ", "//", "/*", "--", "#!"))
    signals += bool(re.search(r"\w+\([^()]*\)", s)) and not re.search(r"[a-z]\s[a-z]+\s[a-z]+\s[a-z]", s)
    signals += bool(re.search(r"[=!<>]=|=>|->|::|\+\+|&&|\|\|", s))
    signals += bool(re.match(r"^\s*[\w.\[\]]+\s*=\s*\S", s))
    signals += line.startswith(("    ", "\t")) and bool(re.search(r"[;{}()=]", s))
    return signals


def _code_lines(text: str) -> Counter:
    return Counter(line.strip() for line in _unfenced(text).splitlines() if code_signals(line) >= 2)


def _non_latin(line: str) -> bool:
    letters = [c for c in line if c.isalpha()]
    if len(letters) < 4:
        return False
    foreign = sum(1 for c in letters if any(unicodedata.name(c, "").startswith(p) for p in NON_LATIN))
    return foreign / len(letters) >= 0.5


def turn_changes(source: str, output: str, lang_check=None) -> dict[str, Any]:
    """kind -> what changed between one input turn and its output turn (empty when nothing did)."""
    out: dict[str, Any] = {}
    src_plain, out_plain = _unfenced(source), _unfenced(output)

    def multiset(kind: str, regex: re.Pattern, a: str, b: str) -> None:
        ca, cb = Counter(regex.findall(a)), Counter(regex.findall(b))
        if ca != cb:
            out[kind] = sorted((ca - cb).elements())[:5] + ["+" + x for x in sorted((cb - ca).elements())[:5]]

    if FENCE_RE.findall(source) != FENCE_RE.findall(output):
        out["fenced_code"] = True
    if _code_lines(source) != _code_lines(output):
        lost = _code_lines(source) - _code_lines(output)
        out["code_lines"] = list(lost.elements())[:3] or ["+" + x for x in (_code_lines(output) - _code_lines(source))][:3]
    multiset("inline_code", INLINE_RE, src_plain, out_plain)
    multiset("urls", URL_RE, src_plain, out_plain)
    multiset("placeholders", PLACEHOLDER_RE, src_plain, out_plain)
    multiset("tags", TAG_RE, src_plain, out_plain)
    multiset("hashtags", HASHTAG_RE, src_plain, out_plain)
    multiset("mentions", MENTION_RE, src_plain, out_plain)
    na, nb = Counter(NUMBER_RE.findall(source)), Counter(NUMBER_RE.findall(output))
    if na - nb:
        out["numbers_lost"] = sorted((na - nb).elements())[:5]
    if nb - na:
        out["numbers_added"] = sorted((nb - na).elements())[:5]
    shape_a = [line.count("|") for line in src_plain.splitlines() if line.lstrip().startswith("|")]
    shape_b = [line.count("|") for line in out_plain.splitlines() if line.lstrip().startswith("|")]
    if shape_a != shape_b:
        out["table_shape"] = [shape_a[:6], shape_b[:6]]
    ja = [line for line in src_plain.splitlines() if JSON_LINE_RE.search(line)]
    jb = [line for line in out_plain.splitlines() if JSON_LINE_RE.search(line)]
    if ja != jb:
        out["json_lines"] = (sorted(set(ja) - set(jb)) or ["(order)"])[:2]
    if source.count("\n") != output.count("\n"):
        out["newlines"] = [source.count("\n"), output.count("\n")]
    out_lines = set(output.splitlines())
    foreign = [line for line in src_plain.splitlines() if line.strip() and line not in out_lines
               and (_non_latin(line) or (lang_check is not None and lang_check(line)))]
    if foreign:
        out["other_language"] = foreign[:2]
    return out


def _rows(path: str) -> Iterator[dict[str, Any]]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def _turns(row: dict[str, Any]) -> list[tuple[str, str]]:
    turns = row.get("conversations") if "conversations" in row else row.get("messages")
    out = []
    for t in turns or []:
        role = (t.get("from") or t.get("role") or "").lower()
        role = {"human": "user", "gpt": "assistant", "chatgpt": "assistant", "bard": "assistant"}.get(role, role)
        text = t.get("value") if "value" in t else t.get("content")
        out.append((role, text if isinstance(text, str) else ""))
    return out


def _latin_lang_check():
    """A Latin-script non-English detector from langid.py, or None when it is not installed."""
    try:
        import langid  # type: ignore
    except ImportError:
        return None
    identifier = langid.langid.LanguageIdentifier.from_modelstring(langid.langid.model, norm_probs=True)
    identifier.set_languages(["en", "es", "fr", "de", "pt", "it", "nl", "id", "vi", "tr", "pl"])

    def check(line: str) -> bool:
        words = re.findall(r"[^\W\d_]{2,}", line)
        if len(words) < 6 or code_signals(line) >= 2:
            return False
        lang, prob = identifier.classify(line)
        return lang != "en" and prob > 0.99
    return check


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="the run's main output (sharegpt or openai format)")
    parser.add_argument("input", help="the input file (.jsonl or .jsonl.gz)")
    parser.add_argument("--examples", type=int, default=2, help="examples printed per kind")
    parser.add_argument("--lang-check", action="store_true", help="also check Latin-script languages (langid.py)")
    parser.add_argument("--json", help="write the counts as JSON there")
    args = parser.parse_args(argv)
    try:
        sources = {str(row.get("id")): row for row in _rows(args.input)}
        outputs = list(_rows(args.output))
        discards_path = re.sub(r"\.jsonl$", ".discards.jsonl", args.output)
        discards = list(_rows(discards_path)) if discards_path != args.output else []
    except (OSError, ValueError) as exc:
        print(f"check_sharegpt_bt: {exc}", file=sys.stderr)
        return 2
    lang_check = _latin_lang_check() if args.lang_check else None
    statuses = Counter(str(r.get("status")) for r in outputs + discards)
    total = sum(statuses.values())
    rejected = statuses.get("invalid_record", 0) + statuses.get("empty_record", 0)
    changed: Counter[str] = Counter()
    examples: dict[str, list] = {}
    turns_checked = 0
    for row in outputs:
        rid = str(row.get("id"))
        source = sources.get(rid) or sources.get(rid.split("#L")[0])
        if source is None:
            changed["unknown_id"] += 1
            continue
        before, after = _turns(source), _turns(row)
        before = [t for t in before if t[0] != "system"] if not any(r == "system" for r, _ in after) else before
        if [r for r, _ in before] != [r for r, _ in after]:
            changed["roles"] += 1
            examples.setdefault("roles", []).append(rid)
            continue
        for (_, a), (_, b) in zip(before, after):
            turns_checked += 1
            for kind, what in turn_changes(a, b, lang_check).items():
                changed[kind] += 1
                if len(examples.setdefault(kind, [])) < args.examples:
                    examples[kind].append({"id": rid, "what": what})
    print(f"records: {total} ({', '.join(f'{k}: {v}' for k, v in statuses.most_common())})")
    print(f"rejected (invalid_record, empty_record): {rejected} of {total} = {rejected / max(total, 1):.2%}")
    print(f"ok records checked: {len(outputs)}, turns: {turns_checked}")
    for kind in (*KINDS, "unknown_id"):
        if changed.get(kind):
            print(f"  {kind}: {changed[kind]} turns  e.g. {json.dumps(examples.get(kind, [])[:args.examples], ensure_ascii=False)[:400]}")
    print("changed turns: " + (str(sum(changed.values())) if changed else "none"))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"statuses": dict(statuses), "rejected": rejected, "total": total, "turns": turns_checked,
                       "changed": dict(changed), "examples": examples}, fh, ensure_ascii=False, indent=1)
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
