"""Activation functions σ(z) and their first three derivatives, in numpy and torch.

Section 2.2 of [RY] surveys the activation functions that the book's
universality classes are built from. Each registered activation is one
:class:`Activation` object that carries *both* sides we need:

* ``act.numpy[k]`` -- the k-th derivative σ^{(k)} as a vectorised numpy function
  (theory side: Gaussian expectations in the recursions), k = 0..3;
* ``act.torch[k]`` -- the same function on torch tensors (experiment side: the
  forward pass of real networks), k = 0..3.

so that a notebook never has to pair a torch function with its theory by hand.

[RY] D. A. Roberts, S. Yaida, B. Hanin, *The Principles of Deep Learning Theory*,
Cambridge University Press (2022), arXiv:2106.10165.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from scipy import special

__all__ = ["Activation", "get", "names", "register"]

_SQRT_PI = math.sqrt(math.pi)
_SQRT_2PI = math.sqrt(2.0 * math.pi)


@dataclass(frozen=True)
class Activation:
    """An activation function σ with its derivatives on both backends.

    Attributes
    ----------
    name : str
        Registry name, e.g. ``"tanh"`` or ``"leaky_relu"``.
    params : dict
        Parameters it was built with, e.g. ``{"slope": 0.1}``.
    numpy : tuple of 4 callables
        σ, σ', σ'', σ''' acting elementwise on numpy arrays.
    torch : tuple of 4 callables
        The same four functions acting elementwise on torch tensors.
    kinks : tuple of float
        Points where σ or one of its derivatives is not smooth (all at 0 for the
        registered functions). The Gaussian quadrature splits its domain there.
    scale_invariant : tuple of float or None
        ``(a_plus, a_minus)`` if σ(z) = a_+ z for z ≥ 0 and a_- z for z < 0 (the
        scale-invariant class of §2.2 and §5.2), else ``None``.
    """

    name: str
    params: dict = field(compare=True, hash=False)
    numpy: tuple = field(repr=False, compare=False)
    torch: tuple = field(repr=False, compare=False)
    kinks: tuple = ()
    scale_invariant: tuple | None = None

    def __call__(self, z):
        """σ(z) on a numpy array."""
        return self.numpy[0](z)

    def __reduce__(self):
        # the functions are closures: pickle by registry name and parameters, so that an
        # ensemble's spec can travel to worker processes (ensembles.map_networks(executor=))
        return (_rebuild, (self.name, tuple(self.params.items())))

    def derivative(self, order: int = 1) -> Callable:
        """The numpy function σ^{(order)}, order in 0..3  (§2.2 of [RY]).

        Parameters
        ----------
        order : int
            Derivative order 0..3.

        Returns
        -------
        callable
            Vectorised numpy function of z.
        """
        if order not in (0, 1, 2, 3):
            raise ValueError(f"derivative order must be 0, 1, 2 or 3, got {order!r}")
        return self.numpy[order]

    @property
    def label(self) -> str:
        """A short human-readable name including parameters, for plot legends."""
        if not self.params:
            return self.name
        inside = ", ".join(f"{k}={v:g}" for k, v in self.params.items())
        return f"{self.name}({inside})"


# --------------------------------------------------------------------------
# Definitions. Each builder receives the parameters and returns the tuples.
# --------------------------------------------------------------------------

def _zeros_np(z):
    return np.zeros_like(np.asarray(z, dtype=float))


def _zeros_t(z):
    return torch.zeros_like(z)


def _linear():
    np_f = (lambda z: np.asarray(z, dtype=float) * 1.0,
            lambda z: np.ones_like(np.asarray(z, dtype=float)), _zeros_np, _zeros_np)
    t_f = (lambda z: z, torch.ones_like, _zeros_t, _zeros_t)
    return np_f, t_f, (), (1.0, 1.0)


def _leaky_relu(slope: float = 0.01):
    if not np.isfinite(slope):
        raise ValueError(f"leaky_relu slope must be a finite number, got {slope!r}")
    s = float(slope)
    np_f = (lambda z: np.where(np.asarray(z) > 0, z, s * np.asarray(z, dtype=float)),
            lambda z: np.where(np.asarray(z) > 0, 1.0, s), _zeros_np, _zeros_np)
    t_f = (lambda z: torch.where(z > 0, z, s * z),
           lambda z: torch.where(z > 0, torch.ones_like(z), torch.full_like(z, s)),
           _zeros_t, _zeros_t)
    return np_f, t_f, (0.0,), (1.0, s)


def _relu():
    np_f = (lambda z: np.maximum(np.asarray(z, dtype=float), 0.0),
            lambda z: (np.asarray(z) > 0).astype(float), _zeros_np, _zeros_np)
    t_f = (torch.relu, lambda z: (z > 0).to(z.dtype), _zeros_t, _zeros_t)
    return np_f, t_f, (0.0,), (1.0, 0.0)


def _perceptron():
    # The step function of Rosenblatt's perceptron (§2.2). Its derivatives are
    # distributions; we return 0 away from the jump, which is what autograd does.
    np_f = (lambda z: (np.asarray(z) > 0).astype(float), _zeros_np, _zeros_np, _zeros_np)
    t_f = (lambda z: (z > 0).to(z.dtype), _zeros_t, _zeros_t, _zeros_t)
    return np_f, t_f, (0.0,), None


def _tanh():
    def d1(z):
        t = np.tanh(z)
        return 1.0 - t * t

    def d2(z):
        t = np.tanh(z)
        return -2.0 * t * (1.0 - t * t)

    def d3(z):
        t = np.tanh(z)
        return (1.0 - t * t) * (6.0 * t * t - 2.0)

    def t1(z):
        t = torch.tanh(z)
        return 1.0 - t * t

    def t2(z):
        t = torch.tanh(z)
        return -2.0 * t * (1.0 - t * t)

    def t3(z):
        t = torch.tanh(z)
        return (1.0 - t * t) * (6.0 * t * t - 2.0)

    return (np.tanh, d1, d2, d3), (torch.tanh, t1, t2, t3), (), None


def _sigmoid_derivs(s, one):
    """σ, σ', σ'', σ''' of the logistic function from s = sigmoid(z)."""
    s1 = s * (one - s)
    s2 = s1 * (one - 2.0 * s)
    s3 = s1 * (one - 6.0 * s + 6.0 * s * s)
    return s, s1, s2, s3


def _sigmoid():
    np_f = tuple(
        (lambda k: (lambda z: _sigmoid_derivs(special.expit(z), 1.0)[k]))(k) for k in range(4)
    )
    t_f = tuple(
        (lambda k: (lambda z: _sigmoid_derivs(torch.sigmoid(z), 1.0)[k]))(k) for k in range(4)
    )
    return np_f, t_f, (), None


def _softplus():
    np_f = (lambda z: np.logaddexp(0.0, z),) + tuple(
        (lambda k: (lambda z: _sigmoid_derivs(special.expit(z), 1.0)[k]))(k) for k in range(3)
    )
    t_f = (torch.nn.functional.softplus,) + tuple(
        (lambda k: (lambda z: _sigmoid_derivs(torch.sigmoid(z), 1.0)[k]))(k) for k in range(3)
    )
    return np_f, t_f, (), None


def _sin():
    np_f = (np.sin, np.cos, lambda z: -np.sin(z), lambda z: -np.cos(z))
    t_f = (torch.sin, torch.cos, lambda z: -torch.sin(z), lambda z: -torch.cos(z))
    return np_f, t_f, (), None


def _erf():
    c = 2.0 / _SQRT_PI
    np_f = (special.erf,
            lambda z: c * np.exp(-np.square(z)),
            lambda z: -2.0 * c * z * np.exp(-np.square(z)),
            lambda z: c * (4.0 * np.square(z) - 2.0) * np.exp(-np.square(z)))
    t_f = (torch.erf,
           lambda z: c * torch.exp(-z * z),
           lambda z: -2.0 * c * z * torch.exp(-z * z),
           lambda z: c * (4.0 * z * z - 2.0) * torch.exp(-z * z))
    return np_f, t_f, (), None


def _gelu():
    # σ(z) = z Φ(z) with Φ the standard normal CDF (the exact GELU, not the tanh fit).
    def phi_np(z):
        return np.exp(-0.5 * np.square(z)) / _SQRT_2PI

    def phi_t(z):
        return torch.exp(-0.5 * z * z) / _SQRT_2PI

    def ncdf_t(z):
        return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))

    np_f = (lambda z: z * special.ndtr(z),
            lambda z: special.ndtr(z) + z * phi_np(z),
            lambda z: (2.0 - np.square(z)) * phi_np(z),
            lambda z: (np.power(z, 3) - 4.0 * z) * phi_np(z))
    t_f = (lambda z: torch.nn.functional.gelu(z),
           lambda z: ncdf_t(z) + z * phi_t(z),
           lambda z: (2.0 - z * z) * phi_t(z),
           lambda z: (z * z * z - 4.0 * z) * phi_t(z))
    return np_f, t_f, (), None


def _swish(beta: float = 1.0):
    if not (np.isfinite(beta) and beta > 0):
        raise ValueError(f"swish beta must be a positive finite number, got {beta!r}")
    b = float(beta)

    def parts(z, sig, one):
        u = b * z
        s, s1, s2, s3 = _sigmoid_derivs(sig(u), one)
        return (z * s, s + u * s1, b * (2.0 * s1 + u * s2), b * b * (3.0 * s2 + u * s3))

    np_f = tuple((lambda k: (lambda z: parts(np.asarray(z, dtype=float), special.expit, 1.0)[k]))(k)
                 for k in range(4))
    t_f = tuple((lambda k: (lambda z: parts(z, torch.sigmoid, 1.0)[k]))(k) for k in range(4))
    return np_f, t_f, (), None


_REGISTRY: dict[str, Callable[..., tuple]] = {}


def _rebuild(name: str, params: tuple) -> "Activation":
    return get(name, **dict(params))


def register(name: str, builder: Callable[..., tuple]) -> None:
    """Add an activation to the registry  (§2.2 of [RY] lists the book's).

    Parameters
    ----------
    name : str
        Registry name.
    builder : callable
        ``builder(**params)`` must return ``(numpy_fns, torch_fns, kinks, scale_invariant)``
        where each ``*_fns`` is a 4-tuple (σ, σ', σ'', σ''').
    """
    _REGISTRY[name] = builder


for _name, _builder in {
    "linear": _linear,
    "relu": _relu,
    "leaky_relu": _leaky_relu,
    "perceptron": _perceptron,
    "tanh": _tanh,
    "sigmoid": _sigmoid,
    "softplus": _softplus,
    "sin": _sin,
    "erf": _erf,
    "gelu": _gelu,
    "swish": _swish,
}.items():
    register(_name, _builder)


def names() -> list[str]:
    """Names of all registered activations (§2.2 of [RY])."""
    return sorted(_REGISTRY)


def get(name: "str | Activation", **params: Any) -> Activation:
    """Look up an activation by name (§2.2 of [RY]) and build it with ``params``.

    Parameters
    ----------
    name : str or Activation
        A registry name (see :func:`names`), or an :class:`Activation`, which is
        returned unchanged (so every helper can take either).
    **params
        Parameters of the function, e.g. ``get("leaky_relu", slope=0.1)`` or
        ``get("swish", beta=2.0)``.

    Raises
    ------
    ValueError
        For an unknown name, with the list of known ones, or for unknown or bad
        parameters.
    """
    if isinstance(name, Activation):
        if params:
            raise ValueError("parameters can only be given together with a registry name, "
                             f"not with an Activation object ({name.name})")
        return name
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown activation {name!r}; known activations are: "
                         + ", ".join(names()))
    builder = _REGISTRY[name]
    try:
        np_fns, t_fns, kinks, scale_inv = builder(**params)
    except TypeError as exc:  # unexpected keyword
        raise ValueError(f"bad parameters {params!r} for activation {name!r}: {exc}") from None
    return Activation(name=name, params=dict(params), numpy=tuple(np_fns), torch=tuple(t_fns),
                      kinks=tuple(kinks), scale_invariant=scale_inv)
