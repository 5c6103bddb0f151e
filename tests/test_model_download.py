"""Layer-selective downloads from a hub: a local stand-in for the Hugging Face hub (tests/fake_hub.py,
127.0.0.1 only) serves a checkpoint split over many safetensors files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import namedtuple
from types import SimpleNamespace

import pytest
from huggingface_hub import constants, file_download

from engine.model import download
from engine.model.checkpoint import Checkpoint
from engine.model.download import download_metadata, download_shard
from engine.model.errors import CheckpointError, DownloadError, NotEnoughDiskSpace
from engine.model.resolve import resolve_model
from tests.fake_hub import FakeHub

pytestmark = pytest.mark.network

REPO = "test-org/tiny-llama"


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """12 layers over many small files, so that layers 4-7 are a middle shard with files of its own."""
    from engine.model.random_checkpoint import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("sharded"), arch="llama", max_shard_size="60KB",
                           num_hidden_layers=12)


@pytest.fixture
def hub(sharded):
    hub = FakeHub()
    hub.add_repo(REPO, sharded)
    hub.start()
    yield hub
    hub.stop()


@pytest.fixture(autouse=True)
def online(monkeypatch):
    """conftest turns huggingface_hub's offline mode on for the whole suite; these tests talk to a
    hub on 127.0.0.1, so they turn it off (huggingface_hub reads HF_HUB_OFFLINE once, at import)."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    # huggingface_hub writes what it receives in 10 MB pieces, so a connection lost inside a file
    # smaller than that leaves nothing to resume from: scale the pieces down with the test files.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 4096)


def fetch(hub, tmp_path, layers, **kwargs):
    return download_shard(REPO, layers, cache_dir=tmp_path / "hf", endpoint=hub.url, **kwargs)


def weights(names):
    return {n for n in names if n.endswith(".safetensors")}


