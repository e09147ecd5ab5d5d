"""Every registered training method survives export -> save -> load with identical predictions.

The slow part trains each method of ``ternref.methods.names()`` for one epoch on digits
(``nn.mlp([64, 256, 256, 10])``, ``quantize_model``; KD gets a trained full-precision teacher),
exports it, saves and loads it, and checks against the trained model's own evaluation forward:

* the dense weight of every packed layer (sum of its terms) equals the ``w_hat`` the trained
  layer's evaluation forward computes (so the packed codes are the weights the model was
  evaluated with, whatever ``to_ternary`` says);
* argmax on the whole digits test set is identical with float32 activations, in every format;
* with int8 activations, the argmax agreement is above a floor (measured: >= 0.994 for every
  method after one epoch; the int8 kernel rounds activations, so this one is not exact).

The fast part checks the pieces by hand: the registered-layer protocol, its validation, the
multi-term (residual) packed layer against a dense sum, BatchNorm folding into every term, and
the multi-term file format.
"""

import hashlib
import io
import json
import zipfile

import numpy as np
import pytest

from ternref import methods, nn, optim, packed
from ternref.data import load_digits
from ternref.methods.bitnet import BitNetActivation
from ternref.methods.gxnor import GXNORActivation
from ternref.methods.kd import HiddenStateTap, _TeacherState
from ternref.methods.residual import ResidualQuantizer
from ternref.methods.rtn import RTNActivation
from ternref.methods.sttn import STTNActivation
from ternref.nn.module import Module
from ternref.packed import PackedLinear, export, load, save, unpack
from ternref.projections.bitnet import bitnet_activation
from ternref.train import fit

FORMATS = ("i2", "tq1", "bitplanes")


# ------------------------------------------------------------------------ every method, trained


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def _train(name, data, teacher=None):
    model = nn.mlp([64, 256, 256, 10], rng=np.random.default_rng(0))
    callbacks, loss = [], None
    if name is not None:
        extra = {"teacher": teacher} if methods.requires_teacher(name) else {}
        method = methods.get(name, **extra)
        callbacks = methods.quantize_model(model, method)
        loss = method.loss()
    opt = optim.Adam(model.parameters(), lr=1e-3)
    fit(
        model,
        data,
        opt,
        loss=loss,
        epochs=1,
        batch_size=64,
        rng=np.random.default_rng(1),
        callbacks=callbacks,
        progress=False,
    )
    return model.eval()


@pytest.fixture(scope="module")
def teacher(digits):
    return _train(None, digits)


def _eval_weights(model):
    """``w_hat`` of each quantized layer as its evaluation forward computes it."""
    return [
        np.asarray(layer.weight_quantizer(layer.weight.data), np.float64)
        for layer in model.layers
        if getattr(layer, "weight_quantizer", None) is not None
    ]


@pytest.mark.slow
@pytest.mark.parametrize("name", methods.names())
def test_method_exports_with_identical_predictions(tmp_path, digits, teacher, name):
    model = _train(name, digits, teacher)
    logits = model.forward(digits.x_test)
    want = logits.argmax(1)
    w_hats = _eval_weights(model)
    assert w_hats, f"{name}: no quantized layer"

    for fmt in FORMATS:
        path = tmp_path / f"{fmt}.npz"
        save(path, export(model, fmt))
        loaded = load(path)
        packed_layers = [m for m in loaded.layers if isinstance(m, packed.PackedLinear)]
        assert len(packed_layers) == len(w_hats)
        for layer, w_hat in zip(packed_layers, w_hats):
            dense = sum(unpack(p).dense().astype(np.float64) for p in layer.terms)
            np.testing.assert_allclose(dense, w_hat, rtol=1e-6, atol=1e-7)
        got = loaded.forward(digits.x_test)
        assert np.array_equal(got.argmax(1), want), f"{name}/{fmt}: argmax differs"
        np.testing.assert_allclose(got, logits, rtol=1e-4, atol=1e-4)

    save(tmp_path / "int8.npz", export(model, "i2", activations="int8"))
    agreement = np.mean(load(tmp_path / "int8.npz").forward(digits.x_test).argmax(1) == want)
    assert agreement >= 0.97, f"{name}: int8 agreement {agreement:.3f}"


# ------------------------------------------------------------------ registered inference layers

ACTIVATION_LAYERS = {
    "BitNetActivation": lambda: BitNetActivation(eps=1e-3),
    "GXNORActivation": lambda: GXNORActivation(r=0.7, a=0.25),
    "STTNActivation": lambda: STTNActivation(clip=2.0),
    "RTNActivation": lambda: RTNActivation(alpha=0.8125, beta=-0.3, delta=0.4),
}


