"""Decode speed of our engine against transformers' generate, on the same weights, in one run.

A checkpoint with Qwen3-0.6B's shapes and random weights is made by the factory (cached under
bench/out/). Decode rate = (N - 1) / (time for N tokens - time for 1 token), the same formula for
both engines, so prefill is excluded alike. Runs alternate between the engines and the median of
--reps is kept. Last line: one JSON object.

    python bench/engine_decode.py [--dtype bfloat16] [--tokens 64] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `potluck` sets it (app/cli.py), for both engines
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.generate import LocalPipeline, generate  # noqa: E402
from engine.model.random_checkpoint import make_checkpoint  # noqa: E402
from engine.sampling import SamplingParams  # noqa: E402

PROMPT_LEN = 32


def copy_bandwidth_gbs(size_mb: int = 512, reps: int = 5) -> float:
    """Bytes moved (read + write) per second by a large tensor copy: the memory-bandwidth roofline."""
    src = torch.ones(size_mb * 2**20 // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() * 4 / best / 1e9


def prompts(batch: int, vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(10, vocab, (PROMPT_LEN,), generator=g).tolist() for _ in range(batch)]


def time_ours(pipeline, batch_prompts, tokens: int) -> float:
    params = [SamplingParams(max_tokens=tokens)] * len(batch_prompts)
    t = time.perf_counter()
    count = sum(1 for _ in generate(pipeline, batch_prompts, params))
    assert count == tokens * len(batch_prompts)
    return time.perf_counter() - t


def time_hf(model, batch_prompts, tokens: int) -> float:
    ids = torch.tensor(batch_prompts)  # equal lengths: no padding needed
    t = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    assert out.shape[1] == PROMPT_LEN + tokens
    return time.perf_counter() - t


def decode_rate(timer, engine, batch_prompts, tokens: int, reps: int) -> float:
    rates = []
    for _ in range(reps):
        one = timer(engine, batch_prompts, 1)
        full = timer(engine, batch_prompts, tokens)
        rates.append(len(batch_prompts) * (tokens - 1) / (full - one))
    return statistics.median(rates)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    path = ROOT / "bench" / "out" / f"qwen3-0.6b-random-{args.dtype}"
    if not (path / "config.json").exists():
        print(f"making a random checkpoint with Qwen3-0.6B's shapes in {path} ...", file=sys.stderr)
        make_checkpoint(path, arch="qwen3", shape="qwen3-0.6b", dtype=args.dtype)

    from transformers import AutoModelForCausalLM

    pipeline = LocalPipeline(path, device="cpu", dtype=args.dtype)
    # use_kernels=False: the reference is transformers' own code (5.25 otherwise fetches Hub kernels)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, args.dtype), use_kernels=False).eval()
    spec = pipeline.spec
    one, eight = prompts(1, spec.vocab_size), prompts(8, spec.vocab_size)

    time_ours(pipeline, one, 4), time_hf(hf, one, 4)  # warm up both
    ours = decode_rate(time_ours, pipeline, one, args.tokens, args.reps)
    theirs = decode_rate(time_hf, hf, one, args.tokens, args.reps)
    ours8 = decode_rate(time_ours, pipeline, eight, args.tokens, args.reps)
    theirs8 = decode_rate(time_hf, hf, eight, args.tokens, args.reps)

    bandwidth = copy_bandwidth_gbs()
    bytes_per_token = spec.num_layers * spec.layer_bytes + spec.lm_head_bytes  # every weight read once a step
    roofline = bandwidth * 1e9 / bytes_per_token
    result = {
        "model": "qwen3-0.6b shapes, random weights",
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "tokens": args.tokens,
        "ours_tok_s": round(ours, 2),
        "hf_tok_s": round(theirs, 2),
        "ratio_vs_hf": round(ours / theirs, 3),
        "batch8_tok_s": round(ours8, 2),
        "hf_batch8_tok_s": round(theirs8, 2),
        "batch8_over_batch1": round(ours8 / ours, 2),
        "copy_bandwidth_gbs": round(bandwidth, 1),
        "weight_bytes_per_token": bytes_per_token,
        "roofline_tok_s": round(roofline, 2),
        "roofline_fraction": round(ours / roofline, 3),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
