"""Quality figures of a run: what was kept, what was discarded and why, and the measured signals.

Every command's summary and report, and every pipeline stage in ``<sink>.report.json``, carry the
same figures, computed from the output records alone (so a resumed run, a replayed checkpoint or a
Ray run gives the figures of what is in the files):

* ``kept`` / ``discarded`` (by status), with the first example of each discard reason (id, a short
  excerpt of the text, the status detail);
* ``similarity``: histogram of the meaning check's source/paraphrase cosine similarity
  (``extra.similarity``, back-translation) -- 20 bins over [0, 1];
* ``languages``: records by detected language (``extra.language``) and segments passed through
  because they were in another language (``extra.passed_through_languages``);
* ``span_failures``: protected-span failures by kind (``structure_changed`` kinds such as
  ``table`` or ``code_line``, ``placeholder_lost``, ``number_added``), counted per text, including
  turns of a conversation that kept their original text;
* ``judge_scores`` / ``humpback_scores``: score distributions (``extra.judge.score``,
  ``extra.score``);
* ``rouge_l_to_seeds``: the Self-Instruct paper's figure (Wang et al., 2023, Fig. 3): each kept
  instruction's highest ROUGE-L against the seed instructions, 10 bins over [0, 1].
"""
from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from .records import STATUS_OK, OutputRecord
from .status import STATUS_NUMBER_ADDED, STATUS_PLACEHOLDER_LOST, STATUS_STRUCTURE_CHANGED

__all__ = ["QualityFigures", "draw_quality", "figures_from_files", "plot_quality", "quality_panels"]

#: Bins of the similarity histogram (width 0.05) and of the ROUGE-L histogram (width 0.1).
SIMILARITY_BINS = 20
ROUGE_BINS = 10
#: Characters of text kept in a discard example.
EXAMPLE_CHARS = 240
#: Statuses whose detail names protected spans.
SPAN_STATUSES = (STATUS_STRUCTURE_CHANGED, STATUS_PLACEHOLDER_LOST, STATUS_NUMBER_ADDED)


def _bin(value: float, bins: int) -> int:
    return min(bins - 1, max(0, int(value * bins)))


def _excerpt(rec: OutputRecord) -> str:
    ex = rec.example
    original = rec.extra.get("original")
    text = ""
    if isinstance(original, dict):
        text = next((v for v in original.values() if isinstance(v, str) and v.strip()), "")
    text = text or ex.instruction or ex.output or next(iter(ex.leading_assistant), "")
    return text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS] + "..."


