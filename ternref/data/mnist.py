"""Loaders for MNIST and Fashion-MNIST from the four standard IDX files.

Nothing is downloaded. The files (gzipped or not) are looked for, in this order:

1. ``path`` (the ``data_dir`` / ``--data-dir`` the caller gave): first its ``fashion-mnist``
   (or ``mnist``) subfolder, then the folder itself;
2. ``$TERNREF_DATA``: the same two places;
3. Fashion-MNIST only: ``/usr/share/datasets/fashion-mnist`` (Debian/Ubuntu package
   ``dataset-fashion-mnist``).

The first folder holding all four files wins. MNIST and Fashion-MNIST use the same file names, so
a folder holding MNIST passed to ``load_fashion_mnist`` would load MNIST: keep each data set in a
subfolder named after it. Both splits are checked (uint8 images (N, 28, 28), uint8 labels (N,)
with values 0..9, as many labels as images) and standardised with training-split statistics
(see ``ternref.data.dataset``).

References
----------
Y. LeCun, L. Bottou, Y. Bengio and P. Haffner, "Gradient-based learning applied to document
recognition", Proc. IEEE, 1998 (MNIST). H. Xiao, K. Rasul and R. Vollgraf, "Fashion-MNIST: a
Novel Image Dataset for Benchmarking Machine Learning Algorithms", 2017, arXiv:1708.07747.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ternref.data.dataset import Dataset, build
from ternref.data.idx import read_idx

#: Standard file stems; each may also carry a ``.gz`` suffix.
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
ENV_VAR = "TERNREF_DATA"
SYSTEM_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MNIST_CLASSES = tuple(str(k) for k in range(10))

_INFO = {
    "fashion-mnist": {
        "title": "Fashion-MNIST",
        "classes": FASHION_CLASSES,
        "how": (
            "  - Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist "
            f"(installs to {SYSTEM_FASHION_DIR}), or\n"
            "  - download the four files from "
            "https://github.com/zalandoresearch/fashion-mnist (folder data/fashion)"
        ),
    },
    "mnist": {
        "title": "MNIST",
        "classes": MNIST_CLASSES,
        "how": (
            "  - download the four files from the MNIST database "
            "(e.g. the mirror https://ossci-datasets.s3.amazonaws.com/mnist/)"
        ),
    },
}


def _candidates(name: str, path) -> list[tuple[Path, str]]:
    """Folders to search, in order, each with a note saying where it came from."""
    out = []
    if path is not None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
        root = Path(path).expanduser()
        out += [(root / name, "path argument"), (root, "path argument")]
    env = os.environ.get(ENV_VAR)
    if env:
        root = Path(env).expanduser()
        out += [(root / name, f"${ENV_VAR}"), (root, f"${ENV_VAR}")]
    if name == "fashion-mnist":
        out.append((Path(SYSTEM_FASHION_DIR), "system package dataset-fashion-mnist"))
    return out


def _files_in(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """The four files found in ``folder`` (raw preferred over .gz), and the stems missing."""
    found, missing = {}, []
    for key, stem in FILES.items():
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            missing.append(f"{stem}[.gz]")
    return found, missing


def find_files(name: str, path=None) -> dict[str, Path]:
    """Locate the four IDX files of ``name`` (``"fashion-mnist"`` or ``"mnist"``).

    Returns a dict with keys ``train_images``, ``train_labels``, ``test_images``,
    ``test_labels``. Raises ``FileNotFoundError`` listing every folder searched, why it did not
    qualify, and how to obtain the files.
    """
    report = []
    for folder, origin in _candidates(name, path):
        if not folder.is_dir():
            report.append(f"  {folder} ({origin}): no such folder")
            continue
        found, missing = _files_in(folder)
        if not missing:
            return found
        report.append(f"  {folder} ({origin}): missing {', '.join(missing)}")
    if os.environ.get(ENV_VAR) is None:
        report.append(f"  ${ENV_VAR} is not set")
    if path is None:
        report.append("  no path / --data-dir was given")
    info = _INFO[name]
    files = ", ".join(f"{s}.gz" for s in FILES.values())
    raise FileNotFoundError(
        f"{info['title']} not found. Searched, in order:\n"
        + "\n".join(report)
        + f"\nTo get it:\n{info['how']}:\n    {files}\n"
        "    into a folder and pass --data-dir FOLDER (data_dir=/path= in Python), or set "
        f"${ENV_VAR}=FOLDER (a '{name}' subfolder of it is searched first)."
    )


def _read_split(files: dict[str, Path], split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read and cross-check the images and labels of one split."""
    images_path, labels_path = files[f"{split}_images"], files[f"{split}_labels"]
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(
            f"{images_path}: expected uint8 images of shape (N, 28, 28), "
            f"got dtype {images.dtype} and shape {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(
            f"{labels_path}: expected uint8 labels of shape (N,), "
            f"got dtype {labels.dtype} and shape {labels.shape}"
        )
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels; they must agree"
        )
    if images.shape[0] == 0:
        raise ValueError(f"{images_path}: the {split} split is empty")
    if labels.max() > 9:
        bad = int(np.count_nonzero(labels > 9))
        raise ValueError(
            f"{labels_path}: labels must be in 0..9, got {bad} label(s) up to {labels.max()}"
        )
    return images, labels


