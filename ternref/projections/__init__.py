"""Projection functions: ``w -> Ternary`` (forward only; gradients live in ``ternref.methods``).

Each family of projection functions has its own module in this package. Importing the package
imports every module, so the registry (:func:`names`, :func:`get`) is complete, and exposes each
registered function under its registry name (``ternref.projections.twn(w)``).
"""

import importlib
import pkgutil

from ternref.projections._registry import (
    INPUT_KINDS,
    PROPERTIES,
    ProjectionInfo,
    get,
    names,
    register,
)

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

for _name in names():
    globals()[_name] = get(_name).fn

# Functions that are not weight projections themselves (activation ternarizers, proximal
# operators, single alternation steps, helpers of the training methods) or that do not fit the
# ``fn(w) -> Ternary`` contract (``residual`` returns a tuple of terms), exported by name too.
from ternref.projections.admm import admm_step  # noqa: E402
from ternref.projections.bitnet import bitnet_activation  # noqa: E402
from ternref.projections.ec2t import ec2t_lambda_max, ec2t_pmf  # noqa: E402
from ternref.projections.gxnor import (  # noqa: E402
    gxnor_activation,
    gxnor_activation_window,
    gxnor_dst_update,
    gxnor_snap,
    gxnor_states,
    gxnor_transition_probability,
)
from ternref.projections.inq import inq_exponent, inq_partition  # noqa: E402
from ternref.projections.lat import lat_findalpha, lat_step, weighted_error  # noqa: E402
from ternref.projections.proxquant import prox_soft, prox_ternary  # noqa: E402
from ternref.projections.residual import residual  # noqa: E402
from ternref.projections.rtn import rtn_activation, rtn_codes  # noqa: E402
from ternref.projections.sttn import (  # noqa: E402
    binary_sign,
    sttn_activation,
    sttn_alpha,
    sttn_binary_kernels,
)
from ternref.projections.tc import power_of_two  # noqa: E402
from ternref.projections.terngrad import clip_by_stddev  # noqa: E402
from ternref.projections.trq import trq_parts  # noqa: E402

HELPERS = [
    "admm_step", "bitnet_activation", "binary_sign", "clip_by_stddev", "ec2t_lambda_max",
    "ec2t_pmf", "gxnor_activation", "gxnor_activation_window", "gxnor_dst_update", "gxnor_snap",
    "gxnor_states", "gxnor_transition_probability", "inq_exponent", "inq_partition",
    "lat_findalpha", "lat_step", "power_of_two", "prox_soft", "prox_ternary", "residual",
    "rtn_activation", "rtn_codes", "sttn_activation", "sttn_alpha", "sttn_binary_kernels",
    "trq_parts", "weighted_error",
]  # fmt: skip

__all__ = [
    "INPUT_KINDS", "PROPERTIES", "ProjectionInfo", "get", "names", "register", *names(), *HELPERS
]  # fmt: skip
