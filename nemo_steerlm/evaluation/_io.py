"""Figures for evaluation outputs, saved atomically (through :func:`nemo_steerlm.data.io.atomic_write`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nemo_steerlm.data.io import atomic_write


def new_figure(width: float, height: float) -> Any:
    """A matplotlib ``Figure`` drawn by the Agg canvas, without touching pyplot's global state or backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: str | os.PathLike[str], dpi: int = 100) -> Path:
    """Saves a matplotlib figure as PNG atomically.

    Args:
        fig: a ``matplotlib.figure.Figure`` (see :func:`new_figure`).
        path: destination PNG path.
        dpi: resolution.

    Returns:
        The destination path.
    """
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight"), ".png")
