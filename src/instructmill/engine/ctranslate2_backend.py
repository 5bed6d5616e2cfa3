"""CTranslate2 translation backend: the fast path for MarianMT / OPUS-MT, NLLB and M2M100.

A converted model folder (``instructmill convert``) holds ``model.bin``, the
tokenizer files and an ``instructmill.json`` manifest; the backend refuses folders
whose conversion failed verification. One ``ctranslate2.Translator`` is created per
process, model, device and thread setting and reused by every backend and batch
(loading is the expensive part, and each Translator owns ``inter_threads`` replicas).

Default settings are the fastest measured on CPU (``shared/notes/engines.md``):
``compute_type="int8"``, ``inter_threads`` = number of cores, ``intra_threads=1``, and
batches of up to 64 examples / 3,072 tokens cut by the scheduler; several batches run
at once (one per replica) from the chain's thread pool.
"""
from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InstructmillError, OptionError
from .translation import Encoded, TranslationBackend

#: CTranslate2 compute types (``ctranslate2.get_supported_compute_types`` tells which a device has).
COMPUTE_TYPES = ("default", "auto", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16",
                 "float16", "bfloat16", "float32")

#: ISO 639-1 -> NLLB-200 (FLORES-200) codes for the languages people pivot through most.
NLLB_CODES = {
    "en": "eng_Latn", "de": "deu_Latn", "fr": "fra_Latn", "es": "spa_Latn", "pt": "por_Latn",
    "it": "ita_Latn", "nl": "nld_Latn", "ru": "rus_Cyrl", "zh": "zho_Hans", "ja": "jpn_Jpan",
    "ko": "kor_Hang", "ar": "arb_Arab", "hi": "hin_Deva", "tr": "tur_Latn", "pl": "pol_Latn",
    "uk": "ukr_Cyrl", "vi": "vie_Latn", "id": "ind_Latn", "fi": "fin_Latn", "sv": "swe_Latn",
}

_TRANSLATORS: dict[tuple, Any] = {}
_TRANSLATORS_LOCK = threading.Lock()


