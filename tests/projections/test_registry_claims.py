"""Every registered projection meets its claims and fails its refutations, through the kit.

Driven by the registry only: a projection registered with honest metadata is picked up here
without touching this file. Each (projection, property) pair is its own test so a failure names
both, and ``pytest -n`` can spread them. Stochastic projections (``tc``, ``terngrad``) are checked
sample by sample under a fixed generator, the weight-pair one (``sttn``) as ``fn(w1, w2)``, the
gradient one like weights (``ternref.testing.check_registered``).

Inputs: every pair searches from its own seed (derived from the projection's and the property's
names), and the number of examples is the hypothesis profile's (``tests/conftest.py``: 100 by
default, 1000 and random seeds under ``TERNREF_HYPOTHESIS=thorough``).
"""

import zlib

import pytest
from hypothesis import settings

import ternref.projections as P
from ternref.testing import check_registered, find_counterexample, registered_function

ENTRIES = [P.get(name) for name in P.names()]
CLAIMS = [(info.name, prop) for info in ENTRIES for prop in sorted(info.claims)]
REFUTES = [(info.name, prop) for info in ENTRIES for prop in sorted(info.refutes)]


def search_options(name: str, prop: str) -> dict:
    """The profile's example count, and a seed of this pair's own (random when the profile
    is not derandomized)."""
    profile = settings.default
    return {
        "max_examples": profile.max_examples,
        "derandomize": profile.derandomize,
        "seed": zlib.crc32(f"{name}/{prop}".encode()),
    }


def test_registry_has_the_core_projections():
    for name in ("threshold", "twn", "exact", "ttq", "lat", "bitnet", "tc", "terngrad", "sttn"):
        assert name in P.names()


def test_metadata_is_complete():
    for name in P.names():
        info = P.get(name)
        assert info.paper and info.summary, name
        assert 1980 <= info.year <= 2030, name
        assert info.claims.isdisjoint(info.refutes), name


def test_every_projection_has_its_claims_and_refutations_run():
    """No kind of projection is left out of the parametrization below."""
    assert {name for name, _ in CLAIMS} == set(P.names())
    for kind in P.INPUT_KINDS:
        assert any(P.get(name).input_kind == kind for name, _ in CLAIMS), kind
    assert any(not P.get(name).deterministic for name, _ in CLAIMS)
    # Each (projection, property) pair gets its own seed.
    seeds = [search_options(name, prop)["seed"] for name, prop in CLAIMS + REFUTES]
    assert len(set(seeds)) == len(seeds)


@pytest.mark.parametrize(("name", "prop"), CLAIMS)
def test_claimed_property_holds(name, prop):
    check_registered(name, properties=[prop], **search_options(name, prop))


@pytest.mark.parametrize(("name", "prop"), REFUTES)
def test_refuted_property_has_a_counterexample(name, prop):
    info = P.get(name)
    options = search_options(name, prop)
    options["max_examples"] = max(200, options["max_examples"])  # a refutation must be found
    # A stochastic projection's counterexample also needs draws of its generator that break
    # the property; a few independent searches make finding one robust (all are seeded).
    violation = None
    for attempt in range(1 if info.deterministic else 3):
        violation = find_counterexample(
            registered_function(info),
            prop,
            input_kind=info.input_kind,
            name=name,
            **{**options, "seed": options["seed"] + attempt},
        )
        if violation is not None:
            break
    assert violation is not None, f"{name} claims to refute {prop!r} but no counterexample found"
    assert violation.property == prop
