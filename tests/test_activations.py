"""Activation registry: numpy and torch sides agree, derivatives match autograd, bad names fail."""

import numpy as np
import pytest
import torch

from dlt_companion import activations

ALL = [(name, {}) for name in activations.names()] + [
    ("leaky_relu", {"slope": 0.2}), ("swish", {"beta": 2.5})]
REQUIRED = {"linear", "relu", "leaky_relu", "tanh", "sigmoid", "softplus", "sin", "erf", "gelu", "swish"}


def test_registry_has_every_required_activation():
    assert REQUIRED <= set(activations.names())


# points away from the kinks at z = 0
Z = np.concatenate([np.linspace(-4.0, -0.05, 40), np.linspace(0.05, 4.0, 40)])


@pytest.mark.parametrize("name,params", ALL, ids=[f"{n}{p or ''}" for n, p in ALL])
def test_numpy_and_torch_versions_agree_for_every_derivative(name, params):
    act = activations.get(name, **params)
    zt = torch.tensor(Z, dtype=torch.float64)
    for k in range(4):
        np.testing.assert_allclose(act.numpy[k](Z), act.torch[k](zt).numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,params", ALL, ids=[f"{n}{p or ''}" for n, p in ALL])
def test_derivatives_match_torch_autograd(name, params):
    act = activations.get(name, **params)
    zt = torch.tensor(Z, dtype=torch.float64)
    fn = act.torch[0]
    for k in range(1, 4):
        fn = torch.func.grad(fn)
        np.testing.assert_allclose(torch.func.vmap(fn)(zt).numpy(), act.numpy[k](Z),
                                   rtol=1e-10, atol=1e-10, err_msg=f"{name} derivative {k}")


def test_known_closed_forms():
    z = np.array([-1.0, 0.5, 2.0])
    np.testing.assert_allclose(activations.get("relu")(z), [0.0, 0.5, 2.0])
    np.testing.assert_allclose(activations.get("leaky_relu", slope=0.1)(z), [-0.1, 0.5, 2.0])
    np.testing.assert_allclose(activations.get("gelu")(np.array([0.0])), [0.0])
    np.testing.assert_allclose(activations.get("softplus")(np.array([0.0])), [np.log(2.0)])


def test_scale_invariant_metadata():
    assert activations.get("relu").scale_invariant == (1.0, 0.0)
    assert activations.get("leaky_relu", slope=0.3).scale_invariant == (1.0, 0.3)
    assert activations.get("linear").scale_invariant == (1.0, 1.0)
    assert activations.get("tanh").scale_invariant is None


def test_get_passes_activation_objects_through():
    act = activations.get("tanh")
    assert activations.get(act) is act


def test_unknown_activation_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown activation 'tanhh'.*relu.*tanh"):
        activations.get("tanhh")


@pytest.mark.parametrize("name,params", [("relu", {"slope": 0.1}), ("swish", {"beta": -1.0}),
                                         ("leaky_relu", {"slope": float("nan")}), ("tanh", {"x": 1})])
def test_bad_parameters_raise_value_error(name, params):
    with pytest.raises(ValueError):
        activations.get(name, **params)


def test_derivative_order_is_checked():
    with pytest.raises(ValueError, match="order"):
        activations.get("tanh").derivative(4)
