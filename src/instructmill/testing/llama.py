"""Build small decoder-only LLMs (Llama, Qwen2, Mistral, Gemma, Qwen3) offline, and GGUF files.

:func:`build_llama` writes an HF folder the way a real chat model ships one: ``config.json``,
``model.safetensors``, ``generation_config.json``, and a byte-level BPE ``tokenizer.json`` (trained
on the fly with ``tokenizers``) wrapped in ``PreTrainedTokenizerFast`` with a ChatML chat template.
The special tokens follow SmolLM2-135M-Instruct: ``<|endoftext|>`` = 0 (unk), ``<|im_start|>`` = 1
(bos), ``<|im_end|>`` = 2 (eos and pad); the tokenizer adds no BOS (the chat template writes the
markers).

Random weights give random output. Two things make it usable for equality tests: the weights are
drawn with a large standard deviation (``init_std``, default 0.25 instead of 0.02), so logits are
spread out (no near-ties that float rounding could flip) and the greedy continuation depends on the
prompt; and the output embedding rows of the special tokens are scaled down, so EOS is not the
first token produced. Greedy outputs are several tokens long and may repeat a cycle.

:func:`write_gguf` writes a Llama-architecture HF folder as a GGUF file (llama.cpp's tensor names
and q/k row order, as its ``convert_hf_to_gguf.py`` does), in float32 or a GGUF quantized type,
so GGUF -> HF conversion can be tested without downloading a GGUF.

torch, transformers, tokenizers and gguf are imported only when a builder runs.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["build_llama", "write_gguf", "ARCHITECTURES", "CHATML_TEMPLATE", "SPECIAL_TOKENS"]

#: ``architecture`` argument of :func:`build_llama` -> transformers model class name.
ARCHITECTURES: dict[str, str] = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "mistral": "MistralForCausalLM",
    "gemma": "GemmaForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}

#: Special tokens, in id order (ids 0, 1, 2).
SPECIAL_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

#: ChatML, as SmolLM2-Instruct and Qwen2-Instruct use it.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _corpus() -> list[str]:
    from .marian import _ASCII_LINES, default_corpus

    return default_corpus(600) + list(_ASCII_LINES)


def _train_tokenizer(sentences: Sequence[str], vocab_size: int, max_len: int):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with ChatML markers and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # GPT-2's byte-level split: what a GGUF "gpt2" tokenizer (llama.cpp) rebuilds on load.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(list(sentences), trainer=trainer)
    unk, bos, eos = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos,
                                   pad_token=eos, unk_token=unk, chat_template=CHATML_TEMPLATE,
                                   model_max_length=max_len)


def _config(architecture: str, *, vocab_size: int, hidden_size: int, intermediate_size: int,
            layers: int, heads: int, kv_heads: int, max_position_embeddings: int,
            tie_word_embeddings: bool):
    import transformers

    cls_name = {"llama": "LlamaConfig", "qwen2": "Qwen2Config", "mistral": "MistralConfig",
                "gemma": "GemmaConfig", "qwen3": "Qwen3Config"}[architecture]
    kwargs = dict(vocab_size=vocab_size, hidden_size=hidden_size,
                  intermediate_size=intermediate_size, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=kv_heads,
                  max_position_embeddings=max_position_embeddings, bos_token_id=1,
                  eos_token_id=2, pad_token_id=2, tie_word_embeddings=tie_word_embeddings,
                  rms_norm_eps=1e-5)
    if architecture in ("gemma", "qwen3"):
        kwargs["head_dim"] = hidden_size // heads
    if architecture in ("qwen2", "mistral", "qwen3"):
        kwargs["sliding_window"] = None
    return getattr(transformers, cls_name)(**kwargs)


def build_llama(
    out_dir: str | Path,
    *,
    seed: int = 0,
    architecture: str = "llama",
    hidden_size: int = 128,
    intermediate_size: int = 256,
    layers: int = 2,
    heads: int = 2,
    kv_heads: int = 1,
    vocab_size: int = 512,
    max_position_embeddings: int = 512,
    tie_word_embeddings: bool = False,
    init_std: float = 0.25,
    corpus: Sequence[str] | None = None,
) -> Path:
    """Build a small decoder-only chat model folder in ``out_dir``; return its path.

    Args:
        out_dir: folder to write (created; files with the same names are overwritten).
        seed: ``torch.manual_seed`` for the weights (the tokenizer does not depend on it).
        architecture: a key of :data:`ARCHITECTURES` (``"llama"``, ``"qwen2"``, ``"mistral"``,
            ``"gemma"``, ``"qwen3"``).
        hidden_size, intermediate_size, layers, heads, kv_heads, max_position_embeddings: the
            shape (the config fields of the same meaning; ``kv_heads < heads`` is grouped-query
            attention). ``hidden_size`` must be divisible by ``heads``.
        vocab_size: BPE vocabulary size requested from the trainer (the result can be smaller
            when the corpus has fewer merges; the model uses the actual size).
        tie_word_embeddings: share input and output embeddings (as SmolLM2 does).
        init_std: standard deviation of the random weights (see the module docstring).
        corpus: tokenizer training sentences; default: deterministic generated English.

    Returns:
        ``Path(out_dir)`` with config.json, model.safetensors, generation_config.json,
        tokenizer.json, tokenizer_config.json and chat_template.jinja.

    Raises:
        ValueError: unknown ``architecture`` or inconsistent shape.
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {sorted(ARCHITECTURES)}, "
                         f"not {architecture!r}")
    if hidden_size % heads or heads % kv_heads:
        raise ValueError("hidden_size must be divisible by heads, and heads by kv_heads")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(corpus if corpus is not None else _corpus(), vocab_size,
                                 max_position_embeddings)
    cfg = _config(architecture, vocab_size=len(tokenizer), hidden_size=hidden_size,
                  intermediate_size=intermediate_size, layers=layers, heads=heads,
                  kv_heads=kv_heads, max_position_embeddings=max_position_embeddings,
                  tie_word_embeddings=tie_word_embeddings)
    cfg.initializer_range = init_std
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        # Norm weights start at 1 (0 for Gemma's 1 + w form); give them some spread too.
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(torch.randn_like(param) * 0.1)
        # Keep the special tokens (EOS included) out of the first outputs.
        head = model.get_output_embeddings().weight
        head[: len(SPECIAL_TOKENS)] *= 0.1
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# --- GGUF ---------------------------------------------------------------------------------------

