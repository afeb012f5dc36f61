"""Bayesian inference helpers (Chapter 6) against closed forms.

* the NNGP posterior of a one-layer linear network is Bayesian linear regression, and its
  evidence is the Gaussian marginal likelihood;
* the 1/n posterior and evidence are checked against nearly-Gaussian distributions whose
  exact conditionals are known (Gaussian scale and sign mixtures): their error must fall
  as 1/n², one order beyond the expansion;
* the representation shift is checked against an exact one-dimensional integral (linear
  hidden layer), and its Gaussian-average building blocks against finite differences;
* the importance-sampling estimator against a conjugate Gaussian posterior.
"""

import itertools

import numpy as np
import pytest
import scipy.stats as sps

from dlt_companion import bayes, flows, stats


def _inputs(B=5, n0=3, seed=0):
    return np.random.default_rng(seed).normal(size=(B, n0))


# --------------------------------------------------------------------------
# infinite width
# --------------------------------------------------------------------------

@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_nngp_posterior_of_a_one_layer_linear_network_is_bayesian_linear_regression(noise):
    """z = b + W x with b ~ N(0, C_b), W_j ~ N(0, C_W/n0): weight-space Bayesian regression."""
    x, C_b, C_W, nA = _inputs(5, 3), 0.4, 1.7, 3
    y = np.array([0.3, -1.1, 0.8])
    K = flows.first_layer_kernel(x, C_b, C_W)
    mean, cov = bayes.gp_posterior(K, y, nA, noise=noise)
    # weight space: features φ(x) = (1, x), prior covariance Σ_p = diag(C_b, C_W/n0, ...)
    phi = np.hstack([np.ones((len(x), 1)), x])
    Sp = np.diag([C_b] + [C_W / x.shape[1]] * x.shape[1])
    PA, PB = phi[:nA], phi[nA:]
    if noise > 0:
        A = PA.T @ PA / noise + np.linalg.inv(Sp)
        w_mean = np.linalg.solve(A, PA.T @ y / noise)
        w_cov = np.linalg.inv(A)
    else:   # exact constraints PA w = y: condition the Gaussian weights on them
        S = PA @ Sp @ PA.T
        w_mean = Sp @ PA.T @ np.linalg.solve(S, y)
        w_cov = Sp - Sp @ PA.T @ np.linalg.solve(S, PA @ Sp)
    np.testing.assert_allclose(mean, PB @ w_mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cov, PB @ w_cov @ PB.T, rtol=1e-9, atol=1e-12)


def test_posterior_shapes_follow_y_and_components_share_the_covariance():
    K = flows.first_layer_kernel(_inputs(6, 4), 0.2, 1.0)
    y2 = np.array([[0.1, 1.0], [0.5, -0.2], [-0.3, 0.4]])
    m2, c2 = bayes.gp_posterior(K, y2, 3, noise=0.1)
    assert m2.shape == (3, 2) and c2.shape == (3, 3)
    for i in range(2):
        m1, c1 = bayes.gp_posterior(K, y2[:, i], 3, noise=0.1)
        assert m1.shape == (3,)
        np.testing.assert_allclose(m2[:, i], m1)
        np.testing.assert_allclose(c2, c1)


def test_noise_free_posterior_reproduces_a_training_input_exactly():
    x = _inputs(4, 3)
    x = np.vstack([x[:3], x[1:2]])              # the test input repeats training input 1
    K = flows.first_layer_kernel(x, 0.1, 1.0)
    y = np.array([0.2, -0.7, 1.3])
    mean, cov = bayes.gp_posterior(K, y, 3)
    assert mean[0] == pytest.approx(y[1], abs=1e-10)
    assert cov[0, 0] == pytest.approx(0.0, abs=1e-10)


def test_log_evidence_is_the_gaussian_density_summed_over_components():
    K = flows.first_layer_kernel(_inputs(4, 3), 0.3, 1.2)
    y = np.array([[0.2, 1.0], [-0.4, 0.3], [1.1, -0.5], [0.0, 0.7]])
    noise = 0.25
    want = sum(sps.multivariate_normal(cov=K + noise * np.eye(4)).logpdf(y[:, i]) for i in range(2))
    assert bayes.log_evidence(K, y, noise) == pytest.approx(want, rel=1e-12)
    assert bayes.log_evidence(K, y[:, 0], noise) == pytest.approx(
        sps.multivariate_normal(cov=K + noise * np.eye(4)).logpdf(y[:, 0]), rel=1e-12)
    scan = bayes.log_evidence_scan(K, y, [0.1, noise, 2.0])
    assert scan[1] == pytest.approx(want, rel=1e-12)
    assert scan[0] == pytest.approx(bayes.log_evidence(K, y, 0.1), rel=1e-12)


