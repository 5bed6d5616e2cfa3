"""GGUF -> Hugging Face folder (de-quantized safetensors), verified against the GGUF itself.

A GGUF file (llama.cpp's format: weights, often quantized, plus tokenizer and chat template as
metadata) is loaded by transformers (``from_pretrained(folder, gguf_file=...)``, which
de-quantizes every tensor to float32; needs the ``gguf`` package). That model cannot be saved as
is (``save_pretrained`` fails: its GGUF quantization config is "not serializable"), so
:func:`gguf_to_hf` rebuilds the model from the config without ``quantization_config``, loads the
de-quantized state dict into it and saves a plain HF folder: ``config.json``,
``model.safetensors`` (float32), ``generation_config.json`` (bos, eos, pad ids; every GGUF end
token: eos, eot, eom), ``tokenizer.json``, ``tokenizer_config.json`` (chat template included;
class ``PreTrainedTokenizerFast`` so transformers 4 and 5 both read it) and
``chat_template.jinja``. vLLM, transformers and CTranslate2 read that folder.

Verification (on by default): the saved folder is loaded again and compared with the model
transformers built from the GGUF: every tensor bit for bit, the tokenization of the
verification prompts (chat-formatted), and greedy ``generate`` output token for token. The
result is written to ``instructmill_source.json`` next to the weights (source path, sha256,
GGUF architecture and tensor types, verification).

Work happens in a temporary sibling folder that is renamed into place at the end, so an
interrupted conversion never leaves a half-written folder under the output name.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import ConversionError, ModelNotFoundError, VerificationError

__all__ = ["gguf_to_hf", "read_gguf_info", "SOURCE_RECORD", "SOURCE_FORMAT"]

#: Written next to the weights of a converted folder.
SOURCE_RECORD = "instructmill_source.json"
SOURCE_FORMAT = "instructmill-gguf/1"
#: Verification prompts (chat-formatted when the GGUF has a chat template).
_PROMPTS: tuple[str, ...] = (
    "Give three tips for staying healthy.",
    "Please write a short summary of the article below.",
    "What is the capital of France?",
)
#: Files of a converted folder; an existing output is replaced only when it looks like one.
_HF_FILES = ("config.json", "model.safetensors", SOURCE_RECORD)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def read_gguf_info(gguf_path: str | Path) -> dict[str, Any]:
    """Metadata of a GGUF file without loading its weights.

    Returns ``{"architecture", "name", "file_type", "tensor_types": {type: count},
    "bos_token_id", "eos_token_ids": [...], "pad_token_id", "chat_template": bool}``.

    Raises:
        ModelNotFoundError: the file does not exist.
        ConversionError: it is not a GGUF file (or the ``gguf`` package is missing).
    """
    path = Path(gguf_path)
    if not path.is_file():
        raise ModelNotFoundError(f"GGUF file {path} does not exist")
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ConversionError(f"{path} is not a GGUF file (no GGUF magic bytes)")
    try:
        import gguf
    except ImportError as exc:
        raise ConversionError("reading GGUF files needs the 'gguf' package "
                              "(pip install gguf accelerate)") from exc
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError) as exc:
        raise ConversionError(f"cannot read GGUF file {path}: {exc}") from exc

    def field(name: str) -> Any:
        f = reader.fields.get(name)
        if f is None:
            return None
        try:
            return f.contents()
        except Exception:  # noqa: BLE001 - odd field types: treat as absent
            return None

    eos = [field(f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")]
    return {
        "architecture": field("general.architecture"),
        "name": field("general.name"),
        "file_type": field("general.file_type"),
        "tensor_types": dict(Counter(t.tensor_type.name for t in reader.tensors)),
        "bos_token_id": field("tokenizer.ggml.bos_token_id"),
        "eos_token_ids": list(dict.fromkeys(int(e) for e in eos if e is not None)),
        "pad_token_id": field("tokenizer.ggml.padding_token_id"),
        "chat_template": field("tokenizer.chat_template") is not None,
    }


def _check_output(output: Path, force: bool) -> None:
    if not output.exists():
        return
    if not output.is_dir():
        raise ConversionError(f"output {output} exists and is not a folder")
    if not force:
        raise ConversionError(f"output folder {output} already exists; pass force=True to "
                              "replace it")
    if any(output.iterdir()) and not any((output / n).exists() for n in _HF_FILES):
        raise ConversionError(f"refusing to replace {output}: it is not empty and does not look "
                              "like a converted model folder")


def _portable_tokenizer_config(folder: Path, template: str | None, max_len: int | None) -> None:
    """Make ``tokenizer_config.json`` readable by transformers 4 and 5 and keep the template."""
    path = folder / "tokenizer_config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("tokenizer_class") in (None, "TokenizersBackend"):
        data["tokenizer_class"] = "PreTrainedTokenizerFast"
    for key in ("is_local", "local_files_only"):
        data.pop(key, None)
    if template and not data.get("chat_template"):
        data["chat_template"] = template
    if max_len and (not isinstance(data.get("model_max_length"), int)
                    or data["model_max_length"] > max_len):
        data["model_max_length"] = int(max_len)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _greedy(model: Any, ids: list[list[int]], eos: list[int], pad: int | None,
            max_new_tokens: int) -> list[list[int]]:
    import torch
    from transformers import GenerationConfig

    gc = GenerationConfig(eos_token_id=eos or None, pad_token_id=pad, do_sample=False,
                          num_beams=1, max_new_tokens=max_new_tokens)
    out = []
    with torch.inference_mode():
        for row in ids:
            x = torch.tensor([row], dtype=torch.long)
            seq = model.generate(input_ids=x, attention_mask=torch.ones_like(x),
                                 generation_config=gc)
            out.append(seq[0, len(row):].tolist())
    return out


def _verify(original: Any, gguf_tokenizer: Any, folder: Path, prompts: Sequence[str],
            eos: list[int], pad: int | None, max_new_tokens: int) -> dict[str, Any]:
    """Compare the saved folder with the model transformers built from the GGUF."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .decoder import prompt_ids

    saved = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    saved_tok = AutoTokenizer.from_pretrained(str(folder))
    want_sd, got_sd = original.state_dict(), saved.state_dict()
    if set(want_sd) != set(got_sd):
        diff = sorted(set(want_sd) ^ set(got_sd))[:5]
        raise VerificationError(f"saved model has different tensors than the GGUF model: {diff}")
    for name, tensor in want_sd.items():
        if not torch.equal(tensor, got_sd[name]):
            raise VerificationError(f"tensor {name} differs after saving")
    want_ids = [prompt_ids(gguf_tokenizer, p) for p in prompts]
    got_ids = [prompt_ids(saved_tok, p) for p in prompts]
    if want_ids != got_ids:
        bad = next(i for i, (a, b) in enumerate(zip(want_ids, got_ids)) if a != b)
        raise VerificationError(f"saved tokenizer tokenizes prompt {bad + 1} differently "
                                "from the GGUF tokenizer")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        want = _greedy(original.eval(), want_ids, eos, pad, max_new_tokens)
        got = _greedy(saved, got_ids, eos, pad, max_new_tokens)
    finally:
        torch.set_num_threads(threads)
    if want != got:
        bad = next(i for i, (a, b) in enumerate(zip(want, got)) if a != b)
        raise VerificationError(f"greedy output of prompt {bad + 1} differs between the GGUF "
                                "model and the saved folder")
    return {"passed": True, "reference": "transformers (GGUF loaded with gguf_file=)",
            "tensors_identical": len(want_sd), "prompts": len(prompts),
            "max_new_tokens": max_new_tokens,
            "detail": f"{len(want_sd)} tensors bit-identical; tokenization and greedy output "
                      f"({max_new_tokens} new tokens) identical on {len(prompts)} prompts"}


