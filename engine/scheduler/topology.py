"""Nodes of a swarm and the round-trip times between their regions."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NodeSpec:
    """What a node brings: measured numbers from its hardware profile."""

    id: int
    memory_bytes: float  # memory it lends to the swarm (weights + KV cache)
    tflops: float  # measured dense matmul TFLOP/s in the model's dtype
    bandwidth_gbs: float  # measured memory bandwidth, GB/s
    region: str
    uplink_mbps: float

    @property
    def flops_per_s(self) -> float:
        return self.tflops * 1e12

    @property
    def bytes_per_s(self) -> float:
        return self.bandwidth_gbs * 1e9


class RttTable:
    """Symmetric round-trip times between regions, in seconds."""

    def __init__(self, rtt_ms: dict[tuple[str, str], float]):
        self._rtt: dict[tuple[str, str], float] = {}
        for (a, b), ms in rtt_ms.items():
            self._rtt[(a, b)] = ms / 1000.0
            self._rtt[(b, a)] = ms / 1000.0
        self.regions = sorted({r for pair in self._rtt for r in pair})

    def rtt_s(self, a: str, b: str) -> float:
        return self._rtt[(a, b)]

    def has(self, a: str, b: str) -> bool:
        return (a, b) in self._rtt

    def matrix(self) -> tuple[list[str], list[list[float]]]:
        """Regions in a fixed order and the RTT matrix in that order (missing pairs: inf)."""
        regs = self.regions
        return regs, [[self._rtt.get((a, b), float("inf")) for b in regs] for a in regs]
