"""TorchShardRunner: layers [start, end) of a Hugging Face checkpoint on torch (CUDA, MPS or CPU).

The model code is transformers' own: the full model is built on the meta device, every layer
outside the range is dropped, and only the shard's tensors are read from the safetensors files and
loaded through transformers' own weight conversion (which, for example, fuses per-expert MoE
tensors). Attention reads and writes a SlotKVCache, so one forward pass serves a whole batch of
requests, each with its own cache and position.
"""

from __future__ import annotations

import contextlib
import inspect
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.backends.cpu_linear import pack_linears
from engine.backends.host import BFLOAT16_WORDS
from engine.backends.kv_cache import SlotKVCache
from engine.backends.torch_device import DTYPES, pick_device, pick_dtype
from engine.model.checkpoint import Checkpoint, damaged, open_safetensors
from engine.model.errors import CheckpointError


class TorchShardRunner:
    """cpu_kernels: "onednn" runs the layers' Linear modules with prepacked oneDNN weights on a
    CPU (see cpu_linear.py); "aten" keeps torch's default kernel."""

    def __init__(self, checkpoint: str | Path | Checkpoint, start: int, end: int,
                 device: str = "auto", dtype: str = "auto", cpu_kernels: str = "onednn"):
        self.checkpoint = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint(checkpoint)
        self.spec = self.checkpoint.spec
        self.spec.check_range(start, end)
        self.start, self.end = start, end
        self.is_first, self.is_last = start == 0, end == self.spec.num_layers
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.spec.dtype, self.device)
        self.dtype_name = str(self.dtype).removeprefix("torch.")

        model = _load_shard(self.checkpoint, start, end, self.device, self.dtype)
        inner = model.model
        self.config = model.config
        self.embed = inner.embed_tokens if self.is_first else None
        self.norm = inner.norm if self.is_last else None
        self.lm_head = model.lm_head if self.is_last else None
        self.layers = [inner.layers[i] for i in range(start, end)]
        for local, layer in enumerate(self.layers):  # the cache is indexed by shard-local layer
            layer.self_attn.layer_idx = local
        self.packed_linears = 0
        if self.device.type == "cpu" and cpu_kernels == "onednn":
            self.packed_linears = pack_linears(self.layers)
        with self.device:  # the meta skeleton left RoPE's inv_freq buffer empty: build it anew
            self.rotary = type(inner.rotary_emb)(config=self.config)
        self.windows = [_window(self.config, layer, start + i) for i, layer in enumerate(self.layers)]
        self.cache_keyword = _cache_keyword(self.layers[0])
        self.cache = SlotKVCache(len(self.layers), self.spec.num_kv_heads, self.spec.head_dim,
                                 self.dtype, self.device)

    # ---- requests ----

    def prefill(self, request_ids: list[str], inputs: torch.Tensor | np.ndarray, lengths: list[int] | None = None,
                all_positions: bool = False, span: tuple[int, int] | None = None) -> torch.Tensor:
        """Append tokens to requests (new ones get a fresh cache) and run them through the shard.

        inputs: token ids [B, T] on the first shard, hidden states [B, T, H] on the others, right-
        padded, as torch tensors or numpy arrays (engine.backends.host: a uint16 array holds
        bfloat16 words); lengths gives each row's real length (default: all T). Returns hidden
        states [B, T, H] on the shard's device, or on the last shard the float32 logits [B, V] at
        each row's last real position ([B, T, V] at every position with all_positions);
        `to_numpy` brings them to the host.

        span: run only global layers [lo, hi) of this shard (a route may enter or leave a shard
        mid-way); a request must use the same span at every step.
        """
        for rid in request_ids:
            if rid not in self.cache:
                self.cache.add(rid)
        return self._forward(request_ids, inputs, lengths, all_positions, span)

    def decode(self, request_ids: list[str], inputs: torch.Tensor | np.ndarray,
               span: tuple[int, int] | None = None) -> torch.Tensor:
        """One step for requests that were prefilled: inputs [B, 1] token ids or [B, 1, H] hidden."""
        unknown = [rid for rid in request_ids if rid not in self.cache]
        if unknown:
            raise KeyError(f"decode for requests with no cache on this shard (never prefilled or released): {unknown}")
        return self._forward(request_ids, inputs, None, False, span)

    def release(self, request_id: str) -> bool:
        """Free a request's KV cache (finished, aborted or timed out). False if it had none."""
        return self.cache.release(request_id)

    def to_numpy(self, output: torch.Tensor, dtype: str | None = None) -> np.ndarray:
        """An output of this runner as a numpy array on the host, converted to the named dtype if
        given (bfloat16 as uint16 words). No copy for a CPU tensor already in that dtype."""
        return tensor_to_numpy(output, DTYPES[dtype] if dtype else None)

    def release_idle(self, max_idle_s: float) -> list[str]:
        idle = self.cache.idle_requests(max_idle_s)
        for rid in idle:
            self.cache.release(rid)
        return idle

    # ---- the forward pass ----

    @torch.inference_mode()
    def _forward(self, request_ids, inputs, lengths, all_positions, span):
        lo, hi = span or (self.start, self.end)
        if not self.start <= lo < hi <= self.end:
            raise ValueError(f"layers [{lo}, {hi}) are not inside this shard's [{self.start}, {self.end})")
        embeds, heads = lo == 0, hi == self.spec.num_layers
        batch, new = inputs.shape[0], inputs.shape[1]
        if batch != len(request_ids):
            raise ValueError(f"{batch} input rows for {len(request_ids)} requests")
        lengths = lengths or [new] * batch
        if isinstance(inputs, np.ndarray):
            inputs = tensor_from_numpy(inputs)
        if embeds:
            hidden = self.embed(inputs.to(self.device))
        else:
            hidden = inputs.to(self.device, self.dtype)
        longest = max(self.cache.length[rid] for rid in request_ids) + new
        if longest > self.spec.max_position_embeddings:
            raise CheckpointError(
                f"The conversation is longer than this model's context of {self.spec.max_position_embeddings} "
                "tokens: start a new chat or shorten the prompt.")
        past = self.cache.begin(request_ids, new)
        try:
            past_t = torch.tensor(past, device=self.device)
            positions = past_t[:, None] + torch.arange(new, device=self.device)
            masks = {w: self._mask(past, lengths, new, past_t, positions, w) for w in set(self.windows)}
            rotary = self.rotary(hidden, positions)
            for layer, window in zip(self.layers[lo - self.start:hi - self.start],
                                     self.windows[lo - self.start:hi - self.start]):
                hidden = layer(hidden, attention_mask=masks[window], position_ids=positions,
                               use_cache=True, position_embeddings=rotary, **{self.cache_keyword: self.cache})
        except BaseException:
            self.cache.abort()  # lengths stay as they were: the step never happened
            raise
        self.cache.end(request_ids, lengths)
        if not heads:
            return hidden
        if not all_positions:
            last = torch.tensor(lengths, device=self.device) - 1
            hidden = hidden[torch.arange(batch, device=self.device), last]
        return self.lm_head(self.norm(hidden)).float()

    def _mask(self, past, lengths, new, past_t, positions, window):
        """Boolean attention mask [B, 1, T, K], or None when plain causal attention is exact.

        Row b, query t sits at position past[b] + t and may see keys 0..past[b] + t (within the
        sliding window, if any). Padding rows see the same; their outputs are ignored.
        """
        uniform = len(set(past)) == 1 and len(set(lengths)) == 1
        if window is None and uniform and (new == 1 or past[0] == 0):
            return None  # sdpa's is_causal (prefill) or no mask at all (one new token) is exact
        keys = torch.arange(max(past) + new, device=self.device)
        visible = keys[None, None, :] <= positions[:, :, None]
        if window is not None:
            visible &= keys[None, None, :] > positions[:, :, None] - window
        return visible[:, None]


