"""The handful of numbers about a model that scheduling needs."""

from __future__ import annotations

from dataclasses import dataclass

from engine.swarm import q8


@dataclass(frozen=True)
class ModelShape:
    """Sizes of one decoder-only model; the live node builds this from its ModelSpec."""

    num_layers: int
    layer_bytes: float  # weights of one decoder layer
    embed_bytes: float  # held by the stage that serves layer 0
    lm_head_bytes: float  # held by the stage that serves the last layer
    kv_bytes_per_token_layer: float  # K and V of one token in one layer
    flops_per_token_layer: float  # forward FLOPs of one token through one layer
    hidden_size: int
    dtype_bytes: int
    wire: str = "exact"  # how hidden states travel between stages: "exact" (dtype_bytes a value) or "q8_0"

    def weight_bytes(self, start: int, end: int) -> float:
        """Memory taken by the weights of layers start..end-1 (plus embedding / lm_head at the ends)."""
        total = (end - start) * self.layer_bytes
        if start == 0:
            total += self.embed_bytes
        if end == self.num_layers:
            total += self.lm_head_bytes
        return total

    @property
    def total_weight_bytes(self) -> float:
        return self.weight_bytes(0, self.num_layers)

    def hidden_state_bytes(self, tokens: int) -> float:
        """Activations handed from one stage to the next (in q8_0: engine/swarm/q8.py's blocks)."""
        if self.wire == "q8_0":
            return q8.wire_bytes(tokens, self.hidden_size)
        return tokens * self.hidden_size * self.dtype_bytes

    def kv_bytes(self, tokens: int, layers: int) -> float:
        return tokens * layers * self.kv_bytes_per_token_layer
