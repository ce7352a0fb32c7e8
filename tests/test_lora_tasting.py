"""Evaluation-driven recipes on LoRA adapters: the model is the base with each candidate's update. Every score is
checked against PEFT's own model (PeftModel.from_pretrained) evaluated by hand on the same examples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ladle
from ladle.evaluation.tasting import make_scorer
from lora_fixtures import randomise, write_adapter
from text_fixtures import write_bert, write_reviews_csv


@pytest.fixture(scope="module")
def text_kitchen(tmp_path_factory):
    """A tiny BERT classifier as the base and four sequence-classification adapters (their heads saved whole)."""
    root = tmp_path_factory.mktemp("lora-text")
    base = write_bert(root / "base")
    adapters = [write_adapter(base, root / f"ad{i}", seed=10 + i, kind="bert", scale=0.6,
                              target_modules=["query", "value"], task_type="SEQ_CLS") for i in range(4)]
    return base, adapters, write_reviews_csv(root / "reviews.csv", 80)


def peft_accuracy(base, adapter, texts, labels) -> float:
    """PEFT's model of `adapter` over `base`, one text at a time, with transformers' tokenizer."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base), adapter).eval()
    tokenizer = AutoTokenizer.from_pretrained(base)
    with torch.inference_mode():
        out = torch.cat([model(**tokenizer(t, return_tensors="pt")).logits for t in texts])
    return (out.argmax(1) == labels).double().mean().item()


def test_greedy_over_text_adapters_tastes_the_base_with_each_update(text_kitchen, tmp_path):
    base, adapters, csv = text_kitchen
    scorer = make_scorer(str(base), [f"{csv}:heldout"], workers=0, split="heldout")
    soup = ladle.cook("greedy", [str(a) for a in adapters], base=str(base), out=tmp_path / "greedy", scorer=scorer)
    data = scorer.evaluator.splits[scorer.split]
    texts, labels = data.examples.texts, data.y
    steps = soup.manifest["trace"]["greedy"]["steps"]
    by_name = {str(a): peft_accuracy(base, a, texts, labels) for a in adapters}
    for step in steps:
        assert step["ingredient_score"] == pytest.approx(by_name[step["candidate"]], abs=1e-12)
    assert len({round(v, 6) for v in by_name.values()}) > 1  # the adapters differ: the ranking means something
    # the soup adapter loads with PEFT and scores what greedy said its last kept soup scored
    kept = [s for s in steps if s["accepted"]]
    assert peft_accuracy(base, tmp_path / "greedy", texts, labels) == pytest.approx(kept[-1]["soup_score"], abs=1e-12)


def test_learned_weights_over_adapters_are_a_distribution_and_reload(text_kitchen, tmp_path):
    base, adapters, csv = text_kitchen
    scorer = make_scorer(str(base), [f"{csv}:heldout"], workers=0, split="heldout")
    soup = ladle.cook("learned", [str(a) for a in adapters[:2]], base=str(base), out=tmp_path / "learned",
                      scorer=scorer, epochs=2, batch_size=16)
    weights = soup.manifest["weights"]
    assert sum(weights) == pytest.approx(1.0) and all(w > 0 for w in weights)
    losses = soup.manifest["trace"]["learned"]["loss_per_epoch"]
    assert len(losses) == 2 and all(np.isfinite(losses))
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base), tmp_path / "learned")


