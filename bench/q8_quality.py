"""Does q8_0 on the wire change a trained model's answers? The demo model through one-layer stages.

    python bench/q8_quality.py [--model DIR] [--stages N] [--device cpu|cuda] [--prompts N] [--max-tokens N]

The shipped demo model (trained: 8 layers, hidden size 256, bfloat16) runs as 8 one-layer stages,
so its hidden states cross 7 hops, each as a swarm sends them: in the model's dtype (exact, the
reference) or encoded to q8_0 and decoded by the next stage (engine/swarm/q8.py, `--wire q8`).
Measured both ways in the same run, on the CPU:
- next-token loss (nats per token) over text the model never saw but that reads like its training
  text (Python's documentation): the docstrings of some of Python's own standard modules, in
  windows of 256 tokens;
- greedy answers to chat prompts ("Tell me about <topic>.", as the model was trained): how many
  come out identical to the exact wire's, and where the first differing token sits when one does not.
The noise floor for both: the same stages computing in float32 instead of bfloat16 (exact wire), a
change no one would call a quality loss; a tiny model's next-token scores are close together, so
its greedy answers branch on small numeric differences of either kind.
A 70B model's hidden states cross 4-20 hops in a volunteer swarm; 7 here is in that range, but a
tiny model is not a 70B one: this is a check on a trained model, not a proof for every model.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.generate import LocalPipeline, generate, split_layers  # noqa: E402
from engine.model.spec import ModelSpec  # noqa: E402
from engine.model.tokenizer import chat_prompt_ids, load_tokenizer, stop_token_ids  # noqa: E402
from engine.sampling import SamplingParams  # noqa: E402
from engine.swarm import q8  # noqa: E402

MODULES = ["collections", "functools", "itertools", "argparse", "json", "pathlib", "subprocess", "logging",
           "threading", "dataclasses", "contextlib", "typing", "unittest", "socket", "shutil", "tempfile"]
TOPICS = ["the package manager", "lists", "dictionaries", "exceptions", "the apt command", "virtual environments",
          "modules", "the network configuration", "classes", "string formatting", "the file system",
          "user accounts", "iterators", "the kernel", "decorators", "backups", "regular expressions",
          "the boot process", "unit tests", "security updates", "generators", "the mail server",
          "threads", "printing"]


class WirePipeline(LocalPipeline):
    """Stages in one process whose hidden states go through the host in the wire dtype, and
    through q8_0 blocks if asked, between every two stages: what a swarm's hop does to them."""

    def __init__(self, checkpoint, q8_wire: bool, dtype: str, stages: int, device: str):
        layers = ModelSpec.from_checkpoint(checkpoint).num_layers
        super().__init__(checkpoint, device=device, dtype=dtype, ranges=split_layers(layers, min(stages, layers)))
        self.q8_wire, self.wire_dtype = q8_wire, dtype

    def _hop(self, runner, hidden):
        rows = runner.to_numpy(hidden, self.wire_dtype)  # [B, T, H] (bfloat16 as uint16 words)
        if not self.q8_wire:
            return rows
        flat = rows.reshape(-1, rows.shape[-1])
        return q8.decode(*q8.encode(flat), self.wire_dtype).reshape(rows.shape)

    def prefill(self, request_ids, tokens, lengths=None, all_positions=False):
        hidden = tokens
        for i, runner in enumerate(self.runners):
            last = i == len(self.runners) - 1
            hidden = runner.prefill(request_ids, hidden, lengths, all_positions=all_positions and last)
            if not last:
                hidden = self._hop(runner, hidden)
        return hidden

    def decode(self, request_ids, tokens):
        hidden = tokens
        for i, runner in enumerate(self.runners):
            hidden = runner.decode(request_ids, hidden)
            if i < len(self.runners) - 1:
                hidden = self._hop(runner, hidden)
        return hidden


def text_loss(pipeline: WirePipeline, ids: list[int], window: int = 256) -> float:
    """Mean next-token loss (nats) over ids, in independent windows."""
    total, count = 0.0, 0
    for k, start in enumerate(range(0, len(ids) - 1, window)):
        chunk = ids[start:start + window + 1]
        if len(chunk) < 2:
            break
        rid = f"loss-{k}"
        logits = pipeline.to_numpy(pipeline.prefill([rid], np.array([chunk[:-1]]), all_positions=True))[0]
        pipeline.release(rid)
        logits = logits - logits.max(axis=-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        total -= float(logp[np.arange(len(chunk) - 1), chunk[1:]].sum())
        count += len(chunk) - 1
    return total / count


def answers(pipeline: WirePipeline, prompts: list[list[int]], max_tokens: int, stops) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in prompts]
    params = [SamplingParams(max_tokens=max_tokens, stop_token_ids=stops) for _ in prompts]
    for i, token in generate(pipeline, prompts, params):
        out[i].append(token)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "resources" / "demo-model"))
    parser.add_argument("--prompts", type=int, default=len(TOPICS))
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--text-tokens", type=int, default=4096)
    parser.add_argument("--stages", type=int, default=8, help="one hop fewer than stages")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or mps")
    args = parser.parse_args()

    tokenizer = load_tokenizer(args.model)
    stops = stop_token_ids(args.model, tokenizer)
    text = "\n\n".join(inspect.getdoc(importlib.import_module(m)) or "" for m in MODULES)
    text_ids = tokenizer.encode(text)[:args.text_tokens]
    prompts = [chat_prompt_ids(tokenizer, [{"role": "user", "content": f"Tell me about {t}."}])
               for t in TOPICS[:args.prompts]]
    results = {}
    for name, q8_wire, dtype in (("exact", False, "bfloat16"), ("q8_0", True, "bfloat16"),
                                 ("float32", False, "float32")):
        pipeline = WirePipeline(args.model, q8_wire, dtype, args.stages, args.device)
        hops = len(pipeline.runners) - 1
        results[name] = {"loss": text_loss(pipeline, text_ids),
                         "answers": answers(pipeline, prompts, args.max_tokens, stops)}
        print(f"{name}: loss {results[name]['loss']:.4f} nats/token over {len(text_ids)} tokens")
    def compare(name: str) -> tuple[int, list[int]]:
        same, first_diff = 0, []
        for a, b in zip(results["exact"]["answers"], results[name]["answers"]):
            if a == b:
                same += 1
            else:
                first_diff.append(next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))))
        print(f"{name}: greedy answers identical to the exact wire's: {same} of {len(prompts)}; the others "
              f"first differ at token {sorted(first_diff)}")
        return same, sorted(first_diff)

    summary = {"model": Path(args.model).name, "hops": hops, "text_tokens": len(text_ids), "answers": len(prompts),
               "max_tokens": args.max_tokens, "loss_exact": round(results["exact"]["loss"], 4)}
    for name in ("q8_0", "float32"):
        same, first = compare(name)
        summary.update({f"loss_{name}": round(results[name]["loss"], 4),
                        f"loss_change_{name}": round(results[name]["loss"] - results["exact"]["loss"], 4),
                        f"identical_answers_{name}": same, f"first_difference_{name}": first})
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