def test_log_evidence_of_a_linear_model_is_the_marginal_likelihood_of_its_weights():
    """p(y) = ∫ dw N(w; 0, Σ_p) N(y; Φw, noise): a 1-d grid integral for one feature."""
    x = np.array([[0.5], [-1.0], [2.0]])
    C_W, noise = 1.3, 0.4
    y = np.array([0.4, -0.9, 1.5])
    K = flows.first_layer_kernel(x, 0.0, C_W)
    w = np.linspace(-12, 12, 200001)
    log_integrand = (sps.norm(scale=np.sqrt(C_W)).logpdf(w)
                     + sps.norm.logpdf(y[None, :], loc=w[:, None] * x[:, 0], scale=np.sqrt(noise)).sum(1))
    top = log_integrand.max()
    want = top + np.log(np.trapezoid(np.exp(log_integrand - top), w))
    assert bayes.log_evidence(K, y, noise) == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("act", ["relu", "erf", "linear", "tanh"])
def test_nngp_kernel_closed_forms_equal_the_quadrature_recursion(act):
    x = _inputs(4, 3, seed=3)
    K = bayes.nngp_kernel(act, 0.2, 1.4, x, 4)
    ref = flows.kernel(act, 0.2, 1.4, flows.first_layer_kernel(x, 0.2, 1.4), 4)
    assert K.shape == (4, 4, 4)
    np.testing.assert_allclose(K, ref, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------

def test_bad_input_gets_a_clear_value_error():
    x = _inputs(4, 3)
    K = flows.first_layer_kernel(x, 0.1, 1.0)
    y = np.array([0.1, 0.2])
    with pytest.raises(ValueError, match="singular"):
        dup = flows.first_layer_kernel(np.vstack([x[:1], x[:1], x[2:]]), 0.1, 1.0)
        bayes.gp_posterior(dup, y, 2, noise=0.0)
    bayes.gp_posterior(flows.first_layer_kernel(np.vstack([x[:1], x[:1], x[2:]]), 0.1, 1.0), y, 2,
                       noise=0.1)                                      # noise regularises it
    with pytest.raises(ValueError, match="n_train must lie in 1..N-1"):
        bayes.gp_posterior(K, np.zeros(4), 4)
    with pytest.raises(ValueError, match="n_train must lie in 1..N-1"):
        bayes.gp_posterior(K, np.zeros(0), 0)
    with pytest.raises(ValueError, match="n_train must be an integer"):
        bayes.gp_posterior(K, y, 2.0)
    with pytest.raises(ValueError, match="y must have shape"):
        bayes.gp_posterior(K, np.zeros(3), 2)
    with pytest.raises(ValueError, match="y must have shape"):
        bayes.gp_posterior(K, np.zeros((2, 2, 2)), 2)
    with pytest.raises(ValueError, match="noise"):
        bayes.gp_posterior(K, y, 2, noise=-0.1)
    with pytest.raises(ValueError, match="positive semidefinite"):
        bayes.gp_posterior(K - 5 * np.eye(4), y, 2, noise=0.1)
    with pytest.raises(ValueError, match="square"):
        bayes.gp_posterior(K[:3], y, 2)
    with pytest.raises(ValueError, match="y must have shape"):
        bayes.log_evidence(K, np.zeros(3))
    with pytest.raises(ValueError, match="singular"):
        bayes.log_evidence(np.ones((2, 2)), y)
    with pytest.raises(ValueError, match="four-point vertex"):
        bayes.finite_width_posterior(K, np.zeros((3, 3, 3, 3)), y, 2)
    with pytest.raises(ValueError, match="G1 must be"):
        bayes.finite_width_posterior(K, np.zeros((4,) * 4), y, 2, G1=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="noise > 0"):
        bayes.log_likelihood(np.zeros((5, 2)), y, 0.0)
    with pytest.raises(ValueError, match="z_train"):
        bayes.log_likelihood(np.zeros((5, 3)), y, 0.1)
    with pytest.raises(ValueError, match="one row per network"):
        bayes.posterior_average(np.zeros(5), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="width n"):
        bayes.finite_width_posterior(K, np.zeros((4,) * 4), y, 2).mean(0)


# --------------------------------------------------------------------------
# finite width: exact conditionals of nearly-Gaussian mixtures
# --------------------------------------------------------------------------

def _setup(seed=0, B=5, nA=3, k=2):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(B, 8))
    K = X @ X.T / 8 + 0.3
    y = 1.2 * rng.normal(size=(nA, k))
    return K, y, nA


