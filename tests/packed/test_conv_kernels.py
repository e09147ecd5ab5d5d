"""The jitted packed convolution (gather of receptive fields, quantization, product, NCHW store)
== its NumPy twin (``im2col`` + the linear twin) == the dense convolution of the unpacked weight,
on every format, for float32 and int8 activations: odd channel counts (below, at and past
the 32 output channels of one panel of the AVX-512 float32 block) and image sizes, strides,
padding, kernels larger than the image is wide, K not a multiple of any block, scale groups (the
gather copies only the real prefix of each padded segment), asymmetric scales and offsets, a
single output position, all-zero images. With int8 activations kernel and twin form the same
exact integers and the same float64 epilogue: bit-identical. ``i2`` with ``vpdpbusd`` runs
``conv_i8_streams`` (the packed bytes against int8 streams), and ``tq1`` the same kernel on its
weight re-encoded as ``i2``; without, ``conv_i8``; both are checked where the CPU has AVX-512
VNNI."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ternref import Ternary
from ternref.nn.functional import conv_output_shape, im2col
from ternref.packed import FORMATS, conv2d, i2, pack, quantize_activations


def _dense_reference(x, t, stride, padding, int8):
    """float64 ``im2col(x) @ W_hat.T`` (int8: of the quantized receptive fields), NCHW."""
    o, c, kh, kw = t.shape
    n, _, h, w = x.shape
    oh, ow = conv_output_shape(h, w, (kh, kw), stride, padding)
    cols = im2col(x, (kh, kw), stride, padding).astype(np.float64)
    if int8:
        xq, inv_s = quantize_activations(cols)
        cols = xq.astype(np.float64) * inv_s[:, None]
    y = cols @ t.dense().astype(np.float64).reshape(o, -1).T
    return y.reshape(n, oh, ow, o).transpose(0, 3, 1, 2)


@st.composite
def conv_cases(draw):
    o = draw(st.integers(1, 9) | st.sampled_from([32, 33, 70]))  # 1, 2 and 3 panels of 32
    c = draw(st.sampled_from([1, 2, 3, 7]))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    h = draw(st.integers(max(1, kh - 2 * padding[0]), 9))
    w = draw(st.integers(max(1, kw - 2 * padding[1]), 9))
    n = draw(st.integers(1, 3))
    gran = draw(st.sampled_from(["tensor", "channel", "group"]))
    group_size = draw(st.sampled_from([3, 7, 32])) if gran == "group" else None
    kind = draw(st.sampled_from(["symmetric", "asymmetric", "offset"]))
    seed = draw(st.integers(0, 2**31 - 1))
    zero_input = draw(st.booleans()) and draw(st.booleans())
    return o, c, (kh, kw), stride, padding, (n, c, h, w), gran, group_size, kind, seed, zero_input


def _build(case):
    o, c, ksize, stride, padding, xshape, gran, group_size, kind, seed, zero_input = case
    rng = np.random.default_rng(seed)
    codes = rng.integers(-1, 2, (o, c, *ksize)).astype(np.int8)
    sshape = Ternary.scale_shape(codes.shape, gran, group_size)
    ap = (rng.random(sshape) + 0.5).astype(np.float32)
    an = (rng.random(sshape) + 0.5).astype(np.float32) if kind != "symmetric" else None
    off = rng.standard_normal(sshape).astype(np.float32) if kind == "offset" else None
    t = Ternary(codes, ap, an, granularity=gran, group_size=group_size, offset=off)
    x = np.zeros(xshape, np.float32) if zero_input else rng.standard_normal(xshape)
    bias = rng.standard_normal(o).astype(np.float32)
    return t, x.astype(np.float32), stride, padding, bias


HAS_STREAMS = i2.STREAM_GEMM_I8
STREAM_FLAG = {"i2": "STREAM_GEMM_I8", "tq1": "I2_TILE_GEMM_I8"}
"""The flag that sends a format's int8 convolution to ``i2.conv_i8_streams``."""


KERNELS = [(fmt, False) for fmt in sorted(FORMATS)] + [("i2", True), ("tq1", True)]


