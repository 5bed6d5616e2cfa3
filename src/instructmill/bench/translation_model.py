"""The back-translation benchmark's inputs: real English sentences and a MarianMT model.

Two kinds of model:

* **built-in** (``BenchOptions.model`` unset): a MarianMT model of Helsinki-NLP/opus-mt-en-de's
  shape (d_model 512, 6+6 layers, 8 heads, FFN 2048, vocabulary 58,101) with transformers' random
  initialisation (seed 0) and a sentencepiece unigram tokenizer trained on the ShareGPT sentences,
  built offline by :func:`instructmill.testing.build_marian`, converted to CTranslate2 twice
  (int8 for CPU, float32 for CUDA float16) by :func:`instructmill.converters.convert_model` and
  cached under ``<cache_dir>/backtranslation/marian-<recipe hash>``. A build of the same recipe
  left in ``benchmarks/.cache/`` by the old script is reused (hard-linked) instead of rebuilt.
  Random weights give random output lengths, so the benchmark fixes the output length.
* **a user's model** (``BenchOptions.model``): an HF MarianMT folder (converted once into
  ``<cache_dir>/backtranslation/converted/``) or a CTranslate2 folder written by
  ``instructmill convert``. Only sentencepiece (Marian / OPUS-MT) models are accepted: the raw
  engine and HF baselines tokenize the same way instructmill does.

Sentences: the human turns of ``sharegpt_sample.jsonl.gz`` (in ``$INSTRUCTMILL_SHARED/data``,
default ``<checkout>/../shared/data``), cut into prose sentences (:func:`extract_candidates`),
ordered by SHA-256 of their text and kept when they have 5-64 source tokens under the model's
tokenizer (:func:`select_sentences`).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import OptionError
from .env import REPO_ROOT

__all__ = ["TranslationWorkload", "prepare", "extract_candidates", "select_sentences", "sharegpt_path",
           "bench_cache_dir", "RECIPE_VERSION", "MIN_TOKENS", "MAX_TOKENS", "DEFAULT_OUTPUT_LEN"]

#: Bump when the built-in model or the sentence recipe changes (a new cache folder is built).
RECIPE_VERSION = 1
#: Source tokens per kept sentence (``</s>`` included).
MIN_TOKENS, MAX_TOKENS = 5, 64
#: Target tokens per sentence for the built-in model (random weights: the length must be fixed).
DEFAULT_OUTPUT_LEN = 48
_SHAREGPT = "sharegpt_sample.jsonl.gz"
_CODE_CHARS = set("{}<>|\\=_#`@$")

Log = Callable[[str], None]


def sharegpt_path() -> Path:
    """``$INSTRUCTMILL_SHARED/data/sharegpt_sample.jsonl.gz`` (default: ``../shared`` of the checkout)."""
    from .workloads import shared_data_path

    return shared_data_path(_SHAREGPT)


def bench_cache_dir(cache_dir: str | None) -> Path:
    """``cache_dir`` or the runner's default ``<INSTRUCTMILL_CACHE or ~/.cache/instructmill>/bench`` (created)."""
    from .runner import default_cache_dir

    root = Path(cache_dir) if cache_dir else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    return root


def _sha(data: str | bytes) -> str:
    return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()


def extract_candidates(path: Path) -> list[str]:
    """Distinct English prose sentences from the human turns of a ShareGPT ``.jsonl.gz``, in file order.

    Each human turn is cut into lines (code fences skipped), each line into sentences with
    instructmill's pysbd splitter. A sentence is kept when it looks like prose: 20-400 ASCII
    characters, starts upper-case, ends with ``.``, ``?`` or ``!``, has at least four words and
    no code-like characters. Unreadable lines are skipped (this is benchmark input, not user data).
    """
    from ..methods.segmentation import split_sentences

    seen: set[str] = set()
    out: list[str] = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            try:
                conv = json.loads(line)
            except ValueError:
                continue
            for turn in (conv.get("conversations") or []) if isinstance(conv, dict) else []:
                if not isinstance(turn, dict) or turn.get("from") != "human" \
                        or not isinstance(turn.get("value"), str):
                    continue
                in_fence = False
                for raw in turn["value"].splitlines():
                    text = raw.strip()
                    if text.startswith(("```", "~~~")):
                        in_fence = not in_fence
                        continue
                    if in_fence or not 20 <= len(text) <= 2000 or not text.isascii():
                        continue
                    for start, end in split_sentences(text):
                        sent = " ".join(text[start:end].split())
                        if (20 <= len(sent) <= 400 and sent[0].isupper() and sent[-1] in ".?!"
                                and len(sent.split()) >= 4 and not (_CODE_CHARS & set(sent))
                                and sent not in seen):
                            seen.add(sent)
                            out.append(sent)
    return out


