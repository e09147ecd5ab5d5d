"""(Fashion-)MNIST loaders: file search, the not-found message, checks, the real Fashion-MNIST."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

import ternref.data.mnist as mnist
from ternref.data import load_dataset, load_fashion_mnist, load_mnist, read_idx

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def idx_u8(arr):
    """uint8 IDX bytes written with struct, independently of ternref."""
    return (
        b"\x00\x00\x08"
        + bytes([arr.ndim])
        + struct.pack(f">{arr.ndim}I", *arr.shape)
        + (arr.astype(np.uint8).tobytes())
    )


def make_fake(folder, *, n_train=12, n_test=5, seed=0, gz=(True, False, True, False), **over):
    """Write four small, valid IDX files; ``over`` replaces any of the four arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(n_test, dtype=np.uint8) % 10,
    }
    for key, arr in over.items():  # e.g. train_images -> train-images-idx3-ubyte
        (stem,) = [s for s in arrays if s.startswith(key.replace("_", "-") + "-")]
        arrays[stem] = arr
    folder.mkdir(parents=True, exist_ok=True)
    for (stem, arr), compress in zip(arrays.items(), gz):
        data = idx_u8(arr)
        if compress:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return arrays


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No $TERNREF_DATA and no system Fashion-MNIST folder."""
    monkeypatch.delenv("TERNREF_DATA", raising=False)
    monkeypatch.setattr(mnist, "SYSTEM_FASHION_DIR", tmp_path / "no-system-dir")
    return tmp_path


# --- search and the not-found message -------------------------------------------------------


def test_not_found_lists_every_place_and_how_to_get_the_files(isolated, monkeypatch):
    env = isolated / "env"
    env.mkdir()
    monkeypatch.setenv("TERNREF_DATA", str(env))
    given = isolated / "given"
    with pytest.raises(FileNotFoundError) as e:
        load_fashion_mnist(given)
    msg = str(e.value)
    for place in (
        given / "fashion-mnist",
        given,
        env / "fashion-mnist",
        env,
        isolated / "no-system-dir",
    ):
        assert f"  {place} (" in msg
    assert "$TERNREF_DATA" in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "--data-dir" in msg
    for stem in STEMS:
        assert f"{stem}.gz" in msg
    # Searched in the documented order.
    order = [msg.index(f"  {p} (") for p in (given / "fashion-mnist", given, env / "fashion-mnist")]
    assert order == sorted(order)


def test_not_found_says_when_nothing_was_configured(isolated):
    with pytest.raises(FileNotFoundError) as e:
        load_mnist()
    msg = str(e.value)
    assert "MNIST not found" in msg
    assert "$TERNREF_DATA is not set" in msg and "no path / --data-dir was given" in msg
    assert "--data-dir" in msg
    assert "no-system-dir" not in msg  # MNIST has no system package folder


def test_incomplete_folder_names_the_missing_files(isolated):
    make_fake(isolated / "d")
    (isolated / "d" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing t10k-labels-idx1-ubyte\[\.gz\]"):
        load_mnist(isolated / "d")


def test_loads_from_path_argument_raw_and_gz(isolated):
    arrays = make_fake(isolated / "d")
    ds = load_mnist(isolated / "d", normalize=False)
    assert ds.name == "mnist" and ds.classes == tuple("0123456789")
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_test.shape == (5, 1, 28, 28)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.image_shape == (1, 28, 28)
    np.testing.assert_array_equal(ds.x_train[:, 0] * 255, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])


def test_env_subfolder_is_searched_before_env_root(isolated, monkeypatch):
    make_fake(isolated / "fashion-mnist", n_train=10)
    make_fake(isolated, n_train=20)
    monkeypatch.setenv("TERNREF_DATA", str(isolated))
    assert load_fashion_mnist().x_train.shape[0] == 10
    # MNIST has no "mnist" subfolder here, so it falls back to the root.
    assert load_mnist().x_train.shape[0] == 20


def test_path_argument_wins_over_env(isolated, monkeypatch):
    make_fake(isolated / "env", n_train=10)
    make_fake(isolated / "arg" / "mnist", n_train=30)
    monkeypatch.setenv("TERNREF_DATA", str(isolated / "env"))
    assert load_mnist(isolated / "arg").x_train.shape[0] == 30
    assert load_mnist(isolated / "empty").x_train.shape[0] == 10  # falls through to env
    assert load_dataset("mnist", data_dir=isolated / "arg").x_train.shape[0] == 30


def test_system_folder_is_searched_last_for_fashion(isolated, monkeypatch):
    system = isolated / "system"
    make_fake(system, n_train=11)
    monkeypatch.setattr(mnist, "SYSTEM_FASHION_DIR", system)
    ds = load_fashion_mnist()
    assert ds.x_train.shape[0] == 11
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"


def test_normalisation_uses_training_split_only(isolated):
    # Train pixels all 51 (0.2), test pixels all 255: the test split must not move the statistics.
    rng = np.random.default_rng(3)
    train = np.where(rng.random((8, 28, 28)) < 0.5, 51, 0).astype(np.uint8)
    test = np.full((4, 28, 28), 255, np.uint8)
    make_fake(isolated / "d", n_train=8, n_test=4, train_images=train, t10k_images=test)
    ds = load_mnist(isolated / "d")
    t = train.astype(np.float64) / 255
    assert ds.mean == pytest.approx(t.mean(), rel=1e-12)
    assert ds.std == pytest.approx(t.std(), rel=1e-12)
    np.testing.assert_allclose(ds.x_test, (1.0 - t.mean()) / t.std(), rtol=1e-6)


def test_constant_images_do_not_give_nan(isolated):
    zeros = np.zeros((6, 28, 28), np.uint8)
    make_fake(isolated / "d", n_train=6, train_images=zeros)
    ds = load_mnist(isolated / "d")
    assert ds.std == 1.0 and np.all(np.isfinite(ds.x_train)) and np.all(np.isfinite(ds.x_test))


# --- content checks ---------------------------------------------------------------------------


def test_label_count_must_match_image_count(isolated):
    make_fake(isolated / "d", n_train=12, train_labels=np.zeros(11, np.uint8))
    with pytest.raises(ValueError, match="holds 12 images but .* holds 11 labels"):
        load_mnist(isolated / "d")


def test_labels_must_be_digits(isolated):
    make_fake(isolated / "d", t10k_labels=np.array([0, 1, 10, 3, 4], np.uint8))
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.9, got 1 label\(s\) up to 10"):
        load_mnist(isolated / "d")


def test_images_must_be_28x28(isolated):
    make_fake(isolated / "d", n_train=3, train_images=np.zeros((3, 27, 28), np.uint8))
    with pytest.raises(ValueError, match=r"shape \(N, 28, 28\), got dtype uint8 and shape"):
        load_mnist(isolated / "d")


def test_labels_and_images_swapped_are_refused(isolated):
    d = isolated / "d"
    make_fake(d, gz=(False, False, False, False))
    images, labels = d / STEMS[0], d / STEMS[1]
    tmp = d / "swap"
    images.rename(tmp)
    labels.rename(images)
    tmp.rename(labels)
    with pytest.raises(ValueError, match="expected uint8 images of shape"):
        load_mnist(d)


def test_broken_file_is_refused_with_its_name(isolated):
    d = isolated / "d"
    make_fake(d, gz=(False, False, False, False))
    path = d / STEMS[2]
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated") as e:
        load_mnist(d)
    assert str(path) in str(e.value)


def test_bad_path_type(isolated):
    with pytest.raises(TypeError, match="path must be a str or os.PathLike"):
        load_mnist(42)


# --- the real Fashion-MNIST -----------------------------------------------------------------


@pytest.fixture(scope="module")
def fashion():
    if not all((SYSTEM_DIR / f"{s}.gz").is_file() or (SYSTEM_DIR / s).is_file() for s in STEMS):
        pytest.skip(
            f"Fashion-MNIST not installed at {SYSTEM_DIR} "
            "(sudo apt-get install dataset-fashion-mnist; CI installs it)"
        )
    return load_fashion_mnist(SYSTEM_DIR)


def test_real_fashion_shapes_and_classes(fashion):
    assert fashion.name == "fashion-mnist"
    assert fashion.x_train.shape == (60000, 1, 28, 28) and fashion.x_test.shape == (
        10000,
        1,
        28,
        28,
    )
    assert fashion.x_train.dtype == np.float32 and fashion.y_train.dtype == np.int64
    assert fashion.classes == (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    )  # fmt: skip
    assert np.bincount(fashion.y_train).tolist() == [6000] * 10
    assert np.bincount(fashion.y_test).tolist() == [1000] * 10


def test_real_fashion_statistics(fashion):
    # Widely quoted training-set statistics of Fashion-MNIST in [0, 1]: mean 0.2860, std 0.3530.
    assert fashion.mean == pytest.approx(0.2860, abs=5e-5)
    assert fashion.std == pytest.approx(0.3530, abs=5e-5)
    assert abs(fashion.x_train.mean(dtype=np.float64)) < 1e-4
    assert fashion.x_train.std(dtype=np.float64) == pytest.approx(1.0, abs=1e-4)


def test_real_fashion_matches_the_raw_files(fashion):
    raw = read_idx(SYSTEM_DIR / "t10k-images-idx3-ubyte.gz")
    first = raw[:100].astype(np.float64) / 255
    np.testing.assert_allclose(
        fashion.x_test[:100, 0], (first - fashion.mean) / fashion.std, rtol=1e-5, atol=1e-5
    )
