"""The model catalog (resources/catalog.toml) and how `--model` names are resolved."""

from __future__ import annotations

import json

import pytest

from engine.model import resolve
from engine.model.catalog import CATALOG_FILE, count_params, load_catalog
from engine.model.errors import CheckpointError
from engine.model.resolve import resolve_model

# Parameter counts as the model cards / hub metadata state them (rounded on the Qwen cards).
PUBLISHED_PARAMS = {
    "qwen3-0.6b": 0.6e9,
    "qwen3-8b": 8.2e9,
    "qwen3-32b": 32.8e9,
    "qwen3-30b-a3b": 30.5e9,
    "llama-3.1-8b": 8_030_261_248,
    "llama-3.1-70b": 70_553_706_496,
}


def test_the_catalog_offers_the_models_of_the_issue():
    catalog = load_catalog()
    assert set(PUBLISHED_PARAMS) | {"potluck-demo"} <= set(catalog.names)
    assert catalog.find("qwen3-30b-a3b").hf_id == "Qwen/Qwen3-30B-A3B"
    assert catalog.find("Llama-3.1-70B").hf_id == "meta-llama/Llama-3.1-70B-Instruct"  # names ignore case
    assert catalog.find("llama-3.1-70b").gated


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_sizes_follow_from_the_config_numbers(name):
    entry = load_catalog().find(name)
    spec = entry.spec
    assert entry.params == count_params(spec), "params in catalog.toml disagrees with its [model.config]"
    assert count_params(spec) == pytest.approx(PUBLISHED_PARAMS[name], rel=0.01)
    assert spec.dtype == "bfloat16" and spec.num_layers == entry.config["num_hidden_layers"]
    kv = spec.kv_bytes_per_token_layer() * spec.num_layers * 4096 * 8
    assert entry.swarm_memory_bytes() == spec.total_bytes + kv
    summary = entry.summary()
    json.dumps(summary)
    assert summary["num_layers"] == spec.num_layers and summary["weights_bytes"] == spec.total_bytes


def test_memory_numbers_are_the_real_ones():
    catalog = load_catalog()
    llama70 = catalog.find("llama-3.1-70b").spec
    assert llama70.total_bytes == pytest.approx(141.1e9, rel=0.001)  # bf16 weights, lm_head included
    assert llama70.kv_bytes_per_token_layer() * llama70.num_layers == 327_680  # 80 layers x 8 kv heads x 128 x 2 x 2 B
    moe = catalog.find("qwen3-30b-a3b").spec
    assert (moe.num_experts, moe.num_experts_per_token, moe.intermediate_size) == (128, 8, 768)
    assert catalog.find("qwen3-0.6b").spec.tie_word_embeddings


def test_the_demo_model_entry():
    demo = load_catalog().find("potluck-demo")
    assert demo.hf_id is None and demo.local_dir == CATALOG_FILE.parent / "demo-model"
    if demo.is_built:
        assert resolve_model("potluck-demo") == demo.local_dir
        assert demo.spec is not None
    else:
        assert demo.spec is None and demo.summary()["available"] is False
        with pytest.raises(CheckpointError, match="potluck-demo model is not built in this installation"):
            resolve_model("potluck-demo")


def test_catalog_names_resolve_to_their_hub_id(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(resolve, "download_shard",
                        lambda repo_id, layers, **kw: calls.append((repo_id, layers, kw)) or tmp_path)
    assert resolve_model("Qwen3-8B", (4, 8)) == tmp_path
    assert resolve_model("meta-llama/Llama-3.1-8B-Instruct@refs/pr/1") == tmp_path
    assert calls[0][:2] == ("Qwen/Qwen3-8B", (4, 8)) and calls[0][2]["revision"] == "main"
    assert calls[1][:2] == ("meta-llama/Llama-3.1-8B-Instruct", None) and calls[1][2]["revision"] == "refs/pr/1"
    assert resolve_model(tmp_path) == tmp_path  # a directory is used as is, before any lookup
    assert len(calls) == 2


@pytest.mark.parametrize("text,error", [
    ('[[model]]\nname = "a"\ntitle = "A"\ndescription = "d"\nlicense = "x"\nhf_id = "o/a"\n',
     "lacks the \\[model.config\\] numbers"),
    ('[[model]]\nname = "a"\ntitle = "A"\ndescription = "d"\nlicense = "x"\nlocal_dir = "x"\ncolour = 1\n',
     "unknown fields: colour"),
    ('[[model]]\nname = "a"\ntitle = "A"\ndescription = "d"\nlicense = "x"\nlocal_dir = "x"\n' * 2, "names a twice"),
    ('[[model]]\nname = "a"\ntitle = "A"\ndescription = "d"\nlicense = "x"\nhf_id = "o/a"\n'
     '[model.config]\nmodel_type = "llama"\nnum_hidden_layers = 0\n', "hidden_size|num_hidden_layers"),
    ("[[model]\n", "cannot be read"),
])
def test_a_broken_catalog_is_reported(tmp_path, text, error):
    path = tmp_path / "catalog.toml"
    path.write_text(text)
    with pytest.raises(CheckpointError, match=error):
        load_catalog(path)
