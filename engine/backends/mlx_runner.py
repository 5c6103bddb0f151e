"""MlxShardRunner: layers [start, end) of a Hugging Face checkpoint on MLX (Apple Silicon; MLX's CPU
device elsewhere).

The model code is mlx-lm's own: the family's Model is built from its ModelArgs (lazily: MLX
allocates nothing until an array is evaluated), every layer outside the range is dropped, and only
the shard's tensors are read from the same safetensors files the torch backend reads (`mx.load` is
lazy too), passed through the family's `sanitize` (which, for example, stacks per-expert MoE
tensors). Each request has its own mlx-lm KVCache per layer (mlx_kv_cache.py).

The contract is TorchShardRunner's, so LocalPipeline and the swarm stage use either: inputs are
numpy arrays (the engine's common currency, engine.backends.host) or MLX arrays, outputs are MLX
arrays, and `to_numpy` brings one to the host; bfloat16, which numpy lacks, crosses as its raw
16-bit words, as it does on the wire. Nothing here needs torch (a Mac installs none; transformers,
which mlx-lm uses, imports it only where it is installed).
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from engine.backends.host import BFLOAT16_WORDS
from engine.backends.mlx_device import MLX_DTYPES, pick_mlx_device, pick_mlx_dtype
from engine.backends.mlx_kv_cache import RequestCaches
from engine.model.checkpoint import Checkpoint, damaged
from engine.model.errors import CheckpointError

_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.")


class MlxShardRunner:
    def __init__(self, checkpoint: str | Path | Checkpoint, start: int, end: int,
                 device: str = "auto", dtype: str = "auto"):
        self.checkpoint = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint(checkpoint)
        self.spec = self.checkpoint.spec
        self.spec.check_range(start, end)
        self.start, self.end = start, end
        self.is_first, self.is_last = start == 0, end == self.spec.num_layers
        self.device = pick_mlx_device(device)
        self.dtype_name = pick_mlx_dtype(dtype, self.spec.dtype, self.device)
        self.mx_dtype = MLX_DTYPES[self.dtype_name]

        with mx.stream(self.device):
            self.shard = load_shard(self.checkpoint, start, end, self.mx_dtype)
        self.layers = self.shard.layers
        self.windows = layer_windows(self.checkpoint.path, start, end)
        self.cache = RequestCaches(len(self.layers), self.spec.num_kv_heads, self.spec.head_dim,
                                   self.mx_dtype.size)

    # ---- requests ----

    def prefill(self, request_ids: list[str], inputs: mx.array | np.ndarray, lengths: list[int] | None = None,
                all_positions: bool = False, span: tuple[int, int] | None = None) -> mx.array:
        """As TorchShardRunner.prefill: token ids [B, T] on the first shard or hidden states
        [B, T, H], right-padded, each row's real length in `lengths`. Returns hidden states
        [B, T, H] in this shard's dtype, or on the last shard float32 logits [B, V] at each row's
        last real position ([B, T, V] with all_positions). span: run only global layers [lo, hi)."""
        for rid in request_ids:
            if rid not in self.cache:
                self.cache.add(rid)
        return self._forward(request_ids, inputs, lengths, all_positions, span)

    def decode(self, request_ids: list[str], inputs: mx.array | np.ndarray,
               span: tuple[int, int] | None = None) -> mx.array:
        """One step for requests that were prefilled: inputs [B, 1] token ids or [B, 1, H] hidden."""
        unknown = [rid for rid in request_ids if rid not in self.cache]
        if unknown:
            raise KeyError(f"decode for requests with no cache on this shard (never prefilled or released): {unknown}")
        return self._forward(request_ids, inputs, None, False, span)

    def release(self, request_id: str) -> bool:
        """Free a request's KV cache (finished, aborted or timed out). False if it had none."""
        released = self.cache.release(request_id)
        if released and not len(self.cache):
            mx.clear_cache()  # hand MLX's cached buffers back to the system while idle
        return released

    def release_idle(self, max_idle_s: float) -> list[str]:
        idle = self.cache.idle_requests(max_idle_s)
        for rid in idle:
            self.release(rid)
        return idle

    def to_numpy(self, output: mx.array, dtype: str | None = None) -> np.ndarray:
        """An output of this runner as a numpy array, converted to the named dtype if given
        (bfloat16 as uint16 words)."""
        with mx.stream(self.device):
            return array_to_numpy(output.astype(MLX_DTYPES[dtype]) if dtype else output)

    # ---- the forward pass ----

    def _forward(self, request_ids, inputs, lengths, all_positions, span):
        lo, hi = span or (self.start, self.end)
        if not self.start <= lo < hi <= self.end:
            raise ValueError(f"layers [{lo}, {hi}) are not inside this shard's [{self.start}, {self.end})")
        embeds, heads = lo == 0, hi == self.spec.num_layers
        batch, new = inputs.shape[0], inputs.shape[1]
        if batch != len(request_ids):
            raise ValueError(f"{batch} input rows for {len(request_ids)} requests")
        lengths = lengths or [new] * batch
        past = [self.cache.length[rid] for rid in request_ids]
        if max(past) + new > self.spec.max_position_embeddings:
            raise CheckpointError(
                f"The conversation is longer than this model's context of {self.spec.max_position_embeddings} "
                "tokens: start a new chat or shorten the prompt.")
        local = range(lo - self.start, hi - self.start)
        try:
            with mx.stream(self.device):
                x = to_mlx(inputs)
                hidden = self.shard.embed_tokens(x) if embeds else x.astype(self.mx_dtype)
                masks = {w: attention_mask(past, new, w) for w in {self.windows[i] for i in local}}
                for i in local:
                    cache = self.cache.for_layer(request_ids, i, past, new)
                    hidden = self.layers[i](hidden, masks[self.windows[i]], cache=cache)
                out = self._logits(hidden, lengths, all_positions) if heads else hidden
                mx.eval(out, self.cache.state(request_ids, local))
        except BaseException:
            self.cache.abort(request_ids)  # lengths stay as they were: the step never happened
            raise
        self.cache.end(request_ids, lengths)
        return out

    def _logits(self, hidden: mx.array, lengths: list[int], all_positions: bool) -> mx.array:
        if not all_positions:
            hidden = hidden[mx.arange(hidden.shape[0]), mx.array(lengths) - 1]
        hidden = self.shard.norm(hidden)
        if self.shard.lm_head is None:  # tied embeddings, as mlx-lm's own models apply them
            return self.shard.embed_tokens.as_linear(hidden).astype(mx.float32)
        return self.shard.lm_head(hidden).astype(mx.float32)


def attention_mask(past: list[int], new: int, window: int | None):
    """The mask mlx-lm's attention takes: None or "causal" where they are exact (as mlx-lm's own
    models pass them), else a boolean [B, 1, T, K] array.

    Row b, query t sits at position past[b] + t and may see keys 0..past[b] + t (within the sliding
    window, if any). Keys past a row's own length are the padding of BatchRows: never visible to a
    real token. Padding queries see what real ones would; their outputs are ignored.
    """
    if window is None and len(set(past)) == 1:
        return None if new == 1 else "causal"  # mlx's "causal" is aligned to the last key
    positions = mx.array(past)[:, None] + mx.arange(new)[None]
    keys = mx.arange(max(past) + new)[None, None]
    visible = keys <= positions[..., None]
    if window is not None:
        visible = visible & (keys > positions[..., None] - window)
    return visible[:, None]


def layer_windows(path: Path, start: int, end: int) -> list[int | None]:
    """Each layer's sliding window as transformers' config resolves it (defaults, layer_types), the
    rule the torch backend follows, so that both backends compute the same function. (mlx-lm's
    Llama, which runs Mistral, ignores a window that layer_types does not spell out.)"""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if not window:
        return [None] * (end - start)
    return [window if layer_types is None or layer_types[i] == "sliding_attention" else None
            for i in range(start, end)]


# ---- building the shard from mlx-lm's model classes ----

class _Shard(nn.Module):
    """The parts of an mlx-lm model one shard keeps, named as the checkpoint names them less the
    "model." prefix, with shard-local layer numbers."""

    def __init__(self, embed_tokens, layers: list, norm, lm_head):
        super().__init__()
        self.embed_tokens = embed_tokens
        self.layers = layers
        self.norm = norm
        self.lm_head = lm_head


def mlx_config(config: dict) -> dict:
    """A Hugging Face config.json as mlx-lm's ModelArgs read it.

    transformers 5 writes some fields under names that mlx-lm's Llama and Qwen3-MoE do not read:
    rope_theta and the scaling inside rope_parameters, num_local_experts for num_experts. And where
    config.json omits tie_word_embeddings, transformers (and ModelSpec) read False, mlx-lm's Llama True.
    """
    config = dict(config, tie_word_embeddings=bool(config.get("tie_word_embeddings", False)))
    rope = config.get("rope_parameters") or {}
    if "rope_theta" not in config and "rope_theta" in rope:
        config["rope_theta"] = rope["rope_theta"]
    if not config.get("rope_scaling") and rope.get("rope_type", "default") != "default":
        config["rope_scaling"] = rope
    if "num_experts" not in config and "num_local_experts" in config:
        config["num_experts"] = config["num_local_experts"]
    if config.get("model_type") == "qwen3_moe":
        config.setdefault("decoder_sparse_step", 1)
        config.setdefault("mlp_only_layers", [])
    return config


def mlx_model(config: dict) -> nn.Module:
    """mlx-lm's Model for a Hugging Face config, with lazy (unallocated) random weights."""
    from mlx_lm.utils import MODEL_REMAPPING

    config = mlx_config(config)
    model_type = MODEL_REMAPPING.get(config["model_type"], config["model_type"])
    try:
        family = importlib.import_module(f"mlx_lm.models.{model_type}")
    except ImportError:
        raise CheckpointError(f"This mlx-lm has no {model_type!r} model: upgrade mlx-lm, or use --backend torch.") \
            from None
    return family.Model(family.ModelArgs.from_dict(config))


def load_shard(checkpoint: Checkpoint, start: int, end: int, dtype: mx.Dtype) -> _Shard:
    """mlx-lm's model for the checkpoint with only layers [start, end) (and the embeddings on the
    first shard, norm and lm_head on the last) loaded and evaluated."""
    spec = checkpoint.spec
    first, last = start == 0, end == spec.num_layers
    tied = spec.tie_word_embeddings
    model = mlx_model(checkpoint.config)
    inner = model.model
    shard = _Shard(embed_tokens=inner.embed_tokens if first or (last and tied) else None,
                   layers=inner.layers[start:end],
                   norm=inner.norm if last else None,
                   lm_head=getattr(model, "lm_head", None) if last and not tied else None)

    by_file: dict[str, list[str]] = {}
    for key in checkpoint.keys_for_range(start, end):
        by_file.setdefault(checkpoint.weight_map[key], []).append(key)
    weights = {}
    for name, keys in by_file.items():
        try:
            arrays = mx.load(str(checkpoint.path / name))  # lazy: only the tensors used are read
        except (OSError, RuntimeError, ValueError) as exc:
            raise damaged(checkpoint.path / name, exc) from None
        for key in keys:
            if key not in arrays:
                raise damaged(checkpoint.path / name, KeyError(f"{key} is not in the file"))
            weights[key] = arrays[key]
    if hasattr(model, "sanitize"):
        weights = model.sanitize(weights)
    weights = {_local_name(k, start): v.astype(dtype) for k, v in weights.items()}
    try:
        shard.load_weights(list(weights.items()), strict=True)
    except ValueError as exc:
        raise CheckpointError(
            f"The tensors of layers [{start}, {end}) in {checkpoint.path} do not fit mlx-lm's "
            f"{spec.architecture} model ({' '.join(str(exc).split())[:300]}). The download may be incomplete: "
            "download it again, or use --backend torch.") from None
    try:
        mx.eval(shard.state)  # read the weights now, on this thread (and RoPE tables mlx-lm made lazily)
    except (OSError, RuntimeError, ValueError) as exc:  # a truncated file surfaces here
        raise damaged(checkpoint.path / next(iter(by_file)), exc) from None
    return shard


def _local_name(key: str, start: int) -> str:
    match = _LAYER_KEY.match(key)
    if match:
        return f"layers.{int(match.group(1)) - start}.{key[match.end():]}"
    return key.removeprefix("model.")


# ---- crossing between numpy and MLX ----

def to_mlx(array: mx.array | np.ndarray) -> mx.array:
    """A numpy array (a uint16 one holds bfloat16 words) as an MLX array with the same values."""
    if isinstance(array, mx.array):
        return array
    if array.dtype == BFLOAT16_WORDS:
        return mx.array(array).view(mx.bfloat16)
    return mx.array(array)


def array_to_numpy(array: mx.array) -> np.ndarray:
    """An MLX array as a numpy array with the same values; bfloat16 as uint16 words."""
    if array.dtype == mx.bfloat16:
        return np.asarray(array.view(mx.uint16))
    return np.asarray(array)