def test_greedy_over_timm_adapters_on_images(tmp_path):
    """A timm ResNet-18 base file, adapters on its convolutions with the classifier saved whole, digits at 32 px."""
    import timm
    from peft import LoraConfig, PeftModel, get_peft_model
    from safetensors.torch import save_file

    torch.manual_seed(0)
    stock = timm.create_model("resnet18", num_classes=10)
    save_file({k: v.contiguous() for k, v in stock.state_dict().items()}, str(tmp_path / "base.safetensors"))
    adapters = []
    for i in range(2):
        model = timm.create_model("resnet18", num_classes=10)
        model.load_state_dict(stock.state_dict())
        peft = randomise(get_peft_model(model, LoraConfig(r=2, lora_alpha=2, target_modules=["conv1", "conv2"],
                                                           modules_to_save=["fc"])), i, 0.05)
        peft.save_pretrained(tmp_path / f"ad{i}")
        adapters.append(tmp_path / f"ad{i}")
    scorer = make_scorer("timm:resnet18", ["digits"], num_classes=10, image_size=32, workers=0, split="heldout")
    soup = ladle.cook("greedy", [str(a) for a in adapters], base=str(tmp_path / "base.safetensors"),
                      out=tmp_path / "soup", scorer=scorer)
    data = scorer.evaluator.indexable(scorer.split)
    x, y = scorer.evaluator.normalise(data.x), data.y
    for step in soup.manifest["trace"]["greedy"]["steps"]:
        model = timm.create_model("resnet18", num_classes=10)
        model.load_state_dict(stock.state_dict())
        peft = PeftModel.from_pretrained(model, step["candidate"]).eval()
        with torch.inference_mode():
            accuracy = (peft(x).argmax(1) == y).double().mean().item()
        assert step["ingredient_score"] == pytest.approx(accuracy, abs=1e-12)


def test_taste_of_adapters_and_their_soup_on_the_base(text_kitchen, tmp_path):
    from ladle.studies.taste import taste_specs

    base, adapters, csv = text_kitchen
    ladle.cook("uniform", [str(a) for a in adapters[:3]], out=tmp_path / "uniform")
    report = taste_specs([str(a) for a in adapters[:3]] + [str(tmp_path / "uniform")], base=str(base),
                         data=[f"{csv}:test"], workers=0).to_dict()
    scorer = make_scorer(str(base), [f"{csv}:test"], workers=0, split="test")
    data = scorer.evaluator.splits[scorer.split]
    rows = {r["name"]: r for r in report["rows"]}
    split = next(iter(report["rows"][0]["metrics"]))
    for a in adapters[:3]:
        assert rows[str(a)]["metrics"][split]["accuracy"] == pytest.approx(
            peft_accuracy(base, a, data.examples.texts, data.y), abs=1e-12)
    soup_accuracy = peft_accuracy(base, tmp_path / "uniform", data.examples.texts, data.y)
    assert rows[str(tmp_path / "uniform")]["metrics"][split]["accuracy"] == pytest.approx(soup_accuracy, abs=1e-12)
    assert rows["uniform soup"]["metrics"][split]["accuracy"] == pytest.approx(soup_accuracy, abs=1e-12)


