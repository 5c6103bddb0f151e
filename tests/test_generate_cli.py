"""`potluck generate` end to end, as a user runs it."""

import json
import subprocess
import sys


def potluck(*args):
    proc = subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_streamed_text_matches_json_and_shards_do_not_change_the_answer(make_checkpoint):
    model = str(make_checkpoint("qwen3"))
    common = ["generate", "--model", model, "--prompt", "Tell me a story", "--max-tokens", "24", "--dtype", "float32"]
    one = json.loads(potluck(*common, "--json"))
    three = json.loads(potluck(*common, "--shards", "3", "--json"))
    streamed = potluck(*common, "--shards", "2")
    assert one["tokens"] == 24 and len(one["token_ids"]) == 24
    assert three["token_ids"] == one["token_ids"]
    assert streamed == one["text"] + "\n"
    assert one["ttft_s"] > 0 and one["tokens_per_s"] > 0


def test_seeded_sampling_from_the_command_line(make_checkpoint):
    model = str(make_checkpoint("qwen3"))
    args = ["generate", "--model", model, "--prompt", "hi", "--max-tokens", "16", "--temperature", "1.0",
            "--top-p", "0.8", "--json"]
    a = json.loads(potluck(*args, "--seed", "7"))
    b = json.loads(potluck(*args, "--seed", "7"))
    c = json.loads(potluck(*args, "--seed", "8"))
    assert a["token_ids"] == b["token_ids"] != c["token_ids"]
