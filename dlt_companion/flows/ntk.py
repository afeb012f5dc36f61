"""RG flow of the neural tangent kernel  (Ch. 8–9 of [RY]).

The NTK of layer-l preactivations (§8.0, with the learning-rate tensor λ_b^{(l)} for
biases and λ_W^{(l)}/n_{l−1} for weights) obeys the exact forward equation

    Ĥ^{(l+1)}_{i1i2;α1α2} = δ_{i1i2}[λ_b + (λ_W/n_l) Σ_j σ_{j;α1}σ_{j;α2}]
                          + Σ_{j1j2} W_{i1j1}W_{i2j2} σ'_{j1;α1}σ'_{j2;α2} Ĥ^{(l)}_{j1j2;α1α2},

with the deterministic first layer Ĥ^{(1)} = δ_{i1i2}[λ_b + λ_W x_α1·x_α2/n_0] (§8.1).
Averaging over the new weights (independent of layer l) at infinite width gives the mean
NTK Θ (§8.2–8.3):

    Θ^{(l+1)}_{α1α2} = λ_b^{(l+1)} + λ_W^{(l+1)} ⟨σ_α1σ_α2⟩_{K^{(l)}}
                      + C_W^{(l+1)} ⟨σ'_α1σ'_α2⟩_{K^{(l)}} Θ^{(l)}_{α1α2}

(and for residual layers of App. B, Θ^{(l+1)} = ξ²[…] + γ² Θ^{(l)}). Averages come from
:class:`dlt_companion.gaussian.Averages`, one input being the B = 1 case.

[RY] D. A. Roberts, S. Yaida, B. Hanin, *The Principles of Deep Learning Theory*,
Cambridge University Press (2022), arXiv:2106.10165.
"""

from __future__ import annotations

import numpy as np

from .. import _checks
from ..activations import get
from ..gaussian import Averages
from . import _layers
from .preactivations import kernel

__all__ = ["ntk_mean"]


def ntk_mean(act, C_b, C_W, lam_b, lam_W, K1, Theta1, depth: int, xi=1.0, gamma=0.0) -> np.ndarray:
    """The infinite-width mean NTK Θ^{(l)} for l = 1..depth  (§8.1–8.3 of [RY]).

    Parameters
    ----------
    act : str or Activation
        Activation σ; σ' must be a function (the perceptron's is not).
    C_b, C_W : float or sequence of ``depth``
        Bias and weight variances (entry l−1 for layer l; layer 1's are unused).
    lam_b, lam_W : float or sequence of ``depth``
        Learning rates λ_b^{(l)}, λ_W^{(l)} (≥ 0; the weights' rate is λ_W/n_{l−1});
        layer 1's enter only through Theta1.
    K1 : float or array [B, B]
        First-layer kernel (:meth:`dlt_companion.network.MLP.first_layer_kernel`).
    Theta1 : float or array [B, B]
        First-layer NTK λ_b^{(1)} + λ_W^{(1)} x·x/n_0 (:meth:`~dlt_companion.network.MLP.first_layer_ntk`);
        same shape as K1.
    depth : int
    xi, gamma : float or sequence of ``depth``
        Residual couplings (App. B); default the plain MLP.

    Returns
    -------
    array [depth] for a scalar K1, or [depth, B, B]; entry l−1 is Θ^{(l)}.
    """
    act = _checks.differentiable_activation(act, "the NTK recursions")
    depth = _layers.depth(depth)
    C_b, C_W = _layers.hyper(depth, C_b, C_W)
    lam_b, lam_W = _layers.learning_rates(depth, lam_b, lam_W)
    xi = _layers.per_layer(xi, depth, "xi", _checks.real)
    gamma = _layers.per_layer(gamma, depth, "gamma", _checks.real)
    scalar, K1m = _layers.initial_kernel(K1)
    scalar_t, T = _layers.initial_kernel(Theta1, "Theta1")
    if scalar != scalar_t or T.shape != K1m.shape:
        raise ValueError(f"Theta1 must have the shape of K1 ({'a number' if scalar else K1m.shape}), "
                         f"got {'a number' if scalar_t else T.shape}")
    K = kernel(act, C_b, C_W, K1m, depth, xi=xi, gamma=gamma)
    out = np.empty((depth,) + T.shape)
    out[0] = T
    for l in range(depth - 1):
        avg = Averages(act, K[l], _checked=True)
        new = (lam_b[l + 1] + lam_W[l + 1] * avg.tensor((0, 0))
               + C_W[l + 1] * avg.tensor((1, 1)) * out[l])
        if xi[l + 1] != 1.0 or gamma[l + 1] != 0.0:
            new = xi[l + 1] ** 2 * new + gamma[l + 1] ** 2 * out[l]
        _layers.check_layer("mean NTK", new, l + 2,
                            f"χ_⊥ = C_W⟨σ'²⟩ > 1 or growing λ's make Θ explode (C_W = {C_W[l + 1]:g})")
        out[l + 1] = new
    return out[:, 0, 0] if scalar else out