def test_method_activation_layers_are_registered():
    types = packed.inference_layer_types()
    for name, make in ACTIVATION_LAYERS.items():
        assert types[name] is type(make())


def _mlp_with(act):
    rng = np.random.default_rng(3)
    return nn.Sequential(nn.Linear(12, 16, rng=rng), act, nn.Linear(16, 5, rng=rng))


@pytest.mark.parametrize("name", sorted(ACTIVATION_LAYERS))
def test_activation_layer_round_trip(tmp_path, name):
    act = ACTIVATION_LAYERS[name]()
    model = _mlp_with(act).eval()
    x = np.random.default_rng(4).normal(scale=1.5, size=(40, 12)).astype(np.float32)
    want = model.forward(x)
    path = tmp_path / "m.npz"
    save(path, export(model))
    back = load(path)
    assert [type(m) for m in back.layers] == [nn.Linear, type(act), nn.Linear]
    assert not back.layers[1].training
    assert back.layers[1].export_state()[0] == act.export_state()[0]
    assert np.array_equal(back.forward(x), want)


def test_rtn_state_keeps_trained_levels_exactly(tmp_path):
    act = RTNActivation(alpha=np.float32(0.123456789), beta=np.float32(-1.0e-3), delta=0.5)
    params, arrays = act.export_state()
    assert params == {"delta": 0.5}
    assert arrays["alpha"].dtype == np.float32 and arrays["alpha"] == np.float32(0.123456789)
    x = np.linspace(-1, 1, 201, dtype=np.float32)[None]
    back = RTNActivation.from_export_state(params, arrays)
    # levels beta - alpha, beta, beta + alpha with t = sign(u) 1[|u| > delta], u = (x-beta)/alpha
    u = (x.astype(np.float64) + 1.0e-3) / np.float64(np.float32(0.123456789))
    t = np.sign(u) * (np.abs(u) > 0.5)
    want = (np.float32(0.123456789) * t + np.float32(-1.0e-3)).astype(np.float32)
    np.testing.assert_allclose(back.forward(x), want, rtol=0, atol=1e-7)


def test_bitnet_quantizer_is_not_the_kernels_int8_function():
    # Why BitNet's activation quantizer is kept as a layer instead of being folded into the
    # kernel's activations="int8": below eps BitNet clamps max|x| to eps, the kernel does not.
    x = np.array([[1e-6, -5e-7, 0.0]], np.float32)
    q, s = bitnet_activation(x, eps=1e-5)
    assert q.tolist() == [[13, -6, 0]]  # round(x * 127 / 1e-5)
    xq, inv_s = packed.quantize_activations(x)
    assert xq.tolist() == [[127, -64, 0]]  # round(x * 127 / 1e-6), half to even
    assert not np.allclose(q / s, xq * inv_s[:, None])


def test_hidden_state_tap_is_dropped():
    tap = HiddenStateTap(_TeacherState(), weight=1.0)
    model = _mlp_with(tap).eval()
    out = export(model)
    assert [type(m) for m in out.layers] == [nn.Linear, nn.Linear]


class _Doubler(Module):
    def forward(self, x):
        return 2 * x

    def export_state(self):
        return {}, {}

    @classmethod
    def from_export_state(cls, params, arrays):
        return cls()


def test_unregistered_layer_is_refused_by_export_and_save():
    model = _mlp_with(_Doubler())
    with pytest.raises(TypeError, match="does not know how to convert _Doubler"):
        export(model)
    with pytest.raises(TypeError, match="cannot store a layer of type _Doubler"):
        save(io.BytesIO(), nn.Sequential(_Doubler()))


def test_register_inference_layer_checks():
    with pytest.raises(ValueError, match="built-in"):
        packed.register_inference_layer(_Doubler, name="ReLU")
    with pytest.raises(ValueError, match="already registered"):
        packed.register_inference_layer(_Doubler, name="BitNetActivation")

    class NoProtocol(Module):
        pass

    with pytest.raises(TypeError, match="export_state"):
        packed.register_inference_layer(NoProtocol)
    with pytest.raises(TypeError, match="Module subclass"):
        packed.register_inference_layer(int)


# ---------------------------------------------------------------------------------- file checks


def _members(path):
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _npy(a):
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _header(members):
    return json.loads(np.load(io.BytesIO(members["__header__.npy"])).tobytes())


