"""Contract tests, one per registry, run over every entry (as timm's test_models.py runs over every model): a new
recipe, data format, model kind, corruption, objective, optimiser, schedule or executor is tested by being
registered. Plus the one
wording for unknown names, per registry."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import ladle
from ladle.cli.main import main
from ladle.data import FORMATS
from ladle.errors import LadleError
from ladle.execution import EXECUTORS, make_executor
from ladle.io.dtypes import numpy_dtype
from ladle.models import MODEL_KINDS, small_resnet, tiny_cnn
from ladle.shifts import laion_c
from ladle.shifts.corruptions import SUITES, corrupt_images, parse_severities, parse_suite
from ladle.soup.recipes import BASE_NONE, BASE_REQUIRED, RECIPES, Plan
from ladle.soup.schema import Checkpoint, Size
from ladle.training.loop import BN_POLICIES, OPTIMISERS, SCHEDULES, optimiser, schedule, train
from ladle.training.objectives import OBJECTIVES, Batch, make_objective, objective_class

# ---------------------------------------------------------------- recipes

# a value for every required recipe parameter, for n ingredients: a new required parameter must be added here
REQUIRED_VALUES = {"weights": lambda n: [1.0] * n, "alpha": lambda n: 0.5}
# tasting recipes: settings that keep them to a second or two
QUICK = {"learned": {"epochs": 1}, "self-season": {"epochs": 1}, "adamerging": {"epochs": 1},
         "season": {"shots": 10, "grid": 2, "samples": 4}, "fisher": {"examples": 8}, "regmean": {"examples": 16}}
PARAM_TYPES = (int, float, str, bool, list[float], list[str], Checkpoint, Size)
SIZE = 8  # tasting recipes: digits at 8 px through ladle.models:tiny_cnn


def params_for(name: str, n: int) -> dict:
    recipe = RECIPES[name]
    missing = [p.name for p in recipe.parameters if p.required and p.name not in REQUIRED_VALUES]
    assert not missing, f"recipe '{name}': add a value for required parameter(s) {missing} to REQUIRED_VALUES"
    return {p.name: REQUIRED_VALUES[p.name](n) for p in recipe.parameters if p.required} | QUICK.get(name, {})


def tiny_arrays(n: int, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((3, 4)).astype(np.float32) for _ in range(n)], \
        rng.standard_normal((3, 4)).astype(np.float32)


def mixed(plan, xs: list[np.ndarray], base: np.ndarray | None) -> np.ndarray:
    """What cook does for one key: the plan reads the tensors it asks for."""
    return plan.mix("w", lambda indices: (xs[i] for i in indices), base, numpy_dtype(torch.float32))


@pytest.fixture
def scorer():
    """A fresh one per recipe: tasting may narrow it (season keeps only its shots)."""
    from ladle.evaluation.tasting import make_scorer

    return make_scorer("ladle.models:tiny_cnn", ["digits:heldout"], image_size=SIZE, eval_batch_size=100)


@pytest.fixture(scope="module")
def cnn_states():
    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        states.append({k: v.clone() for k, v in tiny_cnn(10).state_dict().items()})
    return states


@pytest.fixture(scope="module")
def recipes_listing() -> tuple[str, list[dict]]:
    text, listed = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(text):
        assert main(["recipes"]) == 0
    with contextlib.redirect_stdout(listed):
        assert main(["recipes", "--json"]) == 0
    return text.getvalue(), json.loads(listed.getvalue())


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_declares_typed_documented_parameters(name):
    recipe = RECIPES[name]
    assert recipe.name == name and recipe.summary and recipe.reference
    assert recipe.base in (BASE_NONE, BASE_REQUIRED, "optional")
    for p in recipe.parameters:
        assert p.help.strip(), f"{name}: parameter '{p.name}' has no help"
        assert p.type in PARAM_TYPES or isinstance(p.type, tuple), f"{name}: parameter '{p.name}' type {p.type}"
        if not p.required:
            p.check(p.default, "")  # the default passes its own validation


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_is_listed_by_ladle_recipes(name, recipes_listing):
    text, listed = recipes_listing
    assert any(line.startswith(f"{name}: ") for line in text.splitlines())
    entry = next(e for e in listed if e["name"] == name)
    assert [p["name"] for p in entry["parameters"]] == [p.field for p in RECIPES[name].parameters]


@pytest.mark.parametrize("name", [n for n in RECIPES if not RECIPES[n].needs_scorer])
def test_recipe_plan_mixes_two_tiny_tensors(name):
    recipe = RECIPES[name]
    xs, base = tiny_arrays(2)
    plan = recipe.make_plan(2, **params_for(name, 2))
    out = mixed(plan, xs, base if recipe.base != BASE_NONE else None)
    assert out.shape == (3, 4) and np.isfinite(out).all()
    if isinstance(plan, Plan) and plan.base_weight == 0.0 and recipe.base != BASE_REQUIRED:
        # an average: one ingredient at weight 1 is itself, bit for bit
        one = recipe.make_plan(1, **params_for(name, 1))
        assert one.weights == [1.0]
        assert np.array_equal(mixed(one, xs[:1], None), xs[0])


@pytest.mark.parametrize("name", [n for n in RECIPES if RECIPES[n].needs_scorer])
def test_tasting_recipe_cooks_two_tiny_models(name, scorer, cnn_states):
    stock = {"base": {k: v * 0.5 if v.is_floating_point() else v for k, v in cnn_states[0].items()}} \
        if RECIPES[name].base == BASE_REQUIRED else {}
    soup = ladle.cook(name, cnn_states, scorer=scorer, **stock, **params_for(name, 2))
    for key, value in cnn_states[0].items():
        assert soup.state_dict[key].shape == value.shape
        if value.is_floating_point():
            assert torch.isfinite(soup.state_dict[key]).all(), key
    if stock:  # task vectors: base + Σ λᵢ τᵢ, not an average; an ingredient equal to the base gives the base back
        same = ladle.cook(name, [stock["base"]] * 2, scorer=scorer, **stock, **params_for(name, 2)).state_dict
        assert all(torch.allclose(same[k].float(), v.float()) for k, v in stock["base"].items())
        return
    assert math.isclose(sum(soup.manifest["weights"]), 1.0, rel_tol=1e-6)
    # an average: one ingredient alone comes back bit for bit
    alone = ladle.cook(name, cnn_states[:1], scorer=scorer, **params_for(name, 1)).state_dict
    assert all(torch.equal(alone[k], v) for k, v in cnn_states[0].items())


# ---------------------------------------------------------------- corruption suites

CELLS = [(suite, name) for suite in SUITES for name in SUITES[suite]]


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Two 32 px uint8 images (the smallest side imagecorruptions takes as it is)."""
    g = torch.Generator().manual_seed(0)
    return (torch.rand(2, 3, 32, 32, generator=g) * 255).round().to(torch.uint8)


