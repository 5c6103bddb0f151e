"""The embedded demo model (resources/demo-model): it loads from resources, fits the size budget,
and writes real English.

"Real English" is judged against a word list that has nothing to do with the model's training
text (tests/data/english-words.txt.gz, Debian's wamerican), so a model that babbled sub-word
fragments or invented words would fail.
"""

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine.generate import LocalPipeline, generate
from engine.model.catalog import load_catalog
from engine.model.resolve import resolve_model
from engine.model.tokenizer import StreamingDetokenizer, chat_prompt_ids, load_tokenizer, stop_token_ids
from engine.sampling import SamplingParams

DATA = Path(__file__).parent / "data"
PROMPTS = ["Tell me about the package manager.", "Can you explain dictionaries?", "What should I know about files?"]
_WORD = re.compile(r"[A-Za-z]+")


@pytest.fixture(scope="module")
def demo_dir() -> Path:
    return resolve_model("potluck-demo")


@pytest.fixture(scope="module")
def english_words() -> set[str]:
    with gzip.open(DATA / "english-words.txt.gz", "rt") as f:
        return set(f.read().split())


def greedy_answers(model_dir: Path, prompts: list[str], max_tokens: int = 64) -> list[str]:
    tokenizer = load_tokenizer(model_dir)
    stops = stop_token_ids(model_dir, tokenizer)
    pipeline = LocalPipeline(model_dir, shards=2, dtype="float32")
    ids = [chat_prompt_ids(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
    params = [SamplingParams(max_tokens=max_tokens, temperature=0.0, stop_token_ids=stops) for _ in prompts]
    detoks = [StreamingDetokenizer(tokenizer) for _ in prompts]
    for row, token in generate(pipeline, ids, params):
        detoks[row].add(token)
    return [d.text for d in detoks]


def test_demo_model_is_in_the_catalog_small_and_a_genuine_checkpoint(demo_dir):
    entry = load_catalog().find("potluck-demo")
    assert entry.is_built and entry.local_dir == demo_dir
    size = sum(f.stat().st_size for f in demo_dir.iterdir() if f.is_file())
    assert size <= 30 * 2**20, f"the demo model is {size / 2**20:.1f} MB; the budget is 30 MB"
    config = json.loads((demo_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] >= 4
    tokenizer = load_tokenizer(demo_dir)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    for name in ("README.md", "training.json", "tokenizer.json", "model.safetensors"):
        assert (demo_dir / name).is_file(), name


def test_greedy_answers_are_made_of_real_english_words(demo_dir, english_words):
    answers = greedy_answers(demo_dir, PROMPTS)
    for prompt, answer in zip(PROMPTS, answers):
        words = [w.lower() for w in _WORD.findall(answer)]
        known = [w for w in words if w in english_words]
        assert len(words) >= 20, (prompt, answer)
        assert len(known) / len(words) >= 0.8, (prompt, answer, sorted(set(words) - english_words))
        assert len(set(words)) >= 8, ("the answer repeats one phrase", prompt, answer)
        assert re.search(r"[A-Z][^.!?]{10,}[.!?]", answer), ("no sentence in the answer", prompt, answer)


def test_generate_resolves_the_demo_model_by_catalog_name():
    proc = subprocess.run([sys.executable, "-m", "app.cli", "generate", "--model", "potluck-demo", "--prompt",
                           PROMPTS[0], "--max-tokens", "12", "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["tokens"] >= 1 and out["text"].strip()
