"""EC2T — Entropy-Constrained Trained Ternarization: learned centroids, entropy-penalized codes.

Marbán, Becking, Wiedemann, Samek, "Learning Sparse & Ternary Neural Networks with
Entropy-Constrained Trained Ternarization (EC2T)", CVPR Workshops 2020, arXiv:2004.01077.
Official code: d-becking/efficientCNNs (read at commit 750247d), ``model_quantization/
quantizer.py``, "engine for entropy controlled ternary quantization" (``get_pmf``,
``apply_entropy_constraint``, ``quantize``, ``get_grads``, ``optimization_step``) and
``model_quantization/main_trained_quantization.py`` (initial centroids, optimizers).

Each quantized layer learns two centroids w_p, w_n >= 0 (``Parameter`` s of the quantizer) and
assigns every latent weight to the cheapest of {-w_n, 0, +w_p} (``ternref.projections.ec2t``)::

    cost_c(w) = (w - c)^2 + lambda * I_c,     I_c = -log2 P_c
    lambda    = lambda_max(w, w_p, w_n) * lambda_max_divider * lambda_decay_l

where P_c is the PMF of a preliminary nearest-centroid assignment with P_0 forced >= 1/2
(so the zero centroid is always the cheapest in information and a larger lambda zeroes more
weights), and lambda_max (``ternref.projections.ec2t_lambda_max``) is the lambda at which the
most extreme weight on one side would collapse to 0. ``lambda_max_divider`` is the sparsity knob
the paper grid-searches; lambda = 0 is nearest-centroid assignment (TTQ-like thresholds at
w_p/2 and -w_n/2). lambda is recomputed at every forward pass from the current weights (the
code re-quantizes after every step, the same thing).

**Per-layer lambda** (the code's ``lambda_decay``, ``optimization_step``): with ``n_l`` the number
of weights of layer l and ``n_largest`` that of the largest quantized layer::

    lambda_decay_l = (n_l / n_largest + 0.05) / (1 + 0.05)        (``lambda_sustain = 0.05``)

so smaller layers are pushed less towards sparsity. This is the default
(``lambda_decay="layer_size"``; the factor is fixed when ``quantize_model`` builds the method's
callbacks, which see all quantized layers); a number gives every layer that constant factor.

**Centroid floor** (``optimization_step``): after every optimizer step the code raises each
centroid to at least 0.675 times the standard deviation of the layer's full-precision weights
(``torch.std``, i.e. with Bessel's correction), "to prevent that w_n or w_p become very small or
equal to 0 which would result in a binary/unary layer"::

    w_p <- max(w_p, 0.675 std(W_l)),    w_n <- max(w_n, 0.675 std(W_l))

This is the default (``centroid_floor=0.675``); ``centroid_floor=0`` gives ternref's former
clamp at 0. Without the floor a centroid that shrinks moves its threshold w/2 towards 0 and the
layer's assignment drifts; the floor keeps both levels at a size comparable to the weights.

Gradients (``estimators.ttq_scaled_ste``, as TTQ, Zhu et al. 2017, Eq. 7-8)::

    dL/dw   = w_p g on I_p,  1 g on I_0,  w_n g on I_n          (scaled STE)
    dL/dw_p = sum_{I_p} g,    dL/dw_n = -sum_{I_n} g            (chain rule of w_hat = -w_n on I_n)

The minus sign of dL/dw_n is the chain rule (methods.md §5.2); a finite-difference test pins it.
**The official ``get_grads`` returns ``+sum_{I_n} g``** for w_n (as TTQ's printed Eq. 7 and the
TTQ PyTorch port it cites), which is the gradient with respect to the *level* -w_n, not to w_n:
a descent step along it moves w_n in the direction that increases the loss to first order.
ternref keeps the chain rule.

Sparsity (fraction of zero codes) is reported per epoch by ``TernaryStats`` (``record["sparsity"]``
and per layer), each layer's lambda as ``record["ec2t_lambda"]``.

Differences with the official code, all four named in issue 16, and the rest:

1. *centroid floor at 0.675 std* — implemented, default (above);
2. *per-layer lambda (n_l / n_largest + 0.05) / 1.05* — implemented, default (above);
3. *sign of the w_n gradient* — official ``+sum``, ternref ``-sum`` (chain rule, above);
4. *centroid initialisation*: the code starts from a pretrained model with
   ``w_p = max(W) * c`` and ``w_n = |min(W)| * c``, ``c`` from a grid (``--ini-c-divrs``, default
   0.15, 0.3, 0.5; or k-means). ternref's default is the projection's: the mean of the weights
   beyond +-0.7 mean|w| on each side (TWN's threshold per sign; an empty side takes the other
   side's value), which suits the random initialisations ternref also trains from;
   ``init_scaler=c`` gives the code's rule.
5. The code trains the full-precision weights and the centroids with two Adam optimizers (lr
   1e-4 and 1e-5, batch 256, 20 epochs, weight decay 5e-6); ternref uses whatever optimizer
   ``fit`` is given, for all parameters.
6. Ties and empty PMF cells: see ``ternref.projections.ec2t``.

Other choices: ``lambda_max_divider`` default 0.2 (ternref's choice for the digits MLP; the code's
grid default is 0.125, 0.15, 0.175). Procedure of the paper: compound-scale a pretrained model into
a super-network, then prune and ternarize simultaneously while training. ternref implements the
ternarization step; the first and last layers stay in full precision by default
(``quantize_model``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ternref import _validate
from ternref.methods.base import Method, MethodInfo, WeightQuantizer, quantized_layers, register
from ternref.methods.estimators import ttq_scaled_ste
from ternref.nn.module import Parameter
from ternref.projections.ec2t import _ec2t_scaled_lambda, ec2t_lambda_max
from ternref.projections.ec2t import ec2t as ec2t_projection
from ternref.train import Callback

#: The official code's floor on the centroids, in units of the layer's weight std.
CENTROID_FLOOR = 0.675

#: The official code's ``lambda_sustain`` in the per-layer lambda factor.
LAMBDA_SUSTAIN = 0.05


class EC2TQuantizer(WeightQuantizer):
    """w -> argmin_c (w - c)^2 + lambda I_c over {-w_n, 0, w_p}; TTQ's scaled STE backward.

    Parameters
    ----------
    w_p, w_n : float
        Initial centroid magnitudes (>= 0).
    divider : float
        ``lambda_max_divider`` (0 = nearest-centroid assignment).
    decay : float
        ``lambda_decay`` of this layer (``EC2T.callbacks`` sets the per-layer value).
    dtype : float dtype
        Of the centroid parameters.
    """

    def __init__(self, w_p: float, w_n: float, divider: float, decay: float = 1.0,
                 dtype=np.float32):  # fmt: skip
        super().__init__()
        self.w_p = Parameter(np.asarray(w_p, dtype=dtype), "w_p")
        self.w_n = Parameter(np.asarray(w_n, dtype=dtype), "w_n")
        self.divider = divider
        self.decay = decay
        self.lam = 0.0

    def _centroids(self):
        return max(float(self.w_p.data), 0.0), max(float(self.w_n.data), 0.0)

    def lambda_(self, w) -> float:
        """lambda = lambda_max(w, w_p, w_n) * divider * decay (0 when lambda_max is infinite)."""
        if self.divider == 0:
            return 0.0
        w_p, w_n = self._centroids()
        lam_max = ec2t_lambda_max(w, w_p, w_n)
        return lam_max * self.divider * self.decay if math.isfinite(lam_max) else 0.0

    def project(self, w):
        w_p, w_n = self._centroids()
        if self.divider == 0:
            self.lam = 0.0
            return ec2t_projection(w, w_p, w_n, lam=0.0)
        # ec2t(w, w_p, w_n, lambda_(w)) with the probabilities computed once for both
        t, self.lam = _ec2t_scaled_lambda(w, w_p, w_n, self.divider, self.decay)
        return t

    def backward(self, dw_hat):
        if self.ternary is None:
            raise RuntimeError("EC2TQuantizer.backward called before forward")
        w_p, w_n = self._centroids()
        dw, d_wp, d_wn = ttq_scaled_ste(dw_hat, self.ternary.codes, w_p, w_n)
        if self.w_p.requires_grad:
            self.w_p.grad += d_wp
        if self.w_n.requires_grad:
            self.w_n.grad += d_wn
        return dw

    def extra_repr(self):
        w_p, w_n = self._centroids()
        return f"w_p={w_p:.4g}, w_n={w_n:.4g}, divider={self.divider}, decay={self.decay}"


def initial_centroids(w: np.ndarray, init_scaler: float | None = None) -> tuple[float, float]:
    """Initial ``(w_p, w_n)``, never 0.

    ``init_scaler=None``: the projection's default centroids (per-sign means beyond
    0.7 mean|w|; an empty side takes the other side's value). ``init_scaler=c``: the official
    code's ``w_p = max(w) c`` and ``w_n = |min(w)| c``.
    """
    if init_scaler is None:
        t = ec2t_projection(w)
        w_p, w_n = float(t.alpha_pos), float(t.alpha_neg)
    else:
        w_p = abs(float(np.max(w))) * init_scaler
        w_n = abs(float(np.min(w))) * init_scaler
    fallback = max(w_p, w_n) or float(np.mean(np.abs(w))) or 1.0
    return (w_p or fallback), (w_n or fallback)


def layer_size_decay(sizes: list[int], sustain: float = LAMBDA_SUSTAIN) -> list[float]:
    """The code's per-layer lambda factor ``(n_l / n_largest + sustain) / (1 + sustain)``."""
    largest = max(sizes)
    return [(n / largest + sustain) / (1 + sustain) for n in sizes]


