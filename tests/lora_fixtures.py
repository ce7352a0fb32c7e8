"""LoRA adapters made by PEFT itself in the tests (nothing downloaded): tiny Llama, GPT-2 and BERT bases from
text_fixtures, adapters with random (non-zero) factors, saved with `save_pretrained`."""

from __future__ import annotations

from pathlib import Path

import torch

from text_fixtures import write_bert, write_llama

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def write_adapter(base_dir: Path, folder: Path, seed: int, *, kind: str = "llama", scale: float = 0.3,
                  **lora) -> Path:
    """A PEFT LoRA adapter of the model in `base_dir`, its factors drawn from `seed` (B non-zero, unlike PEFT's
    initialisation), saved by PEFT with base_model_name_or_path = base_dir."""
    from peft import LoraConfig, get_peft_model

    model = load_base(base_dir, kind)
    options = {"r": 4, "lora_alpha": 8, "target_modules": LLAMA_TARGETS} | lora
    peft_model = randomise(get_peft_model(model, LoraConfig(**options)), seed, scale)
    peft_model.peft_config["default"].base_model_name_or_path = str(base_dir)
    peft_model.save_pretrained(folder)
    return folder


def randomise(peft_model, seed: int, scale: float):
    """Draw every LoRA factor and saved-whole tensor from `seed` (PEFT starts B at zero: an adapter that does
    nothing would test nothing)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * scale)
    return peft_model


def load_base(base_dir: Path, kind: str = "llama"):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    loader = AutoModelForSequenceClassification if kind == "bert" else AutoModelForCausalLM
    return loader.from_pretrained(base_dir).eval()


def peft_model(base_dir: Path, adapter: Path, kind: str = "llama"):
    from peft import PeftModel

    return PeftModel.from_pretrained(load_base(base_dir, kind), adapter).eval()


def llama_base(folder: Path, seed: int = 0) -> Path:
    return write_llama(folder, seed=seed)


def bert_base(folder: Path, seed: int = 0) -> Path:
    return write_bert(folder, seed=seed)


def write_gpt2(folder: Path, seed: int = 0) -> Path:
    """A tiny GPT2LMHeadModel: its attention and MLP weights are Conv1D (stored fan_in × fan_out)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=60, n_embd=16, n_layer=2, n_head=2, n_positions=32,
                                       bos_token_id=0, eos_token_id=0))
    model.save_pretrained(folder)
    return folder


def tokens(n: int = 3, length: int = 9, vocab: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, vocab, (n, length), generator=torch.Generator().manual_seed(seed))


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits
