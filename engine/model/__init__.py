"""Hugging Face checkpoints: ModelSpec, shard weight loading, tokenizer and chat template."""

from engine.model.errors import CheckpointError
from engine.model.spec import ModelSpec

__all__ = ["CheckpointError", "ModelSpec"]
