"""Packed ternary kernels vs NumPy float32 BLAS (``ternref bench`` runs the same code).

Usage: ``python benchmarks/bench_kernels.py [--sizes 1024 4096 8192] [--batches 1 64] [--reps 9]``
The logic lives in :func:`ternref.packed.bench.run`; this script only calls it.
"""

import sys

from ternref.packed.bench import main

if __name__ == "__main__":
    sys.exit(main())
