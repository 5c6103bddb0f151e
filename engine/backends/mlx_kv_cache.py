"""The KV caches of an MLX shard: one mlx-lm KVCache per request per layer.

mlx-lm's attention calls `cache.update_and_fetch(keys, values)` and rotates by `cache.offset`.
A request alone in a step gets its own KVCache, exactly as in mlx-lm. Several requests at
different positions run as one batch through `BatchRows`, which appends each row to its request's
cache and hands attention the rows' keys right-padded to the longest (the runner's mask hides the
padding). That pad-and-stack costs one copy of the batch's keys per layer and step, about what
attention reads anyway; requests can join and leave the batch at any step without re-layout.
"""

from __future__ import annotations

import time

import mlx.core as mx
from mlx_lm.models.cache import KVCache


class RequestCaches:
    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, dtype_bytes: int):
        self.num_layers = num_layers
        self.bytes_per_token = 2 * num_layers * num_kv_heads * head_dim * dtype_bytes
        self.layers: dict[str, list[KVCache]] = {}
        self.length: dict[str, int] = {}
        self.last_used: dict[str, float] = {}

    # ---- request bookkeeping ----

    def __contains__(self, request_id: str) -> bool:
        return request_id in self.layers

    def __len__(self) -> int:
        return len(self.layers)

    def add(self, request_id: str) -> None:
        self.layers[request_id] = [KVCache() for _ in range(self.num_layers)]
        self.length[request_id] = 0
        self.last_used[request_id] = time.monotonic()

    def release(self, request_id: str) -> bool:
        if self.layers.pop(request_id, None) is None:
            return False
        del self.length[request_id], self.last_used[request_id]
        return True

    def idle_requests(self, max_idle_s: float) -> list[str]:
        now = time.monotonic()
        return [rid for rid, t in self.last_used.items() if now - t > max_idle_s]

    def bytes_held(self) -> int:
        """Memory the live requests' tokens need: what admission control counts."""
        return sum(self.length.values()) * self.bytes_per_token

    def bytes_reserved(self) -> int:
        """Memory the caches' buffers take (mlx-lm grows them 256 tokens at a time)."""
        return sum(cache.nbytes for caches in self.layers.values() for cache in caches)

    # ---- one forward pass ----

    def for_layer(self, request_ids: list[str], layer: int, past: list[int], new_tokens: int):
        """The cache object mlx-lm's attention gets for this shard-local layer and batch."""
        if len(request_ids) == 1:
            return self.layers[request_ids[0]][layer]
        return BatchRows([self.layers[rid][layer] for rid in request_ids], past, new_tokens)

    def state(self, request_ids: list[str], layers: range) -> list[mx.array]:
        """The arrays this step wrote, to evaluate together with its output."""
        caches = [self.layers[rid][i] for rid in request_ids for i in layers]
        return [a for c in caches if c.keys is not None for a in (c.keys, c.values)]

    def end(self, request_ids: list[str], lengths: list[int]) -> None:
        """Keep each request's real tokens (its padding positions are dropped) and stamp it used."""
        now = time.monotonic()
        for rid, n in zip(request_ids, lengths):
            self.length[rid] += n
            self.last_used[rid] = now
        self._trim_to_length(request_ids)

    def abort(self, request_ids: list[str]) -> None:
        """Forget a failed step: every layer's cache goes back to the request's length."""
        self._trim_to_length([rid for rid in request_ids if rid in self.layers])

    def _trim_to_length(self, request_ids: list[str]) -> None:
        for rid in request_ids:
            for cache in self.layers[rid]:
                if cache.offset > self.length[rid]:
                    cache.trim(cache.offset - self.length[rid])


class BatchRows:
    """One layer's caches of a batch of requests, presented to mlx-lm's attention as one cache."""

    def __init__(self, caches: list[KVCache], past: list[int], new_tokens: int):
        self.caches = caches
        self.kv_len = max(past) + new_tokens
        # RoPE takes one offset per row (mx.fast.rope accepts an array of offsets)
        self.offset = past[0] if len(set(past)) == 1 else mx.array(past)

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        rows_k, rows_v = [], []
        for row, cache in enumerate(self.caches):
            k, v = cache.update_and_fetch(keys[row:row + 1], values[row:row + 1])
            pad = self.kv_len - k.shape[2]
            if pad:
                widths = [(0, 0), (0, 0), (0, pad), (0, 0)]
                k, v = mx.pad(k, widths), mx.pad(v, widths)
            rows_k.append(k)
            rows_v.append(v)
        return mx.concatenate(rows_k), mx.concatenate(rows_v)
