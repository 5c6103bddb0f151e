"""--backend auto|torch|mlx|gguf: what auto picks, and the errors a user sees when a backend is missing.
These run with or without mlx installed."""

import subprocess
import sys

import pytest

from engine.backends import choose
from engine.model.errors import CheckpointError


@pytest.fixture
def machine(monkeypatch):
    """machine(apple=..., mlx_error=...) pretends to be another computer."""
    def pretend(apple: bool, mlx_error: str | None):
        monkeypatch.setattr(choose, "apple_silicon", lambda: apple)
        monkeypatch.setattr(choose, "mlx_import_error", lambda: mlx_error)
    return pretend


def test_auto_picks_mlx_only_on_apple_silicon_with_mlx(machine):
    machine(apple=True, mlx_error=None)
    assert choose.pick_backend("auto") == "mlx"
    machine(apple=True, mlx_error="ImportError: No module named 'mlx'")
    assert choose.pick_backend("auto") == "torch"
    machine(apple=False, mlx_error=None)  # Linux with mlx[cpu]: exact but slow, so not chosen
    assert choose.pick_backend("auto") == "torch"
    assert choose.pick_backend("torch") == "torch"


def test_asking_for_a_missing_backend_says_what_to_install(machine):
    machine(apple=False, mlx_error="ImportError: No module named 'mlx'")
    with pytest.raises(CheckpointError, match=r'pip install "potluck\[mlx\]".*--backend torch'):
        choose.pick_backend("mlx")
    with pytest.raises(CheckpointError, match="use auto, torch or mlx"):
        choose.pick_backend("cuda")


BLOCK_MLX = "import sys; sys.modules['mlx'] = sys.modules['mlx_lm'] = None; from app.cli import main; sys.exit(main())"


def run_without_mlx(*args):
    return subprocess.run([sys.executable, "-c", BLOCK_MLX, *args], capture_output=True, text=True, timeout=300)


def test_generate_and_node_without_mlx_fail_cleanly(tmp_path, make_checkpoint):
    model = str(make_checkpoint("qwen3"))
    gen = run_without_mlx("generate", "--model", model, "--prompt", "hi", "--backend", "mlx")
    assert gen.returncode == 2 and 'pip install "potluck[mlx]"' in gen.stderr and "Traceback" not in gen.stderr
    node = run_without_mlx("node", "--host", "--model", model, "--backend", "mlx", "--data-dir", str(tmp_path),
                           "--api", "127.0.0.1:0")
    assert node.returncode == 2 and 'pip install "potluck[mlx]"' in node.stderr and "Traceback" not in node.stderr


def test_generate_with_gguf_hands_over_to_solo_mode(tmp_path, make_checkpoint):
    """--backend gguf runs llama.cpp on a .gguf file; a checkpoint folder is refused in plain words."""
    proc = subprocess.run([sys.executable, "-m", "app.cli", "generate", "--model", str(make_checkpoint("qwen3")),
                           "--prompt", "hi", "--backend", "gguf"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "gguf" in proc.stderr.lower() and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "app.cli", "generate", "--model", str(tmp_path / "m.gguf"),
                           "--prompt", "hi", "--backend", "gguf", "--shards", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--shards does not apply" in proc.stderr