def gguf_to_hf(
    gguf_path: str | Path,
    out_dir: str | Path,
    *,
    force: bool = False,
    verify: bool = True,
    verification_prompts: Sequence[str] | None = None,
    max_new_tokens: int = 16,
) -> Path:
    """Convert a GGUF file to a de-quantized HF folder (float32 safetensors); return its path.

    Args:
        gguf_path: the ``.gguf`` file (any type transformers de-quantizes: F32, F16, Q8_0,
            Q4_0, Q4_1, Q4_K, ...). Architectures: those transformers reads from GGUF (llama,
            mistral, qwen2, qwen3, gemma2/3, phi3, ...).
        out_dir: the folder to create.
        force: replace an existing ``out_dir`` (only one that is empty or holds a converted
            model).
        verify: compare the saved folder with the GGUF model (see the module docstring).
        verification_prompts: prompts to verify on (default: three short instructions).
        max_new_tokens: greedy output length compared per prompt.

    Returns:
        ``Path(out_dir)`` (absolute).

    Raises:
        ModelNotFoundError: ``gguf_path`` does not exist.
        ConversionError: not a GGUF file, an architecture transformers cannot read from GGUF,
            ``gguf``/``accelerate`` missing, or ``out_dir`` exists without ``force``.
        VerificationError: the saved folder differs from the GGUF model (nothing is written).
    """
    started = time.perf_counter()
    src = Path(gguf_path).expanduser().absolute()
    output = Path(out_dir).expanduser().absolute()
    info = read_gguf_info(src)
    _check_output(output, force)
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except ImportError:  # pragma: no cover - older/newer transformers layouts
        GGUF_SUPPORTED_ARCHITECTURES = None
    arch = info["architecture"]
    if GGUF_SUPPORTED_ARCHITECTURES is not None and arch not in GGUF_SUPPORTED_ARCHITECTURES:
        supported = ", ".join(a for a in GGUF_SUPPORTED_ARCHITECTURES
                              if a not in ("general", "tokenizer"))
        raise ConversionError(f"transformers cannot load GGUF architecture {arch!r} from {src}; "
                              f"supported: {supported}")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # de-quantization notices
    hf_logging.disable_progress_bar()
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(src.parent), gguf_file=src.name, dtype=torch.float32).eval()
            tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
        except ImportError as exc:
            raise ConversionError(f"loading GGUF files needs 'gguf' and 'accelerate' "
                                  f"(pip install gguf accelerate): {exc}") from exc
        except (ValueError, KeyError, OSError, RuntimeError, NotImplementedError) as exc:
            raise ConversionError(f"transformers could not load {src}: {exc}") from exc

        cfg = model.config.to_dict()
        for key in ("quantization_config", "_model_name_or_path", "_name_or_path"):
            cfg.pop(key, None)
        clean_cfg = type(model.config).from_dict(cfg)
        clean = type(model)(clean_cfg).eval()
        clean.load_state_dict(model.state_dict(), strict=True)
        bos = info["bos_token_id"] if info["bos_token_id"] is not None else clean_cfg.bos_token_id
        eos = info["eos_token_ids"] or ([clean_cfg.eos_token_id]
                                        if clean_cfg.eos_token_id is not None else [])
        pad = info["pad_token_id"] if info["pad_token_id"] is not None else (eos or [None])[0]
        clean.generation_config = GenerationConfig(
            bos_token_id=bos, eos_token_id=eos[0] if len(eos) == 1 else (eos or None),
            pad_token_id=pad)

        output.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{output.name}.converting-", dir=output.parent))
        try:
            staged = work / "model"
            clean.save_pretrained(staged)
            tokenizer.save_pretrained(staged)
            _portable_tokenizer_config(staged, getattr(tokenizer, "chat_template", None),
                                       getattr(clean_cfg, "max_position_embeddings", None))
            record: dict[str, Any] = {
                "format": SOURCE_FORMAT,
                "source": str(src),
                "sha256": sha256_file(src),
                "gguf": info,
                "dtype": "float32",
                "verification": {"passed": None, "detail": "not verified (verify=False)"},
            }
            if verify:
                record["verification"] = _verify(model, tokenizer, staged,
                                                 list(verification_prompts or _PROMPTS),
                                                 eos, pad, int(max_new_tokens))
            import transformers

            record["versions"] = {"transformers": transformers.__version__,
                                  "torch": torch.__version__}
            record["seconds"] = round(time.perf_counter() - started, 2)
            record["created"] = (datetime.now(timezone.utc).isoformat(timespec="seconds")
                                 .replace("+00:00", "Z"))
            (staged / SOURCE_RECORD).write_text(json.dumps(record, indent=2) + "\n",
                                                encoding="utf-8")
            if output.exists():
                shutil.rmtree(output)
            staged.replace(output)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    return output
