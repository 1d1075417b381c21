"""report.plot_width_depth: points, error bars and the fitted law as drawn."""
import math

import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from minscale.report import PLOT_PANELS, plot_width_depth  # noqa: E402


def _section():
    rows = []
    for depth, base in ((1, 0.05), (2, 0.02)):
        for width, n in ((4, 300), (16, 1200), (64, 4800)):
            m = base + 3.0 * n ** -0.5
            rows.append({"depth": depth, "width": width, "n_params": n, "loss_mean": m,
                         "loss_ci95": [m - 0.01, m + 0.01] if depth == 1 else [None, None]})
    fits = [{"depth": 1, "c": 0.05, "a": 3.0, "alpha": 0.5, "alpha_ci95": [0.4, 0.6]},
            {"depth": 2, "error": "fit_power_law needs at least 3 distinct n_params"}]
    return {"rows": rows, "fits": fits}


def test_panel_draws_points_bars_and_the_fitted_law():
    fig, ax = plt.subplots()
    try:
        plot_width_depth(ax, _section())
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        # the fitted curves are the lines of 100 points; depth 2 has no fit
        (curve,) = [line for line in ax.get_lines() if len(line.get_xdata()) == 100]
        x, y = curve.get_data()
        assert x[0] == pytest.approx(300) and x[-1] == pytest.approx(4800)
        assert y[0] == pytest.approx(0.05 + 3.0 / math.sqrt(300))
        assert y[-1] == pytest.approx(0.05 + 3.0 / math.sqrt(4800))
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert any("alpha = 0.5 [0.4, 0.6]" in t for t in labels)
        assert sum("depth 2 fit" in t for t in labels) == 0
        assert len(ax.containers) == 2  # one errorbar set per depth
    finally:
        plt.close(fig)
    assert PLOT_PANELS["width_depth"] is plot_width_depth
