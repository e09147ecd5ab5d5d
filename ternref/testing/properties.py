"""Property checks for projection functions, driven by hypothesis.

:func:`check_projection` runs one hypothesis search per property (so a failure is about exactly
one property and hypothesis shrinks it on its own), each from its own seed, and raises a
:class:`PropertyViolation` (an ``AssertionError``) that names the property, states its definition
(from :data:`ternref.projections.PROPERTIES`), and shows the shrunk counterexample with the
expected and the actual output.

The defaults (:data:`DEFAULTS`) are properties the projection functions of the survey have,
deterministic or stochastic (under a fixed generator): ``range``, ``dtype_preserving``,
``zero_safe``, ``sign_preserving`` and ``coordinate_monotone``. (The one exception among the
registered ones is STTN's merge of two binary kernels: ``sgn(0) = +1`` makes an entry whose two
latents are both 0 a nonzero level, so it refutes ``sign_preserving``.) The last two tie every
output entry to its own input entry: flipping signs, giving the codes to the wrong weights
(reversed, shifted by one, sorted) or mapping a zero weight to a nonzero level each fail one of
them.
``monotone``, ``odd``, ``scale_equivariant``, ``permutation_equivariant``, ``idempotent`` and
``optimal`` are opt-in; any default can be switched off by name.

Why ``coordinate_monotone`` and not ``monotone`` as the default: under a fixed generator a
stochastic projection (TernaryConnect, TernGrad) draws one random number per position, so a
smaller weight can be kept while a larger one is dropped (not monotone), yet raising a weight
never lowers its own code. It still sees codes given to the wrong weights, because raising one
weight past the others moves the tensor's statistics (the threshold rises): a code that belongs
to *another* weight can then drop while the raised weight's own could not. The check raises one
entry (chosen by hypothesis) past the largest magnitude, to another entry's value (forming a
tie), to the next float, to 0, ``-w_i`` or ``2 w_i``, and compares that entry's code before and
after.

Equality of two projections (odd, scale, permutation, idempotent) compares ``dense()`` values
element by element with a *relative* tolerance: ``|a - b| <= rtol * max(|a|, |b|)``, with
``rtol = 1e-5`` for float32 and ``1e-12`` for float64 by default. A relative test never lets a
flipped code pass (0 against a nonzero level, or opposite signs, always fail) and copes with
tensors whose scales range from 1e-30 to 1e30. Scale equivariance uses power-of-two factors
(:func:`ternref.testing.strategies.positive_scales`), so the only error left is the projection's
own rounding.
"""

from __future__ import annotations

import functools
import itertools
import math
import zlib

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from ternref.projections._registry import (
    INPUT_KINDS,
    PAIR_UNDEFINED,
    PROPERTIES,
    ProjectionInfo,
    get,
)
from ternref.ternary import Ternary
from ternref.testing.strategies import positive_scales, weight_pairs, weight_shapes, weights

#: Order in which :func:`check_projection` runs the properties (cheapest, most basic first).
ORDER = (
    "zero_safe",
    "range",
    "dtype_preserving",
    "sign_preserving",
    "coordinate_monotone",
    "monotone",
    "odd",
    "scale_equivariant",
    "permutation_equivariant",
    "idempotent",
    "optimal",
)

#: Properties :func:`check_projection` checks unless switched off by name: the ones the
#: registered projection functions have (stochastic ones under a fixed generator; STTN refutes
#: ``sign_preserving`` at exact zeros).
DEFAULTS = frozenset(
    {"range", "dtype_preserving", "zero_safe", "sign_preserving", "coordinate_monotone"}
)

#: Default relative tolerance per dtype for comparing two projections.
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}

#: Largest input (number of elements) the ``optimal`` check brute-forces: 3**8 = 6561 codes.
OPTIMAL_MAX_SIZE = 8


