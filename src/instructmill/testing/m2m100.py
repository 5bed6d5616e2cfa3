"""Build small M2M100 / NLLB models (``M2M100ForConditionalGeneration``) with random weights.

A real ``facebook/m2m100_418M`` folder holds ``config.json``, the weights, ``vocab.json``
(``<s>`` = 0, ``<pad>`` = 1, ``</s>`` = 2, ``<unk>`` = 3, then the pieces),
``sentencepiece.bpe.model``, ``tokenizer_config.json`` and ``generation_config.json``. The
tokenizer appends the 100 language tokens (``__en__``, ``__de__``, ...) and 8 "madeup" words after
the pieces, so the model's vocabulary is ``len(vocab.json) + 108``. :func:`build_m2m100` writes the
same files with a sentencepiece model trained on the fly (see :mod:`instructmill.testing.marian`);
with ``tokenizer="nllb"`` it writes an NLLB-style ``tokenizer.json`` instead.

Output of random weights is random (often one token repeated until the length limit): enough to
check a conversion token for token, not to test back-translation (use ``build_marian``).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from .marian import _train_spm, default_corpus

__all__ = ["build_m2m100"]


def build_m2m100(
    out_dir: str | Path,
    *,
    d_model: int = 64,
    encoder_layers: int = 2,
    decoder_layers: int = 2,
    heads: int = 4,
    ffn_dim: int = 128,
    max_position_embeddings: int = 256,
    corpus: Sequence[str] | None = None,
    seed: int = 0,
    tokenizer: str = "m2m100",
) -> Path:
    """Build an ``M2M100ForConditionalGeneration`` HF folder in ``out_dir``; return its path.

    Args:
        out_dir: folder to write (created; files with the same names are overwritten).
        d_model, encoder_layers, decoder_layers, heads, ffn_dim, max_position_embeddings: the
            shape (``M2M100Config`` fields).
        corpus: sentences for the tokenizer; default
            :func:`instructmill.testing.marian.default_corpus`.
        seed: ``torch.manual_seed`` for the weights.
        tokenizer: ``"m2m100"`` (``M2M100Tokenizer``: vocab.json + sentencepiece.bpe.model,
            language tokens ``__en__``; as facebook/m2m100_418M) or ``"nllb"``
            (``NllbTokenizer``: a byte-pair tokenizer.json trained with ``tokenizers``,
            language codes ``eng_Latn`` as tokens; as facebook/nllb-200-distilled-600M).

    Returns:
        ``Path(out_dir)`` with config.json, model.safetensors, generation_config.json and the
        tokenizer files.

    Raises:
        ValueError: unknown ``tokenizer``.
    """
    import torch
    from transformers import GenerationConfig, M2M100Config, M2M100ForConditionalGeneration

    if tokenizer not in ("m2m100", "nllb"):
        raise ValueError(f"tokenizer must be 'm2m100' or 'nllb', not {tokenizer!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sentences = list(corpus) if corpus is not None else default_corpus()
    if tokenizer == "m2m100":
        vocab_size = _m2m100_tokenizer(out, sentences, max_position_embeddings)
    else:
        vocab_size = _nllb_tokenizer(out, sentences, max_position_embeddings)

    cfg = M2M100Config(
        vocab_size=vocab_size,
        d_model=d_model,
        encoder_layers=encoder_layers,
        decoder_layers=decoder_layers,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_ffn_dim=ffn_dim,
        decoder_ffn_dim=ffn_dim,
        max_position_embeddings=max_position_embeddings,
        scale_embedding=True,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
    )
    torch.manual_seed(seed)
    model = M2M100ForConditionalGeneration(cfg).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2,
        num_beams=5, max_length=200, early_stopping=True,
    )
    model.save_pretrained(str(out), safe_serialization=True)
    return out


def _m2m100_tokenizer(out: Path, sentences: list[str], max_length: int) -> int:
    """Write an M2M100Tokenizer; return the model vocabulary size it needs."""
    import sentencepiece as spm
    from transformers import M2M100Tokenizer

    spm_bytes = _train_spm(sentences, 300)
    sp = spm.SentencePieceProcessor(model_proto=spm_bytes)
    vocab: dict[str, int] = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for i in range(sp.get_piece_size()):
        vocab.setdefault(sp.id_to_piece(i), len(vocab))
    (out / "sentencepiece.bpe.model").write_bytes(spm_bytes)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    tok = M2M100Tokenizer(str(out / "vocab.json"), str(out / "sentencepiece.bpe.model"),
                          src_lang="en", tgt_lang="fr", model_max_length=max_length)
    tok.save_pretrained(str(out))
    # pieces + 100 language tokens + 8 "madeup" words, as in facebook/m2m100_418M
    return len(vocab) + len(tok.lang_token_to_id) + tok.num_madeup_words


def _nllb_tokenizer(out: Path, sentences: list[str], max_length: int) -> int:
    """Write an NllbTokenizer (tokenizer.json); return the model vocabulary size it needs."""
    from tokenizers import SentencePieceBPETokenizer
    from transformers import NllbTokenizer

    bpe = SentencePieceBPETokenizer()
    bpe.train_from_iterator(sentences, vocab_size=300, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok = NllbTokenizer(vocab=model["vocab"], merges=merges, src_lang="eng_Latn",
                        tgt_lang="fra_Latn", model_max_length=max_length)
    tok.save_pretrained(str(out))
    return len(tok)  # pieces + <mask> + 202 language codes