class QualityFigures:
    """Accumulates the figures of the module docstring over output records (thread-safe).

    ``observe(record)`` for each record written; ``as_dict()`` for the report; ``summary_lines()``
    for the console.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.kept = 0
        self.discarded: Counter[str] = Counter()
        self.examples: dict[str, dict[str, Any]] = {}
        self.similarity = [0] * SIMILARITY_BINS
        self.similarity_values = 0
        self.similarity_sum = 0.0
        self.languages: Counter[str] = Counter()
        self.passed_through: Counter[str] = Counter()
        self.span_failures: Counter[str] = Counter()
        self.judge_scores: Counter[str] = Counter()
        self.humpback_scores: Counter[str] = Counter()
        self.rouge = [0] * ROUGE_BINS
        self.turns: Counter[str] = Counter()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "QualityFigures":
        """Figures rebuilt from :meth:`as_dict` output (for printing and plotting)."""
        figures = cls()
        figures._data = data
        return figures

    def observe(self, rec: OutputRecord) -> None:
        """Add one output record (any status)."""
        extra = rec.extra or {}
        with self._lock:
            if rec.status == STATUS_OK:
                self.kept += 1
            else:
                self.discarded[rec.status] += 1
                if rec.status not in self.examples:
                    example = {"id": rec.id, "text": _excerpt(rec)}
                    detail = extra.get("detail") if "detail" in extra else extra.get("error")
                    if detail is not None:
                        example["detail"] = detail
                    self.examples[rec.status] = example
            sim = extra.get("similarity")
            if isinstance(sim, (int, float)) and not isinstance(sim, bool):
                self.similarity[_bin(float(sim), SIMILARITY_BINS)] += 1
                self.similarity_values += 1
                self.similarity_sum += float(sim)
            lang = extra.get("language")
            if isinstance(lang, str):
                self.languages[lang] += 1
            other = extra.get("passed_through_languages")
            if isinstance(other, dict):
                self.passed_through.update({str(k): int(v) for k, v in other.items() if isinstance(v, int)})
            self._spans(rec, extra)
            if rec.status == STATUS_OK and isinstance(extra.get("field_status"), dict) \
                    and "turns_paraphrased" in extra:
                self.turns.update(str(v) for v in extra["field_status"].values())
            judge = extra.get("judge")
            if isinstance(judge, dict) and judge.get("score") is not None:
                self.judge_scores[str(judge["score"])] += 1
            if rec.method == "humpback" and extra.get("score") is not None:
                self.humpback_scores[str(extra["score"])] += 1
            rouge = extra.get("rouge_l_to_seeds")
            if isinstance(rouge, (int, float)) and rec.status == STATUS_OK:
                self.rouge[_bin(float(rouge), ROUGE_BINS)] += 1

    def _spans(self, rec: OutputRecord, extra: dict[str, Any]) -> None:
        statuses = extra.get("field_status")
        details = extra.get("detail") if isinstance(extra.get("detail"), dict) else {}
        per_text = statuses.items() if isinstance(statuses, dict) else [(None, rec.status)]
        for name, status in per_text:
            if status not in SPAN_STATUSES:
                continue
            detail = details.get(name) if name is not None else details
            changes = detail.get("structure") if isinstance(detail, dict) else None
            if status == STATUS_STRUCTURE_CHANGED and isinstance(changes, list) and changes:
                self.span_failures.update(str(c.get("kind")) for c in changes if isinstance(c, dict))
            else:
                self.span_failures[status] += 1

    _data: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The figures as JSON-ready values (see the module docstring)."""
        if self._data is not None:
            return self._data
        with self._lock:
            out: dict[str, Any] = {
                "kept": self.kept,
                "discarded": dict(sorted(self.discarded.items())),
                "discard_examples": {k: self.examples[k] for k in sorted(self.examples)},
            }
            if self.similarity_values:
                out["similarity"] = {"bins": [round(i / SIMILARITY_BINS, 2) for i in range(SIMILARITY_BINS + 1)],
                                     "counts": list(self.similarity), "n": self.similarity_values,
                                     "mean": round(self.similarity_sum / self.similarity_values, 4)}
            if self.languages or self.passed_through:
                out["languages"] = {"records": dict(self.languages.most_common()),
                                    "segments_passed_through": dict(self.passed_through.most_common())}
            if self.span_failures:
                out["span_failures"] = dict(self.span_failures.most_common())
            if self.turns:
                out["turns_in_kept_conversations"] = dict(self.turns.most_common())
            if self.judge_scores:
                out["judge_scores"] = dict(sorted(self.judge_scores.items()))
            if self.humpback_scores:
                out["humpback_scores"] = dict(sorted(self.humpback_scores.items()))
            if any(self.rouge):
                out["rouge_l_to_seeds"] = {"bins": [round(i / ROUGE_BINS, 1) for i in range(ROUGE_BINS + 1)],
                                           "counts": list(self.rouge)}
            return out

    def summary_lines(self) -> list[str]:
        """A few console lines: the signals that were measured (nothing when none was)."""
        d = self.as_dict()
        lines = []
        if "similarity" in d:
            s = d["similarity"]
            low = sum(s["counts"][:SIMILARITY_BINS // 2])
            lines.append(f"meaning: mean similarity {s['mean']:.3f} over {s['n']} records ({low} below 0.5)")
        if "languages" in d:
            langs = ", ".join(f"{k}: {v}" for k, v in list(d["languages"]["records"].items())[:6])
            passed = sum(d["languages"]["segments_passed_through"].values())
            lines.append(f"languages: {langs}" + (f"; {passed} segments in other languages passed through"
                                                  if passed else ""))
        if "turns_in_kept_conversations" in d:
            t = d["turns_in_kept_conversations"]
            lines.append(f"turns of kept conversations: {t.get('ok', 0)} paraphrased; kept as they were: "
                         + (", ".join(f"{k}: {v}" for k, v in t.items() if k != "ok") or "none"))
        for status in ("invalid_record", "empty_record"):
            example = d["discard_examples"].get(status)
            if example is not None:
                lines.append(f"{status} e.g. {str(example.get('detail'))[:300]}")
        if "span_failures" in d:
            lines.append("protected-span failures: " + ", ".join(f"{k}: {v}" for k, v in d["span_failures"].items()))
        for key, label in (("judge_scores", "judge scores"), ("humpback_scores", "humpback scores")):
            if key in d:
                lines.append(f"{label}: " + ", ".join(f"{k}: {v}" for k, v in d[key].items()))
        if "rouge_l_to_seeds" in d:
            r = d["rouge_l_to_seeds"]
            lines.append("ROUGE-L to the closest seed: " + ", ".join(
                f"{r['bins'][i]:.1f}-{r['bins'][i + 1]:.1f}: {c}" for i, c in enumerate(r["counts"]) if c))
        return lines


def figures_from_files(paths: list[str]) -> QualityFigures:
    """The figures of output / discards files as written (any output format); missing files are skipped,
    unreadable lines ignored (a report never fails a run)."""
    import json

    from .records import Example

    figures = QualityFigures()
    for path in paths:
        try:
            fh = open(path, "rb")
        except OSError:
            continue
        with fh:
            for line in fh:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(row, dict):
                    continue
                instruction = row.get("instruction") if isinstance(row.get("instruction"), str) else ""
                extra = row.get("extra") if isinstance(row.get("extra"), dict) else {}
                figures.observe(OutputRecord(str(row.get("id")), Example(instruction=instruction),
                                             str(row.get("status")), str(row.get("method") or ""), {}, extra))
    return figures


def quality_panels(figures: dict[str, dict[str, Any]], skip: tuple[str, ...] = ()) -> list[str]:
    """Which quality panels ``figures`` (``{stage: QualityFigures.as_dict()}``) has data for:
    ``discards``, ``similarity``, ``scores``, ``rouge`` (minus ``skip``)."""
    wanted = {
        "discards": any(f.get("discarded") for f in figures.values()),
        "similarity": any("similarity" in f for f in figures.values()),
        "scores": any("judge_scores" in f or "humpback_scores" in f for f in figures.values()),
        "rouge": any("rouge_l_to_seeds" in f for f in figures.values()),
    }
    return [k for k, v in wanted.items() if v and k not in skip]


def draw_quality(axes, kinds: list[str], figures: dict[str, dict[str, Any]]) -> None:
    """Draw the panels ``kinds`` (from :func:`quality_panels`) on matplotlib ``axes``, one each."""
    for ax, kind in zip(axes, kinds):
        if kind == "discards":
            labels, values = [], []
            for stage, f in figures.items():
                for status, n in f.get("discarded", {}).items():
                    labels.append(f"{stage}: {status}")
                    values.append(n)
            ax.barh(labels, values)
            ax.set_title("discarded by reason")
        elif kind == "similarity":
            for stage, f in figures.items():
                if "similarity" in f:
                    ax.stairs(f["similarity"]["counts"], f["similarity"]["bins"], label=stage)
            ax.set_title("source / paraphrase similarity (MiniLM cosine)")
            ax.set_xlabel("cosine similarity")
            ax.legend(loc="upper left")
        elif kind == "scores":
            for stage, f in figures.items():
                for key in ("judge_scores", "humpback_scores"):
                    if key in f:
                        ax.bar([f"{stage} {k}" for k in f[key]], list(f[key].values()))
            ax.set_title("scores (1-5)")
        else:
            for stage, f in figures.items():
                if "rouge_l_to_seeds" in f:
                    ax.stairs(f["rouge_l_to_seeds"]["counts"], f["rouge_l_to_seeds"]["bins"], label=stage)
            ax.set_title("ROUGE-L of kept instructions to their closest seed (Self-Instruct, Fig. 3)")
            ax.legend(loc="upper left")


def plot_quality(axes_for, figures: dict[str, dict[str, Any]]) -> int:
    """Draw every quality panel with data; ``axes_for(n)`` returns ``n`` axes. Returns ``n``."""
    kinds = quality_panels(figures)
    if kinds:
        draw_quality(axes_for(len(kinds)), kinds, figures)
    return len(kinds)
