"""A mixed swarm: a torch node and an MLX node (real processes over Lattica on loopback, inside a
private network namespace under tests/run.sh) each serve part of the model, hidden states cross
from one backend to the other on the wire, and the answer is what `potluck generate` prints. The
MLX node runs as on a Mac, where torch is not installed (issue 8): `import torch` fails in it."""

import json
import subprocess
import sys

import pytest

from engine.backends.choose import mlx_import_error

if mlx_import_error():
    pytest.skip(f"the MLX backend needs mlx and mlx-lm, which do not import here ({mlx_import_error()})",
                allow_module_level=True)

from openai import OpenAI

from tests.no_torch import env_without_torch
from tests.swarm_processes import NodeProcess, all_ready

pytestmark = [pytest.mark.network, pytest.mark.slow]

MEMORY_GB = "0.0015"  # 1.5 MB each: the tiny 8-layer model (1.4 MB) plus KV reserve needs both
PROMPT = "Tell me a story"
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def checkpoint(make_checkpoint):
    return make_checkpoint("llama")


@pytest.fixture(scope="module")
def swarm(tmp_path_factory, checkpoint):
    root = tmp_path_factory.mktemp("mixed-swarm")
    host = NodeProcess(root / "torch", "--host", "--model", str(checkpoint), "--max-memory", MEMORY_GB,
                       "--backend", "torch")
    nodes = [host]
    try:
        nodes.append(NodeProcess(root / "mlx", "--join", host.multiaddr, "--max-memory", MEMORY_GB,
                                 "--backend", "mlx", env=env_without_torch(root / "no-torch")))
        host.wait_for(lambda s: all_ready(s, 2), "the torch and the MLX node serving every layer")
        yield nodes
    finally:
        for node in reversed(nodes):
            node.stop()


def test_a_torch_node_and_an_mlx_node_answer_together(swarm, checkpoint):
    host, mac = swarm
    proc = subprocess.run([sys.executable, "-m", "app.cli", "generate", "--model", str(checkpoint), "--prompt",
                           PROMPT, "--max-tokens", str(MAX_TOKENS), "--json"],
                          capture_output=True, text=True, timeout=300, check=True)
    expected = json.loads(proc.stdout.strip().splitlines()[-1])["text"]

    snapshot = host.swarm()
    backends = {n["peer_id"]: n["profile"]["backend"] for n in snapshot["nodes"]}
    assert backends == {host.peer_id: "cpu", mac.peer_id: "mlx" if sys.platform == "darwin" else "mlx-cpu"}
    assert mac.http.get("/health").json()["backend"] == "mlx"

    for origin in (host, mac):
        client = OpenAI(base_url=f"{origin.api}/v1", api_key=origin.token, max_retries=0, timeout=120)
        answer = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": PROMPT}],
                                                max_tokens=MAX_TOKENS, temperature=0)
        assert answer.choices[0].message.content == expected
    (route,) = mac.swarm()["recent_requests"][-1]["routes"]
    assert {hop["peer_id"] for hop in route} == {host.peer_id, mac.peer_id}  # through both backends
