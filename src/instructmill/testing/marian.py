"""Build small MarianMT models offline (for tests and benchmarks; no model hub).

A real OPUS-MT folder (e.g. ``Helsinki-NLP/opus-mt-en-de``) holds ``config.json``, the weights,
``source.spm``/``target.spm`` (sentencepiece models), ``vocab.json`` (piece -> id, ``</s>`` = 0,
``<unk>`` = 1, ``<pad>`` last), ``tokenizer_config.json`` and ``generation_config.json``.
:func:`build_marian` writes the same files, with a sentencepiece unigram model trained on the fly
on a small corpus and seeded weights, so the folder loads with ``AutoTokenizer`` /
``MarianMTModel.from_pretrained`` and converts with CTranslate2 exactly like a hub model.

Plain random weights make greedy output ignore the input and repeat one token until the length
limit, so by default the weights are arranged into a seeded substitution cipher (see
:func:`build_marian`, ``weights="cipher"``): outputs have one token per source token and end with
``</s>``, and ``inverse=True`` builds the model that deciphers them (a back-translation pair).

The recipe is the one measured in ``shared/notes/engines.md`` ("Building small MarianMT models for
tests"). torch, transformers and sentencepiece are imported inside the functions.
"""
from __future__ import annotations

import io
import json
import random
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["OPUS_MT_EN_DE_SHAPE", "TINY_SHAPE", "build_marian", "default_corpus"]

#: The shape of Helsinki-NLP/opus-mt-en-de (keyword arguments of :func:`build_marian`).
OPUS_MT_EN_DE_SHAPE: dict[str, int] = {
    "d_model": 512,
    "encoder_layers": 6,
    "decoder_layers": 6,
    "heads": 8,
    "ffn_dim": 2048,
    "vocab_size": 58101,
    "max_position_embeddings": 512,
}

#: The default tiny shape (~0.27M parameters; builds in well under 2 s).
TINY_SHAPE: dict[str, int] = {
    "d_model": 64,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "heads": 4,
    "ffn_dim": 128,
    "max_position_embeddings": 512,
}

_SUBJECTS = ["the cat", "a dog", "my friend", "the teacher", "our neighbour", "the old man",
             "a young girl", "the children", "every student", "the doctor", "her brother",
             "the farmer", "a tourist", "the small bird", "his mother", "the engineer"]
_VERBS = ["sees", "likes", "reads", "writes", "finds", "buys", "opens", "carries", "paints",
          "cleans", "sells", "watches", "remembers", "forgets", "brings", "describes"]
_OBJECTS = ["a book", "the letter", "an apple", "the door", "a small house", "the red car",
            "some water", "the newspaper", "a long story", "the blue window", "three chairs",
            "a warm coat", "the garden", "an old map", "the kitchen table", "a new phone"]
_TAILS = ["today", "quickly", "in the morning", "at home", "every day", "with care", "again",
          "slowly", "before dinner", "after work", "near the river", "in the city",
          "on Monday", "for two hours", "without a word", "at night"]
_QUESTIONS = ["Where is", "Why does", "When will", "How can", "Who wants", "What makes"]


def default_corpus(n: int = 400, seed: int = 0) -> list[str]:
    """Return ``n`` deterministic, simple English sentences (statements and questions).

    The same ``(n, seed)`` always gives the same list. Used to train the test tokenizer.
    """
    rng = random.Random(seed)
    out: list[str] = []
    for i in range(n):
        if i % 5 == 4:
            out.append(f"{rng.choice(_QUESTIONS)} {rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} "
                       f"{rng.choice(_OBJECTS)}?")
        else:
            out.append(f"{rng.choice(_SUBJECTS).capitalize()} {rng.choice(_VERBS)} "
                       f"{rng.choice(_OBJECTS)} {rng.choice(_TAILS)}.")
    return out


#: Added to every tokenizer corpus so that all printable ASCII characters have a piece (typical
#: English test inputs then never contain ``<unk>``).
_ASCII_LINES = [
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz 0123456789",
    "! \" # $ % & ' ( ) * + , - . / : ; < = > ? @ [ \\ ] ^ _ ` { | } ~",
]


def _train_spm(corpus: Iterable[str], vocab_size: int) -> bytes:
    """Train a sentencepiece unigram model on ``corpus``; return the serialized model bytes."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(corpus) + _ASCII_LINES),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="unigram",
        hard_vocab_limit=False,  # a small corpus may not support vocab_size pieces
        normalization_rule_name="identity",  # keeps the model ~2 KB (no NFKC table)
        character_coverage=1.0,
        unk_id=0,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    return buf.getvalue()


def build_marian(
    out_dir: str | Path,
    *,
    d_model: int = 64,
    encoder_layers: int = 2,
    decoder_layers: int = 2,
    heads: int = 4,
    ffn_dim: int = 128,
    max_position_embeddings: int = 512,
    vocab_size: int | None = None,
    corpus: Sequence[str] | None = None,
    seed: int = 0,
    weights: str = "cipher",
    inverse: bool = False,
) -> Path:
    """Build a MarianMT HF folder in ``out_dir`` and return its path.

    Args:
        out_dir: folder to write (created; files with the same names are overwritten).
        d_model, encoder_layers, decoder_layers, heads, ffn_dim, max_position_embeddings: the
            model shape (``MarianConfig`` fields; ``heads`` sets both attention-head counts).
            ``OPUS_MT_EN_DE_SHAPE`` holds the shape of opus-mt-en-de.
        vocab_size: pad ``vocab.json`` with dummy pieces (``<dummy_N>``, never produced by the
            tokenizer) up to this many entries, ``<pad>`` still last. ``None``: pieces only.
        corpus: sentences to train the sentencepiece model on; default :func:`default_corpus`.
        seed: seeds ``torch.manual_seed`` (all random weights), the embedding table and the
            cipher permutation: same arguments -> byte-identical weights.
        weights: ``"cipher"`` (default) or ``"random"``.

            * ``"random"``: transformers' own random initialisation (std 0.02), embeddings tied.
              Greedy output of such a model ignores the input and usually repeats one token
              until ``max_length``: fine for throughput benchmarks that fix output lengths.
            * ``"cipher"``: random embeddings, then the attention and output weights are set so
              the model is a *substitution cipher*: decoder step ``t`` attends to source
              position ``t`` (through the sinusoidal position code) and emits ``pi(token)``,
              where ``pi`` is a seeded permutation of the pieces that maps word-initial
              (``▁``) pieces to word-initial pieces and keeps ``</s>``, ``<unk>``, ``<pad>``, ``▁``
              and dummy pieces fixed. So greedy output has exactly one token per source token and
              then ``</s>``: multi-token, input-dependent and terminating, like a real
              translation model. Logits are scaled so the chosen token's logit is about 8 and
              the others are spread around 0 (a real distribution for sampling and int8 tests).
              The output layer (``lm_head``) is therefore untied from the embeddings.
        inverse: with ``weights="cipher"``, build the decipher model (``pi`` inverted) of the
            same ``seed`` and corpus: the xx->en half of a back-translation pair. Since the
            text is re-tokenized in between, a round trip restores most, not always all, pieces.

    Returns:
        ``Path(out_dir)``, holding config.json, model.safetensors, generation_config.json
        (num_beams 4, max_length = max_position_embeddings, bad_words_ids [[pad]],
        decoder_start_token_id pad, forced_eos_token_id 0), source.spm, target.spm,
        vocab.json and tokenizer_config.json.

    Raises:
        ValueError: ``weights`` unknown; ``vocab_size`` smaller than the trained vocabulary + 3
            special tokens; ``d_model`` not divisible by ``heads`` or a head narrower than 4.
    """
    import sentencepiece as spm
    import torch
    from transformers import GenerationConfig, MarianConfig, MarianMTModel, MarianTokenizer

    if weights not in ("cipher", "random"):
        raise ValueError(f"weights must be 'cipher' or 'random', not {weights!r}")
    if d_model % heads or d_model // heads < 4 or d_model % 2:
        raise ValueError(f"d_model={d_model} must be even and split into heads={heads} of >= 4")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sentences = list(corpus) if corpus is not None else default_corpus()

    # 1. Tokenizer: one sentencepiece model for both sides (shared vocabulary, as in opus-mt).
    spm_bytes = _train_spm(sentences, vocab_size=min(8000, max(100, (vocab_size or 400) - 3)))
    sp = spm.SentencePieceProcessor(model_proto=spm_bytes)
    vocab: dict[str, int] = {"</s>": 0, "<unk>": 1}
    for i in range(sp.get_piece_size()):
        vocab.setdefault(sp.id_to_piece(i), len(vocab))
    n_pieces = len(vocab)
    if vocab_size is not None:
        if vocab_size < n_pieces + 1:
            raise ValueError(f"vocab_size={vocab_size} is smaller than the {n_pieces + 1} "
                             "entries the tokenizer needs")
        while len(vocab) < vocab_size - 1:
            vocab[f"<dummy_{len(vocab) - n_pieces}>"] = len(vocab)
    vocab["<pad>"] = len(vocab)
    pad_id = vocab["<pad>"]

    (out / "source.spm").write_bytes(spm_bytes)
    (out / "target.spm").write_bytes(spm_bytes)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Recommended: pip install sacremoses")
        tok = MarianTokenizer(str(out / "source.spm"), str(out / "target.spm"),
                              str(out / "vocab.json"), model_max_length=max_position_embeddings)
    tok.save_pretrained(str(out))

    # 2. Model: the config fields real opus-mt models carry.
    cfg = MarianConfig(
        vocab_size=len(vocab),
        decoder_vocab_size=len(vocab),
        d_model=d_model,
        encoder_layers=encoder_layers,
        decoder_layers=decoder_layers,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_ffn_dim=ffn_dim,
        decoder_ffn_dim=ffn_dim,
        max_position_embeddings=max_position_embeddings,
        activation_function="swish",
        scale_embedding=True,
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=(weights == "random"),
        pad_token_id=pad_id,
        decoder_start_token_id=pad_id,
        eos_token_id=0,
        forced_eos_token_id=0,
    )
    torch.manual_seed(seed)
    model = MarianMTModel(cfg).eval()
    if weights == "cipher":
        # "▁" alone (a bare word boundary) stays fixed so outputs keep word-like spacing.
        word_initial = [i for p, i in vocab.items() if p.startswith("\u2581") and p != "\u2581"]
        inner = [i for p, i in vocab.items()
                 if i >= 2 and i < n_pieces and not p.startswith("\u2581")]
        perm = list(range(len(vocab)))
        rng = random.Random(seed)
        for group in (word_initial, inner):
            shuffled = group[:]
            rng.shuffle(shuffled)
            for a, b in zip(group, shuffled):
                perm[a] = b
        if inverse:
            inv = [0] * len(perm)
            for a, b in enumerate(perm):
                inv[b] = a
            perm = inv
        _make_cipher(model, perm, pad_id, seed)
    model.generation_config = GenerationConfig(
        num_beams=4,
        max_length=max_position_embeddings,
        bad_words_ids=[[pad_id]],
        bos_token_id=0,
        decoder_start_token_id=pad_id,
        eos_token_id=0,
        forced_eos_token_id=0,
        pad_token_id=pad_id,
        renormalize_logits=True,
    )
    model.save_pretrained(str(out), safe_serialization=True)
    return out


def _make_cipher(model, perm: list[int], pad_id: int, seed: int) -> None:
    """Set ``model``'s weights so greedy decoding emits ``perm[source_token]`` at each position.

    Construction (post-norm Marian, sinusoidal positions with sin in the first half of the
    dimensions and cos in the second):

    * Embeddings ``E``: random rows, zero-mean, equal norm, living only in the "content"
      dimensions; zero on 2n "position" dimensions (sin/cos of the n highest frequencies) and on
      one "reference" dimension (sin of the lowest frequency, ~0 for all positions). Row
      ``<pad>`` (the decoder start) stays zero.
    * Every encoder block and decoder self-attention/FFN adds 0 (output projections zeroed),
      so hidden states are LayerNorm(sqrt(d) * E[token] + pos).
    * Decoder layer 0 cross-attention: query = key = c * (position dims - reference dim). The
      reference dimension cancels LayerNorm's mean shift, so scores are
      ~ c^2 * sum_k cos(w_k (t - j)): maximal at j = t. Values copy the content dims, the
      output projection amplifies them (x20) so they dominate the residual. Later decoder
      cross-attentions add 0.
    * ``lm_head`` row ``perm[s]`` = ``E[s]`` * beta: the logit of ``perm[s]`` is ~8 when the
      hidden state holds ``E[s]``; other logits are ~8 * cos(E[s], E[u]) ~ N(0, 8/sqrt(d)).

    ``</s>`` is a fixed point of ``perm``, so copying the source's final ``</s>`` ends the output.
    """
    import math

    import torch

    cfg = model.config
    d = cfg.d_model
    heads = cfg.decoder_attention_heads
    hd = d // heads
    half = d // 2
    vocab = cfg.vocab_size
    n_freq = min(8, hd // 2)
    freqs = [round(i * half / 32) for i in range(n_freq)]
    pos_dims = freqs + [half + k for k in freqs]
    ref = half - 1
    content = [i for i in range(d) if i not in pos_dims and i != ref]

    gen = torch.Generator().manual_seed(seed)
    rows = torch.randn(vocab, len(content), generator=gen)
    rows -= rows.mean(dim=1, keepdim=True)
    # Row norm 2: sqrt(d) * E then has RMS 2 over the d dims (sinusoidal positions: ~0.7).
    rows = rows / rows.norm(dim=1, keepdim=True) * 2.0
    emb = torch.zeros(vocab, d)
    emb[:, content] = rows
    emb[pad_id] = 0.0

    beta = 8.0 / (2.0 * math.sqrt(d))  # hidden states (LayerNorm) have norm ~sqrt(d)
    head_w = torch.zeros(vocab, d)
    head_w[torch.tensor(perm)] = emb * beta  # row perm[s] = E[s] * beta

    s_hidden = math.sqrt(2.0 ** 2 + 0.5)  # std of sqrt(d)*E + pos before LayerNorm
    c = math.sqrt(20.0 * s_hidden ** 2 * math.sqrt(hd) / 1.07)
    qk = torch.zeros(d, d)
    for h in range(heads):
        for r, k in enumerate(pos_dims):
            qk[h * hd + r, k] = c
            qk[h * hd + r, ref] = -c
    v_proj = torch.zeros(d, d)
    for k in content:
        v_proj[k, k] = 1.0

    def zero(lin) -> None:
        lin.weight.zero_()
        if lin.bias is not None:
            lin.bias.zero_()

    with torch.no_grad():
        for emb_mod in (model.model.shared, model.model.encoder.embed_tokens,
                        model.model.decoder.embed_tokens):
            emb_mod.weight.copy_(emb)
        model.lm_head.weight.copy_(head_w)
        model.final_logits_bias.zero_()
        for layer in model.model.encoder.layers:
            zero(layer.self_attn.out_proj)
            zero(layer.fc2)
        for i, layer in enumerate(model.model.decoder.layers):
            zero(layer.self_attn.out_proj)
            zero(layer.fc2)
            att = layer.encoder_attn
            if i > 0:
                zero(att.out_proj)
                continue
            att.q_proj.weight.copy_(qk)
            att.k_proj.weight.copy_(qk)
            att.v_proj.weight.copy_(v_proj)
            att.out_proj.weight.copy_(torch.eye(d) * 20.0)
            for lin in (att.q_proj, att.k_proj, att.v_proj, att.out_proj):
                lin.bias.zero_()