class ClampCentroids(Callback):
    """After each step, ``w_c <- max(w_c, floor * std(W))`` for both centroids; records lambda.

    ``floor = 0.675`` is the official code's (``std`` with Bessel's correction, as
    ``torch.std``); ``floor = 0`` only keeps the centroids non-negative.
    """

    def __init__(self, layers, floor: float = CENTROID_FLOOR):
        self.layers = list(layers)
        self.quantizers = [layer.weight_quantizer for layer in self.layers]
        self.floor = floor

    def on_step_end(self, model, optimizer):
        for layer, q in zip(self.layers, self.quantizers):
            w = layer.weight.data
            lowest = self.floor * float(np.std(w, ddof=1)) if self.floor and w.size > 1 else 0.0
            np.maximum(q.w_p.data, lowest, out=q.w_p.data)
            np.maximum(q.w_n.data, lowest, out=q.w_n.data)

    def on_epoch_end(self, model, epoch, record):
        record["ec2t_lambda"] = [q.lam for q in self.quantizers]


@register
@dataclass
class EC2T(Method):
    """Entropy-Constrained Trained Ternarization (Marbán et al. 2020).

    Parameters
    ----------
    lambda_max_divider : float >= 0
        Sparsity knob: lambda = lambda_max * divider * decay (0: nearest centroid).
    lambda_decay : "layer_size" or float >= 0
        Per-layer factor on lambda. ``"layer_size"`` (default, the official code):
        ``(n_l / n_largest + 0.05) / 1.05``; a number: that constant for every layer.
    centroid_floor : float >= 0
        After every step the centroids are raised to at least ``centroid_floor * std(W)`` of
        their layer (official code: 0.675, the default); 0 only keeps them non-negative.
    init_scaler : float > 0 or None
        ``None`` (default): start the centroids at the per-sign means beyond 0.7 mean|w|;
        ``c``: the official code's ``w_p = max(W) c``, ``w_n = |min(W)| c`` (its grid: 0.15,
        0.3, 0.5).
    """

    info: ClassVar[MethodInfo] = MethodInfo(
        name="ec2t",
        paper="Marbán, Becking, Wiedemann, Samek: Learning Sparse & Ternary Neural Networks with "
        "Entropy-Constrained Trained Ternarization",
        year=2020,
        arxiv="2004.01077",
        ternary="W",
        projection="argmin (w - c)^2 - lambda log2 P_c over learned {-w_n, 0, w_p}",
        estimator="scaled STE (w_p, 1, w_n); dw_p = sum_Ip g, dw_n = -sum_In g",
        optimizer="same optimizer for latent weights and centroids; centroids floored at "
        "0.675 std(W) after each step; per-layer lambda by layer size",
    )
    lambda_max_divider: float = 0.2
    lambda_decay: float | str = "layer_size"
    centroid_floor: float = CENTROID_FLOOR
    init_scaler: float | None = None

    def validate(self):
        _validate.real_number(self.lambda_max_divider, "lambda_max_divider", low=0.0)
        if isinstance(self.lambda_decay, str):
            _validate.one_of(self.lambda_decay, "lambda_decay", ("layer_size",))
        else:
            _validate.real_number(self.lambda_decay, "lambda_decay", low=0.0)
        _validate.real_number(self.centroid_floor, "centroid_floor", low=0.0)
        if self.init_scaler is not None:
            _validate.real_number(self.init_scaler, "init_scaler", low=0.0, low_open=True)

    def weight_quantizer(self, layer):
        w = layer.weight.data
        w_p, w_n = initial_centroids(w, self.init_scaler)
        # a per-layer decay is set by callbacks(model), which sees every quantized layer
        decay = 1.0 if isinstance(self.lambda_decay, str) else float(self.lambda_decay)
        return EC2TQuantizer(w_p, w_n, self.lambda_max_divider, decay, dtype=w.dtype)

    def callbacks(self, model):
        layers = [
            layer
            for layer in quantized_layers(model)
            if isinstance(layer.weight_quantizer, EC2TQuantizer)
        ]
        if layers and self.lambda_decay == "layer_size":
            sizes = [layer.weight.data.size for layer in layers]
            for layer, decay in zip(layers, layer_size_decay(sizes)):
                layer.weight_quantizer.decay = decay
        return [ClampCentroids(layers, self.centroid_floor)]
