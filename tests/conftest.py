import os

import pytest

# Qt aborts the process without a display unless told to render offscreen (see notes/desktop.md).
if not os.environ.get("DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test reaches the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as app/cli.py: tests run node processes side by side


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory):
    """make_checkpoint(arch, **kw) -> path; checkpoints with the same arguments are made once."""
    from engine.model.random_checkpoint import make_checkpoint as make

    made = {}

    def factory(arch="llama", **kwargs):
        key = (arch, tuple(sorted(kwargs.items())))
        if key not in made:
            made[key] = make(tmp_path_factory.mktemp(arch), arch=arch, **kwargs)
        return made[key]

    return factory
