"""Fetch what a shard needs from the Hugging Face hub: config, tokenizer, chat template and the
safetensors index first, then only the safetensors files that hold the shard's layers.

Files go into the standard Hugging Face cache (HF_HOME / HF_HUB_CACHE), so transformers, the `hf`
command line and other tools share them. HF_ENDPOINT (mirrors), HF_TOKEN and HF_HUB_OFFLINE are
honoured the way huggingface_hub reads them. Every file is checked against the hash the hub
publishes for it (sha256 for LFS files, the git blob id for the others) before it is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from shutil import disk_usage
from urllib.parse import urlsplit

import httpx2
from huggingface_hub import HfApi, constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import http_get, repo_folder_name
from huggingface_hub.utils import WeakFileLock, build_hf_headers

from engine.model.checkpoint import INDEX_FILE, keys_for_range, read_index
from engine.model.errors import DownloadError, NotEnoughDiskSpace
from engine.model.progress import ProgressCallback, ProgressMeter
from engine.model.spec import ModelSpec, read_config

log = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
# Everything but the weights that a shard (or the origin's tokenizer and chat template) may read.
METADATA_FILES = (
    "config.json", "generation_config.json", INDEX_FILE,
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json",
)
RESERVE_BYTES = 256 * 2**20  # left free on the disk after the download, for the system and logs
VERIFIED_STAMPS = ".potluck-verified.json"  # in the repo's cache folder; the hf cache scanner ignores it

Layers = tuple[int, int]  # [start, end), as everywhere in the engine


@dataclass(frozen=True)
class HubFile:
    name: str
    size: int | None
    digest: tuple[str, str] | None  # ("sha256" | "git-sha1", hex), as the hub publishes it


@dataclass(frozen=True)
class Repo:
    repo_id: str
    revision: str
    cache_dir: Path
    endpoint: str | None
    token: str | bool | None

    @property
    def storage(self) -> Path:
        return self.cache_dir / repo_folder_name(repo_id=self.repo_id, repo_type="model")

    @property
    def where(self) -> str:
        return self.endpoint or constants.ENDPOINT

    def fetch(self, filename: str, revision: str, **kwargs) -> Path:
        """huggingface_hub's own download into the cache (used for small files, and to link a blob
        fetched by fetch_weight_file into the snapshot)."""
        return Path(hf_hub_download(self.repo_id, filename, revision=revision, cache_dir=self.cache_dir,
                                    endpoint=self.endpoint, token=self.token, tqdm_class=_Silent, **kwargs))


class _Unreachable(Exception):
    """The hub could not be reached (offline mode, no network, hub down)."""


def download_shard(repo_id: str, layers: Layers | None = None, *, revision: str = "main",
                   cache_dir: str | Path | None = None, endpoint: str | None = None,
                   token: str | bool | None = None, progress: ProgressCallback | None = None) -> Path:
    """Make sure the cache holds what serving `layers` ([start, end); None = the whole model) of
    `repo_id` needs, downloading what is missing, and return the snapshot directory."""
    return _fetch(Repo(repo_id, revision, Path(cache_dir or constants.HF_HUB_CACHE), endpoint, token),
                  layers, progress, with_weights=True)


def download_metadata(repo_id: str, *, revision: str = "main", cache_dir: str | Path | None = None,
                      endpoint: str | None = None, token: str | bool | None = None) -> Path:
    """Only config, tokenizer, chat template and index: what a client-only node (or a scheduler that
    needs the ModelSpec before it assigns layers) reads. Returns the snapshot directory."""
    return _fetch(Repo(repo_id, revision, Path(cache_dir or constants.HF_HUB_CACHE), endpoint, token),
                  None, None, with_weights=False)


def _fetch(repo: Repo, layers: Layers | None, progress: ProgressCallback | None, with_weights: bool) -> Path:
    if constants.is_offline_mode():
        return load_from_cache(repo, layers, "offline mode is on (HF_HUB_OFFLINE=1)", with_weights)
    try:
        return _download(repo, layers, progress, with_weights)
    except _Unreachable as exc:
        return load_from_cache(repo, layers, f"{repo.where} cannot be reached ({exc})", with_weights)


def _download(repo: Repo, layers: Layers | None, progress: ProgressCallback | None, with_weights: bool) -> Path:
    # config.json first, by branch name: this pins the commit every later file comes from and writes
    # refs/<revision> in the cache, which offline runs need.
    snapshot = _hub_call(repo, "config.json", lambda: repo.fetch("config.json", repo.revision)).parent
    commit = snapshot.name
    listing = list_repo_files(repo, commit)
    for name in METADATA_FILES:
        if name in listing:
            fetch_small_file(repo, commit, listing[name])
    if not with_weights:
        return snapshot

    weights = weight_files(snapshot, set(listing), layers, repo.repo_id)
    unknown = [w for w in weights if w not in listing]
    if unknown:
        raise DownloadError(f"The index of {repo.repo_id} lists {', '.join(unknown)}, which the repository does "
                            "not hold: the repository is broken. Choose another revision or model.")
    to_fetch = [listing[w] for w in weights if not cached_and_sound(repo, snapshot / w, listing[w].digest)]
    check_disk_space(repo, to_fetch, layers)
    meter = ProgressMeter(repo.repo_id, {f.name: f.size or 0 for f in to_fetch}, progress)
    for file in to_fetch:
        fetch_weight_file(repo, commit, file, meter)
    meter.close()
    return snapshot


def list_repo_files(repo: Repo, commit: str) -> dict[str, HubFile]:
    """The repository's files at `commit`, with sizes and hashes (one call to the hub's API)."""
    api = HfApi(endpoint=repo.endpoint, token=repo.token)
    info = _hub_call(repo, None, lambda: api.model_info(repo.repo_id, revision=commit, files_metadata=True))
    files = {}
    for sibling in info.siblings or []:
        if sibling.lfs is not None:
            files[sibling.rfilename] = HubFile(sibling.rfilename, sibling.lfs.size, ("sha256", sibling.lfs.sha256))
        else:
            digest = ("git-sha1", sibling.blob_id) if sibling.blob_id else None
            files[sibling.rfilename] = HubFile(sibling.rfilename, sibling.size, digest)
    return files


def weight_files(snapshot: Path, available: set[str], layers: Layers | None, repo_id: str) -> list[str]:
    """The safetensors files that hold the tensors of `layers` (all of them when layers is None)."""
    index = snapshot / INDEX_FILE
    if index.is_file():
        weight_map = read_index(index)
        keys = list(weight_map) if layers is None else keys_for_range(
            weight_map, ModelSpec.from_config(read_config(snapshot)), *layers)
        return sorted({weight_map[key] for key in keys})
    if SINGLE_FILE in available:
        if layers is not None:
            ModelSpec.from_config(read_config(snapshot)).check_range(*layers)
        return [SINGLE_FILE]
    raise DownloadError(
        f"{repo_id} has no safetensors weights ({SINGLE_FILE} or {INDEX_FILE}). Potluck does not load "
        "PyTorch .bin checkpoints, for safety (they are pickles): choose a repository with safetensors."
    )


def fetch_small_file(repo: Repo, commit: str, file: HubFile) -> Path:
    """A config or tokenizer file, through huggingface_hub, checked against the hub's hash."""
    path = _hub_call(repo, file.name, lambda: repo.fetch(file.name, commit))
    if cached_and_sound(repo, path, file.digest):
        return path
    log.warning("%s of %s does not match the hub's hash: downloading it again", file.name, repo.repo_id)
    path = _hub_call(repo, file.name, lambda: repo.fetch(file.name, commit, force_download=True))
    if not cached_and_sound(repo, path, file.digest):
        raise _corrupted(repo, file.name)
    return path