def test_a_node_for_layers_4_to_7_downloads_only_their_files(hub, sharded, tmp_path):
    events = []
    snapshot = fetch(hub, tmp_path, (4, 8), progress=events.append)

    every_file = weights(p.name for p in sharded.iterdir())
    needed = set(Checkpoint(sharded).files_for_range(4, 8))
    assert weights(hub.downloaded()) == needed
    assert len(needed) < len(every_file) // 2
    index = json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"]
    assert index["model.embed_tokens.weight"] not in needed and index["lm_head.weight"] not in needed
    # config, tokenizer, chat template and index came first, and all of them
    assert {"config.json", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json"} <= hub.downloaded()
    first_weight = next(i for i, r in enumerate(hub.requests) if r.filename and r.filename.endswith(".safetensors"))
    assert all(not r.filename or not r.filename.endswith(".safetensors") for r in hub.requests[:first_weight])

    # the standard cache layout, with exactly the shard's files
    assert snapshot.parent.name == "snapshots" and snapshot.parent.parent.name == "models--test-org--tiny-llama"
    assert weights(p.name for p in snapshot.iterdir()) == needed
    for name in needed:
        assert (snapshot / name).read_bytes() == (sharded / name).read_bytes()

    # progress: bytes done, total, rate, ETA, ending at 100 %
    total = sum((sharded / n).stat().st_size for n in needed)
    assert events[-1].done and events[-1].bytes_done == events[-1].bytes_total == total
    assert events[-1].files_done == events[-1].files_total == len(needed)
    assert all(a.bytes_done <= b.bytes_done for a, b in zip(events, events[1:]))
    assert all(e.rate >= 0 and (e.eta_s is None or e.eta_s >= 0) for e in events)

    # the partial directory serves its layers, and says what is missing for others
    from engine.backends.torch_runner import TorchShardRunner

    TorchShardRunner(snapshot, 4, 8, "cpu", "float32")
    with pytest.raises(CheckpointError, match="missing.*incomplete"):
        Checkpoint(snapshot).keys_for_range(0, 4)


def test_a_client_only_node_fetches_no_weights(hub, tmp_path):
    from engine.model.tokenizer import load_tokenizer

    snapshot = download_metadata(REPO, cache_dir=tmp_path / "hf", endpoint=hub.url)
    assert weights(hub.downloaded()) == set()
    assert load_tokenizer(snapshot).chat_template


def test_files_already_cached_are_not_fetched_again(hub, sharded, tmp_path):
    fetch(hub, tmp_path, (4, 8))
    hub.requests.clear()
    fetch(hub, tmp_path, (4, 8))
    assert weights(hub.downloaded()) == set()
    every_file = weights(p.name for p in sharded.iterdir())
    snapshot = fetch(hub, tmp_path, None)  # the whole model fetches only what the shard lacked
    assert weights(hub.downloaded()) == every_file - set(Checkpoint(sharded).files_for_range(4, 8))
    assert weights(p.name for p in snapshot.iterdir()) == every_file


def _largest_needed(sharded):
    return max(Checkpoint(sharded).files_for_range(4, 8), key=lambda n: (sharded / n).stat().st_size)


def test_a_connection_dropped_half_way_resumes_with_a_range_request(hub, sharded, tmp_path):
    target = _largest_needed(sharded)
    half = (sharded / target).stat().st_size // 2 // 4096 * 4096  # a whole number of pieces
    hub.drop_once[target] = half
    snapshot = fetch(hub, tmp_path, (4, 8))
    first, second = hub.gets(target)
    assert first.range is None and second.range == f"bytes={half}-"
    assert (snapshot / target).read_bytes() == (sharded / target).read_bytes()


def test_a_download_stopped_half_way_resumes_on_the_next_run(hub, sharded, tmp_path, monkeypatch):
    """The app quits right after the connection drops: half the file stays on disk, and the next run
    asks only for the rest."""
    target = _largest_needed(sharded)
    half = (sharded / target).stat().st_size // 2 // 4096 * 4096  # a whole number of pieces
    hub.drop_once[target] = half

    class AppQuit(BaseException):
        pass

    def quit_instead_of_waiting(seconds):
        raise AppQuit

    monkeypatch.setattr(file_download, "time", SimpleNamespace(sleep=quit_instead_of_waiting))
    with pytest.raises(AppQuit):
        fetch(hub, tmp_path, (4, 8))
    partials = list((tmp_path / "hf").rglob("*.incomplete"))
    assert [p.stat().st_size for p in partials] == [half]

    monkeypatch.setattr(file_download, "time", __import__("time"))
    snapshot = fetch(hub, tmp_path, (4, 8))
    assert [r.range for r in hub.gets(target)] == [None, f"bytes={half}-"]
    assert (snapshot / target).read_bytes() == (sharded / target).read_bytes()
    assert not list((tmp_path / "hf").rglob("*.incomplete"))


def test_a_file_damaged_in_transit_is_detected_and_fetched_again(hub, sharded, tmp_path):
    target = _largest_needed(sharded)
    hub.corrupt[target] = 1
    snapshot = fetch(hub, tmp_path, (4, 8))
    assert len(hub.gets(target)) == 2
    assert (snapshot / target).read_bytes() == (sharded / target).read_bytes()


def test_a_file_damaged_every_time_is_reported_and_not_kept(hub, sharded, tmp_path):
    target = _largest_needed(sharded)
    hub.corrupt[target] = 10
    with pytest.raises(DownloadError, match=f"{target} of {REPO} arrived damaged twice.*Nothing damaged was kept"):
        fetch(hub, tmp_path, (4, 8))
    blobs = tmp_path / "hf" / "models--test-org--tiny-llama" / "blobs"
    assert not [p for p in blobs.iterdir() if p.read_bytes() == _damaged(sharded / target)]
    assert not list(blobs.glob("*.incomplete"))


def _damaged(path):
    data = path.read_bytes()
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]


def test_a_file_damaged_in_the_cache_is_detected(hub, sharded, tmp_path, monkeypatch):
    target = _largest_needed(sharded)
    snapshot = fetch(hub, tmp_path, (4, 8))
    blob = (snapshot / target).resolve()
    blob.write_bytes(_damaged(blob))

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DownloadError, match=f"{target} of {REPO} in the Hugging Face cache is damaged.*Connect"):
        fetch(hub, tmp_path, (4, 8))

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    hub.requests.clear()
    snapshot = fetch(hub, tmp_path, (4, 8))
    assert weights(hub.downloaded()) == {target}
    assert (snapshot / target).read_bytes() == (sharded / target).read_bytes()


def test_offline_mode_uses_the_cache(hub, sharded, tmp_path, monkeypatch):
    online_snapshot = fetch(hub, tmp_path, (4, 8))
    hub.stop()
    # hub unreachable, offline mode not set: the cache answers
    assert fetch(hub, tmp_path, (4, 8)) == online_snapshot
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub.requests.clear()
    assert fetch(hub, tmp_path, (4, 8)) == online_snapshot
    assert hub.requests == []
    with pytest.raises(DownloadError, match=r"layers 0-3 of test-org/tiny-llama need .*safetensors.*offline mode is on"
                                            r".*Connect to the internet"):
        fetch(hub, tmp_path, (0, 4))
    with pytest.raises(DownloadError, match="other/model is not in the Hugging Face cache.*offline mode is on"):
        download_shard("other/model", (0, 4), cache_dir=tmp_path / "hf", endpoint=hub.url)