def _load(name: str, path, normalize: bool) -> Dataset:
    files = find_files(name, path)
    return build(
        name,
        _read_split(files, "train"),
        _read_split(files, "test"),
        _INFO[name]["classes"],
        max_value=255,
        normalize=normalize,
    )


def load_fashion_mnist(path=None, normalize: bool = True) -> Dataset:
    """Fashion-MNIST: 60,000 training and 10,000 test 28x28 greyscale images, 10 classes.

    Parameters
    ----------
    path : str or os.PathLike, optional
        Folder with the four IDX files (or with a ``fashion-mnist`` subfolder holding them).
        Then ``$TERNREF_DATA`` and ``/usr/share/datasets/fashion-mnist`` are searched.
    normalize : bool, default True
        Standardise with the training split's pixel mean and std; otherwise pixels in [0, 1].

    Returns
    -------
    Dataset
        ``x_*`` float32 of shape (N, 1, 28, 28), ``y_*`` int64, ``classes`` the ten garment
        names (``"T-shirt/top"`` .. ``"Ankle boot"``).

    Raises
    ------
    FileNotFoundError
        If no searched folder holds all four files; the message lists them and how to get them.
    ValueError
        If a file is malformed or the images and labels disagree.

    References
    ----------
    H. Xiao, K. Rasul and R. Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking
    Machine Learning Algorithms", 2017, arXiv:1708.07747.
    """
    return _load("fashion-mnist", path, normalize)


def load_mnist(path=None, normalize: bool = True) -> Dataset:
    """MNIST handwritten digits: 60,000 training and 10,000 test 28x28 images, 10 classes.

    Parameters
    ----------
    path : str or os.PathLike, optional
        Folder with the four IDX files (or with an ``mnist`` subfolder holding them).
        Then ``$TERNREF_DATA`` is searched.
    normalize : bool, default True
        Standardise with the training split's pixel mean and std; otherwise pixels in [0, 1].

    Returns
    -------
    Dataset
        ``x_*`` float32 of shape (N, 1, 28, 28), ``y_*`` int64, classes ``"0"`` .. ``"9"``.

    Raises
    ------
    FileNotFoundError
        If no searched folder holds all four files; the message lists them and how to get them.
    ValueError
        If a file is malformed or the images and labels disagree.

    References
    ----------
    Y. LeCun, L. Bottou, Y. Bengio and P. Haffner, "Gradient-based learning applied to document
    recognition", Proceedings of the IEEE 86(11), 1998.
    """
    return _load("mnist", path, normalize)
