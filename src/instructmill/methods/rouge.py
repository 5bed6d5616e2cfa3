"""ROUGE-L near-duplicate filtering: exact, Unicode-aware and fast.

Self-Instruct (Wang et al., 2022, "Self-Instruct: Aligning Language Models with
Self-Generated Instructions", Sec. 2.3) keeps a generated instruction only when its ROUGE-L
similarity with every instruction already in the pool is below 0.7. This module computes the
same thing, for any script, and for tens of thousands of candidates in seconds.

**Score.** ROUGE-L F-measure with beta 1 (Lin, 2004; ``rouge_score``'s ``fmeasure``)::

    rouge_l(a, b) = 2 * LCS(a, b) / (len(a) + len(b))      (0.0 when either has no token)

over the token sequences of :func:`tokenize`. For ASCII text the tokens are exactly
``rouge_score``'s default tokens (``use_stemmer=False``), so the scores are equal.

**Tokens** (:func:`tokenize`): the text is NFKC-normalised and case-folded, then split into

* words: runs of letters, digits and combining marks (``café``, ``naïve``, ``straße`` ->
  ``strasse``, ``नमस्ते``) in scripts written with spaces;
* single characters for scripts written without spaces between words: Han (Chinese, kanji),
  hiragana, katakana, hangul, Thai, Lao, Khmer, Myanmar, Tibetan (each character with its
  combining marks is one token: ``请用三句话`` -> 5 tokens);
* emoji: each emoji grapheme (with its skin-tone / ZWJ sequence) and each flag is a token;
* everything else (punctuation, spaces, other symbols) separates tokens and is dropped.

**Exact and fast** (:class:`RougeFilter`). Each candidate is compared only with the pool
entries that *could* reach the threshold, found with exact upper bounds on the LCS (never
an approximation), and only those get an LCS computation:

* overlap: ``LCS <= overlap`` (size of the multiset intersection of the two token lists).
  A pair reaching the threshold needs ``overlap >= alpha_min(len)`` for the least overlap any
  partner length allows, so both texts share a token occurrence within their first
  ``len - alpha_min + 1`` occurrences in one global order, rarest token first (prefix
  filtering: Chaudhuri et al., 2006; Bayardo et al., 2007, "Scaling up all pairs similarity
  search"). Pool entries are indexed under their prefix only; a candidate probes with its own.
* position and length: when the first shared occurrence sits at positions ``i`` and ``j``,
  ``overlap <= 1 + min(m - i - 1, n - j - 1) <= min(m, n)`` (PPJoin's positional filter,
  Xiao et al., 2008), checked for a whole posting list at once with numpy.
* the survivors get their exact LCS: ``rapidfuzz.distance.LCSseq`` (bit-parallel) on the token
  ids written one code point per token.

The global order is re-derived from the pool's token frequencies each time the pool doubles
(re-indexing everything: amortised constant cost per entry). 20,000 candidates filter in
seconds on one core (``benchmarks/bench_rouge_filter.py``).

The threshold test ``2 * LCS / (m + n) >= threshold`` is done in exact integer arithmetic
(``threshold`` read as the decimal it prints as: ``0.7`` is 7/10, so a pair at exactly 0.7
matches; floating-point expressions such as ``rouge_score``'s ``2pr/(p+r)`` can land a hair
below 0.7 on such ties). Every bound is an upper bound on the LCS, so the filter never skips a
pair that reaches the threshold: the kept set equals a brute-force pairwise loop's.
"""
from __future__ import annotations

import unicodedata
from array import array
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable, Sequence

import numpy as np
import regex
from rapidfuzz.distance import LCSseq

from ..errors import OptionError

__all__ = ["RougeFilter", "RougeMatch", "lcs_length", "rouge_l", "rouge_l_tokens", "tokenize"]

_UNSEEN = "\U0010ffff"       # stands for a token no pool entry has (never matches)
_MAX_STR_VOCAB = 0x10FFFF - 0x800 - 1  # token ids that fit in code points (surrogates skipped)
_TOKEN_MASK = (1 << 40) - 1

_NO_SPACE_SCRIPTS = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}\p{Tibetan}"
_TOKEN_RE = regex.compile(
    r"(?=\p{Extended_Pictographic})\X"            # emoji grapheme (ZWJ sequences, skin tones)
    r"|\p{Regional_Indicator}{2}"                 # flags
    rf"|[{_NO_SPACE_SCRIPTS}]\p{{M}}*"            # one character (+ marks) of an unspaced script
    rf"|(?:(?![{_NO_SPACE_SCRIPTS}])[\p{{L}}\p{{N}}\p{{M}}])+",  # a word
    regex.V1,
)


def tokenize(text: str) -> list[str]:
    """ROUGE tokens of ``text`` (see the module docstring for the rules).

    Examples: ``"Don't panic!"`` -> ``["don", "t", "panic"]`` (as ``rouge_score``);
    ``"请用三句话介绍长城。"`` -> 9 one-character tokens; ``"Café ☕ 2x"`` -> ``["café", "☕", "2x"]``.
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    return _TOKEN_RE.findall(text)


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence of two sequences of hashables (exact)."""
    return int(LCSseq.similarity(a, b))


