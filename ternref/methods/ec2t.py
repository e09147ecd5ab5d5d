"""EC2T — Entropy-Constrained Trained Ternarization: learned centroids, entropy-penalized codes.

Marbán, Becking, Wiedemann, Samek, "Learning Sparse & Ternary Neural Networks with
Entropy-Constrained Trained Ternarization (EC2T)", CVPR Workshops 2020, arXiv:2004.01077.
Official engine code: a public PyTorch file headed "engine for entropy controlled ternary
quantization".

Each quantized layer learns two centroids w_p, w_n >= 0 (``Parameter`` s of the quantizer) and
assigns every latent weight to the cheapest of {-w_n, 0, +w_p} (``ternref.projections.ec2t``)::

    cost_c(w) = (w - c)^2 + lambda * I_c,     I_c = -log2 P_c
    lambda    = lambda_max(w, w_p, w_n) * lambda_max_divider * lambda_decay

where P_c is the PMF of a preliminary nearest-centroid assignment with P_0 forced >= 1/2
(so the zero centroid is always the cheapest in information and a larger lambda zeroes more
weights), and lambda_max (``ternref.projections.ec2t_lambda_max``) is the lambda at which the
most extreme weight on one side would collapse to 0. ``lambda_max_divider`` is the sparsity knob
the paper grid-searches; lambda = 0 is nearest-centroid assignment (TTQ-like thresholds at
w_p/2 and -w_n/2). lambda is recomputed at every forward pass from the current weights.

Gradients (``estimators.ttq_scaled_ste``, as TTQ, Zhu et al. 2017, Eq. 7-8)::

    dL/dw   = w_p g on I_p,  1 g on I_0,  w_n g on I_n          (scaled STE)
    dL/dw_p = sum_{I_p} g,    dL/dw_n = -sum_{I_n} g            (chain rule of w_hat = -w_n on I_n)

The minus sign of dL/dw_n is the chain rule (methods.md §5.2; TTQ's printed Eq. 7 has +); a
finite-difference test pins it.

Sparsity (fraction of zero codes) is reported per epoch by ``TernaryStats`` (``record["sparsity"]``
and per layer).

Choices and assumptions:

* **Centroid initialisation.** The paper initialises from a pretrained model. ternref starts from
  the projection's default: the mean of the weights beyond +-0.7 mean|w| on each side (TWN's
  threshold per sign); an empty side takes the other side's value.
* ``lambda_decay`` (the code scales lambda with the layer size; the exact formula was not
  checked) is a constant hyper-parameter, default 1.
* ``lambda_max_divider`` default 0.2 (ternref's choice for the digits MLP; the paper grid-searches
  it per network). The centroids are clamped >= 0 after each step.
* Procedure of the paper: compound-scale a pretrained model into a super-network, then prune and
  ternarize simultaneously while training (SGD/Adam). ternref implements the ternarization
  step; the first and last layers stay in full precision by default (``quantize_model``).
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
from ternref.projections.ec2t import ec2t as ec2t_projection
from ternref.projections.ec2t import ec2t_lambda_max
from ternref.train import Callback


class EC2TQuantizer(WeightQuantizer):
    """w -> argmin_c (w - c)^2 + lambda I_c over {-w_n, 0, w_p}; TTQ's scaled STE backward.

    Parameters
    ----------
    w_p, w_n : float
        Initial centroid magnitudes (>= 0).
    divider : float
        ``lambda_max_divider`` (0 = nearest-centroid assignment).
    decay : float
        ``lambda_decay``.
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
        self.lam = self.lambda_(w)
        return ec2t_projection(w, w_p, w_n, lam=self.lam)

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


def initial_centroids(w: np.ndarray) -> tuple[float, float]:
    """The projection's default centroids (per-sign means beyond 0.7 mean|w|), never 0."""
    t = ec2t_projection(w)
    w_p, w_n = float(t.alpha_pos), float(t.alpha_neg)
    fallback = max(w_p, w_n) or float(np.mean(np.abs(w))) or 1.0
    return (w_p or fallback), (w_n or fallback)


class ClampCentroids(Callback):
    """After each step, w_p <- max(w_p, 0) and w_n <- max(w_n, 0); records each layer's lambda."""

    def __init__(self, quantizers):
        self.quantizers = list(quantizers)

    def on_step_end(self, model, optimizer):
        for q in self.quantizers:
            np.maximum(q.w_p.data, 0, out=q.w_p.data)
            np.maximum(q.w_n.data, 0, out=q.w_n.data)

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
    lambda_decay : float >= 0
        Extra constant factor on lambda (the code's per-layer ``lambda_decay``).
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
        optimizer="same optimizer for latent weights and centroids; centroids clamped >= 0",
    )
    lambda_max_divider: float = 0.2
    lambda_decay: float = 1.0

    def validate(self):
        _validate.real_number(self.lambda_max_divider, "lambda_max_divider", low=0.0)
        _validate.real_number(self.lambda_decay, "lambda_decay", low=0.0)

    def weight_quantizer(self, layer):
        w = layer.weight.data
        w_p, w_n = initial_centroids(w)
        return EC2TQuantizer(w_p, w_n, self.lambda_max_divider, self.lambda_decay, dtype=w.dtype)

    def callbacks(self, model):
        qs = [
            layer.weight_quantizer
            for layer in quantized_layers(model)
            if isinstance(layer.weight_quantizer, EC2TQuantizer)
        ]
        return [ClampCentroids(qs)]
