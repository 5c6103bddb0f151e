"""Hardware profile: what this machine is, and what it measurably does.

Measured beats tabulated (DESIGN.md): matmul TFLOP/s, memory bandwidth and, for a given model,
the time of one of its decoder layers at decode and prefill are measured here, in a few seconds,
and cached per device (and per model shape) in the data dir. The scheduler allocates from these.
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

PROFILE_VERSION = 1


@dataclass
class HardwareProfile:
    backend: str  # cuda, mps or cpu
    vendor: str
    device_name: str
    memory_total_bytes: int
    memory_free_bytes: int
    cpu_cores: int
    matmul_tflops_fp32: float
    matmul_tflops_half: float  # bfloat16 (fp16 where bfloat16 is not supported)
    bandwidth_gbs: float  # bytes read + written per second by a large copy
    layer_ms: dict = field(default_factory=dict)  # model key -> {"decode_ms", "prefill_ms_per_token"}
    measured_at: float = 0.0
    version: int = PROFILE_VERSION

    def as_dict(self) -> dict:
        return asdict(self)


def measure(device: str = "auto") -> HardwareProfile:
    import torch

    from engine.backends.torch_device import pick_device

    dev = pick_device(device)
    vendor, name, total, free = _describe(dev)
    half = torch.bfloat16 if dev.type != "cuda" or torch.cuda.is_bf16_supported() else torch.float16
    return HardwareProfile(
        backend=dev.type, vendor=vendor, device_name=name, memory_total_bytes=total, memory_free_bytes=free,
        cpu_cores=psutil.cpu_count(logical=False) or psutil.cpu_count() or 1,
        matmul_tflops_fp32=round(_matmul_tflops(dev, torch.float32), 3),
        matmul_tflops_half=round(_matmul_tflops(dev, half), 3),
        bandwidth_gbs=round(_copy_bandwidth_gbs(dev), 2),
        measured_at=time.time(),
    )


def load_or_measure(cache_dir: str | Path, device: str = "auto", max_age_s: float = 7 * 86400) -> HardwareProfile:
    """The cached profile for this device, measured again when missing, stale or from another version."""
    path = Path(cache_dir) / f"profile-{device.replace(':', '_')}.json"
    try:
        data = json.loads(path.read_text())
        if data.get("version") == PROFILE_VERSION and time.time() - data.get("measured_at", 0) < max_age_s:
            profile = HardwareProfile(**data)
            profile.memory_free_bytes = _describe_free(profile.backend)
            return profile
    except (OSError, ValueError, TypeError):
        pass
    profile = measure(device)
    save(profile, path)
    return profile


def save(profile: HardwareProfile, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(profile.as_dict(), indent=1))


def measure_layer(profile: HardwareProfile, checkpoint_path: str | Path, dtype: str = "auto") -> dict:
    """Time one decoder layer of this model's shape (random weights) at decode and at prefill."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from engine.backends.cpu_linear import pack_linears
    from engine.backends.torch_device import pick_device, pick_dtype
    from engine.model.spec import ModelSpec

    spec = ModelSpec.from_checkpoint(checkpoint_path)
    device = pick_device(profile.backend)
    torch_dtype = pick_dtype(dtype, spec.dtype, device)
    config = AutoConfig.from_pretrained(checkpoint_path)
    config.num_hidden_layers = 1
    config.vocab_size = 16
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype, attn_implementation="sdpa").eval()
    layer, rotary = model.model.layers[0], model.model.rotary_emb
    if device.type == "cpu":
        pack_linears([layer])

    def run(tokens: int, reps: int) -> float:
        hidden = torch.randn(1, tokens, spec.hidden_size, dtype=torch_dtype, device=device)
        positions = torch.arange(tokens, device=device)[None]
        cos_sin = rotary(hidden, positions)
        with torch.inference_mode():
            layer(hidden, attention_mask=None, position_ids=positions, position_embeddings=cos_sin)
            _sync(device)
            start = time.perf_counter()
            for _ in range(reps):
                layer(hidden, attention_mask=None, position_ids=positions, position_embeddings=cos_sin)
            _sync(device)
        return (time.perf_counter() - start) / reps

    result = {"decode_ms": round(run(1, 10) * 1e3, 3), "prefill_ms_per_token": round(run(128, 3) * 1e3 / 128, 4)}
    dtype_name = str(torch_dtype).removeprefix("torch.")
    profile.layer_ms[f"{spec.architecture}-{spec.hidden_size}x{spec.num_layers}-{dtype_name}"] = result
    return result


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _matmul_tflops(device, dtype, n: int = 1024, budget_s: float = 0.3) -> float:
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < budget_s:
        a @ b
        reps += 1
        if reps % 4 == 0:
            _sync(device)
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def _copy_bandwidth_gbs(device, size_mb: int = 256, reps: int = 5) -> float:
    import torch

    src = torch.ones(size_mb * 2**20 // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best / 1e9


def _describe(device) -> tuple[str, str, int, int]:
    import torch

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        free, total = torch.cuda.mem_get_info(device)
        return "NVIDIA", props.name, int(total), int(free)
    memory = psutil.virtual_memory()
    if device.type == "mps" or (platform.system() == "Darwin" and platform.machine() == "arm64"):
        return "Apple", _sysctl("machdep.cpu.brand_string") or "Apple Silicon", memory.total, memory.available
    return platform.machine() or "CPU", _cpu_name(), memory.total, memory.available


def _describe_free(backend: str) -> int:
    if backend == "cuda":
        import torch

        return int(torch.cuda.mem_get_info()[0])
    return psutil.virtual_memory().available


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def _sysctl(key: str) -> str | None:
    try:
        return subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