@pytest.mark.parametrize("suite, name", CELLS, ids=[f"{s}:{n}" for s, n in CELLS])
def test_corruption_keeps_shape_and_dtype_and_is_seeded(suite, name, images):
    """Every corruption of every suite: images keep their shape and dtype, texts stay texts; seeded either way."""
    from ladle.shifts.corruptions import is_text_suite
    from ladle.shifts.text_shifts import corrupt_texts

    assert parse_suite(f"{suite}:{name}").names == (name,)
    if is_text_suite(suite):
        texts = ["The quick brown fox jumps", "over the lazy dog"]
        out = corrupt_texts(texts, name, 3, seed=7)
        assert len(out) == 2 and all(isinstance(t, str) for t in out) and corrupt_texts(texts, name, 3, seed=7) == out
        return
    x = images.float() / 255
    out = corrupt_images(x, suite, name, severity=3, seed=7)
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert torch.equal(corrupt_images(x, suite, name, severity=3, seed=7), out)
    assert torch.equal(x, images.float() / 255)  # the input is left alone


@pytest.mark.parametrize("family", list(laion_c.DISTORTIONS))
def test_laion_c_distortion_is_registered_as_a_corruption(family):
    assert family in SUITES["laion-c"]


# ---------------------------------------------------------------- objectives, optimisers, schedules, BN policies

