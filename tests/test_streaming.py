"""Tasting at real scale: photos streamed through the model's own preprocessing, the preprocessed cache, the
tasting spec's store key, and the errors a real folder of JPEGs can give."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from ladle.data import ImageSet, StreamSet, open_data, unit
from ladle.data.examples import ImageFiles
from ladle.data.preprocess import Preprocess
from ladle.errors import LadleError
from ladle.evaluation.evaluator import Evaluator
from ladle.models import model_spec, tiny_cnn


def digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """The real 8×8 digits as RGB uint8 (N, 8, 8, 3) and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    gray = np.round(d.images / 16 * 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1), d.target.astype(np.int64)


def write_digit_folder(root: Path, images: np.ndarray, labels: np.ndarray, split: str = "test") -> Path:
    """An ImageFolder of lossless PNGs (ROOT/SPLIT/digit/NNNN.png), listed in the same order as the arrays."""
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / split / f"d{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    return root


def photos(root: Path, per_class: int = 6, size=(96, 80), classes=("cat", "dog", "fox"), split: str = "val") -> Path:
    """A small JPEG ImageFolder of real photo crops (scikit-image's chelsea, coffee, astronaut), non-square."""
    from skimage import data

    sources = [data.chelsea(), data.coffee(), data.astronaut()]
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        folder = root / split / name
        folder.mkdir(parents=True, exist_ok=True)
        src = sources[c % len(sources)]
        for i in range(per_class):
            top, left = rng.integers(0, src.shape[0] - size[1]), rng.integers(0, src.shape[1] - size[0])
            Image.fromarray(src[top : top + size[1], left : left + size[0]]).save(folder / f"{i:03d}.jpg", quality=90)
    return root


def logits_of(data, model, batch_size=7, workers=0) -> torch.Tensor:
    ev = Evaluator(model, {"s": data}, device="cpu", batch_size=batch_size, workers=workers)
    return ev.run("s")


# ------------------------------------------------------------------------------ streaming = in memory


def test_streamed_cached_and_in_memory_digits_give_the_same_logits(tmp_path):
    """The same uint8 digits as an .npz (in memory), an ImageFolder of PNGs streamed by 0 or 2 workers, and the
    preprocessed cache: the same logits bit for bit, in example order."""
    images, labels = digits_uint8()
    keep = np.concatenate([np.flatnonzero(labels == c)[:12] for c in range(10)])  # folder order: by class, then index
    images, labels = images[keep], labels[keep]
    write_digit_folder(tmp_path / "digits", images, labels)
    np.savez(tmp_path / "digits.npz", x=images, y=labels)
    torch.manual_seed(0)
    model = tiny_cnn(10).eval()
    in_memory = open_data(f"{tmp_path / 'digits.npz'}:all", image_size=8)
    streamed = open_data(f"{tmp_path / 'digits'}:test", preprocess=Preprocess(8, 8))
    assert isinstance(in_memory, ImageSet) and isinstance(streamed, StreamSet)
    assert torch.equal(streamed.y, in_memory.y)
    reference = logits_of(in_memory, model)
    assert torch.equal(logits_of(streamed, model, workers=0), reference)
    assert torch.equal(logits_of(streamed, model, workers=2), reference)
    cached = streamed.cached(tmp_path / "cache")
    assert cached.x.dtype == torch.uint8 and cached.source["fingerprint"] == streamed.source["fingerprint"]
    assert torch.equal(logits_of(cached, model), reference)


def test_a_test_split_never_lists_or_decodes_train(tmp_path, monkeypatch):
    """`DIR:test` reads test/ only: train/ holds nothing but broken files, is unreadable (for a non-root user) and
    no image under it is ever opened."""
    photos(tmp_path / "set", split="test")
    bad = tmp_path / "set" / "train" / "cat"
    bad.mkdir(parents=True)
    (bad / "0.jpg").write_bytes(b"not a jpeg")
    opened = []
    real = ImageFiles.image

    def spy(self, i):
        opened.append(self.where(i))
        return real(self, i)

    monkeypatch.setattr(ImageFiles, "image", spy)
    os.chmod(tmp_path / "set" / "train", 0)
    try:
        data = open_data(f"{tmp_path / 'set'}:test", preprocess=Preprocess(16, 16))
        out = logits_of(data, tiny_cnn(3).eval())
    finally:
        os.chmod(tmp_path / "set" / "train", 0o755)
    assert out.shape == (18, 3)
    assert opened and not any("/train/" in p for p in opened)


