"""The shared inner loop of the packed GEMM: a float32 tile of dequantized rows times ``X``.

Every format's ``gemm_f32`` kernel decodes ``TILE_ROWS`` rows of packed codes into a small
float32 buffer (L2-sized, per thread) and calls :func:`tile_matmul`, so weights stay packed in
memory and only one tile per thread is ever dequantized.

:func:`tile_matmul` is register-blocked 4 x 4 (four rows of ``X`` times four weight rows, sixteen
scalar accumulators), and compiled with ``fastmath={"reassoc", "contract"}``: reassociation lets
LLVM vectorize the reductions over ``k`` and contraction fuses multiply-adds. This is the one
place ternref allows it; the summation order is then unspecified, exactly as in BLAS, which is
what the NumPy twin (``X @ tile.T``) uses; the two agree within the K-derived float tolerance,
not bit for bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit

TILE_ROWS = 16
"""Weight rows dequantized per tile (16 x K float32: 256 KiB at K = 4096)."""


@njit(fastmath={"reassoc", "contract"}, cache=True)
def tile_matmul(xp, buf, nr, y, r0):
    """``y[:, r0:r0+nr] = xp @ buf[:nr].T`` with 4 x 4 register blocking."""
    n_x, length = xp.shape
    for n0 in range(0, n_x, 4):
        # rows past the end are clamped (computed twice, written once)
        xa = xp[n0]
        xb = xp[min(n0 + 1, n_x - 1)]
        xc = xp[min(n0 + 2, n_x - 1)]
        xd = xp[min(n0 + 3, n_x - 1)]
        for i0 in range(0, nr, 4):
            wa = buf[i0]
            wb = buf[min(i0 + 1, nr - 1)]
            wc = buf[min(i0 + 2, nr - 1)]
            wd = buf[min(i0 + 3, nr - 1)]
            aa = ab = ac = ad = np.float32(0.0)
            ba = bb = bc = bd = np.float32(0.0)
            ca = cb = cc = cd = np.float32(0.0)
            da = db = dc = dd = np.float32(0.0)
            for k in range(length):
                p = xa[k]
                q = xb[k]
                s = xc[k]
                t = xd[k]
                u = wa[k]
                v = wb[k]
                w = wc[k]
                z = wd[k]
                aa += p * u
                ab += p * v
                ac += p * w
                ad += p * z
                ba += q * u
                bb += q * v
                bc += q * w
                bd += q * z
                ca += s * u
                cb += s * v
                cc += s * w
                cd += s * z
                da += t * u
                db += t * v
                dc += t * w
                dd += t * z
            res = ((aa, ab, ac, ad), (ba, bb, bc, bd), (ca, cb, cc, cd), (da, db, dc, dd))
            for a in range(4):
                if n0 + a < n_x:
                    for b in range(4):
                        if i0 + b < nr:
                            y[n0 + a, r0 + i0 + b] = res[a][b]
