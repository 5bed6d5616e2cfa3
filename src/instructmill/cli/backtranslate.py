"""``instructmill backtranslate``: paraphrase records by round-trip translation."""
from __future__ import annotations

import click

from ..engine.ctranslate2_backend import CTranslate2Options
from ..engine.scheduler import BatchingOptions
from ..methods.quality import QualityOptions
from .common import io_options, print_summary, run_records, user_errors
from .options import build_options, dataclass_options


@click.command()
@io_options
@click.option("--model", default=None,
              help="'embedded' (default: bundled en<->pt models), a converted CTranslate2 folder, or an HF "
                   "folder / hub id of a multilingual model (NLLB, M2M100) used both ways.")
@click.option("--forward-model", default=None, help="source->pivot model (e.g. opus-mt-en-de).")
@click.option("--backward-model", default=None, help="pivot->source model (e.g. opus-mt-de-en).")
@click.option("--source-lang", default="en", show_default=True, help="Language of the records.")
@click.option("--pivot", "pivots", multiple=True, help="Pivot language (repeat for several). [default: pt]")
@click.option("--field", "fields", multiple=True, type=click.Choice(["instruction", "input", "output"]),
              help="Field to paraphrase (repeat for several) in single-turn records, and in conversations "
                   "with --turns last. [default: instruction]")
@click.option("--turns", type=click.Choice(["all", "last", "user", "assistant"]), default="all", show_default=True,
              help="Turns of a conversation (ShareGPT / messages / Alpaca with history) to paraphrase: every "
                   "turn, only the last pair's --field(s), or every user / assistant turn. A turn that fails "
                   "a check keeps its original text.")
@click.option("--language-check/--no-language-check", default=True, show_default=True,
              help="Detect each segment's language; segments in another language than --source-lang pass "
                   "through untranslated (fastText lid.176, offline).")
@click.option("--meaning-check/--no-meaning-check", default=True, show_default=True,
              help="Compare each paraphrased sentence with its source (MiniLM embeddings): below "
                   "--min-similarity the record is meaning_drift, above --max-similarity too_similar.")
@click.option("--min-similarity", type=float, default=None,
              help="Lowest cosine similarity of a paraphrased sentence to its source. [default: calibrated, "
                   "see benchmarks/README.md]")
@click.option("--max-similarity", type=float, default=None,
              help="Highest cosine similarity of a changed text (above: barely reworded). [default: 0.999]")
@click.option("--chunk-size", type=int, default=1024, show_default=True,
              help="Records translated together (memory bound; bigger = fuller batches).")
@click.option("--allow-unverified", is_flag=True, help="Use a converted model whose verification failed.")
@dataclass_options(BatchingOptions)
@dataclass_options(CTranslate2Options)
@dataclass_options(QualityOptions, exclude=("short_source_chars", "short_min_length_ratio",
                                            "short_max_length_ratio"))
@user_errors
def backtranslate(input_path, output, fmt, input_format, id_field, resume, overwrite, strict, limit,
                  model, forward_model, backward_model, source_lang, pivots, fields, turns, language_check,
                  meaning_check, min_similarity, max_similarity, chunk_size,
                  allow_unverified, **flags):
    """Paraphrase INPUT's records by translating to a pivot language and back.

    \b
    Examples:
      instructmill backtranslate seed_tasks.jsonl -o out/bt.jsonl
      instructmill backtranslate data.jsonl -o out/bt.jsonl --field instruction --field output \\
          --forward-model ct2/opus-mt-en-de --backward-model ct2/opus-mt-de-en --pivot de
    """
    from ..methods.backtranslation import BackTranslationOptions, BackTranslator

    batching = build_options(BatchingOptions, flags)
    ct2 = build_options(CTranslate2Options, flags)
    quality = build_options(QualityOptions, flags)
    options = build_options(BackTranslationOptions, {}, source_lang=source_lang,
                            pivots=tuple(pivots) or ("pt",), fields=tuple(fields) or ("instruction",),
                            turns=turns, language_check=language_check, meaning_check=meaning_check,
                            min_similarity=min_similarity, max_similarity=max_similarity, chunk_size=chunk_size, quality=quality)
    bt = BackTranslator(model=model, forward_model=forward_model, backward_model=backward_model,
                        options=options, batching=batching, ct2_options=ct2, allow_unverified=allow_unverified)
    summary = run_records(input_path=input_path, output=output, fmt=fmt, input_format=input_format,
                          id_field=id_field, resume=resume, overwrite=overwrite, strict=strict, limit=limit,
                          settings=bt.settings(), process=bt.process, output_ids=bt.output_ids)
    tokens = sum(b.stats.target_tokens for pair in bt.models.values() for b in pair)
    segments = sum(b.stats.segments for pair in bt.models.values() for b in pair)
    speed = tokens / bt.seconds if bt.seconds else 0.0
    print_summary(summary, [f"translated: {segments} segments (all hops), {tokens} target tokens "
                            f"in {bt.seconds:.1f} s ({speed:.0f} target tokens/s)"])
