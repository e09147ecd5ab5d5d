"""Build ``ternref/data/digits.npz`` from scikit-learn's bundled UCI optical digits.

Build-time tool only: scikit-learn is needed to run this script, never to use ternref.

    python scripts/make_digits.py            # writes the file and prints its SHA-256
    python scripts/make_digits.py --check    # rebuilds in memory and compares with the file

The printed SHA-256 (of the arrays, see ``ternref.data.digits.arrays_sha256``) must equal
``DIGITS_SHA256`` in ``ternref/data/digits.py``; paste it there if the data ever change.

Source: E. Alpaydin and C. Kaynak, "Optical Recognition of Handwritten Digits", UCI Machine
Learning Repository, 1998, CC BY 4.0, https://doi.org/10.24432/C50P49 (the 8x8 test-set
version that scikit-learn ships as ``sklearn/datasets/data/digits.csv.gz``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from ternref.data.digits import DIGITS_PATH, DIGITS_SHA256, arrays_sha256


def build_arrays() -> tuple[np.ndarray, np.ndarray]:
    bunch = load_digits()
    raw_images, raw_labels = np.asarray(bunch.images), np.asarray(bunch.target)
    # The bundled data are integer counts 0..16 stored as float64; refuse anything else.
    if raw_images.shape != (1797, 8, 8) or raw_labels.shape != (1797,):
        sys.exit(f"unexpected shapes {raw_images.shape}, {raw_labels.shape}")
    if not (
        np.all(raw_images == np.round(raw_images))
        and raw_images.min() >= 0
        and raw_images.max() <= 16
    ):
        sys.exit("images are not integers in 0..16")
    if not (raw_labels.min() >= 0 and raw_labels.max() <= 9):
        sys.exit("labels are not in 0..9")
    return raw_images.astype(np.uint8), raw_labels.astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DIGITS_PATH)
    parser.add_argument("--check", action="store_true", help="compare with the existing file")
    args = parser.parse_args()
    images, labels = build_arrays()
    digest = arrays_sha256(images, labels)
    if args.check:
        with np.load(args.out, allow_pickle=False) as f:
            same = np.array_equal(f["images"], images) and np.array_equal(f["labels"], labels)
        print(f"{args.out}: {'identical' if same else 'DIFFERENT'}; sha256 {digest}")
        sys.exit(0 if same and digest == DIGITS_SHA256 else 1)
    np.savez_compressed(args.out, images=images, labels=labels)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    print(f"sha256 of arrays: {digest}")
    if digest != DIGITS_SHA256:
        print("NOTE: update DIGITS_SHA256 in ternref/data/digits.py to the value above")


if __name__ == "__main__":
    main()
