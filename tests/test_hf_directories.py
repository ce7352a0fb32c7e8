"""Soups that load where their ingredients load: Hugging Face directories with config, tokenizer and model card.

Tiny Llama and BERT models (a few thousand parameters) and their tokenizers are built here; the soup directory must
load with AutoModel…/AutoTokenizer, compute what a hand-averaged model computes, carry the non-weight files byte
for byte, and describe itself in a model card with Hugging Face front matter.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import ladle

transformers = pytest.importorskip("transformers")
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402  (after the skip)
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,  # noqa: E402
                          BertConfig, BertForSequenceClassification, BertTokenizerFast, LlamaConfig,
                          LlamaForCausalLM, PreTrainedTokenizerFast)

WORDS = "the a soup of models is tasty good warm cold bowl spoon".split()
LLAMA = dict(vocab_size=len(WORDS) + 3, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
             num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
TEXT = "the soup of models is tasty"


def llama_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {w: i + 3 for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def save_llama(path: Path, seed: int, **config) -> Path:
    torch.manual_seed(seed)
    LlamaForCausalLM(LlamaConfig(**(LLAMA | config))).save_pretrained(path)
    llama_tokenizer().save_pretrained(path)
    return path


def save_bert(path: Path, seed: int, tmp: Path) -> Path:
    vocab = tmp / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(WORDS) + 5, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=24, max_position_embeddings=32, num_labels=3)
    BertForSequenceClassification(config).save_pretrained(path)
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(path)
    return path


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    head, _, _ = card[4:].partition("\n---\n")
    return yaml.safe_load(head)


def hand_averaged(model_cls, dirs: list[Path], weights: list[float]):
    """A model whose weights are averaged by hand: float32 sums of the loaded ingredients' parameters."""
    models = [model_cls.from_pretrained(d) for d in dirs]
    states = [m.state_dict() for m in models]
    mixed = {k: sum(w * s[k] for s, w in zip(states, weights)) if s0.is_floating_point() else s0
             for k, s0 in states[0].items() for s in [states[0]]}
    models[0].load_state_dict(mixed)
    return models[0].eval()


@pytest.fixture
def llamas(tmp_path):
    return [save_llama(tmp_path / f"llama-{i}", seed=i) for i in range(2)]


def test_llama_soup_directory_loads_and_equals_the_hand_average(llamas, tmp_path, cli):
    out = tmp_path / "soup"
    result = cli("cook", "uniform", *llamas, "-o", out)
    assert result.code == 0, result.err
    first = llamas[0]
    carried = sorted(p.name for p in first.iterdir() if p.name != "model.safetensors")
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= set(carried)
    assert sorted(p.name for p in out.iterdir()) == sorted([*carried, "model.safetensors", "ladle.json", "README.md"])
    for name in carried:
        assert (out / name).read_bytes() == (first / name).read_bytes(), name

    soup = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]
    assert ids.shape[1] == 6 and (ids != tokenizer.unk_token_id).all()
    by_hand = hand_averaged(LlamaForCausalLM, llamas, [0.5, 0.5])
    with torch.no_grad():
        # two ingredients at ½: ladle's fused a·½ + b·½ and (a + b)/2 round the same, so the logits are equal
        assert torch.equal(soup(ids).logits, by_hand(ids).logits)

    manifest = ladle.read_manifest(out)
    assert manifest["carried_files"] == {"from": str(first), "files": carried}
    assert manifest["config_differences"] == []
    assert f"carried {', '.join(carried)} from {first}" in result.err
    card = (out / "README.md").read_text()
    meta = front_matter(card)
    assert meta == {"tags": ["model-soup", "ladle", "uniform"], "library_name": "transformers"}
    for ing in manifest["ingredients"]:
        assert ing["sha256"] in card
    assert shlex.join(["ladle", "cook", "uniform", *map(str, llamas), "-o", str(out)]) in card


def test_sharded_soup_with_a_base_carries_the_same_and_names_its_base_model(llamas, tmp_path, cli):
    base = save_llama(tmp_path / "stock", seed=7)
    out = tmp_path / "sharded"
    result = cli("cook", "task-arithmetic", *llamas, "--base", base, "--lambda", "0.5", "--max-shard-size", "4KB",
                 "-o", out)
    assert result.code == 0, result.err
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((out / s).is_file() for s in shards)
    assert (out / "tokenizer.json").read_bytes() == (llamas[0] / "tokenizer.json").read_bytes()
    soup = AutoModelForCausalLM.from_pretrained(out).eval()
    expected = ladle.cook("task-arithmetic", list(llamas), base=base, lambda_=0.5).state_dict
    for k, v in soup.state_dict().items():
        assert torch.equal(v, expected[k]), k
    card = (out / "README.md").read_text()
    meta = front_matter(card)
    assert meta["base_model"] == str(base) and meta["tags"] == ["model-soup", "ladle", "task-arithmetic"]
    assert "--lambda 0.5" in card and f"--base {base}" in card and "--max-shard-size 4KB" in card
    assert "| base |" in card


