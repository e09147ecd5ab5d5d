"""Property-test your own ternary projection against the definitions ternref's methods meet.

Requires ``hypothesis`` (the ``test`` extra). In your own pytest file, three lines::

    from ternref.testing import check_projection
    def test_my_projection():
        check_projection(my_projection, monotone=True, odd=True, idempotent=True)

``my_projection(w)`` takes a float array and returns a :class:`ternref.Ternary` of the same shape.
The defaults (:data:`DEFAULTS`: ``range``, ``dtype_preserving``, ``zero_safe``,
``sign_preserving``, ``coordinate_monotone``) are always checked unless switched off by name
(``sign_preserving=False``); ``monotone``, ``odd``, ``scale_equivariant``,
``permutation_equivariant``, ``idempotent`` and ``optimal`` are opt-in. Definitions are in
:data:`ternref.projections.PROPERTIES`. Each property is searched with hypothesis, from its own
seed, over awkward inputs (:func:`weights`: all-zero tensors, ties at likely thresholds,
``-0.0``, magnitudes from 1e-30 to 1e30, float32 and float64, 1-D to 4-D). A failure raises
:class:`PropertyViolation`, an ``AssertionError`` whose message names the property, its
definition and the shrunk counterexample with expected and actual output. It also works outside
pytest: call it from a script or a notebook.

Stochastic projections are checked sample by sample under :func:`fixed_generator`; a projection
merging two kernels (STTN) with ``input_kind="weight_pair"``.

Public API
----------
check_projection
    Check the properties you claim.
check_registered
    Check a registered projection on exactly its registry ``claims``.
find_counterexample
    Search for an input breaking one property (to pin a property a method does *not* have).
fixed_generator, registered_function
    Make a stochastic projection deterministic; the callable the kit checks for a registry entry.
PropertyViolation
    The exception, with ``.property``, ``.w``, ``.expected``, ``.got``.
weights, weight_pairs, weight_shapes, positive_scales, zero_tensors, ternary_codes
    The hypothesis strategies, for your own ``@given`` tests.
"""

from ternref.testing.properties import (
    DEFAULTS,
    OPTIMAL_MAX_SIZE,
    ORDER,
    RTOL,
    PropertyViolation,
    check_projection,
    check_registered,
    find_counterexample,
    fixed_generator,
    registered_function,
)
from ternref.testing.strategies import (
    STYLES,
    positive_scales,
    ternary_codes,
    weight_pairs,
    weight_shapes,
    weights,
    zero_tensors,
)

__all__ = [
    "DEFAULTS",
    "OPTIMAL_MAX_SIZE",
    "ORDER",
    "RTOL",
    "STYLES",
    "PropertyViolation",
    "check_projection",
    "check_registered",
    "find_counterexample",
    "fixed_generator",
    "positive_scales",
    "registered_function",
    "ternary_codes",
    "weight_pairs",
    "weight_shapes",
    "weights",
    "zero_tensors",
]
