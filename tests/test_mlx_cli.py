"""`potluck generate --backend mlx` as a user runs it, and the MLX hardware profile."""

import json
import subprocess
import sys

import pytest

from engine.backends.choose import mlx_import_error

if mlx_import_error():
    pytest.skip(f"the MLX backend needs mlx and mlx-lm, which do not import here ({mlx_import_error()})",
                allow_module_level=True)

from engine.profile import load_or_measure, measure, measure_layer, profile_path


def potluck(*args):
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, timeout=300)


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
