"""``convert_model``: HF transformers model -> verified, self-contained CTranslate2 folder.

Steps: resolve the model (folder or hub id), pick the converter by architecture, refuse what
cannot be converted safely, convert with ``ctranslate2.converters.TransformersConverter``
(tokenizer files copied next to ``model.bin``), write the ``instructmill.json`` manifest and
verify the result against transformers (see :mod:`instructmill.converters.verify`).

Work happens in a temporary sibling folder that is moved into place at the end, so an
interrupted conversion never leaves a half-written model under the output name.
torch, transformers and ctranslate2 are imported inside the functions.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import ConversionError, OptionError, VerificationError
from .fidelity import LIMITS, Limits, measure, refusal_advice
from .manifest import MANIFEST_FORMAT, MANIFEST_NAME, write_manifest
from .registry import Converter, find_converter
from .resolve import ResolvedModel, resolve_model
from .verify import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_SENTENCES,
    VerificationReport,
    compare_ct2,
    cpu_compute_type,
    fidelity_inputs,
    reference_outputs,
)

__all__ = ["QUANTIZATIONS", "ConversionResult", "convert_model"]

#: Weight types CTranslate2 can store (``TransformersConverter.convert(quantization=...)``).
QUANTIZATIONS: tuple[str, ...] = ("int8", "int8_float32", "int8_float16", "int8_bfloat16",
                                  "int16", "float16", "bfloat16", "float32")


@dataclass(frozen=True)
class ConversionResult:
    """What :func:`convert_model` produced.

    Attributes:
        output_dir: the converted folder (model.bin, vocabulary, tokenizer files, manifest).
        manifest: the manifest written (see :mod:`instructmill.converters.manifest`).
        verification: the verification report, ``None`` when ``verify=False``.
        model_dir: the local HF folder that was converted.
        seconds: wall time of the whole conversion.
    """

    output_dir: Path
    manifest: dict[str, Any]
    verification: VerificationReport | None
    model_dir: Path
    seconds: float


def _versions() -> dict[str, str | None]:
    import ctranslate2
    import transformers

    try:
        from importlib.metadata import PackageNotFoundError, version
        try:
            own = version("instructmill")
        except PackageNotFoundError:
            own = None
    except ImportError:  # pragma: no cover
        own = None
    if own is None:
        import instructmill
        own = getattr(instructmill, "__version__", None)
    return {"ctranslate2": ctranslate2.__version__, "transformers": transformers.__version__,
            "instructmill": own}


def _check_output(output: Path, force: bool, model_dir: Path | None = None) -> None:
    """Refuse an output folder that exists without ``force``, or that is not ours to replace."""
    if model_dir is not None:
        out = output.resolve()
        src = model_dir.resolve()
        if out == src or src.is_relative_to(out) or out.is_relative_to(src):
            raise ConversionError(f"output folder {output} must be outside the model folder "
                                  f"{model_dir}")
    if not output.exists():
        return
    if not output.is_dir():
        raise ConversionError(f"output {output} exists and is not a folder")
    if not force:
        raise ConversionError(f"output folder {output} already exists; pass force=True "
                              "(--force) to replace it")
    entries = list(output.iterdir())
    if entries and not ((output / "model.bin").exists() or (output / MANIFEST_NAME).exists()):
        raise ConversionError(f"refusing to replace {output}: it is not empty and does not look "
                              "like a converted model (no model.bin or instructmill.json)")


def _decoding(model_dir: Path, config: dict[str, Any], vocab: set[str], tokenizer: Any,
              pad_token: str | None) -> dict[str, Any]:
    """Map generation_config.json (or config.json) to CTranslate2 decoding options."""
    gen: dict[str, Any] = {}
    path = model_dir / "generation_config.json"
    if path.is_file():
        try:
            gen = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            gen = {}

    def pick(key: str, default: Any) -> Any:
        value = gen.get(key, config.get(key))
        return default if value is None else value

    max_len = pick("max_length", None)
    if max_len is None:
        max_len = config.get("max_position_embeddings") or 256
    suppress: list[list[str]] = []
    for seq in pick("bad_words_ids", []) or []:
        tokens = tokenizer.convert_ids_to_tokens(list(seq))
        if all(t in vocab for t in tokens) and tokens not in suppress:
            suppress.append(tokens)
    # <pad> is never generated: suppress it when the CTranslate2 vocabulary has it (M2M100);
    # Marian's conversion drops <pad> from the vocabulary, so there is nothing to suppress.
    if pad_token and pad_token in vocab and [pad_token] not in suppress:
        suppress.append([pad_token])
    out: dict[str, Any] = {
        "beam_size": int(pick("num_beams", 1)),
        "max_decoding_length": int(max_len),
        "length_penalty": float(pick("length_penalty", 1.0)),
        "suppress_sequences": suppress,
    }
    rep = pick("repetition_penalty", 1.0)
    if rep not in (None, 1, 1.0):
        out["repetition_penalty"] = float(rep)
    nrep = pick("no_repeat_ngram_size", 0)
    if nrep:
        out["no_repeat_ngram_size"] = int(nrep)
    return out


def _ct2_vocabulary(folder: Path) -> set[str]:
    for name in ("shared_vocabulary.json", "target_vocabulary.json", "vocabulary.json"):
        path = folder / name
        if path.is_file():
            return set(json.loads(path.read_text(encoding="utf-8")))
    for name in ("shared_vocabulary.txt", "target_vocabulary.txt", "vocabulary.txt"):
        path = folder / name
        if path.is_file():
            return set(path.read_text(encoding="utf-8").splitlines())
    raise ConversionError(f"no vocabulary file in the converted folder {folder}")


def _ct2_convert(model_dir: Path, out: Path, quantization: str, converter: Converter,
                 trust_remote_code: bool, copy_files: Sequence[str]) -> None:
    from ctranslate2.converters import TransformersConverter

    class _Converter(TransformersConverter):
        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            tokenizer = super().load_tokenizer(tokenizer_class, model_name_or_path, **kwargs)
            return converter.patch_tokenizer(tokenizer)

    try:
        _Converter(str(model_dir), copy_files=list(copy_files) or None,
                   trust_remote_code=trust_remote_code).convert(
            str(out), quantization=quantization, force=True)
    except (ValueError, NotImplementedError, RuntimeError, OSError, KeyError) as exc:
        raise ConversionError(f"CTranslate2 could not convert {model_dir}: {exc}") from exc


def convert_model(
    model: str | Path,
    output_dir: str | Path,
    *,
    quantization: str = "int8",
    revision: str | None = None,
    force: bool = False,
    verify: bool = True,
    trust_remote_code: bool = False,
    verification_sentences: Sequence[str] | None = None,
    source_lang: str | None = None,
    target_lang: str | None = None,
    local_files_only: bool | None = None,
    min_token_agreement: float | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> ConversionResult:
    """Convert an HF translation model or decoder-only LLM to a verified CTranslate2 folder.

    Translation models (Marian, M2M100/NLLB) get manifest ``kind = "translation"`` and are
    checked with ``Translator.translate_batch``; decoder LLMs (Llama, Mistral, Qwen2/3,
    Gemma 1/2/3; see :func:`supported_architectures`) get ``kind = "generation"``, their
    tokenizer and chat template copied, and are checked with ``Generator.generate_batch`` on
    chat-formatted prompts.

    Args:
        model: a local HF model folder or a hub id (``"Helsinki-NLP/opus-mt-en-de"``,
            ``"HuggingFaceTB/SmolLM2-135M-Instruct"``).
        output_dir: the folder to create (model.bin, vocabulary, tokenizer files,
            ``instructmill.json``).
        quantization: weight type, one of :data:`QUANTIZATIONS`.
        revision: hub branch/tag/commit (hub ids only).
        force: replace an existing output folder (only one that is empty or holds a converted
            model).
        verify: compare with transformers greedy output (see :mod:`~.verify`). ``False`` writes
            ``verification.passed = null``; loaders then refuse the model unless told otherwise.
        trust_remote_code: allow models whose config needs custom code (``auto_map``); that code
            runs during conversion. Refused by default.
        verification_sentences: sentences to verify on (default:
            :data:`~.verify.DEFAULT_SENTENCES`).
        source_lang, target_lang: language codes; recorded in the manifest and used for
            multilingual models (M2M100/NLLB language tokens, OPUS-MT ``>>xx<<`` tokens). For
            ``opus-mt-xx-yy`` names they are parsed from the name when not given.
        local_files_only: hub ids from the local HF cache only; ``None`` follows HF_HUB_OFFLINE.
        min_token_agreement: lowest token agreement with float32 accepted for quantized types
            (0..1; teacher-forced top-1 for decoder LLMs); ``None``: the calibrated
            ``LIMITS[kind]`` of :mod:`~.fidelity`, whose other limits apply either way.
        max_new_tokens: output limit per verification sentence.

    Returns:
        :class:`ConversionResult`.

    Raises:
        OptionError: invalid ``quantization``, ``min_token_agreement`` or ``max_new_tokens``.
        ModelNotFoundError: the folder or hub id cannot be found or fetched (offline hub
            included); the message says how to pass a local folder.
        ConversionError: unsupported architecture (lists the supported ones), custom code
            without ``trust_remote_code``, output folder exists without ``force``, or
            CTranslate2 failed.
        VerificationError: the converted model's output differs from transformers (float32 not
            identical), or a quantized model strays too far from float32 (see
            :mod:`~.fidelity`; the message names ``--quantization float32``). The output folder
            is still written, with ``verification.passed = false`` and the reason.
    """
    started = time.perf_counter()
    if quantization not in QUANTIZATIONS:
        raise OptionError("quantization", quantization,
                          f"must be one of {', '.join(QUANTIZATIONS)}")
    if min_token_agreement is not None and not 0.0 <= float(min_token_agreement) <= 1.0:
        raise OptionError("min_token_agreement", min_token_agreement, "must be between 0 and 1")
    if int(max_new_tokens) < 1:
        raise OptionError("max_new_tokens", max_new_tokens, "must be at least 1")
    sentences = list(verification_sentences or DEFAULT_SENTENCES)
    if not all(isinstance(s, str) and s.strip() for s in sentences):
        raise OptionError("verification_sentences", verification_sentences,
                          "must be non-empty strings")

    output = Path(output_dir).expanduser().absolute()
    _check_output(output, force)  # before any download
    resolved: ResolvedModel = resolve_model(model, revision=revision,
                                            local_files_only=local_files_only)
    model_dir = resolved.path
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConversionError(f"cannot read {model_dir / 'config.json'}: {exc}") from exc
    converter = find_converter(config, where=resolved.source)
    if config.get("auto_map") and not trust_remote_code:
        raise ConversionError(
            f"{resolved.source} needs custom code from the model repository (config.json has "
            "'auto_map'); that code would run on this machine. Pass trust_remote_code=True "
            "(--trust-remote-code) only if you trust its authors")
    _check_output(output, force, model_dir)

    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir),
                                                  trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        raise ConversionError(f"cannot load the tokenizer of {resolved.source}: {exc}") from exc

    languages = converter.languages(resolved.source, model_dir, source_lang, target_lang)
    tokenizer_entry = converter.tokenizer_manifest(tokenizer, languages)  # checks language codes
    copy_files = [n for n in converter.tokenizer_files if (model_dir / n).is_file()]
    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.converting-", dir=output.parent))
    try:
        staged = work / "model"
        _ct2_convert(model_dir, staged, quantization, converter, trust_remote_code, copy_files)
        vocab = _ct2_vocabulary(staged)
        decoding = converter.decoding(model_dir, config, vocab, tokenizer)
        if decoding is None:
            decoding = _decoding(model_dir, config, vocab, tokenizer,
                                 getattr(tokenizer, "pad_token", None))
        converter.finalize_output(model_dir, staged, tokenizer)
        manifest: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "kind": converter.kind,
            "architecture": (config.get("architectures") or [converter.architectures[0]])[0],
            "source": resolved.source,
            "revision": resolved.revision,
            "quantization": quantization,
            "tokenizer": tokenizer_entry,
            "languages": languages,
            "decoding": decoding,
            "max_input_tokens": converter.max_input_tokens(config),
            "verification": {"passed": None, "reference": None,
                             "detail": "not verified (verify=False)"},
            "versions": _versions(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")
            .replace("+00:00", "Z"),
        }
        report = None
        if verify:
            report = _verify(model_dir, staged, work, converter, tokenizer, sentences, languages,
                             decoding, quantization, trust_remote_code, min_token_agreement,
                             int(max_new_tokens))
            manifest["verification"] = report.to_manifest()
        write_manifest(staged, manifest)
        if output.exists():
            shutil.rmtree(output)
        staged.replace(output)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    if report is not None and not report.passed:
        advice = ""
        if quantization != "float32" and report.float32_exact_matches == report.sentences:
            advice = f" Instead, {refusal_advice(quantization)}."
        raise VerificationError(
            f"refusing the conversion of {resolved.source}: {report.detail}.{advice} The folder "
            f"{output} is marked as failed (verification.passed = false) and will not be loaded")
    return ConversionResult(output_dir=output, manifest=manifest, verification=report,
                            model_dir=model_dir, seconds=time.perf_counter() - started)


def _verify(model_dir: Path, staged: Path, work: Path, converter: Converter, tokenizer: Any,
            sentences: list[str], languages: dict | None, decoding: dict[str, Any],
            quantization: str, trust_remote_code: bool, min_agreement: float | None,
            max_new_tokens: int) -> VerificationReport:
    """Float32: exact match with transformers required. Quantized: the float32 conversion
    exact, and the quantized model within ``LIMITS[kind]`` of it (:func:`~.fidelity.measure`)."""
    ref = reference_outputs(model_dir, converter, tokenizer, sentences, languages,
                            decoding=decoding, max_new_tokens=max_new_tokens,
                            trust_remote_code=trust_remote_code)
    langs = ref.batch.languages or None
    if quantization == "float32":
        exact = compare_ct2(staged, ref, "float32")
        passed = exact.exact_matches == exact.sentences
        detail = (f"float32: {exact.exact_matches}/{exact.sentences} sentences identical to "
                  "transformers greedy output")
        if not passed:
            detail += " (float32 must match exactly); " + "; ".join(exact.mismatches)
        return VerificationReport(passed=passed, compute_type="float32",
                                  sentences=exact.sentences, exact_matches=exact.exact_matches,
                                  token_agreement=exact.token_agreement, detail=detail,
                                  float32_exact_matches=exact.exact_matches, languages=langs)

    f32_dir = work / "float32"
    _ct2_convert(model_dir, f32_dir, "float32", converter, trust_remote_code, ())
    exact = compare_ct2(f32_dir, ref, "float32")
    compute_type = cpu_compute_type(quantization)
    limits: Limits = LIMITS[converter.kind]
    if min_agreement is not None:
        limits = replace(limits, min_token_agreement=float(min_agreement))
    fid = measure(f32_dir, staged, compute_type, fidelity_inputs(ref))
    f32_ok = exact.exact_matches == exact.sentences
    problems = fid.problems(limits)
    parts = [f"float32 conversion: {exact.exact_matches}/{exact.sentences} sentences identical "
             "to transformers greedy output"
             + ("" if f32_ok else " (must be all; " + "; ".join(exact.mismatches) + ")"),
             f"{quantization} (compute type {compute_type}) {fid.summary()}"
             + (" - too far: " + "; ".join(problems + list(fid.differences[:2]))
                if problems else "")]
    return VerificationReport(passed=f32_ok and not problems, compute_type=compute_type,
                              sentences=fid.sentences, exact_matches=fid.exact_matches,
                              token_agreement=fid.token_agreement, detail="; ".join(parts),
                              float32_exact_matches=exact.exact_matches,
                              min_token_agreement=limits.min_token_agreement, languages=langs,
                              reference="float32", fidelity=fid.to_dict(),
                              limits=asdict(limits))