def _conditional(Gs, logp, y, nA, noise):
    """Exact posterior of a mixture of Gaussians N(0, G_s) (shared by all components), weights p_s."""
    k = y.shape[1]
    lw, means, covs = [], [], []
    for G, lp in zip(Gs, logp):
        Gt = G[:nA, :nA] + noise * np.eye(nA)
        lw.append(lp + sum(sps.multivariate_normal(cov=Gt).logpdf(y[:, i]) for i in range(k)))
        R = G[nA:, :nA] @ np.linalg.inv(Gt)
        means.append(R @ y)
        covs.append(G[nA:, nA:] - R @ G[:nA, nA:])
    w = np.exp(np.array(lw) - max(lw))
    w /= w.sum()
    means, covs = np.array(means), np.array(covs)
    mean = np.einsum("s,sbi->bi", w, means)
    d = means - mean
    cov = (np.einsum("s,sbc->bc", w, covs)[:, None, :, None] * np.eye(k)[None, :, None, :]
           + np.einsum("s,sbi,scj->bicj", w, d, d))
    return mean, cov


def _scale_mixture(K, n):
    """z = √s g, s ~ Gamma(n/2, 2/n): E s = 1, Var s = 2/n, so V_(ab)(cd) = 2 K_ab K_cd, G1 = 0."""
    u = np.linspace(-1.2, 1.2, 801)                               # s = e^u, trapezoid in u
    s = np.exp(u)
    logp = sps.gamma.logpdf(s, a=n / 2, scale=2 / n) + u + np.log(u[1] - u[0])
    return [si * K for si in s], logp


def test_finite_width_posterior_matches_an_exact_scale_mixture_to_order_one_over_n_squared():
    K, y, nA = _setup()
    noise = 0.2
    V = 2.0 * np.einsum("ab,cd->abcd", K, K)
    post = bayes.finite_width_posterior(K, V, y, nA, noise=noise)
    errs = []
    for n in (100, 200, 400):
        mean, cov = _conditional(*_scale_mixture(K, n), y, nA, noise)
        e_inf = max(np.abs(mean - post.mean()).max(), np.abs(cov - post.cov()).max())
        e_1 = max(np.abs(mean - post.mean(n)).max(), np.abs(cov - post.cov(n)).max())
        assert e_1 < 0.1 * e_inf
        errs.append(e_1)
    assert errs[0] / errs[1] == pytest.approx(4.0, rel=0.1)      # O(1/n²) remainder
    assert errs[1] / errs[2] == pytest.approx(4.0, rel=0.1)


def _sign_mixture(K, G1, Ms, eps):
    """Ĝ = K + ε² G1 + ε Σ_k ξ_k M_k with independent signs ξ_k: V = Σ_k M_k ⊗ M_k at n = 1/ε²."""
    Gs, logp = [], []
    for signs in itertools.product([-1.0, 1.0], repeat=len(Ms)):
        G = K + eps ** 2 * G1 + eps * sum(s * M for s, M in zip(signs, Ms))
        assert np.linalg.eigvalsh(G).min() > 0
        Gs.append(G)
        logp.append(-len(Ms) * np.log(2.0))
    return Gs, logp