def test_heldout_lists_train_and_decodes_only_its_slice(tmp_path, monkeypatch):
    photos(tmp_path / "set", per_class=10, split="train")
    opened = []
    real = ImageFiles.image
    monkeypatch.setattr(ImageFiles, "image", lambda self, i: opened.append(self.where(i)) or real(self, i))
    heldout = open_data(f"{tmp_path / 'set'}:heldout", preprocess=Preprocess(16, 16), heldout_fraction=0.1)
    train = open_data(f"{tmp_path / 'set'}:train", preprocess=Preprocess(16, 16), heldout_fraction=0.1)
    assert len(heldout) == 3 and len(train) == 27 and not opened  # listed, nothing decoded yet
    logits_of(heldout, tiny_cnn(3).eval(), workers=0)
    assert len(opened) == 3 and set(opened).isdisjoint(train.examples.where(i) for i in range(len(train)))


# ------------------------------------------------------------------------------ the model's own preprocessing


@pytest.mark.parametrize("name, image_size", [("resnet18", None), ("vit_tiny_patch16_224", None),
                                              ("tf_efficientnet_lite0", 64)])
def test_preprocessing_equals_timms_own_eval_transform(tmp_path, name, image_size):
    """timm:NAME's inputs are exactly timm's resolve_data_config + create_transform (input size, crop_pct,
    interpolation, mean, std), at the model's resolution or at --image-size."""
    import timm
    import timm.data

    photos(tmp_path / "set", per_class=2, size=(300, 260))
    spec = model_spec(f"timm:{name}", 3, image_size)
    data = open_data(f"{tmp_path / 'set'}:all", preprocess=spec.preprocess)
    ev = Evaluator(torch.nn.Identity(), {"s": data}, mean=spec.mean, std=spec.std, device="cpu", workers=0)
    ours = torch.cat(list(ev.batches(data))).contiguous()
    model = timm.create_model(name, pretrained=False, num_classes=3)
    config = timm.data.resolve_data_config({"input_size": (3, image_size, image_size)} if image_size else {}, model=model)
    transform = timm.data.create_transform(**config)
    theirs = torch.stack([transform(Image.open(data.examples.where(i)).convert("RGB")) for i in range(len(data))])
    assert ours.shape == theirs.shape and torch.equal(ours, theirs)
    assert spec.preprocess.origin == f"timm:{name}"


def test_image_size_changes_the_resolution_only():
    own = model_spec("timm:resnet18", 10).preprocess
    small = model_spec("timm:resnet18", 10, 112).preprocess
    assert (own.size, small.size) == (224, 112)
    assert (small.interpolation, small.mean, small.std) == (own.interpolation, own.mean, own.std)
    assert small.resize == int(112 / own.crop_pct)


# ------------------------------------------------------------------------------ the preprocessed cache


def test_cache_is_rebuilt_when_a_file_or_the_transform_changes(tmp_path):
    root = photos(tmp_path / "set", per_class=3, split="test")
    cache = tmp_path / "cache"

    def cached(size=16):
        return open_data(f"{root}:test", preprocess=Preprocess(size, size)).cached(cache)

    first = cached()
    path = Path(first.source["cache"])
    assert path.is_file() and torch.equal(cached().x, first.x)  # read back, not rebuilt
    assert Path(cached(24).source["cache"]) != path  # another transform, another file
    victim = root / "test" / "dog" / "001.jpg"
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(victim)
    changed = cached()
    assert Path(changed.source["cache"]) != path and not torch.equal(changed.x, first.x)
    expected, truncated = changed.x.clone(), Path(changed.source["cache"])
    del changed  # unmapped before the file is cut short under it (ladle itself only ever renames new files in)
    truncated.write_bytes(truncated.read_bytes()[:200])  # a damaged cache file is rebuilt, not read
    assert torch.equal(cached().x, expected)


def test_cached_passes_read_no_image_file(tmp_path, monkeypatch):
    root = photos(tmp_path / "set", per_class=3, split="test")
    data = open_data(f"{root}:test", preprocess=Preprocess(16, 16)).cached(tmp_path / "cache")
    monkeypatch.setattr(ImageFiles, "image", lambda self, i: pytest.fail("a cached pass decoded an image"))
    model = tiny_cnn(3).eval()
    assert torch.equal(logits_of(data, model), logits_of(data, model))
    again = open_data(f"{root}:test", preprocess=Preprocess(16, 16)).cached(tmp_path / "cache")
    assert torch.equal(again.x, data.x)


