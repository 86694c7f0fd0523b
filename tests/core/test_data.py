"""Dataset registry: splits, preprocessing, and the image loaders on tiny files in the
datasets' own on-disk formats (written here; no download)."""

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from smartmixed_core.data import DATASETS, DataError, _load_raw, check_data, load_dataset
from smartmixed_core.errors import ConfigError


def write_idx(path, array, dtype_code=0x08):
    with open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, dtype_code, array.ndim))
        f.write(struct.pack(">" + "I" * array.ndim, *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def fake_mnist(root, folder="MNIST", n_train=100, n_test=30):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    return root


def fake_cifar(root, per_batch=20, n_test=20):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else per_batch
        with open(folder / name, "wb") as f:
            pickle.dump(
                {
                    b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                    b"labels": list(np.arange(n) % 10),
                },
                f,
            )
    return root


def test_registry_names():
    assert set(DATASETS) == {"digits", "breast_cancer", "mnist", "fashion_mnist", "cifar10", "svhn"}


@pytest.mark.parametrize("name", ["digits", "breast_cancer"])
def test_embedded_split_is_stratified_and_disjoint(name):
    d = load_dataset(name, split_seed=3)
    n_tr, n_val = len(d.y_train), len(d.y_val)
    assert abs(n_val / (n_tr + n_val) - 0.1) < 0.01
    for c in range(d.num_classes):
        share_tr = (d.y_train == c).float().mean()
        share_val = (d.y_val == c).float().mean()
        assert abs(share_tr - share_val) < 0.02
    rows = {tuple(r.tolist()) for r in d.x_train.flatten(1)}
    assert not rows & {tuple(r.tolist()) for r in d.x_val.flatten(1)}
    assert not rows & {tuple(r.tolist()) for r in d.x_test.flatten(1)}
    # Standardised on the train split only: train mean 0 / std 1, others not exactly.
    assert d.x_train.flatten(1).mean(0).abs().max() < 1e-4
    assert d.x_val.flatten(1).mean(0).abs().max() > 1e-3


def test_split_seed_changes_validation_but_not_test():
    a, b = load_dataset("digits", split_seed=0), load_dataset("digits", split_seed=1)
    assert torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.y_val, b.y_val)
    assert torch.equal(load_dataset("digits", split_seed=0).x_val, a.x_val)


def test_digits_is_image_shaped():
    d = load_dataset("digits")
    assert d.input_shape == (1, 8, 8) and d.num_classes == 10
    assert load_dataset("breast_cancer").input_shape == (30,)


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_format_loader(tmp_path, name, folder):
    fake_mnist(tmp_path, folder)
    d = load_dataset(name, tmp_path)
    assert d.input_shape == (1, 28, 28)
    assert len(d.y_train) == 90 and len(d.y_val) == 10 and len(d.y_test) == 30
    assert d.x_train.min() >= 0.0 and d.x_train.max() <= 1.0
    normed = load_dataset(name, tmp_path, normalize_images=True)
    assert normed.x_train.min() >= -1.0 and normed.x_train.min() < -0.9


def test_cifar_format_loader(tmp_path):
    fake_cifar(tmp_path)
    d = load_dataset("cifar10", tmp_path)
    assert d.input_shape == (3, 32, 32) and len(d.y_test) == 20
    assert len(d.y_train) + len(d.y_val) == 100


def test_svhn_format_loader(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    for name, n in (("train_32x32.mat", 120), ("test_32x32.mat", 20)):
        savemat(
            tmp_path / name,
            {
                "X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
                "y": (np.arange(n) % 10 + 1).reshape(-1, 1),
            },
        )
    d = load_dataset("svhn", tmp_path)
    assert d.input_shape == (3, 32, 32)
    assert set(d.y_test.tolist()) == set(range(10))  # label 10 became 0


@pytest.mark.parametrize(
    "name,expected",
    [
        ("mnist", "train-images-idx3-ubyte"),
        ("cifar10", "data_batch_1"),
        ("svhn", "train_32x32.mat"),
    ],
)
def test_missing_files_are_named(tmp_path, name, expected):
    _load_raw.cache_clear()
    with pytest.raises(DataError) as err:
        load_dataset(name, tmp_path)
    assert expected in str(err.value) and err.value.field == "data_dir"


def test_too_small_to_stratify(tmp_path):
    fake_mnist(tmp_path, n_train=30)
    with pytest.raises(ConfigError, match="val_fraction"):
        load_dataset("mnist", tmp_path)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="dataset"):
        load_dataset("imagenet")
    with pytest.raises(DataError, match="data-dir"):
        load_dataset("mnist")
    with pytest.raises(ConfigError, match="val_fraction"):
        load_dataset("digits", val_fraction=1.5)


def _fake_mnist_class(monkeypatch, fail: str | None = None):
    """torchvision's MNIST whose download writes tiny files (or fails with ``fail``)."""
    import torchvision

    real = torchvision.datasets.MNIST
    calls = []

    def fake(root, train=True, download=False):
        if download:
            calls.append(root)
            if fail:  # as torchvision does: a partial file, then the error
                (Path(root) / "MNIST" / "raw").mkdir(parents=True, exist_ok=True)
                (Path(root) / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").write_bytes(b"x")
                raise RuntimeError(fail)
            if not (Path(root) / "MNIST").exists():
                fake_mnist(Path(root))
        return real(root, train=train, download=False)

    monkeypatch.setattr(torchvision.datasets, "MNIST", fake)
    return calls


def test_download_creates_a_missing_folder(tmp_path, monkeypatch):
    calls = _fake_mnist_class(monkeypatch)
    target = tmp_path / "new" / "data"
    _load_raw.cache_clear()
    d = load_dataset("mnist", target, download=True)
    assert target.is_dir() and calls and len(d.y_test) == 30
    _load_raw.cache_clear()
    load_dataset("mnist", target, download=True)  # files present: nothing is fetched again
    assert len(calls) == 2


def test_failed_download_says_what_failed(tmp_path, monkeypatch):
    _fake_mnist_class(monkeypatch, fail="Error downloading train-images-idx3-ubyte.gz")
    _load_raw.cache_clear()
    with pytest.raises(DataError) as err:
        load_dataset("mnist", tmp_path / "data", download=True)
    msg = str(err.value)
    assert err.value.field == "download" and "Error downloading" in msg
    assert "pass --download" not in msg
    assert list(tmp_path.iterdir()) == []  # the folder it created is gone again
    (tmp_path / "kept").mkdir()
    _load_raw.cache_clear()
    with pytest.raises(DataError, match="could not download"):
        load_dataset("mnist", tmp_path / "kept", download=True)
    assert list((tmp_path / "kept").iterdir()) == []  # an existing folder stays, without
    # what the failed download wrote


def test_check_data_names_the_problem_without_reading(tmp_path):
    check_data("digits", None)  # embedded: nothing to check
    with pytest.raises(DataError, match="not a readable directory"):
        check_data("mnist", tmp_path / "absent")
    fake_mnist(tmp_path)
    check_data("mnist", tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="missing MNIST/raw/t10k-labels-idx1-ubyte"):
        check_data("mnist", tmp_path)
    check_data("mnist", tmp_path / "absent", download=True)  # would be created
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(DataError, match="cannot create"):
        check_data("mnist", blocker / "sub", download=True)


def test_train_size_draws_a_stratified_subset_and_keeps_val_and_test():
    full = load_dataset("digits", val_fraction=0.2)
    small = load_dataset("digits", val_fraction=0.2, train_size=300)
    assert len(small.x_train) == 300
    # the same validation and test examples (features standardised with the subset's stats)
    assert torch.equal(small.y_val, full.y_val) and torch.equal(small.y_test, full.y_test)
    assert small.x_val.shape == full.x_val.shape and small.x_test.shape == full.x_test.shape
    counts = torch.bincount(small.y_train, minlength=10)
    assert counts.min() >= 28 and counts.max() <= 32  # stratified: about 30 per class
    again = load_dataset("digits", val_fraction=0.2, train_size=300)
    assert torch.equal(again.x_train, small.x_train)  # drawn with split_seed
