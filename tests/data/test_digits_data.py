"""The embedded digits: contents, integrity check, seeded stratified split, normalisation."""

import dataclasses
import hashlib
import shutil
from collections import Counter

import numpy as np
import pytest

from ternref.data import DATASETS, Dataset, load_dataset, load_digits
from ternref.data.digits import DIGITS_PATH, DIGITS_SHA256


def raw_digits():
    """The stored arrays, read with plain np.load (no ternref code involved)."""
    with np.load(DIGITS_PATH, allow_pickle=False) as f:
        return f["images"], f["labels"]


def test_file_is_small_and_holds_the_uci_digits():
    images, labels = raw_digits()
    assert DIGITS_PATH.stat().st_size < 100_000
    assert images.dtype == np.uint8 and images.shape == (1797, 8, 8)
    assert labels.dtype == np.uint8 and labels.shape == (1797,)
    assert images.min() == 0 and images.max() == 16
    # Class sizes of the UCI optdigits test set (optdigits.tes), as published.
    assert np.bincount(labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_recorded_hash_follows_the_documented_recipe():
    images, labels = raw_digits()
    h = hashlib.sha256()
    h.update(b"images|" + b"|u1|(1797, 8, 8)\n")
    h.update(images.tobytes())
    h.update(b"labels|" + b"|u1|(1797,)\n")
    h.update(labels.tobytes())
    assert h.hexdigest() == DIGITS_SHA256


def test_shapes_dtypes_classes():
    ds = load_digits()
    assert isinstance(ds, Dataset)
    assert ds.name == "digits"
    assert ds.x_train.shape == (1438, 1, 8, 8) and ds.x_test.shape == (359, 1, 8, 8)
    assert ds.x_train.dtype == np.float32 and ds.x_test.dtype == np.float32
    assert ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    assert ds.y_train.shape == (1438,) and ds.y_test.shape == (359,)
    assert ds.classes == tuple("0123456789") and ds.n_classes == 10
    assert ds.image_shape == (1, 8, 8)
    r = repr(ds)
    assert "digits" in r and "1438" in r and "359" in r and len(r) < 200
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.name = "other"


def test_split_is_a_partition_of_the_file():
    images, labels = raw_digits()
    ds = load_digits(normalize=False)
    # Undo the [0, 1] scaling (v / 16 is exact in float32) and compare sample multisets.
    split = np.concatenate([ds.x_train, ds.x_test])[:, 0] * 16
    assert np.array_equal(split, np.round(split))
    split_labels = np.concatenate([ds.y_train, ds.y_test])
    got = Counter(zip(map(bytes, split.astype(np.uint8)), split_labels.tolist()))
    want = Counter(zip(map(bytes, images), labels.tolist()))
    assert got == want


def test_same_seed_same_split_other_seed_other_split():
    a, b, c = load_digits(seed=0), load_digits(seed=0), load_digits(seed=1)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.y_test, c.y_test)


def test_default_split_is_pinned():
    # Regression pin: the default split must be the same on every machine and release.
    ds = load_digits(normalize=False)
    pixels = np.round(ds.x_test * 16).astype(np.uint8)
    digest = hashlib.sha256(pixels.tobytes() + ds.y_test.tobytes()).hexdigest()
    assert digest == PINNED_DEFAULT_TEST_SPLIT


PINNED_DEFAULT_TEST_SPLIT = "6b09acf320316d72f1a9cc6433ddb081381c0dcc513952f31c0ecb0b7622377d"


@pytest.mark.parametrize("fraction", [0.2, 0.1, 0.5, 0.33])
@pytest.mark.parametrize("seed", [0, 7])
def test_split_is_stratified(fraction, seed):
    _, labels = raw_digits()
    sizes = np.bincount(labels)
    ds = load_digits(test_fraction=fraction, seed=seed)
    n_test = np.bincount(ds.y_test, minlength=10)
    assert n_test.sum() == round(fraction * 1797)
    # Each class contributes its share, up to rounding.
    assert np.all(np.abs(n_test - fraction * sizes) < 1)
    assert np.array_equal(np.bincount(ds.y_train, minlength=10) + n_test, sizes)


