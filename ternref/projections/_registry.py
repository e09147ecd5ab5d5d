"""Registry of projection functions and the metadata that drives their tests.

Every projection module registers its public function with :func:`register`, giving the paper
it implements and the mathematical properties it claims (and those it is known *not* to have).
``tests/projections`` and :mod:`ternref.testing` read these claims, so adding a projection with
honest metadata is enough for it to be property-tested.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

# The properties a projection can claim. Definitions (methods.md section 4):
PROPERTIES = {
    "range": "values lie in {-alpha_neg, 0, +alpha_pos} per scale group (at most 3 levels)",
    "sign_preserving": "sign(w_hat_i) is 0 or sign(w_i)",
    "monotone": "within a scale group, w_i <= w_j implies w_hat_i <= w_hat_j",
    "odd": "project(-w) == -project(w)",
    "scale_equivariant": "project(c*w) == c*project(w) for c > 0",
    "permutation_equivariant": "project(P w) == P project(w) for a permutation P (per-tensor only)",
    "idempotent": "project(project(w).dense()) == project(w)",
    "dtype_preserving": "float32 in gives float32 scales, float64 gives float64",
    "zero_safe": "an all-zero tensor gives finite output (no NaN)",
}


INPUT_KINDS = ("weights", "weight_pair", "gradient")


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
    """
    if input_kind not in INPUT_KINDS:
        raise ValueError(f"input_kind must be one of {INPUT_KINDS}, got {input_kind!r}")
    unknown = (set(claims) | set(refutes)) - set(PROPERTIES)
    if unknown:
        raise ValueError(f"unknown property name(s) {sorted(unknown)}; known: {sorted(PROPERTIES)}")
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
