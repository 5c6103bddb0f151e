"""`potluck generate`: run a model in this process, as K chained shards (torch or MLX, see
engine.backends.choose), or a whole GGUF file through llama.cpp (--backend gguf), and stream its answer."""

from __future__ import annotations

import json
import sys
import time

from engine.model.errors import CheckpointError


def main(args) -> int:
    try:
        return _generate(args)
    except CheckpointError as exc:
        print(f"potluck generate: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # sampling parameters out of range
        print(f"potluck generate: {exc}", file=sys.stderr)
        return 2


def _generate(args) -> int:
    if args.backend == "gguf":
        return _generate_gguf(args)
    from engine.backends.choose import pick_backend

    backend = pick_backend(args.backend)  # before the heavy imports: a missing backend is said at once
    from engine.generate import LocalPipeline, generate
    from engine.model.progress import TerminalProgress
    from engine.model.resolve import resolve_model
    from engine.model.tokenizer import StreamingDetokenizer, chat_prompt_ids, load_tokenizer, stop_token_ids
    from engine.sampling import SamplingParams

    if args.max_tokens < 1:
        raise CheckpointError(f"--max-tokens must be at least 1, got {args.max_tokens}.")
    model = resolve_model(args.model, progress=TerminalProgress())  # a catalog name or hub id downloads
    pipeline = LocalPipeline(model, shards=args.shards, device=args.device, dtype=args.dtype, backend=backend)
    tokenizer = load_tokenizer(model)
    messages = ([{"role": "system", "content": args.system}] if args.system else [])
    messages.append({"role": "user", "content": args.prompt})
    prompt = chat_prompt_ids(tokenizer, messages)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            seed=args.seed, stop_token_ids=stop_token_ids(model, tokenizer))

    detok = StreamingDetokenizer(tokenizer)
    start = time.perf_counter()
    first_token_at = None
    for _, token in generate(pipeline, [prompt], [params]):
        first_token_at = first_token_at or time.perf_counter()
        piece = detok.add(token)
        if not args.json and piece:
            sys.stdout.write(piece)
            sys.stdout.flush()
    end = time.perf_counter()

    count = len(detok.ids)
    decode_s = end - first_token_at if first_token_at else 0.0
    result = {
        "text": detok.text,
        "tokens": count,
        "token_ids": detok.ids,
        "ttft_s": round(first_token_at - start, 6) if first_token_at else None,
        # tokens after the first, over the time they took: the decode rate
        "tokens_per_s": round((count - 1) / decode_s, 3) if count > 1 and decode_s > 0 else None,
    }
    if args.json:
        print(json.dumps(result))
    else:
        sys.stdout.write("\n")
    return 0


def _generate_gguf(args) -> int:
    """Solo mode: the whole GGUF model in llama.cpp (--model is a .gguf file)."""
    if args.shards != 1:
        raise CheckpointError("--shards does not apply to --backend gguf: llama.cpp runs the whole model.")
    try:
        from engine.backends.llama_cpp_solo import generate_gguf
    except ImportError as exc:
        raise CheckpointError(f"The gguf backend is not part of this installation ({exc}): "
                              "use --backend auto with a Hugging Face checkpoint directory.") from None

    def on_text(piece: str) -> None:
        if not args.json:
            sys.stdout.write(piece)
            sys.stdout.flush()

    options = {"system": args.system} if args.system else {}
    result = generate_gguf(args.model, args.prompt, args.max_tokens, args.temperature, args.top_p, args.seed,
                           on_text, **options)
    if args.json:
        print(json.dumps(result))
    else:
        sys.stdout.write("\n")
    return 0