def test_zero_test_fraction_gives_empty_test_split():
    ds = load_digits(test_fraction=0.0)
    assert ds.x_train.shape[0] == 1797 and ds.x_test.shape == (0, 1, 8, 8)


def test_normalisation_uses_training_statistics_only():
    plain = load_digits(normalize=False)
    assert plain.mean == 0.0 and plain.std == 1.0
    assert plain.x_train.min() == 0.0 and plain.x_train.max() == 1.0
    train01 = plain.x_train.astype(np.float64)
    mean, std = train01.mean(), train01.std()
    everything = np.concatenate([train01, plain.x_test.astype(np.float64)])
    assert abs(everything.mean() - mean) > 1e-6  # the two candidates are distinguishable

    ds = load_digits()
    assert ds.mean == pytest.approx(mean, rel=1e-12)
    assert ds.std == pytest.approx(std, rel=1e-12)
    np.testing.assert_allclose(ds.x_train, (train01 - mean) / std, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        ds.x_test, (plain.x_test.astype(np.float64) - mean) / std, rtol=1e-5, atol=1e-6
    )
    assert abs(ds.x_train.mean(dtype=np.float64)) < 1e-6
    assert ds.x_train.std(dtype=np.float64) == pytest.approx(1.0, abs=1e-6)


def test_unmodified_copy_loads(tmp_path):
    copy = tmp_path / "digits.npz"
    shutil.copy(DIGITS_PATH, copy)
    assert np.array_equal(load_digits(_path=copy).y_test, load_digits().y_test)


def test_tampered_file_is_refused(tmp_path):
    images, labels = raw_digits()
    images = images.copy()
    images[100, 3, 4] ^= 1
    bad = tmp_path / "digits.npz"
    np.savez_compressed(bad, images=images, labels=labels)
    with pytest.raises(ValueError, match="integrity check failed") as e:
        load_digits(_path=bad)
    assert str(bad) in str(e.value)


def test_relabelled_file_is_refused(tmp_path):
    images, labels = raw_digits()
    labels = labels.copy()
    labels[0] = (labels[0] + 1) % 10
    bad = tmp_path / "digits.npz"
    np.savez_compressed(bad, images=images, labels=labels)
    with pytest.raises(ValueError, match="integrity check failed"):
        load_digits(_path=bad)


def test_wrong_arrays_or_dtypes_are_refused(tmp_path):
    images, labels = raw_digits()
    extra = tmp_path / "extra.npz"
    np.savez_compressed(extra, images=images, labels=labels, more=labels)
    with pytest.raises(ValueError, match=r"expected arrays \['images', 'labels'\]"):
        load_digits(_path=extra)
    wide = tmp_path / "wide.npz"
    np.savez_compressed(wide, images=images.astype(np.int16), labels=labels)
    with pytest.raises(ValueError, match="images of dtype uint8"):
        load_digits(_path=wide)


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        ({"test_fraction": 1.0}, ValueError, "test_fraction must be < 1"),
        ({"test_fraction": -0.1}, ValueError, "test_fraction must be >= 0"),
        ({"test_fraction": 0.9999}, ValueError, "leaves no training images"),
        ({"test_fraction": "0.2"}, TypeError, "test_fraction must be a real number"),
        ({"seed": -1}, ValueError, "seed must be >= 0"),
        ({"seed": 1.5}, TypeError, "seed must be an integer"),
        ({"normalize": "yes"}, TypeError, "normalize must be True or False"),
    ],
)
def test_bad_arguments(kwargs, error, fragment):
    with pytest.raises(error, match=fragment):
        load_digits(**kwargs)


def test_load_dataset_dispatch():
    assert DATASETS == ("digits", "fashion-mnist", "mnist")
    assert np.array_equal(load_dataset("digits").x_test, load_digits().x_test)
    with pytest.raises(ValueError, match=r"'digits', 'fashion-mnist', 'mnist'.*'cifar10'"):
        load_dataset("cifar10")
