"""How faithfully a quantized CTranslate2 model follows the float32 model it came from.

Verification of a quantized conversion (:mod:`instructmill.converters.verify`) and the
load-time check of a compute type other than the verified one
(:func:`instructmill.converters.load_check.check_compute_type`) both call :func:`measure`:
the float32 model is the reference (its greedy output equals transformers', checked when it
was converted), the candidate is the same weights run with another compute type, or the
quantized conversion.

Measures, on the verification text (real English sentences; for decoder LLMs, as user turns
of the chat template):

* ``exact_share``: share of inputs whose free-running greedy output equals float32's.
* ``window_agreement``: prefix agreement (common prefix / longer length) of the first
  :data:`WINDOW` output tokens, averaged over inputs. Greedy outputs part at the first
  near-tie; the window keeps one early difference from counting against a long output.
* ``logprob_gap``: mean absolute difference, in nats, between the two models' log-probability
  of each token of float32's own output (``score_batch``, teacher-forced). For decoder LLMs the
  prompt tokens count too, so real text is scored, not only model output. This is the
  distribution measure: it grows with the quantization error of every layer, not only where
  a near-tie flips the top token.
* ``top1_agreement`` (decoder LLMs): share of positions, teacher-forced on float32's output
  (the position before it included), where both models' most likely next token is the same.
* ``prefix_agreement``: common prefix / longer length of the whole outputs, summed over inputs
  (the translation models' ``token_agreement``; decoder LLMs use ``top1_agreement``, since long
  free-running outputs part at the first near-tie).

:data:`LIMITS` says what passes; every figure behind the numbers is in its docstring.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["WINDOW", "Limits", "LIMITS", "Fidelity", "FidelityInputs", "measure", "cpu_isa",
           "refusal_advice"]

#: Output tokens compared free-running by ``window_agreement``.
WINDOW = 16


@dataclass(frozen=True)
class Limits:
    """Thresholds a candidate must meet (all must hold).

    Attributes:
        max_logprob_gap: highest accepted ``logprob_gap`` (nats per token).
        min_token_agreement: lowest accepted :attr:`Fidelity.token_agreement`.
        min_window_agreement: lowest accepted free-running ``window_agreement``.
    """

    max_logprob_gap: float
    min_token_agreement: float
    min_window_agreement: float


#: Per converter kind. Calibration: CTranslate2 4.8.5, candidate vs float32 of the same weights,
#: the 8 default sentences, 48 tokens, measured on this project's AVX2 AMD machine with its native
#: kernels and held to AVX (``CT2_FORCE_CPU_ISA=AVX ONEDNN_MAX_CPU_ISA=AVX``) and to SSE4.1
#: (``GENERIC`` / ``SSE41``); figures as log-prob gap (nats/token) / top-1 / first-16 window:
#:
#: ============================================  ==================  ==========================
#: model (candidate)                             AVX2               AVX, SSE4.1
#: ============================================  ==================  ==========================
#: tiny Marian cipher (test builder), int8        0.033 / - / 1.0    same (outputs identical)
#: tiny Llama ``init_std=0.05``, int8             0.057 / 0.82 / 0.43 same (top-1 0.814-0.816)
#: tiny Llama ``init_std=0.1``, int8              0.165 / 0.71 / 0.16 same
#: tiny Llama ``init_std=0.15``, int8             0.342 / 0.60 / 0.16 same
#: tiny Llama ``init_std=0.25`` (default), int8   0.751 / 0.52 / 0.08 same (top-1 0.518-0.520)
#: SmolLM2-135M-Instruct (embedded), int8         0.345 / 0.88 / 0.34 SSE4.1: 0.363 / 0.86 / 0.22
#: tiny Llama weights + 2% / 5% / 10% noise       0.56 / 1.29 / 2.30, top-1 0.62 / 0.40 / 0.18
#: ============================================  ==================  ==========================
#:
#: The instruction sets reachable here move the figures by < 0.001 nats and < 0.006 top-1;
#: AVX-512 VNNI kernels (oneDNN / MKL on AVX-512 machines) round differently: the default tiny
#: Llama's int8 top-1 agreement was above 0.6 there and 0.52 here, which is why a top-1
#: threshold alone flipped with the machine. The log-prob gap averages every token's error, so
#: it separates the groups by a wide margin: healthy <= 0.06, damaged >= 0.34 (SmolLM2 int8
#: included: its greedy output matches float32 on 0 of 8 prompts and it drifts into
#: repetition, see ``shared/notes/engines.md``). Top-1 and window agreement of random tiny
#: models are dominated by near-ties, so their limits only catch collapse.
LIMITS: dict[str, Limits] = {
    "generation": Limits(max_logprob_gap=0.2, min_token_agreement=0.65, min_window_agreement=0.2),
    "translation": Limits(max_logprob_gap=0.2, min_token_agreement=0.8, min_window_agreement=0.8),
}


@dataclass(frozen=True)
class FidelityInputs:
    """Tokenized verification inputs, in CTranslate2's terms.

    Attributes:
        kind: ``"translation"`` or ``"generation"``.
        source_tokens: per input, the source tokens (translation) or the prompt tokens
            (generation, special tokens included).
        target_prefix: per input, tokens forced at the start of a translation, or ``None``.
        end_tokens: tokens that end generation (generation only; ``None`` = the model's).
        max_new_tokens: output limit per input.
        suppress_sequences: token sequences never generated.
        options: other decoding options applied to both models (``repetition_penalty``...).
    """

    kind: str
    source_tokens: list[list[str]]
    target_prefix: list[list[str]] | None = None
    end_tokens: list[str] | None = None
    max_new_tokens: int = 48
    suppress_sequences: list[list[str]] | None = None
    options: dict[str, Any] | None = None


@dataclass(frozen=True)
class Fidelity:
    """One candidate measured against the float32 reference (see the module docstring).

    Attributes:
        compute_type: the candidate's compute type.
        isa: the CPU instruction set CTranslate2 ran with (:func:`cpu_isa`).
        sentences: inputs compared.
        exact_share, window_agreement, logprob_gap, top1_agreement, prefix_agreement: the
            measures (``top1_agreement`` is ``None`` for translation models).
        differences: up to three human-readable output differences.
    """

    compute_type: str
    isa: str
    sentences: int
    exact_share: float
    window_agreement: float
    logprob_gap: float
    top1_agreement: float | None
    prefix_agreement: float
    differences: tuple[str, ...] = ()

    @property
    def token_agreement(self) -> float:
        """Teacher-forced top-1 agreement for decoder LLMs, else the prefix agreement."""
        return self.top1_agreement if self.top1_agreement is not None else self.prefix_agreement

    @property
    def exact_matches(self) -> int:
        """Inputs whose output equals float32's."""
        return round(self.exact_share * self.sentences)

    def problems(self, limits: Limits) -> list[str]:
        """The limits this candidate misses, each as one phrase (``[]`` = passes)."""
        out = []
        if self.logprob_gap > limits.max_logprob_gap:
            out.append(f"log-prob gap {self.logprob_gap:.3f} nats/token > "
                       f"{limits.max_logprob_gap}")
        if self.token_agreement < limits.min_token_agreement:
            what = "top-1" if self.top1_agreement is not None else "token"
            out.append(f"{what} agreement {self.token_agreement:.3f} < "
                       f"{limits.min_token_agreement}")
        if self.window_agreement < limits.min_window_agreement:
            out.append(f"first-{WINDOW}-token agreement {self.window_agreement:.3f} < "
                       f"{limits.min_window_agreement}")
        return out

    def summary(self) -> str:
        """One line with every measure, e.g. for a manifest ``detail``."""
        agreement = (f"teacher-forced top-1 agreement {self.top1_agreement:.3f}"
                     if self.top1_agreement is not None
                     else f"token agreement {self.prefix_agreement:.3f}")
        return (f"vs float32 on {self.isa}: {self.exact_matches}/{self.sentences} outputs "
                f"identical, {agreement}, first-{WINDOW}-token agreement "
                f"{self.window_agreement:.3f}, log-prob gap {self.logprob_gap:.3f} nats/token")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (rounded figures), as stored in manifests."""
        out = asdict(self)
        for key in ("exact_share", "window_agreement", "logprob_gap", "top1_agreement",
                    "prefix_agreement"):
            if out[key] is not None:
                out[key] = round(out[key], 4)
        out["differences"] = list(self.differences)
        return out


def cpu_isa() -> str:
    """The instruction set CTranslate2 uses on this CPU: ``CT2_FORCE_CPU_ISA`` when set, else
    the best of AVX512 / AVX2 / AVX / GENERIC that ``/proc/cpuinfo`` lists (``"unknown"`` when
    it cannot be read), followed by ``ONEDNN_MAX_CPU_ISA`` / ``MKL_ENABLE_INSTRUCTIONS`` when
    set (``"AVX2/onednn=AVX2"``): CTranslate2's int8 matrix products come from oneDNN (AMD) or
    MKL (Intel), which pick their kernels by instruction set themselves. int8 results differ
    between these, so recorded checks name it."""
    limits = "".join(f"/{name}={os.environ[var].upper()}" for var, name in (
        ("ONEDNN_MAX_CPU_ISA", "onednn"), ("MKL_ENABLE_INSTRUCTIONS", "mkl"))
        if os.environ.get(var))
    return _ct2_isa() + limits


def _ct2_isa() -> str:
    forced = os.environ.get("CT2_FORCE_CPU_ISA")
    if forced:
        return forced.upper()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "unknown"
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    for flag, name in (("avx512f", "AVX512"), ("avx2", "AVX2"), ("avx", "AVX")):
        if flag in flags:
            return name
    return "GENERIC" if flags else "unknown"


def refusal_advice(quantization: str) -> str:
    """What to do instead of a refused quantized type: name the safe alternatives."""
    if quantization == "int8_float32":
        return ("use --quantization float32 (exact): int8_float32 keeps int8 matrix "
                "products, which this model does not tolerate")
    return ("use --quantization float32 (exact), or int8_float32 where the device computes it "
            "differently from int8 (on CPU int8 already runs as int8_float32)")


def _prefix(a: Sequence[Any], b: Sequence[Any]) -> float:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    longest = max(len(a), len(b))
    return n / longest if longest else 1.0


def _generate(model: Any, inputs: FidelityInputs) -> list[list[str]]:
    opts = dict(inputs.options or {})
    if inputs.kind == "generation":
        results = model.generate_batch(
            inputs.source_tokens, max_length=inputs.max_new_tokens, sampling_topk=1,
            beam_size=1, include_prompt_in_result=False, end_token=inputs.end_tokens or None,
            suppress_sequences=inputs.suppress_sequences or None, **opts)
        return [list(r.sequences[0]) for r in results]
    results = model.translate_batch(
        inputs.source_tokens, target_prefix=inputs.target_prefix, beam_size=1,
        max_decoding_length=inputs.max_new_tokens,
        suppress_sequences=inputs.suppress_sequences or None, **opts)
    return [list(r.hypotheses[0]) for r in results]


def _scored(model: Any, inputs: FidelityInputs, outputs: list[list[str]]) -> list[list[float]]:
    """Per input, the log-probability of each token of ``outputs`` (teacher-forced)."""
    if inputs.kind == "generation":
        seqs = [list(p) + o for p, o in zip(inputs.source_tokens, outputs)]
        return [list(r.log_probs) for r in model.score_batch(seqs)]
    prefix = inputs.target_prefix or [[] for _ in outputs]
    targets = [list(p) + o for p, o in zip(prefix, outputs)]
    return [list(r.log_probs) for r in model.score_batch(inputs.source_tokens, targets)]


def _top1(reference: Any, candidate: Any, inputs: FidelityInputs,
          outputs: list[list[str]]) -> float:
    """Teacher-forced top-1 agreement of two Generators over prompt end + ``outputs``."""
    import numpy as np

    agree = total = 0
    for prompt, out in zip(inputs.source_tokens, outputs):
        seq = list(prompt) + out
        a = np.asarray(reference.forward_batch([seq]))[0, len(prompt) - 1:]
        b = np.asarray(candidate.forward_batch([seq]))[0, len(prompt) - 1:]
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += len(a)
    return agree / total if total else 1.0


def measure(reference_dir: str | Path, candidate_dir: str | Path, compute_type: str,
            inputs: FidelityInputs, *, device: str = "cpu") -> Fidelity:
    """Run the float32 model in ``reference_dir`` and the candidate in ``candidate_dir`` (with
    ``compute_type``; the two folders may be the same) on ``inputs`` and compare.

    Single-threaded models (verification batches are small; threads only add contention).
    Returns a :class:`Fidelity`. Raises whatever CTranslate2 raises for an unloadable model.
    """
    import ctranslate2

    cls = ctranslate2.Generator if inputs.kind == "generation" else ctranslate2.Translator
    ref = cls(str(reference_dir), device=device, compute_type="float32", inter_threads=1,
              intra_threads=1)
    cand = cls(str(candidate_dir), device=device, compute_type=compute_type, inter_threads=1,
               intra_threads=1)
    want = _generate(ref, inputs)
    got = _generate(cand, inputs)
    exact = sum(a == b for a, b in zip(want, got))
    window = [_prefix(a[:WINDOW], b[:WINDOW]) for a, b in zip(want, got)]
    common = sum(round(_prefix(a, b) * max(len(a), len(b))) for a, b in zip(want, got))
    longest = sum(max(len(a), len(b)) for a, b in zip(want, got))
    # float32's output plus its end token when it stopped early (scored as a real decision).
    scored = [o + ([] if len(o) >= inputs.max_new_tokens else _end(inputs)) for o in want]
    gaps = [abs(x - y) for a, b in zip(_scored(ref, inputs, scored), _scored(cand, inputs, scored))
            for x, y in zip(a, b)]
    top1 = _top1(ref, cand, inputs, want) if inputs.kind == "generation" else None
    differences = []
    for i, (a, b) in enumerate(zip(want, got)):
        if a != b and len(differences) < 3:
            n = round(_prefix(a, b) * max(len(a), len(b)))
            differences.append(f"input {i + 1} differs at output token {n + 1}: float32 "
                               f"{a[n] if n < len(a) else '(end)'!r}, {compute_type} "
                               f"{b[n] if n < len(b) else '(end)'!r}")
    del ref, cand
    n = len(want)
    return Fidelity(compute_type=compute_type, isa=cpu_isa() if device == "cpu" else device,
                    sentences=n, exact_share=exact / n if n else 1.0,
                    window_agreement=sum(window) / n if n else 1.0,
                    logprob_gap=sum(gaps) / len(gaps) if gaps else 0.0,
                    top1_agreement=top1,
                    prefix_agreement=common / longest if longest else 1.0,
                    differences=tuple(differences))


def _end(inputs: FidelityInputs) -> list[str]:
    """The end token scored after an output that stopped early (``Translator.score_batch``
    appends ``</s>`` itself)."""
    if inputs.kind == "generation":
        return list(inputs.end_tokens or [])[:1]
    return []
