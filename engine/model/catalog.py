"""The model catalog (resources/catalog.toml): the models Potluck offers by name, with their hub ids
and the config.json numbers from which their size and a swarm's memory needs are computed.

Pure Python (no torch): the API's /v1/models and the app's model picker read it too.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from engine.model.errors import CheckpointError
from engine.model.spec import ModelSpec, read_config
from engine.paths import resources_dir

RESOURCES_DIR = resources_dir()
CATALOG_FILE = RESOURCES_DIR / "catalog.toml"

# What "a swarm can serve this model" means in swarm_memory_bytes: this many requests of this many
# tokens each may hold KV cache at once.
DEFAULT_CONTEXT_TOKENS = 4096
DEFAULT_CONCURRENT_REQUESTS = 8


@dataclass(frozen=True)
class CatalogEntry:
    name: str  # what users type: "qwen3-8b"
    title: str
    description: str
    license: str
    hf_id: str | None = None  # a hub model, or ...
    local_dir: Path | None = None  # ... a model shipped in resources/ (the demo model)
    revision: str = "main"
    gated: bool = False  # the hub asks users to accept a licence; downloads need HF_TOKEN
    params: int | None = None
    config: dict = field(default_factory=dict, hash=False)

    @property
    def is_built(self) -> bool:
        """A hub model is always available (to download); a shipped one only once it is built."""
        return self.local_dir is None or (self.local_dir / "config.json").is_file()

    @cached_property
    def spec(self) -> ModelSpec | None:
        if self.config:
            return ModelSpec.from_config(self.config)
        if self.local_dir is not None and self.is_built:
            return ModelSpec.from_config(read_config(self.local_dir))
        return None

    def swarm_memory_bytes(self, context_tokens: int = DEFAULT_CONTEXT_TOKENS,
                           concurrent_requests: int = DEFAULT_CONCURRENT_REQUESTS) -> int | None:
        """Memory the whole swarm needs: every layer's weights once, embeddings and lm_head, and KV
        cache for `concurrent_requests` requests of `context_tokens` tokens. Activations are small
        beside these and are left out."""
        spec = self.spec
        if spec is None:
            return None
        kv = spec.kv_bytes_per_token_layer() * spec.num_layers * context_tokens * concurrent_requests
        return spec.total_bytes + kv

    def summary(self) -> dict:
        """The entry as JSON-ready numbers, for /v1/models and the app's picker."""
        spec = self.spec
        return {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "hf_id": self.hf_id,
            "license": self.license,
            "gated": self.gated,
            "available": self.is_built,
            "params": self.params if self.params is not None else (spec and count_params(spec)),
            "num_layers": spec.num_layers if spec else None,
            "dtype": spec.dtype if spec else None,
            "weights_bytes": spec.total_bytes if spec else None,
            "layer_bytes": spec.layer_bytes if spec else None,
            "kv_bytes_per_token": spec.kv_bytes_per_token_layer() * spec.num_layers if spec else None,
            "swarm_memory_bytes": self.swarm_memory_bytes(),
        }


def count_params(spec: ModelSpec) -> int:
    """Parameters of the model as published: tied embeddings counted once, plus the final norm."""
    vocab_matrices = 1 if spec.tie_word_embeddings else 2
    return spec.num_layers * spec.layer_params + vocab_matrices * spec.vocab_size * spec.hidden_size + spec.hidden_size


@dataclass(frozen=True)
class Catalog:
    entries: tuple[CatalogEntry, ...]

    def find(self, name: str) -> CatalogEntry | None:
        wanted = name.strip().lower()
        return next((e for e in self.entries if e.name == wanted), None)

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]


def load_catalog(path: str | Path = CATALOG_FILE) -> Catalog:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CheckpointError(f"The model catalog {path} cannot be read ({exc}): reinstall Potluck.") from None
    entries = [_entry(raw, path.parent) for raw in data.get("model", [])]
    names = [e.name for e in entries]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise CheckpointError(f"The model catalog {path} names {', '.join(duplicates)} twice.")
    return Catalog(tuple(entries))


_FIELDS = {"name", "title", "description", "license", "hf_id", "local_dir", "revision", "gated", "params", "config"}


def _entry(raw: dict, base: Path) -> CatalogEntry:
    name = raw.get("name", "?")
    unknown = set(raw) - _FIELDS
    if unknown:
        raise CheckpointError(f"Catalog entry {name!r} has unknown fields: {', '.join(sorted(unknown))}.")
    for key in ("name", "title", "description", "license"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise CheckpointError(f"Catalog entry {name!r} lacks {key!r}.")
    if name != name.lower():
        raise CheckpointError(f"Catalog name {name!r} must be lower case.")
    if ("hf_id" in raw) == ("local_dir" in raw):
        raise CheckpointError(f"Catalog entry {name!r} needs exactly one of hf_id and local_dir.")
    if "hf_id" in raw and raw["hf_id"].count("/") != 1:
        raise CheckpointError(f"Catalog entry {name!r}: hf_id {raw['hf_id']!r} is not of the form org/name.")
    if "hf_id" in raw and not raw.get("config"):
        raise CheckpointError(f"Catalog entry {name!r} lacks the [model.config] numbers of its config.json.")
    entry = CatalogEntry(
        name=name,
        title=raw["title"],
        description=raw["description"],
        license=raw["license"],
        hf_id=raw.get("hf_id"),
        local_dir=(base / raw["local_dir"]) if "local_dir" in raw else None,
        revision=str(raw.get("revision", "main")),
        gated=bool(raw.get("gated", False)),
        params=raw.get("params"),
        config=dict(raw.get("config", {})),
    )
    if entry.config:
        entry.spec  # validates the numbers (raises CheckpointError naming the bad key)
    return entry
