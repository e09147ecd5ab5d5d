"""Registry of projection functions and the metadata that drives their tests.

Every projection module registers its public function with :func:`register`, giving the paper
it implements and the mathematical properties it claims (and those it is known *not* to have).
``tests/projections`` and :mod:`ternref.testing` read these claims, so adding a projection with
honest metadata is enough for it to be property-tested.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

# The properties a projection can claim (methods.md section 4). ``w`` is the input, ``w_hat`` =
# ``project(w).dense()``, ``code`` = ``project(w).codes``; a "scale group" is the set of entries
# sharing one scale (the whole tensor, an output channel or a group, as the output reports).
PROPERTIES = {
    "range": "values lie in {-alpha_neg, 0, +alpha_pos} per scale group (at most 3 levels)",
    "sign_preserving": "sign(w_hat_i) is 0 or sign(w_i); in particular w_i == 0 gives w_hat_i == 0",
    "coordinate_monotone": "raising one weight, all others fixed, never lowers its own code: "
    "w'_i > w_i and w'_j == w_j for all j != i imply code(w')_i >= code(w)_i",
    "monotone": "within a scale group, w_i <= w_j implies w_hat_i <= w_hat_j",
    "odd": "project(-w) == -project(w)",
    "scale_equivariant": "project(c*w) == c*project(w) for c > 0",
    "permutation_equivariant": "project(P w) == P project(w) for a permutation P (per-tensor only)",
    "idempotent": "project(project(w).dense()) == project(w)",
    "optimal": "for w of at most 8 elements, ||w - w_hat||^2 <= the least squared error over the "
    "output's own feasible set (every code vector in {-1, 0, 1}^n, each scale group with its "
    "best scales >= 0: one, or alpha_pos and alpha_neg when asymmetric), by brute force",
    "dtype_preserving": "float32 in gives float32 scales, float64 gives float64",
    "zero_safe": "an all-zero tensor gives finite output (no NaN)",
}
"""Property names and their definitions.

How the definitions read for the other kinds of input (see :func:`register`):

* ``input_kind="gradient"``: ``w`` is the gradient ``g``; nothing else changes.
* ``input_kind="weight_pair"`` (``fn(w1, w2)``, STTN's two binary kernels merged into one ternary
  kernel ``T = B1 + B2``, which stands for ``W1 + W2``): ``w`` is ``w1 + w2``; negating, scaling
  or permuting ``w`` does so to both kernels; "raising one weight" raises one entry of either
  kernel. ``idempotent`` and ``optimal`` are not defined for pairs.
* A stochastic projection (``deterministic=False``) claims a property *sample by sample*: for
  every fixed generator, i.e. called as ``fn(w, rng=np.random.default_rng(seed))`` with a fresh
  generator on every call, so that equal shapes get equal random draws
  (:func:`ternref.testing.fixed_generator`).
"""

INPUT_KINDS = ("weights", "weight_pair", "gradient")

#: Properties that have no meaning for ``input_kind="weight_pair"``.
PAIR_UNDEFINED = ("idempotent", "optimal")


@dataclass(frozen=True)
class ProjectionInfo:
    """A registered projection function and what it claims."""

    name: str
    fn: Callable
    paper: str
    year: int
    arxiv: str | None
    symmetric: bool
    deterministic: bool
    claims: frozenset = field(default_factory=frozenset)
    refutes: frozenset = field(default_factory=frozenset)
    summary: str = ""
    input_kind: str = "weights"

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


_REGISTRY: dict[str, ProjectionInfo] = {}


def register(
    name: str,
    *,
    paper: str,
    year: int,
    arxiv: str | None,
    symmetric: bool,
    deterministic: bool,
    claims=(),
    refutes=(),
    summary: str = "",
    input_kind: str = "weights",
):
    """Decorator registering a projection function under ``name``.

    ``claims`` are property names from :data:`PROPERTIES` that the function satisfies;
    ``refutes`` are properties it provably does not have (tests pin that they fail).
    ``input_kind`` says how the function is called:

    * ``"weights"`` -- ``fn(w)`` (deterministic) or ``fn(w, rng=rng)`` (stochastic) returns a
      ``Ternary`` of ``w``'s shape; the generic property suite runs on these;
    * ``"weight_pair"`` -- ``fn(w1, w2)`` (STTN's two binary kernels) returns one ``Ternary``;
    * ``"gradient"`` -- ``fn(g, rng=rng)`` ternarizes a gradient (TernGrad).

    A stochastic projection's claims and refutations are meant sample by sample, under a fixed
    generator (see :data:`PROPERTIES`); ``idempotent`` and ``optimal`` are not defined for
    ``"weight_pair"`` input. ``tests/projections/test_registry_claims.py`` runs every claim and
    every refutation through :mod:`ternref.testing`.
    """
    if input_kind not in INPUT_KINDS:
        raise ValueError(f"input_kind must be one of {INPUT_KINDS}, got {input_kind!r}")
    unknown = (set(claims) | set(refutes)) - set(PROPERTIES)
    if unknown:
        raise ValueError(f"unknown property name(s) {sorted(unknown)}; known: {sorted(PROPERTIES)}")
    undefined = (set(claims) | set(refutes)) & set(PAIR_UNDEFINED)
    if input_kind == "weight_pair" and undefined:
        raise ValueError(f"{name}: {sorted(undefined)} are not defined for weight_pair input")
    if set(claims) & set(refutes):
        raise ValueError(f"{name}: a property cannot be both claimed and refuted")

    def decorate(fn):
        if name in _REGISTRY:
            raise ValueError(f"projection {name!r} is already registered")
        _REGISTRY[name] = ProjectionInfo(
            name=name,
            fn=fn,
            paper=paper,
            year=year,
            arxiv=arxiv,
            symmetric=symmetric,
            deterministic=deterministic,
            claims=frozenset(claims),
            refutes=frozenset(refutes),
            summary=summary or (fn.__doc__ or "").strip().splitlines()[0],
            input_kind=input_kind,
        )
        return fn

    return decorate


def names() -> list[str]:
    """Names of all registered projection functions, sorted."""
    return sorted(_REGISTRY)


def get(name: str) -> ProjectionInfo:
    """The :class:`ProjectionInfo` registered under ``name``; ``KeyError`` lists the known names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown projection {name!r}; known: {', '.join(names())}") from None