MEAN, STD = torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.5)
# objectives that do not fit ladle.models:tiny_cnn say what they need; their smallest fitting model is here
MODELS = {"mae": lambda: __import__("timm").create_model(  # a ViT
    "vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2,
    num_classes=10),
          "masked": lambda: small_resnet(10, width=8)}  # a CNN with forward_features
QUICK_KNOBS = {"mocov3": {"proj_dim": 16, "hidden_dim": 32}, "mmcr": {"proj_dim": 16, "hidden_dim": 32},
               "mae": {"decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2}, "masked": {"patch_size": 4}}


def tiny_data(n: int = 8, side: int = 16):
    from ladle.data.load import ImageSet

    g = torch.Generator().manual_seed(0)
    return ImageSet(torch.rand(n, 3, side, side, generator=g), torch.arange(n) % 10, [str(i) for i in range(10)])


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_objective_gives_a_finite_loss_on_a_tiny_batch(name):
    assert objective_class(name) is OBJECTIVES[name]
    torch.manual_seed(0)
    model = MODELS.get(name, lambda: tiny_cnn(10))()
    objective = make_objective(name, **QUICK_KNOBS.get(name, {}))
    data = tiny_data()
    objective.setup(model, data)
    batch = Batch(data.x, data.y, torch.Generator().manual_seed(0), MEAN, STD)
    loss = objective.loss(model.train(), batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", list(OPTIMISERS))
def test_optimiser_step_changes_the_parameters(name):
    torch.manual_seed(0)
    model = tiny_cnn(10)
    before = [p.detach().clone() for p in model.parameters()]
    opt = optimiser(name, lr=0.1, weight_decay=0.0)(list(model.parameters()))
    x = tiny_data().x
    model(x).square().mean().backward()
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_schedule_drives_the_learning_rate_up_to_lr(name):
    lr, steps = 0.1, 10
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = schedule(name, lr=lr)(opt, steps)
    seen = []
    for _ in range(steps):
        seen.append(opt.param_groups[0]["lr"])
        assert seen[-1] == sched.get_last_lr()[0]
        opt.step()
        sched.step()
    assert all(0.0 <= s <= lr * (1 + 1e-9) for s in seen) and max(seen) == pytest.approx(lr, rel=1e-3)


@pytest.mark.parametrize("name", list(BN_POLICIES))
def test_bn_policy_trains_a_tiny_model(name):
    torch.manual_seed(0)
    losses = train(tiny_cnn(10), make_objective("cross_entropy"), tiny_data(), bn=name, epochs=2, batch_size=8,
                   seed=0, optimiser=optimiser("adamw", lr=1e-2, weight_decay=0.0),
                   schedule=schedule("constant", lr=1e-2), mean=(0.5,) * 3, std=(0.5,) * 3)
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)


# ---------------------------------------------------------------- executors


@pytest.fixture
def executor_spec(request):
    if request.param == "ray":
        request.getfixturevalue("ray_executor")  # Ray running on loopback: `make_executor("ray")` joins it
    return request.param


@pytest.mark.parametrize("executor_spec", list(EXECUTORS), indirect=True)
def test_executor_maps_an_importable_function_in_order(executor_spec):
    with make_executor(executor_spec, workers=2) as executor:
        assert list(executor.map(parse_severities, ["5", "1-2", "3"])) == [(5,), (1, 2), (3,)]


# ---------------------------------------------------------------- the one wording for unknown names


def known(registry) -> str:
    return ", ".join(registry)


@pytest.mark.parametrize("call, says", [
    (lambda: RECIPES.get("soupreme"), f"unknown recipe 'soupreme' (known: {known(RECIPES)})"),
    (lambda: ladle.cook("soupreme", []), f"recipe: unknown recipe 'soupreme' (known: {known(RECIPES)})"),
    (lambda: parse_suite("imagenet-x"), f"corruptions: unknown suite 'imagenet-x' (known: {known(SUITES)})"),
    (lambda: laion_c.distort(torch.zeros(1, 3, 8, 8), "blur", 1, [0]),
     f"laion-c: unknown distortion 'blur' (known: {known(laion_c.DISTORTIONS)})"),
    (lambda: objective_class("simclr"),
     f"objective: unknown objective 'simclr' (known: {known(OBJECTIVES)}, or package.module:name)"),
    (lambda: objective_class("no_such_module:Thing"), "objective: cannot import 'no_such_module:Thing': "),
    (lambda: objective_class("ladle.models:tiny_cnn"), "objective: 'ladle.models:tiny_cnn' is not an Objective"),
    (lambda: optimiser("adam", lr=0.1, weight_decay=0.0),
     f"optimiser: unknown optimiser 'adam' (known: {known(OPTIMISERS)})"),
    (lambda: schedule("step", lr=0.1), f"schedule: unknown schedule 'step' (known: {known(SCHEDULES)})"),
    (lambda: BN_POLICIES.get("sync", where="bn"), f"bn: unknown BatchNorm policy 'sync' (known: {known(BN_POLICIES)})"),
    (lambda: make_executor("spark:3"), f"executor: unknown executor 'spark' (known: {known(EXECUTORS)})"),
], ids=["recipe", "cook", "suite", "distortion", "objective", "objective-import", "objective-kind", "optimiser",
        "schedule", "bn", "executor"])
def test_an_unknown_name_is_one_line_naming_the_known_ones(call, says):
    with pytest.raises(LadleError) as caught:
        call()
    assert str(caught.value).startswith(says) and "\n" not in str(caught.value)


def test_an_objective_outside_ladle_is_imported_by_package_module_name():
    assert objective_class("ladle.training.objectives.supervised:CrossEntropy") is OBJECTIVES["cross_entropy"]


# ------------------------------------------------------------------------------ data formats


def write_format(name: str, root) -> str:
    """A tiny source of 3 classes × 4 images in the named format (as users' tools write it); its path."""
    import pickle

    from PIL import Image

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(3), 4)
    if name == "npz":
        np.savez(root / "set.npz", x=images, y=labels)
        return str(root / "set.npz")
    if name in ("cifar10", "cifar100"):
        key = b"labels" if name == "cifar10" else b"fine_labels"
        batch = {b"data": images.transpose(0, 3, 1, 2).reshape(12, -1), key: labels.tolist()}
        files = {"cifar10": ("data_batch_1", "test_batch"), "cifar100": ("train", "test")}[name]
        for f in files:
            (root / f).write_bytes(pickle.dumps(batch))
        meta = ("batches.meta", b"label_names") if name == "cifar10" else ("meta", b"fine_label_names")
        (root / meta[0]).write_bytes(pickle.dumps({meta[1]: [b"a", b"b", b"c"]}))
        return str(root)
    if name == "hf-datasets":
        import datasets

        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
        ds = datasets.Dataset.from_dict({"image": [Image.fromarray(i) for i in images], "label": labels.tolist()},
                                        features=features)
        datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(root / "hf"))
        return str(root / "hf")
    if name == "imagefolder":
        for split in ("train", "test"):
            for i, (image, label) in enumerate(zip(images, labels)):
                (root / split / f"c{label}").mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(root / split / f"c{label}" / f"{i}.png")
        return str(root)
    texts = [f"{w} movie {'very ' * (i % 3)}" for i, w in enumerate(["good", "bad", "fine"] * 4)]
    if name == "text-file":
        (root / "set.csv").write_text("text,label\n" + "".join(f"{t},{['a', 'b', 'c'][y]}\n"
                                                                 for t, y in zip(texts, labels)))
        return str(root / "set.csv")
    if name == "text-folder":
        for split in ("train", "test"):
            (root / f"{split}.jsonl").write_text("".join(json.dumps({"sentence": t, "label": int(y)}) + "\n"
                                                         for t, y in zip(texts, labels)))
        return str(root)
    raise AssertionError(f"no fixture for data format '{name}': add one here")


