"""The Chapter 5 criticality explorer: its update function, drawing and widget, without a browser."""

import matplotlib
import numpy as np
import pytest

from dlt_companion import criticality, explorer, flows, stats

matplotlib.use("Agg")


def test_update_is_deterministic_and_matches_the_flow():
    a = explorer.update("tanh", 0.0, 1.0, depth=12, width=16, n_networks=256, seed=3)
    b = explorer.update("tanh", 0.0, 1.0, depth=12, width=16, n_networks=256, seed=3)
    for field in ("K", "G", "K_measured", "K_err", "kurtosis_measured", "chi_par", "chi_perp"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    f = flows.run("tanh", 0.0, 1.0, 1.0, 12)
    np.testing.assert_allclose(a.K, f.K, rtol=1e-12)
    np.testing.assert_allclose(a.G, f.metric(16), rtol=1e-12)
    assert [str(p) for p in a.fixed_points] == [str(p) for p in criticality.fixed_points("tanh", 0.0, 1.0)]
    assert a.critical.universality == "K*=0"


def test_live_ensemble_agrees_with_the_theory_it_is_drawn_beside():
    s = explorer.update("tanh", 0.0, 1.0, depth=16, width=32, n_networks=2000, seed=1)
    window = slice(0, 16)                         # l/n <= 1/2, as in Chapter 5
    stats.assert_agree("explorer kernel", s.G[window], s.K_measured[window], s.K_err[window], quiet=True)
    first = slice(1, 8)                           # l/n <= 1/4 for the first-order kurtosis
    stats.assert_agree("explorer kurtosis", s.kurtosis[first], s.kurtosis_measured[first],
                       s.kurtosis_err[first], quiet=True)


def test_off_critical_states_do_not_break():
    s = explorer.update("relu", 0.0, 3.0, depth=60, width=8, n_networks=64)     # exploding
    assert s.K[-1] > 1e9 and s.fixed_points[0].stability == "unstable"
    s = explorer.update("softplus", 0.0, 2.5, depth=60, width=8, n_networks=64)  # no fixed point
    assert s.fixed_points == () and not s.critical.exists
    s = explorer.update("tanh", 0.0, 0.3, depth=60, width=8, n_networks=64)      # vanishing
    assert s.K[-1] < 1e-20
    assert "fixed point" in explorer.summary(s)


def test_render_draws_four_panels():
    fig = explorer.render(explorer.update("gelu", 0.17, 1.98, depth=8, width=8, n_networks=64))
    assert len(fig.axes) == 4
    labels = [t.get_text() for t in fig.axes[3].get_legend().get_texts()]
    assert any("stable" in t for t in labels)


def test_widget_updates_when_a_control_changes():
    ipywidgets = pytest.importorskip("ipywidgets")
    box = explorer.widget(depth=6, width=8, n_networks=32)
    assert isinstance(box, ipywidgets.VBox) and box.state.C_W == 1.0
    box.controls["C_W"].value = 1.6
    assert box.state.C_W == pytest.approx(1.6)
    box.controls["act"].value = "gelu"
    box.children[0].children[1].click()          # the "critical" button
    crit = criticality.critical_point("gelu")
    assert box.state.C_W == pytest.approx(crit.C_W, abs=0.01)


@pytest.mark.parametrize("kwargs, match", [
    (dict(act="perceptron"), "Dirac"),
    (dict(depth=0), "depth"),
    (dict(depth=500), "at most 200"),
    (dict(width=1000), "width"),
    (dict(n_networks=1), "n_networks"),
    (dict(C_W=-1.0), "C_W"),
    (dict(x2=0.0), "x2"),
    (dict(seed=1.5), "seed"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        explorer.update(**kwargs)