def _fmeasure(lcs: int, m: int, n: int) -> float:
    # The reported score; the keep / reject decision is exact (RougeFilter._reaches).
    return 2 * lcs / (m + n) if m and n else 0.0


def rouge_l_tokens(a: Sequence, b: Sequence) -> float:
    """ROUGE-L F-measure (beta 1) of two token sequences."""
    if not a or not b:
        return 0.0
    return _fmeasure(lcs_length(a, b), len(a), len(b))


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F-measure (beta 1) of two texts, tokenized with :func:`tokenize`; in [0, 1]."""
    return rouge_l_tokens(tokenize(a), tokenize(b))


@dataclass(frozen=True)
class RougeMatch:
    """The pool entry a candidate matched.

    Attributes:
        score: the ROUGE-L F-measure (>= the filter's threshold).
        index: position of the entry in the pool (insertion order).
        text: the entry's text.
    """

    score: float
    index: int
    text: str


class RougeFilter:
    """A growing pool of texts; finds pool entries with ROUGE-L >= ``threshold`` to a candidate.

    Greedy sequential use, as in Self-Instruct: ``match = f.check(text)``; keep the text when
    ``match is None`` and ``f.add(text)`` it. :meth:`filter` does that for a list.

    Args:
        threshold: a candidate whose ROUGE-L with some pool entry is ``>= threshold`` matches.
        texts: initial pool (e.g. the seed instructions).

    Raises:
        OptionError: ``threshold`` not in (0, 1].

    Complexity: with the bounds of the module docstring, a candidate costs a few dictionary
    lookups plus one bit-parallel LCS per pool entry that shares enough rare tokens with it.
    """

    def __init__(self, threshold: float = 0.7, texts: Iterable[str] = ()):
        if not 0 < threshold <= 1:
            raise OptionError("rouge_threshold", threshold, "must be in (0, 1]")
        self.threshold = float(threshold)
        exact = Fraction(repr(self.threshold))  # 0.7 -> 7/10: the decimal the user wrote
        self._num, self._den = exact.numerator, exact.denominator
        self.texts: list[str] = []
        self._vocab: dict[str, int] = {}
        self._ids_of: list[list[int]] = []     # token ids of each entry
        self._seqs: list[str | tuple[int, ...]] = []  # the same, one character per token (for LCS)
        self._lengths = array("q")
        # Prefix index: element = the k-th occurrence of a token; each pool entry is indexed
        # under the first len - alpha_min(len) + 1 of its elements in the global order, with
        # the element's position there: element -> (entry indexes, positions).
        self._postings: dict[int, tuple[array, array]] = {}
        self._df: dict[int, int] = {}          # token -> pool entries holding it (live)
        self._order_df: dict[int, int] = {}    # the df snapshot that defines the global order
        self._rebuild_at = 64
        self._as_str = True
        self._alpha: dict[int, int] = {}
        self.stats = {"checked": 0, "probed": 0, "lcs": 0, "rebuilds": 0}
        for text in texts:
            self.add(text)

    def __len__(self) -> int:
        return len(self.texts)

    # ------------------------------------------------------------------ tokens
    def _ids(self, tokens: list[str], grow: bool) -> list[int]:
        vocab = self._vocab
        if grow:
            return [vocab.setdefault(t, len(vocab)) for t in tokens]
        return [vocab.get(t, -1) for t in tokens]  # -1: a token no pool entry has

    def _encode(self, ids: list[int]) -> str | tuple[int, ...]:
        """Token ids as a string (one code point per token: rapidfuzz's fastest input), or as a
        tuple once the vocabulary outgrows the code points."""
        if self._as_str:
            return "".join(_UNSEEN if i < 0 else chr(i if i < 0xD800 else i + 0x800) for i in ids)
        return tuple(ids)

    def _prefix(self, ids: list[int]) -> list[int]:
        """The elements of ``ids`` that must be shared with any entry reaching the threshold.

        Elements (occurrence k of token x, encoded ``k << 40 | x``) are ordered by a global
        order: rarest token first by the frozen document frequencies, then by id (unseen tokens
        first). Two multisets with overlap >= alpha share an element in both of their prefixes
        of lengths ``len - alpha + 1`` (Bayardo et al. 2007); ``alpha_min`` is the least
        overlap any partner length allows, so the prefixes suffice for every partner.
        """
        m = len(ids)
        alpha = self._min_overlap(m)
        if alpha > m:
            return []
        df = self._order_df
        elements = sorted(((df.get(tok, 0), tok, k) for tok, c in Counter(ids).items() for k in range(c)))
        return [k << 40 | (tok & _TOKEN_MASK) for _, tok, k in elements[:m - alpha + 1]]

    # -------------------------------------------------------------------- pool
    def add(self, text: str) -> int:
        """Add ``text`` to the pool unconditionally; returns its index."""
        return self._add(text, tokenize(text))

    def _add(self, text: str, tokens: list[str]) -> int:
        index = len(self.texts)
        ids = self._ids(tokens, grow=True)
        if self._as_str and len(self._vocab) >= _MAX_STR_VOCAB:
            self._as_str = False
            self._seqs = [tuple(x) for x in self._ids_of]
        self.texts.append(text)
        self._ids_of.append(ids)
        self._seqs.append(self._encode(ids))
        self._lengths.append(len(ids))
        for tok in set(ids):
            self._df[tok] = self._df.get(tok, 0) + 1
        if len(self.texts) >= self._rebuild_at:
            self._rebuild()
        else:
            self._index(index, ids)
        return index

    def _index(self, index: int, ids: list[int]) -> None:
        postings = self._postings
        for pos, element in enumerate(self._prefix(ids)):
            entry = postings.get(element)
            if entry is None:
                entry = postings[element] = (array("q"), array("q"))
            entry[0].append(index)
            entry[1].append(pos)

    def _rebuild(self) -> None:
        """Re-derive the global order from the current frequencies and re-index every entry
        (when the pool has doubled since the last time: amortised O(1) per entry)."""
        self.stats["rebuilds"] += 1
        self._order_df = dict(self._df)
        self._postings = {}
        for index, ids in enumerate(self._ids_of):
            self._index(index, ids)
        self._rebuild_at = 2 * len(self.texts)

    def _reaches(self, lcs: int, m: int, n: int) -> bool:
        """``2 * lcs / (m + n) >= threshold``, exactly (integer arithmetic)."""
        return 2 * lcs * self._den >= self._num * (m + n)

    def _min_overlap(self, m: int) -> int:
        """Least overlap with which some partner length n lets a text of length m reach the
        threshold (``o <= min(m, n)``); ``m + 1`` if none does."""
        alpha = self._alpha.get(m)
        if alpha is None:
            alpha = m + 1
            # For n > m the required overlap only grows with n, so n in [1, m] suffices.
            for n in range(1, m + 1):
                need = -(-self._num * (m + n) // (2 * self._den))  # ceil
                if need <= n:
                    alpha = min(alpha, need)
            self._alpha[m] = alpha
        return alpha

    # ------------------------------------------------------------------- query
    def matches(self, text: str) -> list[RougeMatch]:
        """Every pool entry with ROUGE-L ``>= threshold`` to ``text``, best first (exact scores)."""
        return self._matches(self._ids(tokenize(text), grow=False))

    def check(self, text: str) -> RougeMatch | None:
        """The best-scoring pool entry with ROUGE-L ``>= threshold`` to ``text``, or ``None``."""
        found = self._matches(self._ids(tokenize(text), grow=False))
        return found[0] if found else None

    def _matches(self, ids: list[int]) -> list[RougeMatch]:
        self.stats["checked"] += 1
        m = len(ids)
        if m == 0 or not self.texts:
            return []  # a text without tokens scores 0 with everything
        num, den2 = self._num, 2 * self._den
        lengths = np.frombuffer(self._lengths, dtype=np.int64)
        parts = []
        for i, element in enumerate(self._prefix(ids)):
            entry = self._postings.get(element)
            if entry is None:
                continue
            index = np.frombuffer(entry[0], dtype=np.int64)
            n = lengths[index]
            # Positional bound (Xiao et al. 2008, PPJoin): were this the first shared element
            # in the global order (at i here, at j there), overlap <= 1 + min(rest, rest). A pair
            # that reaches the threshold passes at its first shared element; passing at a later
            # one implies passing at the first, so the union over elements loses nothing. The
            # bound includes the length bound (overlap <= min(m, n)).
            bound = 1 + np.minimum(m - i - 1, n - np.frombuffer(entry[1], dtype=np.int64) - 1)
            parts.append(index[bound * den2 >= num * (m + n)])
            self.stats["probed"] += len(index)
        del lengths
        if not parts:
            return []
        found: list[RougeMatch] = []
        seq, seqs, texts = self._encode(ids), self._seqs, self.texts
        candidates = np.unique(np.concatenate(parts)).tolist()
        self.stats["lcs"] += len(candidates)
        for index in candidates:
            other = seqs[index]
            n = len(other)
            lcs = int(LCSseq.similarity(seq, other))
            if 2 * lcs * self._den >= num * (m + n):
                found.append(RougeMatch(_fmeasure(lcs, m, n), index, texts[index]))
        found.sort(key=lambda r: (-r.score, r.index))
        return found

    def filter(self, texts: Iterable[str]) -> list[RougeMatch | None]:
        """Greedy sequential filtering: for each text, its best match in the pool (``None`` =
        kept, and then added to the pool, so later texts are compared with it too)."""
        results: list[RougeMatch | None] = []
        for text in texts:
            tokens = tokenize(text)
            found = self._matches(self._ids(tokens, grow=False))
            match = found[0] if found else None
            if match is None:
                self._add(text, tokens)
            results.append(match)
        return results