def select_sentences(candidates: list[str], count_tokens: Callable[[list[str]], list[int]],
                     n: int, *, source: str = _SHAREGPT) -> list[str]:
    """The first ``n`` candidates of MIN_TOKENS..MAX_TOKENS source tokens, ordered by SHA-256 of the text.

    The order is deterministic and spread over all conversations.

    Raises:
        OptionError: fewer than ``n`` sentences qualify (``num_prompts`` too large for the data).
    """
    ordered = sorted(candidates, key=_sha)
    lengths = count_tokens(ordered)
    picked = [s for s, k in zip(ordered, lengths) if MIN_TOKENS <= k <= MAX_TOKENS][:n]
    if len(picked) < n:
        raise OptionError("num_prompts", n, f"only {len(picked)} sentences of {MIN_TOKENS}-{MAX_TOKENS} "
                                            f"source tokens in {source}")
    return picked


def _candidates(root: Path, data: Path, data_sha: str, log: Log) -> list[str]:
    path = root / f"candidates-{data_sha}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    candidates = extract_candidates(data)
    _write_atomic(path, json.dumps(candidates, ensure_ascii=False))
    log(f"[backtranslation] {len(candidates)} candidate sentences from {data.name} "
        f"({time.perf_counter() - t0:.1f} s, cached)")
    return candidates


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


@dataclass
class TranslationWorkload:
    """Everything the engines need, prepared once per run.

    Attributes:
        ct2_dir: CTranslate2 folder the CPU engines load (int8 for the built-in model).
        ct2_cuda_dir: CTranslate2 folder the CUDA engines load as float16 (float32 when built here).
        hf_dir: HF MarianMT folder for the transformers baselines; ``None`` when there is none
            (a CTranslate2 folder whose source is not a local HF folder).
        sentences: the source sentences, in timing order.
        tokens: their source pieces + ``</s>``, exactly as instructmill's backend encodes them.
        output_len: fixed target tokens per sentence, or ``None`` (the model's natural lengths).
        model: the model's description (recipe or path, and shape) for ``comparable``.
        data: ``{"dataset", "data_sha256"}`` of the ShareGPT file.
        build_seconds: seconds spent building / converting / extracting this run (0.0 when all
            came from the cache: a warm start).
    """

    ct2_dir: Path
    ct2_cuda_dir: Path
    hf_dir: Path | None
    sentences: list[str]
    tokens: list[list[str]]
    output_len: int | None
    model: dict[str, Any]
    data: dict[str, Any]
    build_seconds: float = 0.0

    @property
    def source_tokens(self) -> int:
        return sum(len(t) for t in self.tokens)

    def describe(self) -> dict[str, Any]:
        """Sentence statistics (count, SHA-256 prefix, source tokens total / mean / max)."""
        lens = [len(t) for t in self.tokens]
        return {"sentences": len(self.sentences), "sentences_sha256": _sha("\n".join(self.sentences))[:16],
                "source_tokens": sum(lens), "source_tokens_mean": round(statistics.mean(lens), 2),
                "source_tokens_max": max(lens)}

    def target_spm(self):
        """The target-side ``SentencePieceProcessor`` (detokenizes every engine's pieces alike)."""
        import sentencepiece as spm

        return spm.SentencePieceProcessor(model_file=str(self.ct2_dir / _spm_name(self.ct2_dir, "target")))


def _spm_name(folder: Path, side: str) -> str:
    try:
        manifest = json.loads((folder / "instructmill.json").read_text(encoding="utf-8"))
        return (manifest.get("tokenizer") or {}).get(f"{side}_spm") or f"{side}.spm"
    except (OSError, ValueError):
        return f"{side}.spm"