TEXT_FORMATS = ("text-file", "text-folder")


@pytest.mark.parametrize("name", list(FORMATS))
def test_data_format_is_detected_split_lazily_and_decoded(name, tmp_path):
    """Every format: detected from its path, its test split read alone (3 classes, every label), heldout carved
    from train without decoding, and the same uint8 images through the model-size preprocessing (text: token ids
    through the model's tokenizer, padded per batch)."""
    from ladle.data import open_data
    from ladle.data.formats import detect_format
    from ladle.data.preprocess import Preprocess

    path = write_format(name, tmp_path)
    assert detect_format(Path(path)).name == name and FORMATS[name].summary
    preprocess = Preprocess(16, 16)
    if name in TEXT_FORMATS:
        from ladle.models.text import tokenization
        from text_fixtures import write_bert

        preprocess = tokenization(str(write_bert(tmp_path / "model", num_labels=3)))
    test = open_data(f"{path}:test", preprocess=preprocess)
    assert len(test) in (12, 2) and sorted(set(test.y.tolist())) <= [0, 1, 2]  # one pool: a 20 % test slice
    heldout = open_data(f"{path}:heldout", preprocess=preprocess)
    assert 1 <= len(heldout) < 12
    batch = next(iter(test.batches(4)))
    if name in TEXT_FORMATS:
        assert batch["input_ids"].shape[0] == min(4, len(test)) and batch["attention_mask"].dtype == torch.long
    else:
        assert batch.shape[1:] == (3, 16, 16) and batch.dtype in (torch.uint8, torch.float32)


