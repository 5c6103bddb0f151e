"""Write genuine Hugging Face checkpoints with random weights, for tests and benchmarks.

The files are what `save_pretrained` writes (config.json, safetensors, optionally sharded with an
index) plus a small byte-level BPE tokenizer trained here, with a ChatML chat template. Nothing is
downloaded. Run as a script:

    python -m engine.model.random_checkpoint OUT_DIR --arch qwen3 --shape qwen3-0.6b --dtype bfloat16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Small shapes: 8 layers so that a test can split them every possible way, including 1-layer shards.
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=8, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=512)

SHAPES = {
    "tiny": {
        "llama": dict(TINY, tie_word_embeddings=False),
        "mistral": dict(TINY, tie_word_embeddings=False, sliding_window=16),
        "qwen2": dict(TINY, tie_word_embeddings=True),
        "qwen3": dict(TINY, tie_word_embeddings=True),
        "qwen3_moe": dict(TINY, tie_word_embeddings=False, moe_intermediate_size=32, num_experts=4,
                          num_experts_per_tok=2, norm_topk_prob=True),
    },
    # The published Qwen3-0.6B shapes (config.json of Qwen/Qwen3-0.6B).
    "qwen3-0.6b": {
        "qwen3": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                      num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, vocab_size=151936,
                      tie_word_embeddings=True, rope_theta=1000000.0, rms_norm_eps=1e-6),
    },
}

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = """\
Potluck pools ordinary computers so that people can run large language models together.
Each volunteer serves a contiguous range of layers, and a request travels through a pipeline of them.
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
The weather today is mild, with a light breeze from the west and a chance of rain in the evening.
Tell me a story about a lighthouse keeper who found a message in a bottle on a stormy night.
What is the capital of France? Paris is the capital of France, and Berlin is the capital of Germany.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. Punctuation: , . ; : ! ? ( ) [ ] { } " ' - _ / \\ @ # $ % & *
def add(a, b):\n    return a + b\n\nprint(add(2, 3))
"""


def make_tokenizer(vocab_size: int = 384):
    """A byte-level BPE tokenizer trained on a few sentences, wrapped as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                      bos_token=None, unk_token=None)
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def make_config(arch: str, shape: str = "tiny", dtype: str = "float32", vocab_size: int | None = None, **overrides):
    from transformers import AutoConfig

    try:
        fields = dict(SHAPES[shape][arch])
    except KeyError:
        known = ", ".join(f"{s}: {'/'.join(a)}" for s, a in SHAPES.items())
        raise ValueError(f"no shape {shape!r} for architecture {arch!r} (known: {known})") from None
    if vocab_size is not None:
        fields["vocab_size"] = vocab_size
    fields.update(overrides)
    return AutoConfig.for_model(arch, dtype=dtype, **fields)


def make_checkpoint(out_dir: str | Path, arch: str = "llama", shape: str = "tiny", dtype: str = "float32",
                    seed: int = 0, max_shard_size: str | None = None, init_std: float | None = None,
                    **config_overrides) -> Path:
    """Write a checkpoint with random weights to out_dir and return the path.

    init_std: standard deviation of the random weights. The default for tiny shapes is larger than
    a trained model's so that logits are peaked: greedy decoding then has no near-ties, and tests
    can demand identical tokens.
    """
    import torch
    from transformers import AutoModelForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer()
    vocab = None if shape != "tiny" else len(tokenizer)
    config = make_config(arch, shape, dtype, vocab_size=vocab, **config_overrides)
    config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config.pad_token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config.bos_token_id = None
    config.initializer_range = init_std if init_std is not None else (0.02 if shape != "tiny" else 0.2)

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.save_pretrained(out, max_shard_size=max_shard_size or "20GB")
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--arch", default="llama", choices=sorted(SHAPES["tiny"]))
    parser.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-shard-size", default=None, help='split the weights into files, e.g. "200MB"')
    args = parser.parse_args(argv)
    path = make_checkpoint(args.out_dir, args.arch, args.shape, args.dtype, args.seed, args.max_shard_size)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
