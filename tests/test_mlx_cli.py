"""`potluck generate --backend mlx` as a user runs it, and the MLX hardware profile."""

import json
import subprocess
import sys
import textwrap

import pytest

from engine.backends.choose import mlx_import_error

if mlx_import_error():
    pytest.skip(f"the MLX backend needs mlx and mlx-lm, which do not import here ({mlx_import_error()})",
                allow_module_level=True)

from engine.profile import load_or_measure, measure, measure_layer, profile_path
from tests.no_torch import env_without_torch


def potluck(*args, env=None):
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, timeout=300,
                          env=env)


def test_generate_with_mlx_prints_what_torch_prints(make_checkpoint):
    model = str(make_checkpoint("qwen3"))
    common = ["generate", "--model", model, "--prompt", "Tell me a story", "--max-tokens", "24", "--dtype", "float32"]
    with_torch = potluck(*common, "--backend", "torch", "--json")
    with_mlx = potluck(*common, "--backend", "mlx", "--shards", "2", "--json")
    assert with_torch.returncode == with_mlx.returncode == 0, with_mlx.stderr
    ours, theirs = json.loads(with_mlx.stdout), json.loads(with_torch.stdout)
    assert ours["tokens"] == 24 and ours["token_ids"] == theirs["token_ids"] and ours["text"] == theirs["text"]


def test_generate_with_mlx_refuses_a_cuda_device(make_checkpoint):
    proc = potluck("generate", "--model", str(make_checkpoint("qwen3")), "--prompt", "hi", "--backend", "mlx",
                   "--device", "cuda")
    assert proc.returncode == 2 and "Apple GPU or the CPU" in proc.stderr and "Traceback" not in proc.stderr


def test_mlx_profile_is_measured_and_cached_apart_from_torch(tmp_path, make_checkpoint):
    profile = measure("auto", backend="mlx")
    assert profile.backend == ("mlx" if sys.platform == "darwin" else "mlx-cpu")
    assert profile.matmul_tflops_fp32 > 0 and profile.matmul_tflops_half > 0 and profile.bandwidth_gbs > 0
    assert profile.memory_total_bytes >= profile.memory_free_bytes > 0
    if profile.memory_usable_bytes:  # Apple GPU: Metal's share of unified memory caps what is free
        assert profile.memory_free_bytes <= profile.memory_usable_bytes <= profile.memory_total_bytes
    layer = measure_layer(profile, make_checkpoint("qwen3"))  # mlx-lm's block of this model's shape
    assert layer["decode_ms"] > 0 and layer["prefill_ms_per_token"] > 0 and list(profile.layer_ms.values()) == [layer]

    cached = load_or_measure(tmp_path, "auto", "mlx")
    assert profile_path(tmp_path, "auto", "mlx").is_file() and not profile_path(tmp_path, "auto", "torch").exists()
    assert load_or_measure(tmp_path, "auto", "mlx").measured_at == cached.measured_at  # read, not measured again


def test_generate_with_mlx_runs_without_torch(make_checkpoint, tmp_path):
    """A Mac installs no torch (issue 8): `potluck generate --backend mlx` runs without it and gives
    torch's greedy tokens; seeded sampling is reproducible there too."""
    model = str(make_checkpoint("qwen3"))
    common = ["generate", "--model", model, "--prompt", "Tell me a story", "--max-tokens", "12", "--dtype", "float32",
              "--json"]
    no_torch = env_without_torch(tmp_path / "no-torch")
    with_torch = potluck(*common, "--backend", "torch")
    without = potluck(*common, "--backend", "mlx", "--shards", "2", env=no_torch)
    assert with_torch.returncode == without.returncode == 0, without.stderr
    assert json.loads(without.stdout)["token_ids"] == json.loads(with_torch.stdout)["token_ids"]
    seeded = [*common, "--backend", "mlx", "--temperature", "0.9", "--top-p", "0.9", "--seed", "5"]
    runs = [potluck(*seeded, env=no_torch) for _ in range(2)]
    assert runs[0].returncode == 0, runs[0].stderr
    assert json.loads(runs[0].stdout)["token_ids"] == json.loads(runs[1].stdout)["token_ids"]


def test_the_mlx_node_path_needs_no_torch(make_checkpoint, tmp_path):
    """The backend-neutral modules import no torch even where it is installed; and, without torch,
    a node's stage runs requests on MLX shards, and the MLX profile and layer timing work."""
    glue = ["engine.swarm.node", "engine.swarm.node_cli", "engine.swarm.stage", "engine.sampling", "engine.generate",
            "engine.generate_cli", "engine.profile", "engine.backends.choose", "engine.api.server"]
    check = f"import sys\nfor m in {glue!r}: __import__(m)\nassert 'torch' not in sys.modules, 'torch imported'\n"
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr

    script = textwrap.dedent(f"""
        import sys

        import numpy as np

        from engine.generate import LocalPipeline, generate
        from engine.profile import measure, measure_layer
        from engine.sampling import SamplingParams
        from engine.swarm.stage import StageWorker
        from engine.swarm.wire import Message, Tensor

        path = {str(make_checkpoint("llama"))!r}
        pipeline = LocalPipeline(path, backend="mlx", dtype="bfloat16", ranges=[(0, 3), (3, 8)])
        params = [SamplingParams(max_tokens=6), SamplingParams(max_tokens=6, temperature=0.8, seed=1)]
        assert len(list(generate(pipeline, [[5, 9, 13], [7, 8]], params))) == 12

        first, last = pipeline.runners
        hidden = first.to_numpy(first.prefill(["r"], np.array([[5, 9, 13]])), "bfloat16")[0]
        sent = []
        stage = StageWorker(last, lambda *message: sent.append(message), "me", "bfloat16")
        body = {{"request_id": "r", "kind": "prefill", "step": 0, "origin": "o", "hop": 1,
                "route": [["a", 0, 3], ["me", 3, 8]], "sampling": {{"max_tokens": 1}}}}
        stage.accept(Message("stage.forward", "1", "a", body, {{"hidden": Tensor("bfloat16", hidden.shape,
                                                                               hidden.tobytes())}}))
        stage.close()
        assert [(peer, kind) for peer, kind, _, _ in sent] == [("o", "stage.token")], sent

        profile = measure("auto", backend="mlx")
        assert measure_layer(profile, path)["decode_ms"] > 0
        loaded = sorted(m for m, module in sys.modules.items() if m.split(".")[0] == "torch" and module is not None)
        assert not loaded, loaded
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env=env_without_torch(tmp_path / "no-torch"))
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr
