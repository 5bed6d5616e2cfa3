"""Turn model arguments into translation backends.

A model argument is one of:

* ``None`` or ``"embedded"``: the bundled English<->Portuguese Bergamot models (no hub, no conversion);
* a folder written by ``instructmill convert`` (``model.bin`` + ``instructmill.json``);
* a Hugging Face model folder or hub id (e.g. ``Helsinki-NLP/opus-mt-en-de``): converted once to
  CTranslate2 (verified against HF greedy output) into the cache, then used from there.
"""
from __future__ import annotations

from pathlib import Path

from ..engine.translation import TranslationBackend
from ..errors import OptionError

EMBEDDED = "embedded"


def resolve_ct2_model(spec: str, *, quantization: str = "int8", revision: str | None = None) -> str:
    """A CTranslate2 folder for ``spec``: the folder itself, or a cached verified conversion.

    Raises:
        ModelNotFoundError: neither a folder nor a reachable hub id.
        ConversionError / VerificationError: the conversion failed or did not match HF.
    """
    from ..engine.ctranslate2_backend import is_ct2_folder

    if is_ct2_folder(spec):
        return str(spec)
    from .cache import converted_model_dir

    target = converted_model_dir(spec, quantization, revision)
    if is_ct2_folder(target) and (target / "instructmill.json").is_file():
        return str(target)
    from ..converters import convert_model
    from ..engine.logfile import reroute_library_loggers

    reroute_library_loggers(transformers=True)  # a command's conversion logs to its log file, not the console
    convert_model(spec, str(target), quantization=quantization, revision=revision, force=True)
    return str(target)


def load_direction(spec: str | None, source_lang: str, target_lang: str, *, ct2_options=None,
                   allow_unverified: bool = False) -> TranslationBackend:
    """One translation direction from a model argument (see the module docstring)."""
    if spec is None or spec == EMBEDDED:
        from ..engine.bergamot_backend import BergamotBackend

        _refuse_decoding_options(ct2_options)
        return BergamotBackend(source_lang, target_lang)
    from ..engine.ctranslate2_backend import CTranslate2Backend, CTranslate2Options

    options = ct2_options or CTranslate2Options()
    quantization = options.compute_type if options.compute_type not in ("auto", "default") else "int8"
    folder = resolve_ct2_model(spec, quantization=quantization)
    return CTranslate2Backend(folder, source_lang=source_lang, target_lang=target_lang, options=options,
                              allow_unverified=allow_unverified)


#: CTranslate2 options that change what is decoded (not only how fast): the embedded Bergamot
#: engine decodes greedily with fixed limits, so it refuses any of them set to another value.
DECODING_OPTIONS = ("beam_size", "length_penalty", "repetition_penalty", "no_repeat_ngram_size",
                    "max_decoding_length", "decoding_length_ratio", "min_decoding_length", "sampling_topk",
                    "sampling_temperature")


def decoding_settings(ct2_options=None) -> dict:
    """The :data:`DECODING_OPTIONS` of ``ct2_options`` (defaults when ``None``), for fingerprints."""
    from ..engine.ctranslate2_backend import CTranslate2Options

    options = ct2_options or CTranslate2Options()
    return {name: getattr(options, name) for name in DECODING_OPTIONS}


def _refuse_decoding_options(ct2_options) -> None:
    if ct2_options is None:
        return
    from ..engine.ctranslate2_backend import CTranslate2Options

    defaults = decoding_settings(CTranslate2Options())
    for name, value in decoding_settings(ct2_options).items():
        if value != defaults[name] and not (name == "beam_size" and value == 1):
            raise OptionError(name, value, "the embedded models decode greedily with their own engine; "
                              "decoding options apply to CTranslate2 models (--model / --forward-model)")


def load_round_trip(*, model: str | None, forward_model: str | None, backward_model: str | None,
                    source_lang: str, pivot: str, ct2_options=None,
                    allow_unverified: bool = False) -> tuple[TranslationBackend, TranslationBackend]:
    """``(source->pivot, pivot->source)`` backends.

    ``forward_model``/``backward_model`` (a pair of bilingual models, e.g. opus-mt-en-de and
    opus-mt-de-en) take precedence; else ``model`` serves both directions (embedded or a
    multilingual NLLB / M2M100 model).

    Raises:
        OptionError: only one of forward/backward given.
    """
    if (forward_model is None) != (backward_model is None):
        raise OptionError("forward_model/backward_model", (forward_model, backward_model),
                          "give both (source->pivot and pivot->source), or --model for one multilingual model")
    fwd_spec = forward_model if forward_model is not None else model
    bwd_spec = backward_model if backward_model is not None else model
    forward = load_direction(fwd_spec, source_lang, pivot, ct2_options=ct2_options,
                             allow_unverified=allow_unverified)
    backward = load_direction(bwd_spec, pivot, source_lang, ct2_options=ct2_options,
                              allow_unverified=allow_unverified)
    return forward, backward


def describe(spec: str | None) -> str:
    return EMBEDDED if spec in (None, EMBEDDED) else str(Path(spec)) if Path(str(spec)).exists() else str(spec)
