"""Matplotlib figures without pyplot (no global state, no display backend) and their atomic PNG files."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from chestxray.io import atomic_path

DPI = 110


def figure(size: tuple[float, float], nrows: int = 1, ncols: int = 1, **kwargs: Any) -> tuple[Figure, np.ndarray]:
    """A new figure of ``size`` inches with an (nrows, ncols) array of axes, laid out "constrained"."""
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kwargs)


def save_figure(fig: Figure, path: str | os.PathLike) -> None:
    """Write ``fig`` as a PNG at ``path`` via a temp file."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