def prepare(*, n: int, output_len: int | None, model: str | None, device: str, cache_dir: str | None,
            log: Log) -> TranslationWorkload:
    """Build or load (from the cache) the model, its conversions and the ``n`` sentences.

    Args:
        n: sentences to time.
        output_len: fixed target tokens per sentence; ``None``: 48 for the built-in model, the
            model's natural lengths for a user's model.
        model: ``None`` (built-in) or a path to an HF MarianMT folder or a CTranslate2 folder.
        device: ``"cpu"`` or ``"cuda"`` (which conversions are needed).
        cache_dir: ``BenchOptions.cache_dir``.
        log: progress lines.

    Raises:
        OptionError: the model path is missing or not a sentencepiece (Marian) translation model;
            too few sentences; the ShareGPT file is missing.
        ConversionError / VerificationError: converting the user's HF folder failed.
    """
    data = sharegpt_path()
    if not data.is_file():
        raise OptionError("dataset", str(data), "the ShareGPT sample is missing (set INSTRUCTMILL_SHARED "
                                                "to the folder holding data/" + _SHAREGPT + ")")
    root = bench_cache_dir(cache_dir) / "backtranslation"
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data_sha = _sha(data.read_bytes())[:16]
    built = [False]
    if model is None:
        folder, recipe = _builtin_model(root, data, data_sha, log, built)
        ct2_dir, cuda_dir, hf_dir = folder / "ct2-int8", folder / "ct2-float32", folder / "hf"
        described = {"kind": "built-in", "shape": "opus-mt-en-de", **recipe}
        out_len = output_len or DEFAULT_OUTPUT_LEN
    else:
        ct2_dir, cuda_dir, hf_dir, described = _user_model(root, model, device, log, built)
        out_len = output_len
    cands_path = root / f"candidates-{data_sha}.json"
    built[0] = built[0] or not cands_path.is_file()
    candidates = _candidates(root, data, data_sha, log)
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(ct2_dir / _spm_name(ct2_dir, "source")))
    prefix, suffix = _affixes(ct2_dir)

    def encode(texts: list[str]) -> list[list[str]]:
        return [prefix + p + suffix for p in sp.encode(texts, out_type=str)]

    sentences = select_sentences(candidates, lambda texts: [len(t) for t in encode(texts)], n,
                                 source=str(data))
    return TranslationWorkload(
        ct2_dir=ct2_dir, ct2_cuda_dir=cuda_dir, hf_dir=hf_dir, sentences=sentences,
        tokens=encode(sentences), output_len=out_len, model=described,
        data={"dataset": _SHAREGPT, "data_sha256": data_sha},
        build_seconds=round(time.perf_counter() - t0, 1) if built[0] else 0.0)


def _affixes(ct2_dir: Path) -> tuple[list[str], list[str]]:
    manifest = json.loads((ct2_dir / "instructmill.json").read_text(encoding="utf-8"))
    tok = manifest.get("tokenizer") or {}
    return list(tok.get("source_prefix") or []), list(tok.get("source_suffix") or ["</s>"])


# --------------------------------------------------------------------------- built-in model

def _builtin_model(root: Path, data: Path, data_sha: str, log: Log, built: list[bool]) -> tuple[Path, dict]:
    from ..testing import OPUS_MT_EN_DE_SHAPE

    # The recipe dict (and so the key) is the one the old benchmarks/bench_backtranslation.py
    # used, so a build it left in benchmarks/.cache is found and reused.
    recipe = {"recipe": RECIPE_VERSION, "shape": "opus-mt-en-de", **OPUS_MT_EN_DE_SHAPE,
              "weights": "random", "seed": 0, "tokenizer": "sentencepiece unigram trained on ShareGPT",
              "data_sha256": data_sha}
    key = _sha(json.dumps(recipe, sort_keys=True))[:12]
    folder = root / f"marian-{key}"
    if (folder / "done.json").is_file():
        return folder, {**recipe, "cache_key": key}
    built[0] = True
    legacy = REPO_ROOT / "benchmarks" / ".cache" / f"marian-{key}"
    if (legacy / "done.json").is_file() and _import_legacy(legacy, folder, root, data_sha):
        log(f"[backtranslation] reused the old script's build {legacy} -> {folder}")
        return folder, {**recipe, "cache_key": key}
    _build(folder, root, data, data_sha, recipe, log)
    return folder, {**recipe, "cache_key": key}


def _import_legacy(legacy: Path, folder: Path, root: Path, data_sha: str) -> bool:
    """Hard-link (else copy) a build of the same recipe from ``benchmarks/.cache``; False on failure."""
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    try:
        for sub in ("hf", "ct2-int8", "ct2-float32"):
            shutil.copytree(legacy / sub, tmp / sub, copy_function=link)
        for sub in ("ct2-int8", "ct2-float32"):  # point the manifests at the new HF folder
            manifest_path = tmp / sub / "instructmill.json"
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            manifest["source"] = str(folder / "hf")
            manifest_path.unlink()  # a hard link: never write through it into the old build
            manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        cands = root / f"candidates-{data_sha}.json"
        if (legacy / "candidates.json").is_file() and not cands.is_file():
            shutil.copy2(legacy / "candidates.json", cands)
        shutil.copy2(legacy / "done.json", tmp / "done.json")
        os.replace(tmp, folder)
        return True
    except (OSError, ValueError):
        shutil.rmtree(tmp, ignore_errors=True)
        return False


