"""dlt-companion: helpers for the runnable companion to *The Principles of Deep Learning Theory*.

Modules, by concept:

* :mod:`~dlt_companion.network` -- :class:`MLP`, one description of a network read by theory and experiment
* :mod:`~dlt_companion.activations` -- σ and its derivatives, numpy and torch (§2.2)
* :mod:`~dlt_companion.gaussian` -- Gaussian expectations ⟨F(z)⟩_K and Wick's theorem (§1.1)
* :mod:`~dlt_companion.cumulants` -- moments ↔ cumulants, nearly-Gaussian distributions (§1.2–1.3)
* :mod:`~dlt_companion.linear` -- exact finite-width results for deep linear networks (Ch. 3)
* :mod:`~dlt_companion.flows` -- layer-to-layer recursions: kernel, four-point vertex, 1/n kernel correction (Ch. 4)
* :mod:`~dlt_companion.criticality` -- susceptibilities, critical initialization, universality classes (Ch. 5)
* :mod:`~dlt_companion.ensembles` -- batched ensembles of real torch MLPs (§2.3), streamed, any executor
* :mod:`~dlt_companion.tangent` -- the empirical NTK of every network of an ensemble (§7.2, §8.0)
* :mod:`~dlt_companion.training` -- batched full-batch gradient descent of an ensemble (§7.1–7.2)
* :mod:`~dlt_companion.bayes` -- Bayesian inference: NNGP posterior, evidence, the 1/n posterior (Ch. 6)
* :mod:`~dlt_companion.information` -- entropy, mutual information, the optimal aspect ratio (App. A)
* :mod:`~dlt_companion.stats` -- estimators with error bars over networks
* :mod:`~dlt_companion.plotting` -- the house style and theory-vs-experiment plots
* :mod:`~dlt_companion.notebook` -- the setup cell every chapter starts with

Reference: D. A. Roberts, S. Yaida, B. Hanin, *The Principles of Deep Learning Theory*,
Cambridge University Press (2022), arXiv:2106.10165 -- cited as [RY].
"""

from . import (activations, bayes, complexity, criticality, cumulants, ensembles, flows, gaussian, information,
               linear, network, plotting, stats, tangent, training)
from .network import MLP
from .notebook import setup

__version__ = "0.1.0"
__all__ = ["activations", "bayes", "information", "criticality", "cumulants", "ensembles", "flows", "gaussian", "linear",
           "network", "plotting", "stats", "tangent", "training", "MLP", "setup"]
