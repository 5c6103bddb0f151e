"""`potluck generate`: run a model in this process, as K chained shards, and stream its answer."""

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
    if args.backend not in ("auto", "torch"):
        raise CheckpointError(f"The {args.backend} backend is not available yet: use --backend torch.")
    from engine.generate import LocalPipeline, generate
    from engine.model.tokenizer import StreamingDetokenizer, chat_prompt_ids, load_tokenizer, stop_token_ids
    from engine.sampling import SamplingParams

    if args.max_tokens < 1:
        raise CheckpointError(f"--max-tokens must be at least 1, got {args.max_tokens}.")
    from engine.model.progress import TerminalProgress
    from engine.model.resolve import resolve_model

    model = resolve_model(args.model, progress=TerminalProgress())  # a catalog name or hub id downloads
    pipeline = LocalPipeline(model, shards=args.shards, device=args.device, dtype=args.dtype)
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
