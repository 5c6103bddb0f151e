"""The README's install and test commands are the ones CI runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_command(comment):
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.rstrip().endswith(f"# {comment}"):
            return line.split("#")[0].strip()
    raise AssertionError(f"README has no line ending in '# {comment}'")


def ci_lines():
    return [l.strip() for l in (ROOT / ".ci" / "run").read_text().splitlines() if l.strip() and not l.startswith("#")]


def test_ci_runs_the_readme_install_command():
    assert readme_command("install for development and tests") in ci_lines()


def test_ci_runs_the_readme_test_command():
    test = readme_command("run the tests")
    assert any(re.fullmatch(re.escape(test) + r"( .*)?", line) for line in ci_lines())
