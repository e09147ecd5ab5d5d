"""Property-test your own ternary projection against the definitions ternref's methods meet.

Requires ``hypothesis`` (the ``test`` extra). In your own pytest file, three lines::

    from ternref.testing import check_projection
    def test_my_projection():
        check_projection(my_projection, sign_preserving=True, odd=True, idempotent=True)

``my_projection(w)`` takes a float array and returns a :class:`ternref.Ternary` of the same shape.
Each property you switch on (names and definitions in :data:`ternref.projections.PROPERTIES`:
``range``, ``sign_preserving``, ``monotone``, ``odd``, ``scale_equivariant``,
``permutation_equivariant``, ``idempotent``, ``dtype_preserving``, ``zero_safe``) is searched
with hypothesis over awkward inputs (:func:`weights`: all-zero tensors, ties at likely
thresholds, ``-0.0``, magnitudes from 1e-30 to 1e30, float32 and float64, 1-D to 4-D). A failure
raises :class:`PropertyViolation`, an ``AssertionError`` whose message names the property, its
definition and the shrunk counterexample with expected and actual output. It also works outside
pytest: call it from a script or a notebook.

Public API
----------
check_projection
    Check the properties you claim.
check_registered
    Check a registered projection on exactly its registry ``claims``.
find_counterexample
    Search for an input breaking one property (to pin a property a method does *not* have).
PropertyViolation
    The exception, with ``.property``, ``.w``, ``.expected``, ``.got``.
weights, weight_shapes, positive_scales, zero_tensors, ternary_codes
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
