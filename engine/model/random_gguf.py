"""Write genuine GGUF model files (llama.cpp's format) with random weights, for tests and benchmarks.

The GGUF is converted from a checkpoint of engine.model.random_checkpoint, so the same weights and
tokenizer exist in both formats: llama.cpp and the torch engine must then pick the same greedy
tokens. Only what that tiny checkpoint needs is converted: the llama architecture, float32 or
float16 safetensors, a byte-level BPE tokenizer. Needs the `gguf` package. Run as a script:

    python -m engine.model.random_gguf OUT.gguf [--seed 0] [--checkpoint DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

# Hugging Face tensor names -> GGUF tensor names (those of llama.cpp's convert_hf_to_gguf.py).
GLOBAL_TENSORS = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def make_gguf(out_path: str | Path, seed: int = 0) -> Path:
    """A tiny llama GGUF with random weights, a real BPE tokenizer and a ChatML chat template."""
    from engine.model.random_checkpoint import make_checkpoint

    with tempfile.TemporaryDirectory(prefix="potluck-gguf-") as tmp:
        checkpoint = make_checkpoint(tmp, arch="llama", shape="tiny", dtype="float32", seed=seed)
        return checkpoint_to_gguf(checkpoint, out_path, name=f"potluck-random-llama-tiny-seed{seed}")


def checkpoint_to_gguf(checkpoint_dir: str | Path, out_path: str | Path, name: str | None = None) -> Path:
    """Convert a (small, llama-architecture) Hugging Face checkpoint to a float32 GGUF file."""
    import gguf

    checkpoint = Path(checkpoint_dir)
    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") != "llama":
        raise ValueError(f"only llama checkpoints convert here, not {config.get('model_type')!r}")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)

    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name(name or checkpoint.name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    _add_hyperparameters(writer, config)
    _add_tokenizer(writer, checkpoint, config)
    for tensor_name, array in _gguf_tensors(checkpoint, config):
        writer.add_tensor(tensor_name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _add_hyperparameters(writer, config: dict) -> None:
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    rope = config.get("rope_parameters") or {}  # transformers 5 moved rope_theta in here
    writer.add_rope_freq_base(float(config.get("rope_theta") or rope.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(config["vocab_size"])


def _add_tokenizer(writer, checkpoint: Path, config: dict) -> None:
    """The byte-level BPE of tokenizer.json as llama.cpp's "gpt2" tokenizer, and the chat template."""
    import gguf

    data = json.loads((checkpoint / "tokenizer.json").read_text(encoding="utf-8"))
    if data["model"]["type"] != "BPE":
        raise ValueError(f"only BPE tokenizers convert here, not {data['model']['type']}")
    by_id = {i: token for token, i in data["model"]["vocab"].items()}
    special = set()
    for added in data.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        if added.get("special"):
            special.add(added["id"])

    tokens, types = [], []
    for i in range(config["vocab_size"]):
        if i not in by_id:  # embedding rows beyond the tokenizer: padding, never produced by it
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL)
    # tokenizers writes merges as "a b" strings (older) or [a, b] pairs (newer); GGUF wants strings.
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")  # the GPT-2 split regex, as the ByteLevel pre-tokenizer's
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)

    ids = {token: i for i, token in by_id.items()}
    eos = config.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) else eos
    pad = config.get("pad_token_id")
    if eos is not None:
        writer.add_eos_token_id(eos)
    if pad is not None:
        writer.add_pad_token_id(pad)
    # The checkpoint has no BOS token; without one llama.cpp would assume id 11 of GPT-2's vocab.
    bos = config.get("bos_token_id")
    writer.add_bos_token_id(bos if bos is not None else pad if pad is not None else ids.get("<|endoftext|>", 0))
    writer.add_add_bos_token(bos is not None)
    template = _chat_template(checkpoint)
    if template:
        writer.add_chat_template(template)


def _chat_template(checkpoint: Path) -> str | None:
    jinja = checkpoint / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    tokenizer_config = checkpoint / "tokenizer_config.json"
    if tokenizer_config.is_file():
        template = json.loads(tokenizer_config.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, str):
            return template
    return None


def _gguf_tensors(checkpoint: Path, config: dict):
    """(GGUF name, float32 array) for every weight, Q and K rows permuted for llama.cpp's RoPE."""
    from safetensors.numpy import load_file

    weights = {}
    for file in sorted(checkpoint.glob("*.safetensors")):
        weights.update(load_file(file))
    if not weights:
        raise ValueError(f"no .safetensors weights in {checkpoint}")
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads

    for hf_name, gguf_name in GLOBAL_TENSORS.items():
        if hf_name in weights:  # no lm_head with tied embeddings: llama.cpp then reuses token_embd
            yield gguf_name, weights[hf_name].astype(np.float32)
    for layer in range(config["num_hidden_layers"]):
        for hf_suffix, gguf_suffix in LAYER_TENSORS.items():
            array = weights[f"model.layers.{layer}.{hf_suffix}"].astype(np.float32)
            if hf_suffix == "self_attn.q_proj.weight":
                array = permute_for_rope(array, heads)
            elif hf_suffix == "self_attn.k_proj.weight":
                array = permute_for_rope(array, kv_heads)
            yield f"blk.{layer}.{gguf_suffix}", array


def permute_for_rope(weight: np.ndarray, heads: int) -> np.ndarray:
    """Reorder a Q or K projection's output rows from Hugging Face's RoPE layout (each head's
    dimension rotated in two halves) to llama.cpp's (rotated in adjacent pairs), as
    convert_hf_to_gguf.py's LlamaModel.permute does."""
    rows = weight.shape[0]
    return (weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2)
            .reshape(weight.shape))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_path")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", default=None, help="convert this llama checkpoint instead of making one")
    args = parser.parse_args(argv)
    path = checkpoint_to_gguf(args.checkpoint, args.out_path) if args.checkpoint else make_gguf(args.out_path, args.seed)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