def fetch_weight_file(repo: Repo, commit: str, file: HubFile, meter: ProgressMeter) -> None:
    """Download one weight file into the cache's blobs, resuming a partial file left by an earlier
    run, verify it, then let huggingface_hub link it into the snapshot.

    Why not hf_hub_download alone: huggingface_hub 2.x downloads into a temporary file unique to
    the process and deletes it when the download fails (huggingface_hub PR #4228). It resumes after
    a dropped connection within one call, but an app that quits or a laptop that sleeps through a
    5 GB file starts that file again from zero. So the partial file is kept here under a stable name
    (blobs/<etag>.incomplete, guarded by the library's own lock for that blob) and the transfer
    itself is the library's http_get, with its Range requests and retries.
    """
    url = hf_hub_url(repo.repo_id, file.name, revision=commit, endpoint=repo.endpoint)
    meta = _hub_call(repo, file.name, lambda: get_hf_file_metadata(url, token=repo.token, endpoint=repo.endpoint))
    size = meta.size if meta.size is not None else file.size
    digest = file.digest or _digest_from_etag(meta.etag)
    blob = repo.storage / "blobs" / meta.etag
    lock = repo.cache_dir / ".locks" / repo.storage.name / f"{meta.etag}.lock"
    blob.parent.mkdir(parents=True, exist_ok=True)
    lock.parent.mkdir(parents=True, exist_ok=True)
    headers = build_hf_headers(token=repo.token)
    if urlsplit(meta.location).netloc != urlsplit(url).netloc:
        headers.pop("authorization", None)  # a signed CDN address: the token stays with the hub

    with WeakFileLock(lock):
        if not blob.exists():
            partial = blob.with_name(f"{meta.etag}.incomplete")
            for attempt in (1, 2):
                _resume_into(repo, partial, meta.location, headers, size, file.name, meter)
                if digest is None or file_digest(partial, digest[0]) == digest[1]:
                    break
                partial.unlink()
                if attempt == 2:
                    raise _corrupted(repo, file.name)
                log.warning("%s of %s does not match the hub's hash: downloading it again", file.name, repo.repo_id)
            os.replace(partial, blob)
            if digest is not None:
                _record_verified(repo, blob, digest)
    meter.finish_file(file.name)
    _hub_call(repo, file.name, lambda: repo.fetch(file.name, commit))  # blob present: only links it


