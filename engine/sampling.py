"""Choosing the next token from logits: greedy, or temperature + top-p with a per-request seed.

numpy only (no torch, no MLX): the last stage of either backend samples here, and a seeded request
draws the same tokens whichever backend computed its logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self):
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if not 0.0 <= self.temperature <= 100.0:
            raise ValueError(f"temperature must be between 0 and 100, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


class Sampler:
    """Per-request random state, so that a seeded request samples the same tokens whatever else
    is in its batch."""

    def __init__(self, params: SamplingParams, drawn: int = 0):
        """drawn: tokens this request has already sampled elsewhere (after a failure mid-answer, the
        stage that samples now goes on with the random stream where the lost one left it)."""
        self.params = params
        self.generator = np.random.default_rng(params.seed) if params.temperature > 0 else None
        if self.generator is not None and drawn:
            self.generator.random(drawn)  # sample() draws one number per token

    def is_stop(self, token: int) -> bool:
        return token in self.params.stop_token_ids


def sample(logits: np.ndarray, samplers: list[Sampler]) -> list[int]:
    """One token per row of float32 logits [B, V]. Greedy rows take the first highest logit."""
    tokens = logits.argmax(axis=-1).tolist()
    for row, sampler in enumerate(samplers):
        if sampler.generator is not None:
            tokens[row] = _sample_one(logits[row], sampler.params, sampler.generator)
    return tokens


def _sample_one(logits: np.ndarray, params: SamplingParams, generator: np.random.Generator) -> int:
    order = np.argsort(-logits) if params.top_p < 1.0 else None  # highest first, for the nucleus
    ranked = logits if order is None else logits[order]
    probs = np.exp((ranked - ranked.max()) / np.float32(params.temperature))  # softmax, unnormalised
    cumulative = np.cumsum(probs, dtype=np.float64)
    if order is not None:  # the nucleus: tokens until the mass passes top_p, and the one that crosses it
        keep = int(np.searchsorted(cumulative, params.top_p * cumulative[-1], side="right")) + 1
        cumulative = cumulative[:keep]
    pick = min(int(np.searchsorted(cumulative, generator.random() * cumulative[-1], side="right")),
               cumulative.size - 1)
    return int(pick if order is None else order[pick])
