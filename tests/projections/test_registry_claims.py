"""Every registered deterministic weight projection meets its claims and fails its refutations.

Driven by the registry only: a projection registered with honest metadata is picked up here
without touching this file. Each (projection, property) pair is its own test so a failure names
both, and ``pytest -n`` can spread them.
"""

import pytest

import ternref.projections as P
from ternref.testing import check_projection, find_counterexample

MAX_EXAMPLES = 25

ENTRIES = [
    P.get(name)
    for name in P.names()
    if P.get(name).input_kind == "weights" and P.get(name).deterministic
]
CLAIMS = [(info.name, prop) for info in ENTRIES for prop in sorted(info.claims)]
REFUTES = [(info.name, prop) for info in ENTRIES for prop in sorted(info.refutes)]


def test_registry_has_the_core_projections():
    for name in ("threshold", "twn", "exact", "ttq", "lat", "bitnet"):
        assert name in P.names()


def test_metadata_is_complete():
    for name in P.names():
        info = P.get(name)
        assert info.paper and info.summary, name
        assert 1980 <= info.year <= 2030, name
        assert info.claims.isdisjoint(info.refutes), name


@pytest.mark.parametrize(("name", "prop"), CLAIMS)
def test_claimed_property_holds(name, prop):
    flags = {p: p == prop for p in P.PROPERTIES}
    check_projection(P.get(name).fn, max_examples=MAX_EXAMPLES, name=name, **flags)


@pytest.mark.parametrize(("name", "prop"), REFUTES)
def test_refuted_property_has_a_counterexample(name, prop):
    violation = find_counterexample(P.get(name).fn, prop, max_examples=200, name=name)
    assert violation is not None, f"{name} claims to refute {prop!r} but no counterexample found"
    assert violation.property == prop