def _resume_into(repo: Repo, partial: Path, url: str, headers: dict, size: int | None, name: str,
                 meter: ProgressMeter) -> None:
    on_disk = partial.stat().st_size if partial.exists() else 0
    if size is not None and on_disk > size:
        partial.unlink()
        on_disk = 0
    meter.start_file(name, on_disk)
    with open(partial, "ab") as out:
        _hub_call(repo, name, lambda: http_get(url, out, resume_size=on_disk, headers=headers, expected_size=size,
                                               displayed_filename=name, tqdm_class=_meter_bar(meter)),
                  midway=True)


def load_from_cache(repo: Repo, layers: Layers | None, why: str, with_weights: bool = True) -> Path:
    """The snapshot in the cache, when the hub cannot be asked; fails clearly if a needed file is missing."""
    try:
        snapshot = repo.fetch("config.json", repo.revision, local_files_only=True).parent
    except LocalEntryNotFoundError:
        raise DownloadError(
            f"{repo.repo_id} is not in the Hugging Face cache ({repo.cache_dir}) and {why}. Connect to the "
            "internet (and unset HF_HUB_OFFLINE) once to download it; after that it works offline."
        ) from None
    if not with_weights:
        return snapshot
    available = {p.name for p in snapshot.iterdir()}
    weights = weight_files(snapshot, available, layers, repo.repo_id)
    missing = [w for w in weights if not (snapshot / w).exists()]
    if missing:
        raise DownloadError(
            f"{_describe(layers)} of {repo.repo_id} need {', '.join(missing)}, which the Hugging Face cache "
            f"({repo.cache_dir}) does not hold, and {why}. Connect to the internet (and unset HF_HUB_OFFLINE) "
            "once to download the missing files."
        )
    for name in weights:
        if not cached_and_sound(repo, snapshot / name, _digest_from_etag(_blob_name(snapshot / name))):
            raise DownloadError(
                f"{name} of {repo.repo_id} in the Hugging Face cache is damaged (it does not match its hash), "
                f"and {why}. Connect to the internet and run again: Potluck downloads it again."
            )
    return snapshot


# ---- verification ----

def cached_and_sound(repo: Repo, path: Path, digest: tuple[str, str] | None) -> bool:
    """Whether `path` (a snapshot entry) exists and matches `digest`. A damaged file is removed from
    the cache (entry and blob), so that the next download replaces it."""
    if not path.exists():
        return False
    blob = path.resolve()
    if digest is None or _stamped(repo, blob, digest):
        return True
    if file_digest(blob, digest[0]) == digest[1]:
        _record_verified(repo, blob, digest)
        return True
    log.warning("%s in the Hugging Face cache is damaged: removing it", path)
    path.unlink(missing_ok=True)
    blob.unlink(missing_ok=True)
    return False


def file_digest(path: Path, kind: str) -> str:
    """sha256 of the bytes (how the hub names LFS files), or git's blob id (the other files)."""
    if kind == "sha256":
        h = hashlib.sha256()
    elif kind == "git-sha1":
        h = hashlib.sha1()
        h.update(b"blob %d\0" % path.stat().st_size)
    else:
        raise ValueError(kind)
    with open(path, "rb") as f:
        while chunk := f.read(8 * 2**20):
            h.update(chunk)
    return h.hexdigest()


def _digest_from_etag(etag: str | None) -> tuple[str, str] | None:
    """The hub's ETag of a file is its sha256 (LFS) or git blob id (others); a mirror may send
    something else, which then cannot be checked."""
    if etag and len(etag) == 64 and all(c in "0123456789abcdef" for c in etag):
        return ("sha256", etag)
    if etag and len(etag) == 40 and all(c in "0123456789abcdef" for c in etag):
        return ("git-sha1", etag)
    return None


def _blob_name(path: Path) -> str | None:
    return path.resolve().name if path.is_symlink() else None


# Hashing a 5 GB shard takes seconds; a blob that passed once is remembered by size and mtime, and
# hashed again only if either changes.
def _stamped(repo: Repo, blob: Path, digest: tuple[str, str]) -> bool:
    stat = blob.stat()
    return _read_stamps(repo).get(blob.name) == [stat.st_size, stat.st_mtime_ns, digest[1]]


