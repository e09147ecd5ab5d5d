"""Hypothesis strategies shared by the packed tests: random Ternary objects of every kind."""

import math

import numpy as np
from hypothesis import strategies as st

from ternref import Ternary

# K values around the block sizes (128 i2, 160 tq1, 64 bitplanes)
AWKWARD_K = (1, 5, 31, 63, 64, 65, 127, 128, 129, 159, 160, 161, 255, 257, 320)


@st.composite
def ternaries(draw, shapes=None, max_rows=9, dtype=None, fill=None):
    """A Ternary with random codes, granularity, symmetric/asymmetric scales and offset.

    ``fill`` in {None, "zero", "one", "minus"} forces all codes to one value.
    """
    if shapes is None:
        m = draw(st.integers(1, max_rows))
        k = draw(st.sampled_from(AWKWARD_K))
        shape = (m, k)
    else:
        shape = draw(shapes)
    dtype = dtype or draw(st.sampled_from([np.float32, np.float64]))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    if fill is None:
        density = draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
        mag = rng.random(shape) < density
        codes = np.where(mag, rng.choice(np.array([-1, 1], np.int8), shape), 0).astype(np.int8)
    else:
        codes = np.full(shape, {"zero": 0, "one": 1, "minus": -1}[fill], np.int8)
    gran = draw(st.sampled_from(["tensor", "channel", "group"]))
    k = math.prod(shape[1:]) if len(shape) > 1 else 1
    gs = draw(st.sampled_from([1, 3, 32, 64, 100, 128, 160, 256])) if gran == "group" else None
    sshape = Ternary.scale_shape(shape, gran, gs)
    kind = draw(st.sampled_from(["symmetric", "asymmetric", "offset"]))
    ap = (rng.random(sshape) * 2).astype(dtype)
    an = (rng.random(sshape) * 2).astype(dtype) if kind != "symmetric" else None
    off = rng.standard_normal(sshape).astype(dtype) if kind == "offset" else None
    if draw(st.booleans()) and gran != "tensor":
        ap.flat[0] = 0.0  # a zero scale must not break anything
    del k
    return Ternary(codes, ap, an, granularity=gran, group_size=gs, offset=off)
