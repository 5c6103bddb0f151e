"""The KV cache of one shard: a row (slot) per request, preallocated and grown by doubling.

transformers' attention modules call `cache.update(key, value, layer_idx)` and attend over what it
returns. This cache answers for a whole batch of requests at once, each at its own position, so
requests of different lengths decode together in one forward pass. Rows are allocated lowest
first: when the batch is slots 0..B-1 the keys returned are a view, with no copy.
"""

from __future__ import annotations

import time

import torch


class SlotKVCache:
    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device, slots: int = 4, capacity: int = 256):
        self.num_layers, self.num_kv_heads, self.head_dim = num_layers, num_kv_heads, head_dim
        self.dtype, self.device = dtype, device
        self.capacity = capacity
        self.keys = [self._empty(slots, capacity) for _ in range(num_layers)]
        self.values = [self._empty(slots, capacity) for _ in range(num_layers)]
        self.slot_of: dict[str, int] = {}
        self.length: dict[str, int] = {}
        self.last_used: dict[str, float] = {}
        self._free = list(range(slots))
        self._step: _Step | None = None

    # ---- request bookkeeping ----

    def __contains__(self, request_id: str) -> bool:
        return request_id in self.slot_of

    def add(self, request_id: str) -> None:
        if not self._free:
            self._grow(slots=2 * self.keys[0].shape[0])
        self._free.sort()
        self.slot_of[request_id] = self._free.pop(0)
        self.length[request_id] = 0
        self.last_used[request_id] = time.monotonic()

    def release(self, request_id: str) -> bool:
        slot = self.slot_of.pop(request_id, None)
        if slot is None:
            return False
        del self.length[request_id], self.last_used[request_id]
        self._free.append(slot)
        return True

    def idle_requests(self, max_idle_s: float) -> list[str]:
        now = time.monotonic()
        return [rid for rid, t in self.last_used.items() if now - t > max_idle_s]

    def bytes_reserved(self) -> int:
        """Memory the preallocated rows take (grows by doubling)."""
        one = self.keys[0]
        return 2 * self.num_layers * one.numel() * one.element_size()

    def bytes_held(self) -> int:
        """Memory the live requests' tokens need: what admission control counts."""
        per_token = 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.keys[0].element_size()
        return sum(self.length.values()) * per_token

    # ---- one forward pass ----

    def begin(self, request_ids: list[str], new_tokens: int) -> list[int]:
        """Prepare a forward pass that appends `new_tokens` positions (padding included) to each
        request; returns each request's past length."""
        past = [self.length[rid] for rid in request_ids]
        needed = max(past) + new_tokens
        if needed > self.capacity:
            self._grow(capacity=max(2 * self.capacity, -(-needed // 256) * 256))
        slots = [self.slot_of[rid] for rid in request_ids]
        if slots == list(range(slots[0], slots[0] + len(slots))):
            rows = slice(slots[0], slots[0] + len(slots))
        else:
            rows = torch.tensor(slots, device=self.device)
        uniform = len(set(past)) == 1
        positions = None if uniform else (
            torch.tensor(past, device=self.device)[:, None] + torch.arange(new_tokens, device=self.device))
        self._step = _Step(rows, past[0] if uniform else None, positions, new_tokens, needed)
        return past

    def end(self, request_ids: list[str], lengths: list[int]) -> None:
        now = time.monotonic()
        for rid, n in zip(request_ids, lengths):
            self.length[rid] += n
            self.last_used[rid] = now
        self._step = None

    def abort(self) -> None:
        self._step = None

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *_, **__):
        """Called by transformers' attention: store this step's keys/values, return all of them.

        The extra arguments (`cache_kwargs` before transformers 5.24, `kwargs=` since) carry nothing
        this cache needs: positions come from begin()."""
        step = self._step
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        if step.uniform_past is not None:
            where = (step.rows, slice(None), slice(step.uniform_past, step.uniform_past + step.new_tokens))
            keys[where] = key
            values[where] = value
        else:  # each row at its own position: one scatter per tensor
            rows = step.rows if isinstance(step.rows, torch.Tensor) else torch.arange(
                step.rows.start, step.rows.stop, device=self.device)
            keys[rows[:, None], :, step.positions] = key.transpose(1, 2)
            values[rows[:, None], :, step.positions] = value.transpose(1, 2)
        return keys[step.rows, :, :step.kv_len], values[step.rows, :, :step.kv_len]

    # ---- storage ----

    def _empty(self, slots: int, capacity: int) -> torch.Tensor:
        return torch.zeros(slots, self.num_kv_heads, capacity, self.head_dim, dtype=self.dtype, device=self.device)

    def _grow(self, slots: int | None = None, capacity: int | None = None) -> None:
        old_slots = self.keys[0].shape[0]
        slots, capacity = slots or old_slots, capacity or self.capacity
        for store in (self.keys, self.values):
            for i, old in enumerate(store):
                new = self._empty(slots, capacity)
                new[:old_slots, :, :self.capacity] = old
                store[i] = new
        self._free.extend(range(old_slots, slots))
        self.capacity = capacity


class _Step:
    __slots__ = ("rows", "uniform_past", "positions", "new_tokens", "kv_len")

    def __init__(self, rows, uniform_past, positions, new_tokens, kv_len):
        self.rows, self.uniform_past, self.positions = rows, uniform_past, positions
        self.new_tokens, self.kv_len = new_tokens, kv_len