def _record_verified(repo: Repo, blob: Path, digest: tuple[str, str]) -> None:
    stamps = _read_stamps(repo)
    stat = blob.stat()
    stamps[blob.name] = [stat.st_size, stat.st_mtime_ns, digest[1]]
    target = repo.storage / VERIFIED_STAMPS
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(stamps), encoding="utf-8")
        os.replace(tmp, target)
    except OSError:  # a read-only cache: the file is verified again next time
        tmp.unlink(missing_ok=True)


def _read_stamps(repo: Repo) -> dict:
    try:
        stamps = json.loads((repo.storage / VERIFIED_STAMPS).read_text(encoding="utf-8"))
        return stamps if isinstance(stamps, dict) else {}
    except (OSError, ValueError):
        return {}


# ---- disk space ----

def check_disk_space(repo: Repo, to_fetch: list[HubFile], layers: Layers | None) -> None:
    partials = {f.name: _partial_bytes(repo, f) for f in to_fetch}
    need = sum(max((f.size or 0) - partials[f.name], 0) for f in to_fetch)
    if not need:
        return
    where = repo.cache_dir
    while not where.exists() and where.parent != where:
        where = where.parent
    free = disk_usage(where).free
    if need + RESERVE_BYTES > free:
        short = need + RESERVE_BYTES - free
        raise NotEnoughDiskSpace(
            f"Not enough disk space for {_describe(layers)} of {repo.repo_id}: the files still to download "
            f"need {_gb(need)}, but {where} has {_gb(free)} free (and Potluck leaves {_gb(RESERVE_BYTES)} "
            f"for the system). Free up {_gb(short)}, serve fewer layers, or point HF_HOME at a bigger disk."
        )


def _partial_bytes(repo: Repo, file: HubFile) -> int:
    if file.digest is None or file.digest[0] != "sha256":
        return 0
    partial = repo.storage / "blobs" / f"{file.digest[1]}.incomplete"
    return partial.stat().st_size if partial.exists() else 0


# ---- errors the user can act on ----

def _hub_call(repo: Repo, filename: str | None, call, midway: bool = False):
    what = f"{filename} of {repo.repo_id}" if filename else repo.repo_id
    try:
        return call()
    except GatedRepoError:
        raise DownloadError(
            f"{repo.repo_id} is gated: open {repo.where}/{repo.repo_id} while logged in, accept its licence, then "
            "set HF_TOKEN to an access token of that account (https://huggingface.co/settings/tokens)."
        ) from None
    except RepositoryNotFoundError:
        raise DownloadError(
            f"{repo.repo_id} was not found on {repo.where}: check the name (org/model), or, if it is private, "
            "set HF_TOKEN to an access token that can read it."
        ) from None
    except RevisionNotFoundError:
        raise DownloadError(f"{repo.repo_id} has no revision {repo.revision!r} on {repo.where}.") from None
    except RemoteEntryNotFoundError:
        raise DownloadError(f"{what} is not on {repo.where}: the repository is incomplete.") from None
    except (OfflineModeIsEnabled, LocalEntryNotFoundError, httpx2.TransportError) as exc:
        if not midway:
            raise _Unreachable(str(exc) or type(exc).__name__) from None
        raise DownloadError(
            f"The connection to {repo.where} was lost while downloading {what} ({exc}). Run the same command "
            "again when the network is back: the download resumes where it stopped."
        ) from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        hint = ("HF_TOKEN is not accepted: set it to a valid access token" if status == 401
                else "try again later, or set HF_ENDPOINT to a mirror")
        raise DownloadError(f"{repo.where} answered {status} for {what}: {hint}.") from None
    except OSError as exc:  # http_get's size check, or the disk
        raise DownloadError(
            f"Downloading {what} failed ({exc}). Run the same command again: it resumes where it stopped."
        ) from None


def _corrupted(repo: Repo, name: str) -> DownloadError:
    return DownloadError(
        f"{name} of {repo.repo_id} arrived damaged twice (its bytes do not match the hash {repo.where} publishes). "
        "Nothing damaged was kept. A proxy or mirror may be altering files: try again, or unset HF_ENDPOINT."
    )


def _describe(layers: Layers | None) -> str:
    return "the model" if layers is None else f"layers {layers[0]}-{layers[1] - 1}"


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e7 else f"{n / 1e6:.2f} MB"


# ---- progress plumbing: huggingface_hub reports bytes through a tqdm-like class ----

class _Silent:
    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return None

    def update(self, n=1):
        pass

    def close(self):
        pass


def _meter_bar(meter: ProgressMeter) -> type:
    class MeterBar(_Silent):
        def __init__(self, *args, initial: int = 0, **kwargs):
            meter.set_file_bytes(initial)  # http_get restarts at 0 when a server ignores Range

        def update(self, n=1):
            meter.advance(int(n or 0))

    return MeterBar