# ------------------------------------------------------------------------------ bad data: one line, exit 2


def _folder_with(tmp_path, damage: str) -> tuple[Path, Path]:
    root = photos(tmp_path / "set", per_class=8, split="test")
    victim = root / "test" / "dog" / "004.jpg"  # in the middle of the folder
    if damage == "truncated":
        victim.write_bytes(victim.read_bytes()[:600])
    elif damage == "empty class":
        victim = root / "test" / "emu"
        victim.mkdir()
    elif damage == "unreadable":
        victim.unlink()
        victim.symlink_to(tmp_path / "gone.jpg")
    return root, victim


@pytest.mark.parametrize("damage", ["truncated", "empty class", "unreadable"])
def test_bad_files_are_one_line_naming_the_file_exit_2_nothing_written(tmp_path, cli, damage):
    root, victim = _folder_with(tmp_path, damage)
    model = tmp_path / "m.safetensors"
    save_file(tiny_cnn(num_classes=3).state_dict(), str(model))
    report = tmp_path / "report"
    r = cli("taste", model, "--model", "ladle.models:tiny_cnn", "--num-classes", "3", "--data", f"{root}:test",
            "--image-size", "16", "--workers", "2", "--report", report)
    assert r.code == 2 and len(r.err_lines) == 1, r.err
    assert str(victim) in r.err
    assert not report.exists()


class _Dies(ImageFiles):
    """Examples whose fifth image kills the worker process that decodes it."""

    def image(self, i):
        if i == 4:
            os._exit(3)
        return super().image(i)


def test_a_crashed_worker_is_a_clear_error_not_a_hang(tmp_path):
    root = photos(tmp_path / "set", per_class=4, split="test")
    listed = open_data(f"{root}:test", preprocess=Preprocess(16, 16))
    dying = StreamSet(_Dies(listed.examples.root, listed.examples.paths, listed.examples.labels, listed.examples.classes),
                      listed.preprocess, {"path": str(root)}, workers=1)
    with pytest.raises(LadleError, match="data-loading worker died") as e:
        list(dying.batches(2))
    assert "\n" not in str(e.value) and str(root) in str(e.value)


# ------------------------------------------------------------------------------ one store key for taste and cook


def test_taste_after_cook_greedy_on_the_same_data_computes_nothing(tmp_path, monkeypatch):
    from ladle.evaluation.tasting import make_scorer
    from ladle.soup.cook import cook
    from ladle.studies.taste import taste_specs

    monkeypatch.setenv("LADLE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LADLE_LOGIT_CACHE", "1")  # the persistent logit cache both share (off elsewhere in the tests)
    root = photos(tmp_path / "set", per_class=4, split="test")
    paths = []
    for seed in range(2):
        torch.manual_seed(seed)
        paths.append(tmp_path / f"i{seed}.safetensors")
        save_file(tiny_cnn(3).state_dict(), str(paths[-1]))
    fields = {"model": "ladle.models:tiny_cnn", "data": [f"{root}:all"], "image_size": 16, "workers": 0}
    scorer = make_scorer(**fields, split="all")
    cook("greedy", [str(p) for p in paths], out=tmp_path / "soup.safetensors", scorer=scorer, full_scores=True)
    assert scorer.evaluator.forward_passes > 0
    from ladle.io.manifest import read_manifest

    manifest = read_manifest(tmp_path / "soup.safetensors")  # the transform the scores were computed with
    data = manifest["trace"]["greedy"]["data"]
    assert data["transform"]["size"] == 16 and data["transform"]["origin"] == "default" and data["precision"] == "fp32"
    calls = []
    monkeypatch.setattr(Evaluator, "forward", lambda self, x: calls.append(len(x)) or pytest.fail("recomputed"))
    report = taste_specs([str(p) for p in paths], uniform=False, **fields)
    assert not calls and len(report.ingredients()) == 2