# ------------------------------------------------------------------------------ model kinds


KIND_SPECS = {"efficientnet-lite0": "efficientnet-lite0", "timm": "timm:resnet18", "function": "ladle.models:tiny_cnn"}


def kind_spec(name: str, tmp_path) -> str:
    if name == "hf-text":
        from text_fixtures import write_bert

        return str(write_bert(tmp_path / "bert", num_labels=3))
    if name == "hf-directory":
        from transformers import ResNetConfig

        config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3)
        config.save_pretrained(tmp_path)
        (tmp_path / "preprocessor_config.json").write_text(
            '{"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32}, "image_mean": [0.4, 0.4, 0.4], '
            '"image_std": [0.2, 0.2, 0.2], "resample": 2}')
        return str(tmp_path)
    assert name in KIND_SPECS, f"no spec for model kind '{name}': add one here"
    return KIND_SPECS[name]


@pytest.mark.parametrize("name", list(MODEL_KINDS))
def test_model_kind_builds_a_model_with_its_own_preprocessing(name, tmp_path):
    """Every model kind: its spec is taken by it (and by no earlier kind), it builds a module with the asked head,
    and its preprocessing runs a batch through the model."""
    from ladle.models import model_spec
    from ladle.models.specs import model_kind

    spec_text = kind_spec(name, tmp_path)
    assert model_kind(spec_text).name == name and MODEL_KINDS[name].summary
    spec = model_spec(spec_text, 3, 32)
    if spec.is_text:  # a tokenizer instead of a resize and crop: token ids through the model
        from ladle.evaluation.evaluator import call_model

        model = spec.build().eval()
        batch = spec.preprocess.load()(["a good movie", "bad"], padding=True, return_tensors="pt")
        with torch.inference_mode():
            assert call_model(model, dict(batch)).shape == (2, 3)
        return
    assert spec.preprocess.size == 32
    model = spec.build().eval()
    with torch.inference_mode():
        out = model(torch.zeros(2, 3, 32, 32))
    out = out.logits if hasattr(out, "logits") else out
    assert out.shape == (2, 3)
