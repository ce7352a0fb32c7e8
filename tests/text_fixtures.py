"""Tiny text models, tokenizers and data sets built in the tests (nothing downloaded): a BERT classifier and a Llama
causal LM of a few thousand parameters over one small word-piece vocabulary, and review-like texts."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import torch

POSITIVE = ["good", "great", "fine", "superb", "lovely", "fun"]
NEGATIVE = ["bad", "awful", "poor", "dull", "boring", "weak"]
FILLER = ["the", "movie", "was", "a", "plot", "and", "actors", "very", "film", "story", "it", "this", "quite", "not"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = SPECIAL + sorted(set(POSITIVE + NEGATIVE + FILLER)) + list("abcdefghijklmnopqrstuvwxyz") + \
    ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"] + [".", ",", "!", "?"]


def write_tokenizer(folder: Path, vocab: list[str] = VOCAB) -> Path:
    """A BERT word-piece tokenizer over `vocab`, saved as an HF tokenizer folder."""
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # (transformers 5 ignores vocab_file= here: the vocabulary goes in as a mapping)
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, model_max_length=64)
    tokenizer.save_pretrained(folder)
    return folder


def write_bert(folder: Path, num_labels: int = 2, seed: int = 0, vocab: list[str] = VOCAB,
               id2label: dict | None = None) -> Path:
    """A tiny BertForSequenceClassification (2 layers, hidden 16) with its tokenizer."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, num_labels=num_labels,
                        initializer_range=0.5,  # outputs that depend on the words, not only on the length
                        **({"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}} if id2label else {}))
    model = BertForSequenceClassification(config)
    model.save_pretrained(folder)
    write_tokenizer(folder, vocab)
    return folder


def write_llama(folder: Path, seed: int = 0, vocab: list[str] = VOCAB) -> Path:
    """A tiny LlamaForCausalLM (2 layers, hidden 16) reading the same word-piece tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=0, bos_token_id=2, eos_token_id=3, tie_word_embeddings=False,
                         initializer_range=0.5)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    write_tokenizer(folder, vocab)
    return folder


def reviews(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """(text, label) pairs: positive words make a 'pos' review, negative ones a 'neg' one; lengths vary 3-20 words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 19))]
        words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if label == "pos" else NEGATIVE))
        rows.append((" ".join(words), label))
    return rows


def write_reviews_csv(path: Path, n: int = 60, seed: int = 0, label_ints: bool = False) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for text, label in reviews(n, seed):
            writer.writerow([text, int(label == "pos") if label_ints else label])
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def mean_confidence(model, batch) -> torch.Tensor:
    """A label-free `--metric`: each example's top-1 probability (text batches go in by name)."""
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    return model(**inputs).logits.softmax(-1).max(-1).values
