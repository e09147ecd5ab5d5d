"""Data sets for training and testing ternary networks.

- ``load_digits``: 1,797 8x8 handwritten digits embedded in the package (no download).
- ``load_fashion_mnist`` / ``load_mnist``: the 28x28 data sets from their IDX files on disk.
- ``load_dataset(name)``: the same, by name (``DATASETS``).
- ``read_idx``: the IDX file reader; ``batches``: mini-batches for one epoch.
- ``load_text``: byte tokens of *Pride and Prejudice* (embedded), of the six Jane Austen novels
  (``TEXTS``, with Debian's ``r-cran-janeaustenr``) or of a UTF-8 file, with a held-out split;
  ``sample_batch`` / ``sequential_batches``: language-model batches; ``bits_per_byte``.

Every image loader returns a ``Dataset`` with NCHW float32 images standardised by training-split
statistics and int64 labels.
"""

from __future__ import annotations

from ternref.data.batching import batches
from ternref.data.dataset import Dataset
from ternref.data.digits import load_digits
from ternref.data.idx import read_idx
from ternref.data.mnist import load_fashion_mnist, load_mnist
from ternref.data.text import (
    TEXTS,
    TextCorpus,
    bits_per_byte,
    load_text,
    sample_batch,
    sequential_batches,
)

#: Names accepted by ``load_dataset``.
DATASETS = ("digits", "fashion-mnist", "mnist")


def load_dataset(name: str, data_dir=None, *, normalize: bool = True) -> Dataset:
    """Load a data set by name.

    Parameters
    ----------
    name : str
        One of ``DATASETS``: ``"digits"`` (embedded), ``"fashion-mnist"``, ``"mnist"``.
    data_dir : str or os.PathLike, optional
        Folder with the IDX files (``--data-dir``); ignored for ``"digits"``.
    normalize : bool, default True
        Standardise with training-split statistics.

    Returns
    -------
    Dataset
    """
    if name == "digits":
        return load_digits(normalize=normalize)
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir, normalize=normalize)
    if name == "mnist":
        return load_mnist(data_dir, normalize=normalize)
    raise ValueError(f"name must be one of {list(DATASETS)}, got {name!r}")


__all__ = [
    "DATASETS",
    "TEXTS",
    "Dataset",
    "TextCorpus",
    "batches",
    "bits_per_byte",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
    "load_text",
    "read_idx",
    "sample_batch",
    "sequential_batches",
]
