"""Every data spec of `ladle.data.load_data`, on real files these tests write themselves.

digits (scikit-learn's bundled 8×8 digits), CIFAR-10/100 python pickles written like the real files,
ImageFolder trees of PNGs, Hugging Face `save_to_disk` folders and .npz files; splits, stratification,
determinism, and the one-line errors for everything that is not data.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from ladle.data import DIGITS_SPLIT, load_data, parse_spec, stratified_split
from ladle.errors import LadleError
from ladle.models import tiny_cnn

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def sha_indices(idx) -> str:
    return hashlib.sha256(np.asarray(idx, dtype=np.int64).tobytes()).hexdigest()[:16]


def rows_as_bytes(x: torch.Tensor) -> list[bytes]:
    """Each image back to its uint8 bytes: an exact identity for random images."""
    return [bytes(r) for r in (x * 255).round().to(torch.uint8).reshape(len(x), -1).numpy()]


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


# --------------------------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def sk_digits():
    from sklearn.datasets import load_digits

    return load_digits()


@pytest.fixture(scope="module")
def digit_splits():
    return {s: load_data(f"digits:{s}", image_size=8, seed=0) for s in ("train", "heldout", "test")}


def test_digits_sizes_and_default_split(digit_splits):
    assert DIGITS_SPLIT == {"train": 300, "heldout": 300}
    assert [len(digit_splits[s]) for s in ("train", "heldout", "test")] == [300, 300, 1197]
    default = load_data("digits", image_size=8)
    assert default.source["split"] == "test"
    assert torch.equal(default.x, digit_splits["test"].x) and torch.equal(default.y, digit_splits["test"].y)
    assert digit_splits["test"].classes == [str(i) for i in range(10)]
    assert len(load_data("digits:all", image_size=8)) == 1797


def test_digits_splits_are_the_rows_of_sklearn_digits_disjoint_and_stratified(digit_splits, sk_digits):
    y = sk_digits.target.astype(np.int64)
    train, heldout, test = stratified_split(y, [300, 300], 0)
    parts = {"train": train, "heldout": heldout, "test": test}
    for name, idx in parts.items():
        data = digit_splits[name]
        assert data.source["indices_sha256"] == sha_indices(idx)
        # at image_size 8 nothing is resized: the pixels are sklearn's, /16, on three equal channels
        expected = torch.from_numpy(sk_digits.images[idx].astype(np.float32) / 16.0)
        for c in range(3):
            assert torch.equal(data.x[:, c], expected)
        assert torch.equal(data.y, torch.from_numpy(y[idx]))
    assert not set(train) & set(heldout) and not set(train) & set(test) and not set(heldout) & set(test)
    assert sorted(np.concatenate([train, heldout, test]).tolist()) == list(range(len(y)))
    # stratified: 300 = 30 of each class in train and in held-out, the rest in test
    assert np.bincount(digit_splits["train"].y.numpy()).tolist() == [30] * 10
    assert np.bincount(digit_splits["heldout"].y.numpy()).tolist() == [30] * 10
    assert np.bincount(digit_splits["test"].y.numpy()).tolist() == (np.bincount(y) - 60).tolist()


def test_digits_are_deterministic_per_seed(digit_splits):
    again = load_data("digits:heldout", image_size=8, seed=0)
    assert torch.equal(again.x, digit_splits["heldout"].x) and torch.equal(again.y, digit_splits["heldout"].y)
    assert again.source["fingerprint"] == digit_splits["heldout"].source["fingerprint"]
    other = load_data("digits:heldout", image_size=8, seed=1)
    assert other.source["indices_sha256"] != digit_splits["heldout"].source["indices_sha256"]
    assert other.source["fingerprint"] != digit_splits["heldout"].source["fingerprint"]
    assert np.bincount(other.y.numpy()).tolist() == [30] * 10  # still stratified


@pytest.mark.parametrize("size", [8, 16, 32])
def test_digits_image_size(size):
    data = load_data("digits:heldout", image_size=size)
    assert data.x.shape == (300, 3, size, size) and data.x.dtype == torch.float32
    assert data.x.min() >= 0 and data.x.max() <= 1 and data.x.max() > 0.9
    assert torch.equal(data.x[:, 0], data.x[:, 1]) and torch.equal(data.x[:, 1], data.x[:, 2])
    assert data.source["image_size"] == size and data.source["spec"] == "digits:heldout"


# ------------------------------------------------------------------------------------------ CIFAR


def write_cifar10(root, train_sizes=(12, 8), n_test=6, protocol=2, seed=0):
    """data_batch_N / test_batch / batches.meta as in cifar-10-batches-py (pickled dicts with bytes keys)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    written = {}
    names = [f"data_batch_{i + 1}" for i in range(len(train_sizes))] + ["test_batch"]
    for name, n in zip(names, list(train_sizes) + [n_test]):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in np.arange(n) % 10]
        batch = {b"batch_label": f"{name} of 5".encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
        with open(root / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
        written[name] = (data, labels)
    meta = {b"num_cases_per_batch": 10000, b"label_names": [c.encode() for c in CIFAR10_NAMES], b"num_vis": 3072}
    with open(root / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=protocol)
    return written


def as_images(data: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)


@pytest.mark.parametrize("protocol", [2, 4, 5], ids=["protocol2-like-the-real-files", "protocol4", "protocol5"])
def test_cifar10_python_format(tmp_path, protocol):
    root = tmp_path / "cifar-10-batches-py"
    written = write_cifar10(root, protocol=protocol)
    test = load_data(f"{root}:test", image_size=32)
    data, labels = written["test_batch"]
    assert test.x.shape == (6, 3, 32, 32)
    assert torch.equal(test.x, as_images(data)) and test.y.tolist() == labels
    assert test.classes == CIFAR10_NAMES
    assert load_data(str(root), image_size=32).source["split"] == "test"  # default split

    all_train = np.concatenate([written["data_batch_1"][0], written["data_batch_2"][0]])
    all_labels = written["data_batch_1"][1] + written["data_batch_2"][1]
    by_row = {bytes(r): label for r, label in zip(all_train, all_labels)}
    heldout = load_data(f"{root}:heldout", image_size=32)
    train = load_data(f"{root}:train", image_size=32)
    assert (len(heldout), len(train)) == (2, 18)  # 10% of the 20 training images, the rest
    h_rows, t_rows = rows_as_bytes(heldout.x), rows_as_bytes(train.x)
    assert not set(h_rows) & set(t_rows)
    assert sorted(h_rows + t_rows) == sorted(by_row)
    assert [by_row[r] for r in h_rows] == heldout.y.tolist() and [by_row[r] for r in t_rows] == train.y.tolist()
    assert len(set(heldout.y.tolist())) == 2  # stratified: two different classes
    assert not set(h_rows) & set(rows_as_bytes(test.x))

    small = load_data(f"{root}:train", image_size=16)
    assert small.x.shape == (18, 3, 16, 16) and torch.equal(small.y, train.y)
    assert 0 <= small.x.min() and small.x.max() <= 1


def test_cifar100_python_format(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    rng = np.random.default_rng(1)
    fine_names = [f"class_{i:02d}" for i in range(100)]
    written = {}
    for split, n in (("train", 30), ("test", 7)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = [int(v) for v in (np.arange(n) * 7) % 100]
        batch = {b"filenames": [b"x.png"] * n, b"batch_label": split.encode(), b"fine_labels": fine,
                 b"coarse_labels": [v // 5 for v in fine], b"data": data}
        with open(root / split, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        written[split] = (data, fine)
    with open(root / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [n.encode() for n in fine_names],
                     b"coarse_label_names": [f"super_{i}".encode() for i in range(20)]}, f, protocol=2)
    test = load_data(f"{root}:test", image_size=32)
    assert test.classes == fine_names and test.num_classes == 100
    assert torch.equal(test.x, as_images(written["test"][0])) and test.y.tolist() == written["test"][1]
    train, heldout = load_data(f"{root}:train", image_size=8), load_data(f"{root}:heldout", image_size=8)
    assert (len(train), len(heldout)) == (27, 3) and train.x.shape == (27, 3, 8, 8)
    assert sorted(train.y.tolist() + heldout.y.tolist()) == sorted(written["train"][1])


class _Payload:
    """Pickles as a call of `func(*args)`: what a booby-trapped batch file holds."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker):
    return {
        "os.system": _Payload(os.system, f"touch '{marker}'"),
        "builtins.eval": _Payload(eval, f"open({str(marker)!r}, 'w').close()"),
        "subprocess.call": _Payload(subprocess.call, ["touch", str(marker)]),
    }


@pytest.mark.parametrize("how", ["os.system", "builtins.eval", "subprocess.call"])
@pytest.mark.parametrize("where", ["test_batch", "batches.meta"])
def test_cifar_pickle_that_would_run_code_is_refused(tmp_path, how, where):
    root = tmp_path / "evil"
    write_cifar10(root, train_sizes=(10,), n_test=4)
    marker = tmp_path / "pwned"
    payload = _payloads(marker)[how]
    obj = {b"data": payload, b"labels": [0]} if where == "test_batch" else {b"label_names": payload}
    with open(root / where, "wb") as f:
        pickle.dump(obj, f, protocol=2)
    with pytest.raises(LadleError) as e:
        load_data(f"{root}:test", image_size=32)
    text = one_line(e)
    assert where in text and "refusing" in text
    assert not marker.exists()


def test_cifar_pickle_attack_through_the_cli(tmp_path, cli):
    root = tmp_path / "evil"
    write_cifar10(root, train_sizes=(10,), n_test=4)
    marker = tmp_path / "pwned"
    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": _Payload(os.system, f"touch '{marker}'"), b"labels": [0]}, f)
    model = tmp_path / "m.safetensors"
    save_file(tiny_cnn().state_dict(), str(model))
    r = cli("taste", model, "--model", "ladle.models:tiny_cnn", "--data", f"{root}:test", "--image-size", 8)
    assert r.code == 2
    assert len(r.err_lines) == 1 and r.err_lines[0].startswith("ladle: error: ") and "test_batch" in r.err
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"\x80\x02garbage", pickle.dumps([1, 2, 3]), pickle.dumps({b"labels": [1]})],
                         ids=["empty", "garbage", "a-list", "no-data"])
def test_cifar_damaged_batch(tmp_path, content):
    root = tmp_path / "cifar"
    write_cifar10(root, train_sizes=(10,), n_test=4)
    (root / "test_batch").write_bytes(content)
    with pytest.raises(LadleError) as e:
        load_data(f"{root}:test", image_size=32)
    assert "test_batch" in one_line(e)


def test_cifar10_without_test_batch(tmp_path):
    root = tmp_path / "cifar"
    write_cifar10(root, train_sizes=(10,), n_test=4)
    (root / "test_batch").unlink()
    assert len(load_data(f"{root}:train", image_size=32)) == 9
    with pytest.raises(LadleError, match="has no test split"):
        load_data(f"{root}:test", image_size=32)


# ------------------------------------------------------------------------------------- ImageFolder


def write_image_folder(root, classes=("ant", "bee", "cow"), per_class=5, seed=0):
    """Random-noise PNGs of varied sizes, every other one grayscale ('L'); file 0 of class c is a solid colour."""
    rng = np.random.default_rng(seed)
    files = []
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            if i == 0:
                image = Image.new("RGB", (9 + c, 13), (40 * c, 100, 200))
            else:
                image = Image.fromarray(rng.integers(0, 256, (10 + i, 14 + 3 * i, 3), dtype=np.uint8))
                if i % 2:
                    image = image.convert("L")
            image.save(root / name / f"{i}.png")
            files.append((name, i, image.mode))
    (root / classes[0] / "notes.txt").write_text("not an image, skipped")
    return files


def test_image_folder_single_pool(tmp_path):
    root = tmp_path / "folder"
    files = write_image_folder(root)
    everything = load_data(f"{root}:all", image_size=8)
    assert everything.x.shape == (15, 3, 8, 8) and everything.classes == ["ant", "bee", "cow"]
    assert everything.y.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    for row, (name, i, mode) in enumerate(files):  # rows follow class, then file name
        x = everything.x[row]
        if mode == "L":
            assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
        if i == 0:
            c = everything.classes.index(name)
            colour = torch.tensor([40 * c, 100, 200], dtype=torch.float32).view(3, 1, 1) / 255
            assert torch.allclose(x, colour.expand(3, 8, 8), atol=1e-6)
    parts = {s: load_data(f"{root}:{s}", image_size=8) for s in ("test", "heldout", "train")}
    assert [len(parts[s]) for s in ("test", "heldout", "train")] == [3, 2, 10]  # 20%, 10%, the rest
    assert sorted(parts["test"].y.tolist()) == [0, 1, 2]  # stratified: one of each class
    rows = {s: rows_as_bytes(p.x) for s, p in parts.items()}
    assert not set(rows["test"]) & set(rows["heldout"]) and not set(rows["test"]) & set(rows["train"])
    assert not set(rows["heldout"]) & set(rows["train"])
    assert sorted(rows["test"] + rows["heldout"] + rows["train"]) == sorted(rows_as_bytes(everything.x))
    again = load_data(f"{root}:test", image_size=8)
    assert torch.equal(again.x, parts["test"].x)  # seeded
    assert load_data(f"{root}:test", image_size=8, seed=3).source["indices_sha256"] != parts["test"].source["indices_sha256"]


def test_image_folder_with_train_and_test(tmp_path):
    root = tmp_path / "folder"
    write_image_folder(root / "train", per_class=10, seed=1)
    write_image_folder(root / "test", per_class=2, seed=2)
    test = load_data(f"{root}:test", image_size=12)
    assert test.x.shape == (6, 3, 12, 12) and test.y.tolist() == [0, 0, 1, 1, 2, 2]
    assert test.classes == ["ant", "bee", "cow"]
    assert torch.equal(test.x, load_data(f"{root / 'test'}:all", image_size=12).x)
    train, heldout = load_data(f"{root}:train", image_size=12), load_data(f"{root}:heldout", image_size=12)
    assert (len(train), len(heldout)) == (27, 3) and sorted(heldout.y.tolist()) == [0, 1, 2]
    assert sorted(rows_as_bytes(train.x) + rows_as_bytes(heldout.x)) == sorted(
        rows_as_bytes(load_data(f"{root / 'train'}:all", image_size=12).x))


def test_image_folder_with_train_and_val(tmp_path):
    root = tmp_path / "folder"
    write_image_folder(root / "train", per_class=4, seed=1)
    write_image_folder(root / "val", per_class=1, seed=2)
    assert load_data(f"{root}:test", image_size=8).y.tolist() == [0, 1, 2]


def _png_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _flip(data: bytes, pos: int, mask: int) -> bytes:
    return data[:pos] + bytes([data[pos] ^ mask]) + data[pos + 1 :]


UNDECODABLE = {
    "not-an-image": lambda png: b"this is not a png",
    "truncated": lambda png: png[: len(png) // 2],
    "cut-in-header": lambda png: png[:20],
    "ihdr-length": lambda png: _flip(png, 11, 0x01),  # PIL: ValueError
    "chunk-length": lambda png: _flip(png, 35, 0x01),  # PIL: SyntaxError 'broken PNG file'
    "pixel-data": lambda png: _flip(png, 50, 0xFF),
}


@pytest.mark.parametrize("damage", list(UNDECODABLE))
def test_undecodable_png_is_one_line_naming_the_file(tmp_path, damage):
    root = tmp_path / "folder"
    write_image_folder(root, per_class=2)
    bad = root / "bee" / "broken.png"
    bad.write_bytes(UNDECODABLE[damage](_png_bytes()))
    with pytest.raises(LadleError) as e:
        load_data(f"{root}:all", image_size=8)  # :all: the split holds the broken file (test might not)
    text = one_line(e)
    assert text.startswith(f"{bad}: ") and "cannot decode image" in text


def test_undecodable_png_through_the_cli(tmp_path, cli):
    root = tmp_path / "folder"
    write_image_folder(root, per_class=2)
    bad = root / "cow" / "broken.png"
    bad.write_bytes(_flip(_png_bytes(), 35, 0x01))
    model = tmp_path / "m.safetensors"
    save_file(tiny_cnn(num_classes=3).state_dict(), str(model))
    r = cli("taste", model, "--model", "ladle.models:tiny_cnn", "--data", f"{root}:all", "--image-size", 8)
    assert r.code == 2 and len(r.err_lines) == 1 and str(bad) in r.err


def test_not_a_dataset(tmp_path):
    with pytest.raises(LadleError, match="no such dataset"):
        load_data(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(LadleError, match="not a dataset ladle can read"):
        load_data(str(tmp_path / "empty"))
    (tmp_path / "data.txt").write_text("1,2\n")
    with pytest.raises(LadleError, match=r"data.txt: not a dataset ladle can read \(formats: npz, .*imagefolder"):
        load_data(str(tmp_path / "data.txt"))
    (tmp_path / "data.csv").write_text("text,label\nfine,1\n")  # text needs a text model to read it
    with pytest.raises(LadleError, match=r"data.csv: holds text: taste it with a text model"):
        load_data(str(tmp_path / "data.csv"))


# ------------------------------------------------------------------------------ Hugging Face datasets


def _hf_dataset(n: int, names: list[str], seed: int):
    import datasets

    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        a = rng.integers(0, 256, (10 + i % 3, 12 + i % 4, 3), dtype=np.uint8)
        images.append(Image.fromarray(a) if i % 2 == 0 else Image.fromarray(a[..., 0], mode="L"))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict({"image": images, "label": [i % len(names) for i in range(n)]}, features=features)


def test_hf_dataset_dict_with_train_and_test(tmp_path):
    import datasets

    names = ["cat", "dog", "eel"]
    path = tmp_path / "hf"
    datasets.DatasetDict({"train": _hf_dataset(20, names, 0), "test": _hf_dataset(6, names, 1)}).save_to_disk(str(path))
    test = load_data(f"{path}:test", image_size=8)
    assert test.classes == names and test.x.shape == (6, 3, 8, 8) and test.y.tolist() == [0, 1, 2, 0, 1, 2]
    assert test.x.dtype == torch.float32 and 0 <= test.x.min() and test.x.max() <= 1
    assert torch.equal(test.x[1, 0], test.x[1, 2])  # the grayscale ones have three equal channels
    train, heldout = load_data(f"{path}:train", image_size=8), load_data(f"{path}:heldout", image_size=8)
    assert (len(train), len(heldout)) == (18, 2) and len(set(heldout.y.tolist())) == 2
    everything = load_data(f"{path}:all", image_size=8)
    assert len(everything) == 26
    assert sorted(rows_as_bytes(train.x) + rows_as_bytes(heldout.x) + rows_as_bytes(test.x)) == sorted(
        rows_as_bytes(everything.x))


def test_hf_validation_split_serves_as_test(tmp_path):
    import datasets

    path = tmp_path / "hf"
    datasets.DatasetDict({"train": _hf_dataset(10, ["a", "b"], 0), "validation": _hf_dataset(4, ["a", "b"], 1)}).save_to_disk(str(path))
    assert load_data(f"{path}:test", image_size=8).y.tolist() == [0, 1, 0, 1]


def test_hf_single_dataset_is_one_pool(tmp_path):
    names = ["zero", "one", "two", "three"]
    path = tmp_path / "hf-single"
    _hf_dataset(20, names, 0).save_to_disk(str(path))
    parts = {s: load_data(f"{path}:{s}", image_size=16) for s in ("test", "heldout", "train", "all")}
    assert [len(parts[s]) for s in ("test", "heldout", "train", "all")] == [4, 2, 14, 20]
    assert sorted(parts["test"].y.tolist()) == [0, 1, 2, 3]
    assert parts["all"].classes == names and parts["all"].x.shape == (20, 3, 16, 16)
    assert sorted(rows_as_bytes(parts["test"].x) + rows_as_bytes(parts["heldout"].x) + rows_as_bytes(parts["train"].x)) \
        == sorted(rows_as_bytes(parts["all"].x))


def test_hf_labels_without_class_label(tmp_path):
    """Plain label columns: integers are class indices (as in .npz); names get one index over every split."""
    import datasets

    images = [Image.fromarray(np.full((8, 8, 3), 20 * i, np.uint8)) for i in range(6)]
    named = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"image": images[:4], "label": ["dog", "eel", "dog", "eel"]}, features=named),
        "test": datasets.Dataset.from_dict({"image": images[4:], "label": ["cat", "eel"]}, features=named),
    }).save_to_disk(str(tmp_path / "names"))
    test = load_data(f"{tmp_path / 'names'}:test", image_size=8)
    assert test.classes == ["cat", "dog", "eel"] and test.y.tolist() == [0, 2]
    assert load_data(f"{tmp_path / 'names'}:all", image_size=8).y.tolist() == [1, 2, 1, 2, 0, 2]
    ints = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    datasets.Dataset.from_dict({"image": images, "label": [3, 5, 7, 3, 5, 7]}, features=ints).save_to_disk(str(tmp_path / "ints"))
    data = load_data(f"{tmp_path / 'ints'}:all", image_size=8)
    assert data.y.tolist() == [3, 5, 7, 3, 5, 7] and data.classes == [str(i) for i in range(8)]


def test_hf_dataset_without_image_column_is_text(tmp_path):
    import datasets

    path = tmp_path / "hf-text"
    datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]}).save_to_disk(str(path))
    with pytest.raises(LadleError, match="holds text: taste it with a text model") as e:
        load_data(f"{path}:all")
    assert str(path) in one_line(e)


# ---------------------------------------------------------------------------------------------- .npz


def test_npz_uint8_grayscale(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 6, 6), dtype=np.uint8)
    y = np.arange(20) % 4
    np.savez(tmp_path / "gray.npz", x=x, y=y)
    data = load_data(f"{tmp_path / 'gray.npz'}:all", image_size=6)
    assert data.x.shape == (20, 3, 6, 6) and data.classes == ["0", "1", "2", "3"]
    for c in range(3):
        assert torch.equal(data.x[:, c], torch.from_numpy(x).float() / 255)
    assert data.y.tolist() == y.tolist()
    parts = {s: load_data(f"{tmp_path / 'gray.npz'}:{s}", image_size=6) for s in ("test", "heldout", "train")}
    assert [len(parts[s]) for s in ("test", "heldout", "train")] == [4, 2, 14]
    assert sorted(parts["test"].y.tolist()) == [0, 1, 2, 3]
    assert sorted(sum((rows_as_bytes(p.x) for p in parts.values()), [])) == sorted(rows_as_bytes(data.x))
    assert load_data(str(tmp_path / "gray.npz"), image_size=12).x.shape == (4, 3, 12, 12)


def test_npz_uint8_channels_last(tmp_path):
    x = np.random.default_rng(1).integers(0, 256, (10, 5, 7, 3), dtype=np.uint8)
    np.savez(tmp_path / "rgb.npz", x=x, y=np.arange(10) % 2)
    data = load_data(f"{tmp_path / 'rgb.npz'}:all", image_size=7)
    # 5×7 is stretched to 7×7; compare at its own size through a 7×7 file instead
    assert data.x.shape == (10, 3, 7, 7)
    square = np.random.default_rng(2).integers(0, 256, (10, 7, 7, 3), dtype=np.uint8)
    np.savez(tmp_path / "square.npz", x=square, y=np.arange(10) % 2)
    data = load_data(f"{tmp_path / 'square.npz'}:all", image_size=7)
    assert torch.equal(data.x, torch.from_numpy(square).permute(0, 3, 1, 2).float() / 255)


def test_npz_float_channels_first_with_images_and_labels_keys(tmp_path):
    x = np.random.default_rng(3).random((12, 3, 9, 9)).astype(np.float32)
    np.savez(tmp_path / "f.npz", images=x, labels=np.arange(12) % 3)
    data = load_data(f"{tmp_path / 'f.npz'}:all", image_size=9)
    assert torch.equal(data.x, torch.from_numpy(x)) and data.y.tolist() == (np.arange(12) % 3).tolist()
    assert data.classes == ["0", "1", "2"]
    assert load_data(f"{tmp_path / 'f.npz'}:all", image_size=4).x.shape == (12, 3, 4, 4)


def test_npz_count_mismatch_names_file_and_key(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.zeros((20, 6, 6), np.uint8), y=np.zeros(19, np.int64))
    with pytest.raises(LadleError) as e:
        load_data(str(path))
    assert one_line(e) == f"{path}: tensor 'y': 20 images but 19 labels"


@pytest.mark.parametrize("arrays,has", [({"pixels": np.zeros((4, 6, 6), np.uint8), "y": np.zeros(4)}, "pixels, y"),
                                        ({"x": np.zeros((4, 6, 6), np.uint8)}, "x")], ids=["no-x", "no-y"])
def test_npz_missing_keys(tmp_path, arrays, has):
    path = tmp_path / "keys.npz"
    np.savez(path, **arrays)
    with pytest.raises(LadleError) as e:
        load_data(str(path))
    assert one_line(e) == f"{path}: needs arrays 'x' and 'y' (has: {has})"


def test_npz_bad_image_shape(tmp_path):
    path = tmp_path / "flat.npz"
    np.savez(path, x=np.zeros((4, 36), np.uint8), y=np.zeros(4))
    with pytest.raises(LadleError) as e:
        load_data(str(path))
    assert one_line(e).startswith(f"{path}: tensor 'x': images of shape (4, 36)")


def test_npz_pickled_object_array_is_not_loaded(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([None] * 4, dtype=object), y=np.zeros(4))
    with pytest.raises(LadleError, match="cannot read .npz") as e:
        load_data(str(path))
    assert str(path) in one_line(e)


@pytest.mark.parametrize("split", ["test", "heldout", "train", "all"])
def test_npz_with_no_examples(tmp_path, split):
    path = tmp_path / "empty.npz"
    np.savez(path, x=np.zeros((0, 6, 6), np.uint8), y=np.zeros(0, np.int64))
    with pytest.raises(LadleError) as e:
        load_data(f"{path}:{split}")
    assert one_line(e) == f"{path}: split '{split}' holds no examples"


def test_npz_split_too_small_for_every_split(tmp_path):
    path = tmp_path / "two.npz"
    np.savez(path, x=np.zeros((2, 6, 6), np.uint8), y=np.array([0, 1]))
    assert len(load_data(f"{path}:all")) == 2
    with pytest.raises(LadleError, match="split 'heldout' holds no examples"):
        load_data(f"{path}:heldout")


# ------------------------------------------------------------------------------------------ specs


@pytest.mark.parametrize("spec,expected", [
    ("digits", ("digits", None)),
    ("digits:test", ("digits", "test")),
    ("digits:heldout", ("digits", "heldout")),
    ("digits:all", ("digits", "all")),
    ("/path/with:colon", ("/path/with:colon", None)),
    ("/path/with:colon:train", ("/path/with:colon", "train")),
    ("data.npz:Test", ("data.npz:Test", None)),
    ("data.npz:", ("data.npz:", None)),
    ("C:/data/cifar", ("C:/data/cifar", None)),
])
def test_parse_spec(spec, expected):
    assert parse_spec(spec) == expected


def test_a_folder_with_a_colon_in_its_name(tmp_path):
    root = tmp_path / "with:colon"
    write_image_folder(root, classes=("a", "b"), per_class=5)
    assert len(load_data(str(root), image_size=8)) == 2  # default split: test (20% of 10)
    assert len(load_data(f"{root}:train", image_size=8)) == 7
    assert load_data(f"{root}:all", image_size=8).source["spec"] == f"{root}:all"