def test_bert_classifier_soup_loads_with_its_tokenizer(tmp_path, cli):
    berts = [save_bert(tmp_path / f"bert-{i}", seed=i, tmp=tmp_path) for i in range(3)]
    out = tmp_path / "bert-soup"
    result = cli("cook", "weighted", *berts, "--weights", "1,2,1", "-o", out)
    assert result.code == 0, result.err
    soup = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    carried = [p.name for p in berts[0].iterdir() if p.name != "model.safetensors"]
    assert "tokenizer_config.json" in carried
    for name in carried:
        assert (out / name).read_bytes() == (berts[0] / name).read_bytes(), name
    batch = tokenizer([TEXT, "a warm bowl"], padding=True, return_tensors="pt")
    by_hand = hand_averaged(BertForSequenceClassification, berts, [0.25, 0.5, 0.25])
    with torch.no_grad():
        got, expected = soup(**batch).logits, by_hand(**batch).logits
    assert got.shape == (2, 3)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)  # float32 sums in another order
    assert front_matter((out / "README.md").read_text())["library_name"] == "transformers"


def test_configs_that_disagree_on_the_weights_shapes_are_refused(llamas, tmp_path, cli):
    # 4 heads instead of 2: every tensor has the same shape, but the heads split the weights differently
    other = save_llama(tmp_path / "llama-4heads", seed=3, num_attention_heads=4, num_key_value_heads=4)
    out = tmp_path / "refused"
    result = cli("cook", "uniform", llamas[0], other, "-o", out)
    assert result.code == 2 and not out.exists()
    lines = result.err.strip().splitlines()
    assert len(lines) == 1
    assert str(other / "config.json") in lines[0] and str(llamas[0] / "config.json") in lines[0]
    # the first differing field, alphabetically: head_dim (16/4 = 4 here, 8 there) before num_attention_heads
    assert "field 'head_dim' is 4 here but 8 in" in lines[0] and "--config-from" in lines[0]
    # --config-from says which config the soup carries; the difference is recorded
    result = cli("cook", "uniform", llamas[0], other, "--config-from", other, "-o", out)
    assert result.code == 0, result.err
    assert (out / "config.json").read_bytes() == (other / "config.json").read_bytes()
    manifest = ladle.read_manifest(out)
    assert manifest["carried_files"]["from"] == str(other)
    fields = {d["field"]: d for d in manifest["config_differences"]}
    assert fields["num_attention_heads"]["value"] == 2 and fields["num_attention_heads"]["carried"] == 4
    assert fields["num_attention_heads"]["shapes_weights"] is True


def test_differences_that_do_not_shape_the_weights_are_allowed_and_noted(llamas, tmp_path, cli):
    config = json.loads((llamas[1] / "config.json").read_text())
    config["_name_or_path"], config["rope_theta"] = "somewhere/else", 5000.0
    (llamas[1] / "config.json").write_text(json.dumps(config))
    out = tmp_path / "noted"
    result = cli("cook", "uniform", *llamas, "-o", out)
    assert result.code == 0, result.err
    fields = {d["field"] for d in ladle.read_manifest(out)["config_differences"]}
    assert {"_name_or_path", "rope_theta"} <= fields
    assert "configs differ in" in result.err
    assert (out / "config.json").read_bytes() == (llamas[0] / "config.json").read_bytes()


def test_config_from_needs_a_directory_output_and_a_directory(llamas, tmp_path, cli):
    result = cli("cook", "uniform", *llamas, "--config-from", llamas[0], "-o", tmp_path / "soup.safetensors")
    assert result.code == 2 and "config_from: only a directory output carries config files" in result.err
    result = cli("cook", "uniform", *llamas, "--config-from", llamas[0] / "model.safetensors", "-o", tmp_path / "d")
    assert result.code == 2 and "config_from: not a directory" in result.err
    assert not (tmp_path / "d").exists() and not (tmp_path / "soup.safetensors").exists()


def test_file_ingredients_into_a_directory_get_a_card_and_nothing_else(tmp_path, cli):
    torch.manual_seed(0)
    from safetensors.torch import save_file

    paths = []
    for i in range(2):
        paths.append(tmp_path / f"{i}.safetensors")
        save_file({"w": torch.randn(3, 4)}, paths[-1])
    out = tmp_path / "dir"
    assert cli("cook", "uniform", *paths, "-o", out).code == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "ladle.json", "model.safetensors"]
    assert "library_name" not in front_matter((out / "README.md").read_text())
    assert torch.equal(load_file(str(out / "model.safetensors"))["w"],
                       ladle.cook("uniform", [str(p) for p in paths]).state_dict["w"])


def test_in_memory_ingredients_get_a_card_without_a_command(tmp_path):
    states = [{"w": torch.full((2, 2), float(i))} for i in range(2)]
    soup = ladle.cook("uniform", states, out=tmp_path / "mem")
    card = (soup.path / "README.md").read_text()
    assert "Cooked from in-memory state dicts through the Python API" in card and "```bash" not in card
    assert front_matter(card)["tags"] == ["model-soup", "ladle", "uniform"]
