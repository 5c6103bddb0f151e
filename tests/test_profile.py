"""`potluck profile`: measured numbers, cached in the data dir."""

import json
import subprocess
import sys

from engine.profile import load_or_measure


def test_profile_command_measures_and_caches(tmp_path, make_checkpoint):
    model = make_checkpoint("qwen3")
    proc = subprocess.run([sys.executable, "-m", "app.cli", "profile", "--json", "--device", "cpu", "--model",
                           str(model), "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    profile = json.loads(proc.stdout.strip().splitlines()[-1])
    assert profile["backend"] == "cpu" and profile["memory_total_bytes"] > profile["memory_free_bytes"] > 0
    assert profile["matmul_tflops_fp32"] > 0 and profile["matmul_tflops_half"] > 0 and profile["bandwidth_gbs"] > 0
    (layer,) = profile["layer_ms"].values()
    assert layer["decode_ms"] > 0 and layer["prefill_ms_per_token"] > 0
    cached = load_or_measure(tmp_path, "cpu")  # reads the cache instead of measuring again
    assert cached.measured_at == profile["measured_at"]