class PropertyViolation(AssertionError):
    """A projection broke a property; the message says which, and shows the counterexample.

    Attributes
    ----------
    property : str
        Key in :data:`ternref.projections.PROPERTIES` (or ``"output"`` when the function did not
        return a valid :class:`~ternref.Ternary` at all).
    w : ndarray, tuple of two ndarrays, or None
        The (shrunk) input that broke it; ``(w1, w2)`` for a weight-pair projection.
    expected, got : ndarray or None
        What the property required and what the function produced.
    """

    def __init__(self, prop, detail, w=None, expected=None, got=None, fn_name="projection"):
        self.property = prop
        self.w = w
        self.expected = expected
        self.got = got
        definition = PROPERTIES.get(prop, "returns a ternref.Ternary of the input's shape")
        lines = [
            f"projection {fn_name!r} violates property {prop!r}",
            f"  definition: {definition}",
            f"  problem: {detail}",
        ]
        if w is not None:
            lines.append("  smallest counterexample found by hypothesis (shrunk):")
            if isinstance(w, tuple):
                lines += [f"    w{k + 1} = {_src(part)}" for k, part in enumerate(w)]
            else:
                lines.append(f"    w = {_src(w)}")
        if expected is not None:
            lines += ["  expected:", f"    {_show(expected)}", "  got:", f"    {_show(got)}"]
            where = _first_mismatch(expected, got)
            if where:
                lines.append(f"  first mismatch: {where}")
        super().__init__("\n".join(lines))


# ------------------------------------------------------------------------------- formatting
def _src(a) -> str:
    """A copy-pasteable ``np.array(...)`` for ``a`` (exact: Python float repr round-trips)."""
    a = np.asarray(a)
    body = repr(a.tolist()) if a.size <= 200 else f"<{a.size} values, first {a.ravel()[:8]}>"
    return f"np.array({body}, dtype=np.{a.dtype})  # shape {a.shape}"


def _show(a) -> str:
    a = np.asarray(a)
    with np.printoptions(precision=9, threshold=60, linewidth=96):
        text = np.array2string(a, separator=", ")
    return "\n    ".join(line for line in text.splitlines() if line.strip())


def _first_mismatch(expected, got):
    e, g = np.asarray(expected), np.asarray(got)
    if e.shape != g.shape:
        return f"shapes differ: {e.shape} vs {g.shape}"
    bad = np.argwhere(~_close_mask(e, g, None))
    if bad.size == 0:
        return ""
    i = tuple(int(k) for k in bad[0])
    return f"index {i}: expected {e[i]!r}, got {g[i]!r}"


# ------------------------------------------------------------------------------- helpers
def _close_mask(expected, got, rtol):
    e = np.asarray(expected, dtype=np.float64)
    g = np.asarray(got, dtype=np.float64)
    if rtol is None:
        rtol = RTOL.get(np.asarray(got).dtype, 1e-12)
    return np.abs(e - g) <= rtol * np.maximum(np.abs(e), np.abs(g))


def _name(fn) -> str:
    return getattr(fn, "__name__", None) or getattr(fn, "name", None) or repr(fn)


# An input is one array (weights, a gradient) or a tuple (w1, w2) of equal shape and dtype (a
# weight pair). These three helpers are the only places that tell the two apart.
def _parts(x) -> tuple:
    return x if isinstance(x, tuple) else (x,)


def _map(x, f):
    """``f`` applied to the array, or to both arrays of a pair."""
    return tuple(f(a) for a in x) if isinstance(x, tuple) else f(x)


def _weight(x) -> np.ndarray:
    """The weight the output stands for: ``w``, or ``w1 + w2`` for a pair (T = B1 + B2)."""
    return x[0] + x[1] if isinstance(x, tuple) else x


def _index(shape, flat: int) -> tuple:
    return tuple(int(k) for k in np.unravel_index(flat, shape))


class _Runner:
    """Calls the projection and checks its output's structure; shared by every property."""

    def __init__(self, fn, granularity, rtol, name):
        self.fn, self.granularity, self.rtol, self.name = fn, granularity, rtol, name

    def fail(self, prop, detail, w=None, expected=None, got=None):
        raise PropertyViolation(prop, detail, w, expected, got, fn_name=self.name)

    def call(self, x, prop, shown=None) -> Ternary:
        """``fn(x)`` (or ``fn(w1, w2)``), refusing exceptions, input mutation and anything but a
        valid Ternary of the input's shape."""
        shown = x if shown is None else shown
        originals = [a.copy() for a in _parts(x)]
        try:
            t = self.fn(*_parts(x))
        except Exception as exc:  # any exception on a valid input is a failure
            self.fail(prop, f"raised {type(exc).__name__}: {exc}", shown)
        for a, original in zip(_parts(x), originals):
            if not (
                np.array_equal(a, original) and np.array_equal(np.signbit(a), np.signbit(original))
            ):
                self.fail(prop, "the projection modified its input array in place", shown)
        if not isinstance(t, Ternary):
            self.fail(
                "output",
                f"returned {type(t).__module__}.{type(t).__name__}, expected ternref.Ternary",
                shown,
            )
        shape = _parts(x)[0].shape
        if t.shape != shape:
            self.fail("output", f"returned shape {t.shape} for an input of shape {shape}", shown)
        if self.granularity is not None and t.granularity != self.granularity:
            self.fail(
                "output", f"granularity {t.granularity!r}, expected {self.granularity!r}", shown
            )
        return t

    def dense(self, t, x, prop):
        try:
            return np.asarray(t.dense())
        except Exception as exc:
            self.fail(prop, f"dense() raised {type(exc).__name__}: {exc}", x)

    def same(self, prop, detail, x, expected, got):
        expected, got = np.asarray(expected), np.asarray(got)
        if expected.shape != got.shape or not np.all(_close_mask(expected, got, self.rtol)):
            self.fail(prop, detail, x, expected, got)


