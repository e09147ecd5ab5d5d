"""Property checks for projection functions, driven by hypothesis.

:func:`check_projection` runs one hypothesis search per claimed property (so a failure is about
exactly one property and hypothesis shrinks it on its own) and raises a :class:`PropertyViolation`
(an ``AssertionError``) that names the property, states its definition (from
:data:`ternref.projections.PROPERTIES`), and shows the shrunk counterexample with the expected and
the actual output.

Equality of two projections (odd, scale, permutation, idempotent) compares ``dense()`` values
element by element with a *relative* tolerance: ``|a - b| <= rtol * max(|a|, |b|)``, with
``rtol = 1e-5`` for float32 and ``1e-12`` for float64 by default. A relative test never lets a
flipped code pass (0 against a nonzero level, or opposite signs, always fail) and copes with
tensors whose scales range from 1e-30 to 1e30. Scale equivariance uses power-of-two factors
(:func:`ternref.testing.strategies.positive_scales`), so the only error left is the projection's
own rounding.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from ternref.projections._registry import PROPERTIES, ProjectionInfo, get
from ternref.ternary import Ternary
from ternref.testing.strategies import positive_scales, weights, zero_tensors

#: Order in which :func:`check_projection` runs the properties (cheapest, most basic first).
ORDER = (
    "zero_safe",
    "range",
    "dtype_preserving",
    "sign_preserving",
    "monotone",
    "odd",
    "scale_equivariant",
    "permutation_equivariant",
    "idempotent",
)

#: Default relative tolerance per dtype for comparing two projections.
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


class PropertyViolation(AssertionError):
    """A projection broke a property; the message says which, and shows the counterexample.

    Attributes
    ----------
    property : str
        Key in :data:`ternref.projections.PROPERTIES` (or ``"output"`` when the function did not
        return a valid :class:`~ternref.Ternary` at all).
    w : ndarray or None
        The (shrunk) input that broke it.
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
            lines += [
                "  smallest counterexample found by hypothesis (shrunk):",
                f"    w = {_src(w)}",
            ]
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
        return np.array2string(a, separator=", ").replace("\n", "\n    ")


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


class _Runner:
    """Calls the projection and checks its output's structure; shared by every property."""

    def __init__(self, fn, granularity, rtol, name):
        self.fn, self.granularity, self.rtol, self.name = fn, granularity, rtol, name

    def fail(self, prop, detail, w=None, expected=None, got=None):
        raise PropertyViolation(prop, detail, w, expected, got, fn_name=self.name)

    def call(self, w, prop, shown_w=None) -> Ternary:
        """``fn(w)``, refusing exceptions, input mutation and anything but a valid Ternary."""
        shown_w = w if shown_w is None else shown_w
        original = w.copy()
        try:
            t = self.fn(w)
        except Exception as exc:  # any exception on a valid input is a failure
            self.fail(prop, f"raised {type(exc).__name__}: {exc}", shown_w)
        if not (
            np.array_equal(w, original) and np.array_equal(np.signbit(w), np.signbit(original))
        ):
            self.fail(prop, "the projection modified its input array in place", shown_w)
        if not isinstance(t, Ternary):
            self.fail(
                "output",
                f"returned {type(t).__module__}.{type(t).__name__}, expected ternref.Ternary",
                shown_w,
            )
        if t.shape != w.shape:
            self.fail("output", f"returned shape {t.shape} for an input of shape {w.shape}", w)
        if self.granularity is not None and t.granularity != self.granularity:
            self.fail("output", f"granularity {t.granularity!r}, expected {self.granularity!r}", w)
        return t

    def dense(self, t, w, prop):
        try:
            return np.asarray(t.dense())
        except Exception as exc:
            self.fail(prop, f"dense() raised {type(exc).__name__}: {exc}", w)

    def same(self, prop, detail, w, expected, got):
        expected, got = np.asarray(expected), np.asarray(got)
        if expected.shape != got.shape or not np.all(_close_mask(expected, got, self.rtol)):
            self.fail(prop, detail, w, expected, got)


def _group_ids(t: Ternary) -> np.ndarray:
    """For each entry, the index of the scale it uses (its scale group)."""
    scale_shape = np.shape(t.alpha_pos)
    ids = np.arange(max(1, math.prod(scale_shape))).reshape(scale_shape)
    return np.asarray(t.expand(ids))


# ------------------------------------------------------------------------------- the checks
def _check_range(r: _Runner, w, data):
    t = r.call(w, "range")
    codes = np.asarray(t.codes)
    if codes.dtype != np.int8:
        r.fail("range", f"codes have dtype {codes.dtype}, expected int8", w)
    bad = codes[(codes < -1) | (codes > 1)]
    if bad.size:
        r.fail("range", f"codes outside {{-1, 0, +1}}: {np.unique(bad)[:5].tolist()}", w)
    d = r.dense(t, w, "range")
    if d.shape != w.shape or not np.all(np.isfinite(d)):
        r.fail("range", "dense() is not a finite array of the input's shape", w, got=d)
    # Independent reconstruction: alpha_pos [c = +1] - alpha_neg [c = -1] + offset.
    pos, neg = t.expand(t.alpha_pos), t.expand(t.alpha_neg)
    levels = np.where(codes > 0, pos, np.where(codes < 0, -neg, 0.0))
    if t.offset is not None:
        levels = levels + t.expand(t.offset)
    r.same("range", "dense() differs from the levels given by codes and scales", w, levels, d)
    ids = _group_ids(t)
    for g in np.unique(ids):
        values = np.unique(d[ids == g])
        if values.size > 3:
            r.fail("range", f"scale group {int(g)} has {values.size} distinct values", w, got=d)


def _check_dtype(r: _Runner, w, data):
    t = r.call(w, "dtype_preserving")
    d = r.dense(t, w, "dtype_preserving")
    if t.dtype != w.dtype or d.dtype != w.dtype:
        r.fail(
            "dtype_preserving",
            f"input dtype {w.dtype}, scales {t.dtype}, dense() {d.dtype}",
            w,
        )


def _check_zero(r: _Runner, w, data):
    z = data.draw(zero_tensors(dtypes=(w.dtype,)), label="zeros")
    t = r.call(z, "zero_safe")
    d = r.dense(t, z, "zero_safe")
    scales = [t.alpha_pos, t.alpha_neg] + ([] if t.offset is None else [t.offset])
    if not (np.all(np.isfinite(d)) and all(np.all(np.isfinite(s)) for s in scales)):
        r.fail("zero_safe", "non-finite output on an all-zero input", z, got=d)


def _check_sign(r: _Runner, w, data):
    d = r.dense(r.call(w, "sign_preserving"), w, "sign_preserving")
    bad = (d != 0) & (np.sign(d) != np.sign(w))
    if np.any(bad):
        i = tuple(int(k) for k in np.argwhere(bad)[0])
        r.fail(
            "sign_preserving",
            f"at index {i}: w = {w[i]!r} but w_hat = {d[i]!r}",
            w,
            expected=np.where(bad, 0.0, d).astype(d.dtype),
            got=d,
        )


def _check_monotone(r: _Runner, w, data):
    t = r.call(w, "monotone")
    d = r.dense(t, w, "monotone")
    ids = _group_ids(t)
    for g in np.unique(ids):
        wg, dg = w[ids == g].astype(np.float64), d[ids == g].astype(np.float64)
        order = np.lexsort((dg, wg))  # by w, then by w_hat
        ws, ds = wg[order], dg[order]
        down = ds[1:] < ds[:-1]
        split = (ws[1:] == ws[:-1]) & (ds[1:] != ds[:-1])
        if np.any(down | split):
            k = int(np.flatnonzero(down | split)[0])
            r.fail(
                "monotone",
                f"in scale group {int(g)}: w = {ws[k]!r} <= {ws[k + 1]!r} but "
                f"w_hat = {ds[k]!r} > {ds[k + 1]!r}"
                if down[k]
                else f"in scale group {int(g)}: equal weights {ws[k]!r} map to "
                f"{ds[k]!r} and {ds[k + 1]!r}",
                w,
            )


