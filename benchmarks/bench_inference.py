"""Packed models against their float models, end to end (``ternref bench --models`` runs it).

Usage: ``python benchmarks/bench_inference.py [--formats i2 tq1] [--reps 15] [--threads N]``
The logic lives in :func:`ternref.packed.bench.run_models`; this script only calls it.
"""

import sys

from ternref.packed.bench import main

if __name__ == "__main__":
    sys.exit(main(["--models", *sys.argv[1:]]))
