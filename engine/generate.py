"""The generate loop: a model as K chained layer shards in this process, and a batch of prompts
decoded together, one forward pass per step for all unfinished requests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from engine.backends.choose import make_runner
from engine.model.checkpoint import Checkpoint
from engine.model.errors import CheckpointError
from engine.sampling import Sampler, SamplingParams, sample


def split_layers(num_layers: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous, nearly equal layer ranges covering 0..num_layers."""
    if not 1 <= shards <= num_layers:
        raise CheckpointError(f"--shards must be between 1 and the model's {num_layers} layers, got {shards}.")
    bounds = [round(i * num_layers / shards) for i in range(shards + 1)]
    return list(zip(bounds, bounds[1:]))


class LocalPipeline:
    """Shards chained in one process: the same path a request takes through a swarm, minus the network.

    backend: "torch" or "mlx" (engine.backends.choose.pick_backend resolves "auto"). prefill and
    decode take numpy arrays (or the backend's own tensors) and return the last shard's output as
    the backend's own tensor: hidden states pass from shard to shard without leaving the device;
    `to_numpy` brings an output to the host."""

    def __init__(self, checkpoint: str | Path | Checkpoint, shards: int = 1, device: str = "auto",
                 dtype: str = "auto", ranges: list[tuple[int, int]] | None = None, cpu_kernels: str = "onednn",
                 backend: str = "torch"):
        self.checkpoint = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint(checkpoint)
        self.spec = self.checkpoint.spec
        ranges = ranges or split_layers(self.spec.num_layers, shards)
        torch_options = {"cpu_kernels": cpu_kernels} if backend == "torch" else {}
        self.runners = [make_runner(backend, self.checkpoint, s, e, device, dtype, **torch_options)
                        for s, e in ranges]

    def prefill(self, request_ids, tokens, lengths=None):
        hidden = tokens
        for runner in self.runners:
            hidden = runner.prefill(request_ids, hidden, lengths)
        return hidden

    def decode(self, request_ids, tokens):
        hidden = tokens
        for runner in self.runners:
            hidden = runner.decode(request_ids, hidden)
        return hidden

    def to_numpy(self, output):
        """The pipeline's output (float32 logits) as a numpy array."""
        return self.runners[-1].to_numpy(output)

    def release(self, request_id: str) -> None:
        for runner in self.runners:
            runner.release(request_id)


def generate(pipeline: LocalPipeline, prompts: list[list[int]],
             params: list[SamplingParams]) -> Iterator[tuple[int, int]]:
    """Decode prompts together; yields (prompt index, token id) as each token is chosen.

    A request ends at a stop token (not yielded), after max_tokens, or at the model's context
    length. Caches are released when a request ends, and all of them if the caller stops early.
    """
    if not prompts or len(prompts) != len(params):
        raise ValueError("give one SamplingParams per prompt, and at least one prompt")
    if any(not p for p in prompts):
        raise ValueError("a prompt must have at least one token")
    context = pipeline.spec.max_position_embeddings
    too_long = [len(p) for p in prompts if len(p) >= context]
    if too_long:
        raise CheckpointError(f"A prompt of {too_long[0]} tokens does not fit this model's context of {context}.")
    ids = [uuid.uuid4().hex for _ in prompts]
    samplers = [Sampler(p) for p in params]
    produced = [0] * len(prompts)
    lengths = [len(p) for p in prompts]
    width = max(lengths)
    batch = np.zeros((len(prompts), width), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        batch[row, :len(prompt)] = prompt

    live = list(range(len(prompts)))
    try:
        logits = pipeline.to_numpy(pipeline.prefill(ids, batch, lengths))
        while live:
            tokens = sample(logits, [samplers[row] for row in live])
            still = []
            for row, token in zip(live, tokens):
                if samplers[row].is_stop(token):
                    pipeline.release(ids[row])
                    continue
                produced[row] += 1
                yield row, token
                if produced[row] >= params[row].max_tokens or lengths[row] + produced[row] >= context:
                    pipeline.release(ids[row])
                else:
                    still.append((row, token))
            live = [row for row, _ in still]
            if live:
                step = np.array([[token] for _, token in still], dtype=np.int64)
                logits = pipeline.to_numpy(pipeline.decode([ids[row] for row in live], step))
    finally:
        for rid in ids:
            pipeline.release(rid)
