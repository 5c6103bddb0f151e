"""The checkpoint's tokenizer and chat template (transformers' own), and streaming detokenization."""

from __future__ import annotations

import json
from pathlib import Path

from engine.model.errors import CheckpointError


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"Could not load the tokenizer from {path} ({exc}). The checkpoint needs tokenizer.json "
            "(or the files of a slow tokenizer) and tokenizer_config.json."
        ) from None


def chat_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a conversation in the model's chat template, ready for the assistant's turn.
    A checkpoint without a template (a base model) gets the messages' text as is."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.encode("\n\n".join(m["content"] for m in messages))


def stop_token_ids(path: str | Path, tokenizer) -> frozenset[int]:
    """End-of-turn tokens: the config's and generation config's eos ids, and the tokenizer's."""
    ids: set[int] = set()
    for name in ("generation_config.json", "config.json"):
        file = Path(path) / name
        if file.is_file():
            try:
                eos = json.loads(file.read_text(encoding="utf-8")).get("eos_token_id")
            except (OSError, ValueError, AttributeError):
                continue
            ids.update(eos if isinstance(eos, list) else [eos] if isinstance(eos, int) else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)


class StreamingDetokenizer:
    """Turns a stream of token ids into text pieces, holding back bytes of a split character."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""  # an incomplete UTF-8 sequence: wait for the next token
        piece = text[len(self.text):] if text.startswith(self.text) else text
        self.text = text
        return piece