def tensor_from_numpy(array: np.ndarray) -> torch.Tensor:
    """A numpy array as a CPU tensor sharing its memory; a uint16 array is read as bfloat16 words."""
    if array.dtype == BFLOAT16_WORDS:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def tensor_to_numpy(tensor: torch.Tensor, dtype: torch.dtype | None = None) -> np.ndarray:
    """A tensor as a numpy array on the host (in dtype, if given); bfloat16 as uint16 words."""
    tensor = tensor.detach().to("cpu", dtype or tensor.dtype)
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(BFLOAT16_WORDS)
    return tensor.numpy()


def _window(config, layer, index: int) -> int | None:
    layer_types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    if not window:
        return None
    if layer_types is not None:
        return window if layer_types[index] == "sliding_attention" else None
    return window


def _cache_keyword(layer: nn.Module) -> str:
    """The decoder layer's name for its cache argument: transformers 5.24 renamed `past_key_values`
    to `cache` (the old name is only a deprecated alias until 5.40)."""
    parameters = inspect.signature(layer.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _load_shard(checkpoint: Checkpoint, start: int, end: int, device: torch.device, dtype: torch.dtype):
    """Build transformers' model for the checkpoint with only layers [start, end) materialised."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import convert_and_load_state_dict_in_model
    from transformers.modeling_utils import LoadStateDictConfig
    from transformers.utils import logging as hf_logging

    spec = checkpoint.spec
    config = AutoConfig.from_pretrained(checkpoint.path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    inner = model.model
    for i in range(spec.num_layers):
        if not start <= i < end:
            inner.layers[i] = nn.Module()
    if start != 0:
        inner.embed_tokens = None
    if end != spec.num_layers:
        inner.norm = None
        model.lm_head = None

    keys = checkpoint.keys_for_range(start, end)
    by_file: dict[str, list[str]] = {}
    for key in keys:
        by_file.setdefault(checkpoint.weight_map[key], []).append(key)
    with contextlib.ExitStack() as files:
        state = {}
        for name, names in by_file.items():
            handle = files.enter_context(open_safetensors(checkpoint.path / name))
            for key in names:
                state[key] = handle.get_slice(key)
        if model.lm_head is not None and spec.tie_word_embeddings and inner.embed_tokens is None:
            state["lm_head.weight"] = state.pop("model.embed_tokens.weight", None)
        state = {k: v for k, v in state.items() if v is not None}
        load_config = LoadStateDictConfig(device_map={"": device}, dtype=dtype,
                                          weight_mapping=get_model_conversion_mapping(model))
        was_enabled = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            convert_and_load_state_dict_in_model(model, state, load_config)
        except Exception as exc:  # a truncated tensor or wrong shape surfaces here
            raise damaged(checkpoint.path / next(iter(by_file)), exc) from None
        finally:
            if was_enabled:
                hf_logging.enable_progress_bar()

    if model.lm_head is not None and spec.tie_word_embeddings and inner.embed_tokens is not None:
        model.lm_head.weight = inner.embed_tokens.weight
    missing = [name for name, p in model.named_parameters() if p.device.type == "meta"]
    if missing:
        raise CheckpointError(
            f"The checkpoint in {checkpoint.path} lacks {len(missing)} tensor(s) that layers "
            f"[{start}, {end}) need, such as {missing[0]!r}: download it again."
        )
    model.eval()
    return model