@dataclass(frozen=True)
class CTranslate2Options:
    """CTranslate2 ``Translator`` and decoding options (CTranslate2's own names).

    Attributes:
        device: ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when a GPU is visible).
        device_index: GPU index.
        compute_type: one of :data:`COMPUTE_TYPES`; ``"auto"`` = int8 on CPU, int8_float16 on CUDA.
        inter_threads: batches translated in parallel (replicas, each with its own threads);
            default: CPU cores (1 on CUDA). CPU threads used = inter_threads x intra_threads. (LLM
            engines run one replica and take a single ``threads`` count instead.)
        intra_threads: threads inside each replica, working on one batch; default 1 on CPU.
        beam_size: default: the model's ``num_beams`` from its manifest.
        length_penalty: beam search: exponent of the length normalisation of a hypothesis' score
            (CTranslate2's; default: CTranslate2's 1).
        repetition_penalty: > 1 penalizes tokens already generated (CTranslate2's; 1 = off).
        no_repeat_ngram_size: forbid repeating any n-gram of this many tokens (0 = off).
        max_decoding_length: hard cap on target tokens; default: the model's ``max_length``.
        decoding_length_ratio: per segment, target tokens are capped at
            ``ratio * source tokens + 10`` (below the hard cap) so a looping output stops early;
            each segment of a batch stops at its own cap (``CTranslate2Backend.translate_batch``).
        min_decoding_length: at least this many target tokens (benchmarks fix the length).
        sampling_topk: 1 = greedy or beam search; k > 1 samples from the k most likely tokens (0:
            from all), which gives more varied back-translations (Edunov et al., 2018
            "Understanding Back-Translation at Scale").
        sampling_temperature: divides the logits before sampling (used only when sampling_topk is
            not 1): > 1.0 flatter, < 1.0 sharper.
    """

    device: str = "cpu"
    device_index: int = 0
    compute_type: str = "auto"
    inter_threads: int | None = None
    intra_threads: int | None = None
    beam_size: int | None = None
    length_penalty: float | None = None
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    max_decoding_length: int | None = None
    decoding_length_ratio: float = 2.0
    min_decoding_length: int = 0
    sampling_topk: int = 1
    sampling_temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda", "auto"):
            raise OptionError("device", self.device, "must be cpu, cuda or auto")
        if self.compute_type not in COMPUTE_TYPES:
            raise OptionError("compute_type", self.compute_type, f"must be one of {', '.join(COMPUTE_TYPES)}")
        for name in ("inter_threads", "intra_threads", "beam_size", "max_decoding_length"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise OptionError(name, value, "must be a positive integer")
        if self.sampling_topk < 0:
            raise OptionError("sampling_topk", self.sampling_topk, "must be >= 0")
        if self.decoding_length_ratio <= 0:
            raise OptionError("decoding_length_ratio", self.decoding_length_ratio, "must be > 0")


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


def resolve_compute_type(device: str, compute_type: str) -> str:
    """The concrete compute type for ``device`` (``auto`` -> int8 on CPU, int8_float16 on CUDA).

    Raises:
        OptionError: the device does not support the requested type (lists those it does).
    """
    import ctranslate2

    supported = set(ctranslate2.get_supported_compute_types(device))
    if compute_type == "auto":
        for candidate in (("int8_float16", "float16") if device == "cuda" else ("int8", "int8_float32")):
            if candidate in supported:
                return candidate
        return "float32"
    if compute_type != "default" and compute_type not in supported:
        raise OptionError("compute_type", compute_type,
                          f"not supported on {device}; supported: {', '.join(sorted(supported))}")
    return compute_type


def default_threads(device: str) -> tuple[int, int]:
    """``(inter_threads, intra_threads)``: one replica per core on CPU (measured fastest), 1 on CUDA."""
    if device == "cuda":
        return 1, 4
    cores = os.cpu_count() or 1
    intra = 1 if cores <= 4 else 2
    return max(1, cores // intra), intra


def get_translator(model_dir: str, *, device: str, device_index: int, compute_type: str,
                   inter_threads: int, intra_threads: int):
    """The process-wide ``ctranslate2.Translator`` for these settings (created once, then reused)."""
    key = (str(Path(model_dir).resolve()), device, device_index, compute_type, inter_threads, intra_threads)
    with _TRANSLATORS_LOCK:
        translator = _TRANSLATORS.get(key)
        if translator is None:
            import ctranslate2

            translator = ctranslate2.Translator(model_dir, device=device, device_index=device_index,
                                                compute_type=compute_type, inter_threads=inter_threads,
                                                intra_threads=intra_threads)
            _TRANSLATORS[key] = translator
    return translator


def is_ct2_folder(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p / "model.bin").is_file() and (p / "config.json").is_file()


class CTranslate2Backend(TranslationBackend):
    """One direction of a converted CTranslate2 translation model.

    Args:
        model_dir: folder written by ``instructmill convert`` (manifest verified).
        source_lang / target_lang: language codes; for Marian they default to the manifest's, for
            NLLB / M2M100 they pick the language tokens (ISO 639-1 codes are mapped for NLLB).
        options: :class:`CTranslate2Options`.
        allow_unverified: use a folder whose verification failed or that has no manifest.

    Raises:
        VerificationError: the manifest says verification failed (and ``allow_unverified`` is false).
        OptionError: bad options or languages the model does not cover.
    """

    name = "ctranslate2"

    def __init__(self, model_dir: str | os.PathLike, *, source_lang: str | None = None,
                 target_lang: str | None = None, options: CTranslate2Options | None = None,
                 allow_unverified: bool = False):
        super().__init__()
        from ..converters.manifest import load_verified_manifest

        self.model_dir = str(model_dir)
        self.options = options or CTranslate2Options()
        self.manifest = load_verified_manifest(self.model_dir, allow_unverified=allow_unverified)
        langs = self.manifest.get("languages") or {}
        self.source_lang = source_lang or langs.get("source") or ""
        self.target_lang = target_lang or langs.get("target") or ""
        known = (langs.get("source"), langs.get("target"))
        if (self.manifest.get("tokenizer") or {}).get("type", "sentencepiece") == "sentencepiece" \
                and all(known) and (self.source_lang, self.target_lang) != known:
            raise OptionError("languages", f"{self.source_lang}->{self.target_lang}",
                              f"{self.model_dir} translates {known[0]}->{known[1]} (from its manifest)")
        self.model = str(self.manifest.get("source") or self.model_dir)
        self.device = resolve_device(self.options.device)
        self.compute_type = resolve_compute_type(self.device, self.options.compute_type)
        inter, intra = default_threads(self.device)
        self.inter_threads = self.options.inter_threads or inter
        self.intra_threads = self.options.intra_threads or intra
        self.parallel_batches = self.inter_threads
        self.max_input_tokens = int(self.manifest.get("max_input_tokens") or 512) - 2
        decoding = self.manifest.get("decoding") or {}
        self.beam_size = self.options.beam_size or int(decoding.get("beam_size") or 1)
        self.length_penalty = (self.options.length_penalty if self.options.length_penalty is not None
                               else float(decoding.get("length_penalty", 1.0)))
        cap = self.options.max_decoding_length or int(decoding.get("max_decoding_length") or 256)
        self.max_decoding_length = min(cap, int(self.manifest.get("max_input_tokens") or cap))
        self.suppress_sequences = decoding.get("suppress_sequences") or None
        self._tokenizer = _load_tokenizer(self.model_dir, self.manifest, self.source_lang, self.target_lang)
        self.compute_type = self._checked_compute_type()
        self._translator = get_translator(self.model_dir, device=self.device,
                                          device_index=self.options.device_index,
                                          compute_type=self.compute_type, inter_threads=self.inter_threads,
                                          intra_threads=self.intra_threads)

    def _checked_compute_type(self) -> str:
        """``self.compute_type``, checked once against the folder's float32 run when it differs
        from the verified type (:func:`~instructmill.converters.load_check.checked_compute_type`:
        refuses an explicit type that strays too far, falls back to float32 for ``auto``)."""
        from ..converters.fidelity import FidelityInputs
        from ..converters.load_check import checked_compute_type
        from ..converters.verify import DEFAULT_MAX_NEW_TOKENS, DEFAULT_SENTENCES

        def inputs() -> FidelityInputs:
            sources = self._tokenizer.encode(list(DEFAULT_SENTENCES))
            prefix = self._tokenizer.target_prefix
            return FidelityInputs(kind="translation", source_tokens=sources,
                                  target_prefix=[list(prefix) for _ in sources] if prefix else None,
                                  max_new_tokens=DEFAULT_MAX_NEW_TOKENS,
                                  suppress_sequences=self.suppress_sequences)

        return checked_compute_type(self.model_dir, self.manifest, self.compute_type,
                                    requested=self.options.compute_type, device=self.device,
                                    inputs=inputs)

    def encode(self, texts: list[str]) -> list[Encoded]:
        return [Encoded(tokens, len(tokens)) for tokens in self._tokenizer.encode(texts)]

    def decode_cap(self, source_tokens: int) -> int:
        """Most target tokens (a target prefix included, as CTranslate2 counts them) for a source
        of ``source_tokens`` tokens: ``ceil(decoding_length_ratio * source_tokens) + 10``, at most
        the model's hard cap. The slack of 10 lets a one-word source become a short phrase."""
        return min(self.max_decoding_length, math.ceil(self.options.decoding_length_ratio * source_tokens) + 10)

    def translate_batch(self, batch: list[Encoded]) -> list[str]:
        """Translate one batch; every segment stops at its own :meth:`decode_cap`, not the batch's.

        ``translate_batch`` takes one ``max_decoding_length`` per call, so a 3-token segment next
        to a 96-token one could loop for ~200 tokens. Greedy and sampling (``beam_size == 1``) run
        the batch once and stop each example at its cap through CTranslate2's per-token callback
        (returning ``True`` ends that example only, checked with 4.8.5). Beam search has no
        callback: the batch is split into groups whose caps differ by at most 2x (a length-sorted
        batch is one group), each decoded to its group's largest cap and cut to its own.
        Benchmarks that fix the length (``min_decoding_length`` and ``max_decoding_length`` set)
        decode every segment to that length.
        """
        if not batch:
            return []
        start = time.perf_counter()
        if self.options.min_decoding_length and self.options.max_decoding_length:
            caps = [self.options.max_decoding_length] * len(batch)
            hyps = self._decode(batch, caps, stop_each=False)
        elif self.beam_size == 1:
            caps = [self.decode_cap(item.length) for item in batch]
            hyps = self._decode(batch, caps, stop_each=True)
        else:
            caps = [self.decode_cap(item.length) for item in batch]
            hyps = [[] for _ in batch]
            for group in _cap_groups(caps):
                for i, hyp in zip(group, self._decode([batch[i] for i in group], [caps[i] for i in group],
                                                      stop_each=False)):
                    hyps[i] = hyp
        seconds = time.perf_counter() - start
        prefix = self._tokenizer.target_prefix
        hyps = [hyp[:cap] for hyp, cap in zip(hyps, caps)]  # own cap, whatever the group decoded
        hyps = [h[len(prefix):] if prefix else h for h in hyps]
        self.stats.add(segments=len(batch), source_tokens=sum(i.length for i in batch),
                       target_tokens=sum(len(h) for h in hyps), seconds=seconds)
        return self._tokenizer.decode(hyps)

    def _decode(self, batch: list[Encoded], caps: list[int], *, stop_each: bool) -> list[list[str]]:
        """One ``translate_batch`` call decoding up to ``max(caps)`` tokens; with ``stop_each``
        (``beam_size == 1`` only) example ``i`` stops after ``caps[i]`` tokens. Returns the best
        hypothesis of each example, the target prefix included."""
        prefix = self._tokenizer.target_prefix

        def stop_at_own_cap(step) -> bool:
            return step.step + 1 >= caps[step.batch_id]

        results = self._translator.translate_batch(
            [item.payload for item in batch],
            target_prefix=[list(prefix) for _ in batch] if prefix else None,
            max_batch_size=0,  # no re-batching inside: batch_id in the callback is our index
            beam_size=self.beam_size,
            length_penalty=self.length_penalty,
            repetition_penalty=self.options.repetition_penalty,
            no_repeat_ngram_size=self.options.no_repeat_ngram_size,
            max_input_length=0,  # never truncate silently: the segmenter splits long inputs
            max_decoding_length=max(caps),
            min_decoding_length=self.options.min_decoding_length,
            sampling_topk=self.options.sampling_topk,
            sampling_temperature=self.options.sampling_temperature,
            suppress_sequences=self.suppress_sequences,
            return_scores=False,
            callback=stop_at_own_cap if stop_each and len(set(caps)) > 1 else None,
        )
        return [list(r.hypotheses[0]) for r in results]

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "compute_type": self.compute_type, "device": self.device,
                "beam_size": self.beam_size, "inter_threads": self.inter_threads,
                "intra_threads": self.intra_threads, "quantization": self.manifest.get("quantization")}


class _SentencePieceTokenizer:
    """Marian: source.spm / target.spm pieces, ``</s>`` appended (what MarianTokenizer produces)."""

    SPECIALS = {"</s>", "<pad>", "<s>"}

    def __init__(self, folder: Path, tok: dict):
        import sentencepiece as spm

        self.source = spm.SentencePieceProcessor(model_file=str(folder / tok.get("source_spm", "source.spm")))
        self.target = spm.SentencePieceProcessor(model_file=str(folder / tok.get("target_spm", "target.spm")))
        self.target_prefix: list[str] = []
        self.prefix = list(tok.get("source_prefix") or [])
        self.suffix = list(tok.get("source_suffix") or ["</s>"])

    def encode(self, texts: list[str]) -> list[list[str]]:
        return [self.prefix + pieces + self.suffix for pieces in self.source.encode(list(texts), out_type=str)]

    def decode(self, hyps: list[list[str]]) -> list[str]:
        return [self.target.decode([t for t in hyp if t not in self.SPECIALS]) for hyp in hyps]


class _HFTokenizer:
    """NLLB / M2M100: the HF tokenizer (no torch needed) with source and target language tokens.

    NLLB's language codes are its tokens (``eng_Latn``; ISO 639-1 codes are mapped with
    :data:`NLLB_CODES`); M2M100's codes are ISO (``en``) and its tokens ``__en__``.
    """

    def __init__(self, folder: Path, source_lang: str, target_lang: str, style: str):
        try:
            from transformers import AutoTokenizer
        except ImportError as exc:
            raise InstructmillError("NLLB / M2M100 models need transformers for their tokenizer: "
                                    "pip install 'instructmill[convert]'") from exc
        nllb = style == "nllb"
        src = NLLB_CODES.get(source_lang, source_lang) if nllb else source_lang
        tgt = NLLB_CODES.get(target_lang, target_lang) if nllb else target_lang
        self.tok = AutoTokenizer.from_pretrained(str(folder), src_lang=src)
        for name, code in (("source_lang", src), ("target_lang", tgt)):
            token = code if nllb else f"__{code}__"
            if self.tok.convert_tokens_to_ids(token) in (None, self.tok.unk_token_id):
                raise OptionError(name, code, f"the model has no language token {token!r}")
        self.target_prefix = [tgt if nllb else f"__{tgt}__"]

    def encode(self, texts: list[str]) -> list[list[str]]:
        return [self.tok.convert_ids_to_tokens(ids) for ids in self.tok(list(texts))["input_ids"]]

    def decode(self, hyps: list[list[str]]) -> list[str]:
        return [self.tok.decode(self.tok.convert_tokens_to_ids(h), skip_special_tokens=True) for h in hyps]


def _load_tokenizer(model_dir: str, manifest: dict, source_lang: str, target_lang: str):
    folder = Path(model_dir)
    tok = manifest.get("tokenizer") or {"type": "sentencepiece"}
    if tok.get("type") == "sentencepiece":
        return _SentencePieceTokenizer(folder, tok)
    if not source_lang or not target_lang:
        raise OptionError("source_lang/target_lang", (source_lang, target_lang),
                          "a multilingual model needs both languages")
    return _HFTokenizer(folder, source_lang, target_lang, str(tok.get("language_tokens", "m2m100")))


def _cap_groups(caps: list[int], spread: float = 2.0) -> list[list[int]]:
    """Indices of ``caps`` grouped so that within a group the largest cap is at most ``spread``
    times the smallest (sorted by cap; each index in exactly one group)."""
    groups: list[list[int]] = []
    for i in sorted(range(len(caps)), key=lambda i: caps[i]):
        if groups and caps[i] <= spread * caps[groups[-1][0]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups
