"""ModelSpec: the numbers of a checkpoint that placement and routing need, read from config.json.

Pure Python (no torch): the scheduler and the wire-protocol validator use it too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from engine.model.errors import CheckpointError

# config.json "model_type" -> family. Families share how a layer's parameters are counted.
SUPPORTED_ARCHITECTURES = {
    "llama": "dense",
    "mistral": "dense",
    "qwen2": "dense",
    "qwen3": "dense",
    "qwen3_moe": "moe",
}

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ModelSpec:
    architecture: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int  # dense MLP width; for MoE, the width of one expert
    num_experts: int  # 0 for dense models
    num_experts_per_token: int  # 0 for dense models
    vocab_size: int
    tie_word_embeddings: bool
    dtype: str  # the checkpoint's dtype: float32, bfloat16 or float16
    attention_bias: bool  # bias on q/k/v projections
    qk_norm: bool  # per-head RMSNorm on q and k (Qwen3)
    max_position_embeddings: int
    sliding_window: int | None

    # ---- derived sizes (parameters, then bytes at the checkpoint's dtype) ----

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def attention_params(self) -> int:
        q = self.num_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        params = self.hidden_size * (q + 2 * kv) + q * self.hidden_size
        if self.attention_bias:
            params += q + 2 * kv
        if self.qk_norm:
            params += 2 * self.head_dim
        return params

    @property
    def mlp_params(self) -> int:
        """Parameters stored per layer in the MLP (all experts of an MoE layer)."""
        one = 3 * self.hidden_size * self.intermediate_size
        if self.num_experts:
            return self.num_experts * one + self.hidden_size * self.num_experts  # + router
        return one

    @property
    def active_mlp_params(self) -> int:
        """Parameters one token multiplies through in the MLP (only the routed experts of an MoE)."""
        one = 3 * self.hidden_size * self.intermediate_size
        if self.num_experts:
            return self.num_experts_per_token * one + self.hidden_size * self.num_experts
        return one

    @property
    def layer_params(self) -> int:
        return self.attention_params + self.mlp_params + 2 * self.hidden_size  # + two RMSNorms

    @property
    def layer_bytes(self) -> int:
        return self.layer_params * self.dtype_bytes

    @property
    def embed_bytes(self) -> int:
        return self.vocab_size * self.hidden_size * self.dtype_bytes

    @property
    def lm_head_bytes(self) -> int:
        """Final norm + output projection. Tied models still hold a copy of the vocab matrix on the
        last shard, so the bytes are the same either way."""
        return (self.vocab_size + 1) * self.hidden_size * self.dtype_bytes

    @property
    def total_bytes(self) -> int:
        return self.num_layers * self.layer_bytes + self.embed_bytes + self.lm_head_bytes

    def kv_bytes_per_token_layer(self, dtype_bytes: int | None = None) -> int:
        return 2 * self.num_kv_heads * self.head_dim * (dtype_bytes or self.dtype_bytes)

    @property
    def flops_per_token_layer(self) -> int:
        """Matmul FLOPs of one token through one layer, excluding attention over the context."""
        return 2 * (self.attention_params + self.active_mlp_params)

    @property
    def attention_flops_per_context_token(self) -> int:
        """Extra FLOPs per layer for each token already in the context (QK^T and AV)."""
        return 4 * self.num_heads * self.head_dim

    def shard_bytes(self, start: int, end: int) -> int:
        """Weight bytes a shard holding layers [start, end) loads."""
        size = (end - start) * self.layer_bytes
        if start == 0:
            size += self.embed_bytes
        if end == self.num_layers:
            size += self.lm_head_bytes
        return size

    def check_range(self, start: int, end: int) -> None:
        if not (0 <= start < end <= self.num_layers):
            raise CheckpointError(
                f"Layer range [{start}, {end}) is outside this model, which has layers 0 to "
                f"{self.num_layers - 1}: choose 0 <= start < end <= {self.num_layers}."
            )

    def as_scheduler_shape(self) -> dict:
        """The [model] numbers of a scheduler scenario, for this checkpoint."""
        return {
            "num_layers": self.num_layers,
            "layer_bytes": self.layer_bytes,
            "embed_bytes": self.embed_bytes,
            "lm_head_bytes": self.lm_head_bytes,
            "kv_bytes_per_token_layer": self.kv_bytes_per_token_layer(),
            "flops_per_token_layer": self.flops_per_token_layer,
            "hidden_size": self.hidden_size,
            "dtype_bytes": self.dtype_bytes,
        }

    # ---- construction ----

    @classmethod
    def from_config(cls, config: dict) -> "ModelSpec":
        model_type = config.get("model_type")
        if model_type not in SUPPORTED_ARCHITECTURES:
            supported = ", ".join(sorted(SUPPORTED_ARCHITECTURES))
            raise CheckpointError(
                f"Unsupported architecture {model_type!r} (config.json model_type). "
                f"Potluck runs these families: {supported}."
            )
        try:
            hidden = _positive(config, "hidden_size")
            heads = _positive(config, "num_attention_heads")
            kv_heads = int(config.get("num_key_value_heads") or heads)
            head_dim = int(config.get("head_dim") or hidden // heads)
            moe = SUPPORTED_ARCHITECTURES[model_type] == "moe"
            if moe and (config.get("mlp_only_layers") or int(config.get("decoder_sparse_step", 1)) != 1):
                raise CheckpointError(
                    "This MoE checkpoint mixes dense and expert layers (mlp_only_layers / decoder_sparse_step), "
                    "which Potluck does not support yet."
                )
            dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
            if dtype not in DTYPE_BYTES:
                raise CheckpointError(
                    f"Unsupported weight dtype {dtype!r} in config.json: Potluck runs float32, bfloat16 and "
                    "float16 checkpoints (quantized checkpoints are not supported yet)."
                )
            return cls(
                architecture=model_type,
                num_layers=_positive(config, "num_hidden_layers"),
                hidden_size=hidden,
                num_heads=heads,
                num_kv_heads=kv_heads,
                head_dim=head_dim,
                intermediate_size=_positive(config, "moe_intermediate_size" if moe else "intermediate_size"),
                num_experts=_positive(config, _first_key(config, "num_experts", "num_local_experts")) if moe else 0,
                num_experts_per_token=_positive(config, "num_experts_per_tok") if moe else 0,
                vocab_size=_positive(config, "vocab_size"),
                tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
                dtype=dtype,
                attention_bias=bool(config.get("attention_bias", model_type == "qwen2")),
                qk_norm=model_type in ("qwen3", "qwen3_moe"),
                max_position_embeddings=int(config.get("max_position_embeddings") or 4096),
                sliding_window=_sliding_window(config),
            )
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"config.json has a malformed value: {exc}") from None

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> "ModelSpec":
        return cls.from_config(read_config(path))


def read_config(path: str | Path) -> dict:
    config_path = Path(path) / "config.json"
    if not config_path.is_file():
        raise CheckpointError(
            f"No config.json in {path}: point --model at a Hugging Face checkpoint directory "
            "(one that holds config.json, the tokenizer files and *.safetensors)."
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{config_path} is not valid JSON ({exc}): the download may be damaged.") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path} does not hold a JSON object: the download may be damaged.")
    return config


def _positive(config: dict, key: str) -> int:
    if key not in config:
        raise CheckpointError(f"config.json lacks {key!r}, which this architecture needs.")
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CheckpointError(f"config.json has {key} = {value!r}: expected a positive integer.")
    return value


def _first_key(config: dict, *keys: str) -> str:
    """transformers 5 writes some fields under a new name (num_local_experts); the hub uses the old one."""
    return next((key for key in keys if key in config), keys[0])


def _sliding_window(config: dict) -> int | None:
    window = config.get("sliding_window")
    if not window:
        return None
    if config.get("model_type") in ("qwen2", "qwen3", "qwen3_moe") and not config.get("use_sliding_window"):
        return None
    return int(window)
