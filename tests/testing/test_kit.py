"""ternref.testing: passes correct projections, names the property a broken one breaks."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import find, settings
from hypothesis import strategies as st

import ternref.projections as P
from ternref import Ternary
from ternref.projections.twn import twn
from ternref.testing import (
    PropertyViolation,
    check_projection,
    check_registered,
    find_counterexample,
    positive_scales,
    weights,
)

ALL = {
    "range": True,
    "sign_preserving": True,
    "monotone": True,
    "odd": True,
    "scale_equivariant": True,
    "permutation_equivariant": True,
    "idempotent": True,
    "dtype_preserving": True,
    "zero_safe": True,
}


def violation_of(fn, **flags):
    with pytest.raises(PropertyViolation) as info:
        check_projection(fn, max_examples=60, **flags)
    return info.value


def assert_names(v, prop):
    msg = str(v)
    assert v.property == prop
    assert f"violates property {prop!r}" in msg
    assert P.PROPERTIES[prop] in msg  # the definition is quoted
    assert "smallest counterexample found by hypothesis (shrunk)" in msg
    assert "w = np.array(" in msg
    assert isinstance(v, AssertionError)


# --------------------------------------------------------------------------- correct projections
@pytest.mark.parametrize(
    "name",
    [n for n in P.names() if P.get(n).input_kind == "weights" and P.get(n).deterministic],
)
def test_every_registered_projection_passes_its_claims(name):
    check_registered(name, max_examples=10)


def test_all_properties_of_twn_and_exact_at_once():
    check_projection(twn, max_examples=25, **ALL)
    check_projection(P.exact, max_examples=25, **ALL)


def test_channel_granularity_is_checked_and_permuted_within_rows():
    check_projection(
        lambda w: twn(w, granularity="channel"), granularity="channel", max_examples=20, **ALL
    )
    v = violation_of(twn, granularity="channel")
    assert v.property == "output" and "granularity 'tensor', expected 'channel'" in str(v)


# --------------------------------------------------------------------------- broken projections
def sign_flipped(w):
    t = twn(w)
    return Ternary(-t.codes, t.alpha_pos)


def nan_on_zero(w):
    a = np.abs(w)
    keep = a > 0.7 * a.mean()
    with np.errstate(invalid="ignore"):
        alpha = a[keep].sum() / keep.sum()  # 0/0 on an all-zero tensor
    return Ternary((np.sign(w) * keep).astype(np.int8), np.asarray(alpha, dtype=w.dtype))


def float64_scales(w):
    t = twn(w)
    return Ternary(t.codes, t.alpha_pos.astype(np.float64))


def twn_with_mean_scale(w):
    """TWN's threshold but alpha = mean|w| over *all* weights: not idempotent."""
    t = twn(w)
    return Ternary(t.codes, np.asarray(np.abs(w).mean(), dtype=w.dtype))


def keeps_small_drops_large(w):
    """Sign-preserving and odd, but a larger weight can map below a smaller one."""
    a = np.abs(w)
    keep = (a > 0) & (a <= a.mean())
    return Ternary((np.sign(w) * keep).astype(np.int8), np.asarray(a.max(), dtype=w.dtype))


def lopsided(w):
    """Monotone, sign-preserving, but the negative threshold is twice the positive one."""
    delta = 0.5 * np.abs(w).mean()
    codes = (w > delta).astype(np.int8) - (w < -2 * delta).astype(np.int8)
    return Ternary(codes, np.asarray(np.abs(w).max(), dtype=w.dtype))


class UncheckedTernary(Ternary):
    """A Ternary built without __init__'s validation: the only way to smuggle bad codes in."""

    __slots__ = ()

    @classmethod
    def raw(cls, codes, alpha):
        obj = object.__new__(cls)
        for name, value in (
            ("codes", codes),
            ("alpha_pos", alpha),
            ("alpha_neg", alpha),
            ("granularity", "tensor"),
            ("group_size", None),
            ("offset", None),
            ("symmetric", True),
        ):
            object.__setattr__(obj, name, value)
        return obj


def codes_times_two(w):
    t = twn(w)
    return UncheckedTernary.raw((2 * t.codes).astype(np.int8), t.alpha_pos)


def returns_array(w):
    return twn(w).dense()


def mutates_input(w):
    t = twn(w)
    w *= 0
    return t