def _group_ids(t: Ternary) -> np.ndarray:
    """For each entry, the index of the scale it uses (its scale group)."""
    scale_shape = np.shape(t.alpha_pos)
    ids = np.arange(max(1, math.prod(scale_shape))).reshape(scale_shape)
    return np.asarray(t.expand(ids))


# ------------------------------------------------------------------------------- the checks
def _check_range(r: _Runner, x, data):
    t = r.call(x, "range")
    codes = np.asarray(t.codes)
    if codes.dtype != np.int8:
        r.fail("range", f"codes have dtype {codes.dtype}, expected int8", x)
    bad = codes[(codes < -1) | (codes > 1)]
    if bad.size:
        r.fail("range", f"codes outside {{-1, 0, +1}}: {np.unique(bad)[:5].tolist()}", x)
    d = r.dense(t, x, "range")
    if d.shape != codes.shape or not np.all(np.isfinite(d)):
        r.fail("range", "dense() is not a finite array of the input's shape", x, got=d)
    # Independent reconstruction: alpha_pos [c = +1] - alpha_neg [c = -1] + offset.
    pos, neg = t.expand(t.alpha_pos), t.expand(t.alpha_neg)
    levels = np.where(codes > 0, pos, np.where(codes < 0, -neg, 0.0))
    if t.offset is not None:
        levels = levels + t.expand(t.offset)
    r.same("range", "dense() differs from the levels given by codes and scales", x, levels, d)
    ids = _group_ids(t)
    for g in np.unique(ids):
        values = np.unique(d[ids == g])
        if values.size > 3:
            r.fail("range", f"scale group {int(g)} has {values.size} distinct values", x, got=d)


def _check_dtype(r: _Runner, x, data):
    t = r.call(x, "dtype_preserving")
    d = r.dense(t, x, "dtype_preserving")
    dtype = _parts(x)[0].dtype
    if t.dtype != dtype or d.dtype != dtype:
        r.fail(
            "dtype_preserving",
            f"input dtype {dtype}, scales {t.dtype}, dense() {d.dtype}",
            x,
        )


def _check_zero(r: _Runner, x, data):
    # The all-zero input of x's shape and dtype, with x's signs on its zeros (-0.0 included).
    z = _map(x, lambda a: np.copysign(np.zeros_like(a), a))
    t = r.call(z, "zero_safe")
    d = r.dense(t, z, "zero_safe")
    scales = [t.alpha_pos, t.alpha_neg] + ([] if t.offset is None else [t.offset])
    if not (np.all(np.isfinite(d)) and all(np.all(np.isfinite(s)) for s in scales)):
        r.fail("zero_safe", "non-finite output on an all-zero input", z, got=d)


def _check_sign(r: _Runner, x, data):
    d = r.dense(r.call(x, "sign_preserving"), x, "sign_preserving")
    w = _weight(x)
    bad = (d != 0) & (np.sign(d) != np.sign(w))
    if np.any(bad):
        i = tuple(int(k) for k in np.argwhere(bad)[0])
        what = "a zero weight mapped to a nonzero value" if w[i] == 0 else "the sign flipped"
        name = "w1 + w2" if isinstance(x, tuple) else "w"
        r.fail(
            "sign_preserving",
            f"at index {i}: {name} = {w[i]!r} but w_hat = {d[i]!r} ({what})",
            x,
            expected=np.where(bad, 0.0, d).astype(d.dtype),
            got=d,
        )


def _raises(a: np.ndarray, i: int) -> dict:
    """Values above ``a.flat[i]`` worth trying, by kind (normal floats or zero only).

    The jumps past the largest magnitude move any threshold computed from the tensor's
    statistics (a mean, a max, an RMS of at most ``a.size`` entries) above every other entry;
    ties form when an entry is raised to another entry's value."""
    x = float(a.flat[i])
    top = float(np.max(np.abs(a))) or 1.0
    kinds = {
        "past the largest magnitude": [2 * top + abs(x)],
        "far past it": [4 * a.size * top + abs(x)],
        "to another entry's value": a.ravel().tolist() + (-a).ravel().tolist(),
        "to the next float": [np.nextafter(a.flat[i], a.dtype.type(np.inf))],
        "to zero": [0.0],
        "to its negation": [-x],
        "to twice itself": [2 * x],
    }
    tiny = np.finfo(a.dtype).tiny
    found = {}
    for kind, values in kinds.items():
        v = np.asarray(values, dtype=np.float64)
        with np.errstate(over="ignore"):
            v = v[np.isfinite(v)].astype(a.dtype)
        v = v[np.isfinite(v) & (v > a.flat[i]) & ((v == 0) | (np.abs(v) >= tiny))]
        if v.size:
            found[kind] = np.unique(v).tolist()
    return found


def _code(c: int) -> str:
    return {1: "+1", 0: "0", -1: "-1"}.get(c, str(c))


def _check_coordinate_monotone(r: _Runner, x, data):
    prop = "coordinate_monotone"
    t = r.call(x, prop)
    parts = _parts(x)
    k = data.draw(st.integers(0, len(parts) - 1), label="kernel") if len(parts) > 1 else 0
    a, pair = parts[k], len(parts) > 1

    def check_raise(i, value):
        raised = a.copy()
        raised.flat[i] = value
        x2 = tuple(raised if j == k else p for j, p in enumerate(parts)) if pair else raised
        t2 = r.call(x2, prop, shown=x)
        before, after = int(t.codes.flat[i]), int(t2.codes.flat[i])
        if after < before:
            idx = _index(a.shape, i)
            entry = f"w{k + 1}{list(idx)}" if pair else f"w{list(idx)}"
            r.fail(
                prop,
                f"raising {entry} from {a.flat[i]!r} to {value!r} (every other entry unchanged) "
                f"lowered its code from {_code(before)} to {_code(after)}"
                f"\n    codes before: {_show(t.codes)}\n    codes after:  {_show(t2.codes)}"
                f"\n    raised input: {_src(raised)}",
                x,
            )

    # A code of -1 cannot go lower: raise the entries whose code is 0 or +1. Each of them, in
    # turn, far past the largest magnitude (so that a code read from another weight drops) ...
    can_drop = np.flatnonzero(np.asarray(t.codes).ravel() >= 0).tolist()
    for i in can_drop:
        far = _raises(a, i).get("far past it")
        if far:
            check_raise(i, a.dtype.type(far[0]))
    if not can_drop:
        return
    # ... and one of them, chosen by hypothesis, by a raise of any kind.
    i = data.draw(st.sampled_from(can_drop), label="index")
    raises = _raises(a, i)
    if raises:  # empty only if a.flat[i] is the largest finite float
        kind = data.draw(st.sampled_from(list(raises)), label="raise")
        check_raise(i, a.dtype.type(data.draw(st.sampled_from(raises[kind]), label="to")))


def _check_monotone(r: _Runner, x, data):
    t = r.call(x, "monotone")
    d = r.dense(t, x, "monotone")
    w = _weight(x)
    name = "w1 + w2" if isinstance(x, tuple) else "w"
    ids = _group_ids(t)
    for g in np.unique(ids):
        wg, dg = w[ids == g].astype(np.float64), d[ids == g].astype(np.float64)
        order = np.lexsort((dg, wg))  # by w, then by w_hat
        ws, ds = wg[order], dg[order]
        down = ds[1:] < ds[:-1]
        split = (ws[1:] == ws[:-1]) & (ds[1:] != ds[:-1])
        if np.any(down | split):
            j = int(np.flatnonzero(down | split)[0])
            r.fail(
                "monotone",
                f"in scale group {int(g)}: {name} = {ws[j]!r} <= {ws[j + 1]!r} but "
                f"w_hat = {ds[j]!r} > {ds[j + 1]!r}"
                if down[j]
                else f"in scale group {int(g)}: equal values {name} = {ws[j]!r} map to "
                f"{ds[j]!r} and {ds[j + 1]!r}",
                x,
            )


def _check_odd(r: _Runner, x, data):
    base = r.dense(r.call(x, "odd"), x, "odd")
    flipped = r.dense(r.call(_map(x, np.negative), "odd", shown=x), x, "odd")
    r.same("odd", "project(-w).dense() != -project(w).dense()", x, -base, flipped)