def test_adapters_of_a_hugging_face_vision_model_whose_file_names_differ_from_its_modules(tmp_path):
    """transformers 5 writes ViT's tensors under old names (encoder.layer.0.attention.attention.query) while its
    modules, and so PEFT's adapters, use new ones (layers.0.attention.q_proj): tasting, greedy and --merge-into
    go through the renaming both ways."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from safetensors import safe_open
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    vit = ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2,
                                              num_attention_heads=2, intermediate_size=32, num_labels=10))
    vit.save_pretrained(tmp_path / "vit")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "vit")
    with safe_open(tmp_path / "vit" / "model.safetensors", "pt") as f:
        on_disk = set(f.keys())
    assert not on_disk & {k for k in vit.state_dict() if "q_proj" in k}  # the names differ (else this tests nothing)
    adapters = []
    for i in range(2):
        peft = randomise(get_peft_model(ViTForImageClassification.from_pretrained(tmp_path / "vit"),
                                        LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj", "v_proj"],
                                                   modules_to_save=["classifier"])), i, 0.5)
        peft.save_pretrained(tmp_path / f"ad{i}")
        adapters.append(tmp_path / f"ad{i}")
    scorer = make_scorer(str(tmp_path / "vit"), ["digits"], workers=0, split="heldout")
    soup = ladle.cook("greedy", [str(a) for a in adapters], base=str(tmp_path / "vit"), out=tmp_path / "greedy",
                      scorer=scorer)
    data = scorer.evaluator.indexable(scorer.split)
    x, y = scorer.evaluator.normalise(data.x), data.y
    for step in soup.manifest["trace"]["greedy"]["steps"]:
        peft = PeftModel.from_pretrained(ViTForImageClassification.from_pretrained(tmp_path / "vit"), step["candidate"])
        with torch.inference_mode():
            accuracy = (peft.eval()(pixel_values=x).logits.argmax(1) == y).double().mean().item()
        assert step["ingredient_score"] == pytest.approx(accuracy, abs=1e-12)
    ladle.cook("uniform", [str(a) for a in adapters], merge_into=str(tmp_path / "vit"), out=tmp_path / "merged")
    with safe_open(tmp_path / "merged" / "model.safetensors", "pt") as f:
        assert set(f.keys()) == on_disk  # written under the file's own names
    merged = ViTForImageClassification.from_pretrained(tmp_path / "merged").eval()
    ladle.cook("uniform", [str(a) for a in adapters], out=tmp_path / "exact")
    exact = PeftModel.from_pretrained(ViTForImageClassification.from_pretrained(tmp_path / "vit"), tmp_path / "exact")
    with torch.inference_mode():
        torch.testing.assert_close(merged(pixel_values=x[:8]).logits, exact.eval()(pixel_values=x[:8]).logits,
                                   rtol=1e-4, atol=1e-5)


def test_grid_over_adapters_soups_their_updates_on_the_base(text_kitchen, tmp_path):
    from ladle.results.store import ResultStore
    from ladle.studies.grid import GridSettings, run_grid

    base, adapters, csv = text_kitchen
    pair = [str(a) for a in adapters[:2]]
    settings = GridSettings(model=str(base), data=f"{csv}:test", workers=0)
    result = run_grid(pair, settings, db=tmp_path / "grid.sqlite", base=str(base), executor="local:1")
    scorer = make_scorer(str(base), [f"{csv}:test"], workers=0, split="test")
    data = scorer.evaluator.splits[scorer.split]
    with ResultStore(tmp_path / "grid.sqlite") as store:
        models = {r["path"]: r for r in store.grid_models(result.grid)}
        (soup,) = store.grid_soups(result.grid)
        measures = store.grid_measures(result.grid)
    for a in pair:
        assert models[a]["accuracy"] == pytest.approx(100 * peft_accuracy(base, a, data.examples.texts, data.y), abs=1e-9)
    ladle.cook("uniform", pair, out=tmp_path / "pair")  # the exact adapter of the α = 0.5 soup
    assert soup["accuracy"] == pytest.approx(100 * peft_accuracy(base, tmp_path / "pair", data.examples.texts, data.y),
                                             abs=1e-9)
    assert "task_cosine" in measures[0]["measures"]  # the base is the stock: task vectors are the updates


def test_season_over_adapters_chooses_the_weights_whose_soup_scores_best_on_the_shots(text_kitchen, tmp_path):
    base, adapters, csv = text_kitchen
    pair = [str(a) for a in adapters[:2]]
    scorer = make_scorer(str(base), [f"{csv}:test"], workers=0, split="test")
    soup = ladle.cook("season", pair, base=str(base), out=tmp_path / "seasoned", scorer=scorer, shots=12, grid=4)
    chosen = soup.manifest["trace"]["season"]["chosen"]
    assert soup.manifest["weights"] == chosen["weights"] and sum(chosen["weights"]) == pytest.approx(1.0)
    shots = scorer.evaluator.splits[scorer.split]  # the shots it searched on
    assert peft_accuracy(base, tmp_path / "seasoned", shots.examples.texts, shots.y) == pytest.approx(
        chosen["accuracy"], abs=1e-12)
