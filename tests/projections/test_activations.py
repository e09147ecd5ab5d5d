"""Ternary activations (STTN, GXNOR, RTN): exact outputs at and around their thresholds,
checked against hand-built cases and a literal transcription of the official GXNOR code."""

import numpy as np
import pytest

from ternref.projections.activations import (
    ACTIVATIONS,
    gxnor_activation,
    gxnor_activation_window,
    rtn_activation,
    sttn_activation,
)


def _hard_sigmoid(z):
    return np.clip((z + 1.0) / 2.0, 0.0, 1.0)


def _c_round(v):
    """C's round(): halves away from zero (the round_custom op of the GXNOR code)."""
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def _discrete_neuron_3states(x):
    """Literal NumPy transcription of the official mnist_GXNOR.py activation."""
    return _c_round(_hard_sigmoid(2 * (x - 1)) + _hard_sigmoid(2 * (x + 1)) - 1)


_GRID_AND_TIES = np.concatenate(
    [
        np.linspace(-3, 3, 6001),
        [-1.0, 1.0, -0.5, 0.5, -1.5, 1.5, np.nextafter(-1.0, 0), 1 - 3e-16, 1 + 3e-16],
    ]
)


def test_gxnor_code_form_equals_official_code_everywhere_including_ties():
    x = _GRID_AND_TIES
    assert np.array_equal(gxnor_activation(x, form="code"), _discrete_neuron_3states(x))


def test_gxnor_paper_form_differs_from_the_code_exactly_at_plus_minus_r():
    x = _GRID_AND_TIES
    differ = gxnor_activation(x) != _discrete_neuron_3states(x)
    assert np.array_equal(np.unique(x[differ]), [-1.0, 1.0])


def test_gxnor_activation_differs_from_code_only_by_its_rounding_just_below_one():
    # the code's sum 1 + 0.4999999999999999 rounds to 1.5, so the one double below 1 also fires;
    # both forms keep the exact comparison (documented in the gxnor module)
    x = np.array([np.nextafter(1.0, 0)])
    assert _discrete_neuron_3states(x)[0] == 1.0
    assert gxnor_activation(x)[0] == 0.0
    assert gxnor_activation(x, form="code")[0] == 0.0


def test_gxnor_activation_hand_cases_ties():
    x = np.array([-2.0, -1.0, -0.9999999, 0.0, 0.9999999, 1.0, 1.0000001])
    # the paper: 0 on |x| <= r (default); the code: the tie goes to the nonzero state
    assert np.array_equal(gxnor_activation(x), [-1, 0, 0, 0, 0, 0, 1])
    assert np.array_equal(gxnor_activation(x, form="code"), [-1, -1, 0, 0, 0, 1, 1])
    half = np.array([0.49, 0.5, -0.5, 0.51])
    assert np.array_equal(gxnor_activation(half, r=0.5), [0, 0, 0, 1])
    assert np.array_equal(gxnor_activation(half, r=0.5, form="code"), [0, 1, -1, 1])


def test_gxnor_window():
    x = np.array([0.0, 0.5, 0.5000001, 1.0, 1.4999999, 1.5, -0.7, -1.6])
    assert np.array_equal(gxnor_activation_window(x), [0, 0, 1, 1, 1, 0, 1, 0])
    assert np.array_equal(gxnor_activation_window(x, r=1.0, a=0.25), [0, 0, 0, 1, 0, 0, 0, 0])


def test_window_integrates_to_the_jump_height():
    x = np.linspace(0, 3, 300_001)
    integral = np.trapezoid(gxnor_activation_window(x), x)
    assert abs(integral - 1.0) < 1e-4  # phi jumps by 1 at x = r


def test_sttn_activation_asymmetric_ties():
    x = np.array([-0.5, 0.5, -0.5000001, 0.4999999])
    assert np.array_equal(sttn_activation(x), [0, 1, -1, 0])


def test_rtn_activation_levels_and_ties():
    x = np.array([-1.0, -0.25, 0.0, 0.25, 0.2500001, 1.0])
    # alpha = 0.5, beta = 0: thresholds at +-0.25 (tie -> beta)
    assert np.array_equal(rtn_activation(x, alpha=0.5), [-0.5, 0, 0, 0, 0.5, 0.5])


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_activations_keep_dtype_shape_and_refuse_bad_input(name, dtype):
    fn = ACTIVATIONS[name]
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(dtype)
    y = fn(x)
    assert y.dtype == dtype and y.shape == x.shape
    assert np.all(np.isfinite(fn(np.zeros((2, 2), dtype=dtype))))
    with pytest.raises(ValueError, match="finite"):
        fn(np.array([np.nan], dtype=dtype))
    with pytest.raises(TypeError, match="floating"):
        fn(np.array([1, 2]))


def test_bad_thresholds():
    with pytest.raises(ValueError, match="r must be > 0"):
        gxnor_activation(np.zeros(2), r=0.0)
    with pytest.raises(ValueError, match="form"):
        gxnor_activation(np.zeros(2), form="theano")
    with pytest.raises(ValueError, match="a must be > 0"):
        gxnor_activation_window(np.zeros(2), a=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        rtn_activation(np.zeros(2), alpha=0.0)