def _check_scale(r: _Runner, x, data):
    c = data.draw(positive_scales(), label="c")
    dtype = _parts(x)[0].dtype
    cx = _map(x, lambda a: a * dtype.type(c))
    tiny = np.finfo(dtype).tiny
    for a, ca in zip(_parts(x), _parts(cx)):
        if not np.all(np.isfinite(ca)) or np.any(np.abs(ca[a != 0]) < tiny):
            return  # c*w left the normal range of the dtype: the property is not testable here
    base = r.dense(r.call(x, "scale_equivariant"), x, "scale_equivariant")
    scaled = r.dense(r.call(cx, "scale_equivariant", shown=x), x, "scale_equivariant")
    r.same(
        "scale_equivariant",
        f"project(c*w).dense() != c*project(w).dense() for c = {c!r}",
        x,
        base * dtype.type(c),
        scaled,
    )


def _check_permutation(r: _Runner, x, data):
    t = r.call(x, "permutation_equivariant")
    base = r.dense(t, x, "permutation_equivariant")
    shape = base.shape
    if t.granularity == "channel" and len(shape) > 1:
        # Per-channel scales: permute the entries of every output channel the same way.
        perm = np.asarray(data.draw(st.permutations(range(math.prod(shape[1:]))), label="perm"))

        def permute(a):
            return a.reshape(shape[0], -1)[:, perm].reshape(shape)
    else:
        perm = np.asarray(data.draw(st.permutations(range(base.size)), label="perm"))

        def permute(a):
            return a.ravel()[perm].reshape(shape)

    got = r.dense(
        r.call(_map(x, permute), "permutation_equivariant", shown=x), x, "permutation_equivariant"
    )
    r.same(
        "permutation_equivariant",
        f"project(P w) != P project(w) for the permutation {perm.tolist()[:20]}",
        x,
        permute(base),
        got,
    )


def _check_idempotent(r: _Runner, x, data):
    first = r.dense(r.call(x, "idempotent"), x, "idempotent")
    second = r.dense(r.call(first, "idempotent", shown=x), x, "idempotent")
    r.same("idempotent", "project(project(w).dense()) != project(w)", x, first, second)


@functools.cache
def _all_codes(m: int) -> np.ndarray:
    """Every code vector of length ``m``, as a ``(3**m, m)`` float64 array."""
    return np.asarray(list(itertools.product((-1.0, 0.0, 1.0), repeat=m)))


def _best_ternary(w: np.ndarray, symmetric: bool) -> np.ndarray:
    """The ``w_hat = alpha_pos [c = 1] - alpha_neg [c = -1]`` closest to ``w`` (float64), over
    every ``c`` in {-1, 0, 1}^m and the best scales >= 0 (``alpha_pos == alpha_neg`` if
    symmetric).

    For a fixed ``c`` the best scale is a mean over the support, so the squared error is
    ``||w||^2`` minus a gain: ``max(c.w, 0)^2 / |c|`` (symmetric), or that term taken separately
    over the +1 and the -1 entries (asymmetric). The code with the largest gain wins."""
    codes = _all_codes(w.size)
    levels = np.zeros_like(codes)
    gain = np.zeros(len(codes))
    for on, sign in [(codes != 0, codes)] if symmetric else [(codes == 1, 1), (codes == -1, -1)]:
        total, count = (on * sign) @ w, on.sum(axis=1)  # sum of c_i w_i over the support
        alpha = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
        alpha = np.maximum(alpha, 0.0)
        gain += alpha * alpha * count  # = max(total, 0)^2 / count
        levels += on * sign * alpha[:, None]
    return levels[np.argmax(gain)]


def _check_optimal(r: _Runner, x, data):
    if x.size > OPTIMAL_MAX_SIZE:
        return  # only a user strategy gets here; the brute force is for small inputs
    t = r.call(x, "optimal")
    if t.offset is not None:
        raise ValueError(
            "check 'optimal' covers ternary sets without an offset; the projection returned "
            "a Ternary with an offset"
        )
    d = r.dense(t, x, "optimal")
    w = x.astype(np.float64)
    ids = _group_ids(t)
    best = np.zeros_like(w)
    for g in np.unique(ids):
        best[ids == g] = _best_ternary(w[ids == g], t.symmetric)
    error = float(np.sum((w - d.astype(np.float64)) ** 2))
    least = float(np.sum((w - best) ** 2))
    rtol = RTOL.get(x.dtype, 1e-12) if r.rtol is None else r.rtol
    if error > least + rtol * float(np.sum(w * w)):
        kind = "symmetric" if t.symmetric else "asymmetric"
        r.fail(
            "optimal",
            f"squared error {error!r}, but the best {kind} ternary tensor with the output's "
            f"scale groups (granularity {t.granularity!r}) has {least!r}; expected shows it",
            x,
            expected=best,
            got=d,
        )