def _rewrite(path, members, header=None, **arrays):
    out = dict(members)
    if header is not None:
        out["__header__.npy"] = _npy(np.frombuffer(json.dumps(header).encode(), np.uint8))
    for key, a in arrays.items():
        out[key + ".npy"] = _npy(a)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in out.items():
            zf.writestr(name, data)


@pytest.fixture
def rtn_file(tmp_path):
    path = tmp_path / "rtn.npz"
    save(path, export(_mlp_with(ACTIVATION_LAYERS["RTNActivation"]())))
    return path


def _refused(path, match):
    with pytest.raises(ValueError, match=match):
        load(path)


def test_unknown_registered_type_is_refused(tmp_path, rtn_file):
    m = _members(rtn_file)
    h = _header(m)
    h["layers"][1]["type"] = "os.system"
    _rewrite(tmp_path / "bad.npz", m, h)
    _refused(tmp_path / "bad.npz", "unknown layer type 'os.system'")


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda h: h["layers"][1]["params"].update(delta=1.5), "delta"),
        (lambda h: h["layers"][1]["params"].update(extra=1), "parameters"),
        (lambda h: h["layers"][1]["params"].pop("delta"), "parameters"),
        (lambda h: h["layers"][1]["params"].update(delta=[0.5]), "JSON scalar"),
        (lambda h: h["layers"][1]["arrays"].pop("beta"), "arrays|extra"),
        (lambda h: h["layers"][1].update(params=[1]), "must be objects"),
    ],
)
def test_bad_registered_state_is_refused(tmp_path, rtn_file, change, match):
    m = _members(rtn_file)
    h = _header(m)
    change(h)
    _rewrite(tmp_path / "bad.npz", m, h)
    _refused(tmp_path / "bad.npz", match)


@pytest.mark.parametrize(
    "alpha, match",
    [
        (np.float32(np.nan), "finite"),
        (np.float32(-1.0), "alpha must be > 0"),
        (np.array([1.0, 2.0], np.float32), "dimension"),
        (np.int32(1), "floating"),
    ],
)
def test_bad_registered_array_is_refused(tmp_path, rtn_file, alpha, match):
    m = _members(rtn_file)
    h = _header(m)
    a = np.asarray(alpha)
    meta = h["layers"][1]["arrays"]["alpha"]
    meta.update(
        shape=list(a.shape), dtype=a.dtype.str, sha256=hashlib.sha256(a.tobytes()).hexdigest()
    )
    _rewrite(tmp_path / "bad.npz", m, h, **{meta["key"]: a})
    _refused(tmp_path / "bad.npz", match)


def test_registered_array_checksum_is_checked(tmp_path, rtn_file):
    m = _members(rtn_file)
    key = _header(m)["layers"][1]["arrays"]["alpha"]["key"]
    _rewrite(tmp_path / "bad.npz", m, **{key: np.array(0.5, np.float32)})
    _refused(tmp_path / "bad.npz", "SHA-256")


# --------------------------------------------------------------------- residual: several terms


def _residual_linear(rng, n_in=70, n_out=9, granularity="channel"):
    layer = nn.Linear(n_in, n_out, rng=rng)
    layer.weight_quantizer = ResidualQuantizer(2, "twn", granularity)
    return layer


@pytest.mark.parametrize("activations", ["float32", "int8"])
def test_multi_term_layer_is_the_sum_of_its_terms(activations):
    rng = np.random.default_rng(5)
    layer = _residual_linear(rng)
    t1, t2 = layer.weight_quantizer.to_ternaries(layer.weight.data)
    b = rng.standard_normal(9).astype(np.float32)
    pl = PackedLinear([packed.pack(t1), packed.pack(t2)], b, activations)
    x = rng.standard_normal((13, 70)).astype(np.float32)
    if activations == "int8":  # the kernel sees the int8 grid: compare on exactly that input
        xq, inv_s = packed.quantize_activations(x)
        x = (xq * inv_s[:, None]).astype(np.float32)
    want = x.astype(np.float64) @ (t1.dense() + t2.dense()).astype(np.float64).T + b
    np.testing.assert_allclose(pl.forward(x), want, rtol=1e-5, atol=1e-5)
    assert pl.nbytes == pl.terms[0].nbytes + pl.terms[1].nbytes
    assert "terms=2" in repr(pl)


