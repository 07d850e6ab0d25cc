"""Matplotlib on the Agg backend (no display needed) for the reports and diagnostics. Figures handed
to a tracker are pyplot-free `Figure`s: it may render them on its background thread. A run's own
learning curves are drawn by `tunelab.curves_svg`."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def close(fig: Figure) -> None:
    plt.close(fig)