_CHECKS = {
    "range": _check_range,
    "dtype_preserving": _check_dtype,
    "zero_safe": _check_zero,
    "sign_preserving": _check_sign,
    "coordinate_monotone": _check_coordinate_monotone,
    "monotone": _check_monotone,
    "odd": _check_odd,
    "scale_equivariant": _check_scale,
    "permutation_equivariant": _check_permutation,
    "idempotent": _check_idempotent,
    "optimal": _check_optimal,
}


# ------------------------------------------------------------------------------- driver
def _settings(max_examples, derandomize):
    return settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=derandomize,
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        print_blob=False,
    )


def _property_seed(seed: int, prop: str) -> int:
    """Each property's own search seed, from the caller's ``seed`` and the property name."""
    return zlib.crc32(f"{seed}:{prop}".encode())


def _default_strategy(prop, input_kind, nonzero):
    """What :func:`check_projection` draws when the caller gives no strategy."""
    if input_kind == "weight_pair":
        strategy = weight_pairs()
        if nonzero:
            return strategy.filter(lambda x: bool(np.any(x[0]) or np.any(x[1])))
        return strategy
    if prop == "optimal":
        strategy = weights(shapes=weight_shapes(max_size=OPTIMAL_MAX_SIZE))
    else:
        strategy = weights()
    return strategy.filter(lambda w: bool(np.any(w))) if nonzero else strategy


def _search(fn, prop, *, max_examples, strategy, granularity, rtol, derandomize, seed, name):
    runner = _Runner(fn, granularity, rtol, name or _name(fn))
    check = _CHECKS[prop]

    @_settings(max_examples, derandomize=False)
    @given(data=st.data())
    def search(data):
        x = data.draw(strategy, label="w")
        check(runner, x, data)

    if derandomize:
        search = hypothesis_seed(_property_seed(seed, prop))(search)
    search()


def _input_kind(input_kind, flags):
    if input_kind not in INPUT_KINDS:
        raise ValueError(f"input_kind must be one of {INPUT_KINDS}, got {input_kind!r}")
    if input_kind == "weight_pair":
        undefined = sorted(p for p in PAIR_UNDEFINED if flags.get(p))
        if undefined:
            raise ValueError(f"{undefined} are not defined for input_kind='weight_pair'")
    return input_kind