def test_precision_is_part_of_the_store_key_and_bf16_runs(tmp_path):
    from ladle.spec import TastingSpec

    fp32, bf16 = TastingSpec(model="timm:resnet18"), TastingSpec(model="timm:resnet18", precision="bf16")
    pre = model_spec("timm:resnet18", 10).preprocess.describe()
    assert fp32.model_id(10, pre) != bf16.model_id(10, pre)
    data = open_data("digits:test", image_size=8)
    torch.manual_seed(0)
    model = tiny_cnn(10).eval()
    exact = Evaluator(model, {"t": data}, device="cpu").run("t")
    low = Evaluator(model, {"t": data}, device="cpu", precision="bf16").run("t")
    assert low.dtype == torch.float32 and not torch.equal(low, exact)
    assert torch.allclose(low, exact, atol=0.1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_cuda_evaluation_matches_the_cpu(tmp_path):
    root = photos(tmp_path / "set", per_class=3, split="test")
    data = open_data(f"{root}:test", preprocess=Preprocess(16, 16))
    torch.manual_seed(0)
    model = tiny_cnn(3).eval()
    cpu = Evaluator(model, {"t": data}, device="cpu", workers=0).run("t")
    gpu = Evaluator(model, {"t": data}, device="cuda", workers=2).run("t")
    assert torch.allclose(cpu, gpu, atol=1e-4)


def test_unit_is_torchvisions_to_tensor():
    from torchvision.transforms.functional import to_tensor

    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert torch.equal(unit(torch.from_numpy(image).permute(2, 0, 1)), to_tensor(image))


def test_corrupted_sets_are_read_memory_mapped(tmp_path):
    """A stored corrupted set is evaluated from the file mapped in place, batch by batch (not loaded whole), with
    the same images; a compressed .npz (which cannot be mapped) is read instead."""
    from ladle.shifts.corruptions import StoredSet, mapped_npz_member

    x = np.random.default_rng(0).integers(0, 256, (50, 3, 16, 16), dtype=np.uint8)
    y = np.arange(50) % 3
    np.savez(tmp_path / "set.npz", x=x, y=y, key=np.array("{}"))
    mapped = mapped_npz_member(tmp_path / "set.npz", "x")
    assert isinstance(mapped, np.memmap) and np.array_equal(mapped, x)
    stored = StoredSet(tmp_path / "set.npz", torch.from_numpy(y), ["a", "b", "c"], {})
    assert torch.equal(torch.cat(list(stored.batches(7))), torch.from_numpy(x))
    np.savez_compressed(tmp_path / "packed.npz", x=x, y=y)
    assert mapped_npz_member(tmp_path / "packed.npz", "x") is None
    packed = StoredSet(tmp_path / "packed.npz", torch.from_numpy(y), ["a", "b", "c"], {})
    assert torch.equal(torch.cat(list(packed.batches(64))), torch.from_numpy(x))


@pytest.mark.parametrize("flag, value, says", [("--image-size", "0", "image-size: must be at least 1, got 0"),
                                               ("--workers", "-1", "workers: must be at least 0, got -1"),
                                               ("--eval-batch-size", "0", "eval-batch-size: must be at least 1")])
def test_tasting_spec_bounds_are_one_line_exit_2(tmp_path, cli, flag, value, says):
    model = tmp_path / "m.safetensors"
    save_file(tiny_cnn(num_classes=10).state_dict(), str(model))
    r = cli("taste", model, "--model", "ladle.models:tiny_cnn", "--data", "digits", flag, value)
    assert r.code == 2 and len(r.err_lines) == 1 and says in r.err, r.err


def test_photos_are_corrupted_from_the_preprocessed_images_at_the_models_size(tmp_path, monkeypatch):
    """Corruption suites on a streamed folder: built once from the uint8 images at the model's input size (the
    cache), each set the clean set's size and labels, evaluated like any split."""
    from ladle.studies.taste import taste_specs

    monkeypatch.setenv("LADLE_CACHE_DIR", str(tmp_path / "cache"))
    root = photos(tmp_path / "set", per_class=4, split="test")
    model = tmp_path / "m.safetensors"
    save_file(tiny_cnn(num_classes=3).state_dict(), str(model))
    report = taste_specs([str(model)], model="ladle.models:tiny_cnn", data=[f"{root}:test"], image_size=32,
                         workers=0, corruptions=["imagenet-c:fog", "laion-c:mosaic"], severities="3",
                         corruption_cache=str(tmp_path / "shifted"))
    assert [s.suite for s in report.shifts] == ["imagenet-c", "laion-c"]
    images = list((tmp_path / "cache" / "images").glob("*.npy"))
    assert len(images) == 1 and np.load(images[0], mmap_mode="r").shape == (12, 3, 32, 32)
    stored_sets = sorted((tmp_path / "shifted").rglob("*severity3*.npz"))
    assert len(stored_sets) == 2
    for stored in stored_sets:
        with np.load(stored) as z:
            assert z["x"].shape == (12, 3, 32, 32) and z["x"].dtype == np.uint8
