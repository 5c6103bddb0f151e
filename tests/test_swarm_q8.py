"""Hidden states in 8-bit blocks (engine/swarm/q8.py): the codec's error bound, and a stage that
reads them checks what it is sent. The whole path over real Lattica is in test_swarm_pipeline.py."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from engine.backends.host import BFLOAT16_WORDS
from engine.swarm import q8
from engine.swarm.stage import StageWorker
from engine.swarm.wire import Message, Tensor, WireError

finite = st.floats(-3e4, 3e4, allow_nan=False, width=32)


@settings(max_examples=200, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 4), st.sampled_from([32, 64, 96])), elements=finite))
def test_round_trip_error_is_at_most_half_a_step_of_the_block(hidden):
    codes, scales = q8.encode(hidden)
    assert codes.dtype == np.int8 and scales.dtype == np.float16
    assert codes.nbytes + scales.nbytes == q8.wire_bytes(*hidden.shape)
    back = q8.decode(codes, scales, "float32")
    step = np.repeat(scales.astype(np.float32), q8.BLOCK, axis=1)
    largest = np.repeat(np.abs(hidden).reshape(hidden.shape[0], -1, q8.BLOCK).max(axis=2), q8.BLOCK, axis=1)
    # half a step, plus float16's rounding of the scale carried to the block's largest value; a block
    # under 127 * 2**-14 has a subnormal scale, whose spacing (2**-24) bounds its error absolutely
    assert (np.abs(back - hidden) <= 0.5 * step + largest * 2.0 ** -10 + 127 * 2.0 ** -25).all()


def test_an_outlier_coarsens_only_its_own_block():
    hidden = np.full((1, 64), 0.01, dtype=np.float32)
    hidden[0, 3] = 2000.0  # a "massive activation" channel
    back = q8.decode(*q8.encode(hidden), "float32")
    assert abs(back[0, 3] - 2000.0) < 8
    assert np.allclose(back[0, 32:], 0.01, rtol=0.01)  # the other block keeps its precision
    assert np.abs(back[0, 4:32]).max() < 8  # its own neighbours share the outlier's step


def test_bfloat16_words_round_trip_and_zero_blocks_stay_zero():
    values = np.zeros((2, 64), dtype=np.float32)
    values[1, :32] = np.linspace(-1, 1, 32)
    words = q8.from_float32(values, "bfloat16")
    assert words.dtype == BFLOAT16_WORDS
    back = q8.to_float32(q8.decode(*q8.encode(words), "bfloat16"))
    assert (back[0] == 0).all() and (back[1, 32:] == 0).all()
    assert np.abs(back[1, :32] - values[1, :32]).max() <= 1 / 127 + 1 / 128


def test_bfloat16_rounds_to_nearest_even():
    x = np.array([1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, -2.5], dtype=np.float32)  # ties
    assert q8.to_float32(q8.from_float32(x, "bfloat16")).tolist() == [1.0, 1.0 + 2 ** -6, -2.5]


def test_broken_hidden_states_are_not_sent():
    with pytest.raises(ValueError, match="NaN or infinity"):
        q8.encode(np.array([[np.nan] * 32], dtype=np.float32))


class _Spec:
    hidden_size, num_layers, max_position_embeddings = 64, 4, 128


class _Runner:
    spec, dtype_name = _Spec(), "float32"


@pytest.fixture
def stage():
    worker = StageWorker(_Runner(), send=lambda *a: None, peer_id="me", wire_codec="q8_0")
    yield worker
    worker.close()


def _tensors(rows=2, width=64, codes="int8", scales="float16", scale_value=1.0):
    code = np.ones((rows, width), dtype=np.int8)
    scale = np.full((rows, width // q8.BLOCK), scale_value, dtype=np.float16)
    return {"hidden": Tensor(codes, code.shape, code.tobytes()),
            "hidden_scale": Tensor(scales, scale.shape, scale.tobytes())}


def test_a_q8_stage_decodes_what_it_is_sent(stage):
    out = stage._decode_q8(_tensors(scale_value=0.5), exactly=None)
    assert out.dtype == np.float32 and out.shape == (2, 64) and (out == 0.5).all()


@pytest.mark.parametrize("tensors, error", [
    ({"hidden": _tensors()["hidden"]}, "tensors 'hidden' and 'hidden_scale'"),
    (_tensors(codes="float16"), "int8 codes with float16 scales"),
    (_tensors(width=32), r"hidden states must have shape \[T, 64\]"),
    ({**_tensors(), "hidden_scale": _tensors(width=32)["hidden_scale"]}, r"q8_0 scales must have shape \[T, 2\]"),
    (_tensors(scale_value=np.inf), "finite and not negative"),
    (_tensors(scale_value=-1.0), "finite and not negative"),
    ({**_tensors(rows=2), "hidden_scale": _tensors(rows=3)["hidden_scale"]}, "rows of scales"),
])
def test_a_q8_stage_refuses_malformed_hidden_states(stage, tensors, error):
    with pytest.raises(WireError, match=error):
        stage._decode_q8(tensors, exactly=None)


def test_a_decode_step_carries_one_token(stage):
    with pytest.raises(WireError, match="exactly 1 token"):
        stage._decode_q8(_tensors(rows=2), exactly=1)


def test_a_codec_the_hidden_size_cannot_take_is_refused():
    class Odd(_Runner):
        class spec(_Spec):
            hidden_size = 48
    with pytest.raises(ValueError, match="hidden size 48"):
        StageWorker(Odd(), send=lambda *a: None, peer_id="me", wire_codec="q8_0")


def test_q8_on_a_trained_model_moves_its_loss_no_more_than_float32_does():
    """bench/q8_quality.py, shortened: the shipped demo model (trained) as 8 one-layer stages, its
    hidden states crossing 7 hops exactly or in q8_0 blocks. A broken codec would wreck the loss;
    a sound one moves it about as little as computing in float32 instead of bfloat16 does."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "bench" / "q8_quality.py"), "--prompts", "2",
                           "--max-tokens", "8", "--text-tokens", "1024"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["text_tokens"] == 1024 and out["answers"] == 2
    assert abs(out["loss_change_q8_0"]) < 0.01 and abs(out["loss_change_float32"]) < 0.01
    assert out["loss_exact"] < 8  # the demo model, not noise (uniform over 8192 entries: 9.0)
