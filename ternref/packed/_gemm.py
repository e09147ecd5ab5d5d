"""The shared inner loops of the packed GEMM: a tile of decoded weight rows times ``X``.

Every format's ``gemm_f32`` kernel decodes ``TILE_ROWS`` rows of packed codes into a small
float32 buffer (L2-sized, per thread) and calls :func:`tile_matmul`, so weights stay packed in
memory and only one tile per thread is ever dequantized.

:func:`tile_matmul` is register-blocked 4 x 4 (four rows of ``X`` times four weight rows, sixteen
scalar accumulators), and compiled with ``fastmath={"reassoc", "contract"}``: reassociation lets
LLVM vectorize the reductions over ``k`` and contraction fuses multiply-adds. This is the one
place ternref allows it; the summation order is then unspecified, exactly as in BLAS, which is
what the NumPy twin (``X @ tile.T``) uses; the two agree within the K-derived float tolerance,
not bit for bit.

With int8 activations the tile holds the *signed codes* (int8 -1/0/+1, and ``|c|`` for asymmetric
scales) and :func:`tile_dot_i8` forms exact int32 dot products per scale group; :func:`i8_epilogue`
applies the scales in float64. Integer sums are exact in any order, so kernel and twin agree bit
for bit. A plain loop is enough here: ``acc += int32(x) * int32(c)`` over contiguous int8 rows is a
pattern LLVM vectorizes by itself (measured: 4x4 register blocking gave nothing over it).
"""

from __future__ import annotations

import numpy as np

from ternref._jit import njit

TILE_ROWS = 16
"""Weight rows dequantized per tile (16 x K float32: 256 KiB at K = 4096)."""


@njit(fastmath={"reassoc", "contract"})
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


@njit
def tile_dot_i8(xq, buf, nr, seg, out):
    """``out[n, i, g] = sum_{k in group g} xq[n, k] * buf[i, k]`` exactly, in int32.

    ``xq`` int8 (N, L), ``buf`` int8 (>= nr, L), groups of ``seg`` consecutive columns. With
    ``|xq| <= 127`` and ``|buf| <= 1`` no partial sum overflows int32 below K = 2^24.
    """
    n_x, length = xq.shape
    for g in range(length // seg):
        k0 = g * seg
        for n in range(n_x):
            xs = xq[n, k0 : k0 + seg]  # 0-based slices: what LLVM vectorizes
            for i in range(nr):
                ws = buf[i, k0 : k0 + seg]
                acc = np.int32(0)
                for k in range(seg):
                    acc += np.int32(np.int32(xs[k]) * np.int32(ws[k]))
                out[n, i, g] = acc


@njit
def i8_epilogue(d, s, xsumq, inv_s, sp, sn, so, r0, nr, asym, has_offset, y):
    """``y[n, r0 + i]`` from the exact group sums of one tile (float64 arithmetic).

    ``d = sum c xq`` and, when ``asym``, ``s = sum |c| xq``: then the +1 side is
    ``P = (s + d) / 2`` and the -1 side ``N = (s - d) / 2`` (both exact integers), and a group
    contributes ``sp P - sn N``; symmetric groups contribute ``sp d``; an offset adds
    ``so sum(xq)``. The row total is rescaled by ``inv_s[n] = max|x| / 127``.
    """
    n_x = d.shape[0]
    n_groups = d.shape[2]
    for n in range(n_x):
        for i in range(nr):
            r = r0 + i
            acc = 0.0
            for g in range(n_groups):
                if asym:
                    pos = (np.int64(s[n, i, g]) + d[n, i, g]) // 2
                    neg = (np.int64(s[n, i, g]) - d[n, i, g]) // 2
                    acc += sp[r, g] * np.float64(pos) - sn[r, g] * np.float64(neg)
                else:
                    acc += sp[r, g] * np.float64(d[n, i, g])
                if has_offset:
                    acc += so[r, g] * np.float64(xsumq[n, g])
            y[n, r] = acc * inv_s[n]