def _check_odd(r: _Runner, w, data):
    base = r.dense(r.call(w, "odd"), w, "odd")
    flipped = r.dense(r.call(-w, "odd", shown_w=w), w, "odd")
    r.same("odd", "project(-w).dense() != -project(w).dense()", w, -base, flipped)


def _check_scale(r: _Runner, w, data):
    c = data.draw(positive_scales(), label="c")
    cw = w * w.dtype.type(c)
    tiny = np.finfo(w.dtype).tiny
    nz = w != 0
    if not np.all(np.isfinite(cw)) or np.any(np.abs(cw[nz]) < tiny):
        return  # c*w left the normal range of the dtype: the property is not testable here
    base = r.dense(r.call(w, "scale_equivariant"), w, "scale_equivariant")
    scaled = r.dense(r.call(cw, "scale_equivariant", shown_w=w), w, "scale_equivariant")
    r.same(
        "scale_equivariant",
        f"project(c*w).dense() != c*project(w).dense() for c = {c!r}",
        w,
        base * w.dtype.type(c),
        scaled,
    )


def _check_permutation(r: _Runner, w, data):
    t = r.call(w, "permutation_equivariant")
    base = r.dense(t, w, "permutation_equivariant")
    if t.granularity == "channel" and w.ndim > 1:
        # Per-channel scales: permute the entries of every output channel the same way.
        rows_w, rows_d = w.reshape(w.shape[0], -1), base.reshape(w.shape[0], -1)
        perm = np.asarray(data.draw(st.permutations(range(rows_w.shape[1])), label="perm"))
        pw = rows_w[:, perm].reshape(w.shape)
        expected = rows_d[:, perm].reshape(w.shape)
    else:
        perm = np.asarray(data.draw(st.permutations(range(w.size)), label="perm"))
        pw = w.ravel()[perm].reshape(w.shape)
        expected = base.ravel()[perm].reshape(w.shape)
    got = r.dense(r.call(pw, "permutation_equivariant", shown_w=w), w, "permutation_equivariant")
    r.same(
        "permutation_equivariant",
        f"project(P w) != P project(w) for the permutation {perm.tolist()[:20]}",
        w,
        expected,
        got,
    )


def _check_idempotent(r: _Runner, w, data):
    first = r.dense(r.call(w, "idempotent"), w, "idempotent")
    second = r.dense(r.call(first, "idempotent", shown_w=w), w, "idempotent")
    r.same("idempotent", "project(project(w).dense()) != project(w)", w, first, second)


