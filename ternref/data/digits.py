"""The UCI optical handwritten digits (8x8, 1,797 images), embedded in the package.

The images ship inside ternref (``digits.npz``, about 25 KB) so tutorials and tests can train a
real classifier with no download. They were produced by ``scripts/make_digits.py`` from
scikit-learn's bundled copy of the data set; attribution and licence (CC BY 4.0) are in
``DIGITS_LICENSE.txt`` next to this file.

Integrity: ``digits.npz`` holds exactly two arrays, ``images`` (uint8, (1797, 8, 8), values
0..16) and ``labels`` (uint8, (1797,), values 0..9). Their SHA-256, computed by
``arrays_sha256`` over, for each array in that order, the UTF-8 bytes of
``"<name>|<dtype.str>|<shape>\\n"`` followed by the array's C-order bytes, is recorded below as
``DIGITS_SHA256``; loading refuses a file whose arrays do not hash to it.

The split: for each class separately, the images are ordered by a key drawn from
``numpy.random.default_rng(seed).random`` and the first ``n_test[c]`` of them go to the test
split, where the per-class test counts ``n_test[c]`` are the largest-remainder apportionment of
``round(test_fraction * 1797)`` over the class sizes (so the split is stratified and the total
is exact). With the defaults (``test_fraction=0.2, seed=0``) this gives 1,438 training and 359
test images, the same on every machine. Each split keeps the images in their original file order.

References
----------
E. Alpaydin and C. Kaynak, "Optical Recognition of Handwritten Digits", UCI Machine Learning
Repository, 1998, CC BY 4.0, https://doi.org/10.24432/C50P49.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ternref import _validate as check
from ternref.data.dataset import Dataset, build

DIGITS_PATH = Path(__file__).with_name("digits.npz")
DIGITS_SHA256 = "91500e97113204c7b5a66fc10c4690d45fffd99297ed603694908ccff70d29b6"
N_IMAGES = 1797
CLASSES = tuple(str(k) for k in range(10))


def arrays_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    """SHA-256 (hex) of the two arrays with their names, dtypes and shapes (module docstring)."""
    h = hashlib.sha256()
    for name, arr in (("images", images), ("labels", labels)):
        h.update(f"{name}|{arr.dtype.str}|{tuple(arr.shape)}\n".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def read_digits_npz(path: str | os.PathLike = DIGITS_PATH) -> tuple[np.ndarray, np.ndarray]:
    """Read and verify the embedded digits file; return ``(images, labels)`` as uint8 arrays.

    Raises ``ValueError`` naming the file if it holds other arrays, other dtypes or shapes, or
    arrays whose SHA-256 differs from ``DIGITS_SHA256``.
    """
    with np.load(path, allow_pickle=False) as f:
        keys = sorted(f.files)
        if keys != ["images", "labels"]:
            raise ValueError(f"{path}: expected arrays ['images', 'labels'], found {keys}")
        images, labels = f["images"], f["labels"]
    for name, arr, shape in (
        ("images", images, (N_IMAGES, 8, 8)),
        ("labels", labels, (N_IMAGES,)),
    ):
        if arr.dtype != np.uint8 or arr.shape != shape:
            raise ValueError(
                f"{path}: expected {name} of dtype uint8 and shape {shape}, "
                f"got dtype {arr.dtype} and shape {arr.shape}"
            )
    digest = arrays_sha256(images, labels)
    if digest != DIGITS_SHA256:
        raise ValueError(
            f"{path}: integrity check failed, SHA-256 of the arrays is {digest}, "
            f"expected {DIGITS_SHA256}; the file is corrupt or was modified "
            "(regenerate it with scripts/make_digits.py)"
        )
    return images, labels


def stratified_split(
    labels: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)`` of a stratified split, each sorted (see module docstring).

    Parameters
    ----------
    labels : ndarray of int, shape (N,)
    test_fraction : float
        Fraction of all samples that go to the test split, in [0, 1).
    rng : numpy.random.Generator
        Source of the random order within each class.
    """
    classes, sizes = np.unique(labels, return_counts=True)
    n_test_total = int(round(test_fraction * labels.size))
    # Largest-remainder apportionment: floor of each class's quota, then one more for the
    # classes with the largest fractional parts (ties to the smaller class label) until the
    # total is exact.
    quota = sizes * (n_test_total / labels.size)
    n_test = np.floor(quota).astype(np.int64)
    short = n_test_total - int(n_test.sum())
    order = np.argsort(-(quota - n_test), kind="stable")
    n_test[order[:short]] += 1
    # One key per sample, drawn once in file order, so the split depends only on the seed.
    keys = rng.random(labels.size)
    test = []
    for c, k in zip(classes, n_test):
        members = np.flatnonzero(labels == c)
        test.append(members[np.argsort(keys[members], kind="stable")[:k]])
    test_idx = np.sort(np.concatenate(test))
    train_mask = np.ones(labels.size, dtype=bool)
    train_mask[test_idx] = False
    return np.flatnonzero(train_mask), test_idx


def load_digits(
    normalize: bool = True, test_fraction: float = 0.2, seed: int = 0, *, _path=None
) -> Dataset:
    """The embedded 8x8 handwritten digits, split into train and test.

    Parameters
    ----------
    normalize : bool, default True
        Standardise with the training split's pixel mean and std (see ``ternref.data.dataset``);
        otherwise return pixels scaled to [0, 1].
    test_fraction : float, default 0.2
        Fraction of the 1,797 images held out for testing, in [0, 1).
    seed : int, default 0
        Seed of the stratified split. The default gives 1,438 training and 359 test images.
    _path : path, optional
        Internal (tests): read this ``.npz`` instead of the embedded one; it must still pass the
        integrity check.

    Returns
    -------
    Dataset
        ``x_*`` float32 of shape (N, 1, 8, 8), ``y_*`` int64, classes ``"0"`` .. ``"9"``.

    References
    ----------
    E. Alpaydin and C. Kaynak, "Optical Recognition of Handwritten Digits", UCI Machine Learning
    Repository, 1998, https://doi.org/10.24432/C50P49.
    """
    test_fraction = check.real_number(test_fraction, "test_fraction", low=0.0, high=1.0)
    if test_fraction >= 1.0:
        raise ValueError(
            f"test_fraction must be < 1 (some data must remain for training), got {test_fraction}"
        )
    seed = check.integer(seed, "seed", low=0)
    images, labels = read_digits_npz(DIGITS_PATH if _path is None else _path)
    train, test = stratified_split(labels, test_fraction, np.random.default_rng(seed))
    if train.size == 0:
        raise ValueError(
            f"test_fraction={test_fraction} leaves no training images out of {labels.size}"
        )
    return build(
        "digits",
        (images[train], labels[train]),
        (images[test], labels[test]),
        CLASSES,
        max_value=16,
        normalize=normalize,
    )