def test_multi_term_terms_must_match():
    rng = np.random.default_rng(6)
    t1, _ = _residual_linear(rng).weight_quantizer.to_ternaries(
        rng.standard_normal((9, 70)).astype(np.float32)
    )
    with pytest.raises(ValueError, match="differs from term 0"):
        PackedLinear([packed.pack(t1, "i2"), packed.pack(t1, "tq1")])
    with pytest.raises(TypeError, match="term 1"):
        PackedLinear([packed.pack(t1), t1])


@pytest.mark.parametrize("fmt", FORMATS)
def test_residual_with_batchnorm_folds_every_term(tmp_path, fmt):
    rng = np.random.default_rng(7)
    conv = nn.Conv2d(2, 6, 3, padding=1, rng=rng)
    conv.weight_quantizer = ResidualQuantizer(2, "twn", "tensor")
    bn2 = nn.BatchNorm2d(6)
    bn2.weight.data[:] = [1.5, -0.5, 0.3, -2.0, 1.0, 0.7]  # negative multipliers flip rows
    bn2.bias.data[:] = rng.standard_normal(6)
    bn2.running_mean[:] = rng.standard_normal(6)
    bn2.running_var[:] = rng.uniform(0.5, 2.0, 6)
    lin = _residual_linear(rng, n_in=6 * 16, n_out=8, granularity="channel")
    bn1 = nn.BatchNorm1d(8)
    bn1.weight.data[:] = rng.standard_normal(8)
    bn1.running_var[:] = rng.uniform(0.5, 2.0, 8)
    model = nn.Sequential(conv, bn2, nn.ReLU(), nn.Flatten(), lin, bn1).eval()
    x = rng.standard_normal((11, 2, 4, 4)).astype(np.float32)
    want = model.forward(x)
    ex = export(model, fmt)
    assert [type(m) for m in ex.layers] == [
        packed.PackedConv2d,
        nn.ReLU,
        nn.Flatten,
        packed.PackedLinear,
    ]
    assert [len(m.terms) for m in (ex.layers[0], ex.layers[3])] == [2, 2]
    save(tmp_path / "m.npz", ex)
    back = load(tmp_path / "m.npz")
    for a, b in ((ex.layers[0], back.layers[0]), (ex.layers[3], back.layers[3])):
        assert len(b.terms) == 2
        assert all(unpack(p) == unpack(q) for p, q in zip(a.terms, b.terms))
    np.testing.assert_allclose(back.forward(x), want, rtol=1e-4, atol=1e-4)


def test_multi_term_file_layout_and_corruption(tmp_path):
    rng = np.random.default_rng(8)
    model = nn.Sequential(_residual_linear(rng))
    path = tmp_path / "m.npz"
    save(path, export(model))
    m = _members(path)
    h = _header(m)
    entry = h["layers"][0]
    assert entry["params"]["n_terms"] == 2
    assert {"codes", "alpha_pos", "term1.codes", "term1.alpha_pos", "bias"} == set(entry["arrays"])
    # a one-term file written before n_terms existed still loads
    single = tmp_path / "single.npz"
    save(single, export(nn.Sequential(_residual_linear(rng)), "i2"))
    ms = _members(single)
    hs = _header(ms)
    hs["layers"][0]["params"]["n_terms"] = 1
    for name in [n for n in hs["layers"][0]["arrays"] if n.startswith("term1.")]:
        del ms[hs["layers"][0]["arrays"][name]["key"] + ".npy"]
        del hs["layers"][0]["arrays"][name]
    hs["layers"][0]["params"].pop("n_terms")
    _rewrite(tmp_path / "old.npz", ms, hs)
    assert len(load(tmp_path / "old.npz").layers[0].terms) == 1
    # a set padding bit in term 1 (bitplanes, K = 70: bits 6..63 of word 1 are padding) is
    # refused, naming the term
    bp = tmp_path / "bp.npz"
    save(bp, export(model, "bitplanes"))
    mb = _members(bp)
    hb = _header(mb)
    pos = np.load(io.BytesIO(mb["0.term1.pos.npy"])).copy()
    pos[0, 1] |= np.uint64(1) << np.uint64(63)
    hb["layers"][0]["arrays"]["term1.pos"]["sha256"] = hashlib.sha256(pos.tobytes()).hexdigest()
    _rewrite(tmp_path / "bad.npz", mb, hb, **{"0.term1.pos": pos})
    _refused(tmp_path / "bad.npz", "term 1.*canonical")
    # n_terms = 0 is refused
    h2 = _header(m)
    h2["layers"][0]["params"]["n_terms"] = 0
    _rewrite(tmp_path / "zero.npz", m, h2)
    _refused(tmp_path / "zero.npz", "n_terms")