_CHECKS = {
    "range": _check_range,
    "dtype_preserving": _check_dtype,
    "zero_safe": _check_zero,
    "sign_preserving": _check_sign,
    "monotone": _check_monotone,
    "odd": _check_odd,
    "scale_equivariant": _check_scale,
    "permutation_equivariant": _check_permutation,
    "idempotent": _check_idempotent,
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


def _search(fn, prop, *, max_examples, strategy, granularity, rtol, derandomize, name):
    runner = _Runner(fn, granularity, rtol, name or _name(fn))
    check = _CHECKS[prop]

    @_settings(max_examples, derandomize)
    @given(data=st.data())
    def search(data):
        w = data.draw(strategy, label="w")
        check(runner, w, data)

    search()


def check_projection(
    fn,
    *,
    range: bool = True,  # noqa: A002 -- the property is called "range" in PROPERTIES
    sign_preserving: bool = False,
    monotone: bool = False,
    odd: bool = False,
    scale_equivariant: bool = False,
    permutation_equivariant: bool = False,
    idempotent: bool = False,
    dtype_preserving: bool = True,
    zero_safe: bool = True,
    max_examples: int = 100,
    granularity: str | None = None,
    weights_strategy=None,
    rtol: float | None = None,
    derandomize: bool = True,
    name: str | None = None,
) -> None:
    """Property-test a projection function ``fn(w) -> Ternary`` with hypothesis.

    Every property set to ``True`` is searched separately (``max_examples`` inputs each, in the
    order of :data:`ORDER`, ``zero_safe`` first); the first one that fails raises
    :class:`PropertyViolation` with the property's name and definition and the smallest
    counterexample hypothesis found. Whatever the flags, every call
    must return a :class:`ternref.Ternary` of the input's shape and must not modify its input.

    Parameters
    ----------
    fn : callable
        ``fn(w)`` for a float ndarray ``w``. Wrap extra arguments with ``functools.partial`` or a
        lambda; a stochastic projection must be wrapped with a fixed seed.
    range, sign_preserving, monotone, odd, scale_equivariant, permutation_equivariant, \
idempotent, dtype_preserving, zero_safe : bool
        Which properties of :data:`ternref.projections.PROPERTIES` to check. ``range``,
        ``dtype_preserving`` and ``zero_safe`` are on by default.
    max_examples : int
        Hypothesis examples per property.
    granularity : {"tensor", "channel", "group"}, optional
        If given, every output must have this granularity.
    weights_strategy : SearchStrategy[ndarray], optional
        Inputs to draw; default :func:`ternref.testing.strategies.weights` (without all-zero
        tensors when ``zero_safe=False``).
    rtol : float, optional
        Relative tolerance for comparing outputs (default 1e-5 for float32, 1e-12 for float64).
    derandomize : bool
        Use a fixed seed (reproducible; default). Set ``False`` to explore new inputs each run.
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
    not change them.

    Examples
    --------
    >>> from ternref.projections import twn
    >>> check_projection(twn, odd=True, scale_equivariant=True, idempotent=True, max_examples=20)
    """
    flags = {
        "range": range,
        "sign_preserving": sign_preserving,
        "monotone": monotone,
        "odd": odd,
        "scale_equivariant": scale_equivariant,
        "permutation_equivariant": permutation_equivariant,
        "idempotent": idempotent,
        "dtype_preserving": dtype_preserving,
        "zero_safe": zero_safe,
    }
    strategy = weights_strategy
    if strategy is None:
        # Without a zero_safe claim, all-zero inputs would make every other property fail.
        strategy = weights() if zero_safe else weights().filter(lambda w: bool(np.any(w)))
    for prop in ORDER:
        if flags[prop]:
            _search(
                fn,
                prop,
                max_examples=max_examples,
                strategy=strategy,
                granularity=granularity,
                rtol=rtol,
                derandomize=derandomize,
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
    name: str | None = None,
) -> PropertyViolation | None:
    """Search for an input that breaks ``prop``; return the violation (shrunk) or ``None``.

    Use it to pin that a property a method is known *not* to have really fails (the registry's
    ``refutes``). ``violation.w`` is the counterexample, ``str(violation)`` the full report.
    """
    if prop not in _CHECKS:
        raise ValueError(f"prop must be one of {sorted(_CHECKS)}, got {prop!r}")
    try:
        _search(
            fn,
            prop,
            max_examples=max_examples,
            strategy=weights() if weights_strategy is None else weights_strategy,
            granularity=granularity,
            rtol=rtol,
            derandomize=derandomize,
            name=name,
        )
    except PropertyViolation as violation:
        return violation
    return None


def check_registered(projection, *, max_examples: int = 50, **kwargs) -> None:
    """Run :func:`check_projection` on a registered projection with exactly its ``claims``.

    Parameters
    ----------
    projection : str or ProjectionInfo
        Registry name (``"twn"``) or entry.
    max_examples : int
        Hypothesis examples per property.
    **kwargs
        Passed to :func:`check_projection` (``weights_strategy``, ``rtol``, ...).
    """
    info = projection if isinstance(projection, ProjectionInfo) else get(projection)
    if info.input_kind != "weights":
        raise ValueError(
            f"{info.name!r} takes {info.input_kind!r} input; check_registered handles 'weights'"
        )
    if not info.deterministic:
        raise ValueError(
            f"{info.name!r} is stochastic; wrap it with a fixed generator and call "
            "check_projection, e.g. lambda w: fn(w, rng=np.random.default_rng(0))"
        )
    flags = {prop: prop in info.claims for prop in PROPERTIES}
    check_projection(info.fn, max_examples=max_examples, name=info.name, **flags, **kwargs)
