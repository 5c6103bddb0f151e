"""Solo mode: chat with a whole local GGUF model through llama-cpp-python, no swarm involved.

llama.cpp runs whole models only (not a layer range), so this is not a ShardRunner. llama_cpp is
imported inside the functions: importing this module never needs it (it is the optional `solo`
extra). One loaded model answers one request at a time: a llama_cpp.Llama is not thread-safe.
"""

from __future__ import annotations

import codecs
import random
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from engine.model.errors import CheckpointError

GGUF_MAGIC = b"GGUF"
INSTALL_HINT = 'Install it with: pip install "potluck[solo]"'
KV_CACHE_TYPES = {"f32": 0, "f16": 1}  # ggml_type numbers: GGML_TYPE_F32, GGML_TYPE_F16
# Only temperature and top-p, as the torch engine samples: llama-cpp-python's defaults would add
# top-k 40 and min-p 0.05. (llama.cpp applies top-p before the temperature, the torch engine after.)
_PLAIN_SAMPLING = {"top_k": 0, "min_p": 0.0, "typical_p": 1.0, "repeat_penalty": 1.0}


class SoloModeError(CheckpointError):
    """A GGUF file or a solo-mode setup that cannot be used; the message says what to do."""


def load_gguf(path: str | Path, n_ctx: int = 4096, n_threads: int | None = None, n_gpu_layers: int = -1,
              kv_cache: str = "f16"):
    """Load a GGUF model file into llama.cpp and return the llama_cpp.Llama.

    n_ctx: context length in tokens, at most the model's own (its KV cache is allocated up front).
    n_threads: None lets llama.cpp choose (half the CPU cores). n_gpu_layers: -1 puts every layer
    on the GPU when llama.cpp was built with GPU support, and is ignored by a CPU-only build.
    kv_cache: "f16" (llama.cpp's default, half the memory) or "f32" (exact: for comparing logits).
    """
    if kv_cache not in KV_CACHE_TYPES:
        raise ValueError(f"kv_cache must be one of {', '.join(KV_CACHE_TYPES)}, got {kv_cache!r}")
    path = Path(path).expanduser()
    check_gguf_file(path)
    llama_cpp = import_llama_cpp()
    trained = gguf_context_length(path)
    if trained:  # beyond it a model answers garbage
        n_ctx = min(n_ctx, trained)
    try:
        return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, n_gpu_layers=n_gpu_layers,
                               type_k=KV_CACHE_TYPES[kv_cache], type_v=KV_CACHE_TYPES[kv_cache], verbose=False)
    except (ValueError, RuntimeError) as exc:
        raise SoloModeError(
            f"llama.cpp could not load {path} ({exc}). The file may be incomplete (download it again) "
            "or hold a model architecture this llama-cpp-python version does not know (upgrade it)."
        ) from None


def check_gguf_file(path: Path) -> None:
    """Refuse, in plain words, what is not a readable GGUF file, before llama.cpp sees it."""
    if not path.exists():
        raise SoloModeError(f"No model file at {path}. Choose an existing .gguf file for solo mode.")
    if path.is_dir():
        raise SoloModeError(f"{path} is a folder. Solo mode needs one model file in GGUF format (*.gguf).")
    try:
        with path.open("rb") as file:
            magic = file.read(4)
    except OSError as exc:
        raise SoloModeError(f"Cannot read {path}: {exc.strerror or exc}.") from None
    if magic != GGUF_MAGIC:
        raise SoloModeError(
            f"{path} is not a GGUF model file. Solo mode runs models in llama.cpp's GGUF format "
            "(files named like model-Q4_K_M.gguf); a Hugging Face checkpoint folder needs the swarm instead."
        )


_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def gguf_context_length(path: Path) -> int | None:
    """The context length the model was trained for, from the GGUF header; None if not found.

    llama.cpp tells it only once a context exists, and a context longer than it only warns."""
    size = path.stat().st_size
    with path.open("rb") as file:
        def read(fmt):
            return struct.unpack(fmt, file.read(struct.calcsize(fmt)))[0]

        def read_string():
            length = read("<Q")
            if length > size - file.tell():  # a damaged header: never allocate what the file cannot hold
                raise ValueError("string longer than the file")
            return file.read(length).decode("utf-8", errors="replace")

        def skip_value(kind):
            if kind == _STRING:
                file.seek(read("<Q"), 1)
            elif kind == _ARRAY:
                item_kind, count = read("<I"), read("<Q")
                if item_kind in _SCALAR_FORMATS:
                    file.seek(count * struct.calcsize(_SCALAR_FORMATS[item_kind]), 1)
                else:
                    for _ in range(count):
                        skip_value(item_kind)
            else:
                file.seek(struct.calcsize(_SCALAR_FORMATS[kind]), 1)

        try:
            if file.read(4) != GGUF_MAGIC or read("<I") < 2:
                return None
            read("<Q")  # tensor count
            architecture = None
            for _ in range(read("<Q")):
                key, kind = read_string(), read("<I")
                if key == "general.architecture" and kind == _STRING:
                    architecture = read_string()
                elif key == f"{architecture}.context_length" and kind in _SCALAR_FORMATS:
                    return int(read(_SCALAR_FORMATS[kind]))
                else:
                    skip_value(kind)
        except (struct.error, KeyError, OSError, ValueError):
            pass  # a damaged header: llama.cpp will say so when it loads the file
    return None


def import_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise SoloModeError(f"Solo mode needs llama-cpp-python, which is not installed. {INSTALL_HINT}") from None
    return llama_cpp


