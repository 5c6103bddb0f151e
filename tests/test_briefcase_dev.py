"""`briefcase dev --test` on the staged Briefcase project: the app as Briefcase runs it (the staged
code and resources, the requirements in Briefcase's own virtual environment, not this checkout's
environment) passes the test_installed_* tests of tests/test_installers.py, one of which starts a
real node.

The environment comes from the package index, which tests/run.sh's network namespace cannot reach,
so tests/run.sh makes it before entering the namespace (`installers/build.py --dev-setup
--pin-installed torch`) when it runs the whole suite or POTLUCK_BRIEFCASE_DEV=1; it then exports
POTLUCK_BRIEFCASE_DEV=1 and this test fails if the environment is not there. Otherwise (a selection
of tests, or pytest run directly) a missing environment skips the test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "installers" / "build.py"
NOT_READY = 3  # installers/build.py DEV_NOT_READY

pytestmark = [
    pytest.mark.slow,
    pytest.mark.network,
    pytest.mark.skipif(not DRIVER.is_file(), reason="needs the repository (installers/build.py)"),
]


def installed_test_count() -> int:
    source = (ROOT / "tests" / "test_installers.py").read_text()
    return len(re.findall(r"^def test_installed_\w+\(", source, re.MULTILINE))


def test_briefcase_dev_test_passes(tmp_path):
    pytest.importorskip("briefcase", reason="pip install briefcase==0.4.7 (the [dev] extra has it)")
    # The inner pytest keeps its temporary files under this test's, and runs only what the test
    # entry selects (no PYTEST_ADDOPTS of the outer run).
    env = {**os.environ, "PYTEST_ADDOPTS": f"--basetemp={tmp_path / 'briefcase-dev'}"}
    result = subprocess.run([sys.executable, str(DRIVER), "--dev-test", "--no-install", "--pin-installed", "torch"],
                            cwd=ROOT, env=env, check=False, capture_output=True, text=True, timeout=840)
    output = result.stdout + result.stderr
    if result.returncode == NOT_READY:
        reason = (f"{result.stderr.strip()} tests/run.sh does that before entering its network namespace when it "
                  "runs the whole suite, or with POTLUCK_BRIEFCASE_DEV=1.")
        if os.environ.get("POTLUCK_BRIEFCASE_DEV") == "1":
            pytest.fail("tests/run.sh was to make briefcase dev's environment but it is not there (see its output "
                        f"before the tests and build/briefcase-stage/logs/dev-setup.log): {reason}")
        pytest.skip(reason)
    assert result.returncode == 0, output[-8000:]
    # Briefcase ran the tests in its own environment, not in this one.
    venv_python = re.compile(r"platform .* -- .*[/\\]\.briefcase[/\\]potluck[/\\]venv-dev\.[^/\\]+[/\\]")
    assert venv_python.search(output), output[-8000:]
    summary = re.search(r"^=+ (.+) in [\d.]+s(?: \([^)]*\))? =+$", output, re.MULTILINE)
    assert summary, output[-8000:]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", summary.group(1))}
    expected = installed_test_count()
    assert expected > 0 and counts.get("passed", 0) == expected, summary.group(0)
    assert not counts.keys() & {"failed", "error", "errors", "skipped"}, summary.group(0)
    assert "test_installed_self_test_runs_a_node_and_one_chat_turn PASSED" in output
    assert "Test suite passed!" in output
