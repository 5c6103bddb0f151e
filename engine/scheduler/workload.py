"""Requests: arrival process and prompt/output lengths; service-level objectives."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

LENGTH_SIGMA = 0.5  # log-normal spread of prompt and output lengths (p99 ~ 2.8x the mean)


@dataclass(frozen=True)
class Workload:
    arrival_rate_per_s: float
    prompt_tokens_mean: float
    output_tokens_mean: float
    max_context: int

    @property
    def kv_tokens_mean(self) -> float:
        """KV cache a request reserves on average (prompt + announced max_tokens)."""
        return self.prompt_tokens_mean + self.output_tokens_mean

    @property
    def decode_context_mean(self) -> float:
        """Average context length a decode step reads."""
        return self.prompt_tokens_mean + (self.output_tokens_mean - 1) / 2

    def with_rate(self, rate: float) -> "Workload":
        return Workload(rate, self.prompt_tokens_mean, self.output_tokens_mean, self.max_context)


@dataclass(frozen=True)
class Slo:
    ttft_p99_s: float
    tpot_p50_s: float
    max_failed_fraction: float = 0.05


def lognormal_length(rng: random.Random, mean: float, upper: int) -> int:
    mu = math.log(mean) - LENGTH_SIGMA**2 / 2
    return max(1, min(upper, int(round(rng.lognormvariate(mu, LENGTH_SIGMA)))))


def sample_request(rng: random.Random, workload: Workload) -> tuple[int, int]:
    """(prompt_tokens, output_tokens), together at most max_context."""
    prompt = lognormal_length(rng, workload.prompt_tokens_mean, max(1, workload.max_context - 1))
    output = lognormal_length(rng, workload.output_tokens_mean, max(1, workload.max_context - prompt))
    return prompt, output