def check_projection(
    fn,
    *,
    range: bool = True,  # noqa: A002 -- the property is called "range" in PROPERTIES
    sign_preserving: bool = True,
    coordinate_monotone: bool = True,
    monotone: bool = False,
    odd: bool = False,
    scale_equivariant: bool = False,
    permutation_equivariant: bool = False,
    idempotent: bool = False,
    optimal: bool = False,
    dtype_preserving: bool = True,
    zero_safe: bool = True,
    max_examples: int = 100,
    granularity: str | None = None,
    weights_strategy=None,
    rtol: float | None = None,
    derandomize: bool = True,
    seed: int = 0,
    input_kind: str = "weights",
    name: str | None = None,
) -> None:
    """Property-test a projection function ``fn(w) -> Ternary`` with hypothesis.

    Every property set to ``True`` is searched separately (``max_examples`` inputs each, in the
    order of :data:`ORDER`, ``zero_safe`` first, each from its own seed); the first one that
    fails raises :class:`PropertyViolation` with the property's name and definition and the
    smallest counterexample hypothesis found. Whatever the flags, every call must return a
    :class:`ternref.Ternary` of the input's shape and must not modify its input.

    With the defaults, ``check_projection(fn)`` checks :data:`DEFAULTS`, the properties the
    registered projection functions have: ``range``, ``dtype_preserving``, ``zero_safe``,
    ``sign_preserving`` (no sign flips, and a zero weight maps to 0) and
    ``coordinate_monotone`` (raising one weight never lowers its own code; it fails when codes
    are given to the wrong weights). Switch a default off by name (``sign_preserving=False``)
    when your projection does not have it on purpose.

    Parameters
    ----------
    fn : callable
        ``fn(w)`` for a float ndarray ``w`` (``fn(w1, w2)`` with ``input_kind="weight_pair"``).
        Wrap extra arguments with ``functools.partial`` or a lambda; wrap a stochastic
        projection ``fn(w, rng)`` with :func:`fixed_generator`.
    range, sign_preserving, coordinate_monotone, dtype_preserving, zero_safe : bool
        The default properties (on); see :data:`ternref.projections.PROPERTIES`.
    monotone, odd, scale_equivariant, permutation_equivariant, idempotent : bool
        Opt-in properties (off).
    optimal : bool
        Opt-in: on inputs of at most 8 elements the squared error ``||w - w_hat||^2`` is no
        larger than the brute-force least squared error over the output's own feasible set:
        all ``3**n`` code vectors, each scale group (from the output's granularity) with its
        best scale (``alpha_pos`` and ``alpha_neg`` separately when the output is asymmetric).
        The comparison allows ``rtol * ||w||^2``. Outputs with an offset are refused
        (``ValueError``). Registered projections claiming it: ``exact``, ``lat`` (LAT_e with
        ``d = 1``) and ``fgq`` (exact per group); ``twn``, ``lat_approx`` and ``admm`` refute it.
    max_examples : int
        Hypothesis examples per property.
    granularity : {"tensor", "channel", "group"}, optional
        If given, every output must have this granularity.
    weights_strategy : SearchStrategy, optional
        Inputs to draw; default :func:`ternref.testing.strategies.weights` (at most 8 elements
        for ``optimal``; :func:`~ternref.testing.strategies.weight_pairs` for pairs), without
        all-zero inputs when ``zero_safe=False``. With your own strategy, ``optimal`` skips
        inputs of more than 8 elements.
    rtol : float, optional
        Relative tolerance for comparing outputs (default 1e-5 for float32, 1e-12 for float64).
    derandomize : bool
        Reproducible searches from ``seed`` (default). ``False``: new random inputs every run.
    seed : int
        Base seed; each property searches from its own seed derived from ``seed`` and its name,
        so no two properties see the same inputs.
    input_kind : {"weights", "gradient", "weight_pair"}
        ``"gradient"`` is checked exactly like ``"weights"`` (``w`` is the gradient).
        ``"weight_pair"``: ``fn(w1, w2)`` merges two kernels into one ternary tensor, the
        properties are read with ``w = w1 + w2`` (see :data:`ternref.projections.PROPERTIES`);
        ``idempotent`` and ``optimal`` are not defined for pairs.
    name : str, optional
        Name shown in messages (default ``fn.__name__``).

    Raises
    ------
    PropertyViolation
        An ``AssertionError`` naming the broken property.

    Notes
    -----
    Call it from a plain test function (or a script). Inside a test that is itself decorated
    with ``@given``, hypothesis refuses nested searches unless the outer test's settings
    suppress ``HealthCheck.nested_given``. The searches use their own settings (no example
    database, ``deadline=None``, all health checks off), so a project's hypothesis profile does
    not change them; pass ``max_examples`` and ``derandomize`` explicitly to follow one.

    Examples
    --------
    >>> from ternref.projections import twn
    >>> check_projection(twn, odd=True, scale_equivariant=True, idempotent=True, max_examples=20)
    """
    flags = {
        "range": range,
        "sign_preserving": sign_preserving,
        "coordinate_monotone": coordinate_monotone,
        "monotone": monotone,
        "odd": odd,
        "scale_equivariant": scale_equivariant,
        "permutation_equivariant": permutation_equivariant,
        "idempotent": idempotent,
        "optimal": optimal,
        "dtype_preserving": dtype_preserving,
        "zero_safe": zero_safe,
    }
    input_kind = _input_kind(input_kind, flags)
    for prop in ORDER:
        if not flags[prop]:
            continue
        strategy = weights_strategy
        if strategy is None:
            # Without a zero_safe claim, all-zero inputs would make every other property fail.
            strategy = _default_strategy(prop, input_kind, nonzero=not zero_safe)
        _search(
            fn,
            prop,
            max_examples=max_examples,
            strategy=strategy,
            granularity=granularity,
            rtol=rtol,
            derandomize=derandomize,
            seed=seed,
            name=name,
        )


