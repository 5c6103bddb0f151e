"""Solo mode: a whole GGUF model in llama.cpp, on a small GGUF file made here from a test checkpoint."""

import importlib.util
import json
import subprocess
import sys

import pytest

from engine.backends import llama_cpp_solo as solo

needs_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("gguf") is None,
    reason='llama-cpp-python (pip install "potluck[solo]") and gguf (a dev dependency) are needed for solo mode tests')

STORY = [{"role": "user", "content": "Tell me a story"}]


@pytest.fixture(scope="module")
def checkpoint(make_checkpoint):
    return make_checkpoint("llama")  # tiny shape, float32, seed 0


@pytest.fixture(scope="module")
def gguf_file(checkpoint, tmp_path_factory):
    """The same weights and tokenizer as `checkpoint`, in GGUF."""
    from engine.model.random_gguf import checkpoint_to_gguf

    return checkpoint_to_gguf(checkpoint, tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


@pytest.fixture(scope="module")
def llm(gguf_file):
    # A float32 KV cache: with llama.cpp's default float16 one, logits differ from torch's by ~0.01.
    return solo.load_gguf(gguf_file, n_ctx=512, n_threads=1, kv_cache="f32")


@needs_llama_cpp
def test_made_gguf_loads_with_its_tokenizer_and_chat_template(tmp_path):
    from engine.model.random_gguf import make_gguf

    path = make_gguf(tmp_path / "made.gguf", seed=1)
    llm = solo.load_gguf(path, n_ctx=256, n_threads=1)
    assert llm.metadata["general.architecture"] == "llama"
    assert "<|im_start|>" in llm.metadata["tokenizer.chat_template"]
    assert llm.n_vocab() == 384 and llm.n_ctx() == 256
    ids = llm.tokenize(b"<|im_start|>user\nhi", add_bos=False, special=True)
    assert ids[0] == 1 and llm.detokenize(ids[1:]) == b"user\nhi"  # <|im_start|> is one control token


@needs_llama_cpp
def test_chat_answer_streams_in_pieces(llm):
    pieces = list(solo.stream_chat(llm, STORY, max_tokens=24, temperature=0.0))
    assert len(pieces) >= 3, pieces
    assert "".join(pieces).strip()


@needs_llama_cpp
def test_stopping_the_iteration_cancels_and_the_model_answers_again(llm):
    whole = list(solo.stream_chat(llm, STORY, max_tokens=24, temperature=0.0))
    stream = solo.stream_chat(llm, STORY, max_tokens=24, temperature=0.0)
    first_two = [next(stream), next(stream)]
    stream.close()
    assert first_two == whole[:2]
    prompt_tokens = len(solo.chat_prompt_ids(llm, STORY))
    assert llm.n_tokens <= prompt_tokens + 2, "llama.cpp went on decoding after the stream was closed"
    assert list(solo.stream_chat(llm, STORY, max_tokens=24, temperature=0.0)) == whole


@needs_llama_cpp
def test_sampling_settings_out_of_range_are_refused_before_any_work(llm):
    with pytest.raises(ValueError, match="top_p"):
        solo.stream_chat(llm, STORY, top_p=0.0)
    with pytest.raises(ValueError, match="max_tokens"):
        solo.generate_chat(llm, STORY, max_tokens=0)


@needs_llama_cpp
def test_llama_cpp_greedy_tokens_equal_the_torch_engine_on_the_same_weights(checkpoint, gguf_file, llm):
    from engine.generate import LocalPipeline, generate
    from engine.model.tokenizer import (
        StreamingDetokenizer,
        chat_prompt_ids,
        load_tokenizer,
        stop_token_ids,
    )
    from engine.sampling import SamplingParams

    tokenizer = load_tokenizer(checkpoint)
    prompt = chat_prompt_ids(tokenizer, STORY)
    assert solo.chat_prompt_ids(llm, STORY) == prompt  # same template, same BPE

    pipeline = LocalPipeline(checkpoint, device="cpu", dtype="float32")
    params = SamplingParams(max_tokens=32, stop_token_ids=stop_token_ids(checkpoint, tokenizer))
    detok = StreamingDetokenizer(tokenizer)
    for _, token in generate(pipeline, [prompt], [params]):
        detok.add(token)

    streamed = []
    result = solo.generate_chat(llm, STORY, 32, 0.0, 1.0, None, streamed.append)
    assert len(detok.ids) == 32, "the torch engine stopped too early for a meaningful comparison"
    assert result["token_ids"] == detok.ids
    assert result["text"] == detok.text == "".join(streamed)
    assert result["tokens"] == len(result["token_ids"])
    assert result["ttft_s"] > 0 and result["tokens_per_s"] > 0


@needs_llama_cpp
def test_seeded_sampling_repeats_and_another_seed_differs(gguf_file):
    def sample(seed):
        return solo.generate_gguf(gguf_file, "hi", 24, 1.0, 0.9, seed, None)["token_ids"]

    assert sample(7) == sample(7) != sample(8)


@needs_llama_cpp
def test_chat_stream_and_generate_sample_the_same_answer_for_a_seed(llm):
    answer = solo.generate_chat(llm, STORY, 24, 0.8, 0.9, 3)
    pieces = list(solo.stream_chat(llm, STORY, max_tokens=24, temperature=0.8, top_p=0.9, seed=3))
    assert "".join(pieces) == answer["text"] and len(pieces) >= answer["tokens"] // 2


def potluck_generate(*args):
    return subprocess.run([sys.executable, "-m", "app.cli", "generate", "--backend", "gguf", *args],
                          check=False, capture_output=True, text=True, timeout=300)


@needs_llama_cpp
def test_generate_command_runs_a_gguf_file(gguf_file):
    common = ["--model", str(gguf_file), "--prompt", "Tell me a story", "--max-tokens", "16"]
    as_json = potluck_generate(*common, "--json")
    assert as_json.returncode == 0, as_json.stderr
    result = json.loads(as_json.stdout)
    assert set(result) == {"text", "tokens", "token_ids", "ttft_s", "tokens_per_s"}
    assert result["tokens"] == 16 and result["ttft_s"] > 0 and result["tokens_per_s"] > 0
    direct = solo.generate_gguf(gguf_file, "Tell me a story", 16, 0.0, 1.0, None, None)
    assert result["token_ids"] == direct["token_ids"] and result["text"] == direct["text"]
    streamed = potluck_generate(*common)
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == result["text"] + "\n"


def test_generate_command_refuses_a_missing_gguf_file(tmp_path):
    proc = potluck_generate("--model", str(tmp_path / "absent.gguf"), "--prompt", "hi", "--json")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "No model file at" in proc.stderr and "Traceback" not in proc.stderr


def test_a_missing_file_a_folder_and_a_non_gguf_file_are_refused_in_plain_words(tmp_path):
    with pytest.raises(solo.SoloModeError, match="No model file at .*existing .gguf file"):
        solo.load_gguf(tmp_path / "absent.gguf")
    with pytest.raises(solo.SoloModeError, match="is a folder"):
        solo.load_gguf(tmp_path)
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_text('{"model_type": "llama"}')
    with pytest.raises(solo.SoloModeError, match="is not a GGUF model file"):
        solo.load_gguf(not_gguf)


def test_without_llama_cpp_python_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    file = tmp_path / "model.gguf"
    file.write_bytes(b"GGUF" + bytes(64))
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` fail
    with pytest.raises(solo.SoloModeError, match=r'not installed.*pip install "potluck\[solo\]"'):
        solo.load_gguf(file)


@needs_llama_cpp
def test_a_truncated_gguf_is_refused_in_plain_words(gguf_file, tmp_path):
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(gguf_file.read_bytes()[:5000])
    with pytest.raises(solo.SoloModeError, match="could not load"):
        solo.load_gguf(truncated)


@needs_llama_cpp
def test_a_header_claiming_a_huge_string_is_refused_without_allocating_it(tmp_path):
    import struct

    garbage = tmp_path / "garbage.gguf"  # version 3, 0 tensors, 1 key whose name claims 2**60 bytes
    garbage.write_bytes(b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 2**60) + b"xx")
    assert solo.gguf_context_length(garbage) is None
    with pytest.raises(solo.SoloModeError, match="could not load"):
        solo.load_gguf(garbage)


def test_importing_solo_mode_needs_neither_llama_cpp_nor_torch():
    code = ("import sys, engine.backends.llama_cpp_solo; "
            "assert not {'llama_cpp', 'torch'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
