"""Index of the ternary *activation* functions (forward only), one place to find them all.

Each activation lives in its method's module, next to the weight projection of the same paper,
and is re-exported here:

=========================  ======================================================  =============
function                   definition (ties in brackets)                           paper
=========================  ======================================================  =============
``sttn_activation(x)``     -1 if x < -0.5, 0 if -0.5 <= x < 0.5, +1 if x >= 0.5    STTN 2020
                           [asymmetric: -0.5 -> 0, +0.5 -> +1; official CUDA]
``gxnor_activation(x, r)`` sign(x) * 1[|x| > r], r = 1 (the paper)               GXNOR 2018
                           [|x| = r -> 0; form="code": +-1, the code's C round]
``rtn_activation(x, a, b)``a * t + b, t = sign(u) 1[|u| > 1/2], u = (x - b)/a       RTN 2020
                           [|u| = 1/2 -> t = 0; normalisation is an assumption]
=========================  ======================================================  =============

Surrogate derivatives that belong to a paper's activation and are pure functions of the input
are kept beside it (``gxnor_activation_window``: ``1[r - a < |x| < r + a]``). Activation
quantizers that are not ternary (BitNet's int8 absmax, TernaryBERT's 8-bit) are not listed here.

All take and return float arrays of the input's dtype and validate their arguments like the
weight projections do.
"""

from ternref.projections.gxnor import gxnor_activation, gxnor_activation_window
from ternref.projections.rtn import rtn_activation
from ternref.projections.sttn import sttn_activation

#: name -> function, for iteration (e.g. in tests or plots).
ACTIVATIONS = {
    "sttn": sttn_activation,
    "gxnor": gxnor_activation,
    "rtn": rtn_activation,
}

__all__ = [
    "ACTIVATIONS",
    "gxnor_activation",
    "gxnor_activation_window",
    "rtn_activation",
    "sttn_activation",
]
