"""Atomic file writing for evaluation outputs (reports, plots, answer files).

A reader never sees a half-written file: content goes to a temporary file in the destination folder first and is
then moved into place with :func:`os.replace`, which is atomic on POSIX file systems.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike[str], writer: Callable[[Path], None], suffix: str = "") -> Path:
    """Calls ``writer(tmp_path)`` to fill a temporary file, then moves it onto ``path``.

    Args:
        path: destination file; its parent folder is created if missing.
        writer: callable that writes the complete content to the path it is given.
        suffix: suffix of the temporary file (matplotlib picks the format from it, e.g. ``".png"``).

    Returns:
        The destination path.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix + ".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer(tmp)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Writes ``text`` (UTF-8) to ``path`` atomically and returns the path."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


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
