"""The ``Dataset`` container shared by every loader, and the normalisation rule they all follow.

Every loader returns images as NCHW ``float32`` and labels as ``int64``. With ``normalize=True``
pixels are first scaled to [0, 1] (divided by their maximum raw value: 16 for digits, 255 for
(Fashion-)MNIST) and then standardised with ONE scalar mean and standard deviation computed on the
training split only, so that no statistic of the test split leaks into training:

    x = (pixel / max_value - mean_train) / std_train

``Dataset.mean`` and ``Dataset.std`` record the two numbers, so ``x * std + mean`` always recovers
the [0, 1] pixels (with ``normalize=False`` they are 0 and 1 and the images are the [0, 1] pixels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled image classification data set, already split into train and test.

    Attributes
    ----------
    name : str
        ``"digits"``, ``"fashion-mnist"`` or ``"mnist"``.
    x_train, x_test : ndarray, float32, shape (N, C, H, W)
        Images, NCHW.
    y_train, y_test : ndarray, int64, shape (N,)
        Class indices in ``0 .. n_classes - 1``.
    classes : tuple of str
        Human-readable class names; ``classes[k]`` names label ``k``.
    image_shape : tuple of int
        ``(C, H, W)`` of one image.
    mean, std : float
        The training-split statistics of the [0, 1] pixels used to standardise both splits
        (0.0 and 1.0 when the data were not standardised).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple
    image_shape: tuple
    mean: float = 0.0
    std: float = 1.0

    @property
    def n_classes(self) -> int:
        """Number of classes, ``len(classes)``."""
        return len(self.classes)

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
            f"image_shape={self.image_shape}, n_classes={self.n_classes}, "
            f"mean={self.mean:.4f}, std={self.std:.4f})"
        )


def pixel_stats(train_u8: np.ndarray, max_value: int) -> tuple[float, float]:
    """Mean and (population) standard deviation of ``train_u8 / max_value``, exactly.

    Computed from the histogram of the integer pixel values, so it is exact in float64 and needs
    no float copy of the (possibly 47-million-pixel) training images.
    """
    counts = np.bincount(train_u8.ravel(), minlength=max_value + 1).astype(np.float64)
    values = np.arange(counts.size, dtype=np.float64) / max_value
    n = counts.sum()
    mean = float(counts @ values / n)
    var = float(counts @ (values - mean) ** 2 / n)
    std = float(np.sqrt(var))
    # A constant image set has std 0; dividing by 1 instead keeps the output finite (no NaN).
    return mean, (std if std > 0.0 else 1.0)


def to_float(images_u8: np.ndarray, max_value: int, mean: float, std: float) -> np.ndarray:
    """``(images_u8 / max_value - mean) / std`` as float32 NCHW (a channel axis is inserted)."""
    x = images_u8.astype(np.float32)
    x /= np.float32(max_value)
    if mean != 0.0 or std != 1.0:
        x -= np.float32(mean)
        x /= np.float32(std)
    return x[:, None, :, :]


def build(
    name: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    classes: tuple,
    max_value: int,
    normalize: bool,
) -> Dataset:
    """Assemble a ``Dataset`` from uint8 (N, H, W) images and integer labels of both splits."""
    if not isinstance(normalize, (bool, np.bool_)):
        raise TypeError(f"normalize must be True or False, got {type(normalize).__name__}")
    (xtr, ytr), (xte, yte) = train, test
    mean, std = pixel_stats(xtr, max_value) if normalize else (0.0, 1.0)
    return Dataset(
        name=name,
        x_train=to_float(xtr, max_value, mean, std),
        y_train=ytr.astype(np.int64),
        x_test=to_float(xte, max_value, mean, std),
        y_test=yte.astype(np.int64),
        classes=tuple(classes),
        image_shape=(1, *xtr.shape[1:]),
        mean=mean,
        std=std,
    )