def test_a_full_disk_gives_a_clear_error_before_downloading(hub, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(download, "disk_usage", lambda path: usage(10**9, 10**9 - 4096, 4096))
    with pytest.raises(NotEnoughDiskSpace, match=r"Not enough disk space for layers 4-7 of test-org/tiny-llama: the "
                                                 r"files still to download need .* MB, but .* has 0.00 MB free.*Free up"):
        fetch(hub, tmp_path, (4, 8))
    assert weights(hub.downloaded()) == set()


def test_hf_token_is_sent_and_a_missing_repo_is_explained(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_for_test")
    fetch(hub, tmp_path, (4, 8))
    assert {r.authorization for r in hub.requests} == {"Bearer hf_secret_for_test"}
    with pytest.raises(DownloadError, match="nobody/nothing was not found on http://127.0.0.1.*HF_TOKEN"):
        download_shard("nobody/nothing", None, cache_dir=tmp_path / "hf", endpoint=hub.url)


def test_resolve_model_accepts_directories_hub_ids_and_revisions(hub, sharded, tmp_path):
    assert resolve_model(sharded) == sharded
    options = dict(cache_dir=tmp_path / "hf", endpoint=hub.url)
    snapshot = resolve_model(REPO, (4, 8), **options)
    commit = hub.repos[REPO].commit
    assert snapshot.name == commit
    assert resolve_model(f"{REPO}@{commit}", (4, 8), **options) == snapshot
    with pytest.raises(CheckpointError, match="not a directory, a model of the catalog .*qwen3-8b"):
        resolve_model("no such thing")


def test_potluck_generate_resolves_a_catalog_name_through_the_hub(make_checkpoint, tmp_path, monkeypatch):
    """`potluck generate --model qwen3-0.6b`: the catalog names Qwen/Qwen3-0.6B, which the local hub
    serves (a tiny stand-in); HF_ENDPOINT and HF_HOME point the subprocess at it and at a fresh cache.
    Then the hub goes away and the catalog name resolves from the cache."""
    hub = FakeHub()
    hub.add_repo("Qwen/Qwen3-0.6B", make_checkpoint("qwen3", max_shard_size="60KB"))
    hub.start()
    env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="0")
    env.pop("HF_TOKEN", None)
    args = [sys.executable, "-m", "app.cli", "generate", "--model", "qwen3-0.6b", "--prompt", "hello",
            "--max-tokens", "6", "--dtype", "float32", "--json"]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    finally:
        hub.stop()
    assert proc.returncode == 0, proc.stderr
    online = json.loads(proc.stdout)
    assert online["tokens"] == 6
    assert "Qwen/Qwen3-0.6B" in proc.stderr  # the progress bar
    assert weights(hub.downloaded()) == weights(hub.repos["Qwen/Qwen3-0.6B"].files)
    assert (tmp_path / "home" / "hub" / "models--Qwen--Qwen3-0.6B" / "snapshots").is_dir()

    # the hub is gone: the catalog name now resolves from the cache (in this process, to keep the test fast)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    snapshot = resolve_model("qwen3-0.6b", cache_dir=tmp_path / "home" / "hub")
    assert snapshot.parent.parent.name == "models--Qwen--Qwen3-0.6B"
    assert weights(p.name for p in snapshot.iterdir()) == weights(hub.repos["Qwen/Qwen3-0.6B"].files)


def test_progress_events_carry_rate_and_time_left():
    import io

    from engine.model.progress import ProgressMeter, TerminalProgress

    now, events = [0.0], []
    meter = ProgressMeter("org/model", {"a": 1000, "b": 1000}, events.append, clock=lambda: now[0])
    meter.start_file("a", on_disk=200)  # resumed from an earlier run: done, but not part of the rate
    now[0] = 1.0
    meter.advance(300)
    now[0] = 2.0
    meter.advance(300)
    last = events[-1]
    assert (last.file, last.bytes_done, last.bytes_total, last.files_done) == ("a", 800, 2000, 0)
    assert last.rate == pytest.approx(300) and last.eta_s == pytest.approx(4.0)
    meter.finish_file("a")
    meter.start_file("b")
    meter.advance(1000)
    meter.finish_file("b")
    meter.close()
    assert events[-1].done and events[-1].fraction == 1.0 and events[-1].eta_s == 0.0

    log = io.StringIO()  # not a terminal: one line per finished file
    bar = TerminalProgress(log)
    for event in events:
        bar(event)
    assert log.getvalue().splitlines()[-1] == "org/model: 2/2 files, 2.0 KB of 2.0 KB"
