"""Hardware profile: what this machine is, and what it measurably does.

Measured beats tabulated (DESIGN.md): matmul TFLOP/s, memory bandwidth and, for a given model,
the time of one of its decoder layers at decode and prefill are measured here, in a few seconds,
and cached per device (and per model shape) in the data dir. The scheduler allocates from these.

A node measures through the backend it serves with: torch (CUDA, MPS or CPU), or MLX on Apple
Silicon, where the GPU shares the machine's unified memory and may hold only Metal's recommended
working set of it (`memory_usable_bytes`).
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
    backend: str  # torch's device (cuda, mps or cpu), or mlx (the Apple GPU) or mlx-cpu
    vendor: str
    device_name: str
    memory_total_bytes: int
    memory_free_bytes: int
    cpu_cores: int
    matmul_tflops_fp32: float
    matmul_tflops_half: float  # bfloat16 (fp16 where bfloat16 is not supported)
    bandwidth_gbs: float  # bytes read + written per second by a large copy
    memory_usable_bytes: int = 0  # the most the GPU may hold (Apple: Metal's working set); 0: no such cap
    layer_ms: dict = field(default_factory=dict)  # model key -> {"decode_ms", "prefill_ms_per_token"}
    measured_at: float = 0.0
    version: int = PROFILE_VERSION

    def as_dict(self) -> dict:
        return asdict(self)


def measure(device: str = "auto", backend: str = "torch") -> HardwareProfile:
    if backend == "mlx":
        return measure_mlx(device)
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


def load_or_measure(cache_dir: str | Path, device: str = "auto", backend: str = "torch",
                    max_age_s: float = 7 * 86400) -> HardwareProfile:
    """The cached profile for this device and backend, measured again when missing, stale or from
    another version."""
    path = profile_path(cache_dir, device, backend)
    try:
        data = json.loads(path.read_text())
        if data.get("version") == PROFILE_VERSION and time.time() - data.get("measured_at", 0) < max_age_s:
            profile = HardwareProfile(**data)
            profile.memory_free_bytes = _describe_free(profile)
            return profile
    except (OSError, ValueError, TypeError):
        pass
    profile = measure(device, backend)
    save(profile, path)
    return profile


def profile_path(cache_dir: str | Path, device: str = "auto", backend: str = "torch") -> Path:
    prefix = "profile-" if backend == "torch" else f"profile-{backend}-"
    return Path(cache_dir) / f"{prefix}{device.replace(':', '_')}.json"


def save(profile: HardwareProfile, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(profile.as_dict(), indent=1))


def measure_layer(profile: HardwareProfile, checkpoint_path: str | Path, dtype: str = "auto") -> dict:
    """Time one decoder layer of this model's shape (random weights) at decode and at prefill."""
    if profile.backend.startswith("mlx"):
        return _measure_layer_mlx(profile, checkpoint_path, dtype)
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


PROBE_REQUEST = "prefill-probe"  # timed before the shard serves, so it meets no real request


def time_prefill_steps(runner, short: int = 16, long: int = 128, reps: int = 3) -> tuple[float, float]:
    """(fixed seconds, seconds per token) of a prefill step on this shard, from timing chunks of
    `short` and `long` tokens appended to a scratch request, as a stage runs a prompt's later
    chunks; the output is brought to the host, as a stage does before sending it on. Returns
    (0, 0) when the two sizes do not order (timer noise on a very fast device): the caller then
    keeps the roofline's chunk. Takes about 3 s for a whole 0.6B model on a 2-core CPU."""
    import numpy as np

    def step(tokens: int) -> float:
        best = float("inf")
        for _ in range(reps):
            runner.prefill([PROBE_REQUEST], _probe_inputs(runner, short))  # the chunk before
            try:
                start = time.perf_counter()
                runner.to_numpy(runner.prefill([PROBE_REQUEST], _probe_inputs(runner, tokens)))
                best = min(best, time.perf_counter() - start)
            finally:
                runner.release(PROBE_REQUEST)
        return best

    step(short)  # first calls pay one-off costs (kernel selection, allocator growth)
    t_short, t_long = step(short), step(long)
    per_token = (t_long - t_short) / (long - short)
    fixed = t_short - short * per_token
    if not (per_token > 0 and fixed > 0 and np.isfinite(fixed)):
        return 0.0, 0.0
    return fixed, per_token


def _probe_inputs(runner, tokens: int):
    import numpy as np

    if runner.start == 0:
        return np.zeros((1, tokens), dtype=np.int64)
    return np.zeros((1, tokens, runner.spec.hidden_size), dtype=np.float32)


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


def _describe_free(profile: HardwareProfile) -> int:
    if profile.backend == "cuda":
        import torch

        return int(torch.cuda.mem_get_info()[0])
    available = psutil.virtual_memory().available
    return min(available, profile.memory_usable_bytes) if profile.memory_usable_bytes else available


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