def find_counterexample(
    fn,
    prop: str,
    *,
    max_examples: int = 200,
    weights_strategy=None,
    granularity: str | None = None,
    rtol: float | None = None,
    derandomize: bool = True,
    seed: int = 0,
    input_kind: str = "weights",
    name: str | None = None,
) -> PropertyViolation | None:
    """Search for an input that breaks ``prop``; return the violation (shrunk) or ``None``.

    Use it to pin that a property a method is known *not* to have really fails (the registry's
    ``refutes``). ``violation.w`` is the counterexample, ``str(violation)`` the full report.
    The arguments are those of :func:`check_projection`; the default inputs include all-zero
    tensors.
    """
    if prop not in _CHECKS:
        raise ValueError(f"prop must be one of {sorted(_CHECKS)}, got {prop!r}")
    input_kind = _input_kind(input_kind, {prop: True})
    try:
        _search(
            fn,
            prop,
            max_examples=max_examples,
            strategy=(
                _default_strategy(prop, input_kind, nonzero=False)
                if weights_strategy is None
                else weights_strategy
            ),
            granularity=granularity,
            rtol=rtol,
            derandomize=derandomize,
            seed=seed,
            name=name,
        )
    except PropertyViolation as violation:
        return violation
    return None


def fixed_generator(fn, seed: int = 0):
    """Wrap a stochastic projection ``fn(w, rng)`` into a deterministic one for the checks.

    Every call gets a fresh ``numpy.random.default_rng(seed)``, so inputs of the same shape get
    the same random draws: ``project(-w)`` and ``project(w)``, or ``w`` and ``w`` with one entry
    raised, are compared sample by sample. That is the sense in which a stochastic projection
    claims a property (:data:`ternref.projections.PROPERTIES`).

    Parameters
    ----------
    fn : callable
        ``fn(*arrays, rng=generator) -> Ternary`` (``tc``, ``terngrad``, or your own).
    seed : int
        Seed of the generator made for each call.

    Returns
    -------
    callable
        ``wrapped(*arrays) = fn(*arrays, rng=np.random.default_rng(seed))``.

    Examples
    --------
    >>> from ternref.projections import tc
    >>> check_projection(fixed_generator(tc), odd=True, max_examples=20)
    """

    def wrapped(*arrays):
        return fn(*arrays, rng=np.random.default_rng(seed))

    wrapped.__name__ = f"{_name(fn)} (rng seed {seed})"
    return wrapped


def registered_function(projection, *, rng_seed: int = 0):
    """The callable :func:`check_projection` checks for a registered projection.

    Deterministic projections are returned as they are; stochastic ones are wrapped with
    :func:`fixed_generator` (``rng_seed``). Pass ``input_kind=info.input_kind`` along.
    """
    info = projection if isinstance(projection, ProjectionInfo) else get(projection)
    return info.fn if info.deterministic else fixed_generator(info.fn, rng_seed)


def check_registered(
    projection, *, properties=None, max_examples: int = 50, rng_seed: int = 0, **kwargs
) -> None:
    """Run :func:`check_projection` on a registered projection with exactly its ``claims``.

    Stochastic projections are checked under :func:`fixed_generator`, weight-pair ones (STTN)
    as ``fn(w1, w2)``, gradient ones (TernGrad) like weights.

    Parameters
    ----------
    projection : str or ProjectionInfo
        Registry name (``"twn"``) or entry.
    properties : iterable of str, optional
        Check only these claims (default: all of them).
    max_examples : int
        Hypothesis examples per property.
    rng_seed : int
        Seed of the fixed generator for stochastic projections.
    **kwargs
        Passed to :func:`check_projection` (``weights_strategy``, ``rtol``, ``seed``, ...).
    """
    info = projection if isinstance(projection, ProjectionInfo) else get(projection)
    chosen = info.claims if properties is None else frozenset(properties)
    unclaimed = chosen - info.claims
    if unclaimed:
        raise ValueError(f"{info.name!r} does not claim {sorted(unclaimed)}")
    fn = registered_function(info, rng_seed=rng_seed)
    strategy = kwargs.pop("weights_strategy", None)
    for prop in ORDER:
        if prop not in chosen:
            continue
        # All-zero inputs are drawn for every property of a projection that claims zero_safe,
        # also when zero_safe itself is not among the properties checked now.
        nonzero = "zero_safe" not in info.claims
        check_projection(
            fn,
            max_examples=max_examples,
            name=info.name,
            input_kind=info.input_kind,
            weights_strategy=(
                _default_strategy(prop, info.input_kind, nonzero) if strategy is None else strategy
            ),
            **{p: p == prop for p in PROPERTIES},
            **kwargs,
        )
