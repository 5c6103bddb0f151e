"""Decode speed through a 3-node swarm on this machine against `potluck generate --shards 3`.

Both run the same checkpoint (Qwen3-0.6B's shapes, random bf16 weights, made once under
bench/out/) greedily for the same number of tokens, in the same run. The swarm is three real
`potluck node` processes talking over Lattica on loopback (in a private network namespace where
the machine allows it); its decode rate is what the origin measured. Per-hop overhead = the extra
time per token over the local run, divided by the 3 network hops each token takes
(stage 1 -> 2 -> 3 -> 1). Last line: one JSON object.

    python bench/swarm_pipeline.py [--tokens 64] [--memory-gb 0.75]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPT = "Tell me a long story about a lighthouse keeper."


def in_private_namespace() -> None:
    """Re-run this script inside `unshare -n` (loopback only) when possible: Lattica probes public
    STUN servers at every start."""
    if os.environ.get("POTLUCK_BENCH_NETNS") or os.geteuid() != 0 or not shutil.which("unshare"):
        return
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        return
    env = {**os.environ, "POTLUCK_BENCH_NETNS": "1"}
    cmd = 'ip link set lo up && exec "$0" "$@"'
    sys.exit(subprocess.run(["unshare", "-n", "sh", "-c", cmd, sys.executable, *sys.argv], env=env).returncode)


def local_rate(model: Path, tokens: int) -> float:
    proc = subprocess.run([sys.executable, "-m", "app.cli", "generate", "--model", str(model), "--prompt", PROMPT,
                           "--max-tokens", str(tokens), "--shards", "3", "--json"],
                          capture_output=True, text=True, check=True, cwd=ROOT)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["tokens"] == tokens, result
    return result["tokens_per_s"]


def swarm_rate(host, tokens: int) -> tuple[float, list]:
    reply = host.http.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": PROMPT}], "max_tokens": tokens, "temperature": 0})
    reply.raise_for_status()
    body = reply.json()
    assert body["usage"]["completion_tokens"] == tokens, body["usage"]
    return body["potluck"]["tokens_per_s"], body["potluck"]["routes"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--memory-gb", type=float, default=0.75, help="what each node lends: forces a 3-way split")
    args = parser.parse_args()
    in_private_namespace()

    from engine.model.random_checkpoint import make_checkpoint
    from tests.swarm_processes import NodeProcess, all_ready

    model = ROOT / "bench" / "out" / "qwen3-0.6b-random-bfloat16"
    if not (model / "config.json").exists():
        make_checkpoint(model, arch="qwen3", shape="qwen3-0.6b", dtype="bfloat16")

    work = Path(tempfile.mkdtemp(prefix="potluck-bench-"))
    memory = str(args.memory_gb)
    nodes = []
    try:
        host = NodeProcess(work / "host", "--host", "--model", str(model), "--max-memory", memory)
        nodes.append(host)
        for name in ("a", "b"):
            nodes.append(NodeProcess(work / name, "--join", host.multiaddr, "--max-memory", memory))
        snapshot = host.wait_for(lambda s: all_ready(s, 3), "three nodes serving", timeout=600)
        ranges = sorted(tuple(n["assigned"]) for n in snapshot["nodes"])

        swarm_rate(host, 4)  # warm up every stage
        local_rate(model, 4)
        swarm, local, routes = [], [], None
        for _ in range(args.reps):  # alternate, so that a noisy moment hits both sides
            rate, routes = swarm_rate(host, args.tokens)
            swarm.append(rate)
            local.append(local_rate(model, args.tokens))
    finally:
        for node in reversed(nodes):
            node.stop()
        shutil.rmtree(work, ignore_errors=True)

    swarm_tok_s, local_tok_s = statistics.median(swarm), statistics.median(local)
    hops = len(routes[-1]) if routes else 3
    result = {
        "model": "qwen3-0.6b shapes, random bf16 weights", "tokens": args.tokens, "reps": args.reps,
        "layer_ranges": ranges, "route_hops": hops,
        "swarm_tok_s": round(swarm_tok_s, 2), "local_tok_s": round(local_tok_s, 2),
        "ratio": round(swarm_tok_s / local_tok_s, 3),
        "hop_overhead_ms": round((1 / swarm_tok_s - 1 / local_tok_s) * 1e3 / hops, 2),
        "swarm_runs": swarm, "local_runs": local,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