def test_finite_width_posterior_with_a_general_vertex_and_metric_correction():
    K, y, nA = _setup(seed=1, B=5, nA=2, k=2)
    rng = np.random.default_rng(5)
    Ms = []
    for _ in range(3):
        A = rng.normal(size=(5, 5)) * 0.06
        Ms.append(A + A.T)
    G1 = 0.3 * (lambda A: A + A.T)(rng.normal(size=(5, 5)))
    V = sum(np.einsum("ab,cd->abcd", M, M) for M in Ms)
    noise = 0.15
    post = bayes.finite_width_posterior(K, V, y, nA, G1=G1, noise=noise)
    ev_inf, ev_1 = bayes.finite_width_log_evidence(K[:nA, :nA], V[:nA, :nA, :nA, :nA], y,
                                                   G1[:nA, :nA], noise)
    errs, ev_errs = [], []
    for n in (25, 50, 100):
        Gs, logp = _sign_mixture(K, G1, Ms, n ** -0.5)
        mean, cov = _conditional(Gs, logp, y, nA, noise)
        errs.append(max(np.abs(mean - post.mean(n)).max(), np.abs(cov - post.cov(n)).max()))
        assert errs[-1] < 0.1 * max(np.abs(mean - post.mean()).max(), np.abs(cov - post.cov()).max())
        lev = [lp + sum(sps.multivariate_normal(cov=G[:nA, :nA] + noise * np.eye(nA)).logpdf(y[:, i])
                        for i in range(y.shape[1])) for G, lp in zip(Gs, logp)]
        exact = np.logaddexp.reduce(lev)
        ev_errs.append(abs(exact - ev_inf - ev_1 / n))
        assert ev_errs[-1] < 0.25 * abs(exact - ev_inf)
    for e in (errs, ev_errs):
        assert e[0] / e[1] == pytest.approx(4.0, rel=0.15)
        assert e[1] / e[2] == pytest.approx(4.0, rel=0.15)


def test_one_dimensional_y_gives_one_dimensional_mean_and_matrix_covariance():
    K, y, nA = _setup(k=1)
    V = 2.0 * np.einsum("ab,cd->abcd", K, K)
    p1 = bayes.finite_width_posterior(K, V, y[:, 0], nA, noise=0.1)
    p2 = bayes.finite_width_posterior(K, V, y, nA, noise=0.1)
    assert p1.mean(10).shape == (2,) and p1.cov(10).shape == (2, 2)
    np.testing.assert_allclose(p1.mean(10), p2.mean(10)[:, 0])
    np.testing.assert_allclose(p1.cov(10), p2.cov(10)[:, 0, :, 0])
    m, c = bayes.gp_posterior(K, y[:, 0], nA, noise=0.1)
    np.testing.assert_allclose(p1.mean(), m)
    np.testing.assert_allclose(p1.cov(), c)