def _permute(weights, n_head: int):
    """llama.cpp's q/k row order (``convert_hf_to_gguf.py`` ``LlamaModel.permute``)."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def write_gguf(hf_dir: str | Path, gguf_path: str | Path, *, tensor_type: str = "F32") -> Path:
    """Write the Llama-architecture HF folder ``hf_dir`` as a GGUF file; return its path.

    The tokenizer must be byte-level BPE (as :func:`build_llama` makes): it is stored as a
    ``gpt2`` GGUF tokenizer (tokens, token types, merges, special ids, chat template).

    Args:
        hf_dir: a ``LlamaForCausalLM`` folder.
        gguf_path: the file to write.
        tensor_type: GGUF type of the 2-D weight matrices: ``"F32"`` (exact), ``"F16"``,
            ``"Q8_0"``, ``"Q4_0"`` or ``"Q4_1"`` (norm weights always stay F32, as llama.cpp
            keeps them).

    Raises:
        ValueError: not a Llama model, or an unknown ``tensor_type``.
    """
    import json

    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    hf_dir = Path(hf_dir)
    cfg = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    if cfg.get("model_type") != "llama":
        raise ValueError(f"write_gguf handles Llama models, not {cfg.get('model_type')!r}")
    qtype = getattr(gguf.GGMLQuantizationType, tensor_type, None)
    if qtype is None or tensor_type not in ("F32", "F16", "Q8_0", "Q4_0", "Q4_1"):
        raise ValueError(f"unsupported tensor_type {tensor_type!r}")
    tok = json.loads((hf_dir / "tokenizer.json").read_text(encoding="utf-8"))
    tok_cfg = json.loads((hf_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    chat_file = hf_dir / "chat_template.jinja"
    chat = chat_file.read_text(encoding="utf-8") if chat_file.is_file() else tok_cfg.get(
        "chat_template")

    vocab: dict[str, int] = tok["model"]["vocab"]
    for added in tok.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = {a["content"] for a in tok.get("added_tokens", []) if a.get("special")}
    token_types = [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL
                   for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    n_head = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_head
    hidden = cfg["hidden_size"]

    writer = gguf.GGUFWriter(str(gguf_path), "llama")
    writer.add_name(hf_dir.name)
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(hidden)
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(cfg.get("head_dim") or hidden // n_head)
    rope = (cfg.get("rope_parameters") or {}).get("rope_theta") or cfg.get("rope_theta", 10000.0)
    writer.add_rope_freq_base(float(rope))
    writer.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
    writer.add_vocab_size(cfg["vocab_size"])
    writer.add_file_type({"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7}[tensor_type])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    for key, add in (("bos_token", writer.add_bos_token_id), ("eos_token", writer.add_eos_token_id),
                     ("unk_token", writer.add_unk_token_id),
                     ("pad_token", writer.add_pad_token_id)):
        if tok_cfg.get(key) in vocab:
            add(vocab[tok_cfg[key]])
    writer.add_add_bos_token(False)
    if chat:
        writer.add_chat_template(chat)

    state = load_file(str(hf_dir / "model.safetensors"))
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight":
             "output_norm.weight", "lm_head.weight": "output.weight"}
    parts = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for name, array in state.items():
        array = np.ascontiguousarray(array.astype(np.float32))
        if name in names:
            gname = names[name]
        else:
            _, _, layer, rest = name.split(".", 3)
            part = rest.rsplit(".", 1)[0]
            gname = f"blk.{layer}.{parts[part]}.weight"
            if part == "self_attn.q_proj":
                array = _permute(array, n_head)
            elif part == "self_attn.k_proj":
                array = _permute(array, n_kv)
        if array.ndim == 1 or tensor_type == "F32":
            writer.add_tensor(gname, array)
        elif tensor_type == "F16":
            writer.add_tensor(gname, array.astype(np.float16))
        else:
            writer.add_tensor(gname, gguf.quants.quantize(array, qtype),
                              raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(gguf_path)