# ---- MLX (Apple Silicon; MLX's CPU device elsewhere) ----

def measure_mlx(device: str = "auto") -> HardwareProfile:
    """The profile of MLX's device. On a Mac: the chip, its unified memory and the share of it the
    GPU may use, and matmul rate and bandwidth measured through MLX. Elsewhere MLX runs on the CPU
    (slowly): the measurements stay small so that they take about a second."""
    import mlx.core as mx

    from engine.backends.choose import apple_silicon
    from engine.backends.mlx_device import pick_mlx_device

    dev = pick_mlx_device(device)
    gpu = dev.type == mx.gpu
    info = mx.device_info(dev)
    memory = psutil.virtual_memory()
    if apple_silicon():
        vendor = "Apple"
        name = _sysctl("machdep.cpu.brand_string") or str(info.get("device_name") or "Apple Silicon")
        total = int(_sysctl("hw.memsize") or 0) or int(info.get("memory_size") or 0) or memory.total
    else:
        vendor = platform.machine() or "CPU"
        name = str(info.get("device_name") or "GPU") if gpu else _cpu_name()
        total = int(info.get("memory_size") or info.get("total_memory") or 0) if gpu else memory.total
    usable = int(info.get("max_recommended_working_set_size") or 0) if gpu else 0
    return HardwareProfile(
        backend="mlx" if gpu else "mlx-cpu", vendor=vendor, device_name=name, memory_total_bytes=total,
        memory_free_bytes=min(memory.available, usable) if usable else memory.available,
        cpu_cores=psutil.cpu_count(logical=False) or psutil.cpu_count() or 1,
        matmul_tflops_fp32=round(_mlx_matmul_tflops(dev, mx.float32), 4),
        matmul_tflops_half=round(_mlx_matmul_tflops(dev, mx.bfloat16), 4),
        bandwidth_gbs=round(_mlx_bandwidth_gbs(dev, size_mb=256 if gpu else 64), 2),
        memory_usable_bytes=usable, measured_at=time.time(),
    )


def _mlx_matmul_tflops(device, dtype, budget_s: float = 0.3, largest: int = 4096) -> float:
    """n x n matmuls, n doubled from 128 until one takes a tenth of the budget: big enough to be
    compute-bound on a GPU, small enough for MLX's CPU device (a few GFLOP/s)."""
    import mlx.core as mx

    with mx.stream(device):
        n = 128
        while True:
            a, b = mx.random.normal((n, n)).astype(dtype), mx.random.normal((n, n)).astype(dtype)
            mx.eval(a @ b)
            start = time.perf_counter()
            mx.eval(a @ b)
            if time.perf_counter() - start > budget_s / 10 or n >= largest:
                break
            n *= 2
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < budget_s:
            mx.eval(a @ b)
            reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def _mlx_bandwidth_gbs(device, size_mb: int = 256, reps: int = 5) -> float:
    import mlx.core as mx

    with mx.stream(device):
        src = mx.ones((size_mb * 2**20 // 4,), dtype=mx.float32)
        mx.eval(src)
        best = float("inf")
        for _ in range(reps):
            start = time.perf_counter()
            mx.eval(src + 1)  # reads and writes every byte once
            best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best / 1e9


def _measure_layer_mlx(profile: HardwareProfile, checkpoint_path: str | Path, dtype: str = "auto") -> dict:
    import mlx.core as mx

    from engine.backends.mlx_device import MLX_DTYPES, pick_mlx_dtype
    from engine.backends.mlx_runner import mlx_model
    from engine.model.spec import ModelSpec, read_config

    spec = ModelSpec.from_checkpoint(checkpoint_path)
    device = mx.Device(mx.gpu if profile.backend == "mlx" else mx.cpu)
    dtype_name = pick_mlx_dtype(dtype, spec.dtype, device)
    config = {**read_config(checkpoint_path), "num_hidden_layers": 1, "vocab_size": 16, "layer_types": None}
    with mx.stream(device):
        layer = mlx_model(config).model.layers[0]  # mlx-lm's block, random weights
        layer.set_dtype(MLX_DTYPES[dtype_name])
        mx.eval(layer.parameters())

        def run(tokens: int, reps: int) -> float:
            hidden = mx.random.normal((1, tokens, spec.hidden_size)).astype(MLX_DTYPES[dtype_name])
            mask = "causal" if tokens > 1 else None
            mx.eval(layer(hidden, mask))
            start = time.perf_counter()
            for _ in range(reps):
                mx.eval(layer(hidden, mask))
            return (time.perf_counter() - start) / reps

        result = {"decode_ms": round(run(1, 10) * 1e3, 3),
                  "prefill_ms_per_token": round(run(128, 3) * 1e3 / 128, 4)}
    profile.layer_ms[f"{spec.architecture}-{spec.hidden_size}x{spec.num_layers}-{dtype_name}"] = result
    return result
