"""A Hugging Face checkpoint on disk: which safetensors files hold which tensors, and which of them a
layer range needs.

Reads only safetensors headers until asked for tensors; a shard's loader then opens just the files
that hold its layers (memory-mapped by safetensors).
"""

from __future__ import annotations

import json
import re
from functools import cached_property
from pathlib import Path

from safetensors import SafetensorError, safe_open

from engine.model.errors import CheckpointError
from engine.model.spec import ModelSpec, read_config

INDEX_FILE = "model.safetensors.index.json"
_LAYER_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.")


class Checkpoint:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise CheckpointError(f"Model directory {self.path} does not exist.")
        self.config = read_config(self.path)
        self.spec = ModelSpec.from_config(self.config)

    @cached_property
    def weight_map(self) -> dict[str, str]:
        """Tensor name -> file name, from the index when there is one, else from the files' headers."""
        index_path = self.path / INDEX_FILE
        if index_path.is_file():
            # Files are checked when a layer range asks for them: a node that downloaded only its
            # layers' files has a partial directory, and that is fine.
            return read_index(index_path)
        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            raise CheckpointError(
                f"No weights in {self.path}: expected model.safetensors or a sharded checkpoint with "
                f"{INDEX_FILE}. (PyTorch .bin checkpoints are not loaded, for safety: they are pickles.)"
            )
        weight_map = {}
        for file in files:
            with open_safetensors(file, framework="numpy") as handle:  # names only: no torch needed
                weight_map.update(dict.fromkeys(handle.keys(), file.name))
        return weight_map

    def keys_for_range(self, start: int, end: int) -> list[str]:
        """Names of the tensors a shard serving layers [start, end) loads."""
        keys = keys_for_range(self.weight_map, self.spec, start, end)
        for name in sorted({self.weight_map[key] for key in keys}):
            if not (self.path / name).is_file():
                raise CheckpointError(
                    f"{name} is missing from {self.path}, but the index lists it: the download is "
                    "incomplete. Download the checkpoint again (Potluck resumes where it stopped)."
                )
        return keys

    def files_for_range(self, start: int, end: int) -> list[str]:
        return sorted({self.weight_map[key] for key in self.keys_for_range(start, end)})


def read_index(index_path: Path) -> dict[str, str]:
    """The weight map (tensor name -> file name) of a model.safetensors.index.json."""
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index_path} is damaged ({exc}): delete it and download the checkpoint again.") \
            from None
    return weight_map


def keys_for_range(tensor_names, spec: ModelSpec, start: int, end: int) -> list[str]:
    """Which of a checkpoint's tensors a shard serving layers [start, end) needs: its layers, the
    embeddings on the first shard, the final norm and lm_head on the last (and the embeddings there
    too when they are tied). Shared by the loader and the downloader."""
    spec.check_range(start, end)
    first, last = start == 0, end == spec.num_layers
    keys = []
    for key in tensor_names:
        match = _LAYER_KEY.search(key)
        if match:
            if start <= int(match.group(1)) < end:
                keys.append(key)
        elif "embed_tokens" in key:
            if first or (last and spec.tie_word_embeddings):
                keys.append(key)
        elif last and ("lm_head" in key or key.endswith("norm.weight")):
            keys.append(key)
    return keys


class open_safetensors:
    """safe_open with errors a user can act on."""

    def __init__(self, file: Path, framework: str = "pt", device: str = "cpu"):
        self.file = Path(file)
        try:
            self._handle = safe_open(str(file), framework=framework, device=device)
        except FileNotFoundError:
            raise CheckpointError(f"{file} is missing: download the checkpoint again.") from None
        except (SafetensorError, OSError, ValueError) as exc:
            raise damaged(self.file, exc) from None

    def __enter__(self):
        return self._handle.__enter__()

    def __exit__(self, *exc_info):
        return self._handle.__exit__(*exc_info)


def damaged(file: Path, exc: Exception) -> CheckpointError:
    return CheckpointError(
        f"{file.name} in {file.parent} is damaged and cannot be read ({exc}). "
        "Delete it and download the checkpoint again."
    )
