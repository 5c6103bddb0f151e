"""`potluck --self-test` as the release workflow runs it: a real `python -m app.cli --self-test`
process, with no display (it must never need Qt), one chat turn through a real node, exit 0."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 900  # a node start on a shared 2-core machine: generous, never a gate on speed


def headless_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    env["POTLUCK_HOME"] = str(tmp_path / "user-home")  # the self-test must not touch it
    env.pop("POTLUCK_NODE_COMMAND", None)
    return env


def self_test(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", "--self-test", *args], cwd=ROOT,
                          env=headless_env(tmp_path), capture_output=True, text=True, timeout=TIMEOUT_S)


def test_self_test_never_imports_qt_and_fails_in_plain_words(tmp_path):
    code = ("import sys\n"
            "from app.cli import main\n"
            f"code = main(['--self-test', {str(tmp_path / 'no-model')!r}])\n"
            "print('EXIT', code, sorted(m for m in sys.modules if m.split('.')[0] in ('PySide6', 'torch')))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=headless_env(tmp_path), capture_output=True,
                         text=True, timeout=120)
    assert "EXIT 1 []" in out.stdout, out.stdout + out.stderr
    assert "is not a model checkpoint folder (no config.json in it)" in out.stdout
    assert not (tmp_path / "user-home").exists()


def test_self_test_takes_no_command(tmp_path):
    out = subprocess.run([sys.executable, "-m", "app.cli", "--self-test", "x", "profile"], cwd=ROOT,
                         env=headless_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--self-test runs on its own" in out.stderr


@pytest.mark.network
@pytest.mark.slow
def test_self_test_process_passes_on_a_test_checkpoint(make_checkpoint, tmp_path):
    out = self_test(tmp_path, str(make_checkpoint("llama")))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "node ready in" in out.stdout and "chat answered" in out.stdout and "PASSED" in out.stdout
    assert not (tmp_path / "user-home").exists()  # a throwaway folder, not the user's


@pytest.mark.network
@pytest.mark.slow
def test_self_test_process_passes_on_the_demo_model(tmp_path):
    """Exactly what the release workflow runs after installing: `potluck --self-test`."""
    from app.resources import demo_model_dir

    if demo_model_dir() is None:
        pytest.skip("the demo model is not built yet (resources/demo-model has no config.json): "
                    "build it with resources/demo-model-recipe/train.py")
    out = self_test(tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"model: {demo_model_dir()}" in out.stdout and "PASSED" in out.stdout
