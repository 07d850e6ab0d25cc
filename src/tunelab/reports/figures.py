"""Matplotlib on the Agg backend (no display needed) for the reports and diagnostics. Figures handed
to a tracker are pyplot-free `Figure`s: it may render them on its background thread."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def close(fig: Figure) -> None:
    plt.close(fig)
