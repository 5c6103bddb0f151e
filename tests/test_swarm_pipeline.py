"""The push ring over real Lattica on loopback, in one process: a request through three peers
gives exactly the tokens of the local pipeline, concurrent requests batch, and a peer that
vanishes mid-answer is routed around without changing the answer."""

import socket
import threading

import pytest

from engine.backends.torch_runner import TorchShardRunner
from engine.generate import LocalPipeline, generate
from engine.sampling import SamplingParams
from engine.swarm.origin import RouteUnavailable
from engine.swarm.peer import Peer
from engine.swarm.protocol import Hop
from engine.swarm.transport import Transport

pytestmark = pytest.mark.network

PROMPTS = [[5, 9, 13, 200, 17], list(range(20, 41)), list(range(50, 60)), [7, 7, 7]]
SPLIT = [(0, 3), (3, 5), (5, 8)]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Swarm:
    """Peers in this process; routes are chosen by a stand-in for the scheduler."""

    def __init__(self, tmp_path, checkpoint, ranges, **origin_options):
        self.serving: dict[str, tuple[int, int]] = {}
        self.peers = []
        boot = None
        for i, (start, end) in enumerate(ranges):
            def factory(on_message, i=i, boot=boot):
                return Transport(tmp_path / f"p{i}", ("127.0.0.1", free_port()), "pipeline-test", on_message,
                                 bootstrap=[boot] if boot else None)
            peer = Peer(factory, self.route_for, **origin_options)
            # 4-token chunks: prompts go from stage to stage in parts, over real Lattica
            peer.serve(TorchShardRunner(checkpoint, start, end, "cpu", "float32"), prefill_chunk_tokens=4)
            self.serving[peer.peer_id] = (start, end)
            self.peers.append(peer)
            boot = boot or peer.transport.multiaddr

    def route_for(self, prompt_tokens, kv_tokens, avoid):
        route, layer = [], 0
        for peer_id, (start, end) in self.serving.items():
            if peer_id not in avoid and start == layer:
                route.append(Hop(peer_id, start, end))
                layer = end
        if layer != 8:
            raise RouteUnavailable("no live chain covers every layer")
        return route

    def close(self):
        for peer in self.peers:
            peer.close()


@pytest.fixture(scope="module")
def checkpoint(make_checkpoint):
    return make_checkpoint("llama")


@pytest.fixture(scope="module")
def reference(checkpoint):
    pipeline = LocalPipeline(checkpoint, device="cpu", dtype="float32")
    out = {}
    for i, prompt in enumerate(PROMPTS):
        out[i] = [t for _, t in generate(pipeline, [prompt], [SamplingParams(max_tokens=30)])]
    return out


def test_request_through_three_peers_matches_local_generate(tmp_path, checkpoint, reference):
    swarm = Swarm(tmp_path, checkpoint, SPLIT)
    try:
        origin = swarm.peers[0].origin
        assert list(origin.generate(PROMPTS[1], SamplingParams(max_tokens=30))) == reference[1]
    finally:
        swarm.close()


def test_concurrent_requests_all_complete_correctly(tmp_path, checkpoint, reference):
    swarm = Swarm(tmp_path, checkpoint, SPLIT)
    results = {}

    def ask(i):
        origin = swarm.peers[i % 3].origin  # origins on different peers
        results[i] = list(origin.generate(PROMPTS[i], SamplingParams(max_tokens=30)))

    try:
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(PROMPTS))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert results == reference
        assert all(not peer.stage.requests for peer in swarm.peers)  # every cache released
    finally:
        swarm.close()


def test_a_peer_vanishing_mid_answer_is_routed_around(tmp_path, checkpoint, reference):
    # two peers can serve the last layers; the first one dies after a few tokens
    swarm = Swarm(tmp_path, checkpoint, SPLIT + [(5, 8)], token_timeout_s=3.0)
    try:
        doomed = swarm.peers[2]
        stream = swarm.peers[0].origin.generate(PROMPTS[0], SamplingParams(max_tokens=30))
        tokens = [next(stream) for _ in range(5)]
        doomed.close()
        tokens += list(stream)
        assert tokens == reference[0]
        assert swarm.peers[0].origin.recoveries == 1
    finally:
        swarm.close()
