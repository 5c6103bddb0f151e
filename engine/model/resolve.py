"""What `--model` names: a checkpoint directory, a catalog name, or a Hugging Face id, turned into a
local checkpoint directory (downloading what the node's layers need)."""

from __future__ import annotations

import re
from pathlib import Path

from engine.model.catalog import load_catalog
from engine.model.download import Layers, download_metadata, download_shard
from engine.model.errors import CheckpointError
from engine.model.progress import ProgressCallback

# org/name, optionally @revision (a branch, tag or commit)
_HUB_ID = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")


def resolve_model(name_or_path: str | Path, layers: Layers | None = None,
                  progress: ProgressCallback | None = None, weights: bool = True, **download_options) -> Path:
    """A local directory stays as is; a catalog name becomes its hub id; a hub id is downloaded
    (only the files `layers` needs, or everything when layers is None) into the Hugging Face cache
    and its snapshot directory returned. weights=False fetches only config, tokenizer and index
    (a scheduler or a client-only node). download_options go to download_shard (cache_dir,
    endpoint, token)."""
    text = str(name_or_path)
    local = Path(text).expanduser()
    if local.is_dir():
        return local

    catalog = load_catalog()
    entry = catalog.find(text)
    if entry is not None:
        if entry.local_dir is not None:
            if not entry.is_built:
                raise CheckpointError(
                    f"The {entry.name} model is not built in this installation ({entry.local_dir} is missing). "
                    f"Choose another model: {', '.join(n for n in catalog.names if n != entry.name)}."
                )
            return entry.local_dir
        return _download(entry.hf_id, entry.revision, layers, progress, weights, download_options)

    match = _HUB_ID.match(text)
    if match:
        return _download(match["repo"], match["revision"] or "main", layers, progress, weights, download_options)
    raise CheckpointError(
        f"--model {text!r} is not a directory, a model of the catalog ({', '.join(catalog.names)}) "
        "or a Hugging Face id such as Qwen/Qwen3-8B."
    )


def _download(repo_id, revision, layers, progress, weights, options) -> Path:
    if not weights:
        return download_metadata(repo_id, revision=revision, **options)
    return download_shard(repo_id, layers, revision=revision, progress=progress, **options)
