"""The effect on a model's logits of one Q8_K rounding decision taken the other way.

Rounding activations to the Q8_K grid (:mod:`ternref.interop.q8k`) is discontinuous: an
activation lying next to a rounding boundary goes to one grid point or its neighbour depending on
the last bits of the computation that produced it, so two correct implementations (ternref's
NumPy, llama.cpp's SIMD kernels: other summation orders, another expf) now and then disagree by one
whole step ``d_b = amax_b / 127`` on one activation, and everything downstream of it differs (at
that position and, through the KV cache, at later ones). :func:`nearest_tie_flips` measures the
size of that: it runs the model once recording every Q8_K rounding, takes the ``n`` activations
closest to a rounding boundary (the ones a last-bit difference flips first), and reruns the model
with each of them rounded to the other neighbour, one at a time. The largest logit change is the
scale of one such disagreement on this model and input.
"""

import numpy as np

from ternref.interop import q8k


def nearest_tie_flips(forward, n: int = 8) -> float:
    """``max_k |forward() - forward() with tie k flipped|`` over the ``n`` nearest ties.

    ``forward``: a callable running the model (whose projections use
    ``ternref.interop.q8k.q8k_dequantize``) and returning its logits.
    """
    orig = q8k.q8k_dequantize
    calls = []

    def recording(x):
        x32 = np.asarray(x, np.float32)
        q, d = q8k.q8k_quantize(x32)
        k = x32.shape[-1]
        dd = np.repeat(d, q8k.QK_K, axis=-1).reshape(x32.shape).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            v = np.where(dd != 0, x32 / np.where(dd != 0, dd, 1), 0.0)  # x / d = iscale x
        frac = v - q.astype(np.float64)  # in [-0.5, 0.5]: where x lies between grid points
        margin = 0.5 - np.abs(frac)  # distance to the rounding boundary, in steps
        margin[dd == 0] = np.inf
        calls.append((margin.ravel(), (np.sign(frac) * dd).ravel()))
        del k
        return orig(x32)

    def flipping(call, index, delta):
        count = [0]

        def run(x):
            out = orig(x)
            if count[0] == call:
                out = out.copy()
                out.reshape(-1)[index] += delta  # the other neighbour on the grid
            count[0] += 1
            return out

        return run

    q8k.q8k_dequantize = recording
    try:
        base = np.asarray(forward(), np.float64)
        candidates = []
        for c, (margin, delta) in enumerate(calls):
            for i in np.argsort(margin)[:n]:
                candidates.append((margin[i], c, int(i), float(delta[i])))
        candidates.sort()
        worst = 0.0
        for _, c, i, delta in candidates[:n]:
            q8k.q8k_dequantize = flipping(c, i, np.float32(delta))
            worst = max(worst, float(np.abs(np.asarray(forward(), np.float64) - base).max()))
    finally:
        q8k.q8k_dequantize = orig
    return worst
