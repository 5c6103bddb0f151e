"""Train Potluck's embedded demo model and write it, in Hugging Face format, to resources/demo-model.

    python resources/demo-model-recipe/train.py [--out resources/demo-model] [--work DIR] [--seed 0]

It downloads two Debian documentation packages with apt-get (see corpus.py: pinned versions,
checked SHA-256), keeps their prose, and trains a small Llama-architecture model with a byte-level
BPE tokenizer and a ChatML chat template on chat turns built from it ("Tell me about <section
title>." answered by the section's text). On a 2-core CPU the default run takes about an hour.
The same seed, the same packages and the same torch build give the same weights.

The result is a demo, not an assistant: it answers in English sentences that look like
documentation about Python and Debian, and it knows nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import tempfile
import time
from pathlib import Path

# Spinning OpenMP threads stall for seconds whenever another program holds a core (see app/cli.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

from corpus import Section, load_sections

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "demo-model"

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QUESTIONS = [
    "Tell me about {}.",
    "Can you explain {}?",
    "What should I know about {}?",
    "Write a few sentences about {}.",
    "I have a question about {}.",
    "Explain {} to me.",
]

# About 9M parameters: 17 MB in bfloat16, inside the 30 MB the issue allows with room to spare.
MODEL = dict(vocab_size=8192, hidden_size=256, intermediate_size=768, num_hidden_layers=8,
             num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=1024,
             rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)
TRAIN = dict(seq_len=256, batch_size=16, steps=1200, lr=3e-3, warmup=150, weight_decay=0.1)


def conversations(sections: list[Section], rng: random.Random) -> list[list[dict]]:
    """One chat per section chunk: a question built from the title, the section's prose as answer."""
    chats = []
    for section in sections:
        answer: list[str] = []
        for paragraph in section.paragraphs:
            answer.append(paragraph)
            if sum(len(p.split()) for p in answer) >= 120:
                chats.append(_chat(section.title, answer, rng))
                answer = []
        if answer:
            chats.append(_chat(section.title, answer, rng))
    rng.shuffle(chats)
    return chats


def _chat(title: str, answer: list[str], rng: random.Random) -> list[dict]:
    question = rng.choice(QUESTIONS).format(title)
    return [{"role": "user", "content": question}, {"role": "assistant", "content": "\n\n".join(answer)}]


def train_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=MODEL["vocab_size"], special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                      bos_token=None, unk_token=None, model_max_length=MODEL["max_position_embeddings"])
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def token_stream(tokenizer, chats: list[list[dict]]) -> torch.Tensor:
    end = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    ids: list[int] = []
    for chat in chats:
        ids.extend(tokenizer.apply_chat_template(chat, tokenize=True, return_dict=False))
        ids.append(end)
    return torch.tensor(ids, dtype=torch.long)


def make_model(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**MODEL, dtype="bfloat16",
                         eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"), bos_token_id=None)
    return LlamaForCausalLM(config).float()


def batches(stream: torch.Tensor, seq_len: int, batch_size: int, gen: torch.Generator):
    """Endless random windows of the token stream (inputs and next-token targets)."""
    while True:
        starts = torch.randint(0, len(stream) - seq_len - 1, (batch_size,), generator=gen)
        window = torch.stack([stream[s:s + seq_len + 1] for s in starts.tolist()])
        yield window[:, :-1], window[:, 1:]


def lr_at(step: int) -> float:
    if step < TRAIN["warmup"]:
        return TRAIN["lr"] * (step + 1) / TRAIN["warmup"]
    progress = (step - TRAIN["warmup"]) / max(1, TRAIN["steps"] - TRAIN["warmup"])
    return TRAIN["lr"] * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(model, train_ids: torch.Tensor, val_ids: torch.Tensor, seed: int, log) -> dict:
    gen = torch.Generator().manual_seed(seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": TRAIN["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=TRAIN["lr"], betas=(0.9, 0.95))
    data = batches(train_ids, TRAIN["seq_len"], TRAIN["batch_size"], gen)
    started, losses = time.perf_counter(), []
    model.train()
    for step in range(TRAIN["steps"]):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        inputs, targets = next(data)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 25 == 0 or step == TRAIN["steps"] - 1:
            elapsed = time.perf_counter() - started
            log(f"step {step}/{TRAIN['steps']} loss {sum(losses[-25:]) / len(losses[-25:]):.3f} "
                f"lr {lr_at(step):.2e} {elapsed / 60:.1f} min")
    return {"train_loss": sum(losses[-100:]) / len(losses[-100:]), "val_loss": evaluate(model, val_ids),
            "minutes": (time.perf_counter() - started) / 60}


@torch.no_grad()
def evaluate(model, ids: torch.Tensor) -> float:
    model.eval()
    seq = TRAIN["seq_len"]
    windows = ids[: (len(ids) - 1) // seq * seq + 1]
    inputs = windows[:-1].reshape(-1, seq)[:64]
    targets = windows[1:].reshape(-1, seq)[:64]
    logits = model(input_ids=inputs).logits
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)).item()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--work", type=Path, default=None, help="where the .deb files are downloaded and unpacked")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=TRAIN["steps"])
    args = parser.parse_args(argv)
    TRAIN["steps"] = args.steps

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        sections = load_sections(work)
    rng = random.Random(args.seed)
    chats = conversations(sections, rng)
    n_val = max(20, len(chats) // 100)
    tokenizer = train_tokenizer([m["content"] for chat in chats for m in chat])
    train_ids, val_ids = token_stream(tokenizer, chats[n_val:]), token_stream(tokenizer, chats[:n_val])
    print(f"{len(sections)} sections, {len(chats)} chats, {len(train_ids)} training tokens, "
          f"{len(val_ids)} validation tokens", flush=True)

    model = make_model(tokenizer)
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters", flush=True)
    figures = train(model, train_ids, val_ids, args.seed, lambda line: print(line, flush=True))

    args.out.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    model.generation_config.save_pretrained(args.out)
    figures.update(seed=args.seed, steps=TRAIN["steps"], tokens_seen=TRAIN["steps"] * TRAIN["batch_size"] * TRAIN["seq_len"],
                   training_tokens=len(train_ids), parameters=sum(p.numel() for p in model.parameters()),
                   torch=torch.__version__)
    (args.out / "training.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
