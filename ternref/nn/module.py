"""Parameters and the module base class of the autograd-free network stack.

There is no tape. A module's ``forward(x)`` computes its output and caches what its backward
needs; ``backward(dy)`` takes dL/dy, returns dL/dx, and *adds* the gradients of its parameters
to their ``.grad`` (so gradients of a parameter used twice accumulate, as in llm.c);
``backward_params(dy)`` does the same without computing dL/dx (for a network's first layer).
Call :meth:`Module.zero_grad` before each step.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class Parameter:
    """A trainable array and the gradient accumulated into it.

    Attributes
    ----------
    data : ndarray
        The value the optimizer updates in place.
    grad : ndarray
        dL/d(data), same shape and dtype, zeroed by :meth:`zero_grad`.
    name : str
        A label for error messages and optimizer state (e.g. ``"weight"``).
    """

    __slots__ = ("data", "grad", "name", "requires_grad")

    def __init__(self, data: np.ndarray, name: str = "", requires_grad: bool = True):
        data = np.asarray(data)
        if not np.issubdtype(data.dtype, np.floating):
            raise TypeError(f"Parameter {name!r} must be floating point, got dtype {data.dtype}")
        self.data = data
        self.grad = np.zeros_like(data)
        self.name = name
        self.requires_grad = requires_grad

    @property
    def shape(self) -> tuple:
        return self.data.shape

    def zero_grad(self) -> None:
        self.grad[...] = 0

    def __repr__(self) -> str:
        return f"Parameter({self.name!r}, shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class: ``forward``, ``backward``, ``parameters``, ``train``/``eval``.

    Subclasses store parameters and child modules as attributes; :meth:`named_parameters` and
    :meth:`children` find them by walking ``vars(self)`` (lists/tuples of modules included).
    """

    def __init__(self):
        self.training = True

    # -- the two passes ----------------------------------------------------------------------
    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dy: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def backward_params(self, dy: np.ndarray) -> None:
        """Accumulate the parameter gradients of :meth:`backward` without returning ``dx``.

        For the first layer of a network, whose ``dx`` (the gradient of the input images) nobody
        reads: :func:`ternref.train.fit` calls this instead of :meth:`backward`. The default runs
        :meth:`backward` and drops its result; layers whose ``dx`` costs real work (``Linear``,
        ``Conv2d``, ``Sequential``) override it to skip that work. The parameter gradients are
        the same either way.
        """
        self.backward(dy)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)

    # -- structure ---------------------------------------------------------------------------
    def children(self) -> Iterator[Module]:
        for value in vars(self).values():
            if isinstance(value, Module):
                yield value
            elif isinstance(value, (list, tuple)):
                yield from (v for v in value if isinstance(v, Module))

    def modules(self) -> Iterator[Module]:
        """This module and all its descendants, depth first."""
        yield self
        for child in self.children():
            yield from child.modules()

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        for key, value in vars(self).items():
            if isinstance(value, Parameter):
                yield prefix + key, value
        for index, child in enumerate(self.children()):
            yield from child.named_parameters(f"{prefix}{index}.")

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.zero_grad()

    # -- modes -------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        for m in self.modules():
            m.training = mode
        return self

    def eval(self) -> Module:
        return self.train(False)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        kids = list(self.children())
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not kids:
            return head + ")"
        body = "\n".join("  " + repr(k).replace("\n", "\n  ") for k in kids)
        return head + "\n" + body + "\n)"