@pytest.mark.parametrize(("fmt", "streams"), KERNELS)
@settings(max_examples=40, deadline=None)
@given(case=conv_cases(), relu=st.booleans())
def test_conv_kernel_equals_twin_and_dense(fmt, streams, case, relu):
    """``streams`` False: the decoded-tile kernels (``conv_i8``), also where the CPU has VNNI."""
    if streams and not HAS_STREAMS:
        pytest.skip("conv_i8_streams runs only with AVX-512 VNNI")
    mod = FORMATS[fmt]
    flag = STREAM_FLAG.get(fmt)
    saved = getattr(mod, flag, None) if flag else None
    if flag:
        setattr(mod, flag, streams and HAS_STREAMS)
    try:
        _check(case, fmt, relu)
    finally:
        if flag:
            setattr(mod, flag, saved)


def _check(case, fmt, relu):
    t, x, stride, padding, bias = _build(case)
    p = pack(t, fmt)
    for act in ("float32", "int8"):
        y = conv2d(x, p, stride, padding, act, bias=bias, relu=relu)
        twin = conv2d(x, p, stride, padding, act, bias=bias, relu=relu, backend="numpy")
        ref = _dense_reference(x, t, stride, padding, act == "int8") + bias[:, None, None]
        if relu:
            ref = np.maximum(ref, 0)
        assert y.shape == twin.shape == ref.shape and y.dtype == np.float32
        assert np.all(np.isfinite(y))
        if act == "int8":
            np.testing.assert_array_equal(y, twin, err_msg=f"{fmt} int8 kernel != twin")
        else:
            np.testing.assert_allclose(y, twin, rtol=1e-5, atol=1e-5, err_msg=f"{fmt} float32")
        scale = max(1.0, float(np.abs(ref).max()))
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * scale, err_msg=f"{fmt} {act}")


@pytest.mark.parametrize("fmt", ["i2", "tq1"])
def test_streams_kernel_is_the_one_run_with_vnni(monkeypatch, fmt):
    """With ``STREAM_GEMM_I8`` the int8 convolution of ``i2`` runs ``conv_i8_streams``; with
    ``I2_TILE_GEMM_I8``, ``tq1``'s runs the same kernel on its weight re-encoded as ``i2``
    (and not its own ``conv_i8``)."""
    if not i2.STREAM_GEMM_I8:
        pytest.skip("no AVX-512 VNNI path on this CPU (or TERNREF_VNNI=0 / JIT disabled)")
    calls = []

    def spy(owner, name):
        real = getattr(owner, name)

        def wrapper(*args):
            calls.append(f"{owner.__name__.rsplit('.', 1)[-1]}.{name}")
            return real(*args)

        monkeypatch.setattr(owner, name, wrapper)

    rng = np.random.default_rng(0)
    t = Ternary(rng.integers(-1, 2, (4, 3, 3, 3)).astype(np.int8), np.float32(0.5))
    p = pack(t, fmt)
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    conv2d(x, p, 1, 1, "int8")  # compiled before the spies go in
    spy(i2, "conv_i8_streams")
    spy(FORMATS[fmt], "conv_i8")
    conv2d(x, p, 1, 1, "int8")
    assert calls == ["i2.conv_i8_streams"]


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_threaded_conv_equals_twin(monkeypatch, fmt):
    """A convolution split over threads by output positions (blocks of ``X_BLOCK``, a partial
    last one) gives the serial result: chunks' positions and buffers do not collide."""
    from ternref.packed import _threads, kernels

    monkeypatch.setattr(kernels, "SERIAL_VNNI_GEMM_BELOW", 0)
    monkeypatch.setattr(_threads, "SERIAL_BELOW", 1)
    monkeypatch.setattr(_threads, "MIN_CHUNK_WORK", 1)
    rng = np.random.default_rng(7)
    codes = rng.integers(-1, 2, (6, 5, 3, 3)).astype(np.int8)
    alpha_pos, alpha_neg = (rng.random((2, 6, 1, 1, 1)) + 0.5).astype(np.float32)
    t = Ternary(codes, alpha_pos, alpha_neg, granularity="channel")
    p = pack(t, fmt)
    x = rng.standard_normal((3, 5, 11, 9)).astype(np.float32)  # 3 x 9 x 7 = 189 positions
    assert len(_threads.plan(189, 6 * p.padded_length, 64)) > 1
    for act in ("float32", "int8"):
        y = conv2d(x, p, 1, 0, act, relu=True)
        twin = conv2d(x, p, 1, 0, act, relu=True, backend="numpy")
        if act == "int8":
            np.testing.assert_array_equal(y, twin)
        else:
            np.testing.assert_allclose(y, twin, rtol=1e-5, atol=1e-5)
