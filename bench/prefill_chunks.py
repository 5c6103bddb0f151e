"""Prefill chunk size on this machine: the roofline's ridge from the profile against the chunk a
node now picks after timing its own shard (engine.profile.time_prefill_steps), in one run.

A checkpoint with Qwen3-0.6B's shapes and random weights is made by the factory (cached under
bench/out/). A middle shard of --layers layers prefills a --prompt-token prompt in chunks, as a
stage does: once in the ridge's chunks (what nodes did before), once in the timed chunks, and once
in a single pass (the floor). The cost of a bigger chunk is the step a decode token sharing it waits
for, so that is reported too. Runs alternate and the median of --reps is kept. Last line: one JSON
object.

    python bench/prefill_chunks.py [--layers 8] [--prompt-tokens 512] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `potluck` sets it (app/cli.py)
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.backends.torch_runner import TorchShardRunner  # noqa: E402
from engine.model.random_checkpoint import make_checkpoint  # noqa: E402
from engine.profile import measure, time_prefill_steps  # noqa: E402
from engine.scheduler.model import ModelShape  # noqa: E402
from engine.scheduler.perf import prefill_chunk_tokens  # noqa: E402


def prefill_s(runner: TorchShardRunner, prompt: np.ndarray, chunk: int) -> tuple[float, float]:
    """(seconds for the whole prompt, median seconds of one step) in chunks of `chunk` tokens."""
    steps = []
    for start in range(0, prompt.shape[1], chunk):
        t = time.perf_counter()
        runner.to_numpy(runner.prefill(["p"], prompt[:, start:start + chunk]))
        steps.append(time.perf_counter() - t)
    runner.release("p")
    return sum(steps), statistics.median(steps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    path = ROOT / "bench" / "out" / "qwen3-0.6b-random-bfloat16"
    if not (path / "config.json").exists():
        print(f"making a random checkpoint with Qwen3-0.6B's shapes in {path} ...", file=sys.stderr)
        make_checkpoint(path, arch="qwen3", shape="qwen3-0.6b", dtype="bfloat16")
    profile = measure("cpu")
    runner = TorchShardRunner(path, 4, 4 + args.layers, device="cpu")
    shape = ModelShape(**runner.spec.as_scheduler_shape())
    flops, bandwidth = profile.matmul_tflops_half * 1e12, profile.bandwidth_gbs * 1e9
    ridge = prefill_chunk_tokens(flops, bandwidth, shape)
    t = time.perf_counter()
    fixed, per_token = time_prefill_steps(runner)
    probe_s = time.perf_counter() - t
    timed = prefill_chunk_tokens(flops, bandwidth, shape, fixed, per_token)
    print(f"profile: {profile.matmul_tflops_half} TFLOP/s, {profile.bandwidth_gbs} GB/s -> ridge chunk {ridge}; "
          f"shard step {fixed * 1e3:.1f} ms + {per_token * 1e3:.3f} ms/token -> chunk {timed} "
          f"(timed in {probe_s:.2f} s)", flush=True)

    prompt = np.random.default_rng(0).normal(size=(1, args.prompt_tokens, runner.spec.hidden_size)).astype(np.float32)
    runs = {"ridge": ridge, "timed": timed, "one_pass": args.prompt_tokens}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    prefill_s(runner, prompt, timed)  # warm-up
    for _ in range(args.reps):
        for name, chunk in runs.items():
            times[name].append(prefill_s(runner, prompt, chunk))
    out = {"layers": args.layers, "prompt_tokens": args.prompt_tokens, "chunk_ridge": ridge, "chunk_timed": timed,
           "step_fixed_ms": round(fixed * 1e3, 2), "step_per_token_ms": round(per_token * 1e3, 4),
           "probe_s": round(probe_s, 2)}
    for name in runs:
        out[f"prefill_s_{name}"] = round(statistics.median(x for x, _ in times[name]), 3)
        out[f"step_ms_{name}"] = round(statistics.median(x for _, x in times[name]) * 1e3, 1)
        print(f"{name:>8} (chunk {runs[name]:>4}): prefill {out[f'prefill_s_{name}']:.3f} s, "
              f"a step {out[f'step_ms_{name}']:.1f} ms", flush=True)
    out["speedup_timed_vs_ridge"] = round(out["prefill_s_ridge"] / out["prefill_s_timed"], 2)
    out["timed_vs_one_pass"] = round(out["prefill_s_timed"] / out["prefill_s_one_pass"], 2)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