def stream_chat(llm, messages: list[dict], max_tokens: int = 512, temperature: float = 0.7,
                top_p: float = 1.0, seed: int | None = None) -> Iterator[str]:
    """Pieces of the assistant's answer to a conversation, one per token as llama.cpp picks it.

    The GGUF's own chat template formats the conversation. To cancel, stop iterating (or close
    the iterator): no further token is computed. Bad settings raise here, not at the first piece.
    """
    _check_sampling(max_tokens, temperature, top_p)
    prompt_ids = chat_prompt_ids(llm, messages)
    _check_fits(llm, prompt_ids)
    return (piece for _, piece in _answer(llm, prompt_ids, max_tokens, temperature, top_p, seed) if piece)


def generate_gguf(model_path: str | Path, prompt: str, max_tokens: int = 128, temperature: float = 0.0,
                  top_p: float = 1.0, seed: int | None = None, on_text: Callable[[str], None] | None = None,
                  system: str | None = None, n_ctx: int = 4096) -> dict:
    """Answer one user prompt with a GGUF model: what `potluck generate --backend gguf --json` prints.

    Returns {"text", "tokens", "token_ids", "ttft_s", "tokens_per_s"} as the torch path does;
    on_text, when given, receives each text piece as it is decoded.
    """
    _check_sampling(max_tokens, temperature, top_p)
    llm = load_gguf(model_path, n_ctx=n_ctx)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return generate_chat(llm, messages, max_tokens, temperature, top_p, seed, on_text)


def generate_chat(llm, messages: list[dict], max_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
                  seed: int | None = None, on_text: Callable[[str], None] | None = None) -> dict:
    """The assistant's answer to a conversation with its token ids and timings (see generate_gguf)."""
    _check_sampling(max_tokens, temperature, top_p)
    prompt_ids = chat_prompt_ids(llm, messages)
    _check_fits(llm, prompt_ids)
    token_ids: list[int] = []
    text = ""
    start = time.perf_counter()
    first_token_at = None
    for token, piece in _answer(llm, prompt_ids, max_tokens, temperature, top_p, seed):
        if token is not None:
            first_token_at = first_token_at or time.perf_counter()
            token_ids.append(token)
        if piece:
            text += piece
            if on_text:
                on_text(piece)
    end = time.perf_counter()

    count = len(token_ids)
    decode_s = end - first_token_at if first_token_at else 0.0
    return {
        "text": text,
        "tokens": count,
        "token_ids": token_ids,
        "ttft_s": round(first_token_at - start, 6) if first_token_at else None,
        # tokens after the first, over the time they took: the decode rate
        "tokens_per_s": round((count - 1) / decode_s, 3) if count > 1 and decode_s > 0 else None,
    }


def _answer(llm, prompt_ids: list[int], max_tokens: int, temperature: float, top_p: float,
            seed: int | None) -> Iterator[tuple[int | None, str]]:
    """(token id, its text) per generated token, until an end-of-turn token, max_tokens or a full
    context; then (None, the bytes of a character the answer never finished) if there are any.

    Our own loop over llama.cpp's sampler rather than create_chat_completion(stream=True): that one
    holds back all text after a byte that is not valid UTF-8 and decodes ahead of what it yields.
    """
    limit = min(max_tokens, llm.n_ctx() - len(prompt_ids))
    llm.set_seed(_seed_or_random(seed))
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    tokens = llm.generate(prompt_ids, temp=temperature, top_p=top_p, **_PLAIN_SAMPLING)
    produced = 0
    try:
        for token in tokens:
            if _is_end_of_generation(llm, token):
                break
            produced += 1
            yield token, decoder.decode(llm.detokenize([token]))  # holds back a split UTF-8 character
            if produced >= limit:
                break
    finally:
        tokens.close()  # the caller stopped iterating: decode nothing more
    tail = decoder.decode(b"", final=True)
    if tail:
        yield None, tail


def chat_prompt_ids(llm, messages: list[dict]) -> list[int]:
    """Token ids of a conversation in the GGUF's chat template, ready for the assistant's turn;
    a model without a template (a base model) gets the messages' text as is."""
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        text = "\n\n".join(m["content"] for m in messages)
        return llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(template=template, eos_token=_token_text(llm, llm.token_eos()),
                                    bos_token=_token_text(llm, llm.token_bos()))
    text = formatter(messages=messages).prompt
    # The template writes any BOS itself, as llama-cpp-python's own chat handler assumes.
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)


def _check_fits(llm, prompt_ids: list[int]) -> None:
    if len(prompt_ids) >= llm.n_ctx():
        raise SoloModeError(f"A prompt of {len(prompt_ids)} tokens does not fit the context of {llm.n_ctx()} tokens: "
                            "start a new chat or shorten the message.")


def _check_sampling(max_tokens: int, temperature: float, top_p: float) -> None:
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    if not 0.0 <= temperature <= 100.0:
        raise ValueError(f"temperature must be between 0 and 100, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def _seed_or_random(seed: int | None) -> int:
    return seed if seed is not None else random.randrange(2**31)


def _token_text(llm, token: int) -> str:
    if token < 0:
        return ""
    return llm.detokenize([token], special=True).decode("utf-8", errors="replace")


def _is_end_of_generation(llm, token: int) -> bool:
    import llama_cpp

    # llama.cpp's end-of-generation set: eos plus end-of-turn tokens such as <|im_end|>
    return bool(llama_cpp.llama_vocab_is_eog(llm._model.vocab, token))