def test_metric_correction_alone_is_the_derivative_of_the_gaussian_posterior():
    K, y, nA = _setup(seed=2)
    G1 = np.random.default_rng(0).normal(size=K.shape)
    G1 = G1 + G1.T
    post = bayes.finite_width_posterior(K, np.zeros(K.shape * 2), y, nA, G1=G1, noise=0.2)
    h = 1e-6
    mp, cp = bayes.gp_posterior(K + h * G1, y, nA, 0.2)
    mm, cm = bayes.gp_posterior(K - h * G1, y, nA, 0.2)
    np.testing.assert_allclose(post.mean_G1, (mp - mm) / (2 * h), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(post.cov_1[:, 0, :, 0], (cp - cm) / (2 * h), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(post.mean_V, 0.0)


# --------------------------------------------------------------------------
# representation learning
# --------------------------------------------------------------------------

def test_representation_shift_of_a_linear_hidden_layer_matches_an_exact_integral():
    """One input, linear σ: Σ_j z_j² = K t with t ~ χ²_n, and y | t ~ N(0, C_b + C_W K t/n + noise)."""
    K1, C_b, C_W, noise, y = 0.8, 0.1, 1.5, 0.2, np.array([1.7])
    dG = bayes.representation_shift("linear", C_b, C_W, np.array([[K1]]), y, 1, noise)[0, 0]
    errs = []
    for n in (200, 400, 800):
        u = np.linspace(-2.0, 2.0, 4001)                          # χ²_n/n = e^u
        t = np.exp(u)
        logp = sps.gamma.logpdf(t, a=n / 2, scale=2 / n) + u
        var = C_b + C_W * K1 * t + noise
        lw = logp - 0.5 * np.log(var) - 0.5 * y[0] ** 2 / var
        p = np.exp(lw - lw.max())
        post = (p * K1 * t).sum() / p.sum()
        assert n * (post - K1) == pytest.approx(dG, rel=0.05)
        errs.append(abs(post - K1 - dG / n))
    assert errs[0] / errs[1] == pytest.approx(4.0, rel=0.15)


def test_representation_shift_is_hebbian_in_sign_for_one_input():
    K = np.array([[0.9]])
    K_out = flows.kernel("tanh", 0.1, 1.2, 0.9, 2)[1]                   # C_b + C_W<σ²>
    threshold = np.sqrt(K_out + 0.05)
    for y in threshold * np.array([0.2, 0.9, 0.99, 1.01, 1.1, 2.0]):
        dG = bayes.representation_shift("tanh", 0.1, 1.2, K, np.array([y]), 1, noise=0.05)[0, 0]
        assert np.sign(dG) == np.sign(y ** 2 - (K_out + 0.05))


def test_covariance_and_kernel_derivative_building_blocks():
    act = "tanh"
    from dlt_companion.activations import get
    from dlt_companion.gaussian import expect_n
    s = get(act)
    K = np.array([[1.0, 0.3, 0.2], [0.3, 0.8, -0.1], [0.2, -0.1, 1.2]])
    got = bayes._cov_zz_ss(s, K, (0, 2), (0, 1))
    want = (expect_n(lambda z: z[..., 0] * z[..., 2] * s(z[..., 0]) * s(z[..., 1]), K)
            - K[0, 2] * expect_n(lambda z: s(z[..., 0]) * s(z[..., 1]), K[:2, :2]))
    assert got == pytest.approx(want, rel=1e-8)
    grads = bayes._dss_dK(s, K, 0, 1)
    assert set(grads) == {(0, 0), (1, 1), (0, 1), (1, 0)}
    assert grads[(0, 1)] == grads[(1, 0)]
    h = 1e-5

    def ss(Kp):
        return expect_n(lambda z: s(z[..., 0]) * s(z[..., 1]), Kp[:2, :2])
    for b1, b2 in [(0, 0), (1, 1), (0, 1)]:
        E = np.zeros((3, 3))
        E[b1, b2] = E[b2, b1] = h          # symmetric perturbation: moves both ordered entries
        ordered = grads[(b1, b2)] + (grads[(b2, b1)] if b1 != b2 else 0.0)
        assert (ss(K + E) - ss(K - E)) / (2 * h) == pytest.approx(ordered, rel=1e-5)
    diag = bayes._dss_dK(s, K, 1, 1)[(1, 1)]
    fd = (flows.kernel(act, 0.0, 1.0, 0.8 + h, 2)[1] - flows.kernel(act, 0.0, 1.0, 0.8 - h, 2)[1]) / (2 * h)
    assert diag == pytest.approx(fd, rel=1e-6)


# --------------------------------------------------------------------------
# importance sampling
# --------------------------------------------------------------------------

def test_importance_sampling_recovers_a_conjugate_gaussian_posterior_with_calibrated_errors():
    """Prior z ~ N(0, 1), likelihood N(y; z, s²): posterior N(y/(1+s²), s²/(1+s²))."""
    rng = np.random.default_rng(0)
    y, s2 = 0.8, 0.5
    mean_post, var_post = y / (1 + s2), s2 / (1 + s2)
    zs, errs, ess = [], [], []
    for _ in range(200):
        z = rng.normal(size=4000)
        lw = bayes.log_likelihood(z[:, None], [y], s2)
        est, cov = bayes.posterior_average(lw, np.stack([z, z * z], 1),
                                           lambda m: np.array([m[0], m[1] - m[0] ** 2]))
        zs.append((est.value - [mean_post, var_post]) / est.stderr)
        errs.append(est.stderr)
        ess.append(bayes.effective_sample_size(lw))
        assert cov.shape == (2, 2)
        np.testing.assert_allclose(np.sqrt(np.diag(cov)), est.stderr, rtol=1e-10)
    zs = np.array(zs)
    assert np.abs(zs.mean(0)).max() < 4 / np.sqrt(len(zs))          # unbiased within noise
    assert zs.std(0) == pytest.approx([1.0, 1.0], abs=0.15)          # error bars calibrated
    # Kish ESS for this weight distribution: M σ √(2+σ²)/(1+σ²)·exp(−y²/((1+σ²)(2+σ²)))
    frac = np.sqrt(s2) * np.sqrt(2 + s2) / (1 + s2) * np.exp(-y * y / ((1 + s2) * (2 + s2)))
    assert np.mean(ess) / 4000 == pytest.approx(frac, rel=0.03)


def test_equal_weights_reduce_to_the_plain_mean():
    x = np.random.default_rng(1).normal(size=(500, 3))
    est, cov = bayes.posterior_average(np.zeros(500), x, n_blocks=500)   # delete-one jackknife
    plain = stats.mean(x)
    np.testing.assert_allclose(est.value, plain.value)
    np.testing.assert_allclose(est.stderr, plain.stderr, rtol=1e-10)
    assert bayes.effective_sample_size(np.zeros(500)) == pytest.approx(500)