def test_sign_flip_is_caught():
    v = violation_of(sign_flipped, sign_preserving=True)
    assert_names(v, "sign_preserving")
    assert v.w.size == 1  # shrunk to a single weight
    assert "but w_hat =" in str(v)


def test_nan_on_all_zero_input_is_caught():
    v = violation_of(nan_on_zero)
    assert_names(v, "zero_safe")
    assert not np.any(v.w)  # the counterexample is the all-zero tensor
    assert "raised ValueError" in str(v) and "finite" in str(v)


def test_dtype_change_is_caught():
    v = violation_of(float64_scales)
    assert_names(v, "dtype_preserving")
    assert "input dtype float32, scales float64" in str(v)


def test_non_idempotent_twn_variant_is_caught():
    v = violation_of(twn_with_mean_scale, idempotent=True, odd=True, scale_equivariant=True)
    assert_names(v, "idempotent")
    assert "expected:" in str(v) and "got:" in str(v) and "first mismatch" in str(v)


def test_monotonicity_violation_is_caught():
    v = violation_of(keeps_small_drops_large, sign_preserving=True, odd=True, monotone=True)
    assert_names(v, "monotone")


def test_oddness_violation_is_caught():
    v = violation_of(lopsided, sign_preserving=True, monotone=True, odd=True)
    assert_names(v, "odd")


def test_codes_outside_the_ternary_alphabet_are_caught():
    v = violation_of(codes_times_two)
    assert_names(v, "range")
    assert "codes outside {-1, 0, +1}" in str(v)


def test_non_ternary_output_is_caught():
    v = violation_of(returns_array)
    assert v.property == "output"
    assert "returned numpy.ndarray, expected ternref.Ternary" in str(v)


def test_input_mutation_is_caught():
    v = violation_of(mutates_input, zero_safe=False)
    assert "modified its input" in str(v)


def test_scale_equivariance_failure_names_c():
    v = find_counterexample(P.threshold, "scale_equivariant")
    assert v is not None and "for c = " in str(v)
    assert find_counterexample(twn, "scale_equivariant", max_examples=50) is None


def test_works_standalone_outside_pytest():
    script = textwrap.dedent(
        """
        import numpy as np
        from ternref import Ternary
        from ternref.projections import twn
        from ternref.testing import check_projection
        check_projection(twn, odd=True, idempotent=True, max_examples=20)
        def flipped(w):
            t = twn(w)
            return Ternary(-t.codes, t.alpha_pos)
        try:
            check_projection(flipped, sign_preserving=True, max_examples=20)
        except AssertionError as e:
            print("CAUGHT", str(e).splitlines()[0])
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert "CAUGHT projection 'flipped' violates property 'sign_preserving'" in out.stdout


# --------------------------------------------------------------------------- the strategies
def _finds(condition, strategy=None):
    return find(
        strategy or weights(),
        condition,
        settings=settings(max_examples=2000, database=None, derandomize=True),
    )


@pytest.mark.parametrize(
    ("what", "condition"),
    [
        ("all zero", lambda w: not np.any(w)),
        ("negative zero", lambda w: np.any(np.signbit(w) & (w == 0))),
        ("single element", lambda w: w.size == 1),
        ("4-D", lambda w: w.ndim == 4),
        ("float32", lambda w: w.dtype == np.float32),
        ("float64", lambda w: w.dtype == np.float64),
        ("huge", lambda w: np.abs(w).max() >= 1e29),
        ("tiny", lambda w: np.any((w != 0) & (np.abs(w) <= 1e-29))),
        (
            "repeated magnitude",
            lambda w: (
                w.size >= 3 and np.unique(np.abs(w[w != 0])).size == 1 and np.count_nonzero(w) >= 3
            ),
        ),
        ("value on 0.5*mean|w|", lambda w: np.any(np.abs(w) == 0.5 * np.abs(w).mean())),
    ],
)
def test_weights_strategy_covers(what, condition):
    w = _finds(condition)
    assert np.all(np.isfinite(w)) and w.size >= 1


def test_positive_scales_are_exact_powers_of_two():
    c = find(positive_scales(), lambda c: c < 1, settings=settings(database=None))
    assert np.frexp(c)[0] == 0.5
    assert find(st.just(0), lambda _: True) == 0
