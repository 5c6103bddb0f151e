"""Every bad input gets a clear error that says what happened and what to do."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from engine.backends.torch_device import pick_device, pick_dtype
from engine.backends.torch_runner import TorchShardRunner
from engine.model import CheckpointError, ModelSpec
from engine.model.checkpoint import Checkpoint


@pytest.fixture
def broken(tmp_path, make_checkpoint):
    """A fresh copy of a sharded checkpoint that a test may damage."""
    copy = tmp_path / "model"
    shutil.copytree(make_checkpoint("llama", max_shard_size="60KB"), copy)
    return copy


def shard_files(path):
    return sorted(path.glob("model-*.safetensors"))


def test_unknown_architecture_is_named(broken):
    config = json.loads((broken / "config.json").read_text())
    config["model_type"] = "gpt_bigcode"
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="Unsupported architecture 'gpt_bigcode'.*llama"):
        Checkpoint(broken)


def test_missing_config(tmp_path):
    with pytest.raises(CheckpointError, match="No config.json in .*Hugging Face checkpoint directory"):
        Checkpoint(tmp_path)


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        Checkpoint(tmp_path / "nowhere")


def test_config_missing_a_key(broken):
    config = json.loads((broken / "config.json").read_text())
    del config["hidden_size"]
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config.json lacks 'hidden_size'"):
        Checkpoint(broken)


def test_config_not_json(broken):
    (broken / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON.*damaged"):
        Checkpoint(broken)


def test_missing_weight_file(broken):
    shard_files(broken)[3].unlink()
    with pytest.raises(CheckpointError, match="model-00004-of-.*missing.*incomplete"):
        TorchShardRunner(broken, 0, 8, "cpu", "float32")


def test_no_weights_at_all(broken):
    for f in broken.glob("*.safetensors*"):
        f.unlink()
    with pytest.raises(CheckpointError, match="No weights in .*model.safetensors"):
        TorchShardRunner(broken, 0, 8, "cpu", "float32")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_weight_file(broken, damage):
    target = shard_files(broken)[5]
    if damage == "truncate":
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])
    else:
        target.write_bytes(b"\x20\x00\x00\x00\x00\x00\x00\x00" + b"{this is not a header at all...}" + b"\0" * 64)
    with pytest.raises(CheckpointError, match=f"{target.name} .* is damaged.*download the checkpoint again"):
        TorchShardRunner(broken, 0, 8, "cpu", "float32")


def test_damage_outside_the_range_does_not_matter(broken):
    """A shard opens only the files that hold its layers."""
    ck = Checkpoint(broken)
    needed = set(ck.files_for_range(6, 8))
    spare = next(f for f in shard_files(broken) if f.name not in needed)
    spare.write_bytes(b"junk")
    TorchShardRunner(broken, 6, 8, "cpu", "float32")


@pytest.mark.parametrize("start,end", [(0, 9), (5, 5), (-1, 3), (6, 2)])
def test_range_outside_the_model(make_checkpoint, start, end):
    with pytest.raises(CheckpointError, match=r"outside this model, which has layers 0 to 7"):
        TorchShardRunner(make_checkpoint("llama"), start, end, "cpu", "float32")


def test_dtype_the_device_cannot_run():
    with pytest.raises(CheckpointError, match="cannot run float8_e4m3fn on cpu.*bfloat16, float16 or float32"):
        pick_dtype("float8_e4m3fn", "bfloat16", torch.device("cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_asked_for_without_a_gpu():
    with pytest.raises(CheckpointError, match="sees no CUDA GPU.*--device cpu"):
        pick_device("cuda")


def test_auto_device_and_dtype_on_cpu():
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert pick_device("auto").type == "cpu"
    assert pick_dtype("auto", "float16", torch.device("cpu")) == torch.float32  # no fast fp16 on CPUs
    assert pick_dtype("auto", "bfloat16", torch.device("cpu")) == torch.bfloat16


def test_unsupported_checkpoint_dtype():
    with pytest.raises(CheckpointError, match="Unsupported weight dtype 'int4'"):
        ModelSpec.from_config({"model_type": "llama", "dtype": "int4", "hidden_size": 8, "num_attention_heads": 2,
                                "num_hidden_layers": 2, "intermediate_size": 16, "vocab_size": 10})


def test_context_overflow(make_checkpoint):
    runner = TorchShardRunner(make_checkpoint("llama"), 0, 8, "cpu", "float32")  # context 512
    with pytest.raises(CheckpointError, match="longer than this model's context of 512"):
        runner.prefill(["long"], torch.zeros(1, 600, dtype=torch.long))


def test_generate_cli_reports_errors_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "app.cli", "generate", "--model", str(tmp_path), "--prompt", "hi"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "No config.json in" in proc.stderr and "Traceback" not in proc.stderr