def _build(folder: Path, root: Path, data: Path, data_sha: str, recipe: dict, log: Log) -> None:
    from ..converters import convert_model
    from ..testing import OPUS_MT_EN_DE_SHAPE, build_marian

    _quiet_transformers()
    candidates = _candidates(root, data, data_sha, log)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_marian(tmp / "hf", **OPUS_MT_EN_DE_SHAPE, weights="random", seed=recipe["seed"],
                     corpus=candidates)
    log(f"[backtranslation] built the HF MarianMT folder, opus-mt-en-de shape, random weights "
        f"({time.perf_counter() - t0:.1f} s)")
    for quant in ("int8", "float32"):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = convert_model(tmp / "hf", tmp / f"ct2-{quant}", quantization=quant, force=True,
                                source_lang="en", target_lang="de")
        log(f"[backtranslation] convert_model {quant}: "
            f"{res.verification.detail if res.verification else '-'} ({time.perf_counter() - t0:.1f} s)")
    for quant in ("int8", "float32"):  # the manifests name the HF folder where it will live
        path = tmp / f"ct2-{quant}" / "instructmill.json"
        manifest = json.loads(path.read_text(encoding="utf-8"))
        manifest["source"] = str(folder / "hf")
        path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    (tmp / "done.json").write_text(json.dumps(recipe, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


# --------------------------------------------------------------------------- a user's model

def _is_ct2(path: Path) -> bool:
    return (path / "model.bin").is_file() and (path / "config.json").is_file()


def _user_model(root: Path, model: str, device: str, log: Log,
                built: list[bool]) -> tuple[Path, Path, Path | None, dict[str, Any]]:
    path = Path(model).expanduser()
    if not path.is_dir():
        raise OptionError("model", model, "must be a local HF MarianMT folder or a CTranslate2 folder "
                                          "(no model hub here)")
    path = path.resolve()
    if _is_ct2(path):
        from ..converters import read_manifest

        manifest = read_manifest(path)  # ConversionError: not written by `instructmill convert`
        if manifest.get("kind") != "translation" or (manifest.get("tokenizer") or {}).get("type") != "sentencepiece":
            raise OptionError("model", model, "the back-translation benchmark takes MarianMT / OPUS-MT "
                                              "(sentencepiece) translation models; this manifest says "
                                              f"kind={manifest.get('kind')!r}, tokenizer="
                                              f"{(manifest.get('tokenizer') or {}).get('type')!r}")
        source = Path(str(manifest.get("source") or ""))
        hf_dir = source if source.is_dir() and (source / "config.json").is_file() else None
        described = {"kind": "ctranslate2", "path": str(path), "quantization": manifest.get("quantization"),
                     "model_bin_bytes": (path / "model.bin").stat().st_size,
                     **(_shape(hf_dir / "config.json") if hf_dir else {})}
        return path, path, hf_dir, described
    config_path = path / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OptionError("model", model, f"neither a CTranslate2 folder nor an HF folder with a "
                                          f"readable config.json ({exc})") from exc
    if config.get("model_type") != "marian":
        raise OptionError("model", model, f"the back-translation benchmark takes MarianMT / OPUS-MT models; "
                                          f"config.json says model_type={config.get('model_type')!r}")
    stamp = "|".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                     for p in sorted(path.iterdir()) if p.is_file())
    digest = _sha(f"{path}|{stamp}")[:12]
    folders = {}
    for quant in ("float32",) if device == "cuda" else ("int8",):  # CUDA loads float32 as float16
        out = root / "converted" / f"{path.name}-{quant}-{digest}"
        if not (out / "instructmill.json").is_file():
            from ..converters import convert_model

            built[0] = True
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                convert_model(path, out, quantization=quant, force=True)
            log(f"[backtranslation] converted {path} to CTranslate2 {quant} ({time.perf_counter() - t0:.1f} s)")
        folders[quant] = out
    only = next(iter(folders.values()))
    described = {"kind": "hf", "path": str(path), **_shape(config_path)}
    return only, only, path, described


def _shape(config_path: Path) -> dict[str, Any]:
    """The shape fields of an HF Marian ``config.json`` ({} where unreadable)."""
    try:
        cfg = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    keys = ("d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads", "encoder_ffn_dim",
            "vocab_size", "max_position_embeddings")
    return {k: cfg[k] for k in keys if k in cfg}
